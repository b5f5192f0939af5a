//! The second factor under attack, driven through `Service` over the in-memory adapters: an attacker who knows the
//! password (or also holds a session) tries to get past the code, to reset the backoff that limits guessing, to
//! replay codes across steps and routes, to race, and to cross tokens and codes of two users.
//!
//! Each test states the defence it holds the service to. The ones that name a weakness in their first line fail
//! until it is fixed; the others are regression tests of defences that hold.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;

use time::Duration;
use users_domain::Role;
use users_domain::admin::AdminChanges;
use users_domain::ports::{Clock as _, Ports as _, SecondFactorStore as _};
use users_domain::second_factor::{MfaError, MfaLoginError, ResetMfaError};
use users_domain::sessions::{ClientInfo, LoginError, RefreshError};

use support::mfa::{code, enrolled, fresh_step, mfa_token, principal_token, second_step};
use support::{PASSWORD, World, world, world_with_backoff};

async fn failures(world: &World, address: &str) -> u32 {
    world.failures(address).await.map_or(0, |count| count.failures)
}

/// Polls a future once; whether it finished (its output is dropped).
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await
}

// ---------------------------------------------------------------------------------------------------------------
// Weaknesses: these fail until the service is fixed.
// ---------------------------------------------------------------------------------------------------------------

/// WEAKNESS: on `DELETE /me/mfa` and `POST /me/mfa/recovery-codes` the right current password clears the backoff
/// before the code is checked, so the failures of wrong codes never add up: with a session and the password, an
/// attacker guesses the code without limit, then turns the second factor off (or mints recovery codes) for good.
#[tokio::test]
async fn turning_it_off_cannot_be_brute_forced_by_repeating_the_right_password() {
    let world = world_with_backoff(3, Duration::minutes(1));
    let ada = enrolled(&world, "ada@example.com").await;
    let mut outcomes = Vec::new();
    for guess in 0..6 {
        let wrong = format!("{:06}", 999_990 + guess);
        match world.service.disable_totp(&ada.principal, PASSWORD, &wrong).await {
            Err(MfaError::InvalidCode) => outcomes.push("invalid_code"),
            Err(MfaError::RateLimited { .. }) => outcomes.push("rate_limited"),
            other => panic!("a wrong code: {other:?}"),
        }
    }
    assert_eq!(
        outcomes,
        ["invalid_code", "invalid_code", "invalid_code", "rate_limited", "rate_limited", "rate_limited"],
        "three wrong codes must block the account (failures stored now: {}); a right password alongside them \
         must not wipe the count",
        failures(&world, "ada@example.com").await
    );
}

/// WEAKNESS: the same, on regenerating the recovery codes.
#[tokio::test]
async fn regenerating_recovery_codes_cannot_be_brute_forced_by_repeating_the_right_password() {
    let world = world_with_backoff(3, Duration::minutes(1));
    let ada = enrolled(&world, "ada@example.com").await;
    for _ in 0..5 {
        let _ = world.service.regenerate_recovery_codes(&ada.principal, PASSWORD, "000000").await;
    }
    let right = code(&ada.secret, world.clock().now());
    let after = world.service.regenerate_recovery_codes(&ada.principal, PASSWORD, &right).await;
    assert!(
        matches!(after, Err(MfaError::RateLimited { .. })),
        "after five wrong codes the account must be blocked, even for the right code; got {after:?} with {} \
         failures stored",
        failures(&world, "ada@example.com").await
    );
}

/// WEAKNESS: a code try whose login step turns out unusable when the change is applied (it expired while the try
/// waited at the attempt gate behind another check of the account) is taken as a *passed* check, and clears the
/// account's backoff, though no code was verified. An attacker who knows the password times guesses at the end of
/// an `mfa_token`'s five minutes (a concurrent password login holds the gate long enough) and wipes the count of
/// wrong codes whenever it nears the block: the backoff stops limiting code guesses.
#[tokio::test]
async fn a_try_on_a_step_that_expired_while_it_waited_does_not_clear_the_backoff() {
    let world = world_with_backoff(3, Duration::minutes(1));
    enrolled(&world, "ada@example.com").await;
    // Two wrong codes: one below the threshold, so one check of the account runs at a time.
    let token = mfa_token(&world, "ada@example.com").await;
    second_step(&world, &token, "000000").await.unwrap_err();
    second_step(&world, &token, "000001").await.unwrap_err();
    assert_eq!(failures(&world, "ada@example.com").await, 2);
    let expiring = mfa_token(&world, "ada@example.com").await;

    // A password login holds the account's only slot while it hashes.
    let mut login = pin!(world.login("ada@example.com", PASSWORD));
    assert!(!poll_once(login.as_mut()).await, "the password check runs on the hashing pool");
    // A guess (shaped as a recovery code) takes one of the token's tries while it is valid, then waits its turn.
    let mut guess =
        pin!(world.service.login_second_step(&expiring.token, "aaaa-bbbb-cccc-dddd", ClientInfo::default()));
    assert!(!poll_once(guess.as_mut()).await, "the guess waits at the attempt gate");
    // The token expires while the guess waits.
    world.clock().advance(Duration::minutes(5));
    assert!(matches!(login.await, Err(LoginError::SecondFactorRequired(_))));
    let guessed = guess.await;
    assert!(matches!(guessed, Err(MfaLoginError::InvalidToken | MfaLoginError::InvalidCode)), "{guessed:?}");
    assert!(
        failures(&world, "ada@example.com").await >= 2,
        "an unverified guess must not clear the failures of the wrong codes before it"
    );
}

