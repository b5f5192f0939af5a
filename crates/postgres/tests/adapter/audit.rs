//! The audit table's own behaviour in Postgres: an event queues one webhook delivery per active endpoint whose
//! filter takes it, in the same transaction.

use time::OffsetDateTime;
use users_domain::audit::{AuditEvent, ClientInfo, EventType};
use users_domain::ports::AuditTrail as _;
use users_testkit::TestDatabase;

use crate::support::{count, execute, repository};

#[tokio::test]
async fn an_event_queues_a_delivery_for_each_active_endpoint_that_takes_its_type() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    execute(
        &database,
        "INSERT INTO webhook_endpoints (url, events, active) VALUES \
         ('https://all.example/hook', ARRAY['*'], true), \
         ('https://failures.example/hook', ARRAY['login.failed', 'login.throttled'], true), \
         ('https://gone.example/hook', ARRAY['*'], false)",
    )
    .await;
    let now = OffsetDateTime::now_utc();
    let failed = AuditEvent::new(EventType::LoginFailed, now, &ClientInfo::default());
    let succeeded = AuditEvent::new(EventType::LoginSucceeded, now, &ClientInfo::default());
    repository.record_events(vec![failed.clone(), succeeded.clone()]).await.unwrap();

    let deliveries = |event: &AuditEvent| {
        format!(
            "SELECT count(*) AS count FROM webhook_deliveries WHERE event_id = '{}' AND status = 'pending'",
            event.id
        )
    };
    assert_eq!(count(&database, &deliveries(&failed)).await, 2, "the catch-all and the failures endpoint");
    assert_eq!(count(&database, &deliveries(&succeeded)).await, 1, "the catch-all only");
    assert_eq!(
        count(&database, "SELECT count(*) AS count FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE NOT e.active").await,
        0,
        "an inactive endpoint gets nothing"
    );
}

#[tokio::test]
async fn without_endpoints_an_event_queues_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let event = AuditEvent::new(EventType::UserRegistered, OffsetDateTime::now_utc(), &ClientInfo::default());
    repository.record_events(vec![event]).await.unwrap();
    assert_eq!(count(&database, "SELECT count(*) AS count FROM audit_events").await, 1);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM webhook_deliveries").await, 0);
}

#[tokio::test]
async fn deliveries_are_claimed_once_under_a_lease_retried_and_given_up() {
    use time::Duration;
    use users_postgres::DeliveryOutcome;
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    repository.sync_webhook_endpoints(&["https://a.example/hook".to_owned()], &["*".to_owned()]).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let events: Vec<AuditEvent> =
        (0..40).map(|_| AuditEvent::new(EventType::LoginFailed, now, &ClientInfo::default())).collect();
    repository.record_events(events.clone()).await.unwrap();

    // Concurrent claims never hand out the same delivery.
    let lease = Duration::seconds(30);
    let claims = tokio::join!(
        repository.claim_webhook_deliveries(now, 15, lease),
        repository.claim_webhook_deliveries(now, 15, lease),
        repository.claim_webhook_deliveries(now, 15, lease),
        repository.claim_webhook_deliveries(now, 15, lease),
    );
    let claims = [claims.0, claims.1, claims.2, claims.3];
    let mut claimed: Vec<uuid::Uuid> =
        claims.into_iter().flat_map(|claim| claim.unwrap()).map(|d| d.event.id).collect();
    assert_eq!(claimed.len(), 40);
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), 40, "no delivery claimed twice");
    assert!(repository.claim_webhook_deliveries(now, 100, Duration::seconds(30)).await.unwrap().is_empty(), "leased");

    // Once the lease runs out they are due again; outcomes are recorded once.
    let later = now + Duration::seconds(31);
    let again = repository.claim_webhook_deliveries(later, 3, Duration::seconds(30)).await.unwrap();
    assert_eq!(again.len(), 3);
    let (first, second, third) = (&again[0], &again[1], &again[2]);
    repository
        .finish_webhook_attempt(first.event.id, first.endpoint_id, later, &DeliveryOutcome::Delivered)
        .await
        .unwrap();
    let retry = DeliveryOutcome::RetryAt(later + Duration::seconds(2), "HTTP 500".to_owned());
    repository.finish_webhook_attempt(second.event.id, second.endpoint_id, later, &retry).await.unwrap();
    let dead = DeliveryOutcome::Dead("connection refused".to_owned());
    repository.finish_webhook_attempt(third.event.id, third.endpoint_id, later, &dead).await.unwrap();
    let status = |event: &AuditEvent| {
        format!(
            "SELECT count(*) AS count FROM webhook_deliveries WHERE event_id = '{}' AND attempts = 1 AND status",
            event.id
        )
    };
    assert_eq!(count(&database, &format!("{} = 'delivered'", status(&first.event))).await, 1);
    assert_eq!(count(&database, &format!("{} = 'pending'", status(&second.event))).await, 1);
    assert_eq!(count(&database, &format!("{} = 'dead'", status(&third.event))).await, 1);
    let retried = repository.claim_webhook_deliveries(later + Duration::seconds(100), 100, Duration::seconds(30)).await;
    let retried: Vec<_> = retried.unwrap().into_iter().map(|d| (d.event.id, d.attempts)).collect();
    assert!(retried.contains(&(second.event.id, 1)), "the failed one comes back, counting its attempt");
    assert!(!retried.iter().any(|(id, _)| *id == first.event.id || *id == third.event.id));

    // An endpoint dropped from the configuration gets no more attempts; it resumes when it comes back.
    repository.sync_webhook_endpoints(&["https://b.example/hook".to_owned()], &["*".to_owned()]).await.unwrap();
    let far = later + Duration::hours(1);
    assert!(repository.claim_webhook_deliveries(far, 100, Duration::seconds(30)).await.unwrap().is_empty());
    repository.sync_webhook_endpoints(&["https://a.example/hook".to_owned()], &["*".to_owned()]).await.unwrap();
    assert_eq!(repository.claim_webhook_deliveries(far, 100, Duration::seconds(30)).await.unwrap().len(), 38);
}

#[tokio::test]
async fn a_login_whose_session_cannot_be_stored_writes_no_event() {
    use users_domain::UserId;
    use users_domain::ports::SessionStore as _;
    use users_domain::session::{NewSession, RefreshToken, SessionId};
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let now = OffsetDateTime::now_utc();
    // A user that does not exist: the session's foreign key fails, and the transaction takes the event with it.
    let ghost = UserId::generate();
    let session = NewSession {
        id: SessionId::generate(),
        user_id: ghost,
        expires_at: now + time::Duration::days(1),
        refresh_token_hash: RefreshToken::generate().hash(),
        user_agent: None,
        ip: None,
    };
    let event = AuditEvent::new(EventType::LoginSucceeded, now, &ClientInfo::default()).subject(ghost);
    assert!(repository.start_session(session, now, vec![event]).await.is_err());
    for table in ["sessions", "refresh_tokens", "audit_events"] {
        assert_eq!(count(&database, &format!("SELECT count(*) AS count FROM {table}")).await, 0, "{table}");
    }
}
