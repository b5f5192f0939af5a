//! User administration and the first administrator, driven through `Service` over the in-memory adapters (the
//! properties the mock-based unit tests of `admin_service.rs` and the `create_admin` tests of `service.rs` used to
//! prove).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use users_domain::admin::{
    AdminChanges, AdminCreate, CreateAdminError, CreateUserError, DeleteUserError, GetUserError, ListUsers,
    ListUsersError, UpdateUserError,
};
use users_domain::ports::{UserCursor, UserSort};
use users_domain::sessions::Principal;
use users_domain::{Role, UserId};

use support::{NEW_PASSWORD, PASSWORD, World, email, registration, world};

fn listing(limit: u32) -> ListUsers {
    ListUsers {
        limit,
        sort: UserSort::Email,
        after: None,
        prefix: None,
        role: None,
        email_verified: None,
        is_locked: None,
        is_professional: None,
    }
}

fn lock() -> AdminChanges {
    AdminChanges { is_locked: Some(true), ..AdminChanges::default() }
}

/// `root` (ADMIN) and `mia` (MANAGER, created by root).
async fn root_and_manager(world: &World) -> (Principal, Principal) {
    let root = world.admin("root@example.com").await;
    let mia = world.staff(&root, "mia@example.com", Role::Manager).await;
    (root, mia)
}

#[tokio::test]
async fn plain_users_are_refused_before_any_lookup() {
    let world = world();
    let root = world.admin("root@example.com").await;
    world.verified("ada@example.com").await;
    let bob = world.verified("bob@example.com").await;
    let ada = world.principal("ada@example.com").await;
    // With storage down, an answer that needed a lookup would be the outage instead.
    world.store().set_unavailable(true);
    assert!(matches!(world.service.get_user(&root, bob.id).await, Err(GetUserError::Port(_))), "the control");
    for id in [bob.id, UserId::generate()] {
        assert!(matches!(world.service.get_user(&ada, id).await, Err(GetUserError::Forbidden)));
        assert!(matches!(world.service.update_user(&ada, id, lock()).await, Err(UpdateUserError::Forbidden)));
        assert!(matches!(world.service.delete_user(&ada, id).await, Err(DeleteUserError::Forbidden)));
    }
    assert!(matches!(world.service.list_users(&ada, listing(10)).await, Err(ListUsersError::Forbidden)));
    let create = AdminCreate { registration: registration("new@example.com"), role: None, email_verified: true };
    assert!(matches!(world.service.create_user(&ada, create).await, Err(CreateUserError::Forbidden)));
    world.store().set_unavailable(false);
    assert!(!world.user("bob@example.com").await.is_locked);
}

#[tokio::test]
async fn a_manager_gets_the_same_not_found_for_an_admin_a_manager_and_an_unknown_id() {
    let world = world();
    let (root, mia) = root_and_manager(&world).await;
    let max = world.staff(&root, "max@example.com", Role::Manager).await;
    for id in [root.user.id, max.user.id, UserId::generate()] {
        let found = world.service.get_user(&mia, id).await;
        assert!(matches!(found, Err(GetUserError::NotFound)), "{found:?}");
        let updated = world.service.update_user(&mia, id, lock()).await;
        assert!(matches!(updated, Err(UpdateUserError::NotFound)), "{updated:?}");
        let deleted = world.service.delete_user(&mia, id).await;
        assert!(matches!(deleted, Err(DeleteUserError::NotFound)), "{deleted:?}");
    }
    for address in ["root@example.com", "max@example.com"] {
        assert!(!world.user(address).await.is_locked, "{address}");
    }
}

