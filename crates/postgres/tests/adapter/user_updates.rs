//! `UserStore::update_user`: a decided change applied in one transaction, checked by looking at the tables
//! directly. Each part of a change does what it says and nothing more (the adapter decides nothing), the guard is
//! checked on the locked row, a token is consumed once, and on any error nothing is stored.

use time::{Duration, OffsetDateTime};
use users_domain::permissions::Role;
use users_domain::ports::{
    EmailTokenPurpose, Guard, PortError, ProfileChanges, SessionEnd, SessionStore as _, UpdateError, UserStore as _,
    UserUpdate,
};
use users_domain::session::{SessionId, TokenHash};
use users_domain::user::{Bio, EmailAddress, Nickname, PasswordHash, PersonName, ProfileUrl, ProfileUrlKind, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;

use crate::support::{
    account, admin, count, email_token, execute, insert, insert_with_role, issue, mail, new_session, new_user, now,
    repository, repository_with_connections, rows, timestamp, token_hash,
};

const DAY: Duration = Duration::days(1);

fn new_hash() -> PasswordHash {
    PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA".to_owned())
}

fn email(raw: &str) -> EmailAddress {
    EmailAddress::parse(raw).unwrap()
}

async fn revoked_at(repository: &PgRepository, id: SessionId) -> Option<OffsetDateTime> {
    repository.find_session_with_user(id).await.unwrap().unwrap().0.revoked_at
}

async fn token_used(database: &TestDatabase, hash: &TokenHash) -> bool {
    let query = format!(
        "SELECT count(*) AS count FROM email_tokens WHERE token_hash = '{}' AND used_at IS NOT NULL",
        hash.as_str()
    );
    count(database, &query).await == 1
}

async fn token_exists(database: &TestDatabase, hash: &TokenHash) -> bool {
    let query = format!("SELECT count(*) AS count FROM email_tokens WHERE token_hash = '{}'", hash.as_str());
    count(database, &query).await == 1
}

async fn unlocked_admins(database: &TestDatabase) -> i64 {
    count(database, "SELECT count(*) AS count FROM users WHERE role = 'ADMIN' AND NOT is_locked").await
}

/// A change of `id` that only sets the role, decided for `from` with `another_admin` as given.
fn set_role(id: UserId, from: Role, to: Role, another_admin: bool) -> UserUpdate {
    let mut update = UserUpdate::new(id, now());
    update.guard = Guard { role: Some(from), another_admin };
    update.fields.role = Some(to);
    update
}

/// A change of `id` that only locks the user, decided for `from` with `another_admin` as given.
fn lock(id: UserId, from: Role, another_admin: bool) -> UserUpdate {
    let mut update = UserUpdate::new(id, now());
    update.guard = Guard { role: Some(from), another_admin };
    update.fields.is_locked = Some(true);
    update
}

#[tokio::test]
async fn every_column_of_a_change_is_written_and_only_those() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let mut new = new_user("ada@example.com", "ada");
    new.last_name = PersonName::parse("Lovelace").unwrap();
    new.bio = Bio::parse("Analyst").unwrap();
    let user = repository.insert_user(account(new)).await.unwrap();
    let at = now();
    let professional_at = at - Duration::hours(1);
    let mut update = UserUpdate::new(user.id, at);
    update.fields.profile = ProfileChanges {
        nickname: Some(Nickname::parse("countess").unwrap()),
        first_name: None,
        last_name: Some(None),
        bio: Some(Bio::parse("Poet of science").unwrap()),
        linkedin_profile_url: None,
        github_profile_url: Some(ProfileUrl::parse("https://github.com/ada", ProfileUrlKind::GitHub).unwrap()),
    };
    update.fields.email = Some(email("Ada@New.example.com"));
    update.fields.pending_email = Some(Some(email("ada@pending.example.com")));
    update.fields.email_verified = Some(true);
    update.fields.role = Some(Role::Manager);
    update.fields.is_locked = Some(true);
    update.fields.professional = Some((true, professional_at));
    update.fields.password_hash = Some(new_hash());

    let updated = repository.update_user(update).await.unwrap();
    assert_eq!(updated.nickname.as_str(), "countess");
    assert_eq!(updated.first_name, user.first_name, "left alone");
    assert_eq!(updated.last_name, None, "cleared");
    assert_eq!(updated.bio.as_ref().map(Bio::as_str), Some("Poet of science"));
    assert_eq!(updated.linkedin_profile_url, None);
    assert_eq!(updated.github_profile_url.as_ref().map(ProfileUrl::as_str), Some("https://github.com/ada"));
    assert_eq!(updated.email.as_str(), "Ada@new.example.com");
    assert_eq!(updated.pending_email.as_ref().map(EmailAddress::as_str), Some("ada@pending.example.com"));
    assert!(updated.email_verified && updated.is_locked && updated.is_professional);
    assert_eq!(updated.role, Role::Manager);
    assert_eq!(updated.professional_status_updated_at, Some(professional_at), "the time the domain gave");
    assert_eq!(updated.password_hash, new_hash());
    assert_eq!(updated.updated_at, at);
    assert_eq!(updated.created_at, user.created_at);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), updated);
}

