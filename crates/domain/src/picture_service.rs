//! Profile picture workflows: upload, serve, delete, history and restore.
//!
//! The database row and the objects never disagree in a way a user can see: objects are written before the row
//! that points to them (a failed write leaves the user unchanged and the new objects removed), and objects are
//! moved between the active and archive prefixes by copy, re-point, delete, so a row always names objects that
//! exist. A move that fails half-way leaves at worst unreferenced copies behind, never a broken picture.
//!
//! An upload is decided in two steps so that a caller who may not touch the target never gets to send a picture:
//! [`PictureService::authorize_upload`] decides from the caller and the target id alone and hands out an
//! [`UploadPermit`], and only [`PictureService::upload`], which requires that permit, takes the picture's bytes.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::permissions::{Action, Target, authorize};
use crate::pictures::{
    EncodedImage, ImageError, ImageProcessor, PictureRepository, PictureSize, PictureVariant, PictureWriteError,
    ProcessedImage, StoredPicture,
};
use crate::ports::{Clock, PictureStore, PortError, StoredObject, UserRepository};
use crate::service::Principal;
use crate::user::{User, UserId};

/// Why a picture request failed.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    /// No such user or picture, or a user the caller may not see.
    #[error("not found")]
    NotFound,
    /// The upload is not an accepted image type (415).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A picture as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPicture {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The stored encoding's type.
    pub content_type: String,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// `jpg` or `png`.
    pub extension: &'static str,
}

/// Proof that a caller may upload a picture for a user, decided before any of the picture is read.
///
/// Only [`PictureService::authorize_upload`] makes one, and [`PictureService::upload`] consumes it, so an upload
/// cannot skip the decision. It names the caller and the target; the upload applies the rule again to the target's
/// row as it is once the picture has arrived, since the target may be promoted or deleted while a slow client is
/// still sending.
#[derive(Debug)]
pub struct UploadPermit {
    actor: Principal,
    target: UserId,
}

impl UploadPermit {
    /// The user whose picture is being uploaded.
    #[must_use]
    pub const fn target(&self) -> UserId {
        self.target
    }
}

/// The picture service, generic over its ports.
#[derive(Debug, Clone)]
pub struct PictureService<U, P, S, I, C> {
    users: U,
    pictures: P,
    store: S,
    images: I,
    clock: C,
}

fn variant(size: PictureSize, image: &EncodedImage) -> PictureVariant {
    PictureVariant {
        size,
        content_type: image.content_type.to_owned(),
        width: image.width,
        height: image.height,
        bytes: image.bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&image.bytes)),
    }
}

