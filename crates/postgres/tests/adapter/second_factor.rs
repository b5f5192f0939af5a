//! `SecondFactorStore`: the rows a second factor is stored in (checked by looking at the tables directly), a
//! change applied in one transaction under the user's lock, and the tries on a pending login step counted
//! atomically. Which code is right and what a change does are the domain's, tested there.

use std::collections::BTreeSet;

use time::{Duration, OffsetDateTime};
use tokio::task::JoinSet;
use users_domain::ports::{
    Guard, NewMfaChallenge, PortError, SealedSecret, SecondFactorAction, SecondFactorChange, SecondFactorError,
    SecondFactorProof, SecondFactorStore as _, SessionStore as _, UserStore as _,
};
use users_domain::session::{RefreshToken, TokenHash};
use users_domain::user::{User, UserId};
use users_postgres::PgRepository;
use users_testkit::TestDatabase;

use crate::support::{
    count, execute, insert, mail, new_session, now, repository, repository_with_connections, rows, timestamp,
    token_hash,
};

fn secret() -> SealedSecret {
    SealedSecret(vec![7; 40])
}

fn codes(names: &[&str]) -> Vec<TokenHash> {
    names.iter().map(|name| TokenHash::of(name)).collect()
}

/// Stages the secret for `user_id` at `at`.
async fn stage(repository: &PgRepository, user_id: UserId, at: OffsetDateTime) {
    let mut change = SecondFactorChange::new(user_id, at);
    change.action = SecondFactorAction::Stage { secret: secret() };
    repository.apply_second_factor(change).await.unwrap();
}

/// Enables the staged secret of `user_id` at `at` with a code of step `step` and these recovery codes.
async fn enable(repository: &PgRepository, user_id: UserId, step: i64, names: &[&str], at: OffsetDateTime) {
    let mut change = SecondFactorChange::new(user_id, at);
    change.proof = Some(SecondFactorProof::Step(step));
    change.action = SecondFactorAction::Enable { secret: secret(), recovery_codes: codes(names) };
    repository.apply_second_factor(change).await.unwrap();
}

/// A user whose second factor is on, with the last step 10 and the recovery codes `one` and `two`.
async fn with_second_factor(repository: &PgRepository, email: &str) -> User {
    let nickname = email.split('@').next().unwrap();
    let user = insert(repository, email, nickname).await;
    let at = now();
    stage(repository, user.id, at).await;
    enable(repository, user.id, 10, &["one", "two"], at).await;
    repository.find_user(user.id).await.unwrap().unwrap()
}

/// Stores a pending login step of `user_id` that expires in five minutes.
async fn pending_step(repository: &PgRepository, user_id: UserId) -> TokenHash {
    let token_hash = token_hash();
    let challenge =
        NewMfaChallenge { token_hash: token_hash.clone(), user_id, expires_at: now() + Duration::minutes(5) };
    repository.create_mfa_challenge(challenge).await.unwrap();
    token_hash
}

async fn last_used_step(database: &TestDatabase) -> i64 {
    count(database, "SELECT last_used_step AS count FROM totp_secrets").await
}

