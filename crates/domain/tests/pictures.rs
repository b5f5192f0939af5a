//! Profile pictures, driven through `Service` over the in-memory adapters (the properties the mock-based unit tests
//! of `picture_service.rs` used to prove), with the 32x32 PNG fixture.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use time::Duration;
use users_domain::admin::AdminChanges;
use users_domain::pictures::{PictureError, UploadError};
use users_domain::ports::{PictureRecords as _, PictureSize, PortError, Ports as _, StoredPicture};
use users_domain::sessions::Principal;
use users_domain::{Role, User, UserId};
use uuid::Uuid;

use support::{PICTURE, World, world};

impl World {
    /// Uploads the fixture as `actor` for `target`.
    async fn upload(&self, actor: &Principal, target: UserId) -> Result<User, UploadError> {
        let permit = self.service.authorize_upload(actor, target).await.unwrap();
        self.service.upload(permit, PICTURE.to_vec()).await
    }

    fn keys(&self) -> Vec<String> {
        self.ports.object_store().keys()
    }

    async fn active(&self, id: UserId) -> Option<StoredPicture> {
        self.ports.pictures().active_picture(id).await.unwrap()
    }
}

/// A verified, logged-in user.
async fn member(world: &World, address: &str) -> Principal {
    world.verified(address).await;
    world.principal(address).await
}

#[tokio::test]
async fn an_unavailable_picture_store_fails_the_upload_and_leaves_the_user_and_objects_as_they_were() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    // First with no picture, then with one that must survive.
    for had_picture in [false, true] {
        let before = world.user("ada@example.com").await;
        let keys = world.keys();
        let permit = world.service.authorize_upload(&ada, ada.user.id).await.unwrap();
        world.ports.object_store().set_unavailable(true);
        let result = world.service.upload(permit, PICTURE.to_vec()).await;
        world.ports.object_store().set_unavailable(false);
        assert!(matches!(result, Err(UploadError::Port(PortError::Unavailable(_)))), "{result:?}");
        assert_eq!(world.user("ada@example.com").await, before);
        assert_eq!(world.keys(), keys);
        assert_eq!(world.service.serve(ada.user.id, PictureSize::Thumb).await.is_ok(), had_picture);
        world.upload(&ada, ada.user.id).await.unwrap();
    }
}

#[tokio::test]
async fn a_write_that_fails_half_way_removes_what_was_written() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    let before = world.user("ada@example.com").await;
    let permit = world.service.authorize_upload(&ada, ada.user.id).await.unwrap();
    world.faults.fail_put(2);
    let result = world.service.upload(permit, PICTURE.to_vec()).await;
    assert!(matches!(result, Err(UploadError::Port(PortError::Unavailable(_)))), "{result:?}");
    assert!(world.keys().is_empty(), "the first size, written before the failure, is gone: {:?}", world.keys());
    assert_eq!(world.user("ada@example.com").await, before);
}

#[tokio::test]
async fn a_database_failure_after_the_objects_are_written_removes_them() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    let before = world.user("ada@example.com").await;
    let permit = world.service.authorize_upload(&ada, ada.user.id).await.unwrap();
    // The three sizes are stored, then the database goes away before the row is written.
    world.faults.database_off_after_put(3);
    let result = world.service.upload(permit, PICTURE.to_vec()).await;
    world.store().set_unavailable(false);
    assert!(matches!(result, Err(UploadError::Port(PortError::Unavailable(_)))), "{result:?}");
    assert!(world.keys().is_empty(), "{:?}", world.keys());
    assert_eq!(world.user("ada@example.com").await, before);
    assert_eq!(world.active(ada.user.id).await, None);
}

#[tokio::test]
async fn another_users_pictures_are_not_found_and_nothing_is_processed() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    let bob = member(&world, "bob@example.com").await;
    world.upload(&bob, bob.user.id).await.unwrap();
    world.upload(&bob, bob.user.id).await.unwrap();
    let archived = world.service.history(&bob, bob.user.id).await.unwrap()[0].id;
    let (keys, bobs) = (world.keys(), world.user("bob@example.com").await);

    let not_found = |result: Result<(), PictureError>| matches!(result, Err(PictureError::NotFound));
    // No permit, so no picture of Ada's can even be sent for Bob.
    assert!(not_found(world.service.authorize_upload(&ada, bob.user.id).await.map(drop)));
    assert!(not_found(world.service.history(&ada, bob.user.id).await.map(drop)));
    assert!(not_found(world.service.delete(&ada, bob.user.id).await));
    assert!(not_found(world.service.restore(&ada, bob.user.id, archived).await.map(drop)));
    let version = world.service.serve_version(&ada, bob.user.id, archived, PictureSize::Thumb).await;
    assert!(not_found(version.map(drop)));
    assert_eq!(world.keys(), keys);
    assert_eq!(world.user("bob@example.com").await, bobs);
}

