//! The domain's rules, driven through `Service` over the in-memory adapters: the rules that used to live in SQL
//! (promotion on verification, the last ADMIN, refresh reuse and family revocation, cancelling an email change,
//! deleting a user with their pictures) are now the domain's, and these tests see them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use support::{NEW_PASSWORD, PASSWORD, PICTURE, email, registration, token_in, world, world_with};
use time::Duration;
use users_domain::accounts::{ChangePasswordError, DeleteMeError, EmailConfirmation, MeUpdate, VerifyEmailError};
use users_domain::admin::{AdminChanges, AdminCreate, DeleteUserError, UpdateUserError};
use users_domain::ports::{PictureSize, PortError};
use users_domain::sessions::ClientInfo;
use users_domain::sessions::{LoginError, Principal, RefreshError};
use users_domain::{Role, ServiceConfig};

#[tokio::test]
async fn verifying_promotes_anonymous_to_authenticated_and_never_lowers_a_role() {
    let world = world();
    world.service.register(registration("ada@example.com"), ClientInfo::default()).await.unwrap();
    let ada = world.user("ada@example.com").await;
    assert_eq!((ada.role, ada.email_verified), (Role::Anonymous, false));
    let mail = world.last_mail_to("ada@example.com");
    let confirmed = world.service.verify_email(ada.id, &token_in(&mail), ClientInfo::default()).await.unwrap();
    let EmailConfirmation::Verified(verified) = confirmed else { panic!("{confirmed:?}") };
    assert_eq!((verified.role, verified.email_verified), (Role::Authenticated, true));
    assert!(matches!(
        world.service.verify_email(ada.id, &token_in(&mail), ClientInfo::default()).await,
        Err(VerifyEmailError::InvalidToken)
    ));

    // A MANAGER created unverified stays a MANAGER when the address is proven.
    let admin = world.admin("root@example.com").await;
    let create =
        AdminCreate { registration: registration("mia@example.com"), role: Some(Role::Manager), email_verified: false };
    let mia = world.service.create_user(&admin, create).await.unwrap();
    let link = token_in(&world.last_mail_to("mia@example.com"));
    world.service.verify_email(mia.id, &link, ClientInfo::default()).await.unwrap();
    let mia = world.user("mia@example.com").await;
    assert_eq!((mia.role, mia.email_verified), (Role::Manager, true));
}

#[tokio::test]
async fn an_administrator_vouching_for_an_address_promotes_anonymous_unless_a_role_is_set() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    world.service.register(registration("ada@example.com"), ClientInfo::default()).await.unwrap();
    world.service.register(registration("bob@example.com"), ClientInfo::default()).await.unwrap();
    let ada = world.user("ada@example.com").await;
    let bob = world.user("bob@example.com").await;
    let vouch = AdminChanges { email_verified: Some(true), ..AdminChanges::default() };
    assert_eq!(world.service.update_user(&admin, ada.id, vouch.clone()).await.unwrap().role, Role::Authenticated);
    let with_role = AdminChanges { role: Some(Role::Manager), ..vouch };
    assert_eq!(world.service.update_user(&admin, bob.id, with_role).await.unwrap().role, Role::Manager);
}

#[tokio::test]
async fn the_last_unlocked_admin_can_neither_leave_nor_be_demoted_but_a_second_one_can() {
    let world = world();
    let first = world.admin("first@example.com").await;
    let demote = AdminChanges { role: Some(Role::Authenticated), ..AdminChanges::default() };
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    assert!(matches!(
        world.service.update_user(&first, first.user.id, demote.clone()).await,
        Err(UpdateUserError::LastAdmin)
    ));
    assert!(matches!(
        world.service.update_user(&first, first.user.id, lock.clone()).await,
        Err(UpdateUserError::LastAdmin)
    ));
    assert!(matches!(world.service.delete_user(&first, first.user.id).await, Err(DeleteUserError::LastAdmin)));
    assert!(matches!(world.service.delete_me(&first, PASSWORD).await, Err(DeleteMeError::LastAdmin)));

    let second = world.admin("second@example.com").await;
    // With two, one may demote the other; then the one left is the last again.
    assert_eq!(
        world.service.update_user(&first, second.user.id, demote.clone()).await.unwrap().role,
        Role::Authenticated
    );
    assert!(matches!(world.service.delete_me(&first, PASSWORD).await, Err(DeleteMeError::LastAdmin)));
    let third = world.admin("third@example.com").await;
    // A locked ADMIN does not count as the one that remains.
    world.service.update_user(&first, third.user.id, lock).await.unwrap();
    assert!(matches!(world.service.delete_me(&first, PASSWORD).await, Err(DeleteMeError::LastAdmin)));
    assert_eq!(world.user("first@example.com").await.role, Role::Admin);
}