#[tokio::test]
async fn a_change_without_columns_leaves_the_row_and_its_update_time_alone() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let mut update = UserUpdate::new(user.id, now() + Duration::hours(1));
    update.mails = vec![mail("ada@example.com", "Hello")];

    let returned = repository.update_user(update).await.unwrap();
    assert_eq!(returned, user, "returned as stored, updated_at unchanged");
    assert_eq!(rows(&database, "mail_outbox").await, 1);
}

#[tokio::test]
async fn a_pending_email_is_set_cleared_or_left_as_the_change_says() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let mut set = UserUpdate::new(user.id, now());
    set.fields.pending_email = Some(Some(email("ada@new.example.com")));
    let with_pending = repository.update_user(set).await.unwrap();
    assert_eq!(with_pending.pending_email.as_ref().map(EmailAddress::as_str), Some("ada@new.example.com"));

    let mut other = UserUpdate::new(user.id, now());
    other.fields.profile.bio = Some(Bio::parse("Counts.").unwrap());
    let left = repository.update_user(other).await.unwrap();
    assert_eq!(left.pending_email, with_pending.pending_email, "left alone");

    let mut clear = UserUpdate::new(user.id, now());
    clear.fields.pending_email = Some(None);
    assert_eq!(repository.update_user(clear).await.unwrap().pending_email, None);
}

#[tokio::test]
async fn the_adapter_applies_exactly_the_change_and_derives_nothing_from_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let pending = issue(&repository, user.id, EmailTokenPurpose::EmailChange, Some("ada@pending.example.com")).await;
    let reset = issue(&repository, user.id, EmailTokenPurpose::PasswordReset, None).await;
    let login = now();
    let session = repository.start_session(new_session(user.id, login, token_hash()), login, Vec::new()).await.unwrap();
    execute(&database, "INSERT INTO login_attempts (key, failures) VALUES ('ada@example.com', 3)").await;
    let stored = repository.find_user(user.id).await.unwrap().unwrap();
    assert!(stored.pending_email.is_none(), "issuing a token does not set a pending address either");

    // Verifying an ANONYMOUS user's address, changing the address and the password: the domain would promote,
    // clear the pending address, drop tokens and end sessions, but only by saying so in the change.
    let mut update = UserUpdate::new(user.id, now());
    update.fields.email_verified = Some(true);
    update.fields.email = Some(email("ada@other.example.com"));
    update.fields.password_hash = Some(new_hash());
    update.fields.professional = Some((false, now()));
    let updated = repository.update_user(update).await.unwrap();
    assert_eq!(updated.role, Role::Anonymous, "no promotion that the change does not state");
    assert!(updated.email_verified);
    assert!(token_exists(&database, &pending).await && token_exists(&database, &reset).await, "no token dropped");
    assert_eq!(revoked_at(&repository, session.id).await, None, "no session ended");
    assert_eq!(rows(&database, "login_attempts").await, 1, "no backoff cleared");
    assert_eq!(rows(&database, "mail_outbox").await, 0, "no mail queued");
}

