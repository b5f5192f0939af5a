//! `SessionStore`: starting sessions, reading them and their refresh tokens, the compare-and-set rotation,
//! revocation and listing. Which outcome a refresh gets (reuse, expiry, locks) is the domain's and tested there.

use time::{Duration, OffsetDateTime};
use users_domain::ports::{PortError, SessionEnd, SessionStore as _, UserStore as _};
use users_domain::session::{Session, SessionId, TokenHash};
use users_domain::user::{User, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;

use crate::support::{
    count, execute, insert, new_session, now, repository, repository_with_connections, rows, to_micros, token_hash,
};

/// A user with one session started at `at`, and that session's first refresh token.
async fn logged_in(repository: &PgRepository, email: &str, at: OffsetDateTime) -> (User, Session, TokenHash) {
    let nickname = email.split('@').next().unwrap();
    let user = insert(repository, email, nickname).await;
    let (session, token) = login(repository, user.id, at).await;
    (user, session, token)
}

/// Another session of `user_id`, started at `at`.
async fn login(repository: &PgRepository, user_id: UserId, at: OffsetDateTime) -> (Session, TokenHash) {
    let token = token_hash();
    let session = repository.start_session(new_session(user_id, at, token.clone()), at, Vec::new()).await.unwrap();
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

async fn token_exists(database: &TestDatabase, hash: &TokenHash) -> bool {
    let query = format!("SELECT count(*) AS count FROM refresh_tokens WHERE token_hash = '{}'", hash.as_str());
    count(database, &query).await == 1
}

#[tokio::test]
async fn a_started_session_is_found_with_its_user_and_records_the_login_time() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let at = to_micros(OffsetDateTime::now_utc());
    let token = token_hash();
    let new = new_session(user.id, at, token.clone());

    let session = repository.start_session(new.clone(), at, Vec::new()).await.unwrap();
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
        "SELECT count(*) AS count FROM refresh_tokens WHERE session_id = '{}' AND token_hash = '{}' AND used_at IS NULL",
        new.id,
        token.as_str()
    );
    assert_eq!(count(&database, &tokens).await, 1, "the first refresh token is stored, hashed");
}

#[tokio::test]
async fn a_session_that_cannot_store_its_token_leaves_nothing_behind() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let first_login = to_micros(OffsetDateTime::now_utc() - Duration::hours(1));
    let hash = token_hash();
    repository.start_session(new_session(user.id, first_login, hash.clone()), first_login, Vec::new()).await.unwrap();

    // A second session whose token hash collides: its session row insert succeeds, the token insert fails, and
    // the whole transaction, login time included, must roll back.
    let later = to_micros(OffsetDateTime::now_utc());
    let colliding = new_session(user.id, later, hash);
    let error = repository.start_session(colliding.clone(), later, Vec::new()).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
    assert_eq!(repository.find_session_with_user(colliding.id).await.unwrap(), None);
    assert_eq!(rows(&database, "sessions").await, 1);
    let user = repository.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(user.last_login_at, Some(first_login));
}

#[tokio::test]
async fn a_session_for_a_missing_user_is_refused() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let at = now();
    let orphan = new_session(UserId::generate(), at, token_hash());
    let error = repository.start_session(orphan, at, Vec::new()).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
}

#[tokio::test]
async fn a_missing_session_is_none_and_a_revoked_or_expired_one_is_still_found() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    assert_eq!(repository.find_session_with_user(SessionId::generate()).await.unwrap(), None);
    let (_, session, _) = logged_in(&repository, "ada@example.com", now() - Duration::days(60)).await;
    let at = now();
    assert!(repository.revoke_session(session.id, None, at, Vec::new()).await.unwrap());
    let (found, _) = repository.find_session_with_user(session.id).await.unwrap().unwrap();
    assert_eq!(found.revoked_at, Some(at));
    assert!(found.expires_at < at, "expired and revoked, and returned all the same");
}

#[tokio::test]
async fn a_refresh_token_is_found_with_its_session_its_user_and_whether_it_was_used() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now()).await;

    let record = repository.find_refresh_token(token.clone()).await.unwrap().unwrap();
    assert_eq!(record.session, session);
    assert_eq!(record.user, repository.find_user(user.id).await.unwrap().unwrap());
    assert!(!record.used);

    let next = token_hash();
    let at = now();
    repository.rotate_refresh_token(session.id, token.clone(), next.clone(), at).await.unwrap().unwrap();
    let old = repository.find_refresh_token(token).await.unwrap().unwrap();
    assert!(old.used, "an exchanged token is still found, as used");
    assert_eq!(old.session.last_used_at, at);
    let current = repository.find_refresh_token(next).await.unwrap().unwrap();
    assert!(!current.used);
    assert_eq!(current.session.id, session.id);

    assert!(repository.revoke_session(session.id, None, now(), Vec::new()).await.unwrap());
    let revoked = repository.find_refresh_token(current_hash(&database, session.id).await).await.unwrap().unwrap();
    assert!(revoked.session.revoked_at.is_some(), "a token of a revoked session is found, revoked");
    assert_eq!(repository.find_refresh_token(token_hash()).await.unwrap(), None, "unknown");
}

