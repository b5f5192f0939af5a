//! `EmailTokenStore::find_email_token`: an unused token by its hash, expired or not, as stored.

use time::Duration;
use users_domain::ports::{
    EmailTokenPurpose, EmailTokenRecord, EmailTokenStore as _, PortError, UserStore as _, UserUpdate,
};
use users_testkit::TestDatabase;

use crate::support::{email_token, execute, insert, now, repository, token_hash};

#[tokio::test]
async fn an_unused_token_is_found_with_its_user_purpose_address_and_expiry() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let change =
        email_token(user.id, EmailTokenPurpose::EmailChange, Some("Ada@New.example.com"), now(), Duration::days(1));
    let reset = email_token(user.id, EmailTokenPurpose::PasswordReset, None, now(), Duration::minutes(15));
    for token in [&change, &reset] {
        let mut update = UserUpdate::new(user.id, now());
        update.issue_token = Some(token.clone());
        repository.update_user(update).await.unwrap();
    }

    let found = repository.find_email_token(change.hash.clone()).await.unwrap();
    assert_eq!(
        found,
        Some(EmailTokenRecord {
            user_id: user.id,
            purpose: EmailTokenPurpose::EmailChange,
            new_email: change.new_email.clone(),
            expires_at: change.expires_at,
        })
    );
    let found = repository.find_email_token(reset.hash.clone()).await.unwrap().unwrap();
    assert_eq!(found.purpose, EmailTokenPurpose::PasswordReset);
    assert_eq!(found.new_email, None);
    assert_eq!(repository.find_email_token(token_hash()).await.unwrap(), None, "unknown");
}

#[tokio::test]
async fn an_expired_token_is_found_and_a_used_one_is_not() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let expired = email_token(user.id, EmailTokenPurpose::Verify, None, now() - Duration::days(2), Duration::days(1));
    let mut update = UserUpdate::new(user.id, now());
    update.issue_token = Some(expired.clone());
    repository.update_user(update).await.unwrap();

    let found = repository.find_email_token(expired.hash.clone()).await.unwrap().unwrap();
    assert!(found.expires_at < now(), "whether it still works is the domain's call");

    execute(&database, "UPDATE email_tokens SET used_at = now()").await;
    assert_eq!(repository.find_email_token(expired.hash).await.unwrap(), None);
}

#[tokio::test]
async fn a_token_with_an_address_the_domain_refuses_is_an_unknown_error() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let change =
        email_token(user.id, EmailTokenPurpose::EmailChange, Some("ada@new.example.com"), now(), Duration::days(1));
    let mut update = UserUpdate::new(user.id, now());
    update.issue_token = Some(change.clone());
    repository.update_user(update).await.unwrap();
    execute(&database, "UPDATE email_tokens SET new_email = 'not an address'").await;

    let error = repository.find_email_token(change.hash).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
    assert!(!format!("{error:#}").contains("not an address"), "the stored value is not echoed: {error:#}");
}