#[tokio::test]
async fn a_manager_may_not_promote_to_manager_or_create_an_admin() {
    let world = world();
    let (_, mia) = root_and_manager(&world).await;
    let ada = world.verified("ada@example.com").await;
    for role in [Role::Manager, Role::Admin] {
        let promote = AdminChanges { role: Some(role), ..AdminChanges::default() };
        let result = world.service.update_user(&mia, ada.id, promote).await;
        assert!(matches!(result, Err(UpdateUserError::Forbidden)), "{role}: {result:?}");
    }
    assert_eq!(world.user("ada@example.com").await.role, Role::Authenticated);

    let hashes = world.hasher.hashes();
    for role in [Role::Manager, Role::Admin] {
        let create =
            AdminCreate { registration: registration("new@example.com"), role: Some(role), email_verified: true };
        let result = world.service.create_user(&mia, create).await;
        assert!(matches!(result, Err(CreateUserError::Forbidden)), "{role}: {result:?}");
    }
    assert!(world.find("new@example.com").await.is_none());
    assert_eq!(world.hasher.hashes(), hashes, "refused before the password was hashed");
    // Within the manager's rights it works.
    let create = AdminCreate { registration: registration("new@example.com"), role: None, email_verified: true };
    assert_eq!(world.service.create_user(&mia, create).await.unwrap().role, Role::Authenticated);
}

#[tokio::test]
async fn locking_and_granting_professional_status_queue_their_mails() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let ada = world.verified("ada@example.com").await;
    let mails = world.mails().len();
    let changes = AdminChanges { is_locked: Some(true), is_professional: Some(true), ..AdminChanges::default() };
    let updated = world.service.update_user(&root, ada.id, changes.clone()).await.unwrap();
    assert!(updated.is_locked && updated.is_professional);

    let mut subjects: Vec<String> = world.mails()[mails..].iter().map(|queued| queued.mail.subject.clone()).collect();
    subjects.sort();
    assert_eq!(subjects, ["You now have professional status", "Your account has been locked"]);
    assert!(world.mails()[mails..].iter().all(|queued| queued.mail.to.as_str() == "ada@example.com"));
    // Asking again changes nothing, so nothing more is mailed.
    world.service.update_user(&root, ada.id, changes).await.unwrap();
    assert_eq!(world.mails().len(), mails + 2);
}

#[tokio::test]
async fn nobody_changes_their_own_role_or_locks_themself() {
    let world = world();
    let (root, mia) = root_and_manager(&world).await;
    let demote = AdminChanges { role: Some(Role::Authenticated), ..AdminChanges::default() };
    // The only ADMIN is told why.
    for changes in [demote.clone(), lock()] {
        let result = world.service.update_user(&root, root.user.id, changes).await;
        assert!(matches!(result, Err(UpdateUserError::LastAdmin)), "{result:?}");
    }
    assert!(matches!(world.service.delete_user(&root, root.user.id).await, Err(DeleteUserError::LastAdmin)));

    // With another ADMIN there, it is still not theirs to do; nor a manager's.
    world.admin("second@example.com").await;
    for actor in [&root, &mia] {
        for changes in [demote.clone(), lock()] {
            let result = world.service.update_user(actor, actor.user.id, changes).await;
            assert!(matches!(result, Err(UpdateUserError::Forbidden)), "{}: {result:?}", actor.user.role);
        }
    }
    let root_now = world.user("root@example.com").await;
    assert_eq!((root_now.role, root_now.is_locked), (Role::Admin, false));
    let mia_now = world.user("mia@example.com").await;
    assert_eq!((mia_now.role, mia_now.is_locked), (Role::Manager, false));
}

#[tokio::test]
async fn staff_cannot_change_their_own_email_through_the_admin_route() {
    let world = world();
    let (root, mia) = root_and_manager(&world).await;
    for actor in [&root, &mia] {
        for vouched in [None, Some(true)] {
            let changes = AdminChanges {
                email: Some(email("thief@evil.example")),
                email_verified: vouched,
                ..AdminChanges::default()
            };
            let result = world.service.update_user(actor, actor.user.id, changes).await;
            assert!(matches!(result, Err(UpdateUserError::Forbidden)), "{}: {result:?}", actor.user.role);
        }
    }
    assert!(world.find("thief@evil.example").await.is_none());
    assert!(world.mails_to("thief@evil.example").is_empty());
    assert!(world.find("root@example.com").await.is_some() && world.find("mia@example.com").await.is_some());
}

