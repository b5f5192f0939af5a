//! `MailOutbox`: queueing, and the outbox as the dispatcher drains it: claims, leases, delivery and failure.

use std::collections::HashSet;

use time::{Duration, OffsetDateTime};
use users_domain::ports::{MailOutbox as _, PortError};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;
use uuid::Uuid;

use crate::support::{count, execute, mail, now, repository, repository_with_connections, text, timestamp};

const LEASE: Duration = Duration::minutes(5);

/// A moment safely after every mail queued so far: queueing stamps rows with the database's clock.
fn later() -> OffsetDateTime {
    now() + Duration::seconds(1)
}

async fn queue(repository: &PgRepository, subjects: &[&str]) {
    for subject in subjects {
        repository.queue_mail(mail("ada@example.com", subject)).await.unwrap();
    }
}

async fn status(database: &TestDatabase, id: Uuid) -> String {
    text(database, &format!("SELECT status AS value FROM mail_outbox WHERE id = '{id}'")).await.unwrap()
}

async fn attempts(database: &TestDatabase, id: Uuid) -> i64 {
    count(database, &format!("SELECT attempts::bigint AS count FROM mail_outbox WHERE id = '{id}'")).await
}

#[tokio::test]
async fn a_queued_mail_is_pending_and_due_at_once() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    repository.queue_mail(mail("ada@example.com", "Hello")).await.unwrap();
    let due = "SELECT count(*) AS count FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= now() \
               AND to_address = 'ada@example.com' AND subject = 'Hello' AND text_body LIKE 'Hello%' \
               AND html_body = '<p>Hello</p>' AND attempts = 0 AND last_error IS NULL AND sent_at IS NULL";
    assert_eq!(count(&database, due).await, 1);
}

#[tokio::test]
async fn a_mail_with_a_line_break_in_its_subject_is_refused() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let error = repository.queue_mail(mail("ada@example.com", "Hi\r\nBcc: victim@example.com")).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
    assert_eq!(count(&database, "SELECT count(*) AS count FROM mail_outbox").await, 0);
}

#[tokio::test]
async fn claiming_returns_due_mail_oldest_first_up_to_the_limit_and_leases_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    queue(&repository, &["first", "second", "third"]).await;
    let at = later();

    let claimed = repository.claim_due_mail(at, 2, LEASE).await.unwrap();
    let subjects: Vec<&str> = claimed.iter().map(|message| message.mail.subject.as_str()).collect();
    assert_eq!(subjects, ["first", "second"]);
    let message = &claimed[0];
    assert_eq!(message.attempts, 0);
    assert_eq!(message.mail, mail("ada@example.com", "first"));
    let query = format!("SELECT next_attempt_at AS value FROM mail_outbox WHERE id = '{}'", message.id);
    assert_eq!(timestamp(&database, &query).await, Some(at + LEASE));

    let rest = repository.claim_due_mail(at, 10, LEASE).await.unwrap();
    assert_eq!(rest.iter().map(|message| message.mail.subject.as_str()).collect::<Vec<_>>(), ["third"]);
    assert_eq!(repository.claim_due_mail(at, 10, LEASE).await.unwrap(), vec![], "everything is leased");
}

#[tokio::test]
async fn a_claim_of_nothing_or_with_a_zero_limit_returns_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    assert_eq!(repository.claim_due_mail(later(), 10, LEASE).await.unwrap(), vec![]);
    queue(&repository, &["one"]).await;
    assert_eq!(repository.claim_due_mail(later(), 0, LEASE).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_claims_never_return_the_same_mail() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 4).await;
    for round in 0..5 {
        execute(&database, "DELETE FROM mail_outbox").await;
        let subjects: Vec<String> = (0..30).map(|i| format!("mail {i}")).collect();
        queue(&repository, &subjects.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let at = later();

        let (first, second) =
            tokio::join!(repository.claim_due_mail(at, 20, LEASE), repository.claim_due_mail(at, 20, LEASE));
        let (first, second) = (first.unwrap(), second.unwrap());
        let first_ids: HashSet<Uuid> = first.iter().map(|message| message.id).collect();
        let second_ids: HashSet<Uuid> = second.iter().map(|message| message.id).collect();
        assert!(first_ids.is_disjoint(&second_ids), "round {round}: a mail was claimed twice");
        assert!(first.len() <= 20 && second.len() <= 20, "round {round}");
        // Skipped rows are only passed over, not lost: whatever neither claim took is still there for the next.
        let left = repository.claim_due_mail(at, 100, LEASE).await.unwrap();
        assert_eq!(first.len() + second.len() + left.len(), 30, "round {round}");
    }
}

