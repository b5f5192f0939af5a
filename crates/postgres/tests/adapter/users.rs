//! The `UserStore` reads, the insert of a new account, the guarded deletion and `ping`, against a migrated database.

use diesel::QueryableByName;
use diesel::sql_types::{Nullable, Timestamptz};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::permissions::Role;
use users_domain::ports::{
    EmailTokenPurpose, Guard, InsertUserError, NewAccount, PortError, SessionStore as _, UpdateError, UserStore as _,
};
use users_domain::user::{EmailAddress, Nickname, UserId};
use users_testkit::TestDatabase;

use crate::support::{
    account, admin, count, email_token, execute, insert, insert_with_role, issue, mail, new_session, new_user, now,
    repository, repository_with_connections, rows, token_hash,
};

const DAY: Duration = Duration::days(1);

async fn unlocked_admins(database: &TestDatabase) -> i64 {
    count(database, "SELECT count(*) AS count FROM users WHERE role = 'ADMIN' AND NOT is_locked").await
}

#[tokio::test]
async fn an_inserted_user_is_found_by_id_and_by_email_in_any_case() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let new = new_user("Ada.Lovelace@Example.com", "ada_l");

    let inserted = repository.insert_user(account(new.clone())).await.unwrap();
    assert_eq!(inserted.id, new.id);
    assert_eq!(inserted.email.as_str(), "Ada.Lovelace@example.com");
    assert_eq!(inserted.nickname, new.nickname);
    assert_eq!(inserted.first_name, new.first_name);
    assert_eq!(inserted.role, Role::Anonymous);
    assert!(!inserted.email_verified && !inserted.is_locked && !inserted.is_professional);
    assert_eq!(inserted.password_hash, new.password_hash);
    assert_eq!(inserted.last_login_at, None);
    assert_eq!(inserted.created_at, inserted.updated_at);

    let by_id = repository.find_user(new.id).await.unwrap().unwrap();
    assert_eq!(by_id, inserted);
    let other_case = EmailAddress::parse("ADA.LOVELACE@EXAMPLE.COM").unwrap();
    let by_email = repository.find_user_by_email(other_case).await.unwrap().unwrap();
    assert_eq!(by_email, inserted);
}

#[tokio::test]
async fn the_role_and_verification_of_a_new_user_are_stored_as_given() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let mut new = new_user("boss@example.com", "boss");
    new.role = Role::Admin;
    new.email_verified = true;
    let inserted = repository.insert_user(account(new)).await.unwrap();
    assert_eq!(inserted.role, Role::Admin);
    assert!(inserted.email_verified);
}

#[tokio::test]
async fn an_unknown_id_or_email_finds_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    assert_eq!(repository.find_user(UserId::generate()).await.unwrap(), None);
    let email = EmailAddress::parse("nobody@example.com").unwrap();
    assert_eq!(repository.find_user_by_email(email).await.unwrap(), None);
}

#[tokio::test]
async fn an_account_is_stored_with_its_token_and_mails_together() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = new_user("ada@example.com", "ada");
    let token = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let new = NewAccount {
        user: user.clone(),
        token: Some(token.clone()),
        mails: vec![mail("ada@example.com", "Verify"), mail("ada@example.com", "Welcome")],
        events: Vec::new(),
    };

    let inserted = repository.insert_user(new).await.unwrap();
    assert_eq!(inserted.id, user.id);
    let stored = format!(
        "SELECT count(*) AS count FROM email_tokens WHERE token_hash = '{}' AND user_id = '{}' \
         AND purpose = 'verify' AND used_at IS NULL AND expires_at = '{}'",
        token.hash.as_str(),
        user.id,
        token.expires_at
    );
    assert_eq!(count(&database, &stored).await, 1);
    let queued = "SELECT count(*) AS count FROM mail_outbox WHERE to_address = 'ada@example.com' \
                  AND subject IN ('Verify', 'Welcome') AND status = 'pending' AND attempts = 0";
    assert_eq!(count(&database, queued).await, 2);
}