/// WEAKNESS: a login waiting for its second step outlives a password reset, which "revokes all sessions": the
/// `mfa_token` minted with the old password still starts a session after the reset. An attacker who phished the
/// password (and relays a code) keeps a way in that the owner's reset was meant to close.
#[tokio::test]
async fn a_password_reset_kills_the_logins_waiting_for_their_second_step() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let stolen = mfa_token(&world, "ada@example.com").await;
    world.service.forgot_password(support::email("ada@example.com")).await.unwrap();
    world.service.handle_account_requests(10).await.unwrap();
    let reset = support::token_in(&world.last_mail_to("ada@example.com"));
    world.service.reset_password(&reset, "another long passphrase 42", ClientInfo::default()).await.unwrap();
    let right = code(&ada.secret, world.clock().now());
    let after = second_step(&world, &stolen, &right).await;
    assert!(
        matches!(after, Err(MfaLoginError::InvalidToken)),
        "a login step of the old password must die with the reset; got {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Defences that hold: regression tests.
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_guesses_over_many_tokens_checks_no_more_codes_than_the_threshold() {
    let world = world_with_backoff(5, Duration::minutes(10));
    enrolled(&world, "ada@example.com").await;
    // Twenty tokens (right passwords count no failure), then five guesses on each, all at once.
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(mfa_token(&world, "ada@example.com").await);
    }
    let mut tasks = Vec::new();
    for token in tokens {
        for guess in 0..5 {
            let (world, token) = (world.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                world
                    .service
                    .login_second_step(&token.token, &format!("{:06}", 900_000 + guess), ClientInfo::default())
                    .await
            }));
        }
    }
    let (mut checked, mut blocked) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Err(MfaLoginError::InvalidCode) => checked += 1,
            Err(MfaLoginError::RateLimited { .. }) => blocked += 1,
            other => panic!("a wrong code: {other:?}"),
        }
    }
    assert!(checked <= 5, "{checked} codes were checked; the backoff allows 5");
    assert_eq!(checked + blocked, 100);
}

#[tokio::test]
async fn a_token_of_one_user_never_takes_the_codes_of_another() {
    let world = world_with_backoff(100, Duration::seconds(1));
    let ada = enrolled(&world, "ada@example.com").await;
    let bob = enrolled(&world, "bob@example.com").await;
    let now = world.clock().now();
    let token = mfa_token(&world, "ada@example.com").await;
    // Bob's current code and recovery code, on Ada's token.
    let crossed = second_step(&world, &token, &code(&bob.secret, now)).await;
    assert!(matches!(crossed, Err(MfaLoginError::InvalidCode)), "{crossed:?}");
    let crossed = second_step(&world, &token, &bob.codes[0].display()).await;
    assert!(matches!(crossed, Err(MfaLoginError::InvalidCode)), "{crossed:?}");
    assert_eq!(world.ports.second_factors().recovery_codes_left(bob.principal.user.id).await.unwrap(), 10);
    // Bob's codes still work for Bob, Ada's for Ada; the sessions are their own.
    let bobs = mfa_token(&world, "bob@example.com").await;
    let pair =
        world.service.login_second_step(&bobs.token, &bob.codes[0].display(), ClientInfo::default()).await.unwrap();
    assert_eq!(world.service.authenticate(pair.access_token.expose()).await.unwrap().user.id, bob.principal.user.id);
    let pair =
        world.service.login_second_step(&token.token, &code(&ada.secret, now), ClientInfo::default()).await.unwrap();
    assert_eq!(world.service.authenticate(pair.access_token.expose()).await.unwrap().user.id, ada.principal.user.id);
}

