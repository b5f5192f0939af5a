//! The refresh-token reuse grace, over the in-memory adapters: a token presented again within the grace after its
//! exchange, while its successor is unused, is a retry whose answer got lost and gets a fresh pair for the same
//! session; anything else is the reuse it always was, and revokes the family.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use support::{PASSWORD, World, world_with};
use time::Duration;
use users_domain::ServiceConfig;
use users_domain::ports::{Clock as _, SessionStore as _};
use users_domain::session::{TokenHash, TokenPair};
use users_domain::sessions::ClientInfo;
use users_domain::sessions::RefreshError;

const GRACE: Duration = Duration::seconds(30);

fn world_with_grace(grace: Duration) -> World {
    world_with(ServiceConfig { refresh_reuse_grace: grace, ..ServiceConfig::default() })
}

/// A verified user logged in once, and the pair of that login.
async fn logged_in(world: &World) -> TokenPair {
    world.verified("ada@example.com").await;
    world.login("ada@example.com", PASSWORD).await.unwrap()
}

/// Whether the refresh token of `pair` is its family's unused current token, read from the store (presenting it
/// would change what it tests).
async fn is_live(world: &World, pair: &TokenPair) -> bool {
    let record = world.store().find_refresh_token(TokenHash::of(pair.refresh_token.expose())).await.unwrap();
    record.is_some_and(|record| !record.used && record.session.revoked_at.is_none())
}

async fn session_revoked(world: &World, pair: &TokenPair) -> bool {
    let record = world.store().find_refresh_token(TokenHash::of(pair.refresh_token.expose())).await.unwrap();
    record.unwrap().session.revoked_at.is_some()
}

fn invalid(result: Result<TokenPair, RefreshError>) -> bool {
    matches!(result, Err(RefreshError::InvalidToken))
}

#[tokio::test]
async fn a_retry_within_the_grace_gets_a_new_pair_and_the_replaced_child_dies() {
    let world = world_with_grace(GRACE);
    let first = logged_in(&world).await;
    let lost = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    let session_before = world.store().find_refresh_token(TokenHash::of(lost.refresh_token.expose())).await;
    let session_before = session_before.unwrap().unwrap().session;

    world.clock().advance(Duration::seconds(10));
    let retried = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert_ne!(retried.refresh_token.expose(), lost.refresh_token.expose());
    assert!(is_live(&world, &retried).await, "the retry's token is the family's current one");
    assert!(!is_live(&world, &lost).await, "the child the retry replaced stopped working");
    let principal = world.service.authenticate(retried.access_token.expose()).await.unwrap();
    let record = world.store().find_refresh_token(TokenHash::of(retried.refresh_token.expose())).await;
    let session_after = record.unwrap().unwrap().session;
    assert_eq!(principal.session_id, session_before.id, "the same session");
    assert_eq!(session_after, session_before, "its lifetimes (absolute end, last use) are unchanged");

    // The replaced child presented later is a reuse: the family ends, the retry's pair with it.
    assert!(invalid(world.service.refresh(lost.refresh_token.expose(), ClientInfo::default()).await));
    assert!(session_revoked(&world, &retried).await);
    assert!(invalid(world.service.refresh(retried.refresh_token.expose(), ClientInfo::default()).await));
    assert!(world.service.authenticate(retried.access_token.expose()).await.is_err());
}

#[tokio::test]
async fn retries_may_repeat_within_the_grace_and_the_last_child_keeps_working() {
    let world = world_with_grace(GRACE);
    let first = logged_in(&world).await;
    let lost = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    let again = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    let last = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert!(!is_live(&world, &lost).await && !is_live(&world, &again).await);
    assert!(is_live(&world, &last).await);
    let next = world.service.refresh(last.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert!(is_live(&world, &next).await, "the surviving child rotates as usual");
}

#[tokio::test]
async fn a_reuse_after_the_grace_revokes_the_family() {
    let world = world_with_grace(GRACE);
    let first = logged_in(&world).await;
    let child = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    world.clock().advance(GRACE);
    assert!(invalid(world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await));
    assert!(session_revoked(&world, &child).await);
    assert!(invalid(world.service.refresh(child.refresh_token.expose(), ClientInfo::default()).await));
}

#[tokio::test]
async fn once_the_child_was_used_presenting_its_parent_revokes_the_family() {
    let world = world_with_grace(GRACE);
    let first = logged_in(&world).await;
    let child = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    let grandchild = world.service.refresh(child.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    // Still within the grace of the first exchange, but the child's holder is alive: this is someone else.
    assert!(invalid(world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await));
    assert!(session_revoked(&world, &grandchild).await);
    assert!(invalid(world.service.refresh(grandchild.refresh_token.expose(), ClientInfo::default()).await));
    assert!(world.service.authenticate(grandchild.access_token.expose()).await.is_err());
}

#[tokio::test]
async fn a_retry_of_a_revoked_session_gets_nothing() {
    let world = world_with_grace(GRACE);
    let first = logged_in(&world).await;
    let child = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    world.service.logout(child.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert!(invalid(world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await));
    assert!(!is_live(&world, &child).await);
}

#[tokio::test]
async fn without_a_grace_every_reuse_revokes_the_family_at_once() {
    let world = world_with_grace(Duration::ZERO);
    let first = logged_in(&world).await;
    let child = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert!(invalid(world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await));
    assert!(session_revoked(&world, &child).await);
    assert!(invalid(world.service.refresh(child.refresh_token.expose(), ClientInfo::default()).await));
}

/// Two requests with one token race: the one that read the clock first can reach the store second, and then
/// finds the token exchanged "after" its own time. Without a grace that is a reuse all the same (CI caught the
/// loser of such a race getting a second pair).
#[tokio::test]
async fn without_a_grace_a_reuse_whose_clock_reads_before_the_exchange_still_revokes_the_family() {
    let world = world_with_grace(Duration::ZERO);
    let first = logged_in(&world).await;
    let child = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    let exchanged_at = world.clock().now();
    world.clock().set(exchanged_at - Duration::milliseconds(5));
    assert!(invalid(world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await));
    assert!(session_revoked(&world, &child).await);
}

#[tokio::test]
async fn two_concurrent_retries_leave_one_live_child() {
    let world = world_with_grace(GRACE);
    let first = logged_in(&world).await;
    let lost = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    let (a, b) = tokio::join!(
        world.service.refresh(first.refresh_token.expose(), ClientInfo::default()),
        world.service.refresh(first.refresh_token.expose(), ClientInfo::default()),
    );
    let mut live = 0;
    for pair in [Some(&lost), a.as_ref().ok(), b.as_ref().ok()].into_iter().flatten() {
        live += usize::from(is_live(&world, pair).await);
    }
    assert_eq!(live, 1, "exactly one child works: {a:?} / {b:?}");
}

#[tokio::test]
async fn two_concurrent_first_exchanges_leave_one_live_child_within_the_grace() {
    let world = world_with_grace(GRACE);
    let first = logged_in(&world).await;
    let (a, b) = tokio::join!(
        world.service.refresh(first.refresh_token.expose(), ClientInfo::default()),
        world.service.refresh(first.refresh_token.expose(), ClientInfo::default()),
    );
    let mut live = 0;
    for pair in [a.as_ref().ok(), b.as_ref().ok()].into_iter().flatten() {
        live += usize::from(is_live(&world, pair).await);
    }
    assert_eq!(live, 1, "exactly one child works: {a:?} / {b:?}");
}