#[tokio::test]
async fn a_manager_lists_only_users_below_manager_and_gets_a_cursor_when_more_remain() {
    let world = world();
    let (root, mia) = root_and_manager(&world).await;
    world.staff(&root, "max@example.com", Role::Manager).await;
    world.verified("ada@example.com").await;
    world.verified("bob@example.com").await;
    world.registered("cat@example.com").await;

    let first = world.service.list_users(&mia, listing(2)).await.unwrap();
    assert_eq!(first.users.len(), 2);
    assert!(matches!(first.next, Some(UserCursor::Email(..))), "{:?}", first.next);
    let rest = ListUsers { after: first.next.clone(), ..listing(2) };
    let second = world.service.list_users(&mia, rest).await.unwrap();
    assert_eq!(second.next, None, "nothing remains");
    let seen: Vec<&str> = first.users.iter().chain(&second.users).map(|user| user.email.as_str()).collect();
    assert_eq!(seen, ["ada@example.com", "bob@example.com", "cat@example.com"]);
    // A page that holds exactly what remains says so: no cursor to an empty page.
    let whole = world.service.list_users(&mia, listing(3)).await.unwrap();
    assert_eq!((whole.users.len(), whole.next), (3, None));

    // Asking for the roles above them narrows the listing to nothing.
    for role in [Role::Manager, Role::Admin] {
        let above = ListUsers { role: Some(role), ..listing(10) };
        assert!(world.service.list_users(&mia, above).await.unwrap().users.is_empty(), "{role}");
    }
    // An ADMIN sees everyone.
    assert_eq!(world.service.list_users(&root, listing(10)).await.unwrap().users.len(), 6);
    // A cursor made for another order is refused.
    let wrong = ListUsers { after: Some(UserCursor::Nickname("a".to_owned(), UserId::generate())), ..listing(2) };
    assert!(matches!(world.service.list_users(&root, wrong).await, Err(ListUsersError::CursorMismatch)));
}

#[tokio::test]
async fn create_admin_refuses_a_weak_password_before_hashing_or_storing() {
    let world = world();
    let result = world.service.create_admin(email("root@example.com"), "root@example.com1").await;
    assert!(matches!(result, Err(CreateAdminError::WeakPassword(_))), "{result:?}");
    assert!(world.find("root@example.com").await.is_none());
    assert_eq!(world.hasher.hashes(), 0);
}

#[tokio::test]
async fn create_admin_inserts_a_verified_admin_with_a_generated_nickname() {
    let world = world();
    let created = world.service.create_admin(email("root@example.com"), PASSWORD).await.unwrap();
    assert_eq!((created.role, created.email_verified, created.is_locked), (Role::Admin, true, false));
    assert_eq!(created.nickname.as_str().split('_').count(), 3, "{}", created.nickname.as_str());
    assert_eq!(world.user("root@example.com").await, created);
    assert!(world.mails().is_empty(), "no verification mail for a verified admin");
    assert!(world.login("root@example.com", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn create_admin_promotes_an_existing_user_instead_of_inserting() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let ada = world.registered("ada@example.com").await;
    world.service.update_user(&root, ada.id, lock()).await.unwrap();
    let promoted = world.service.create_admin(email("ada@example.com"), NEW_PASSWORD).await.unwrap();
    assert_eq!(promoted.id, ada.id);
    assert_eq!((promoted.role, promoted.email_verified, promoted.is_locked), (Role::Admin, true, false));
    assert!(world.login("ada@example.com", NEW_PASSWORD).await.is_ok());
    assert!(world.login("ada@example.com", PASSWORD).await.is_err());
}

#[tokio::test]
async fn ensure_admin_leaves_an_existing_admin_untouched() {
    let world = world();
    let root = world.service.create_admin(email("root@example.com"), PASSWORD).await.unwrap();
    let hashes = world.hasher.hashes();
    let ensured = world.service.ensure_admin(email("root@example.com"), NEW_PASSWORD).await.unwrap();
    assert_eq!(ensured, root);
    assert_eq!(world.hasher.hashes(), hashes, "the new password was not even hashed");
    assert!(world.login("root@example.com", PASSWORD).await.is_ok(), "a restart never resets the password");
}

#[tokio::test]
async fn ensure_admin_promotes_a_non_admin() {
    let world = world();
    let (_, mia) = root_and_manager(&world).await;
    let ensured = world.service.ensure_admin(email("mia@example.com"), NEW_PASSWORD).await.unwrap();
    assert_eq!((ensured.id, ensured.role), (mia.user.id, Role::Admin));
    assert!(world.login("mia@example.com", NEW_PASSWORD).await.is_ok());
}
