//! The second factor's state machine, driven through `Service` over the in-memory adapters: setup and confirm,
//! the two-step login, replay, skew, exhaustion of the `mfa_token`, recovery codes, the backoff shared with
//! passwords, turning it off, and two logins racing with one code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use time::Duration;
use users_domain::Role;
use users_domain::admin::AdminChanges;
use users_domain::ports::{Clock as _, Ports as _, SecondFactorStore as _};
use users_domain::second_factor::{MfaError, MfaLoginError, ResetMfaError};
use users_domain::sessions::{ClientInfo, LoginError};

use support::mfa::{code, enrolled, fresh_step, mfa_token};
use support::{PASSWORD, world, world_with_backoff};

#[tokio::test]
async fn setup_needs_the_password_and_does_nothing_until_confirmed() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    assert!(matches!(
        world.service.setup_totp(&ada, "wrong password here").await,
        Err(MfaError::InvalidCurrentPassword)
    ));
    let first = world.service.setup_totp(&ada, PASSWORD).await.unwrap();
    let second = world.service.setup_totp(&ada, PASSWORD).await.unwrap();
    assert_ne!(first.secret, second.secret, "a new setup replaces an unconfirmed one");
    assert!(!world.user("ada@example.com").await.mfa_enabled);
    assert!(world.login("ada@example.com", PASSWORD).await.is_ok(), "logins are unchanged until confirmed");

    let now = fresh_step(&world);
    let stale = world.service.confirm_totp(&ada, &code(&first.secret, now)).await;
    assert!(matches!(stale, Err(MfaError::InvalidCode)), "the replaced secret's codes are wrong");
    let codes = world.service.confirm_totp(&ada, &code(&second.secret, now)).await.unwrap();
    assert_eq!(codes.len(), 10);
    assert!(world.user("ada@example.com").await.mfa_enabled);
    assert_eq!(world.last_mail_to("ada@example.com").mail.subject, "Two-step login is on");
    let again = world.service.setup_totp(&ada, PASSWORD).await;
    assert!(matches!(again, Err(MfaError::AlreadyEnabled)));
}

#[tokio::test]
async fn confirming_without_a_setup_is_refused() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    assert!(matches!(world.service.confirm_totp(&ada, "123456").await, Err(MfaError::NotEnabled)));
}

#[tokio::test]
async fn a_right_password_then_a_code_logs_in_and_the_token_is_single_use() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let sessions_before = world.service.sessions(&ada.principal).await.unwrap().len();
    let token = mfa_token(&world, "ada@example.com").await;
    assert_eq!(token.expires_in, 300);
    assert_eq!(
        world.service.sessions(&ada.principal).await.unwrap().len(),
        sessions_before,
        "a right password alone starts no session"
    );
    let now = world.clock().now();
    let pair =
        world.service.login_second_step(&token.token, &code(&ada.secret, now), ClientInfo::default()).await.unwrap();
    let principal = world.service.authenticate(pair.access_token.expose()).await.unwrap();
    assert_eq!(principal.user.id, ada.principal.user.id);
    assert!(principal.user.last_login_at.is_some());
    // The token is consumed, even with a fresh code.
    world.clock().advance(Duration::seconds(30));
    let again = world
        .service
        .login_second_step(&token.token, &code(&ada.secret, world.clock().now()), ClientInfo::default())
        .await;
    assert!(matches!(again, Err(MfaLoginError::InvalidToken)), "{again:?}");
}

#[tokio::test]
async fn a_wrong_password_never_reaches_the_second_step() {
    let world = world();
    enrolled(&world, "ada@example.com").await;
    let result = world.login("ada@example.com", "not the password at all").await;
    assert!(matches!(result, Err(LoginError::InvalidCredentials)), "{result:?}");
}

#[tokio::test]
async fn a_code_is_accepted_once_and_one_step_of_skew_either_way() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let now = world.clock().now();
    // The previous step's code is accepted...
    let token = mfa_token(&world, "ada@example.com").await;
    let previous = code(&ada.secret, now - Duration::seconds(30));
    world.service.login_second_step(&token.token, &previous, ClientInfo::default()).await.unwrap();
    // ...but not twice, and nothing earlier than a step already used.
    let token = mfa_token(&world, "ada@example.com").await;
    let replay = world.service.login_second_step(&token.token, &previous, ClientInfo::default()).await;
    assert!(matches!(replay, Err(MfaLoginError::InvalidCode)), "{replay:?}");
    // The next step's code (a phone clock a little ahead) is accepted with the same token.
    let next = code(&ada.secret, now + Duration::seconds(30));
    world.service.login_second_step(&token.token, &next, ClientInfo::default()).await.unwrap();
    // Once the step after `now` was used, the current step's code is a replay too.
    let token = mfa_token(&world, "ada@example.com").await;
    let current = world.service.login_second_step(&token.token, &code(&ada.secret, now), ClientInfo::default()).await;
    assert!(matches!(current, Err(MfaLoginError::InvalidCode)));
    // Two steps away is outside the window.
    let far = code(&ada.secret, now + Duration::seconds(90));
    let far = world.service.login_second_step(&token.token, &far, ClientInfo::default()).await;
    assert!(matches!(far, Err(MfaLoginError::InvalidCode)));
}