impl<U, P, S, I, C> PictureService<U, P, S, I, C>
where
    U: UserRepository,
    P: PictureRepository,
    S: PictureStore,
    I: ImageProcessor,
    C: Clock,
{
    /// Wires the service.
    pub const fn new(users: U, pictures: P, store: S, images: I, clock: C) -> Self {
        Self { users, pictures, store, images, clock }
    }

    /// Checks that picture storage answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    pub async fn storage_ready(&self) -> Result<(), PortError> {
        self.store.ping().await
    }

    /// The target user, when the caller may manage their pictures (themself, or MANAGER/ADMIN within rights).
    async fn target(&self, actor: &Principal, id: UserId) -> Result<User, PictureError> {
        let target = self.users.find_user(id).await?;
        let facts = target.as_ref().map(|user| Target { is_self: user.id == actor.user.id, role: user.role });
        authorize(actor.user.role, Action::ManagePicture, facts).map_err(|_| PictureError::NotFound)?;
        target.ok_or(PictureError::NotFound)
    }

    /// Decides, from the caller and the target id alone, whether the caller may upload a picture for that user
    /// (themself, or MANAGER/ADMIN within their rights), before any of the picture is read.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] for an unknown user or one the caller may not see (the same answer, so ids cannot
    /// be probed), or a dependency failure.
    pub async fn authorize_upload(&self, actor: &Principal, user_id: UserId) -> Result<UploadPermit, PictureError> {
        let target = self.target(actor, user_id).await?;
        Ok(UploadPermit { actor: actor.clone(), target: target.id })
    }

    /// Processes an upload the caller was authorized for and makes it the user's active picture; the previous one
    /// goes to the archive.
    ///
    /// # Errors
    /// [`PictureError::Image`] for content that is not an acceptable image, [`PictureError::NotFound`] (also when
    /// the caller lost the right while sending), or a dependency failure (then the user is unchanged and no new
    /// object is left behind).
    pub async fn upload(&self, permit: UploadPermit, bytes: Vec<u8>) -> Result<User, PictureError> {
        let target = self.target(&permit.actor, permit.target).await?;
        let processed = self.images.process(bytes).await?;
        let id = Uuid::now_v7();
        let picture = StoredPicture {
            id,
            user_id: target.id,
            created_at: self.clock.now(),
            archived: false,
            prefix: StoredPicture::active_prefix(target.id, id),
            variants: PictureSize::ALL.iter().map(|size| variant(*size, processed.size(*size))).collect(),
        };
        self.put_all(&picture, &processed).await?;
        match self.pictures.insert_active_picture(picture.clone(), self.clock.now()).await {
            Ok(previous) => {
                if let Some(previous) = previous {
                    let archive = StoredPicture::archive_prefix(previous.user_id, previous.id);
                    self.relocate(&previous, archive).await;
                }
            }
            Err(error) => {
                self.delete_keys(picture.keys()).await;
                return Err(match error {
                    PictureWriteError::UserGone => PictureError::NotFound,
                    PictureWriteError::Port(error) => PictureError::Port(error),
                });
            }
        }
        self.users.find_user(target.id).await?.ok_or(PictureError::NotFound)
    }

    /// Stores every size; on a failure removes what was stored and reports it.
    async fn put_all(&self, picture: &StoredPicture, processed: &ProcessedImage) -> Result<(), PortError> {
        let mut written = Vec::new();
        for variant in &picture.variants {
            let key = StoredPicture::key_under(&picture.prefix, variant);
            let object = StoredObject {
                key: key.clone(),
                content_type: variant.content_type.clone(),
                bytes: processed.size(variant.size).bytes.clone(),
            };
            if let Err(error) = self.store.put(object).await {
                self.delete_keys(written).await;
                return Err(error);
            }
            written.push(key);
        }
        Ok(())
    }

    /// Deletes objects, logging (not failing on) errors: what remains is unreferenced and harmless.
    async fn delete_keys(&self, keys: Vec<String>) {
        for key in keys {
            if let Err(error) = self.store.delete(key.clone()).await {
                log_cleanup_failure(&key, &error);
            }
        }
    }

    /// Moves a picture's objects to `prefix`: copy every object, re-point the row, then delete the originals.
    /// Best effort: the row always names objects that exist, whichever step fails.
    async fn relocate(&self, picture: &StoredPicture, prefix: String) {
        // Already there (an earlier move that stopped half-way, or a race): copying onto itself and then deleting
        // the originals would delete the very objects the row names.
        if picture.prefix == prefix {
            return;
        }
        let mut copied = Vec::new();
        for variant in &picture.variants {
            let from = StoredPicture::key_under(&picture.prefix, variant);
            let to = StoredPicture::key_under(&prefix, variant);
            let copy = match self.store.get(from).await {
                Ok(Some(object)) => self.store.put(StoredObject { key: to.clone(), ..object }).await,
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = copy {
                log_cleanup_failure(&to, &error);
                self.delete_keys(copied).await;
                return;
            }
            copied.push(to);
        }
        if let Err(error) = self.pictures.move_picture(picture.id, prefix).await {
            log_cleanup_failure(&picture.prefix, &error);
            self.delete_keys(copied).await;
            return;
        }
        self.delete_keys(picture.keys()).await;
    }

    /// The active picture of a user in one size, for anyone (profile pictures are public).
    ///
    /// # Errors
    /// [`PictureError::NotFound`] when the user has no picture, or a dependency failure.
    pub async fn serve(&self, user_id: UserId, size: PictureSize) -> Result<ServedPicture, PictureError> {
        let picture = self.pictures.active_picture(user_id).await?.ok_or(PictureError::NotFound)?;
        self.fetch(&picture, size).await
    }

    /// An archived picture in one size, for those who may manage the user's pictures.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] for an unknown version or invisible user, or a dependency failure.
    pub async fn serve_version(
        &self,
        actor: &Principal,
        user_id: UserId,
        version: Uuid,
        size: PictureSize,
    ) -> Result<ServedPicture, PictureError> {
        let target = self.target(actor, user_id).await?;
        let archived = self.pictures.archived_pictures(target.id).await?;
        let picture = archived.into_iter().find(|picture| picture.id == version).ok_or(PictureError::NotFound)?;
        self.fetch(&picture, size).await
    }

    async fn fetch(&self, picture: &StoredPicture, size: PictureSize) -> Result<ServedPicture, PictureError> {
        let variant = picture.variant(size).ok_or(PictureError::NotFound)?;
        let object =
            self.store.get(StoredPicture::key_under(&picture.prefix, variant)).await?.ok_or(PictureError::NotFound)?;
        Ok(ServedPicture {
            bytes: object.bytes,
            content_type: variant.content_type.clone(),
            sha256: variant.sha256.clone(),
            extension: variant.extension(),
        })
    }

    /// The ETag of the active picture in one size, without reading the object (for `If-None-Match`).
    ///
    /// # Errors
    /// [`PictureError::NotFound`] when the user has no picture, or a dependency failure.
    pub async fn etag(&self, user_id: UserId, size: PictureSize) -> Result<String, PictureError> {
        let picture = self.pictures.active_picture(user_id).await?.ok_or(PictureError::NotFound)?;
        Ok(picture.variant(size).ok_or(PictureError::NotFound)?.sha256.clone())
    }

    /// Archives the active picture; `profile_picture_url` becomes null.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] when there is no active picture or no visible user, or a dependency failure.
    pub async fn delete(&self, actor: &Principal, user_id: UserId) -> Result<(), PictureError> {
        let target = self.target(actor, user_id).await?;
        let archived =
            self.pictures.archive_active_picture(target.id, self.clock.now()).await?.ok_or(PictureError::NotFound)?;
        let archive = StoredPicture::archive_prefix(archived.user_id, archived.id);
        self.relocate(&archived, archive).await;
        Ok(())
    }

    /// The archived pictures, newest first.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] for an invisible user, or a dependency failure.
    pub async fn history(&self, actor: &Principal, user_id: UserId) -> Result<Vec<StoredPicture>, PictureError> {
        let target = self.target(actor, user_id).await?;
        Ok(self.pictures.archived_pictures(target.id).await?)
    }

    /// Makes an archived picture active again; the active one goes to the archive.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] for an unknown version or invisible user, or a dependency failure.
    pub async fn restore(&self, actor: &Principal, user_id: UserId, version: Uuid) -> Result<User, PictureError> {
        let target = self.target(actor, user_id).await?;
        let (restored, previous) =
            self.pictures.restore_picture(target.id, version, self.clock.now()).await?.ok_or(PictureError::NotFound)?;
        self.relocate(&restored, StoredPicture::active_prefix(restored.user_id, restored.id)).await;
        if let Some(previous) = previous {
            self.relocate(&previous, StoredPicture::archive_prefix(previous.user_id, previous.id)).await;
        }
        self.users.find_user(target.id).await?.ok_or(PictureError::NotFound)
    }

    /// Removes every object under the user's prefix, once the user is deleted (their picture rows went with them).
    /// Listing the prefix rather than the rows catches an upload that committed just before the deletion; one still
    /// in flight finds its user gone and removes its own objects. Failures are logged: what remains is unreferenced.
    pub async fn remove_user_objects(&self, user_id: UserId) {
        let prefix = format!("profile_pictures/{user_id}/");
        match self.store.list(prefix.clone()).await {
            Ok(keys) => self.delete_keys(keys).await,
            Err(error) => log_cleanup_failure(&prefix, &error),
        }
    }
}