#[tokio::test]
async fn a_taken_nickname_or_email_is_refused_and_nothing_of_the_change_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    insert(&repository, "grace@example.com", "grace").await;
    let token = issue(&repository, user.id, EmailTokenPurpose::Verify, None).await;
    let login = now();
    let session = repository.start_session(new_session(user.id, login, token_hash()), login, Vec::new()).await.unwrap();
    let user = repository.find_user(user.id).await.unwrap().unwrap();

    let change = |update: &mut UserUpdate| {
        update.consume_token = Some(token.clone());
        update.fields.profile.bio = Some(Bio::parse("Changed").unwrap());
        update.drop_tokens = EmailTokenPurpose::ALL.to_vec();
        update.issue_token = Some(email_token(user.id, EmailTokenPurpose::PasswordReset, None, now(), DAY));
        update.end_sessions = SessionEnd::All;
        update.mails = vec![mail("ada@example.com", "Changed")];
    };
    let mut nickname = UserUpdate::new(user.id, now());
    change(&mut nickname);
    nickname.fields.profile.nickname = Some(Nickname::parse("GRACE").unwrap());
    let error = repository.update_user(nickname).await.unwrap_err();
    assert!(matches!(error, UpdateError::NicknameTaken), "{error:?}");

    let mut address = UserUpdate::new(user.id, now());
    change(&mut address);
    address.fields.email = Some(email("Grace@Example.com"));
    let error = repository.update_user(address).await.unwrap_err();
    assert!(matches!(error, UpdateError::EmailTaken), "{error:?}");

    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), user, "no column changed");
    assert!(!token_used(&database, &token).await, "the token stays usable");
    assert_eq!(rows(&database, "email_tokens").await, 1, "nothing dropped, nothing issued");
    assert_eq!(revoked_at(&repository, session.id).await, None);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn a_change_whose_mail_cannot_be_stored_rolls_back_everything_before_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let token = issue(&repository, user.id, EmailTokenPurpose::PasswordReset, None).await;
    let login = now();
    let session = repository.start_session(new_session(user.id, login, token_hash()), login, Vec::new()).await.unwrap();
    execute(&database, "INSERT INTO login_attempts (key, failures) VALUES ('ada@example.com', 3)").await;
    let user = repository.find_user(user.id).await.unwrap().unwrap();

    let mut update = UserUpdate::new(user.id, now());
    update.consume_token = Some(token.clone());
    update.fields.password_hash = Some(new_hash());
    update.drop_tokens = vec![EmailTokenPurpose::Verify];
    update.issue_token = Some(email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY));
    update.end_sessions = SessionEnd::All;
    update.clear_failures = Some("ada@example.com".to_owned());
    update.mails = vec![mail("ada@example.com", "Fine"), mail("ada@example.com", "Broken\r\nBcc: x@example.com")];

    let error = repository.update_user(update).await.unwrap_err();
    assert!(matches!(error, UpdateError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), user);
    assert!(!token_used(&database, &token).await);
    assert_eq!(rows(&database, "email_tokens").await, 1);
    assert_eq!(revoked_at(&repository, session.id).await, None);
    assert_eq!(rows(&database, "login_attempts").await, 1);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn a_change_of_a_missing_user_is_not_found_and_stores_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    admin(&repository, "boss").await;
    let missing = UserId::generate();
    for guard in [Guard::default(), Guard { role: Some(Role::Admin), another_admin: true }] {
        let mut update = UserUpdate::new(missing, now());
        update.guard = guard;
        update.fields.is_locked = Some(true);
        update.mails = vec![mail("ada@example.com", "Changed")];
        let error = repository.update_user(update).await.unwrap_err();
        assert!(matches!(error, UpdateError::NotFound), "{guard:?}: {error:?}");
    }
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn a_change_decided_for_another_role_is_refused_as_role_changed_and_stores_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let target = insert_with_role(&repository, "target@example.com", "target", Role::Authenticated).await;
    // Promoted to ADMIN after a MANAGER's rights were checked against AUTHENTICATED.
    execute(&database, &format!("UPDATE users SET role = 'ADMIN' WHERE id = '{}'", target.id)).await;
    let mut stale = lock(target.id, Role::Authenticated, false);
    stale.mails = vec![mail("target@example.com", "Locked")];

    let error = repository.update_user(stale).await.unwrap_err();
    assert!(matches!(error, UpdateError::RoleChanged), "{error:?}");
    let stored = repository.find_user(target.id).await.unwrap().unwrap();
    assert!(!stored.is_locked && stored.role == Role::Admin, "nothing changed");
    assert_eq!(rows(&database, "mail_outbox").await, 0);

    // Without a role in the guard, the same change applies whatever the role.
    let mut unguarded = UserUpdate::new(target.id, now());
    unguarded.fields.is_locked = Some(true);
    assert!(repository.update_user(unguarded).await.unwrap().is_locked);
}