/// The hash of the unused refresh token of `session_id`.
async fn current_hash(database: &TestDatabase, session_id: SessionId) -> TokenHash {
    let query =
        format!("SELECT token_hash AS value FROM refresh_tokens WHERE session_id = '{session_id}' AND used_at IS NULL");
    TokenHash::from_stored(crate::support::text(database, &query).await.unwrap())
}

#[tokio::test]
async fn a_rotation_marks_the_presented_token_used_stores_the_next_and_records_the_use() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (_, session, token) = logged_in(&repository, "ada@example.com", now() - Duration::hours(1)).await;
    let next = token_hash();
    let at = now();

    let rotated = repository.rotate_refresh_token(session.id, token.clone(), next.clone(), at).await.unwrap().unwrap();
    assert_eq!(rotated.id, session.id);
    assert_eq!(rotated.last_used_at, at);
    assert_eq!(rotated.created_at, session.created_at);
    assert_eq!(rotated.expires_at, session.expires_at);
    assert_eq!(rotated.revoked_at, None);
    assert_eq!(stored_session(&repository, session.id).await, rotated);
    assert!(token_used(&database, &token).await);
    let successor = format!(
        "SELECT count(*) AS count FROM refresh_tokens WHERE token_hash = '{}' AND session_id = '{}' AND used_at IS NULL",
        next.as_str(),
        session.id
    );
    assert_eq!(count(&database, &successor).await, 1);

    let after = repository.rotate_refresh_token(session.id, next, token_hash(), now()).await.unwrap();
    assert!(after.is_some(), "the next token rotates in turn");
}

#[tokio::test]
async fn a_used_unknown_or_foreign_token_does_not_rotate_and_changes_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    let (other, other_token) = login(&repository, user.id, now()).await;
    let next = token_hash();
    let rotated = repository.rotate_refresh_token(session.id, token.clone(), next.clone(), now()).await.unwrap();
    let rotated = rotated.unwrap();
    let tokens = rows(&database, "refresh_tokens").await;

    // The adapter only refuses: revoking the family on a reuse is the domain's decision, made through
    // `revoke_session`.
    let spare = token_hash();
    for (in_session, presented) in [
        (session.id, token.clone()),
        (session.id, token_hash()),
        (session.id, other_token.clone()),
        (other.id, next.clone()),
    ] {
        let outcome = repository.rotate_refresh_token(in_session, presented, spare.clone(), now()).await.unwrap();
        assert_eq!(outcome, None);
    }
    assert_eq!(stored_session(&repository, session.id).await, rotated, "the family is neither revoked nor touched");
    assert_eq!(stored_session(&repository, other.id).await, other);
    assert!(!token_used(&database, &next).await && !token_used(&database, &other_token).await);
    assert!(!token_exists(&database, &spare).await);
    assert_eq!(rows(&database, "refresh_tokens").await, tokens);
}

#[tokio::test]
async fn a_token_of_a_revoked_session_does_not_rotate_and_changes_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (_, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    assert!(repository.revoke_session(session.id, None, now(), Vec::new()).await.unwrap());
    let revoked = stored_session(&repository, session.id).await;
    let next = token_hash();

    let outcome = repository.rotate_refresh_token(session.id, token.clone(), next.clone(), now()).await.unwrap();
    assert_eq!(outcome, None);
    assert!(!token_used(&database, &token).await);
    assert!(!token_exists(&database, &next).await);
    assert_eq!(stored_session(&repository, session.id).await, revoked);
}

#[tokio::test]
async fn expiry_is_not_the_adapters_call() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (_, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    // Long past the session's absolute end and any idle limit: the store still exchanges an unused token of an
    // unrevoked session, since the domain decided the session may be refreshed.
    let late = session.expires_at + Duration::days(365);
    let rotated = repository.rotate_refresh_token(session.id, token, token_hash(), late).await.unwrap();
    assert_eq!(rotated.map(|session| session.last_used_at), Some(late));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_rotations_of_one_token_exactly_one_rotates() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 8).await;
    // Several rounds, each on a fresh session, so that an occasional lucky interleaving cannot hide a race.
    for round in 0..10 {
        let (_, session, token) = logged_in(&repository, &format!("racer{round}@example.com"), now()).await;
        let (first, second) = tokio::join!(
            repository.rotate_refresh_token(session.id, token.clone(), token_hash(), now()),
            repository.rotate_refresh_token(session.id, token.clone(), token_hash(), now()),
        );
        let outcomes = [first.unwrap(), second.unwrap()];
        assert_eq!(outcomes.iter().filter(|outcome| outcome.is_some()).count(), 1, "round {round}: {outcomes:?}");
        let family = format!("SELECT count(*) AS count FROM refresh_tokens WHERE session_id = '{}'", session.id);
        assert_eq!(count(&database, &family).await, 2, "round {round}: one successor, not two");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_racing_a_revocation_either_wins_before_it_or_does_nothing() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 8).await;
    for round in 0..10 {
        let (_, session, token) = logged_in(&repository, &format!("racer{round}@example.com"), now()).await;
        let next = token_hash();
        let revoked_at = now();
        let (rotated, revoked) = tokio::join!(
            repository.rotate_refresh_token(session.id, token.clone(), next.clone(), now()),
            repository.revoke_session(session.id, None, revoked_at, Vec::new()),
        );
        assert!(revoked.unwrap(), "round {round}");
        let stored = stored_session(&repository, session.id).await;
        assert_eq!(stored.revoked_at, Some(revoked_at), "round {round}");
        match rotated.unwrap() {
            Some(_) => assert!(token_exists(&database, &next).await, "round {round}"),
            None => {
                assert!(!token_exists(&database, &next).await, "round {round}");
                assert!(!token_used(&database, &token).await, "round {round}");
            }
        }
    }
}

