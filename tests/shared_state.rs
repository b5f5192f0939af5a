//! Several instances of the real binary on one database: the per-IP limits hold for all of them together, and
//! housekeeping runs from the command line with what it deleted printed per kind.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::collections::HashMap;
use std::time::Duration;

use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use serde_json::{Value, json};
use users_e2e::{BinaryApp, free_port, json_body, run_cli, run_until_exit, unique_email};
use users_postgres::HOUSEKEEPING_LOCK;
use users_testkit::TestDatabase;

const LIMIT: usize = 4;

#[tokio::test]
async fn the_per_ip_limit_holds_for_two_instances_together_not_for_each() {
    let settings =
        [("RATE_LIMITS".to_owned(), "on".to_owned()), ("RATE_LIMIT_PER_MINUTE".to_owned(), LIMIT.to_string())];
    let first = BinaryApp::start_with(&settings, |_| {}).await;
    let second = first.start_peer(&[]).await;
    let urls = [first.url("/password/forgot"), second.url("/password/forgot")];
    let forgot = |url: &str| first.client.post(url).json(&json!({ "email": unique_email("shared") })).send();

    // The limit's worth of requests, spread over both instances, all pass.
    for attempt in 0..LIMIT {
        let url = &urls[attempt % 2];
        assert_eq!(forgot(url).await.unwrap().status(), 202, "attempt {attempt} on {url}");
    }

    // Then both refuse: the budget was shared, not one per instance.
    for url in &urls {
        let refused = forgot(url).await.unwrap();
        assert_eq!(refused.status(), 429, "{url}");
        let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after} on {url}");
        let body: Value = json_body(refused).await;
        assert_eq!(body["code"], "rate_limited", "{body}");
    }
    let hits = first.db.count("SELECT hits::bigint AS n FROM rate_limit_windows WHERE route = 'forgot'").await;
    assert_eq!(hits, 6, "one shared window counted every request, the refused ones included");
    // Another route from the same address has a budget of its own, on either instance.
    let registered = first
        .client
        .post(second.url("/register"))
        .json(&json!({ "email": unique_email("shared"), "password": users_e2e::STRONG_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 202);
}

/// A database of its own with a few old rows, and the environment `user-management purge` needs for it. No server
/// runs on it, so only the command's round can delete anything.
async fn database_with_old_rows() -> (TestDatabase, HashMap<String, String>) {
    let db = TestDatabase::create().await;
    db.execute(
        "INSERT INTO rate_limit_windows (route, client, window_start, hits) \
         SELECT 'login', '10.1.0.' || i, now() - interval '8 days', 2 FROM generate_series(1, 3) i",
    )
    .await;
    db.execute(
        "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, status, created_at, sent_at) \
         SELECT gen_random_uuid(), 'old@example.com', 'old', '', '', 'sent', now() - interval '9 days', \
                now() - interval '9 days' FROM generate_series(1, 2)",
    )
    .await;
    db.execute(
        "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, status, created_at) \
         VALUES (gen_random_uuid(), 'waiting@example.com', 'waiting', 't', 'h', 'pending', now() - interval '9 days')",
    )
    .await;
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("RETENTION".to_owned(), "7d".to_owned()),
        ("LOG_FORMAT".to_owned(), "json".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    (db, env)
}

#[tokio::test]
async fn purge_deletes_old_rows_and_prints_what_it_deleted_per_kind() {
    let (db, env) = database_with_old_rows().await;

    let output = run_cli(&["purge"], &env, "");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in ["rate_limit_windows: 3", "outbox_mails: 2", "sessions: 0", "refresh_tokens: 0", "deleted 5 rows"] {
        assert!(stdout.lines().any(|printed| printed.starts_with(line)), "no {line:?} in:\n{stdout}");
    }
    assert_eq!(db.count("SELECT count(*) AS n FROM rate_limit_windows").await, 0);
    assert_eq!(db.count("SELECT count(*) AS n FROM mail_outbox").await, 1, "pending mail is never deleted");
}

#[tokio::test]
async fn purge_says_so_and_deletes_nothing_while_another_instance_holds_the_lock() {
    let (db, env) = database_with_old_rows().await;
    // Another instance in the middle of a round. (Imported here: its `execute` would shadow the database's.)
    use diesel_async::RunQueryDsl as _;
    let mut other = AsyncPgConnection::establish(&db.url()).await.unwrap();
    diesel::sql_query(format!("SELECT pg_advisory_lock({HOUSEKEEPING_LOCK})")).execute(&mut other).await.unwrap();

    let output = run_cli(&["purge"], &env, "");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("skipped: another instance is running housekeeping"), "{stdout}");
    assert_eq!(db.count("SELECT count(*) AS n FROM rate_limit_windows").await, 3, "nothing was deleted");
    assert_eq!(db.count("SELECT count(*) AS n FROM mail_outbox").await, 3);
}

#[tokio::test]
async fn a_bad_retention_or_purge_interval_stops_start_up_naming_it() {
    for (variable, value) in [("RETENTION", "a week"), ("RETENTION", "10m"), ("PURGE_INTERVAL", "hourly")] {
        let env = HashMap::from([
            (variable.to_owned(), value.to_owned()),
            ("BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port())),
            ("METRICS_BIND_ADDR".to_owned(), String::new()),
        ]);
        let output = run_until_exit(&["serve"], &env, Duration::from_secs(30));
        assert!(!output.status.success(), "{variable}={value} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("{variable}: ")), "{variable}={value}: {stderr}");
    }
}
