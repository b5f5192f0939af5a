//! Login, authenticating a request, refresh and the login backoff, driven through `Service` over the in-memory
//! adapters (the properties the mock-based unit tests of `service.rs` and `throttle.rs` used to prove).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use sha2::{Digest as _, Sha256};
use time::Duration;
use users_domain::accounts::{DeleteMeError, MeUpdate};
use users_domain::admin::{AdminChanges, AdminCreate};
use users_domain::ports::{Clock as _, PortError, Ports as _, ProfileChanges, TokenCodec as _};
use users_domain::sessions::{AuthError, ClientInfo, LoginError, RefreshError};
use users_domain::{AccessClaims, Nickname, Role, ServiceConfig, SessionId};
use uuid::Uuid;

use support::{PASSWORD, World, registration, world, world_with, world_with_backoff};

/// The backoff key of an input that is not an email address, as the service derives it.
fn unparsed_key(raw: &str) -> String {
    format!("unparsed:{}", hex::encode(Sha256::digest(raw.trim().to_lowercase().as_bytes())))
}

/// Sets the clock to a whole second, so times read back from a token (whole seconds) compare equal.
fn whole_second(world: &World) -> time::OffsetDateTime {
    let now = world.clock().now().replace_nanosecond(0).unwrap();
    world.clock().set(now);
    now
}

/// `bob` registered, never verified; `carol` verified and then locked by `root`.
async fn unverified_and_locked(world: &World) {
    let root = world.admin("root@example.com").await;
    world.registered("bob@example.com").await;
    let carol = world.verified("carol@example.com").await;
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    world.service.update_user(&root, carol.id, lock).await.unwrap();
}

#[tokio::test]
async fn an_unknown_address_still_costs_a_password_check_and_is_invalid_credentials() {
    let world = world();
    world.verified("ada@example.com").await;
    let before = world.hasher.verifies();
    let result = world.login("nobody@example.com", PASSWORD).await;
    assert!(matches!(result, Err(LoginError::InvalidCredentials)), "{result:?}");
    assert_eq!(world.hasher.verifies(), before + 1);
    assert_eq!(world.hasher.dummy_verifies(), 1, "checked against the dummy hash");
    // And it counts as a failure of that address, as a wrong password of a real one would.
    assert_eq!(world.failures("nobody@example.com").await.unwrap().failures, 1);
}

#[tokio::test]
async fn a_malformed_address_still_costs_a_password_check_and_is_invalid_credentials() {
    let world = world();
    let result = world.login("not an email", PASSWORD).await;
    assert!(matches!(result, Err(LoginError::InvalidCredentials)), "{result:?}");
    assert_eq!((world.hasher.verifies(), world.hasher.dummy_verifies()), (1, 1));
    assert_eq!(world.failures(&unparsed_key("not an email")).await.unwrap().failures, 1);
}

#[tokio::test]
async fn spellings_of_one_malformed_address_share_one_bounded_backoff_key() {
    let world = world_with_backoff(2, Duration::seconds(30));
    for _ in 0..2 {
        assert!(matches!(world.login(" NUL\u{0}byte ", PASSWORD).await, Err(LoginError::InvalidCredentials)));
    }
    // Another spelling of the same input meets the same block.
    assert!(matches!(world.login("nul\u{0}BYTE", PASSWORD).await, Err(LoginError::RateLimited { .. })));
    assert_eq!(world.failures(&unparsed_key("nul\u{0}byte")).await.unwrap().failures, 2);
    // However long the input, the stored key is its fixed-length hash.
    let long = "x".repeat(10_000);
    assert!(matches!(world.login(&long, PASSWORD).await, Err(LoginError::InvalidCredentials)));
    let key = unparsed_key(&long);
    assert_eq!(key.len(), "unparsed:".len() + 64);
    assert_eq!(world.failures(&key).await.unwrap().failures, 1);
}