#[tokio::test]
async fn a_manager_may_upload_for_a_plain_user_but_not_for_an_unknown_id_or_staff() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let mia = world.staff(&root, "mia@example.com", Role::Manager).await;
    let max = world.staff(&root, "max@example.com", Role::Manager).await;
    let ada = world.verified("ada@example.com").await;

    let permit = world.service.authorize_upload(&mia, ada.id).await.unwrap();
    assert_eq!(permit.target(), ada.id);
    let updated = world.service.upload(permit, PICTURE.to_vec()).await.unwrap();
    assert!(updated.profile_picture_id.is_some());
    assert!(world.service.serve(ada.id, PictureSize::Thumb).await.is_ok());

    for id in [UserId::generate(), max.user.id, root.user.id] {
        let result = world.service.authorize_upload(&mia, id).await;
        assert!(matches!(result, Err(PictureError::NotFound)), "{result:?}");
    }
}

#[tokio::test]
async fn a_target_promoted_out_of_sight_while_the_picture_arrives_is_not_found_and_nothing_is_stored() {
    let world = world();
    let root = world.admin("root@example.com").await;
    let mia = world.staff(&root, "mia@example.com", Role::Manager).await;
    let ada = world.verified("ada@example.com").await;
    let permit = world.service.authorize_upload(&mia, ada.id).await.unwrap();
    let promote = AdminChanges { role: Some(Role::Manager), ..AdminChanges::default() };
    world.service.update_user(&root, ada.id, promote).await.unwrap();

    let result = world.service.upload(permit, PICTURE.to_vec()).await;
    assert!(matches!(result, Err(UploadError::NotFound)), "{result:?}");
    assert!(world.keys().is_empty());
    assert_eq!(world.user("ada@example.com").await.profile_picture_id, None);
}

#[tokio::test]
async fn a_user_without_a_picture_serves_not_found() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    for id in [ada.user.id, UserId::generate()] {
        assert!(matches!(world.service.serve(id, PictureSize::Thumb).await, Err(PictureError::NotFound)));
        assert!(matches!(world.service.etag(id, PictureSize::Thumb).await, Err(PictureError::NotFound)));
    }
    // Nor once the picture is deleted (archived).
    world.upload(&ada, ada.user.id).await.unwrap();
    assert!(world.service.serve(ada.user.id, PictureSize::Thumb).await.is_ok());
    world.service.delete(&ada, ada.user.id).await.unwrap();
    assert!(matches!(world.service.serve(ada.user.id, PictureSize::Thumb).await, Err(PictureError::NotFound)));
    assert!(matches!(world.service.delete(&ada, ada.user.id).await, Err(PictureError::NotFound)));
    assert_eq!(world.service.history(&ada, ada.user.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_history_lists_archived_pictures_newest_first_and_restore_swaps_them_with_the_active_one() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    let id = ada.user.id;
    let first = world.upload(&ada, id).await.unwrap().profile_picture_id.unwrap();
    world.clock().advance(Duration::minutes(1));
    let second = world.upload(&ada, id).await.unwrap().profile_picture_id.unwrap();
    world.clock().advance(Duration::minutes(1));
    let third = world.upload(&ada, id).await.unwrap().profile_picture_id.unwrap();

    let history: Vec<Uuid> = world.service.history(&ada, id).await.unwrap().iter().map(|p| p.id).collect();
    assert_eq!(history, [second, first]);
    // The rows changed; the objects follow when the recorded moves are done (by a background task in the
    // application, by hand here).
    // A stop asked after the first move leaves the second recorded for later.
    let asked = std::cell::Cell::new(0);
    let stop = || {
        asked.set(asked.get() + 1);
        asked.get() > 1
    };
    assert_eq!(world.service.move_pictures_until(10, stop).await.unwrap(), 1, "stopped after the first move");
    assert_eq!(world.service.move_pictures(10).await.unwrap(), 1, "the other archived one");

    let restored = world.service.restore(&ada, id, first).await.unwrap();
    assert_eq!(restored.profile_picture_id, Some(first));
    let history = world.service.history(&ada, id).await.unwrap();
    assert_eq!(history.iter().map(|p| p.id).collect::<Vec<_>>(), [third, second]);
    assert!(history.iter().all(|picture| picture.archived));

    // The restored one has to come back out of the archive, the one it replaced to go in; `second` stays.
    assert!(!world.active(id).await.unwrap().is_placed());
    let placed: Vec<(Uuid, bool)> = history.iter().map(|picture| (picture.id, picture.is_placed())).collect();
    assert_eq!(placed, [(third, false), (second, true)]);
    assert_eq!(world.service.move_pictures(10).await.unwrap(), 2, "the restored one and the one it replaced");
    // Then the active one is under an active prefix, the others under the archive, and nothing else is left.
    assert_eq!(world.service.move_pictures(10).await.unwrap(), 0, "nothing left to move");
    let active = world.active(id).await.unwrap();
    assert!(active.is_placed() && !StoredPicture::is_archive_prefix(&active.prefix), "{}", active.prefix);
    let history = world.service.history(&ada, id).await.unwrap();
    let mut expected: Vec<String> = active.keys();
    for archived in &history {
        assert!(archived.is_placed() && StoredPicture::is_archive_prefix(&archived.prefix), "{}", archived.prefix);
        expected.extend(archived.keys());
    }
    expected.sort();
    assert_eq!(world.keys(), expected);

    let served = world.service.serve(id, PictureSize::Thumb).await.unwrap();
    assert_eq!(served.sha256, active.variant(PictureSize::Thumb).unwrap().sha256);
    assert!(world.service.serve_version(&ada, id, third, PictureSize::Medium).await.is_ok());
    // Neither the active picture nor an unknown version can be restored.
    for version in [first, Uuid::now_v7()] {
        assert!(matches!(world.service.restore(&ada, id, version).await, Err(PictureError::NotFound)));
    }
    assert_eq!(world.user("ada@example.com").await.profile_picture_id, Some(first));
}

#[tokio::test]
async fn an_archived_picture_is_served_where_it_is_until_moved_and_a_failed_move_is_done_later() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    let id = ada.user.id;
    let first = world.upload(&ada, id).await.unwrap().profile_picture_id.unwrap();
    let keys_of_first = world.keys();
    world.upload(&ada, id).await.unwrap();
    // The upload answered without moving the first picture: it is in the history, served from where it is.
    let archived = world.service.history(&ada, id).await.unwrap();
    assert_eq!((archived.len(), archived[0].id, archived[0].is_placed()), (1, first, false));
    let mut keys = archived[0].keys();
    keys.sort();
    assert_eq!(keys, keys_of_first);
    assert!(world.service.serve_version(&ada, id, first, PictureSize::Thumb).await.is_ok());

    // Storage down: the move fails, nothing is lost, and it stays recorded.
    let keys = world.keys();
    world.ports.object_store().set_unavailable(true);
    assert_eq!(world.service.move_pictures(10).await.unwrap(), 0);
    world.ports.object_store().set_unavailable(false);
    assert_eq!(world.keys(), keys);
    assert!(!world.service.history(&ada, id).await.unwrap()[0].is_placed());

    // Storage back: the next call moves it, served from the archive, the old objects gone.
    assert_eq!(world.service.move_pictures(10).await.unwrap(), 1);
    let archived = world.service.history(&ada, id).await.unwrap();
    assert!(archived[0].is_placed() && StoredPicture::is_archive_prefix(&archived[0].prefix));
    assert!(world.keys().iter().all(|key| !keys_of_first.contains(key)), "{:?}", world.keys());
    assert_eq!(world.keys().len(), 6, "three sizes of each picture");
    let served = world.service.serve_version(&ada, id, first, PictureSize::Thumb).await.unwrap();
    assert_eq!(served.sha256, archived[0].variant(PictureSize::Thumb).unwrap().sha256);
}