#[tokio::test]
async fn a_reused_refresh_token_ends_its_whole_session() {
    let world = world();
    world.verified("ada@example.com").await;
    let first = world.login("ada@example.com", PASSWORD).await.unwrap();
    let second = world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await.unwrap();
    assert!(world.service.authenticate(second.access_token.expose()).await.is_ok());
    // The first token again: a theft. It fails, and so does everything of its session.
    assert!(matches!(
        world.service.refresh(first.refresh_token.expose(), ClientInfo::default()).await,
        Err(RefreshError::InvalidToken)
    ));
    assert!(matches!(
        world.service.refresh(second.refresh_token.expose(), ClientInfo::default()).await,
        Err(RefreshError::InvalidToken)
    ));
    assert!(world.service.authenticate(second.access_token.expose()).await.is_err());
    // Another session of the same user is untouched.
    let other = world.login("ada@example.com", PASSWORD).await.unwrap();
    assert!(world.service.refresh(other.refresh_token.expose(), ClientInfo::default()).await.is_ok());
}

#[tokio::test]
async fn a_lock_refuses_refresh_without_ending_the_session_and_idle_sessions_expire() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    let ada = world.verified("ada@example.com").await;
    let pair = world.login("ada@example.com", PASSWORD).await.unwrap();
    let lock = AdminChanges { is_locked: Some(true), ..AdminChanges::default() };
    world.service.update_user(&admin, ada.id, lock).await.unwrap();
    assert!(matches!(
        world.service.refresh(pair.refresh_token.expose(), ClientInfo::default()).await,
        Err(RefreshError::AccountLocked)
    ));
    let unlock = AdminChanges { is_locked: Some(false), ..AdminChanges::default() };
    world.service.update_user(&admin, ada.id, unlock).await.unwrap();
    let pair = world.service.refresh(pair.refresh_token.expose(), ClientInfo::default()).await.unwrap();

    world.ports.manual_clock().advance(world.service.config().refresh_token_idle_ttl);
    assert!(matches!(
        world.service.refresh(pair.refresh_token.expose(), ClientInfo::default()).await,
        Err(RefreshError::InvalidToken)
    ));
}

#[tokio::test]
async fn a_password_change_cancels_a_pending_email_change_and_its_link() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    let update = MeUpdate {
        email: Some(email("new@example.com")),
        current_password: Some(PASSWORD.to_owned()),
        ..MeUpdate::default()
    };
    let pending = world.service.update_me(&ada, update).await.unwrap();
    assert_eq!(pending.pending_email, Some(email("new@example.com")));
    let link = token_in(&world.last_mail_to("new@example.com"));

    world.service.change_password(&ada, PASSWORD, NEW_PASSWORD).await.unwrap();
    let after = world.user("ada@example.com").await;
    assert_eq!(after.pending_email, None);
    assert!(matches!(
        world.service.verify_email(after.id, &link, ClientInfo::default()).await,
        Err(VerifyEmailError::InvalidToken)
    ));
    assert_eq!(world.user("ada@example.com").await.email, email("ada@example.com"));
    // The old password no longer counts as the current one (the caller as stored now, as every request reads it).
    let ada = Principal { user: world.user("ada@example.com").await, ..ada };
    assert!(matches!(
        world.service.change_password(&ada, PASSWORD, NEW_PASSWORD).await,
        Err(ChangePasswordError::InvalidCurrentPassword)
    ));
}

