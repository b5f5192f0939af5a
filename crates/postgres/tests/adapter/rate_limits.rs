//! The per-address request counts: one window per route and address that every pool on the database counts into,
//! each request counted exactly once, a new window once the old one ended.

use std::net::IpAddr;

use time::Duration;
use users_domain::ports::{PortError, RequestCounter as _};
use users_testkit::TestDatabase;

use crate::support::{count, execute, now, repository, repository_at, repository_with_connections};

const WINDOW: Duration = Duration::minutes(1);

fn address(last: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, last])
}

#[tokio::test]
async fn two_instances_count_into_the_same_window() {
    let database = TestDatabase::create().await;
    // Two pools on one database: what two instances of the service are.
    let first = repository(&database).await;
    let second = repository(&database).await;
    let start = now();

    let mut counts = Vec::new();
    for step in 0..6_i64 {
        let instance = if step % 2 == 0 { &first } else { &second };
        let at = start + Duration::seconds(step);
        counts.push(instance.count_request("login", address(7), at, WINDOW).await.unwrap());
    }

    let hits: Vec<u32> = counts.iter().map(|count| count.hits).collect();
    assert_eq!(hits, [1, 2, 3, 4, 5, 6], "each instance sees the other's requests");
    assert!(counts.iter().all(|count| count.ends_at == start + WINDOW), "one window, started by the first request");
    assert_eq!(count(&database, "SELECT count(*) AS count FROM rate_limit_windows").await, 1);
}

#[tokio::test]
async fn past_the_limit_the_window_end_is_a_sane_wait() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let start = now();
    let limit = 3;
    for step in 0..limit {
        let counted =
            repository.count_request("register", address(1), start + Duration::seconds(step.into()), WINDOW).await;
        assert!(counted.unwrap().hits <= limit);
    }

    let at = start + Duration::seconds(20);
    let refused = repository.count_request("register", address(1), at, WINDOW).await.unwrap();

    assert_eq!(refused.hits, limit + 1, "the request past the limit is counted and shows as over it");
    let wait = refused.ends_at - at;
    assert_eq!(wait, Duration::seconds(40), "the rest of the minute the first request opened");
}

#[tokio::test]
async fn a_window_that_ended_gives_way_to_a_new_one() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let start = now();
    for _ in 0..5 {
        repository.count_request("login", address(2), start, WINDOW).await.unwrap();
    }

    // A minute later, the same route and address start again from one, in a window starting now.
    let later = start + WINDOW;
    let fresh = repository.count_request("login", address(2), later, WINDOW).await.unwrap();
    assert_eq!(fresh.hits, 1);
    assert_eq!(fresh.ends_at, later + WINDOW);

    // A window written long ago (by an instance that has since gone) counts for nothing either.
    execute(
        &database,
        "INSERT INTO rate_limit_windows (route, client, window_start, hits) \
         VALUES ('forgot-password', '198.51.100.2', now() - interval '2 minutes', 500)",
    )
    .await;
    let at = now();
    let counted = repository.count_request("forgot-password", address(2), at, WINDOW).await.unwrap();
    assert_eq!(counted.hits, 1);
    assert_eq!(counted.ends_at, at + WINDOW);
}

#[tokio::test]
async fn routes_and_addresses_have_windows_of_their_own() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let at = now();
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    for _ in 0..3 {
        repository.count_request("login", address(3), at, WINDOW).await.unwrap();
    }

    assert_eq!(repository.count_request("login", address(4), at, WINDOW).await.unwrap().hits, 1);
    assert_eq!(repository.count_request("register", address(3), at, WINDOW).await.unwrap().hits, 1);
    assert_eq!(repository.count_request("login", v6, at, WINDOW).await.unwrap().hits, 1);
    assert_eq!(repository.count_request("login", address(3), at, WINDOW).await.unwrap().hits, 4);
}

#[tokio::test]
async fn concurrent_requests_from_two_instances_are_each_counted_once() {
    let database = TestDatabase::create().await;
    let first = repository_with_connections(database.url(), 8).await;
    let second = repository_with_connections(database.url(), 8).await;
    let at = now();

    let mut tasks = tokio::task::JoinSet::new();
    for request in 0..40 {
        let instance = if request % 2 == 0 { first.clone() } else { second.clone() };
        tasks.spawn(async move { instance.count_request("login", address(5), at, WINDOW).await.unwrap().hits });
    }
    let mut hits = tasks.join_all().await;
    hits.sort_unstable();

    assert_eq!(hits, (1..=40).collect::<Vec<u32>>(), "no count lost, none repeated");
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    // Nothing listens on port 1.
    let repository = repository_at("postgres://postgres@127.0.0.1:1/postgres".to_owned()).await;
    let error = repository.count_request("login", address(6), now(), WINDOW).await.unwrap_err();
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
}
