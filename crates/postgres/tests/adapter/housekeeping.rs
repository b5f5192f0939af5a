//! Housekeeping: old rows of every kind go, in batches; live, fresh and pending ones stay; one round at a time.
//!
//! Rows are written directly with timestamps in the past, the way weeks of use would have left them.

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::Duration;
use users_postgres::{HOUSEKEEPING_LOCK, PurgeOutcome, PurgeSettings, Purged};
use users_testkit::TestDatabase;

use crate::support::{count, execute, now, repository, rows};

const RETENTION: Duration = Duration::days(7);

/// Users u1..u3, and for each kind of row some that are old enough to go and some that must stay. Returns what a
/// round with [`RETENTION`] must delete.
async fn seed(database: &TestDatabase) -> Purged {
    execute(
        database,
        "INSERT INTO users (id, email, nickname, role, password_hash) \
         SELECT ('00000000-0000-0000-0000-00000000000' || i)::uuid, 'u' || i || '@example.com', 'user' || i, \
                'AUTHENTICATED', 'x' FROM generate_series(1, 3) i",
    )
    .await;
    let u1 = "'00000000-0000-0000-0000-000000000001'";
    let u2 = "'00000000-0000-0000-0000-000000000002'";
    let u3 = "'00000000-0000-0000-0000-000000000003'";
    // Sessions: a..e go (expired or revoked more than a week ago), the others stay.
    execute(
        database,
        &format!(
            "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at) VALUES \
             ('a0000000-0000-0000-0000-000000000001', {u1}, now() - interval '60 days', now() - interval '40 days', now() - interval '30 days', NULL), \
             ('a0000000-0000-0000-0000-000000000002', {u1}, now() - interval '20 days', now() - interval '9 days', now() + interval '10 days', now() - interval '8 days'), \
             ('b0000000-0000-0000-0000-000000000001', {u1}, now() - interval '20 days', now() - interval '2 days', now() + interval '10 days', now() - interval '1 day'), \
             ('b0000000-0000-0000-0000-000000000002', {u2}, now() - interval '31 days', now() - interval '2 days', now() - interval '1 day', NULL), \
             ('b0000000-0000-0000-0000-000000000003', {u2}, now() - interval '25 days', now() - interval '1 hour', now() + interval '5 days', NULL)"
        ),
    )
    .await;
    // Two refresh tokens per session, one used and one not; the live session's used token is what reuse
    // detection needs, for as long as the session lives.
    execute(
        database,
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, used_at) \
         SELECT s.id || '-' || t, s.id, s.created_at, CASE WHEN t = 1 THEN s.created_at END \
         FROM sessions s, generate_series(1, 2) t",
    )
    .await;
    // Email tokens: expired a week ago, used a week ago (go); expired yesterday, unexpired, used an hour ago (stay).
    execute(
        database,
        &format!(
            "INSERT INTO email_tokens (token_hash, user_id, purpose, created_at, expires_at, used_at) VALUES \
             ('gone-expired', {u1}, 'verify', now() - interval '10 days', now() - interval '8 days', NULL), \
             ('gone-used', {u1}, 'password_reset', now() - interval '9 days', now() + interval '1 day', now() - interval '8 days'), \
             ('kept-expired-lately', {u2}, 'verify', now() - interval '3 days', now() - interval '1 day', NULL), \
             ('kept-live', {u2}, 'password_reset', now() - interval '1 hour', now() + interval '1 hour', NULL), \
             ('kept-used-lately', {u3}, 'verify', now() - interval '2 hours', now() + interval '1 day', now() - interval '1 hour')"
        ),
    )
    .await;
    execute(
        database,
        &format!(
            "INSERT INTO mfa_challenges (token_hash, user_id, created_at, expires_at) VALUES \
             ('gone', {u1}, now() - interval '9 days', now() - interval '8 days'), \
             ('kept-expired-lately', {u1}, now() - interval '2 hours', now() - interval '1 hour'), \
             ('kept-live', {u2}, now(), now() + interval '5 minutes')"
        ),
    )
    .await;
    // Backoff counts: quiet for a week (go, with or without a block that ended); a block still in force and a
    // recent count stay.
    execute(
        database,
        "INSERT INTO login_attempts (key, failures, blocked_until, updated_at) VALUES \
         ('gone@example.com', 3, NULL, now() - interval '8 days'), \
         ('gone-blocked@example.com', 9, now() - interval '8 days', now() - interval '8 days'), \
         ('kept-blocked@example.com', 9, now() + interval '1 hour', now() - interval '8 days'), \
         ('kept-recent@example.com', 2, NULL, now() - interval '1 hour')",
    )
    .await;
    execute(
        database,
        "INSERT INTO rate_limit_windows (route, client, window_start, hits) VALUES \
         ('login', '192.0.2.1', now() - interval '8 days', 3), \
         ('login', '192.0.2.2', now() - interval '10 seconds', 3)",
    )
    .await;
    // Mail: sent or dead a week ago (go); pending however old, and sent yesterday (stay).
    execute(
        database,
        "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, status, next_attempt_at, created_at, sent_at) VALUES \
         (gen_random_uuid(), 'u1@example.com', 's', '', '', 'sent', now() - interval '9 days', now() - interval '9 days', now() - interval '8 days'), \
         (gen_random_uuid(), 'u1@example.com', 's', '', '', 'dead', now() - interval '8 days', now() - interval '9 days', NULL), \
         (gen_random_uuid(), 'u2@example.com', 's', 't', 'h', 'pending', now() - interval '30 days', now() - interval '30 days', NULL), \
         (gen_random_uuid(), 'u2@example.com', 's', '', '', 'sent', now() - interval '1 day', now() - interval '1 day', now() - interval '1 day')",
    )
    .await;
    // A request still waiting for the worker is work to do, however old.
    execute(
        database,
        "INSERT INTO account_requests (id, kind, email, created_at) \
         VALUES (gen_random_uuid(), 'password_reset', 'u3@example.com', now() - interval '30 days')",
    )
    .await;
    // Audit events: older than the audit retention (a year by default) go; a month old stays, whatever RETENTION.
    execute(
        database,
        "INSERT INTO audit_events (id, at, type) VALUES \
         (gen_random_uuid(), now() - interval '400 days', 'login.failed'), \
         ('00000000-0000-4000-8000-0000000000aa', now() - interval '30 days', 'login.failed')",
    )
    .await;
    // Webhook deliveries of the kept event: delivered or dead a week ago (go); pending however old, and delivered
    // yesterday (stay).
    execute(
        database,
        "INSERT INTO webhook_endpoints (id, url, events) VALUES \
         (1, 'https://hooks.example/a', ARRAY['*']), (2, 'https://hooks.example/b', ARRAY['*']), \
         (3, 'https://hooks.example/c', ARRAY['*']), (4, 'https://hooks.example/d', ARRAY['*'])",
    )
    .await;
    execute(
        database,
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, status, next_attempt_at, delivered_at) VALUES \
         ('00000000-0000-4000-8000-0000000000aa', 1, 'delivered', now() - interval '9 days', now() - interval '8 days'), \
         ('00000000-0000-4000-8000-0000000000aa', 2, 'dead', now() - interval '8 days', NULL), \
         ('00000000-0000-4000-8000-0000000000aa', 3, 'pending', now() - interval '30 days', NULL), \
         ('00000000-0000-4000-8000-0000000000aa', 4, 'delivered', now() - interval '1 day', now() - interval '1 day')",
    )
    .await;
    Purged {
        sessions: 2,
        refresh_tokens: 4,
        email_tokens: 2,
        mfa_challenges: 1,
        login_attempts: 2,
        rate_limit_windows: 1,
        outbox_mails: 2,
        webhook_deliveries: 2,
        audit_events: 1,
    }
}

