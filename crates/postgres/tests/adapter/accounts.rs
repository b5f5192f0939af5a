//! Registration, email tokens, password reset and change, profile updates and deletion: each workflow commits as a
//! whole or not at all, checked by looking at the tables directly.

use time::Duration;
use users_domain::accounts::{
    ConfirmEmailError, EmailChangeRequest, EmailConfirmation, EmailTokenPurpose, ProfileChanges, UpdateProfileError,
};
use users_domain::permissions::Role;
use users_domain::ports::{InsertUserError, PortError, UserRepository as _};
use users_domain::session::{SessionId, TokenHash};
use users_domain::user::{Bio, Nickname, PasswordHash, PersonName, ProfileUrl, ProfileUrlKind, User, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;

use crate::support::{count, email_token, execute, mail, new_session, new_user, now, repository, token_hash};

const DAY: Duration = Duration::days(1);

async fn insert(repository: &PgRepository, email: &str, nickname: &str) -> User {
    repository.insert_user(new_user(email, nickname)).await.unwrap()
}

async fn rows(database: &TestDatabase, table: &str) -> i64 {
    count(database, &format!("SELECT count(*) AS count FROM {table}")).await
}

fn new_hash() -> PasswordHash {
    PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA".to_owned())
}

/// Issues a token of `purpose` to `user` and returns its hash.
async fn issue(
    repository: &PgRepository,
    user: &User,
    purpose: EmailTokenPurpose,
    new_email: Option<&str>,
) -> TokenHash {
    let token = email_token(user.id, purpose, new_email, now(), DAY);
    let hash = token.hash.clone();
    repository.issue_email_token(token, vec![]).await.unwrap();
    hash
}

async fn revoked_at(repository: &PgRepository, id: SessionId) -> Option<time::OffsetDateTime> {
    repository.find_session_with_user(id).await.unwrap().unwrap().0.revoked_at
}

async fn token_used(database: &TestDatabase, hash: &TokenHash) -> bool {
    let query = format!(
        "SELECT count(*) AS count FROM email_tokens WHERE token_hash = '{}' AND used_at IS NOT NULL",
        hash.as_str()
    );
    count(database, &query).await == 1
}

#[tokio::test]
async fn registering_stores_the_user_the_verification_token_and_the_mail_together() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = new_user("ada@example.com", "ada");
    let token = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);

    let registered = repository.register(user.clone(), token.clone(), mail("ada@example.com", "Verify")).await.unwrap();
    assert_eq!(registered.id, user.id);
    assert_eq!(registered.role, Role::Anonymous);
    let stored = format!(
        "SELECT count(*) AS count FROM email_tokens WHERE token_hash = '{}' AND user_id = '{}' \
         AND purpose = 'verify' AND used_at IS NULL AND expires_at = '{}'",
        token.hash.as_str(),
        user.id,
        token.expires_at
    );
    assert_eq!(count(&database, &stored).await, 1);
    let queued = "SELECT count(*) AS count FROM mail_outbox WHERE to_address = 'ada@example.com' \
                  AND subject = 'Verify' AND status = 'pending' AND attempts = 0";
    assert_eq!(count(&database, queued).await, 1);
}

#[tokio::test]
async fn a_registration_with_a_taken_email_stores_no_user_token_or_mail() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let first = new_user("ada@example.com", "ada");
    let first_token = email_token(first.id, EmailTokenPurpose::Verify, None, now(), DAY);
    repository.register(first, first_token, mail("ada@example.com", "Verify")).await.unwrap();

    let second = new_user("ADA@example.com", "someone_else");
    let second_token = email_token(second.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let error = repository.register(second, second_token, mail("ADA@example.com", "Verify")).await.unwrap_err();
    assert!(matches!(error, InsertUserError::EmailTaken), "{error:?}");
    assert_eq!(rows(&database, "users").await, 1);
    assert_eq!(rows(&database, "email_tokens").await, 1);
    assert_eq!(rows(&database, "mail_outbox").await, 1);
}