#[tokio::test]
async fn the_token_dies_after_five_wrong_codes_and_after_five_minutes() {
    let world = world_with_backoff(100, Duration::seconds(1));
    let ada = enrolled(&world, "ada@example.com").await;
    let token = mfa_token(&world, "ada@example.com").await;
    for _ in 0..5 {
        let wrong = world.service.login_second_step(&token.token, "000000", ClientInfo::default()).await;
        assert!(matches!(wrong, Err(MfaLoginError::InvalidCode)), "{wrong:?}");
    }
    let right = code(&ada.secret, world.clock().now());
    let dead = world.service.login_second_step(&token.token, &right, ClientInfo::default()).await;
    assert!(matches!(dead, Err(MfaLoginError::InvalidToken)), "a sixth try, even right, finds the token dead");

    let token = mfa_token(&world, "ada@example.com").await;
    world.clock().advance(Duration::minutes(5));
    let right = code(&ada.secret, world.clock().now());
    let late = world.service.login_second_step(&token.token, &right, ClientInfo::default()).await;
    assert!(matches!(late, Err(MfaLoginError::InvalidToken)), "{late:?}");
    let garbage = world.service.login_second_step("not a token", &right, ClientInfo::default()).await;
    assert!(matches!(garbage, Err(MfaLoginError::InvalidToken)));
}

#[tokio::test]
async fn codes_count_on_the_password_backoff_and_a_right_password_does_not_clear_it() {
    let world = world_with_backoff(3, Duration::minutes(1));
    enrolled(&world, "ada@example.com").await;
    // Two wrong codes on one token, one on another: three failures, the threshold.
    let token = mfa_token(&world, "ada@example.com").await;
    for _ in 0..2 {
        world.service.login_second_step(&token.token, "000000", ClientInfo::default()).await.unwrap_err();
    }
    let token = mfa_token(&world, "ada@example.com").await;
    assert_eq!(world.failures("ada@example.com").await.unwrap().failures, 2, "the right password cleared nothing");
    world.service.login_second_step(&token.token, "000000", ClientInfo::default()).await.unwrap_err();
    // Blocked now: both the password and the code step answer 429.
    let blocked = world.login("ada@example.com", PASSWORD).await;
    assert!(matches!(blocked, Err(LoginError::RateLimited { .. })), "{blocked:?}");
    let blocked = world.service.login_second_step(&token.token, "000000", ClientInfo::default()).await;
    assert!(matches!(blocked, Err(MfaLoginError::RateLimited { .. })), "{blocked:?}");
}

#[tokio::test]
async fn a_right_code_clears_the_failures() {
    let world = world_with_backoff(5, Duration::minutes(1));
    let ada = enrolled(&world, "ada@example.com").await;
    let token = mfa_token(&world, "ada@example.com").await;
    world.service.login_second_step(&token.token, "000000", ClientInfo::default()).await.unwrap_err();
    assert_eq!(world.failures("ada@example.com").await.unwrap().failures, 1);
    let right = code(&ada.secret, world.clock().now());
    world.service.login_second_step(&token.token, &right, ClientInfo::default()).await.unwrap();
    assert!(world.failures("ada@example.com").await.is_none_or(|count| count.failures == 0));
}

#[tokio::test]
async fn a_recovery_code_works_once_and_mails_the_owner() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let recovery = ada.codes[3].display();
    let token = mfa_token(&world, "ada@example.com").await;
    world.service.login_second_step(&token.token, &recovery.to_uppercase(), ClientInfo::default()).await.unwrap();
    let mail = world.last_mail_to("ada@example.com");
    assert_eq!(mail.mail.subject, "A recovery code was used to log in");
    assert!(mail.mail.text.contains("You have 9 left"), "{}", mail.mail.text);
    assert!(!mail.mail.text.contains(&recovery), "the mail never shows the code");
    let token = mfa_token(&world, "ada@example.com").await;
    let again = world.service.login_second_step(&token.token, &recovery, ClientInfo::default()).await;
    assert!(matches!(again, Err(MfaLoginError::InvalidCode)), "{again:?}");
    assert_eq!(world.ports.second_factors().recovery_codes_left(ada.principal.user.id).await.unwrap(), 9);
}

#[tokio::test]
async fn new_recovery_codes_replace_the_old_ones() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let now = world.clock().now();
    let wrong =
        world.service.regenerate_recovery_codes(&ada.principal, "wrong password here", &code(&ada.secret, now)).await;
    assert!(matches!(wrong, Err(MfaError::InvalidCurrentPassword)));
    let fresh =
        world.service.regenerate_recovery_codes(&ada.principal, PASSWORD, &code(&ada.secret, now)).await.unwrap();
    assert_eq!(fresh.len(), 10);
    let token = mfa_token(&world, "ada@example.com").await;
    let old = world.service.login_second_step(&token.token, &ada.codes[0].display(), ClientInfo::default()).await;
    assert!(matches!(old, Err(MfaLoginError::InvalidCode)));
    world.service.login_second_step(&token.token, &fresh[0].display(), ClientInfo::default()).await.unwrap();
}