#[tokio::test]
async fn a_secret_is_stored_with_its_times_and_the_recovery_codes_only_as_hashes() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let staged_at = now() - Duration::minutes(2);
    stage(&repository, user.id, staged_at).await;
    assert_eq!(timestamp(&database, "SELECT created_at AS value FROM totp_secrets").await, Some(staged_at));
    assert_eq!(timestamp(&database, "SELECT enabled_at AS value FROM totp_secrets").await, None);
    assert_eq!(count(&database, "SELECT count(*) AS count FROM totp_secrets WHERE NOT enabled").await, 1);

    let enabled_at = now() - Duration::minutes(1);
    enable(&repository, user.id, 10, &["one", "two"], enabled_at).await;
    assert_eq!(timestamp(&database, "SELECT enabled_at AS value FROM totp_secrets").await, Some(enabled_at));
    assert_eq!(timestamp(&database, "SELECT created_at AS value FROM totp_secrets").await, Some(staged_at));
    assert_eq!(last_used_step(&database).await, 10);
    let hashes = codes(&["one", "two"]);
    let stored = format!(
        "SELECT count(*) AS count FROM recovery_codes WHERE code_hash IN ('{}', '{}') AND used_at IS NULL",
        hashes[0].as_str(),
        hashes[1].as_str()
    );
    assert_eq!(count(&database, &stored).await, 2, "the hashes are stored, unused");
    assert_eq!(rows(&database, "recovery_codes").await, 2, "and nothing else");
    assert_eq!(
        timestamp(&database, "SELECT min(created_at) AS value FROM recovery_codes").await,
        Some(enabled_at),
        "created with the change"
    );
    let flag = "SELECT count(*) AS count FROM users WHERE mfa_enabled";
    assert_eq!(count(&database, flag).await, 1);

    let used_at = now();
    let mut use_code = SecondFactorChange::new(user.id, used_at);
    use_code.proof = Some(SecondFactorProof::RecoveryCode(hashes[0].clone()));
    repository.apply_second_factor(use_code).await.unwrap();
    let used = format!("SELECT used_at AS value FROM recovery_codes WHERE code_hash = '{}'", hashes[0].as_str());
    assert_eq!(timestamp(&database, &used).await, Some(used_at));
    assert_eq!(repository.recovery_codes_left(user.id).await.unwrap(), 1);

    // A repeated hash is one code, as a set of codes would have it.
    let mut replace = SecondFactorChange::new(user.id, used_at);
    replace.action = SecondFactorAction::ReplaceRecoveryCodes(codes(&["three", "three"]));
    repository.apply_second_factor(replace).await.unwrap();
    assert_eq!(rows(&database, "recovery_codes").await, 1);
}