/// Logs a storage step that failed without failing the request: what it leaves behind is unreferenced.
fn log_cleanup_failure(what: &str, error: &PortError) {
    tracing::warn!(object = what, error = %format!("{error:#}"), "picture storage clean-up step failed");
}

#[cfg(test)]
mod tests {
    use std::future::ready;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::permissions::Role;
    use crate::pictures::{MockImageProcessor, MockPictureRepository};
    use crate::ports::{MockClock, MockPictureStore, MockUserRepository};
    use crate::service::tests::{clock, session_of, user};

    type Svc =
        PictureService<MockUserRepository, MockPictureRepository, MockPictureStore, MockImageProcessor, MockClock>;

    fn principal(role: Role) -> Principal {
        let me = user(role, true, false);
        let session_id = session_of(&me, false).id;
        Principal { user: me, session_id }
    }

    fn encoded(edge: u32) -> EncodedImage {
        EncodedImage { bytes: vec![1, 2, 3], content_type: "image/png", width: edge, height: edge }
    }

    fn images() -> MockImageProcessor {
        let mut images = MockImageProcessor::new();
        images.expect_process().returning(|_| {
            Box::pin(ready(Ok(ProcessedImage { original: encoded(100), medium: encoded(50), thumb: encoded(20) })))
        });
        images
    }

    fn users_finding(found: User) -> MockUserRepository {
        let mut users = MockUserRepository::new();
        users.expect_find_user().returning(move |_| Box::pin(ready(Ok(Some(found.clone())))));
        users
    }