#[tokio::test]
async fn turning_it_off_needs_password_and_code_and_mails_the_owner() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let pending = mfa_token(&world, "ada@example.com").await;
    let now = world.clock().now();
    let no_code = world.service.disable_totp(&ada.principal, PASSWORD, "000000").await;
    assert!(matches!(no_code, Err(MfaError::InvalidCode)));
    world.service.disable_totp(&ada.principal, PASSWORD, &code(&ada.secret, now)).await.unwrap();
    assert!(!world.user("ada@example.com").await.mfa_enabled);
    assert_eq!(world.last_mail_to("ada@example.com").mail.subject, "Two-step login is off");
    assert!(world.login("ada@example.com", PASSWORD).await.is_ok(), "the password alone logs in again");
    let stale = world.service.login_second_step(&pending.token, "000000", ClientInfo::default()).await;
    assert!(matches!(stale, Err(MfaLoginError::InvalidToken)), "pending second steps died with it");
    let principal = world.principal("ada@example.com").await;
    let again = world.service.disable_totp(&principal, PASSWORD, "000000").await;
    assert!(matches!(again, Err(MfaError::NotEnabled)));
}

#[tokio::test]
async fn a_password_reset_leaves_the_second_factor_on() {
    let world = world();
    enrolled(&world, "ada@example.com").await;
    world.service.forgot_password(support::email("ada@example.com")).await.unwrap();
    world.service.handle_account_requests(10).await.unwrap();
    let token = support::token_in(&world.last_mail_to("ada@example.com"));
    world.service.reset_password(&token, "another long passphrase 42", ClientInfo::default()).await.unwrap();
    let result = world.login("ada@example.com", "another long passphrase 42").await;
    assert!(matches!(result, Err(LoginError::SecondFactorRequired(_))), "{result:?}");
}

#[tokio::test]
async fn administrators_reset_it_within_the_permission_matrix() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let manager = world.staff(&root, "max@example.com", Role::Manager).await;
    let ada = enrolled(&world, "ada@example.com").await;
    let id = ada.principal.user.id;
    assert!(matches!(world.service.reset_second_factor(&ada.principal, id).await, Err(ResetMfaError::Forbidden)));
    assert!(matches!(world.service.reset_second_factor(&root, root.user.id).await, Err(ResetMfaError::Forbidden)));
    world.service.reset_second_factor(&manager, id).await.unwrap();
    assert!(!world.user("ada@example.com").await.mfa_enabled);
    assert_eq!(world.last_mail_to("ada@example.com").mail.subject, "An administrator turned off your two-step login");
    assert!(matches!(world.service.reset_second_factor(&root, id).await, Err(ResetMfaError::NotEnabled)));
    let admin_id = world.staff(&root, "second@example.com", Role::Admin).await.user.id;
    assert!(matches!(world.service.reset_second_factor(&manager, admin_id).await, Err(ResetMfaError::NotFound)));
}

#[tokio::test]
async fn a_locked_account_cannot_finish_its_login() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let ada = enrolled(&world, "ada@example.com").await;
    let token = mfa_token(&world, "ada@example.com").await;
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    world.service.update_user(&root, ada.principal.user.id, lock).await.unwrap();
    let right = code(&ada.secret, world.clock().now());
    let locked = world.service.login_second_step(&token.token, &right, ClientInfo::default()).await;
    assert!(matches!(locked, Err(MfaLoginError::AccountLocked)), "{locked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logins_racing_with_one_code_give_exactly_one_session() {
    // The seven losers count as failures: a threshold above them keeps the backoff out of this test.
    let world = world_with_backoff(100, Duration::seconds(1));
    let ada = enrolled(&world, "ada@example.com").await;
    let right = code(&ada.secret, world.clock().now());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let token = mfa_token(&world, "ada@example.com").await;
        let (world, right) = (world.clone(), right.clone());
        tasks.push(tokio::spawn(async move {
            world.service.login_second_step(&token.token, &right, ClientInfo::default()).await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(MfaLoginError::InvalidCode) => {}
            Err(other) => panic!("a losing login is a replayed code, not {other:?}"),
        }
    }
    assert_eq!(wins, 1, "exactly one of eight logins with the same code succeeds");
}

#[tokio::test]
async fn secrets_and_codes_never_show_in_debug_output() {
    let world = world();
    let ada = enrolled(&world, "ada@example.com").await;
    let token = mfa_token(&world, "ada@example.com").await;
    let error = LoginError::SecondFactorRequired(token.clone());
    assert!(!format!("{error:?}").contains(&token.token));
    assert!(!format!("{:?}", ada.codes).contains(&ada.codes[0].display()));
    let setup = world.service.setup_totp(&ada.principal, PASSWORD).await;
    assert!(matches!(setup, Err(MfaError::AlreadyEnabled)));
    let record = world.ports.second_factors().find_totp(ada.principal.user.id).await.unwrap().unwrap();
    assert!(!format!("{record:?}").contains(&ada.secret));
}
