//! `AccountRequests`: the queue of enumeration-prone requests, its absorption of repeats, and claims as leases.

use std::collections::HashSet;

use time::Duration;
use users_domain::ports::{AccountRequestKind, AccountRequests as _};
use users_domain::user::EmailAddress;
use users_testkit::TestDatabase;
use uuid::Uuid;

use crate::support::{count, execute, now, repository, repository_with_connections, rows};

const LEASE: Duration = Duration::minutes(2);

fn email(raw: &str) -> EmailAddress {
    EmailAddress::parse(raw).unwrap()
}

#[tokio::test]
async fn a_queued_request_is_claimed_once_per_lease_and_gone_once_finished() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let at = now();
    repository.queue_account_request(AccountRequestKind::PasswordReset, email("Ada@example.com"), at).await.unwrap();
    repository
        .queue_account_request(AccountRequestKind::Verification, email("grace@example.com"), at + Duration::seconds(1))
        .await
        .unwrap();

    let claimed = repository.claim_account_requests(at, 1, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1, "up to the limit");
    assert_eq!(claimed[0].kind, AccountRequestKind::PasswordReset, "oldest first");
    assert_eq!(claimed[0].email.as_str(), "Ada@example.com");
    let rest = repository.claim_account_requests(at, 10, LEASE).await.unwrap();
    assert_eq!(rest.iter().map(|request| request.kind).collect::<Vec<_>>(), [AccountRequestKind::Verification]);
    assert_eq!(repository.claim_account_requests(at + LEASE - Duration::seconds(1), 10, LEASE).await.unwrap(), []);

    // A worker that crashed lets its lease run out; another takes the request over.
    let again = repository.claim_account_requests(at + LEASE, 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 2);
    for request in &again {
        repository.finish_account_request(request.id).await.unwrap();
    }
    assert_eq!(rows(&database, "account_requests").await, 0);
    repository.finish_account_request(Uuid::now_v7()).await.unwrap();
}

#[tokio::test]
async fn a_repeat_of_a_waiting_request_is_absorbed_in_any_case_and_another_kind_is_not() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let at = now();
    for raw in ["ada@example.com", "ADA@example.com", "Ada@Example.com"] {
        repository.queue_account_request(AccountRequestKind::PasswordReset, email(raw), at).await.unwrap();
    }
    repository.queue_account_request(AccountRequestKind::Verification, email("ada@example.com"), at).await.unwrap();
    assert_eq!(rows(&database, "account_requests").await, 2);
    let resets = "SELECT count(*) AS count FROM account_requests WHERE kind = 'password_reset'";
    assert_eq!(count(&database, resets).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_claims_never_return_the_same_request() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 4).await;
    let at = now();
    for i in 0..30 {
        let address = email(&format!("user{i}@example.com"));
        repository.queue_account_request(AccountRequestKind::PasswordReset, address, at).await.unwrap();
    }
    let (first, second) = tokio::join!(
        repository.claim_account_requests(at, 20, LEASE),
        repository.claim_account_requests(at, 20, LEASE)
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    let first_ids: HashSet<Uuid> = first.iter().map(|request| request.id).collect();
    let second_ids: HashSet<Uuid> = second.iter().map(|request| request.id).collect();
    assert!(first_ids.is_disjoint(&second_ids), "a request was claimed twice");
    let left = repository.claim_account_requests(at, 100, LEASE).await.unwrap();
    assert_eq!(first.len() + second.len() + left.len(), 30, "skipped rows are passed over, not lost");
}

#[tokio::test]
async fn a_request_the_domain_refuses_is_dropped_instead_of_blocking_the_queue() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let at = now();
    repository.queue_account_request(AccountRequestKind::PasswordReset, email("ada@example.com"), at).await.unwrap();
    repository.queue_account_request(AccountRequestKind::Verification, email("grace@example.com"), at).await.unwrap();
    execute(&database, "UPDATE account_requests SET email = 'not an address' WHERE kind = 'password_reset'").await;

    let claimed = repository.claim_account_requests(at, 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|request| request.email.as_str()).collect::<Vec<_>>(), ["grace@example.com"]);
    assert_eq!(rows(&database, "account_requests").await, 1, "the unreadable request is gone");
}