#[tokio::test]
async fn a_change_that_needs_another_unlocked_admin_is_refused_without_one() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let boss = admin(&repository, "boss").await;
    // A locked ADMIN does not count: it could not sign in to administer anything.
    let dormant = admin(&repository, "dormant").await;
    execute(&database, &format!("UPDATE users SET is_locked = true WHERE id = '{}'", dormant.id)).await;

    for mut update in [
        set_role(boss.id, Role::Admin, Role::Manager, true),
        set_role(boss.id, Role::Admin, Role::Anonymous, true),
        lock(boss.id, Role::Admin, true),
    ] {
        update.mails = vec![mail("boss@example.com", "Changed")];
        let error = repository.update_user(update).await.unwrap_err();
        assert!(matches!(error, UpdateError::LastAdmin), "{error:?}");
    }
    assert_eq!(repository.find_user(boss.id).await.unwrap().unwrap(), boss, "nothing changed");
    assert_eq!(rows(&database, "mail_outbox").await, 0, "nothing queued");
    assert_eq!(unlocked_admins(&database).await, 1);
}

#[tokio::test]
async fn whether_the_last_admin_rule_applies_is_the_domains_call() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let boss = admin(&repository, "boss").await;
    let member = insert_with_role(&repository, "member@example.com", "member", Role::Authenticated).await;

    // Asked for, the check holds for anyone: no unlocked ADMIN besides the member means no.
    let mut solo = admin(&repository, "solo").await;
    execute(&database, &format!("UPDATE users SET is_locked = true WHERE id = '{}'", boss.id)).await;
    let error = repository.update_user(lock(solo.id, Role::Admin, true)).await.unwrap_err();
    assert!(matches!(error, UpdateError::LastAdmin), "{error:?}");
    let passes = repository.update_user(lock(member.id, Role::Authenticated, true)).await.unwrap();
    assert!(passes.is_locked, "solo is an unlocked ADMIN besides the member");
    // Not asked for, it is not checked, even on the last unlocked ADMIN.
    solo = repository.update_user(set_role(solo.id, Role::Admin, Role::Manager, false)).await.unwrap();
    assert_eq!(solo.role, Role::Manager);
    assert_eq!(unlocked_admins(&database).await, 0);
}

#[tokio::test]
async fn with_two_admins_one_can_be_demoted_or_locked_and_then_the_other_cannot() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let first = admin(&repository, "first").await;
    let second = admin(&repository, "second").await;
    let demoted = repository.update_user(set_role(first.id, Role::Admin, Role::Manager, true)).await.unwrap();
    assert_eq!(demoted.role, Role::Manager);
    let error = repository.update_user(set_role(second.id, Role::Admin, Role::Manager, true)).await.unwrap_err();
    assert!(matches!(error, UpdateError::LastAdmin), "{error:?}");

    let third = admin(&repository, "third").await;
    assert!(repository.update_user(lock(second.id, Role::Admin, true)).await.unwrap().is_locked);
    let error = repository.update_user(lock(third.id, Role::Admin, true)).await.unwrap_err();
    assert!(matches!(error, UpdateError::LastAdmin), "{error:?}");
    assert_eq!(unlocked_admins(&database).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_removals_of_the_last_two_admins_exactly_one_succeeds() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 4).await;
    let first = admin(&repository, "first").await;
    let second = admin(&repository, "second").await;

    for round in 0..12 {
        execute(&database, "UPDATE users SET role = 'ADMIN', is_locked = false").await;
        // Demote both, lock both, or demote one while locking the other; the loser must see the winner's commit
        // and be refused as the last admin, never deadlock or fail otherwise.
        let (mut one, mut other) = match round % 3 {
            0 => (
                set_role(first.id, Role::Admin, Role::Manager, true),
                set_role(second.id, Role::Admin, Role::Authenticated, true),
            ),
            1 => (lock(first.id, Role::Admin, true), lock(second.id, Role::Admin, true)),
            _ => (set_role(first.id, Role::Admin, Role::Manager, true), lock(second.id, Role::Admin, true)),
        };
        one.mails = vec![mail("first@example.com", "Changed")];
        other.mails = vec![mail("second@example.com", "Changed")];
        let (one, other) = tokio::join!(repository.update_user(one), repository.update_user(other));
        let outcomes = [one.map(drop), other.map(drop)];
        assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.iter().any(|outcome| matches!(outcome, Err(UpdateError::LastAdmin))),
            "round {round}: {outcomes:?}"
        );
        assert_eq!(unlocked_admins(&database).await, 1, "round {round}");
        assert_eq!(rows(&database, "mail_outbox").await, round + 1, "round {round}: only the winner's mail is queued");
    }
}

