//! `LoginThrottle`: failures counted atomically per key, the block the domain's policy gives them, and clearing.

use time::Duration;
use tokio::task::JoinSet;
use users_domain::ports::{BackoffPolicy, FailureCount, LoginThrottle as _};
use users_testkit::TestDatabase;

use crate::support::{now, repository, repository_with_connections};

const KEY: &str = "ada@example.com";

#[tokio::test]
async fn a_key_without_failures_has_no_count_and_failures_under_the_threshold_block_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    assert_eq!(repository.login_failures(KEY.to_owned()).await.unwrap(), None);
    let policy = BackoffPolicy::default();
    for _ in 1..policy.after {
        assert_eq!(repository.record_login_failure(KEY.to_owned(), now(), policy, Vec::new()).await.unwrap(), None);
    }
    let count = repository.login_failures(KEY.to_owned()).await.unwrap();
    assert_eq!(count, Some(FailureCount { failures: policy.after - 1, blocked_until: None }));
}

#[tokio::test]
async fn the_failure_at_the_threshold_blocks_for_the_base_and_each_further_one_doubles_up_to_the_maximum() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy { after: 2, base: Duration::seconds(10), max: Duration::seconds(35) };
    let at = now();
    assert_eq!(repository.record_login_failure(KEY.to_owned(), at, policy, Vec::new()).await.unwrap(), None);
    let until = repository.record_login_failure(KEY.to_owned(), at, policy, Vec::new()).await.unwrap();
    assert_eq!(until, Some(at + Duration::seconds(10)));
    let mut at = at;
    for block in [Duration::seconds(20), Duration::seconds(35), Duration::seconds(35)] {
        at += Duration::minutes(5);
        assert_eq!(
            repository.record_login_failure(KEY.to_owned(), at, policy, Vec::new()).await.unwrap(),
            Some(at + block)
        );
    }
    let count = repository.login_failures(KEY.to_owned()).await.unwrap().unwrap();
    assert_eq!(count, FailureCount { failures: 5, blocked_until: Some(at + Duration::seconds(35)) });
    let other = repository.login_failures("grace@example.com".to_owned()).await.unwrap();
    assert_eq!(other, None, "keys are independent");
}

#[tokio::test]
async fn a_block_already_in_place_is_never_shortened() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy { after: 1, base: Duration::seconds(60), max: Duration::minutes(10) };
    let at = now();
    assert_eq!(
        repository.record_login_failure(KEY.to_owned(), at, policy, Vec::new()).await.unwrap(),
        Some(at + Duration::seconds(60))
    );
    // A failure recorded with an earlier clock (another instance) would give an earlier end: the later one stays.
    let earlier = at - Duration::seconds(100);
    let until = repository.record_login_failure(KEY.to_owned(), earlier, policy, Vec::new()).await.unwrap();
    assert_eq!(until, Some(at + Duration::seconds(60)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_failures_are_each_counted_once() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 10).await;
    let policy = BackoffPolicy { after: 5, base: Duration::seconds(1), max: Duration::hours(1) };
    let at = now();
    let mut failures = JoinSet::new();
    for _ in 0..20 {
        let repository = repository.clone();
        failures.spawn(async move { repository.record_login_failure(KEY.to_owned(), at, policy, Vec::new()).await });
    }
    while let Some(failure) = failures.join_next().await {
        failure.unwrap().unwrap();
    }
    let count = repository.login_failures(KEY.to_owned()).await.unwrap().unwrap();
    assert_eq!(count.failures, 20);
    // 20 failures are 15 over the threshold: far past the maximum.
    assert_eq!(count.blocked_until, Some(at + Duration::hours(1)));
}

#[tokio::test]
async fn clearing_forgets_the_count_and_the_block_of_that_key_only() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let policy = BackoffPolicy { after: 1, ..BackoffPolicy::default() };
    let at = now();
    repository.record_login_failure(KEY.to_owned(), at, policy, Vec::new()).await.unwrap();
    repository.record_login_failure("grace@example.com".to_owned(), at, policy, Vec::new()).await.unwrap();

    repository.clear_login_failures(KEY.to_owned()).await.unwrap();
    assert_eq!(repository.login_failures(KEY.to_owned()).await.unwrap(), None);
    let other = repository.login_failures("grace@example.com".to_owned()).await.unwrap().unwrap();
    assert_eq!(other.failures, 1, "other keys keep their count");
    repository.clear_login_failures("nobody@example.com".to_owned()).await.unwrap();
}