#[tokio::test]
async fn a_change_whose_mail_cannot_be_stored_rolls_back_everything_before_it() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = with_second_factor(&repository, "ada@example.com").await;
    let step = pending_step(&repository, user.id).await;
    execute(&database, "INSERT INTO login_attempts (key, failures) VALUES ('ada@example.com', 3)").await;

    let at = now();
    let session = new_session(user.id, at, token_hash());
    let mut change = SecondFactorChange::new(user.id, at);
    change.consume_challenge = Some(step.clone());
    change.proof = Some(SecondFactorProof::Step(11));
    change.action = SecondFactorAction::ReplaceRecoveryCodes(codes(&["three"]));
    change.start_session = Some(session.clone());
    change.clear_failures = Some("ada@example.com".to_owned());
    change.mails = vec![mail("ada@example.com", "Fine"), mail("ada@example.com", "Broken\r\nBcc: x@example.com")];

    let error = repository.apply_second_factor(change).await.unwrap_err();
    assert!(matches!(error, SecondFactorError::Port(PortError::Unknown(_))), "{error:?}");
    assert_eq!(rows(&database, "mfa_challenges").await, 1, "the login step is still pending");
    assert_eq!(last_used_step(&database).await, 10, "the step is not consumed");
    assert_eq!(repository.recovery_codes_left(user.id).await.unwrap(), 2, "the codes are not replaced");
    assert_eq!(rows(&database, "sessions").await, 0);
    assert_eq!(rows(&database, "refresh_tokens").await, 0);
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap(), user, "no login time recorded");
    assert_eq!(rows(&database, "login_attempts").await, 1);
    assert_eq!(rows(&database, "mail_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_racing_the_deletion_of_their_user_apply_before_it_or_find_the_user_gone() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 6).await;
    for round in 0..10 {
        let user = with_second_factor(&repository, &format!("user{round}@example.com")).await;
        let step = pending_step(&repository, user.id).await;
        let at = now();
        // A login's second step (which locks the user, consumes the step and starts a session) and a reset (which
        // deletes the secret, the codes and the steps), both racing the deletion that cascades to all of them.
        let mut login = SecondFactorChange::new(user.id, at);
        login.consume_challenge = Some(step);
        login.proof = Some(SecondFactorProof::Step(11));
        login.start_session = Some(new_session(user.id, at, token_hash()));
        let mut reset = SecondFactorChange::new(user.id, at);
        reset.action = SecondFactorAction::Disable;
        let mut racing = JoinSet::new();
        for change in [login, reset] {
            let repository = repository.clone();
            racing.spawn(async move { repository.apply_second_factor(change).await.map(drop) });
        }
        let deleted = repository.delete_user(user.id, Guard::default(), Vec::new()).await;
        deleted.unwrap_or_else(|error| panic!("round {round}: the deletion failed: {error:?}"));
        while let Some(outcome) = racing.join_next().await {
            match outcome.unwrap() {
                Ok(()) | Err(SecondFactorError::StateChanged | SecondFactorError::ChallengeUnusable) => {}
                Err(error) => panic!("round {round}: a change failed otherwise (a deadlock?): {error:?}"),
            }
        }
    }
    for table in ["totp_secrets", "recovery_codes", "mfa_challenges", "sessions", "refresh_tokens"] {
        assert_eq!(rows(&database, table).await, 0, "{table} went with the users");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_tries_on_a_login_step_let_exactly_the_limit_through() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 10).await;
    let user = insert(&repository, "ada@example.com", "ada").await;
    let step = pending_step(&repository, user.id).await;
    let at = now();
    let mut tries = JoinSet::new();
    for _ in 0..20 {
        let (repository, step) = (repository.clone(), step.clone());
        tries.spawn(async move { repository.take_mfa_attempt(step, at, 5).await });
    }
    let mut counts = BTreeSet::new();
    while let Some(taken) = tries.join_next().await {
        if let Some(challenge) = taken.unwrap().unwrap() {
            assert!(counts.insert(challenge.attempts), "the count {} was handed out twice", challenge.attempts);
        }
    }
    assert_eq!(counts, (1..=5).collect(), "each count once, up to the limit");
    assert_eq!(count(&database, "SELECT attempts::bigint AS count FROM mfa_challenges").await, 5);

    // A limit past the column's range still lets tries through.
    let taken = repository.take_mfa_attempt(step, at, u32::MAX).await.unwrap();
    assert_eq!(taken.map(|challenge| challenge.attempts), Some(6));
}

#[tokio::test]
async fn a_login_step_of_a_missing_user_is_refused() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let challenge = NewMfaChallenge {
        token_hash: RefreshToken::generate().hash(),
        user_id: UserId::generate(),
        expires_at: now() + Duration::minutes(5),
    };
    let error = repository.create_mfa_challenge(challenge).await.unwrap_err();
    assert!(matches!(error, PortError::Unknown(_)), "{error:?}");
    assert_eq!(rows(&database, "mfa_challenges").await, 0);
}

#[tokio::test]
async fn a_started_session_is_the_one_the_session_store_finds() {
    let database = TestDatabase::create().await;
    let repository = repository(&database).await;
    let user = with_second_factor(&repository, "ada@example.com").await;
    let at = now();
    let refresh = token_hash();
    let mut login = SecondFactorChange::new(user.id, at);
    login.proof = Some(SecondFactorProof::RecoveryCode(TokenHash::of("one")));
    login.start_session = Some(new_session(user.id, at, refresh.clone()));
    let started = repository.apply_second_factor(login).await.unwrap().unwrap();
    let record = repository.find_refresh_token(refresh).await.unwrap().unwrap();
    assert_eq!((record.session, record.used), (started, false));
    assert_eq!(record.user.last_login_at, Some(at));
    assert_eq!(timestamp(&database, "SELECT last_login_at AS value FROM users").await, Some(at));
}