#[tokio::test]
async fn a_consumed_token_is_marked_used_and_works_only_once() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, user.id, EmailTokenPurpose::Verify, None).await;
    let verify = || {
        let mut update = UserUpdate::new(user.id, now());
        update.consume_token = Some(hash.clone());
        update.fields.email_verified = Some(true);
        update.mails = vec![mail("ada@example.com", "Verified")];
        update
    };

    assert!(repository.update_user(verify()).await.unwrap().email_verified);
    assert!(token_used(&database, &hash).await);
    let error = repository.update_user(verify()).await.unwrap_err();
    assert!(matches!(error, UpdateError::TokenUnusable), "{error:?}");
    assert_eq!(rows(&database, "mail_outbox").await, 1, "the refused change queued nothing");
}

#[tokio::test]
async fn an_expired_unknown_or_foreign_token_is_unusable_and_the_change_is_not_applied() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert(&repository, "ada@example.com", "ada").await;
    let grace = insert(&repository, "grace@example.com", "grace").await;
    let ada_token = issue(&repository, ada.id, EmailTokenPurpose::Verify, None).await;
    let expires_at = timestamp(
        &database,
        &format!("SELECT expires_at AS value FROM email_tokens WHERE token_hash = '{}'", ada_token.as_str()),
    )
    .await
    .unwrap();
    let attempt = |user_id: UserId, hash: &TokenHash, at: OffsetDateTime| {
        let mut update = UserUpdate::new(user_id, at);
        update.consume_token = Some(hash.clone());
        update.fields.email_verified = Some(true);
        update
    };

    // Expiry is judged by the time the change carries, so "a day later" needs no waiting.
    for (who, hash, at) in
        [(ada.id, &ada_token, expires_at), (grace.id, &ada_token, now()), (ada.id, &token_hash(), now())]
    {
        let error = repository.update_user(attempt(who, hash, at)).await.unwrap_err();
        assert!(matches!(error, UpdateError::TokenUnusable), "{error:?}");
    }
    assert!(!token_used(&database, &ada_token).await);
    assert!(!repository.find_user(ada.id).await.unwrap().unwrap().email_verified);
    assert!(!repository.find_user(grace.id).await.unwrap().unwrap().email_verified);
    repository.update_user(attempt(ada.id, &ada_token, expires_at - Duration::seconds(1))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_uses_of_one_token_exactly_one_applies() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 4).await;
    for round in 0..8 {
        let user = insert(&repository, &format!("racer{round}@example.com"), &format!("racer{round}")).await;
        let hash = issue(&repository, user.id, EmailTokenPurpose::Verify, None).await;
        let use_it = || {
            let mut update = UserUpdate::new(user.id, now());
            update.consume_token = Some(hash.clone());
            update.fields.email_verified = Some(true);
            update.mails = vec![mail("racer@example.com", "Verified")];
            update
        };
        let (first, second) = tokio::join!(repository.update_user(use_it()), repository.update_user(use_it()));
        let outcomes = [first.map(drop), second.map(drop)];
        assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1, "round {round}: {outcomes:?}");
        assert!(outcomes.iter().any(|outcome| matches!(outcome, Err(UpdateError::TokenUnusable))), "{outcomes:?}");
    }
    assert_eq!(rows(&database, "mail_outbox").await, 8, "one mail per round");
}