#[tokio::test]
async fn a_registration_with_a_taken_nickname_stores_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    insert(&repository, "ada@example.com", "ada").await;

    let second = new_user("grace@example.com", "ADA");
    let token = email_token(second.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let error = repository.register(second, token, mail("grace@example.com", "Verify")).await.unwrap_err();
    assert!(matches!(error, InsertUserError::NicknameTaken), "{error:?}");
    assert_eq!(rows(&database, "users").await, 1);
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn a_registration_whose_mail_cannot_be_stored_leaves_no_account_behind() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = new_user("ada@example.com", "ada");
    let token = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);
    // The outbox refuses a subject with a line break, the last of the three inserts.
    let broken = mail("ada@example.com", "Verify\r\nBcc: victim@example.com");

    let error = repository.register(user, token, broken).await.unwrap_err();
    assert!(matches!(error, InsertUserError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(rows(&database, "users").await, 0);
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn a_registration_whose_token_belongs_to_someone_else_is_refused_before_anything_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = new_user("ada@example.com", "ada");
    let token = email_token(UserId::generate(), EmailTokenPurpose::Verify, None, now(), DAY);

    let error = repository.register(user, token, mail("ada@example.com", "Verify")).await.unwrap_err();
    assert!(matches!(error, InsertUserError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(rows(&database, "users").await, 0);
}

#[tokio::test]
async fn a_queued_mail_is_pending_and_due_at_once() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    repository.queue_mail(mail("ada@example.com", "Hello")).await.unwrap();
    let due = "SELECT count(*) AS count FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= now() \
               AND text_body LIKE 'Hello%' AND html_body = '<p>Hello</p>' AND last_error IS NULL AND sent_at IS NULL";
    assert_eq!(count(&database, due).await, 1);
}

#[tokio::test]
async fn following_a_verification_link_verifies_the_address_and_promotes_an_anonymous_user() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;
    let at = now();

    let confirmed = repository.confirm_email(user.id, hash.clone(), at).await.unwrap();
    let EmailConfirmation::Verified(verified) = confirmed else { panic!("expected Verified, got {confirmed:?}") };
    assert!(verified.email_verified);
    assert_eq!(verified.role, Role::Authenticated);
    assert_eq!(verified.updated_at, at);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), verified);
    assert!(token_used(&database, &hash).await);
}

#[tokio::test]
async fn verifying_never_demotes_a_manager() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    execute(&database, &format!("UPDATE users SET role = 'MANAGER' WHERE id = '{}'", user.id)).await;
    let hash = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;

    let confirmed = repository.confirm_email(user.id, hash, now()).await.unwrap();
    let EmailConfirmation::Verified(verified) = confirmed else { panic!("expected Verified, got {confirmed:?}") };
    assert_eq!(verified.role, Role::Manager);
    assert!(verified.email_verified);
}

#[tokio::test]
async fn a_verification_token_works_only_once() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;

    repository.confirm_email(user.id, hash.clone(), now()).await.unwrap();
    let again = repository.confirm_email(user.id, hash, now()).await.unwrap_err();
    assert!(matches!(again, ConfirmEmailError::InvalidToken), "{again:?}");
}

#[tokio::test]
async fn of_two_concurrent_clicks_on_one_link_exactly_one_confirms() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;

    let (first, second) = tokio::join!(
        repository.confirm_email(user.id, hash.clone(), now()),
        repository.confirm_email(user.id, hash.clone(), now()),
    );
    let outcomes = [first, second];
    assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|outcome| matches!(outcome, Err(ConfirmEmailError::InvalidToken))));
}

#[tokio::test]
async fn an_expired_verification_token_is_invalid_and_changes_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let token = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let hash = token.hash.clone();
    repository.issue_email_token(token.clone(), vec![]).await.unwrap();

    // Expiry is judged by the clock the service passes in, so "a day later" needs no waiting.
    let error = repository.confirm_email(user.id, hash.clone(), token.expires_at).await.unwrap_err();
    assert!(matches!(error, ConfirmEmailError::InvalidToken), "{error:?}");
    assert!(!token_used(&database, &hash).await);
    assert!(!repository.find_user(user.id).await.unwrap().unwrap().email_verified);
}

#[tokio::test]
async fn a_token_presented_for_another_user_is_invalid_and_stays_usable_by_its_owner() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert(&repository, "ada@example.com", "ada").await;
    let grace = insert(&repository, "grace@example.com", "grace").await;
    let hash = issue(&repository, &ada, EmailTokenPurpose::Verify, None).await;

    let error = repository.confirm_email(grace.id, hash.clone(), now()).await.unwrap_err();
    assert!(matches!(error, ConfirmEmailError::InvalidToken), "{error:?}");
    assert!(!repository.find_user(grace.id).await.unwrap().unwrap().email_verified);
    repository.confirm_email(ada.id, hash, now()).await.unwrap();
}