#[tokio::test]
async fn a_code_spent_on_regenerating_or_turning_off_is_not_accepted_again_at_login() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let now = world.clock().now();
    let spent = code(&ada.secret, now);
    let fresh = world.service.regenerate_recovery_codes(&ada.principal, PASSWORD, &spent).await.unwrap();
    let token = mfa_token(&world, "ada@example.com").await;
    let replay = second_step(&world, &token, &spent).await;
    assert!(matches!(replay, Err(MfaLoginError::InvalidCode)), "{replay:?}");
    // The previous step's code is older than the spent one: refused as well.
    let older = second_step(&world, &token, &code(&ada.secret, now - Duration::seconds(30))).await;
    assert!(matches!(older, Err(MfaLoginError::InvalidCode)), "{older:?}");
    // A recovery code spent on turning it off is gone with the rest.
    world.service.disable_totp(&ada.principal, PASSWORD, &fresh[0].display()).await.unwrap();
    let principal = world.service.authenticate(&principal_token(&world, &ada.principal)).await.unwrap();
    assert!(!principal.user.mfa_enabled);
    assert!(matches!(
        world.service.regenerate_recovery_codes(&principal, PASSWORD, &fresh[1].display()).await,
        Err(MfaError::NotEnabled)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recovery_code_raced_over_eight_logins_logs_in_once_and_mails_once() {
    let world = world_with_backoff(100, Duration::seconds(1));
    let ada = enrolled(&world, "ada@example.com").await;
    let recovery = ada.codes[0].display();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let token = mfa_token(&world, "ada@example.com").await;
        let (world, recovery) = (world.clone(), recovery.clone());
        tasks.push(tokio::spawn(async move {
            world.service.login_second_step(&token.token, &recovery, ClientInfo::default()).await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(MfaLoginError::InvalidCode) => {}
            Err(other) => panic!("a losing login is a used code, not {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    let notices = world
        .mails_to("ada@example.com")
        .into_iter()
        .filter(|mail| mail.mail.subject == "A recovery code was used to log in")
        .count();
    assert_eq!(notices, 1, "one use, one notice");
    assert_eq!(world.ports.second_factors().recovery_codes_left(ada.principal.user.id).await.unwrap(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_confirms_racing_turn_it_on_once_and_only_the_winners_codes_work() {
    let world = world_with_backoff(100, Duration::seconds(1));
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let setup = world.service.setup_totp(&ada, PASSWORD).await.unwrap();
    let now = fresh_step(&world);
    let right = code(&setup.secret, now);
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (world, ada, right) = (world.clone(), ada.clone(), right.clone());
            tokio::spawn(async move { world.service.confirm_totp(&ada, &right).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(codes) => winners.push(codes),
            Err(MfaError::AlreadyEnabled | MfaError::InvalidCode) => {}
            Err(other) => panic!("the losing confirm: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one confirm hands out recovery codes");
    let enabled = world
        .mails_to("ada@example.com")
        .into_iter()
        .filter(|mail| mail.mail.subject == "Two-step login is on")
        .count();
    assert_eq!(enabled, 1);
    world.clock().advance(Duration::seconds(60));
    let token = mfa_token(&world, "ada@example.com").await;
    second_step(&world, &token, &winners[0][0].display()).await.unwrap();
}

#[tokio::test]
async fn a_confirm_checked_against_a_replaced_setup_does_not_turn_it_on() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let first = world.service.setup_totp(&ada, PASSWORD).await.unwrap();
    let now = fresh_step(&world);
    // The attacker's setup (the same account, another tab) replaces the first secret before its confirm lands.
    let second = world.service.setup_totp(&ada, PASSWORD).await.unwrap();
    let stale = world.service.confirm_totp(&ada, &code(&first.secret, now)).await;
    assert!(matches!(stale, Err(MfaError::InvalidCode)), "{stale:?}");
    assert!(!world.user("ada@example.com").await.mfa_enabled);
    world.service.confirm_totp(&ada, &code(&second.secret, now)).await.unwrap();
    // Confirming again, even with a fresh code, is refused: there is nothing waiting.
    world.clock().advance(Duration::seconds(30));
    let again = world.service.confirm_totp(&ada, &code(&second.secret, world.clock().now())).await;
    assert!(matches!(again, Err(MfaError::AlreadyEnabled)), "{again:?}");
}

#[tokio::test]
async fn an_mfa_token_is_no_refresh_token_and_logout_with_it_ends_nothing() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let token = mfa_token(&world, "ada@example.com").await;
    let as_refresh = world.service.refresh(&token.token, ClientInfo::default()).await;
    assert!(matches!(as_refresh, Err(RefreshError::InvalidToken)), "{as_refresh:?}");
    world.service.logout(&token.token, ClientInfo::default()).await.unwrap();
    assert!(world.service.authenticate(&principal_token(&world, &ada.principal)).await.is_ok());
    // The token was neither used up nor harmed: it still finishes the login.
    second_step(&world, &token, &code(&ada.secret, world.clock().now())).await.unwrap();
}

#[tokio::test]
async fn a_refresh_token_is_no_mfa_token() {
    let world = world();
    world.verified("bob@example.com").await;
    let pair = world.login("bob@example.com", PASSWORD).await.unwrap();
    let as_mfa = world.service.login_second_step(pair.refresh_token.expose(), "000000", ClientInfo::default()).await;
    assert!(matches!(as_mfa, Err(MfaLoginError::InvalidToken)), "{as_mfa:?}");
}

#[tokio::test]
async fn look_alike_digits_and_huge_inputs_are_wrong_codes_that_change_nothing_else() {
    let world = world_with_backoff(100, Duration::seconds(1));
    let ada = enrolled(&world, "ada@example.com").await;
    let right = code(&ada.secret, world.clock().now());
    let fullwidth: String = right.chars().map(|c| char::from_u32(u32::from(c) - 0x30 + 0xFF10).unwrap()).collect();
    let arabic: String = right.chars().map(|c| char::from_u32(u32::from(c) - 0x30 + 0x0660).unwrap()).collect();
    let token = mfa_token(&world, "ada@example.com").await;
    for guess in [fullwidth, arabic, format!("{right}0"), "9".repeat(16 * 1024)] {
        let result = second_step(&world, &token, &guess).await;
        assert!(matches!(result, Err(MfaLoginError::InvalidCode)), "{guess:.40}: {result:?}");
    }
    // Four tries used, one left: the right code still works, with spaces an app shows.
    let spaced = format!("{} {}", &right[..3], &right[3..]);
    second_step(&world, &token, &spaced).await.unwrap();
    // A huge or empty token is just an unknown one.
    for bad in ["", &"x".repeat(16 * 1024)] {
        let result = world.service.login_second_step(bad, &right, ClientInfo::default()).await;
        assert!(matches!(result, Err(MfaLoginError::InvalidToken)), "{result:?}");
    }
}

#[tokio::test]
async fn a_user_deleted_or_locked_mid_login_gets_no_session() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let ada = enrolled(&world, "ada@example.com").await;
    let token = mfa_token(&world, "ada@example.com").await;
    world.service.delete_user(&root, ada.principal.user.id).await.unwrap();
    let gone = second_step(&world, &token, &code(&ada.secret, world.clock().now())).await;
    assert!(matches!(gone, Err(MfaLoginError::InvalidToken)), "{gone:?}");

    let bob = enrolled(&world, "bob@example.com").await;
    let token = mfa_token(&world, "bob@example.com").await;
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    world.service.update_user(&root, bob.principal.user.id, lock).await.unwrap();
    let locked = second_step(&world, &token, &bob.codes[0].display()).await;
    assert!(matches!(locked, Err(MfaLoginError::AccountLocked)), "{locked:?}");
    assert_eq!(
        world.ports.second_factors().recovery_codes_left(bob.principal.user.id).await.unwrap(),
        10,
        "a locked account's recovery code is not spent"
    );
}

#[tokio::test]
async fn only_a_wrong_password_is_told_apart_and_a_locked_account_gets_no_token() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let ada = enrolled(&world, "ada@example.com").await;
    let wrong = world.login("ada@example.com", "not the password at all").await;
    assert!(matches!(wrong, Err(LoginError::InvalidCredentials)), "{wrong:?}");
    let unknown = world.login("nobody@example.com", PASSWORD).await;
    assert!(matches!(unknown, Err(LoginError::InvalidCredentials)), "{unknown:?}");
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    world.service.update_user(&root, ada.principal.user.id, lock).await.unwrap();
    let locked = world.login("ada@example.com", PASSWORD).await;
    assert!(matches!(locked, Err(LoginError::AccountLocked)), "a locked account gets no mfa_token: {locked:?}");
}

#[tokio::test]
async fn staff_reset_only_within_the_matrix() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let manager = world.staff(&root, "max@example.com", Role::Manager).await;
    let other_manager = enrolled(&world, "mia@example.com").await;
    let promote = AdminChanges { role: Some(Role::Manager), ..AdminChanges::default() };
    world.service.update_user(&root, other_manager.principal.user.id, promote).await.unwrap();
    let peer = world.service.reset_second_factor(&manager, other_manager.principal.user.id).await;
    assert!(matches!(peer, Err(ResetMfaError::Forbidden | ResetMfaError::NotFound)), "{peer:?}");
    assert!(world.user("mia@example.com").await.mfa_enabled);
    let user = enrolled(&world, "ada@example.com").await;
    let plain = world.staff(&root, "una@example.com", Role::Authenticated).await;
    let by_user = world.service.reset_second_factor(&plain, user.principal.user.id).await;
    assert!(matches!(by_user, Err(ResetMfaError::Forbidden)), "{by_user:?}");
    assert!(world.user("ada@example.com").await.mfa_enabled);
}