#[tokio::test]
async fn revoking_a_session_keeps_the_first_revocation_time() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, _) = logged_in(&repository, "ada@example.com", now()).await;
    let (other, _) = login(&repository, user.id, now()).await;
    let at = now();

    assert!(repository.revoke_session(session.id, None, at, Vec::new()).await.unwrap());
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, Some(at));
    assert_eq!(stored_session(&repository, other.id).await.revoked_at, None);
    assert!(
        !repository.revoke_session(session.id, None, at + Duration::minutes(1), Vec::new()).await.unwrap(),
        "already revoked"
    );
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, Some(at), "the first revocation stands");
    assert!(!repository.revoke_session(SessionId::generate(), None, now(), Vec::new()).await.unwrap(), "unknown");
}

#[tokio::test]
async fn with_an_owner_only_their_own_session_is_revoked() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (ada, session, _) = logged_in(&repository, "ada@example.com", now()).await;
    let (grace, _, _) = logged_in(&repository, "grace@example.com", now()).await;
    let at = now();

    assert!(!repository.revoke_session(session.id, Some(grace.id), at, Vec::new()).await.unwrap());
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, None);
    assert!(repository.revoke_session(session.id, Some(ada.id), at, Vec::new()).await.unwrap());
    assert_eq!(stored_session(&repository, session.id).await.revoked_at, Some(at));
    assert!(!repository.revoke_session(session.id, Some(ada.id), now(), Vec::new()).await.unwrap(), "already revoked");
}

#[tokio::test]
async fn ending_sessions_revokes_those_named_of_that_user_only() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (ada, first, _) = logged_in(&repository, "ada@example.com", now()).await;
    let (second, _) = login(&repository, ada.id, now()).await;
    let (third, _) = login(&repository, ada.id, now()).await;
    let (_, foreign, _) = logged_in(&repository, "grace@example.com", now()).await;

    repository.end_sessions(ada.id, SessionEnd::Keep, now(), Vec::new()).await.unwrap();
    assert_eq!(repository.list_sessions(ada.id, now()).await.unwrap().len(), 3);
    let first_end = now();
    repository.end_sessions(ada.id, SessionEnd::AllBut(first.id), first_end, Vec::new()).await.unwrap();
    assert_eq!(stored_session(&repository, first.id).await.revoked_at, None);
    assert_eq!(stored_session(&repository, second.id).await.revoked_at, Some(first_end));
    let at = now() + Duration::minutes(1);
    repository.end_sessions(ada.id, SessionEnd::All, at, Vec::new()).await.unwrap();
    assert_eq!(stored_session(&repository, first.id).await.revoked_at, Some(at));
    assert_eq!(stored_session(&repository, third.id).await.revoked_at, Some(first_end), "the first revocation stands");
    assert_eq!(stored_session(&repository, foreign.id).await.revoked_at, None);
    assert_eq!(repository.list_sessions(ada.id, now()).await.unwrap(), vec![]);
}

#[tokio::test]
async fn listing_sessions_shows_the_unrevoked_unexpired_ones_newest_first() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let start = now() - Duration::hours(3);
    let (ada, oldest, _) = logged_in(&repository, "ada@example.com", start).await;
    let (revoked, _) = login(&repository, ada.id, start + Duration::hours(1)).await;
    let (newest, _) = login(&repository, ada.id, start + Duration::hours(2)).await;
    logged_in(&repository, "grace@example.com", start).await;
    assert!(repository.revoke_session(revoked.id, Some(ada.id), now(), Vec::new()).await.unwrap());

    let listed = repository.list_sessions(ada.id, now()).await.unwrap();
    assert_eq!(listed, vec![newest.clone(), oldest.clone()]);
    let after_expiry = repository.list_sessions(ada.id, oldest.expires_at).await.unwrap();
    assert_eq!(after_expiry, vec![newest], "the oldest session has expired by then");
}

#[tokio::test]
async fn a_session_of_a_deleted_user_goes_with_them() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let (user, session, token) = logged_in(&repository, "ada@example.com", now()).await;
    execute(&database, &format!("DELETE FROM users WHERE id = '{}'", user.id)).await;
    assert_eq!(repository.find_session_with_user(session.id).await.unwrap(), None);
    assert_eq!(repository.find_refresh_token(token.clone()).await.unwrap(), None);
    assert_eq!(repository.rotate_refresh_token(session.id, token, token_hash(), now()).await.unwrap(), None);
}