#[tokio::test]
async fn an_email_taken_in_another_case_is_refused_as_email_taken_and_nothing_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    insert(&repository, "ada@example.com", "ada").await;

    let second = new_user("ADA@example.com", "someone_else");
    let token = email_token(second.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let new = NewAccount {
        user: second,
        token: Some(token),
        mails: vec![mail("ADA@example.com", "Verify")],
        events: Vec::new(),
    };
    let error = repository.insert_user(new).await.unwrap_err();
    assert!(matches!(error, InsertUserError::EmailTaken), "{error:?}");
    assert_eq!(rows(&database, "users").await, 1);
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn a_nickname_taken_in_another_case_is_refused_as_nickname_taken_and_nothing_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    insert(&repository, "ada@example.com", "Ada_L").await;

    let second = new_user("grace@example.com", "aDA_l");
    let token = email_token(second.id, EmailTokenPurpose::Verify, None, now(), DAY);
    let new = NewAccount {
        user: second,
        token: Some(token),
        mails: vec![mail("grace@example.com", "Verify")],
        events: Vec::new(),
    };
    let error = repository.insert_user(new).await.unwrap_err();
    assert!(matches!(error, InsertUserError::NicknameTaken), "{error:?}");
    assert_eq!(rows(&database, "users").await, 1);
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn an_account_whose_mail_cannot_be_stored_leaves_nothing_behind() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = new_user("ada@example.com", "ada");
    let token = email_token(user.id, EmailTokenPurpose::Verify, None, now(), DAY);
    // The outbox refuses a subject with a line break, the last of the inserts.
    let broken = mail("ada@example.com", "Verify\r\nBcc: victim@example.com");
    let new = NewAccount {
        user,
        token: Some(token),
        mails: vec![mail("ada@example.com", "Fine"), broken],
        events: Vec::new(),
    };

    let error = repository.insert_user(new).await.unwrap_err();
    assert!(matches!(error, InsertUserError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(rows(&database, "users").await, 0);
    assert_eq!(rows(&database, "email_tokens").await, 0);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test]
async fn an_account_whose_token_belongs_to_someone_else_is_refused_before_anything_is_stored() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = new_user("ada@example.com", "ada");
    let token = email_token(UserId::generate(), EmailTokenPurpose::Verify, None, now(), DAY);
    let new = NewAccount { user, token: Some(token), mails: vec![], events: Vec::new() };

    let error = repository.insert_user(new).await.unwrap_err();
    assert!(matches!(error, InsertUserError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(rows(&database, "users").await, 0);
}

#[tokio::test]
async fn of_two_concurrent_inserts_with_one_email_exactly_one_wins() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (first, second) = tokio::join!(
        repository.insert_user(account(new_user("race@example.com", "racer_one"))),
        repository.insert_user(account(new_user("RACE@example.com", "racer_two"))),
    );
    let outcomes = [first, second];
    assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|outcome| matches!(outcome, Err(InsertUserError::EmailTaken))));
}

#[tokio::test]
async fn a_duplicate_id_is_an_unknown_error_rather_than_a_taken_email() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let first = new_user("ada@example.com", "ada");
    repository.insert_user(account(first.clone())).await.unwrap();
    let mut same_id = new_user("grace@example.com", "grace");
    same_id.id = first.id;

    let error = repository.insert_user(account(same_id)).await.unwrap_err();
    assert!(matches!(error, InsertUserError::Port(PortError::Unknown(_))), "{error:?}");
}

#[tokio::test]
async fn a_nickname_exists_in_any_case() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    insert(&repository, "ada@example.com", "Ada_L").await;
    assert!(repository.nickname_exists(Nickname::parse("aDA_l").unwrap()).await.unwrap());
    assert!(!repository.nickname_exists(Nickname::parse("ada_l2").unwrap()).await.unwrap());
}

#[tokio::test]
async fn another_unlocked_admin_counts_only_unlocked_admins_other_than_the_one_asked_about() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let boss = admin(&repository, "boss").await;
    let manager = insert_with_role(&repository, "manager@example.com", "manager", Role::Manager).await;
    assert!(!repository.another_unlocked_admin(boss.id).await.unwrap(), "only boss");
    assert!(repository.another_unlocked_admin(manager.id).await.unwrap(), "boss, besides the manager");

    let dormant = admin(&repository, "dormant").await;
    assert!(repository.another_unlocked_admin(boss.id).await.unwrap());
    execute(&database, &format!("UPDATE users SET is_locked = true WHERE id = '{}'", dormant.id)).await;
    assert!(!repository.another_unlocked_admin(boss.id).await.unwrap(), "a locked ADMIN does not count");
}

#[tokio::test]
async fn a_refused_nickname_reads_back_as_a_stand_in_and_a_refused_role_is_an_unknown_error() {
    #[derive(QueryableByName)]
    struct Login {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        #[allow(dead_code, reason = "read only to satisfy the query's shape")]
        last_login_at: Option<OffsetDateTime>,
    }
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    // A space passes the length check in SQL but not the domain's nickname rule; an RTL override in a name is
    // refused by the domain too.
    let _: Login = diesel::sql_query(
        "UPDATE users SET nickname = 'ada lovelace', first_name = E'A\\u202Eda' RETURNING last_login_at",
    )
    .get_result(&mut connection)
    .await
    .unwrap();

    // The account stays readable (its owner can still log in and fix it): the nickname reads back as a stand-in,
    // the optional field as absent.
    let found = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(found.nickname, Nickname::stand_in(user.id));
    assert_eq!(found.first_name, None);
    // A role the domain refuses still makes the row unreadable: there is no safe stand-in for a role.
    diesel::sql_query("ALTER TABLE users DROP CONSTRAINT users_role_known").execute(&mut connection).await.unwrap();
    let _: Login = diesel::sql_query("UPDATE users SET role = 'ROOT' RETURNING last_login_at")
        .get_result(&mut connection)
        .await
        .unwrap();
    let error = repository.find_user(user.id).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
    assert!(format!("{error:#}").contains("role"), "{error:#}");
}