#[tokio::test]
async fn a_confirmed_email_change_moves_the_login_and_kills_reset_links_to_the_old_address() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    world.service.forgot_password(email("ada@example.com")).await.unwrap();
    world.service.handle_account_requests(10).await.unwrap();
    let reset = token_in(&world.last_mail_to("ada@example.com"));
    let update = MeUpdate {
        email: Some(email("new@example.com")),
        current_password: Some(PASSWORD.to_owned()),
        ..MeUpdate::default()
    };
    world.service.update_me(&ada, update).await.unwrap();
    let link = token_in(&world.last_mail_to("new@example.com"));
    let changed = world.service.verify_email(ada.user.id, &link, ClientInfo::default()).await.unwrap();
    assert!(matches!(changed, EmailConfirmation::EmailChanged(ref user) if user.email == email("new@example.com")));
    assert!(world.service.reset_password(&reset, NEW_PASSWORD, ClientInfo::default()).await.is_err());
    assert!(world.login("new@example.com", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn a_reset_link_takes_an_unconfirmed_account_back_from_whoever_registered_it_first() {
    let world = world();
    world.service.register(registration("ada@example.com"), ClientInfo::default()).await.unwrap();
    let squatter_link = token_in(&world.last_mail_to("ada@example.com"));
    // The owner registers again: the first password dies and the owner gets a link to choose one.
    world.service.register(registration("ada@example.com"), ClientInfo::default()).await.unwrap();
    let ada = world.user("ada@example.com").await;
    assert!(matches!(
        world.service.verify_email(ada.id, &squatter_link, ClientInfo::default()).await,
        Err(VerifyEmailError::InvalidToken)
    ));
    assert!(matches!(world.login("ada@example.com", PASSWORD).await, Err(LoginError::InvalidCredentials)));
    let owner_link = token_in(&world.last_mail_to("ada@example.com"));
    world.service.reset_password(&owner_link, NEW_PASSWORD, ClientInfo::default()).await.unwrap();
    let ada = world.user("ada@example.com").await;
    assert_eq!((ada.role, ada.email_verified), (Role::Authenticated, true));
    assert!(world.login("ada@example.com", NEW_PASSWORD).await.is_ok());
}

#[tokio::test]
async fn deleting_a_user_deletes_their_pictures_too() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    for address in ["ada@example.com", "bob@example.com"] {
        world.verified(address).await;
        let principal = world.principal(address).await;
        let permit = world.service.authorize_upload(&principal, principal.user.id).await.unwrap();
        world.service.upload(permit, PICTURE.to_vec()).await.unwrap();
        let permit = world.service.authorize_upload(&principal, principal.user.id).await.unwrap();
        world.service.upload(permit, PICTURE.to_vec()).await.unwrap();
        assert!(world.service.serve(principal.user.id, PictureSize::Thumb).await.is_ok());
    }
    let ada = world.principal("ada@example.com").await;
    let bob = world.user("bob@example.com").await;
    let objects_of = |id: users_domain::UserId| {
        let prefix = format!("profile_pictures/{id}/");
        world.ports.object_store().keys().into_iter().filter(|key| key.starts_with(&prefix)).count()
    };
    assert_eq!(objects_of(ada.user.id), 6, "three sizes, active and archived");

    world.service.delete_me(&ada, PASSWORD).await.unwrap();
    assert_eq!(objects_of(ada.user.id), 0);
    world.service.delete_user(&admin, bob.id).await.unwrap();
    assert_eq!(objects_of(bob.id), 0);
    assert!(world.ports.object_store().keys().is_empty());
}

#[tokio::test]
async fn mails_promise_the_lifetimes_that_are_configured() {
    let config = ServiceConfig { verify_token_ttl: Duration::hours(48), ..ServiceConfig::default() };
    let world = world_with(config);
    world.service.register(registration("ada@example.com"), ClientInfo::default()).await.unwrap();
    assert!(world.last_mail_to("ada@example.com").mail.text.contains("for 2 days"));
    // The link really works for that long, and not longer.
    let ada = world.user("ada@example.com").await;
    let link = token_in(&world.last_mail_to("ada@example.com"));
    world.ports.manual_clock().advance(Duration::hours(48));
    assert!(matches!(
        world.service.verify_email(ada.id, &link, ClientInfo::default()).await,
        Err(VerifyEmailError::InvalidToken)
    ));
}

#[tokio::test]
async fn a_storage_outage_is_reported_as_unavailable_and_nothing_is_half_done() {
    let world = world();
    world.verified("ada@example.com").await;
    let mails_before = world.ports.store().outbox_mails().len();
    world.ports.store().set_unavailable(true);
    assert!(matches!(world.login("ada@example.com", PASSWORD).await, Err(LoginError::Port(PortError::Unavailable(_)))));
    assert!(world.service.register(registration("bob@example.com"), ClientInfo::default()).await.is_err());
    world.ports.store().set_unavailable(false);
    assert_eq!(world.ports.store().outbox_mails().len(), mails_before);
    assert!(world.login("ada@example.com", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn deleting_oneself_is_decided_on_the_role_as_stored_not_as_authenticated() {
    let world = world();
    let first = world.admin("first@example.com").await;
    world.verified("bob@example.com").await;
    // Bob's request authenticated while he was AUTHENTICATED...
    let bob = world.principal("bob@example.com").await;
    // ...then he is promoted, and the other ADMIN leaves.
    let promote = AdminChanges { role: Some(Role::Admin), ..AdminChanges::default() };
    world.service.update_user(&first, bob.user.id, promote).await.unwrap();
    world.service.delete_me(&first, PASSWORD).await.unwrap();
    assert!(matches!(world.service.delete_me(&bob, PASSWORD).await, Err(DeleteMeError::LastAdmin)));
    assert_eq!(world.user("bob@example.com").await.role, Role::Admin);
}

#[tokio::test]
async fn values_an_administrator_sends_unchanged_write_nothing() {
    let world = world();
    let admin = world.admin("root@example.com").await;
    let ada = world.verified("ada@example.com").await;
    world.ports.manual_clock().advance(Duration::minutes(1));
    let same = AdminChanges {
        role: Some(ada.role),
        is_locked: Some(false),
        is_professional: Some(false),
        ..AdminChanges::default()
    };
    let after = world.service.update_user(&admin, ada.id, same).await.unwrap();
    assert_eq!(after.updated_at, ada.updated_at, "nothing was written");
    assert!(world.ports.store().outbox_mails().iter().all(|queued| !queued.mail.subject.contains("locked")));
}

#[tokio::test]
async fn a_session_past_its_end_cannot_be_revoked_again_and_answers_not_found() {
    let world = world();
    world.verified("ada@example.com").await;
    let ada = world.principal("ada@example.com").await;
    world.ports.manual_clock().advance(world.service.config().refresh_token_ttl);
    let fresh = world.principal("ada@example.com").await;
    assert!(!world.service.revoke_session(&fresh, ada.session_id).await.unwrap());
    assert!(world.service.revoke_session(&fresh, fresh.session_id).await.unwrap());
}