#[tokio::test]
async fn a_made_up_token_is_invalid() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let error = repository.confirm_email(user.id, token_hash(), now()).await.unwrap_err();
    assert!(matches!(error, ConfirmEmailError::InvalidToken), "{error:?}");
}

#[tokio::test]
async fn a_password_reset_token_cannot_confirm_an_email() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, &user, EmailTokenPurpose::PasswordReset, None).await;

    let error = repository.confirm_email(user.id, hash.clone(), now()).await.unwrap_err();
    assert!(matches!(error, ConfirmEmailError::InvalidToken), "{error:?}");
    assert!(!token_used(&database, &hash).await);
    assert!(!repository.find_user(user.id).await.unwrap().unwrap().email_verified);
}

#[tokio::test]
async fn the_newest_token_wins() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let older = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;
    let newer = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;

    let error = repository.confirm_email(user.id, older, now()).await.unwrap_err();
    assert!(matches!(error, ConfirmEmailError::InvalidToken), "{error:?}");
    repository.confirm_email(user.id, newer, now()).await.unwrap();
}

#[tokio::test]
async fn a_new_token_of_one_purpose_leaves_the_tokens_of_other_purposes_alone() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let verify = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;
    let reset = issue(&repository, &user, EmailTokenPurpose::PasswordReset, None).await;

    repository.confirm_email(user.id, verify, now()).await.unwrap();
    assert_eq!(repository.find_reset_token_user(reset, now()).await.unwrap().map(|found| found.id), Some(user.id));
}

#[tokio::test]
async fn of_two_tokens_issued_at_once_exactly_one_survives() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let first = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let second = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);

    let (one, two) = tokio::join!(
        repository.issue_email_token(first.clone(), vec![]),
        repository.issue_email_token(second.clone(), vec![]),
    );
    one.unwrap();
    two.unwrap();
    let unused =
        format!("SELECT count(*) AS count FROM email_tokens WHERE user_id = '{}' AND used_at IS NULL", user.id);
    assert_eq!(count(&database, &unused).await, 1);
}

#[tokio::test]
async fn issuing_a_token_queues_all_its_mails() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let token = email_token(user.id, EmailTokenPurpose::EmailChange, Some("ada@new.example.com"), now(), DAY);

    let mails = vec![mail("ada@new.example.com", "Confirm"), mail("ada@example.com", "Notice")];
    repository.issue_email_token(token, mails).await.unwrap();
    assert_eq!(rows(&database, "mail_outbox").await, 2);
}

#[tokio::test]
async fn a_token_that_cannot_be_stored_queues_no_mail() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    // The mail is inserted after the token, whose user does not exist: the whole transaction must roll back.
    let token = email_token(UserId::generate(), EmailTokenPurpose::Verify, None, now(), DAY);

    let error = repository.issue_email_token(token, vec![mail("ghost@example.com", "Verify")]).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn an_email_change_is_pending_until_confirmed_and_then_becomes_the_verified_email() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, &user, EmailTokenPurpose::EmailChange, Some("Ada@New.example.com")).await;

    let pending = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(pending.email.as_str(), "ada@example.com", "the old address keeps working until confirmed");
    assert_eq!(pending.pending_email.as_ref().map(|email| email.as_str()), Some("Ada@new.example.com"));
    assert!(pending.updated_at > user.updated_at);

    let confirmed = repository.confirm_email(user.id, hash.clone(), now()).await.unwrap();
    let EmailConfirmation::EmailChanged(changed) = confirmed else {
        panic!("expected EmailChanged, got {confirmed:?}")
    };
    assert_eq!(changed.email.as_str(), "Ada@new.example.com");
    assert!(changed.email_verified);
    assert_eq!(changed.pending_email, None);
    assert_eq!(changed.role, Role::Authenticated, "following the link proves the address, as a verification does");
    assert!(token_used(&database, &hash).await);
}

#[tokio::test]
async fn confirming_a_new_address_cancels_a_reset_link_sent_to_the_old_one() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let reset = issue(&repository, &user, EmailTokenPurpose::PasswordReset, None).await;
    let change = issue(&repository, &user, EmailTokenPurpose::EmailChange, Some("ada@new.example.com")).await;
    assert!(repository.find_reset_token_user(reset.clone(), now()).await.unwrap().is_some());

    repository.confirm_email(user.id, change, now()).await.unwrap();
    assert!(repository.find_reset_token_user(reset, now()).await.unwrap().is_none());
}