#[tokio::test]
async fn old_rows_of_every_kind_go_and_live_fresh_and_pending_ones_stay() {
    let database = TestDatabase::create().await;
    let expected = seed(&database).await;
    let repository = repository(&database).await;

    let outcome = repository.purge(now(), PurgeSettings::new(RETENTION)).await.unwrap();

    assert_eq!(outcome, PurgeOutcome::Done(expected));
    assert_eq!(count(&database, "SELECT count(*) AS count FROM sessions WHERE id::text LIKE 'b%'").await, 3);
    assert_eq!(rows(&database, "sessions").await, 3, "only the old sessions went");
    assert_eq!(
        count(&database, "SELECT count(*) AS count FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id").await,
        6,
        "every token of every remaining session stays, used ones included"
    );
    assert_eq!(rows(&database, "refresh_tokens").await, 6);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM email_tokens WHERE token_hash LIKE 'kept%'").await, 3);
    assert_eq!(rows(&database, "email_tokens").await, 3);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM mfa_challenges WHERE token_hash LIKE 'kept%'").await, 2);
    assert_eq!(rows(&database, "mfa_challenges").await, 2);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM login_attempts WHERE key LIKE 'kept%'").await, 2);
    assert_eq!(rows(&database, "login_attempts").await, 2);
    assert_eq!(
        count(&database, "SELECT count(*) AS count FROM rate_limit_windows WHERE client = '192.0.2.2'").await,
        1
    );
    assert_eq!(rows(&database, "rate_limit_windows").await, 1);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM mail_outbox WHERE status = 'pending'").await, 1);
    assert_eq!(rows(&database, "mail_outbox").await, 2);
    assert_eq!(
        count(&database, "SELECT count(*) AS count FROM audit_events WHERE at > now() - interval '31 days'").await,
        1
    );
    assert_eq!(rows(&database, "audit_events").await, 1, "only the event past AUDIT_RETENTION went");
    assert_eq!(
        count(&database, "SELECT count(*) AS count FROM webhook_deliveries WHERE endpoint_id IN (3, 4)").await,
        2,
        "pending and recent deliveries stay"
    );
    assert_eq!(rows(&database, "webhook_deliveries").await, 2);
    assert_eq!(rows(&database, "account_requests").await, 1);
    assert_eq!(rows(&database, "users").await, 3, "accounts are never housekeeping's");

    // The lock was given back: another instance's round runs, and finds nothing left to delete.
    let other = crate::support::repository(&database).await;
    assert_eq!(other.purge(now(), PurgeSettings::new(RETENTION)).await.unwrap(), PurgeOutcome::Done(Purged::default()));
}

