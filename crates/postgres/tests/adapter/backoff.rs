//! The per-email login backoff: counting, blocking, and clearing.

use time::Duration;
use tokio::task::JoinSet;
use users_domain::accounts::BackoffPolicy;
use users_domain::ports::UserRepository as _;
use users_testkit::TestDatabase;

use crate::support::{count, now, repository, repository_with_connections, timestamp};

const KEY: &str = "ada@example.com";

async fn failures(database: &TestDatabase, key: &str) -> i64 {
    count(
        database,
        &format!("SELECT coalesce(max(failures), 0)::bigint AS count FROM login_attempts WHERE key = '{key}'"),
    )
    .await
}

#[tokio::test]
async fn a_key_without_failures_is_not_blocked() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    assert_eq!(repository.login_blocked_until(KEY.to_owned(), now()).await.unwrap(), None);
}

#[tokio::test]
async fn failures_under_the_threshold_are_counted_without_blocking() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy::default();
    for _ in 1..policy.after {
        repository.record_login_failure(KEY.to_owned(), now(), policy).await.unwrap();
    }
    assert_eq!(failures(&database, KEY).await, i64::from(policy.after - 1));
    assert_eq!(repository.login_blocked_until(KEY.to_owned(), now()).await.unwrap(), None);
}

#[tokio::test]
async fn past_the_threshold_each_failure_blocks_for_the_policys_doubling_time() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy { after: 2, base: Duration::seconds(10), max: Duration::seconds(35) };
    let at = now();
    repository.record_login_failure(KEY.to_owned(), at, policy).await.unwrap();
    assert_eq!(repository.login_blocked_until(KEY.to_owned(), at).await.unwrap(), None);

    let expected = [Duration::seconds(10), Duration::seconds(20), Duration::seconds(35), Duration::seconds(35)];
    for block in expected {
        repository.record_login_failure(KEY.to_owned(), at, policy).await.unwrap();
        assert_eq!(repository.login_blocked_until(KEY.to_owned(), at).await.unwrap(), Some(at + block));
    }
    assert_eq!(repository.login_blocked_until(KEY.to_owned(), at + Duration::seconds(35)).await.unwrap(), None);
    let other = repository.login_blocked_until("grace@example.com".to_owned(), at).await.unwrap();
    assert_eq!(other, None, "keys are independent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_failures_are_all_counted_and_the_block_matches_the_last_count() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 10).await;
    let policy = BackoffPolicy { after: 5, base: Duration::seconds(1), max: Duration::hours(1) };
    let at = now();

    let mut failures_in_flight = JoinSet::new();
    for _ in 0..10 {
        let repository = repository.clone();
        failures_in_flight.spawn(async move { repository.record_login_failure(KEY.to_owned(), at, policy).await });
    }
    while let Some(recorded) = failures_in_flight.join_next().await {
        recorded.unwrap().unwrap();
    }
    assert_eq!(failures(&database, KEY).await, 10);
    let query = format!("SELECT blocked_until AS value FROM login_attempts WHERE key = '{KEY}'");
    assert_eq!(
        timestamp(&database, &query).await,
        Some(at + policy.block_for(10).unwrap()),
        "never the block of an earlier count"
    );
}

#[tokio::test]
async fn clearing_failures_forgets_the_count_and_the_block() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy { after: 1, ..BackoffPolicy::default() };
    let at = now();
    repository.record_login_failure(KEY.to_owned(), at, policy).await.unwrap();
    repository.record_login_failure("grace@example.com".to_owned(), at, policy).await.unwrap();
    assert!(repository.login_blocked_until(KEY.to_owned(), at).await.unwrap().is_some());

    repository.clear_login_failures(KEY.to_owned()).await.unwrap();
    assert_eq!(repository.login_blocked_until(KEY.to_owned(), at).await.unwrap(), None);
    assert_eq!(failures(&database, KEY).await, 0);
    assert_eq!(failures(&database, "grace@example.com").await, 1, "other keys keep their count");

    repository.record_login_failure(KEY.to_owned(), at, policy).await.unwrap();
    assert_eq!(failures(&database, KEY).await, 1, "counting starts over");
    repository.clear_login_failures("nobody@example.com".to_owned()).await.unwrap();
}