    #[tokio::test]
    async fn a_storage_failure_removes_what_was_written_and_leaves_the_user_unchanged() {
        let me = principal(Role::Authenticated);
        let mut store = MockPictureStore::new();
        let mut puts = 0;
        store.expect_put().times(2).returning(move |_| {
            puts += 1;
            Box::pin(ready(if puts == 1 { Ok(()) } else { Err(PortError::Unavailable(anyhow::anyhow!("down"))) }))
        });
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&deleted);
        store.expect_delete().returning(move |key| {
            seen.lock().unwrap().push(key);
            Box::pin(ready(Ok(())))
        });
        let mut pictures = MockPictureRepository::new();
        pictures.expect_insert_active_picture().never();
        let svc: Svc = PictureService::new(users_finding(me.user.clone()), pictures, store, images(), clock());
        let permit = svc.authorize_upload(&me, me.user.id).await.unwrap();
        let result = svc.upload(permit, vec![0; 10]).await;
        assert!(matches!(result, Err(PictureError::Port(PortError::Unavailable(_)))));
        let deleted = deleted.lock().unwrap();
        assert_eq!(deleted.len(), 1);
        assert!(deleted[0].ends_with("/original.png"));
        assert!(deleted[0].starts_with(&format!("profile_pictures/{}/", me.user.id)));
    }

    #[tokio::test]
    async fn a_database_failure_after_the_upload_removes_the_new_objects() {
        let me = principal(Role::Authenticated);
        let mut store = MockPictureStore::new();
        store.expect_put().times(3).returning(|_| Box::pin(ready(Ok(()))));
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&deleted);
        store.expect_delete().times(3).returning(move |key| {
            seen.lock().unwrap().push(key);
            Box::pin(ready(Ok(())))
        });
        let mut pictures = MockPictureRepository::new();
        pictures.expect_insert_active_picture().returning(|_, _| {
            Box::pin(ready(Err(PictureWriteError::Port(PortError::Unavailable(anyhow::anyhow!("db down"))))))
        });
        let svc: Svc = PictureService::new(users_finding(me.user.clone()), pictures, store, images(), clock());
        let permit = svc.authorize_upload(&me, me.user.id).await.unwrap();
        assert!(matches!(svc.upload(permit, vec![0; 10]).await, Err(PictureError::Port(_))));
        assert_eq!(deleted.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn another_users_pictures_are_not_found_and_nothing_is_processed() {
        let me = principal(Role::Authenticated);
        let other = user(Role::Authenticated, true, false);
        let mut images = MockImageProcessor::new();
        images.expect_process().never();
        let mut store = MockPictureStore::new();
        store.expect_put().never();
        let svc: Svc =
            PictureService::new(users_finding(other.clone()), MockPictureRepository::new(), store, images, clock());
        assert!(matches!(svc.authorize_upload(&me, other.id).await, Err(PictureError::NotFound)));
        assert!(matches!(svc.history(&me, other.id).await, Err(PictureError::NotFound)));
    }

    #[tokio::test]
    async fn a_manager_may_upload_for_a_plain_user_but_not_for_an_unknown_id() {
        let manager = principal(Role::Manager);
        let plain = user(Role::Authenticated, true, false);
        let svc: Svc = PictureService::new(
            users_finding(plain.clone()),
            MockPictureRepository::new(),
            MockPictureStore::new(),
            MockImageProcessor::new(),
            clock(),
        );
        assert_eq!(svc.authorize_upload(&manager, plain.id).await.unwrap().target(), plain.id);
        let mut nobody = MockUserRepository::new();
        nobody.expect_find_user().returning(|_| Box::pin(ready(Ok(None))));
        let svc: Svc = PictureService::new(
            nobody,
            MockPictureRepository::new(),
            MockPictureStore::new(),
            MockImageProcessor::new(),
            clock(),
        );
        assert!(matches!(svc.authorize_upload(&manager, UserId::generate()).await, Err(PictureError::NotFound)));
    }

    #[tokio::test]
    async fn a_target_promoted_out_of_sight_while_the_picture_arrives_is_not_found_and_nothing_is_processed() {
        let manager = principal(Role::Manager);
        let target = user(Role::Authenticated, true, false);
        let promoted = User { role: Role::Admin, ..target.clone() };
        let mut users = MockUserRepository::new();
        let mut calls = 0;
        users.expect_find_user().times(2).returning(move |_| {
            calls += 1;
            let found = if calls == 1 { target.clone() } else { promoted.clone() };
            Box::pin(ready(Ok(Some(found))))
        });
        let mut images = MockImageProcessor::new();
        images.expect_process().never();
        let mut store = MockPictureStore::new();
        store.expect_put().never();
        let svc: Svc = PictureService::new(users, MockPictureRepository::new(), store, images, clock());
        let permit = svc.authorize_upload(&manager, UserId::generate()).await.unwrap();
        assert!(matches!(svc.upload(permit, vec![0; 10]).await, Err(PictureError::NotFound)));
    }

    #[tokio::test]
    async fn a_user_without_a_picture_serves_not_found() {
        let mut pictures = MockPictureRepository::new();
        pictures.expect_active_picture().returning(|_| Box::pin(ready(Ok(None))));
        let svc: Svc = PictureService::new(
            MockUserRepository::new(),
            pictures,
            MockPictureStore::new(),
            MockImageProcessor::new(),
            clock(),
        );
        assert!(matches!(svc.serve(UserId::generate(), PictureSize::Thumb).await, Err(PictureError::NotFound)));
    }
}