#[tokio::test]
async fn an_expired_lease_lets_another_dispatcher_claim_the_mail_again() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    queue(&repository, &["crashed"]).await;
    let at = later();
    let claimed = repository.claim_due_mail(at, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);

    assert_eq!(repository.claim_due_mail(at + LEASE - Duration::seconds(1), 10, LEASE).await.unwrap(), vec![]);
    let reclaimed = repository.claim_due_mail(at + LEASE, 10, LEASE).await.unwrap();
    assert_eq!(reclaimed.iter().map(|message| message.id).collect::<Vec<_>>(), vec![claimed[0].id]);
}

#[tokio::test]
async fn a_sent_mail_is_never_claimed_again() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    queue(&repository, &["hello"]).await;
    let at = later();
    let id = repository.claim_due_mail(at, 10, LEASE).await.unwrap()[0].id;

    repository.mark_mail_sent(id, at).await.unwrap();
    assert_eq!(status(&database, id).await, "sent");
    let sent_at = timestamp(&database, &format!("SELECT sent_at AS value FROM mail_outbox WHERE id = '{id}'")).await;
    assert_eq!(sent_at, Some(at));
    assert_eq!(attempts(&database, id).await, 1);
    assert_eq!(repository.claim_due_mail(at + Duration::days(1), 10, LEASE).await.unwrap(), vec![]);
    let bodies =
        format!("SELECT count(*) AS count FROM mail_outbox WHERE id = '{id}' AND text_body = '' AND html_body = ''");
    assert_eq!(count(&database, &bodies).await, 1, "a delivered mail keeps no link-bearing body");
}

#[tokio::test]
async fn a_failed_mail_is_retried_at_the_given_time_with_its_error_recorded() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    queue(&repository, &["flaky"]).await;
    let at = later();
    let id = repository.claim_due_mail(at, 10, LEASE).await.unwrap()[0].id;
    let retry_at = at + Duration::minutes(1);

    repository.mark_mail_failed(id, Some(retry_at), format!("421 {}", "x".repeat(2000))).await.unwrap();
    assert_eq!(status(&database, id).await, "pending");
    let error =
        text(&database, &format!("SELECT last_error AS value FROM mail_outbox WHERE id = '{id}'")).await.unwrap();
    assert_eq!(error.chars().count(), 1000);
    assert!(error.starts_with("421 x"));

    assert_eq!(repository.claim_due_mail(retry_at - Duration::seconds(1), 10, LEASE).await.unwrap(), vec![]);
    let retried = repository.claim_due_mail(retry_at, 10, LEASE).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attempts, 1, "the attempt is counted");
}

#[tokio::test]
async fn a_failed_mail_without_a_retry_time_is_dead_and_never_claimed_again() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    queue(&repository, &["doomed"]).await;
    let at = later();
    let id = repository.claim_due_mail(at, 10, LEASE).await.unwrap()[0].id;

    repository.mark_mail_failed(id, None, "550 no such mailbox".to_owned()).await.unwrap();
    assert_eq!(status(&database, id).await, "dead");
    assert_eq!(attempts(&database, id).await, 1);
    assert_eq!(repository.claim_due_mail(at + Duration::days(30), 10, LEASE).await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_late_failure_report_does_not_undo_a_delivery() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    queue(&repository, &["twice"]).await;
    let at = later();
    let id = repository.claim_due_mail(at, 10, LEASE).await.unwrap()[0].id;

    repository.mark_mail_sent(id, at).await.unwrap();
    repository.mark_mail_failed(id, None, "timeout".to_owned()).await.unwrap();
    repository.mark_mail_failed(id, Some(at), "timeout".to_owned()).await.unwrap();
    assert_eq!(status(&database, id).await, "sent");
    assert_eq!(text(&database, &format!("SELECT last_error AS value FROM mail_outbox WHERE id = '{id}'")).await, None);
}

#[tokio::test]
async fn a_row_whose_recipient_does_not_parse_is_dead_lettered_and_the_rest_of_the_batch_goes_out() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    queue(&repository, &["broken", "fine"]).await;
    execute(&database, "UPDATE mail_outbox SET to_address = 'not an address' WHERE subject = 'broken'").await;

    let claimed = repository.claim_due_mail(later(), 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|message| message.mail.subject.as_str()).collect::<Vec<_>>(), ["fine"]);
    let dead = "SELECT count(*) AS count FROM mail_outbox WHERE subject = 'broken' AND status = 'dead' \
                AND last_error IS NOT NULL";
    assert_eq!(count(&database, dead).await, 1);
}
