//! Refresh-token rotation and reuse detection, session revocation and listing.

use time::{Duration, OffsetDateTime};
use users_domain::accounts::{OwnedSession, RefreshOutcome};
use users_domain::ports::UserRepository as _;
use users_domain::session::{Session, SessionId, TokenHash};
use users_domain::user::{User, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;

use crate::support::{count, execute, new_session, new_user, now, repository, repository_with_connections, token_hash};

const IDLE: Duration = Duration::days(7);

/// A user with one session started at `at`, and that session's first refresh token.
async fn logged_in(repository: &PgRepository, email: &str, at: OffsetDateTime) -> (User, Session, TokenHash) {
    let nickname = email.split('@').next().unwrap();
    let user = repository.insert_user(new_user(email, nickname)).await.unwrap();
    let (session, token) = login(repository, user.id, at).await;
    (user, session, token)
}

/// Another session of `user_id`, started at `at`.
async fn login(repository: &PgRepository, user_id: UserId, at: OffsetDateTime) -> (Session, TokenHash) {
    let token = token_hash();
    let session = repository.start_session(new_session(user_id, at, token.clone()), at).await.unwrap();
    (session, token)
}

async fn stored_session(repository: &PgRepository, id: SessionId) -> Session {
    repository.find_session_with_user(id).await.unwrap().unwrap().0
}

async fn token_used(database: &TestDatabase, hash: &TokenHash) -> bool {
    let query = format!(
        "SELECT count(*) AS count FROM refresh_tokens WHERE token_hash = '{}' AND used_at IS NOT NULL",
        hash.as_str()
    );
    count(database, &query).await == 1
}

#[tokio::test]
async fn a_valid_refresh_token_rotates_into_the_next_one() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now() - Duration::hours(1)).await;
    let next = token_hash();
    let at = now();

    let outcome = repository.rotate_refresh_token(token.clone(), next.clone(), at, IDLE).await.unwrap();
    let RefreshOutcome::Rotated { session: rotated, user: owner } = outcome else { panic!("{outcome:?}") };
    assert_eq!(rotated.id, session.id);
    assert_eq!(rotated.last_used_at, at);
    assert_eq!(rotated.created_at, session.created_at);
    assert_eq!(rotated.revoked_at, None);
    assert_eq!(owner.id, user.id);
    assert_eq!(stored_session(&repository, session.id).await, rotated);
    assert!(token_used(&database, &token).await);

    let after = repository.rotate_refresh_token(next, token_hash(), now(), IDLE).await.unwrap();
    assert!(matches!(after, RefreshOutcome::Rotated { .. }), "the next token works: {after:?}");
}

#[tokio::test]
async fn an_unknown_refresh_token_is_invalid() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let outcome = repository.rotate_refresh_token(token_hash(), token_hash(), now(), IDLE).await.unwrap();
    assert_eq!(outcome, RefreshOutcome::Invalid);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM refresh_tokens").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_rotations_of_one_token_exactly_one_rotates() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 8).await;
    // Several rounds, each on a fresh session, so that an occasional lucky interleaving cannot hide a race.
    for round in 0..10 {
        let (_, session, token) = logged_in(&repository, &format!("racer{round}@example.com"), now()).await;
        let (first, second) = tokio::join!(
            repository.rotate_refresh_token(token.clone(), token_hash(), now(), IDLE),
            repository.rotate_refresh_token(token.clone(), token_hash(), now(), IDLE),
        );
        let outcomes = [first.unwrap(), second.unwrap()];
        let rotated = outcomes.iter().filter(|outcome| matches!(outcome, RefreshOutcome::Rotated { .. })).count();
        assert_eq!(rotated, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.contains(&RefreshOutcome::Reused), "round {round}: {outcomes:?}");
        let family = format!("SELECT count(*) AS count FROM refresh_tokens WHERE session_id = '{}'", session.id);
        assert_eq!(count(&database, &family).await, 2, "round {round}: one successor, not two");
    }
}

#[tokio::test]
async fn reusing_a_rotated_token_revokes_its_family_and_only_its_family() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    let (other_session, other_token) = login(&repository, user.id, now()).await;
    let next = token_hash();
    repository.rotate_refresh_token(token.clone(), next.clone(), now(), IDLE).await.unwrap();
    let at = now();

    let replay = repository.rotate_refresh_token(token, token_hash(), at, IDLE).await.unwrap();
    assert_eq!(replay, RefreshOutcome::Reused);
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, Some(at));
    let stolen = repository.rotate_refresh_token(next, token_hash(), now(), IDLE).await.unwrap();
    assert_eq!(stolen, RefreshOutcome::Invalid, "the family's newest token stops working too");

    assert_eq!(stored_session(&repository, other_session.id).await.revoked_at, None);
    let other = repository.rotate_refresh_token(other_token, token_hash(), now(), IDLE).await.unwrap();
    assert!(matches!(other, RefreshOutcome::Rotated { .. }), "another session is untouched: {other:?}");
}

#[tokio::test]
async fn a_locked_user_gets_locked_and_nothing_changes_until_the_unlock() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    execute(&database, &format!("UPDATE users SET is_locked = true WHERE id = '{}'", user.id)).await;
    let next = token_hash();

    let outcome = repository.rotate_refresh_token(token.clone(), next.clone(), now(), IDLE).await.unwrap();
    assert_eq!(outcome, RefreshOutcome::Locked);
    assert_eq!(stored_session(&repository, session.id).await, session, "the session is unchanged");
    assert!(!token_used(&database, &token).await);
    let successor = format!("SELECT count(*) AS count FROM refresh_tokens WHERE token_hash = '{}'", next.as_str());
    assert_eq!(count(&database, &successor).await, 0);

    execute(&database, &format!("UPDATE users SET is_locked = false WHERE id = '{}'", user.id)).await;
    let unlocked = repository.rotate_refresh_token(token, next, now(), IDLE).await.unwrap();
    assert!(matches!(unlocked, RefreshOutcome::Rotated { .. }), "{unlocked:?}");
}

