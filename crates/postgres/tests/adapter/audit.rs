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