#[tokio::test]
async fn confirming_an_address_taken_meanwhile_is_email_taken_and_keeps_the_token_usable() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, &ada, EmailTokenPurpose::EmailChange, Some("shared@example.com")).await;
    let grace = insert(&repository, "SHARED@example.com", "grace").await;

    let error = repository.confirm_email(ada.id, hash.clone(), now()).await.unwrap_err();
    assert!(matches!(error, ConfirmEmailError::EmailTaken), "{error:?}");
    assert!(!token_used(&database, &hash).await, "the token stays unused");
    let unchanged = repository.find_user(ada.id).await.unwrap().unwrap();
    assert_eq!(unchanged.email.as_str(), "ada@example.com");
    assert_eq!(unchanged.pending_email.as_ref().map(|email| email.as_str()), Some("shared@example.com"));

    // Once the address is free again, the same link works.
    assert!(repository.delete_user(grace.id).await.unwrap());
    let confirmed = repository.confirm_email(ada.id, hash, now()).await.unwrap();
    assert!(
        matches!(confirmed, EmailConfirmation::EmailChanged(ref user) if user.email.as_str() == "shared@example.com")
    );
}

#[tokio::test]
async fn a_usable_reset_token_finds_its_user_and_nothing_else_does() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let reset = email_token(user.id, EmailTokenPurpose::PasswordReset, None, now(), Duration::minutes(15));
    repository.issue_email_token(reset.clone(), vec![]).await.unwrap();
    let verify = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;

    let found = repository.find_reset_token_user(reset.hash.clone(), now()).await.unwrap();
    assert_eq!(found.map(|found| found.id), Some(user.id));
    assert_eq!(repository.find_reset_token_user(reset.hash.clone(), reset.expires_at).await.unwrap(), None, "expired");
    assert_eq!(repository.find_reset_token_user(verify, now()).await.unwrap(), None, "wrong purpose");
    assert_eq!(repository.find_reset_token_user(token_hash(), now()).await.unwrap(), None, "unknown");
    execute(&database, "UPDATE email_tokens SET used_at = now()").await;
    assert_eq!(repository.find_reset_token_user(reset.hash, now()).await.unwrap(), None, "used");
}

#[tokio::test]
async fn resetting_a_password_stores_the_hash_revokes_every_session_clears_the_backoff_and_queues_the_mail() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "Ada@Example.com", "ada").await;
    let login = now();
    let first = repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();
    let second = repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();
    execute(&database, "INSERT INTO login_attempts (key, failures, blocked_until) VALUES ('ada@example.com', 9, now() + interval '1 hour')").await;
    execute(&database, "INSERT INTO login_attempts (key, failures) VALUES ('grace@example.com', 3)").await;
    let hash = issue(&repository, &user, EmailTokenPurpose::PasswordReset, None).await;
    let at = now();

    let reset = repository.reset_password(hash.clone(), new_hash(), mail("Ada@example.com", "Changed"), at).await;
    assert!(reset.unwrap());
    let stored = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, new_hash());
    assert_eq!(stored.updated_at, at);
    assert_eq!(revoked_at(&repository, first.id).await, Some(at));
    assert_eq!(revoked_at(&repository, second.id).await, Some(at));
    assert_eq!(
        count(&database, "SELECT count(*) AS count FROM login_attempts WHERE key = 'ada@example.com'").await,
        0,
        "the user's backoff is cleared"
    );
    assert_eq!(rows(&database, "login_attempts").await, 1, "only the user's own backoff is cleared");
    assert_eq!(count(&database, "SELECT count(*) AS count FROM mail_outbox WHERE subject = 'Changed'").await, 1);
    assert!(token_used(&database, &hash).await);
}

#[tokio::test]
async fn a_reset_token_works_once_and_a_spent_one_changes_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, &user, EmailTokenPurpose::PasswordReset, None).await;
    assert!(
        repository.reset_password(hash.clone(), new_hash(), mail("ada@example.com", "Changed"), now()).await.unwrap()
    );
    let login = now();
    let session = repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();

    let other_hash = PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$b3RoZXI$b3RoZXI".to_owned());
    let again = repository.reset_password(hash, other_hash, mail("ada@example.com", "Again"), now()).await.unwrap();
    assert!(!again);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().password_hash, new_hash());
    assert_eq!(repository.find_session_with_user(session.id).await.unwrap().unwrap().0.revoked_at, None);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM mail_outbox WHERE subject = 'Again'").await, 0);
}