#[tokio::test]
async fn a_wrong_password_is_invalid_credentials_even_for_locked_or_unverified_users() {
    let world = world();
    world.verified("ada@example.com").await;
    unverified_and_locked(&world).await;
    for address in ["ada@example.com", "bob@example.com", "carol@example.com"] {
        let result = world.login(address, "wrong-password-entirely").await;
        assert!(matches!(result, Err(LoginError::InvalidCredentials)), "{address}: {result:?}");
    }
    assert_eq!(world.hasher.dummy_verifies(), 0, "every one was checked against the account's own hash");
    assert_eq!(world.store().session_count(), 1, "only root's");
}

#[tokio::test]
async fn the_right_password_reveals_a_lock_before_a_missing_verification() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let create = AdminCreate { registration: registration("ada@example.com"), role: None, email_verified: false };
    let ada = world.service.create_user(&root, create).await.unwrap();
    assert_eq!((ada.role, ada.email_verified), (Role::Anonymous, false));
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    world.service.update_user(&root, ada.id, lock).await.unwrap();
    let sessions = world.store().session_count();

    assert!(matches!(world.login("ada@example.com", PASSWORD).await, Err(LoginError::AccountLocked)));
    let unlock = AdminChanges { is_locked: Some(false), ..AdminChanges::default() };
    world.service.update_user(&root, ada.id, unlock).await.unwrap();
    assert!(matches!(world.login("ada@example.com", PASSWORD).await, Err(LoginError::EmailNotVerified)));
    assert_eq!(world.store().session_count(), sessions, "no session for either");
}