#[tokio::test]
async fn a_session_idle_for_the_idle_ttl_is_invalid_and_unchanged() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let login_at = now();
    let (_, session, token) = logged_in(&repository, "ada@example.com", login_at).await;

    let idle = repository.rotate_refresh_token(token.clone(), token_hash(), login_at + IDLE, IDLE).await.unwrap();
    assert_eq!(idle, RefreshOutcome::Invalid);
    assert_eq!(stored_session(&repository, session.id).await, session);
    assert!(!token_used(&database, &token).await);

    let just_in_time = login_at + IDLE - Duration::seconds(1);
    let outcome = repository.rotate_refresh_token(token, token_hash(), just_in_time, IDLE).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::Rotated { .. }), "{outcome:?}");
}

#[tokio::test]
async fn an_absolutely_expired_session_is_invalid_however_recently_used() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (_, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    let outcome = repository.rotate_refresh_token(token.clone(), token_hash(), session.expires_at, Duration::days(365));
    assert_eq!(outcome.await.unwrap(), RefreshOutcome::Invalid);
    assert!(!token_used(&database, &token).await);
}

#[tokio::test]
async fn a_token_of_a_revoked_session_is_invalid() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    repository.revoke_all_sessions(user.id, now()).await.unwrap();
    let revoked_at = stored_session(&repository, session.id).await.revoked_at;

    let outcome = repository.rotate_refresh_token(token.clone(), token_hash(), now(), IDLE).await.unwrap();
    assert_eq!(outcome, RefreshOutcome::Invalid);
    assert!(!token_used(&database, &token).await);
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, revoked_at);
}

#[tokio::test]
async fn logout_revokes_the_session_of_any_token_of_its_family_and_ignores_unknown_tokens() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    let (other, _) = login(&repository, user.id, now()).await;
    repository.rotate_refresh_token(token.clone(), token_hash(), now(), IDLE).await.unwrap();
    let at = now();

    repository.revoke_session_by_refresh_token(token_hash(), at).await.unwrap();
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, None, "an unknown token changes nothing");
    // The old, already rotated token still names its session: logging out with it ends the session.
    repository.revoke_session_by_refresh_token(token.clone(), at).await.unwrap();
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, Some(at));
    assert_eq!(stored_session(&repository, other.id).await.revoked_at, None);

    repository.revoke_session_by_refresh_token(token, at + Duration::minutes(1)).await.unwrap();
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, Some(at), "the first revocation stands");
}

#[tokio::test]
async fn an_owner_revokes_their_own_active_session_and_nothing_else() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (ada, session, _) = logged_in(&repository, "ada@example.com", now()).await;
    let (grace, _, _) = logged_in(&repository, "grace@example.com", now()).await;
    let at = now();

    let by_stranger = OwnedSession { user_id: grace.id, session_id: session.id };
    assert!(!repository.revoke_session(by_stranger, at).await.unwrap());
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, None);

    let by_owner = OwnedSession { user_id: ada.id, session_id: session.id };
    assert!(repository.revoke_session(by_owner, at).await.unwrap());
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, Some(at));
    assert!(!repository.revoke_session(by_owner, now()).await.unwrap(), "already revoked");

    let missing = OwnedSession { user_id: ada.id, session_id: SessionId::generate() };
    assert!(!repository.revoke_session(missing, now()).await.unwrap());
}

#[tokio::test]
async fn an_expired_session_cannot_be_revoked_again() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (ada, session, _) = logged_in(&repository, "ada@example.com", now()).await;
    let owned = OwnedSession { user_id: ada.id, session_id: session.id };
    assert!(!repository.revoke_session(owned, session.expires_at).await.unwrap());
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, None);
}

#[tokio::test]
async fn revoking_all_sessions_ends_every_session_of_that_user_only() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (ada, first, _) = logged_in(&repository, "ada@example.com", now()).await;
    let (second, _) = login(&repository, ada.id, now()).await;
    let (_, foreign, _) = logged_in(&repository, "grace@example.com", now()).await;
    let at = now();

    repository.revoke_all_sessions(ada.id, at).await.unwrap();
    assert_eq!(stored_session(&repository, first.id).await.revoked_at, Some(at));
    assert_eq!(stored_session(&repository, second.id).await.revoked_at, Some(at));
    assert_eq!(stored_session(&repository, foreign.id).await.revoked_at, None);
    assert_eq!(repository.list_sessions(ada.id, now()).await.unwrap(), vec![]);
}

#[tokio::test]
async fn listing_sessions_shows_the_active_ones_newest_first() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let start = now() - Duration::hours(3);
    let (ada, oldest, _) = logged_in(&repository, "ada@example.com", start).await;
    let (revoked, _) = login(&repository, ada.id, start + Duration::hours(1)).await;
    let (newest, _) = login(&repository, ada.id, start + Duration::hours(2)).await;
    logged_in(&repository, "grace@example.com", start).await;
    let owned = OwnedSession { user_id: ada.id, session_id: revoked.id };
    assert!(repository.revoke_session(owned, now()).await.unwrap());

    let listed = repository.list_sessions(ada.id, now()).await.unwrap();
    assert_eq!(listed, vec![newest.clone(), oldest.clone()]);
    let after_expiry = repository.list_sessions(ada.id, oldest.expires_at).await.unwrap();
    assert_eq!(after_expiry, vec![newest], "the oldest session has expired by then");
}