#[tokio::test]
async fn an_expired_or_misdirected_reset_token_changes_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let reset = email_token(user.id, EmailTokenPurpose::PasswordReset, None, now(), Duration::minutes(15));
    repository.issue_email_token(reset.clone(), vec![]).await.unwrap();
    let verify = issue(&repository, &user, EmailTokenPurpose::Verify, None).await;

    let late =
        repository.reset_password(reset.hash.clone(), new_hash(), mail("ada@example.com", "X"), reset.expires_at);
    assert!(!late.await.unwrap(), "expired");
    assert!(!repository.reset_password(verify, new_hash(), mail("ada@example.com", "X"), now()).await.unwrap());
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().password_hash, user.password_hash);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
    assert!(!token_used(&database, &reset.hash).await);
}

#[tokio::test]
async fn changing_a_password_keeps_only_the_current_session_and_queues_the_notice() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let other_user = insert(&repository, "grace@example.com", "grace").await;
    let login = now();
    let current = repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();
    let other = repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();
    let foreign = repository.start_session(new_session(other_user.id, login, token_hash()), login).await.unwrap();
    let at = now();

    repository.change_password(user.id, new_hash(), current.id, mail("ada@example.com", "Changed"), at).await.unwrap();
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().password_hash, new_hash());
    assert_eq!(revoked_at(&repository, current.id).await, None);
    assert_eq!(revoked_at(&repository, other.id).await, Some(at));
    assert_eq!(revoked_at(&repository, foreign.id).await, None, "another user's sessions are untouched");
    assert_eq!(count(&database, "SELECT count(*) AS count FROM mail_outbox WHERE subject = 'Changed'").await, 1);
}

#[tokio::test]
async fn changing_the_password_of_a_missing_user_fails_and_queues_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let missing = UserId::generate();
    let session = SessionId::generate();

    let error = repository.change_password(missing, new_hash(), session, mail("a@example.com", "X"), now()).await;
    assert!(matches!(error, Err(PortError::Unknown(_))), "{error:?}");
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn a_profile_update_changes_only_the_given_fields() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let mut new = new_user("ada@example.com", "ada");
    new.last_name = PersonName::parse("Lovelace").unwrap();
    new.bio = Bio::parse("Analyst").unwrap();
    let user = repository.insert_user(new).await.unwrap();
    let at = now();
    let changes = ProfileChanges {
        nickname: Some(Nickname::parse("countess").unwrap()),
        first_name: None,
        last_name: Some(None),
        bio: Some(Bio::parse("Poet of science").unwrap()),
        linkedin_profile_url: None,
        github_profile_url: Some(ProfileUrl::parse("https://github.com/ada", ProfileUrlKind::GitHub).unwrap()),
    };

    let updated = repository.update_profile(user.id, changes, at).await.unwrap();
    assert_eq!(updated.nickname.as_str(), "countess");
    assert_eq!(updated.first_name, user.first_name, "left alone");
    assert_eq!(updated.last_name, None, "cleared");
    assert_eq!(updated.bio.as_ref().map(|bio| bio.as_str()), Some("Poet of science"));
    assert_eq!(updated.linkedin_profile_url, None);
    assert_eq!(updated.github_profile_url.as_ref().map(|url| url.as_str()), Some("https://github.com/ada"));
    assert_eq!(updated.updated_at, at);
    assert_eq!(updated.email, user.email);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), updated);
}

#[tokio::test]
async fn an_empty_profile_update_only_touches_updated_at() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let at = now();
    let updated = repository.update_profile(user.id, ProfileChanges::default(), at).await.unwrap();
    assert_eq!(User { updated_at: user.updated_at, ..updated.clone() }, user);
    assert_eq!(updated.updated_at, at);
}