#[tokio::test]
async fn a_successful_login_starts_a_session_whose_access_token_names_it() {
    let world = world();
    let ada = world.verified("ada@example.com").await;
    let now = whole_second(&world);
    let client = ClientInfo { user_agent: Some("x".repeat(1000)), ip: Some("127.0.0.1".to_owned()) };
    let pair = world.service.login("ADA@EXAMPLE.COM", PASSWORD, client).await.unwrap();
    assert_eq!(pair.expires_in, 900);
    assert_eq!(pair.refresh_token.expose().len(), 43);
    assert_eq!(world.store().session_count(), 1);

    let claims = world.ports.tokens().verify(pair.access_token.expose(), now).unwrap();
    assert_eq!(claims.user_id, ada.id);
    assert_eq!((claims.issued_at, claims.expires_at), (now, now + Duration::minutes(15)));
    let principal = world.service.authenticate(pair.access_token.expose()).await.unwrap();
    assert_eq!(principal.session_id, claims.session_id);
    let listed = world.service.sessions(&principal).await.unwrap();
    assert_eq!(listed.len(), 1);
    let session = &listed[0];
    assert!(session.current);
    assert_eq!(session.session.id, claims.session_id);
    assert_eq!(session.session.expires_at, now + Duration::days(30));
    assert_eq!(session.session.user_agent.as_ref().map(String::len), Some(256), "the user agent is cut to 256");
    assert_eq!(session.session.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(world.user("ada@example.com").await.last_login_at, Some(now));
}

#[tokio::test]
async fn a_refresh_rotates_the_token_within_its_session_and_an_unknown_token_is_invalid() {
    let world = world();
    world.verified("ada@example.com").await;
    let first = world.login("ada@example.com", PASSWORD).await.unwrap();
    let session = world.service.authenticate(first.access_token.expose()).await.unwrap().session_id;
    let second = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(world.service.authenticate(second.access_token.expose()).await.unwrap().session_id, session);
    assert_eq!(world.store().session_count(), 1, "no new session");
    assert!(matches!(
        world.service.refresh("no-such-token", ClientInfo::default()).await,
        Err(RefreshError::InvalidToken)
    ));
}

#[tokio::test]
async fn a_blocked_address_is_rate_limited_before_any_password_check() {
    let world = world_with_backoff(2, Duration::seconds(8));
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let now = world.clock().now();
    for _ in 0..2 {
        assert!(world.login("ada@example.com", "wrong-password-entirely").await.is_err());
    }
    let blocked = world.failures("ada@example.com").await.unwrap();
    assert_eq!((blocked.failures, blocked.blocked_until), (2, Some(now + Duration::seconds(8))));
    let checks = world.hasher.verifies();
    let sessions = world.store().session_count();

    // Even the right password, in another spelling of the address, is not checked.
    let result = world.login("Ada@Example.com", PASSWORD).await;
    assert!(
        matches!(result, Err(LoginError::RateLimited { retry_after }) if retry_after == Duration::seconds(8)),
        "{result:?}"
    );
    world.clock().advance(Duration::seconds(3));
    let result = world.login("ada@example.com", PASSWORD).await;
    assert!(matches!(result, Err(LoginError::RateLimited { retry_after }) if retry_after == Duration::seconds(5)));
    // Routes that ask for the current password share the block.
    assert!(matches!(world.service.delete_me(&ada, PASSWORD).await, Err(DeleteMeError::RateLimited { .. })));
    assert_eq!(world.hasher.verifies(), checks, "no password was checked while blocked");
    assert_eq!(world.failures("ada@example.com").await, Some(blocked), "refusals are not failures");
    assert_eq!(world.store().session_count(), sessions);
    assert!(world.find("ada@example.com").await.is_some());
}

#[tokio::test]
async fn a_block_that_has_ended_lets_the_next_attempt_be_checked() {
    let world = world_with_backoff(2, Duration::seconds(8));
    world.verified("ada@example.com").await;
    for _ in 0..2 {
        assert!(world.login("ada@example.com", "wrong-password-entirely").await.is_err());
    }
    world.clock().advance(Duration::seconds(8));
    let checks = world.hasher.verifies();
    let result = world.login("ada@example.com", "wrong-password-entirely").await;
    assert!(matches!(result, Err(LoginError::InvalidCredentials)), "{result:?}");
    assert_eq!(world.hasher.verifies(), checks + 1);
    // The failure counted, and the next block is twice as long.
    let count = world.failures("ada@example.com").await.unwrap();
    assert_eq!((count.failures, count.blocked_until), (3, Some(world.clock().now() + Duration::seconds(16))));
    world.clock().advance(Duration::seconds(16));
    assert!(world.login("ada@example.com", PASSWORD).await.is_ok());
    assert_eq!(world.failures("ada@example.com").await, None);
}

#[tokio::test]
async fn only_wrong_passwords_count_for_known_and_unknown_addresses_alike_and_a_right_one_clears_them() {
    let world = world();
    world.verified("ada@example.com").await;
    unverified_and_locked(&world).await;
    for address in ["ada@example.com", "nobody@example.com"] {
        assert!(world.login(address, "wrong-password-entirely").await.is_err());
        let count = world.failures(address).await.unwrap();
        assert_eq!((count.failures, count.blocked_until), (1, None), "{address}");
    }
    assert!(world.login("ada@example.com", PASSWORD).await.is_ok());
    assert_eq!(world.failures("ada@example.com").await, None);

    // A right password for a locked or an unverified account proves the password: it clears the failures and is
    // not one itself.
    for (address, locked) in [("carol@example.com", true), ("bob@example.com", false)] {
        for _ in 0..2 {
            assert!(world.login(address, "wrong-password-entirely").await.is_err());
        }
        assert_eq!(world.failures(address).await.unwrap().failures, 2);
        let result = world.login(address, PASSWORD).await;
        if locked {
            assert!(matches!(result, Err(LoginError::AccountLocked)), "{result:?}");
        } else {
            assert!(matches!(result, Err(LoginError::EmailNotVerified)), "{result:?}");
        }
        assert_eq!(world.failures(address).await, None, "{address}");
    }
}

#[tokio::test]
async fn a_storage_outage_during_login_is_unavailable_and_checks_no_password() {
    let world = world();
    world.verified("ada@example.com").await;
    let checks = world.hasher.verifies();
    world.store().set_unavailable(true);
    for address in ["ada@example.com", "not an email"] {
        let result = world.login(address, PASSWORD).await;
        assert!(matches!(result, Err(LoginError::Port(PortError::Unavailable(_)))), "{address}: {result:?}");
    }
    assert_eq!(world.hasher.verifies(), checks);
}

#[tokio::test]
async fn a_valid_token_authenticates_the_user_as_stored_now() {
    let world = world();
    world.verified("ada@example.com").await;
    let pair = world.login("ada@example.com", PASSWORD).await.unwrap();
    let ada = world.service.authenticate(pair.access_token.expose()).await.unwrap();
    let renamed = ProfileChanges { nickname: Some(Nickname::parse("ada_lovelace").unwrap()), ..Default::default() };
    world.service.update_me(&ada, MeUpdate { profile: renamed, ..MeUpdate::default() }).await.unwrap();
    let again = world.service.authenticate(pair.access_token.expose()).await.unwrap();
    assert_eq!(again.user, world.user("ada@example.com").await);
    assert_eq!(again.user.nickname.as_str(), "ada_lovelace");
    assert_eq!(again.session_id, ada.session_id);
}

#[tokio::test]
async fn revoked_expired_foreign_or_missing_sessions_are_invalid_tokens() {
    // Access tokens outlive sessions here, so a refusal can only come from the session.
    let config = ServiceConfig {
        access_token_ttl: Duration::days(60),
        refresh_token_ttl: Duration::days(1),
        ..ServiceConfig::default()
    };
    let world = world_with(config);
    let ada = world.verified("ada@example.com").await;
    world.verified("bob@example.com").await;
    let invalid = |result: Result<_, AuthError>| matches!(result, Err(AuthError::InvalidToken));

    // Revoked: logged out; another session of the same user still works.
    let revoked = world.login("ada@example.com", PASSWORD).await.unwrap();
    let kept = world.login("ada@example.com", PASSWORD).await.unwrap();
    world.service.logout(revoked.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert!(invalid(world.service.authenticate(revoked.access_token.expose()).await));
    assert!(world.service.authenticate(kept.access_token.expose()).await.is_ok());

    // Foreign: a genuine signature over Ada's id and Bob's session.
    let bob = world.principal("bob@example.com").await;
    let now = world.clock().now();
    let claims = |session_id| AccessClaims {
        user_id: ada.id,
        session_id,
        issued_at: now,
        expires_at: now + Duration::minutes(15),
        token_id: Uuid::new_v4(),
    };
    let foreign = world.ports.tokens().issue(&claims(bob.session_id)).unwrap();
    assert!(invalid(world.service.authenticate(foreign.expose()).await));
    // Missing: a session that was never stored.
    let missing = world.ports.tokens().issue(&claims(SessionId::generate())).unwrap();
    assert!(invalid(world.service.authenticate(missing.expose()).await));

    // Expired: the session's absolute end has passed, while the token itself is still within its lifetime.
    world.clock().advance(Duration::days(1));
    assert!(world.ports.tokens().verify(kept.access_token.expose(), world.clock().now()).is_ok());
    assert!(invalid(world.service.authenticate(kept.access_token.expose()).await));
}

#[tokio::test]
async fn a_malformed_token_is_refused_without_reaching_storage() {
    let world = world();
    world.verified("ada@example.com").await;
    let pair = world.login("ada@example.com", PASSWORD).await.unwrap();
    world.store().set_unavailable(true);
    // A token that gets as far as storage meets the outage; a malformed one does not get that far.
    assert!(matches!(world.service.authenticate(pair.access_token.expose()).await, Err(AuthError::Port(_))));
    assert!(matches!(world.service.authenticate("not-a-token").await, Err(AuthError::InvalidToken)));
}

#[tokio::test]
async fn a_locked_user_is_refused_with_their_old_token() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let second = world.admin("second@example.com").await;
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let tokens = [
        world.login("second@example.com", PASSWORD).await.unwrap(),
        world.login("ada@example.com", PASSWORD).await.unwrap(),
    ];
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    for id in [second.user.id, ada.user.id] {
        world.service.update_user(&root, id, lock.clone()).await.unwrap();
    }
    for pair in &tokens {
        let result = world.service.authenticate(pair.access_token.expose()).await;
        assert!(matches!(result, Err(AuthError::AccountLocked)), "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_burst_of_wrong_passwords_gets_only_the_threshold_checked_before_the_block() {
    let world = world_with_backoff(3, Duration::minutes(1));
    world.verified("ada@example.com").await;
    let checks = world.hasher.verifies();
    let attempts: Vec<_> = (0..12)
        .map(|_| {
            let world = world.clone();
            tokio::spawn(async move { world.login("ada@example.com", "wrong-password-entirely").await })
        })
        .collect();
    let (mut wrong, mut limited) = (0, 0);
    for attempt in attempts {
        match attempt.await.unwrap() {
            Err(LoginError::InvalidCredentials) => wrong += 1,
            Err(LoginError::RateLimited { .. }) => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((wrong, limited), (3, 9));
    assert_eq!(world.hasher.verifies() - checks, 3, "only the threshold's worth of passwords was checked");
    let count = world.failures("ada@example.com").await.unwrap();
    assert_eq!(count.failures, 3);
    assert!(count.blocked_until.is_some());
    assert!(matches!(world.login("ada@example.com", PASSWORD).await, Err(LoginError::RateLimited { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_burst_of_right_passwords_never_meets_a_block() {
    let world = world_with_backoff(3, Duration::minutes(1));
    world.verified("ada@example.com").await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let world = world.clone();
            tokio::spawn(async move { world.login("ada@example.com", PASSWORD).await })
        })
        .collect();
    for attempt in attempts {
        let result = attempt.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(world.failures("ada@example.com").await, None);
}

#[tokio::test]
async fn a_browser_token_is_renewed_past_half_its_life_for_the_same_session_and_not_before() {
    let world = world();
    world.verified("ada@example.com").await;
    let start = whole_second(&world);
    let pair = world.login("ada@example.com", PASSWORD).await.unwrap();
    let ttl = world.service.config().access_token_ttl;

    // Fresh: no new token.
    let (principal, renewed) = world.service.authenticate_renewing(pair.access_token.expose()).await.unwrap();
    assert!(renewed.is_none());

    // Past half its life: a new token for the same session and user, valid for a whole lifetime from now.
    world.clock().set(start + ttl / 2 + Duration::seconds(1));
    let (again, renewed) = world.service.authenticate_renewing(pair.access_token.expose()).await.unwrap();
    assert_eq!(again.session_id, principal.session_id);
    let renewed = renewed.expect("a token past half its life is renewed");
    let claims: AccessClaims = world.ports.tokens().verify(renewed.expose(), world.clock().now()).unwrap();
    assert_eq!(claims.session_id, principal.session_id);
    assert_eq!(claims.user_id, principal.user.id);
    assert_eq!(claims.expires_at, start + ttl / 2 + Duration::seconds(1) + ttl);

    // The old token still ends at its own time; the renewed one outlives it.
    world.clock().set(start + ttl + Duration::seconds(1));
    assert!(matches!(
        world.service.authenticate_renewing(pair.access_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(world.service.authenticate_renewing(renewed.expose()).await.is_ok());

    // Revoking the session ends every token of it, renewed or not.
    world.service.logout_all(&again).await.unwrap();
    assert!(matches!(world.service.authenticate_renewing(renewed.expose()).await, Err(AuthError::InvalidToken)));
}