#[tokio::test]
async fn a_change_refused_after_consuming_its_token_leaves_the_token_usable() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert(&repository, "ada@example.com", "ada").await;
    let hash = issue(&repository, ada.id, EmailTokenPurpose::EmailChange, Some("shared@example.com")).await;
    let grace = insert(&repository, "SHARED@example.com", "grace").await;
    let confirm = || {
        let mut update = UserUpdate::new(ada.id, now());
        update.consume_token = Some(hash.clone());
        update.fields.email = Some(email("shared@example.com"));
        update.fields.pending_email = Some(None);
        update
    };

    let error = repository.update_user(confirm()).await.unwrap_err();
    assert!(matches!(error, UpdateError::EmailTaken), "{error:?}");
    assert!(!token_used(&database, &hash).await, "the consumption rolled back with the rest");

    // Once the address is free again, the same token works.
    repository.delete_user(grace.id, Guard::default(), Vec::new()).await.unwrap();
    assert_eq!(repository.update_user(confirm()).await.unwrap().email.as_str(), "shared@example.com");
}

#[tokio::test]
async fn dropped_tokens_are_the_users_unused_ones_of_the_named_purposes_only() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let ada = insert(&repository, "ada@example.com", "ada").await;
    let grace = insert(&repository, "grace@example.com", "grace").await;
    let verify = issue(&repository, ada.id, EmailTokenPurpose::Verify, None).await;
    let change = issue(&repository, ada.id, EmailTokenPurpose::EmailChange, Some("ada@new.example.com")).await;
    let reset = issue(&repository, ada.id, EmailTokenPurpose::PasswordReset, None).await;
    let foreign = issue(&repository, grace.id, EmailTokenPurpose::PasswordReset, None).await;
    execute(&database, &format!("UPDATE email_tokens SET used_at = now() WHERE token_hash = '{}'", verify.as_str()))
        .await;

    let mut update = UserUpdate::new(ada.id, now());
    update.drop_tokens = vec![EmailTokenPurpose::Verify, EmailTokenPurpose::PasswordReset];
    repository.update_user(update).await.unwrap();
    assert!(!token_exists(&database, &reset).await, "dropped");
    assert!(token_exists(&database, &verify).await, "a used token is not an unused one");
    assert!(token_exists(&database, &change).await, "another purpose");
    assert!(token_exists(&database, &foreign).await, "another user");
}

#[tokio::test]
async fn an_issued_token_replaces_the_users_token_of_its_purpose_and_survives_a_drop_of_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let older = issue(&repository, user.id, EmailTokenPurpose::Verify, None).await;
    let reset = issue(&repository, user.id, EmailTokenPurpose::PasswordReset, None).await;
    let token = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let mut update = UserUpdate::new(user.id, now());
    update.drop_tokens = vec![EmailTokenPurpose::Verify];
    update.issue_token = Some(token.clone());

    repository.update_user(update).await.unwrap();
    assert!(!token_exists(&database, &older).await);
    assert!(token_exists(&database, &token.hash).await);
    assert!(token_exists(&database, &reset).await, "other purposes are left alone");
    let stored = format!(
        "SELECT count(*) AS count FROM email_tokens WHERE token_hash = '{}' AND purpose = 'verify' \
         AND used_at IS NULL AND expires_at = '{}'",
        token.hash.as_str(),
        token.expires_at
    );
    assert_eq!(count(&database, &stored).await, 1);

    // Without a drop, the upsert replaces the token of the purpose all the same, used or not.
    let newest = issue(&repository, user.id, EmailTokenPurpose::Verify, None).await;
    assert!(!token_exists(&database, &token.hash).await);
    assert!(token_exists(&database, &newest).await);
}

#[tokio::test]
async fn of_two_tokens_issued_at_once_exactly_one_survives() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let issuing = || {
        let mut update = UserUpdate::new(user.id, now());
        update.issue_token = Some(email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY));
        update
    };
    let (one, two) = tokio::join!(repository.update_user(issuing()), repository.update_user(issuing()));
    one.unwrap();
    two.unwrap();
    let unused =
        format!("SELECT count(*) AS count FROM email_tokens WHERE user_id = '{}' AND used_at IS NULL", user.id);
    assert_eq!(count(&database, &unused).await, 1);
}

