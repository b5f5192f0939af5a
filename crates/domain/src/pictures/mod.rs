//! Profile pictures: upload, serve, delete, history and restore, and removing a deleted user's objects.
//!
//! The database row and the objects never disagree in a way a user can see: objects are written before the row
//! that points to them (a failed write leaves the user unchanged and the new objects removed), and objects are
//! moved between the active and archive prefixes by copy, re-point, delete, so a row always names objects that
//! exist. A move that fails half-way leaves at worst unreferenced copies behind, never a broken picture.
//!
//! Moves are not done by the request that causes them. Archiving a picture (by an upload, a deletion or a
//! restore) or restoring one only changes its row, in the same transaction as the rest of the change; the row then
//! says that its objects are not where its state wants them ([`StoredPicture::is_placed`]), which is the record of
//! the move to do, and survives any crash. [`Service::move_pictures`] does the recorded moves; an application runs
//! it in the background, woken by [`Service::on_pictures_to_move`]. Until a picture is moved it is served from
//! where its row says, so nobody sees the difference. Every move copies to a prefix never used before and
//! re-points the row only if it is still where and what it was when the move started, so movers running at once
//! (two instances, or a restore racing a move) never delete objects a row names; a read that finds the objects its
//! row named just deleted by a move reads the row again and follows it.
//!
//! An upload is decided in two steps so that a caller who may not touch the target never gets to send a picture:
//! [`Service::authorize_upload`] decides from the caller and the target id alone and hands out an
//! [`UploadPermit`], and only [`Service::upload`], which requires that permit, takes the picture's bytes.

use futures_util::future::join_all;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::{AuditEvent, EventType};
use crate::permissions::{Action, Target, authorize};
use crate::ports::{
    EncodedImage, Guard, ImageError, ImageProcessor as _, PictureRecords as _, PictureSize, PictureStore as _,
    PictureVariant, PictureWriteError, PortError, Ports, ProcessedImage, StoredObject, StoredPicture, UpdateError,
    UserStore as _,
};
use crate::service::Service;
use crate::sessions::Principal;
use crate::user::{User, UserId};

/// Why a picture request (other than an upload) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PictureError {
    /// No such user or picture, or a user the caller may not see.
    #[error("not found")]
    NotFound,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why an upload failed; the user is unchanged and no new object is left behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// No such user, or one the caller may not (or no longer may) manage.
    #[error("not found")]
    NotFound,
    /// The upload is not an acceptable image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

impl From<PictureError> for UploadError {
    fn from(error: PictureError) -> Self {
        match error {
            PictureError::NotFound => Self::NotFound,
            PictureError::Port(error) => Self::Port(error),
        }
    }
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
/// Only [`Service::authorize_upload`] makes one, and [`Service::upload`] consumes it, so an upload
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

impl<P: Ports> Service<P> {
    /// The target user, when the caller may manage their pictures (themself, or MANAGER/ADMIN within rights).
    async fn picture_target(&self, actor: &Principal, id: UserId) -> Result<User, PictureError> {
        let target = self.ports.users().find_user(id).await?;
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
        let target = self.picture_target(actor, user_id).await?;
        Ok(UploadPermit { actor: actor.clone(), target: target.id })
    }

    /// Processes an upload the caller was authorized for and makes it the user's active picture; the previous one
    /// goes to the archive.
    ///
    /// # Errors
    /// [`UploadError::Image`] for content that is not an acceptable image, [`UploadError::NotFound`] (also when
    /// the caller lost the right while sending), or a dependency failure (then the user is unchanged and no new
    /// object is left behind).
    pub async fn upload(&self, permit: UploadPermit, bytes: Vec<u8>) -> Result<User, UploadError> {
        let target = self.picture_target(&permit.actor, permit.target).await?;
        let processed = self.ports.images().process(bytes).await?;
        let id = Uuid::now_v7();
        let picture = StoredPicture {
            id,
            user_id: target.id,
            created_at: self.now(),
            archived: false,
            prefix: StoredPicture::active_prefix(target.id, id),
            variants: PictureSize::ALL.iter().map(|size| variant(*size, processed.size(*size))).collect(),
        };
        self.put_all(&picture, &processed).await?;
        let event = self
            .event_by(EventType::PictureUploaded, &permit.actor, target.id)
            .detail("picture_id", picture.id.to_string());
        match self.ports.pictures().insert_active_picture(picture.clone(), self.now(), vec![event]).await {
            Ok(previous) => {
                if previous.is_some() {
                    self.moves.raise();
                }
            }
            Err(error) => {
                self.delete_keys(picture.keys()).await;
                return Err(match error {
                    PictureWriteError::UserGone => UploadError::NotFound,
                    PictureWriteError::Port(error) => UploadError::Port(error),
                });
            }
        }
        self.ports.users().find_user(target.id).await?.ok_or(UploadError::NotFound)
    }

