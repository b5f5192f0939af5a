//! The per-email login backoff: attempts reserved before the password check, blocks, and clearing.

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
async fn attempts_under_the_threshold_are_counted_and_let_through() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy::default();
    for _ in 1..policy.after {
        assert_eq!(repository.begin_login_attempt(KEY.to_owned(), now(), policy).await.unwrap(), None);
    }
    assert_eq!(failures(&database, KEY).await, i64::from(policy.after - 1));
}

#[tokio::test]
async fn the_attempt_at_the_threshold_goes_through_but_blocks_the_next_for_the_doubling_time() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy { after: 2, base: Duration::seconds(10), max: Duration::seconds(35) };
    let at = now();
    assert_eq!(repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap(), None);
    // The second attempt is still checked, and blocks whatever comes before its block ends.
    assert_eq!(repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap(), None);
    let blocked = repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap();
    assert_eq!(blocked, Some(at + Duration::seconds(10)));
    assert_eq!(failures(&database, KEY).await, 2, "a blocked attempt is not counted");

    let mut at = at;
    for block in [Duration::seconds(20), Duration::seconds(35), Duration::seconds(35)] {
        at = repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap().unwrap();
        assert_eq!(repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap(), None, "block over");
        assert_eq!(repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap(), Some(at + block));
    }
    let other = repository.begin_login_attempt("grace@example.com".to_owned(), at, policy).await.unwrap();
    assert_eq!(other, None, "keys are independent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_twenty_concurrent_attempts_only_those_under_the_threshold_get_through() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 10).await;
    let policy = BackoffPolicy { after: 5, base: Duration::seconds(60), max: Duration::hours(1) };
    let at = now();

    let mut attempts = JoinSet::new();
    for _ in 0..20 {
        let repository = repository.clone();
        attempts.spawn(async move { repository.begin_login_attempt(KEY.to_owned(), at, policy).await });
    }
    let mut let_through = 0;
    while let Some(attempt) = attempts.join_next().await {
        if attempt.unwrap().unwrap().is_none() {
            let_through += 1;
        }
    }
    assert_eq!(let_through, 5);
    assert_eq!(failures(&database, KEY).await, 5);
    let query = format!("SELECT blocked_until AS value FROM login_attempts WHERE key = '{KEY}'");
    assert_eq!(timestamp(&database, &query).await, Some(at + Duration::seconds(60)));
}

#[tokio::test]
async fn clearing_forgets_the_count_and_the_block() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy { after: 1, ..BackoffPolicy::default() };
    let at = now();
    repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap();
    repository.begin_login_attempt("grace@example.com".to_owned(), at, policy).await.unwrap();
    assert!(repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap().is_some());

    repository.clear_login_failures(KEY.to_owned()).await.unwrap();
    assert_eq!(failures(&database, KEY).await, 0);
    assert_eq!(failures(&database, "grace@example.com").await, 1, "other keys keep their count");
    assert_eq!(repository.begin_login_attempt(KEY.to_owned(), at, policy).await.unwrap(), None);
    assert_eq!(failures(&database, KEY).await, 1, "counting starts over");
    repository.clear_login_failures("nobody@example.com".to_owned()).await.unwrap();
}