#[tokio::test]
async fn a_token_for_another_user_is_refused_before_anything_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let mut update = UserUpdate::new(user.id, now());
    update.issue_token = Some(email_token(UserId::generate(), EmailTokenPurpose::Verify, None, now(), DAY));
    update.mails = vec![mail("ada@example.com", "Verify")];
    let error = repository.update_user(update).await.unwrap_err();
    assert!(matches!(error, UpdateError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn sessions_end_as_the_change_says_keeping_the_first_revocation_time() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let other_user = insert(&repository, "grace@example.com", "grace").await;
    let login = now();
    let start = |user_id| repository.start_session(new_session(user_id, login, token_hash()), login, Vec::new());
    let current = start(user.id).await.unwrap();
    let other = start(user.id).await.unwrap();
    let foreign = start(other_user.id).await.unwrap();
    let ending = |end, at| {
        let mut update = UserUpdate::new(user.id, at);
        update.end_sessions = end;
        update
    };

    repository.update_user(ending(SessionEnd::Keep, now())).await.unwrap();
    assert_eq!(revoked_at(&repository, other.id).await, None);
    let first_end = now();
    repository.update_user(ending(SessionEnd::AllBut(current.id), first_end)).await.unwrap();
    assert_eq!(revoked_at(&repository, current.id).await, None);
    assert_eq!(revoked_at(&repository, other.id).await, Some(first_end));
    let second_end = now() + Duration::minutes(1);
    repository.update_user(ending(SessionEnd::All, second_end)).await.unwrap();
    assert_eq!(revoked_at(&repository, current.id).await, Some(second_end));
    assert_eq!(revoked_at(&repository, other.id).await, Some(first_end), "the first revocation stands");
    assert_eq!(revoked_at(&repository, foreign.id).await, None, "another user's sessions are untouched");
}

#[tokio::test]
async fn clearing_failures_forgets_the_named_key_only() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "Ada@Example.com", "ada").await;
    execute(&database, "INSERT INTO login_attempts (key, failures, blocked_until) VALUES ('ada@example.com', 9, now() + interval '1 hour')").await;
    execute(&database, "INSERT INTO login_attempts (key, failures) VALUES ('grace@example.com', 3)").await;
    let mut update = UserUpdate::new(user.id, now());
    update.clear_failures = Some("ada@example.com".to_owned());

    repository.update_user(update).await.unwrap();
    assert_eq!(count(&database, "SELECT count(*) AS count FROM login_attempts WHERE key = 'ada@example.com'").await, 0);
    assert_eq!(rows(&database, "login_attempts").await, 1, "only the named key is cleared");
}

#[tokio::test]
async fn a_full_change_applies_every_part_together() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let reset = issue(&repository, user.id, EmailTokenPurpose::PasswordReset, None).await;
    let change = issue(&repository, user.id, EmailTokenPurpose::EmailChange, Some("thief@example.com")).await;
    let login = now();
    let session = repository.start_session(new_session(user.id, login, token_hash()), login, Vec::new()).await.unwrap();
    execute(&database, "INSERT INTO login_attempts (key, failures) VALUES ('ada@example.com', 4)").await;
    let at = now();
    // What a password reset amounts to, as the domain decides it.
    let mut update = UserUpdate::new(user.id, at);
    update.guard.role = Some(Role::Anonymous);
    update.consume_token = Some(reset.clone());
    update.fields.password_hash = Some(new_hash());
    update.fields.pending_email = Some(None);
    update.fields.email_verified = Some(true);
    update.fields.role = Some(Role::Authenticated);
    update.drop_tokens = vec![EmailTokenPurpose::EmailChange];
    update.end_sessions = SessionEnd::All;
    update.clear_failures = Some("ada@example.com".to_owned());
    update.mails = vec![mail("ada@example.com", "Changed")];

    let updated = repository.update_user(update).await.unwrap();
    assert_eq!(updated.password_hash, new_hash());
    assert_eq!(updated.role, Role::Authenticated);
    assert!(updated.email_verified);
    assert_eq!(updated.updated_at, at);
    assert!(token_used(&database, &reset).await);
    assert!(!token_exists(&database, &change).await);
    assert_eq!(revoked_at(&repository, session.id).await, Some(at));
    assert_eq!(rows(&database, "login_attempts").await, 0);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM mail_outbox WHERE subject = 'Changed'").await, 1);
}