#[tokio::test]
async fn more_rows_than_a_batch_are_deleted_batch_after_batch() {
    let database = TestDatabase::create().await;
    execute(
        &database,
        "INSERT INTO users (id, email, nickname, role, password_hash) \
         VALUES ('00000000-0000-0000-0000-000000000001', 'u1@example.com', 'user1', 'AUTHENTICATED', 'x')",
    )
    .await;
    // 23 dead sessions with 5 tokens each, 31 sent mails and 17 old windows, in batches of 4.
    execute(
        &database,
        "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at) \
         SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001', now() - interval '40 days', \
                now() - interval '40 days', now() - interval '10 days', NULL FROM generate_series(1, 23)",
    )
    .await;
    execute(
        &database,
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at) \
         SELECT s.id || '-' || t, s.id, s.created_at FROM sessions s, generate_series(1, 5) t",
    )
    .await;
    execute(
        &database,
        "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, status, created_at, sent_at) \
         SELECT gen_random_uuid(), 'u1@example.com', 's', '', '', 'sent', now() - interval '9 days', \
                now() - interval '9 days' FROM generate_series(1, 31)",
    )
    .await;
    execute(
        &database,
        "INSERT INTO rate_limit_windows (route, client, window_start, hits) \
         SELECT 'login', '10.0.0.' || i, now() - interval '9 days', 1 FROM generate_series(1, 17) i",
    )
    .await;
    let repository = repository(&database).await;

    let settings = PurgeSettings { batch_size: 4, ..PurgeSettings::new(RETENTION) };
    let outcome = repository.purge(now(), settings).await.unwrap();

    let expected =
        Purged { sessions: 23, refresh_tokens: 115, outbox_mails: 31, rate_limit_windows: 17, ..Purged::default() };
    assert_eq!(outcome, PurgeOutcome::Done(expected));
    assert_eq!(expected.total(), 186);
    for table in ["sessions", "refresh_tokens", "mail_outbox", "rate_limit_windows"] {
        assert_eq!(rows(&database, table).await, 0, "{table}");
    }
}

#[tokio::test]
async fn a_round_is_skipped_while_another_instance_holds_the_lock() {
    let database = TestDatabase::create().await;
    let expected = seed(&database).await;
    let repository = repository(&database).await;
    // Another instance in the middle of a round: its connection holds the lock.
    let mut other = AsyncPgConnection::establish(&database.url()).await.unwrap();
    diesel::sql_query(format!("SELECT pg_advisory_lock({HOUSEKEEPING_LOCK})")).execute(&mut other).await.unwrap();

    let skipped = repository.purge(now(), PurgeSettings::new(RETENTION)).await.unwrap();

    assert_eq!(skipped, PurgeOutcome::Skipped);
    assert_eq!(rows(&database, "sessions").await, 5, "nothing was deleted");
    assert_eq!(rows(&database, "mail_outbox").await, 4);

    // Once the other round is over, this instance's next round does the work.
    drop(other);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let done = loop {
        match repository.purge(now(), PurgeSettings::new(RETENTION)).await.unwrap() {
            PurgeOutcome::Done(purged) => break purged,
            // The server notices the closed connection a moment after the client drops it.
            PurgeOutcome::Skipped => assert!(std::time::Instant::now() < deadline, "the lock was never released"),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(done, expected);
}

#[tokio::test]
async fn of_two_concurrent_rounds_the_rows_are_deleted_once() {
    let database = TestDatabase::create().await;
    let expected = seed(&database).await;
    let first = repository(&database).await;
    let second = repository(&database).await;

    let at = now();
    let settings = PurgeSettings::new(RETENTION);
    let (one, two) = tokio::join!(first.purge(at, settings), second.purge(at, settings));

    let outcomes = [one.unwrap(), two.unwrap()];
    let done: Vec<Purged> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            PurgeOutcome::Done(purged) => Some(*purged),
            PurgeOutcome::Skipped => None,
        })
        .collect();
    assert!(!done.is_empty(), "at least one round ran: {outcomes:?}");
    // Either one ran and the other skipped, or they ran one after the other and the second found nothing.
    assert_eq!(done.iter().map(Purged::total).sum::<u64>(), expected.total(), "{outcomes:?}");
    assert!(done.contains(&expected), "one round did all the work: {outcomes:?}");
    assert_eq!(rows(&database, "sessions").await, 3);
}