#[tokio::test]
async fn deleting_a_user_removes_their_sessions_refresh_tokens_and_email_tokens_and_keeps_mail() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let other = insert(&repository, "grace@example.com", "grace").await;
    let login = now();
    repository.start_session(new_session(user.id, login, token_hash()), login, Vec::new()).await.unwrap();
    repository.start_session(new_session(other.id, login, token_hash()), login, Vec::new()).await.unwrap();
    issue(&repository, user.id, EmailTokenPurpose::Verify, None).await;
    issue(&repository, other.id, EmailTokenPurpose::Verify, None).await;
    execute(
        &database,
        "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body) \
                        VALUES (gen_random_uuid(), 'ada@example.com', 'Bye', 'b', 'b')",
    )
    .await;

    repository.delete_user(user.id, Guard::default(), Vec::new()).await.unwrap();
    assert_eq!(repository.find_user(user.id).await.unwrap(), None);
    assert_eq!(rows(&database, "users").await, 1);
    assert_eq!(rows(&database, "sessions").await, 1);
    assert_eq!(rows(&database, "refresh_tokens").await, 1);
    assert_eq!(rows(&database, "email_tokens").await, 1);
    assert_eq!(rows(&database, "mail_outbox").await, 1, "mail is addressed to a mailbox, not an account");
    let again = repository.delete_user(user.id, Guard::default(), Vec::new()).await.unwrap_err();
    assert!(matches!(again, UpdateError::NotFound), "a second delete finds nothing: {again:?}");
}

#[tokio::test]
async fn a_deletion_decided_for_another_role_is_refused_and_deletes_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert_with_role(&repository, "ada@example.com", "ada", Role::Authenticated).await;
    let guard = Guard { role: Some(Role::Manager), another_admin: false };
    let error = repository.delete_user(user.id, guard, Vec::new()).await.unwrap_err();
    assert!(matches!(error, UpdateError::RoleChanged), "{error:?}");
    assert!(repository.find_user(user.id).await.unwrap().is_some());

    repository
        .delete_user(user.id, Guard { role: Some(Role::Authenticated), another_admin: false }, Vec::new())
        .await
        .unwrap();
    assert_eq!(repository.find_user(user.id).await.unwrap(), None);
}

#[tokio::test]
async fn a_deletion_that_needs_another_unlocked_admin_is_refused_without_one() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let boss = admin(&repository, "boss").await;
    // A locked ADMIN does not count: it could not sign in to administer anything.
    let dormant = admin(&repository, "dormant").await;
    execute(&database, &format!("UPDATE users SET is_locked = true WHERE id = '{}'", dormant.id)).await;
    let guard = Guard { role: Some(Role::Admin), another_admin: true };

    let error = repository.delete_user(boss.id, guard, Vec::new()).await.unwrap_err();
    assert!(matches!(error, UpdateError::LastAdmin), "{error:?}");
    assert!(repository.find_user(boss.id).await.unwrap().is_some());
    // The guard is checked as stated: whether it applies is the domain's decision, not the adapter's.
    repository
        .delete_user(dormant.id, Guard { role: Some(Role::Admin), another_admin: false }, Vec::new())
        .await
        .unwrap();

    let second = admin(&repository, "second").await;
    repository.delete_user(boss.id, guard, Vec::new()).await.unwrap();
    let error = repository.delete_user(second.id, guard, Vec::new()).await.unwrap_err();
    assert!(matches!(error, UpdateError::LastAdmin), "{error:?}");
    assert_eq!(unlocked_admins(&database).await, 1);
}

#[tokio::test]
async fn deleting_a_missing_user_is_not_found_whatever_the_guard() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    admin(&repository, "boss").await;
    for guard in [Guard::default(), Guard { role: Some(Role::Admin), another_admin: true }] {
        let error = repository.delete_user(UserId::generate(), guard, Vec::new()).await.unwrap_err();
        assert!(matches!(error, UpdateError::NotFound), "{guard:?}: {error:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_deletions_of_the_last_two_admins_exactly_one_succeeds() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 4).await;
    let guard = Guard { role: Some(Role::Admin), another_admin: true };
    for round in 0..6 {
        let first = admin(&repository, &format!("first{round}")).await;
        let second = admin(&repository, &format!("second{round}")).await;
        let (one, other) = tokio::join!(
            repository.delete_user(first.id, guard, Vec::new()),
            repository.delete_user(second.id, guard, Vec::new())
        );
        let outcomes = [one, other];
        assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 1, "round {round}: {outcomes:?}");
        assert!(outcomes.iter().any(|outcome| matches!(outcome, Err(UpdateError::LastAdmin))), "{outcomes:?}");
        assert_eq!(unlocked_admins(&database).await, 1, "round {round}");
        execute(&database, "DELETE FROM users").await;
    }
}

#[tokio::test]
async fn ping_answers_when_the_database_is_up() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    repository.ping().await.unwrap();
}