    /// Stores every size, the three writes at once; on a failure removes what was stored and reports it.
    async fn put_all(&self, picture: &StoredPicture, processed: &ProcessedImage) -> Result<(), PortError> {
        let puts = picture.variants.iter().map(|variant| {
            let key = StoredPicture::key_under(&picture.prefix, variant);
            let object = StoredObject {
                key: key.clone(),
                content_type: variant.content_type.clone(),
                bytes: processed.size(variant.size).bytes.clone(),
            };
            async move { (key, self.ports.objects().put(object).await) }
        });
        let mut written = Vec::new();
        let mut failure = None;
        for (key, result) in join_all(puts).await {
            match result {
                Ok(()) => written.push(key),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        match failure {
            Some(error) => {
                self.delete_keys(written).await;
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Deletes objects, at once, logging (not failing on) errors: what remains is unreferenced and harmless.
    async fn delete_keys(&self, keys: Vec<String>) {
        let deletes = keys.into_iter().map(|key| async move {
            if let Err(error) = self.ports.objects().delete(key.clone()).await {
                log_cleanup_failure(&key, &error);
            }
        });
        join_all(deletes).await;
    }

    /// Does up to `limit` of the recorded picture moves (see the module docs): each picture whose objects are not
    /// under the kind of prefix its state calls for is copied to a new prefix of that kind, re-pointed there, and its
    /// old objects deleted. Returns how many were moved; a move that fails stays recorded and is tried again by a
    /// later call.
    ///
    /// # Errors
    /// [`PortError`] when the recorded moves cannot be read.
    pub async fn move_pictures(&self, limit: u32) -> Result<usize, PortError> {
        self.move_pictures_until(limit, || false).await
    }

    /// As [`Self::move_pictures`], asking `stop` before each move and returning early when it says so (a shutdown
    /// waits for the move in flight only); the moves not done stay recorded.
    ///
    /// # Errors
    /// [`PortError`] when the recorded moves cannot be read.
    pub async fn move_pictures_until(&self, limit: u32, stop: impl Fn() -> bool) -> Result<usize, PortError> {
        let misplaced = self.ports.pictures().misplaced_pictures(limit).await?;
        let mut moved = 0;
        for picture in misplaced {
            if stop() {
                break;
            }
            if self.relocate(&picture).await {
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Moves one picture's objects to a new prefix of the kind its state calls for: copy every size (at once, in
    /// the store), re-point the row if it is still where and what it was, then delete the originals. On any failure,
    /// or when the row changed meanwhile, the copies are removed and the row is left as it was. `true` when moved.
    async fn relocate(&self, picture: &StoredPicture) -> bool {
        if picture.is_placed() {
            return false;
        }
        let place = Uuid::now_v7();
        let to = if picture.archived {
            StoredPicture::archive_prefix(picture.user_id, place)
        } else {
            StoredPicture::active_prefix(picture.user_id, place)
        };
        let copies = picture.variants.iter().map(|variant| {
            let from = StoredPicture::key_under(&picture.prefix, variant);
            let to = StoredPicture::key_under(&to, variant);
            async move {
                // An object already missing is not there to move: the row is re-pointed all the same, as a copy
                // that read nothing would be.
                let copy = self.ports.objects().copy(from, to.clone()).await;
                (to, copy)
            }
        });
        let mut copied = Vec::new();
        let mut failed = false;
        for (to, copy) in join_all(copies).await {
            match copy {
                Ok(true) => copied.push(to),
                Ok(false) => {}
                Err(error) => {
                    log_cleanup_failure(&to, &error);
                    failed = true;
                }
            }
        }
        if failed {
            self.delete_keys(copied).await;
            return false;
        }
        match self.ports.pictures().finish_move(picture.id, picture.prefix.clone(), to, picture.archived).await {
            Ok(true) => {
                self.delete_keys(picture.keys()).await;
                true
            }
            // Gone, moved by someone else, or archived/restored meanwhile: the new prefix is this move's alone, so
            // its copies are unreferenced and nobody else will point at them.
            Ok(false) => {
                self.delete_keys(copied).await;
                false
            }
            // The re-point may have happened with only its answer lost: the copies stay (unreferenced at worst), the
            // originals too, and the row is read again by the next call.
            Err(error) => {
                log_cleanup_failure(&picture.prefix, &error);
                false
            }
        }
    }

    /// The active picture of a user in one size, for anyone (profile pictures are public).
    ///
    /// # Errors
    /// [`PictureError::NotFound`] when the user has no picture, or a dependency failure.
    pub async fn serve(&self, user_id: UserId, size: PictureSize) -> Result<ServedPicture, PictureError> {
        let active = || self.ports.pictures().active_picture(user_id);
        self.fetch_current(active, size).await
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
        let target = self.picture_target(actor, user_id).await?;
        let version = || async {
            let archived = self.ports.pictures().archived_pictures(target.id).await?;
            Ok(archived.into_iter().find(|picture| picture.id == version))
        };
        self.fetch_current(version, size).await
    }

    /// Reads a picture's row with `read`, then its object. A move may re-point the row and delete the objects it
    /// named between those two reads; so when the object is missing, the row is read once more and, if it has moved
    /// meanwhile, the object is fetched from its new place. A second move in that window is not followed (moves
    /// happen only after an upload, deletion or restore, each a request of its own).
    async fn fetch_current<F, Fut>(&self, read: F, size: PictureSize) -> Result<ServedPicture, PictureError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<StoredPicture>, PortError>>,
    {
        let picture = read().await?.ok_or(PictureError::NotFound)?;
        if let Some(served) = self.fetch(&picture, size).await? {
            return Ok(served);
        }
        match read().await? {
            Some(again) if again.prefix != picture.prefix => {
                self.fetch(&again, size).await?.ok_or(PictureError::NotFound)
            }
            _ => Err(PictureError::NotFound),
        }
    }

    /// One size of a picture from where its row says; `None` when the size or its object is missing.
    async fn fetch(&self, picture: &StoredPicture, size: PictureSize) -> Result<Option<ServedPicture>, PortError> {
        let Some(variant) = picture.variant(size) else {
            return Ok(None);
        };
        let Some(object) = self.ports.objects().get(StoredPicture::key_under(&picture.prefix, variant)).await? else {
            return Ok(None);
        };
        Ok(Some(ServedPicture {
            bytes: object.bytes,
            content_type: variant.content_type.clone(),
            sha256: variant.sha256.clone(),
            extension: variant.extension(),
        }))
    }

    /// The ETag of the active picture in one size, without reading the object (for `If-None-Match`).
    ///
    /// # Errors
    /// [`PictureError::NotFound`] when the user has no picture, or a dependency failure.
    pub async fn etag(&self, user_id: UserId, size: PictureSize) -> Result<String, PictureError> {
        let picture = self.ports.pictures().active_picture(user_id).await?.ok_or(PictureError::NotFound)?;
        Ok(picture.variant(size).ok_or(PictureError::NotFound)?.sha256.clone())
    }

    /// Archives the active picture; `profile_picture_url` becomes null.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] when there is no active picture or no visible user, or a dependency failure.
    pub async fn delete(&self, actor: &Principal, user_id: UserId) -> Result<(), PictureError> {
        let target = self.picture_target(actor, user_id).await?;
        let event = self.event_by(EventType::PictureDeleted, actor, target.id);
        self.ports
            .pictures()
            .archive_active_picture(target.id, self.now(), vec![event])
            .await?
            .ok_or(PictureError::NotFound)?;
        self.moves.raise();
        Ok(())
    }

    /// The archived pictures, newest first.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] for an invisible user, or a dependency failure.
    pub async fn history(&self, actor: &Principal, user_id: UserId) -> Result<Vec<StoredPicture>, PictureError> {
        let target = self.picture_target(actor, user_id).await?;
        Ok(self.ports.pictures().archived_pictures(target.id).await?)
    }

    /// Makes an archived picture active again; the active one goes to the archive.
    ///
    /// # Errors
    /// [`PictureError::NotFound`] for an unknown version or invisible user, or a dependency failure.
    pub async fn restore(&self, actor: &Principal, user_id: UserId, version: Uuid) -> Result<User, PictureError> {
        let target = self.picture_target(actor, user_id).await?;
        self.ports
            .pictures()
            .restore_picture(
                target.id,
                version,
                self.now(),
                vec![
                    self.event_by(EventType::PictureRestored, actor, target.id)
                        .detail("picture_id", version.to_string()),
                ],
            )
            .await?
            .ok_or(PictureError::NotFound)?;
        self.moves.raise();
        self.ports.users().find_user(target.id).await?.ok_or(PictureError::NotFound)
    }

    /// Deletes a user (their sessions, tokens and picture records go with the row), then their picture objects.
    pub(crate) async fn delete_user_with_pictures(
        &self,
        id: UserId,
        guard: Guard,
        events: Vec<AuditEvent>,
    ) -> Result<(), UpdateError> {
        self.ports.users().delete_user(id, guard, events).await?;
        self.remove_user_objects(id).await;
        Ok(())
    }

    /// Removes every object under the user's prefix, once the user is deleted (their picture rows went with them).
    /// Listing the prefix rather than the rows catches an upload that committed just before the deletion; one still
    /// in flight finds its user gone and removes its own objects. Failures are logged: what remains is unreferenced.
    async fn remove_user_objects(&self, user_id: UserId) {
        let prefix = format!("profile_pictures/{user_id}/");
        match self.ports.objects().list(prefix.clone()).await {
            Ok(keys) => self.delete_keys(keys).await,
            Err(error) => log_cleanup_failure(&prefix, &error),
        }
    }
}

/// Logs a storage step that failed without failing the request: what it leaves behind is unreferenced.
fn log_cleanup_failure(what: &str, error: &PortError) {
    tracing::warn!(object = what, error = %format!("{error:#}"), "picture storage clean-up step failed");
}
