//! The `UserRepository` methods against a migrated database.

use diesel::QueryableByName;
use diesel::sql_types::{Nullable, Timestamptz};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::permissions::Role;
use users_domain::ports::{InsertUserError, PortError, UserRepository as _};
use users_domain::session::{RefreshToken, SessionId};
use users_domain::user::{Nickname, PasswordHash, UserId};
use users_testkit::TestDatabase;

use crate::support::{count, new_session, new_user, repository, to_micros};

#[tokio::test]
async fn an_inserted_user_is_found_by_id_and_by_email_in_any_case() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let new = new_user("Ada.Lovelace@Example.com", "ada_l");

    let inserted = repository.insert_user(new.clone()).await.unwrap();
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
    let other_case = users_domain::user::EmailAddress::parse("ADA.LOVELACE@EXAMPLE.COM").unwrap();
    let by_email = repository.find_user_by_email(other_case).await.unwrap().unwrap();
    assert_eq!(by_email, inserted);
}

#[tokio::test]
async fn an_unknown_id_or_email_finds_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    assert_eq!(repository.find_user(UserId::generate()).await.unwrap(), None);
    let email = users_domain::user::EmailAddress::parse("nobody@example.com").unwrap();
    assert_eq!(repository.find_user_by_email(email).await.unwrap(), None);
}

#[tokio::test]
async fn an_email_taken_in_another_case_is_refused_as_email_taken() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    repository.insert_user(new_user("ada@example.com", "ada")).await.unwrap();

    let error = repository.insert_user(new_user("ADA@example.com", "someone_else")).await.unwrap_err();
    assert!(matches!(error, InsertUserError::EmailTaken), "{error:?}");
    assert_eq!(count(&database, "SELECT count(*) AS count FROM users").await, 1);
}

#[tokio::test]
async fn a_nickname_taken_in_another_case_is_refused_as_nickname_taken() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    repository.insert_user(new_user("ada@example.com", "Ada_L")).await.unwrap();

    let error = repository.insert_user(new_user("grace@example.com", "aDA_l")).await.unwrap_err();
    assert!(matches!(error, InsertUserError::NicknameTaken), "{error:?}");
}

#[tokio::test]
async fn of_two_concurrent_registrations_with_one_email_exactly_one_wins() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (first, second) = tokio::join!(
        repository.insert_user(new_user("race@example.com", "racer_one")),
        repository.insert_user(new_user("RACE@example.com", "racer_two")),
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
    repository.insert_user(first.clone()).await.unwrap();
    let mut same_id = new_user("grace@example.com", "grace");
    same_id.id = first.id;

    let error = repository.insert_user(same_id).await.unwrap_err();
    assert!(matches!(error, InsertUserError::Port(PortError::Unknown(_))), "{error:?}");
}

#[tokio::test]
async fn promote_to_admin_makes_a_verified_unlocked_admin_with_the_new_password_hash() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = repository.insert_user(new_user("ada@example.com", "ada")).await.unwrap();
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    diesel::sql_query("UPDATE users SET is_locked = true, updated_at = now() - interval '1 day'")
        .execute(&mut connection)
        .await
        .unwrap();
    let new_hash = PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA".to_owned());

    let promoted = repository.promote_to_admin(user.id, new_hash.clone()).await.unwrap().unwrap();
    assert_eq!(promoted.role, Role::Admin);
    assert!(promoted.email_verified);
    assert!(!promoted.is_locked);
    assert_eq!(promoted.password_hash, new_hash);
    assert!(promoted.updated_at > OffsetDateTime::now_utc() - Duration::hours(1), "updated_at was refreshed");
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), promoted);
}

#[tokio::test]
async fn promoting_a_missing_user_finds_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let hash = PasswordHash::new("$argon2id$v=19$x".to_owned());
    assert_eq!(repository.promote_to_admin(UserId::generate(), hash).await.unwrap(), None);
}

#[tokio::test]
async fn a_started_session_is_found_with_its_user_and_records_the_login_time() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = repository.insert_user(new_user("ada@example.com", "ada")).await.unwrap();
    let at = to_micros(OffsetDateTime::now_utc());
    let token = RefreshToken::generate();
    let new = new_session(user.id, at, token.hash());

    let session = repository.start_session(new.clone(), at).await.unwrap();
    assert_eq!(session.id, new.id);
    assert_eq!(session.user_id, user.id);
    assert_eq!(session.created_at, at);
    assert_eq!(session.last_used_at, at);
    assert_eq!(session.expires_at, new.expires_at);
    assert_eq!(session.revoked_at, None);
    assert_eq!(session.user_agent, new.user_agent);
    assert_eq!(session.ip, new.ip);

    let (found_session, found_user) = repository.find_session_with_user(new.id).await.unwrap().unwrap();
    assert_eq!(found_session, session);
    assert_eq!(found_user.id, user.id);
    assert_eq!(found_user.last_login_at, Some(at));
    let tokens = format!(
        "SELECT count(*) AS count FROM refresh_tokens WHERE session_id = '{}' AND token_hash = '{}'",
        new.id,
        token.hash().as_str()
    );
    assert_eq!(count(&database, &tokens).await, 1, "the first refresh token is stored, hashed");
}

#[tokio::test]
async fn a_session_that_cannot_store_its_token_leaves_nothing_behind() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = repository.insert_user(new_user("ada@example.com", "ada")).await.unwrap();
    let first_login = to_micros(OffsetDateTime::now_utc() - Duration::hours(1));
    let hash = RefreshToken::generate().hash();
    repository.start_session(new_session(user.id, first_login, hash.clone()), first_login).await.unwrap();

    // A second session whose token hash collides: its session row insert succeeds, the token insert fails, and
    // the whole transaction, login time included, must roll back.
    let later = to_micros(OffsetDateTime::now_utc());
    let colliding = new_session(user.id, later, hash);
    let error = repository.start_session(colliding.clone(), later).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
    assert_eq!(repository.find_session_with_user(colliding.id).await.unwrap(), None);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM sessions").await, 1);
    let user = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(user.last_login_at, Some(first_login));
}

#[tokio::test]
async fn a_session_for_a_missing_user_is_refused() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let at = to_micros(OffsetDateTime::now_utc());
    let orphan = new_session(UserId::generate(), at, RefreshToken::generate().hash());
    let error = repository.start_session(orphan, at).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
}

#[tokio::test]
async fn a_missing_session_is_none() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    assert_eq!(repository.find_session_with_user(SessionId::generate()).await.unwrap(), None);
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
    let user = repository.insert_user(new_user("ada@example.com", "ada")).await.unwrap();
    let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
    // A space passes the length check in SQL but not the domain's nickname rule.
    let _: Login = diesel::sql_query("UPDATE users SET nickname = 'ada lovelace' RETURNING last_login_at")
        .get_result(&mut connection)
        .await
        .unwrap();

    // The account stays readable (its owner can still log in and fix it): the nickname reads back as a stand-in.
    let found = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(found.nickname, Nickname::stand_in(user.id));
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
async fn ping_answers_when_the_database_is_up() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    repository.ping().await.unwrap();
}