#[tokio::test]
async fn a_taken_nickname_is_refused_on_update_and_nothing_changes() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    insert(&repository, "grace@example.com", "grace").await;
    let changes = ProfileChanges {
        nickname: Some(Nickname::parse("GRACE").unwrap()),
        bio: Some(Bio::parse("Changed").unwrap()),
        ..ProfileChanges::default()
    };

    let error = repository.update_profile(user.id, changes, now()).await.unwrap_err();
    assert!(matches!(error, UpdateProfileError::NicknameTaken), "{error:?}");
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), user);
}

#[tokio::test]
async fn updating_a_missing_user_is_not_found() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let error = repository.update_profile(UserId::generate(), ProfileChanges::default(), now()).await.unwrap_err();
    assert!(matches!(error, UpdateProfileError::NotFound), "{error:?}");
}

#[tokio::test]
async fn deleting_a_user_removes_their_sessions_refresh_tokens_and_email_tokens() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let other = insert(&repository, "grace@example.com", "grace").await;
    let login = now();
    repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();
    repository.start_session(new_session(other.id, login, token_hash()), login).await.unwrap();
    issue(&repository, &user, EmailTokenPurpose::Verify, None).await;
    issue(&repository, &other, EmailTokenPurpose::Verify, None).await;

    assert!(repository.delete_user(user.id).await.unwrap());
    assert_eq!(repository.find_user(user.id).await.unwrap(), None);
    assert_eq!(rows(&database, "users").await, 1);
    assert_eq!(rows(&database, "sessions").await, 1);
    assert_eq!(rows(&database, "refresh_tokens").await, 1);
    assert_eq!(rows(&database, "email_tokens").await, 1);
    assert!(!repository.delete_user(user.id).await.unwrap(), "a second delete finds nothing");
}

#[tokio::test]
async fn a_password_reset_or_change_cancels_a_pending_email_change() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    // Someone holding the old password asked to move the account to their address.
    let change = issue(&repository, &user, EmailTokenPurpose::EmailChange, Some("thief@example.com")).await;
    let reset = issue(&repository, &user, EmailTokenPurpose::PasswordReset, None).await;
    assert!(repository.reset_password(reset, new_hash(), mail("ada@example.com", "Changed"), now()).await.unwrap());
    let confirmed = repository.confirm_email(user.id, change, now()).await;
    assert!(matches!(confirmed, Err(ConfirmEmailError::InvalidToken)), "{confirmed:?}");
    let stored = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(stored.email.as_str(), "ada@example.com");
    assert_eq!(stored.pending_email, None);

    let change = issue(&repository, &user, EmailTokenPurpose::EmailChange, Some("thief@example.com")).await;
    let login = now();
    let session = repository.start_session(new_session(user.id, login, token_hash()), login).await.unwrap();
    repository
        .change_password(user.id, new_hash(), session.id, mail("ada@example.com", "Changed"), now())
        .await
        .unwrap();
    let confirmed = repository.confirm_email(user.id, change, now()).await;
    assert!(matches!(confirmed, Err(ConfirmEmailError::InvalidToken)), "{confirmed:?}");
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().pending_email, None);
}

#[tokio::test]
async fn a_profile_update_with_an_email_change_is_one_transaction() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    insert(&repository, "grace@example.com", "grace").await;
    let change = || EmailChangeRequest {
        token: email_token(user.id, EmailTokenPurpose::EmailChange, Some("ada@new.example.com"), now(), DAY),
        mails: vec![mail("ada@new.example.com", "Confirm"), mail("ada@example.com", "Notice")],
    };

    // A taken nickname aborts the whole request: no token, no pending address, no mail.
    let taken = ProfileChanges { nickname: Some(Nickname::parse("Grace").unwrap()), ..ProfileChanges::default() };
    let error = repository.update_me(user.id, taken, Some(change()), now()).await.unwrap_err();
    assert!(matches!(error, UpdateProfileError::NicknameTaken), "{error:?}");
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().pending_email, None);

    let bio = ProfileChanges { bio: Some(Bio::parse("Counts.").unwrap()), ..ProfileChanges::default() };
    let updated = repository.update_me(user.id, bio, Some(change()), now()).await.unwrap();
    assert_eq!(updated.bio.as_ref().map(Bio::as_str), Some("Counts."));
    assert_eq!(updated.pending_email.as_ref().map(|email| email.as_str()), Some("ada@new.example.com"));
    assert_eq!(updated.email.as_str(), "ada@example.com");
    assert_eq!(rows(&database, "email_tokens").await, 1);
    assert_eq!(rows(&database, "mail_outbox").await, 2);
}