#[tokio::test]
async fn the_move_signal_is_raised_by_each_change_that_records_a_move() {
    let raised = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&raised);
    let mut world = world();
    world.service = world.service.clone().on_pictures_to_move(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let count = || raised.load(std::sync::atomic::Ordering::SeqCst);
    let ada = member(&world, "ada@example.com").await;
    let id = ada.user.id;
    let first = world.upload(&ada, id).await.unwrap().profile_picture_id.unwrap();
    assert_eq!(count(), 0, "a first picture archives nothing");
    world.upload(&ada, id).await.unwrap();
    assert_eq!(count(), 1, "the second archives the first");
    world.service.restore(&ada, id, first).await.unwrap();
    assert_eq!(count(), 2);
    world.service.delete(&ada, id).await.unwrap();
    assert_eq!(count(), 3);
    assert!(world.service.delete(&ada, id).await.is_err());
    assert_eq!(count(), 3, "nothing archived, nothing raised");
}

#[tokio::test]
async fn a_picture_read_while_a_move_re_points_it_follows_the_row_to_the_new_place() {
    let world = world();
    let ada = member(&world, "ada@example.com").await;
    let id = ada.user.id;
    let first = world.upload(&ada, id).await.unwrap().profile_picture_id.unwrap();
    world.upload(&ada, id).await.unwrap();
    assert_eq!(world.service.move_pictures(10).await.unwrap(), 1, "the first goes to the archive");
    world.service.restore(&ada, id, first).await.unwrap();
    let restored = world.active(id).await.unwrap();
    assert!(!restored.is_placed(), "active again, its objects still under the archive prefix");
    let expected = restored.variant(PictureSize::Thumb).unwrap().sha256.clone();

    // The read has the row (archive prefix) when the move copies, re-points and deletes the old objects.
    let (reached, resume) = world.faults.pause_next_get();
    let read = world.service.serve(id, PictureSize::Thumb);
    let mover = async {
        reached.await.unwrap();
        let moved = world.service.move_pictures(10).await.unwrap();
        resume.send(()).unwrap();
        moved
    };
    let (served, moved) = tokio::join!(read, mover);
    assert_eq!(moved, 2, "the restored picture to the active prefix, the other to the archive");
    let moved_to = world.active(id).await.unwrap();
    assert!(moved_to.is_placed() && moved_to.prefix != restored.prefix);
    assert!(world.keys().iter().all(|key| !key.starts_with(&restored.prefix)), "old objects deleted");
    assert_eq!(served.unwrap().sha256, expected);
}
