//! Profile pictures: what an uploaded image becomes, the port that turns untrusted bytes into it, and the ports
//! that keep picture records and their objects.
//!
//! An upload is never stored as sent. The image processor judges the type from the bytes, decodes within limits,
//! applies the orientation, and re-encodes three sizes, so metadata (EXIF, GPS) and anything appended to the file
//! are gone before a byte reaches storage.

use std::future::Future;

use time::OffsetDateTime;

use super::PortError;
use crate::audit::AuditEvent;
use crate::user::UserId;

/// The largest edge of the `original` size.
pub const ORIGINAL_EDGE: u32 = 1024;
/// The largest edge of the `medium` size.
pub const MEDIUM_EDGE: u32 = 256;
/// The largest edge of the `thumb` size.
pub const THUMB_EDGE: u32 = 64;
/// The smallest accepted width or height of an upload.
pub const MIN_DIMENSION: u32 = 10;
/// The largest accepted width or height of an upload.
pub const MAX_DIMENSION: u32 = 5000;
/// The largest accepted number of pixels of an upload (the pixel budget).
pub const MAX_PIXELS: u64 = 16_777_216;

/// The sizes every picture is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PictureSize {
    /// At most [`ORIGINAL_EDGE`] px on the longer edge.
    Original,
    /// At most [`MEDIUM_EDGE`] px.
    Medium,
    /// At most [`THUMB_EDGE`] px.
    Thumb,
}

impl PictureSize {
    /// Every size.
    pub const ALL: [Self; 3] = [Self::Original, Self::Medium, Self::Thumb];

    /// The name used in URLs and object keys.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Medium => "medium",
            Self::Thumb => "thumb",
        }
    }

    /// Parses a `size` query value.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|size| size.as_str() == raw)
    }

    /// The longest edge of this size.
    #[must_use]
    pub const fn max_edge(self) -> u32 {
        match self {
            Self::Original => ORIGINAL_EDGE,
            Self::Medium => MEDIUM_EDGE,
            Self::Thumb => THUMB_EDGE,
        }
    }
}

/// One re-encoded size of a picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedImage {
    /// The encoded bytes, free of metadata.
    pub bytes: Vec<u8>,
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// A processed upload: the three sizes, each fitting within its edge, aspect ratio kept, never enlarged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedImage {
    /// At most 1024 px.
    pub original: EncodedImage,
    /// At most 256 px.
    pub medium: EncodedImage,
    /// At most 64 px.
    pub thumb: EncodedImage,
}

impl ProcessedImage {
    /// The encoding of one size.
    #[must_use]
    pub const fn size(&self, size: PictureSize) -> &EncodedImage {
        match size {
            PictureSize::Original => &self.original,
            PictureSize::Medium => &self.medium,
            PictureSize::Thumb => &self.thumb,
        }
    }
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The bytes are not JPEG, PNG, GIF or WebP (judged from the content, never the name or declared type).
    #[error("only JPEG, PNG, GIF and WebP images are accepted")]
    UnsupportedType,
    /// A recognised type that does not decode, or dimensions outside the limits or the pixel budget.
    #[error("{0}")]
    Invalid(String),
    /// Too many images are being processed, or the processor is stopping; try again shortly.
    #[error("image processing is saturated or stopping")]
    Busy,
}

/// Turns untrusted upload bytes into a [`ProcessedImage`].
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait ImageProcessor: Send + Sync + 'static {
    /// Detects the type from the bytes, decodes with limits, applies the orientation and re-encodes every size.
    /// CPU-heavy work runs off the async executor with bounded concurrency.
    ///
    /// # Errors
    /// [`ImageError`] as described on its variants.
    fn process(&self, bytes: Vec<u8>) -> impl Future<Output = Result<ProcessedImage, ImageError>> + Send;
}

/// One stored size of a picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PictureVariant {
    /// Which size.
    pub size: PictureSize,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the bytes, hex: the strong `ETag`.
    pub sha256: String,
}

impl PictureVariant {
    /// The file extension of the encoding.
    #[must_use]
    pub fn extension(&self) -> &'static str {
        if self.content_type == "image/png" { "png" } else { "jpg" }
    }
}

/// A picture as recorded: its sizes and where its objects live now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPicture {
    /// The picture's id (the `version_id` of the history routes).
    pub id: uuid::Uuid,
    /// Whose picture it is.
    pub user_id: UserId,
    /// When it was uploaded.
    pub created_at: OffsetDateTime,
    /// Whether it is in the archive (history) rather than active.
    pub archived: bool,
    /// The key prefix its objects are stored under now.
    pub prefix: String,
    /// The three sizes.
    pub variants: Vec<PictureVariant>,
}

impl StoredPicture {
    /// The size asked for, if recorded.
    #[must_use]
    pub fn variant(&self, size: PictureSize) -> Option<&PictureVariant> {
        self.variants.iter().find(|variant| variant.size == size)
    }

    /// The object key of one size under a prefix.
    #[must_use]
    pub fn key_under(prefix: &str, variant: &PictureVariant) -> String {
        format!("{prefix}/{}.{}", variant.size.as_str(), variant.extension())
    }

    /// The object keys of every size, where they are now.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        self.variants.iter().map(|variant| Self::key_under(&self.prefix, variant)).collect()
    }

    /// A prefix for an active picture: `profile_pictures/{user_id}/{place}`. `place` is the picture's id when it is
    /// uploaded, and a fresh id each time its objects move back from the archive, so no two placements of a picture
    /// ever share a key.
    #[must_use]
    pub fn active_prefix(user_id: UserId, place: uuid::Uuid) -> String {
        format!("profile_pictures/{user_id}/{place}")
    }

    /// A prefix for an archived picture: `profile_pictures/{user_id}/archive/{place}`, `place` a fresh id for each
    /// move into the archive (see [`StoredPicture::active_prefix`]).
    #[must_use]
    pub fn archive_prefix(user_id: UserId, place: uuid::Uuid) -> String {
        format!("profile_pictures/{user_id}/archive/{place}")
    }

    /// Whether `prefix` is under a user's archive (`profile_pictures/{user_id}/archive/...`).
    #[must_use]
    pub fn is_archive_prefix(prefix: &str) -> bool {
        prefix.split('/').nth(2) == Some("archive")
    }

    /// Whether the objects are where the picture's state says: under the archive when it is archived, under the
    /// active prefix when it is not. A picture that is not is waiting for its move (see
    /// [`PictureRecords::misplaced_pictures`]).
    #[must_use]
    pub fn is_placed(&self) -> bool {
        self.archived == Self::is_archive_prefix(&self.prefix)
    }
}

/// Why a picture could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum PictureWriteError {
    /// The user was deleted meanwhile.
    #[error("user not found")]
    UserGone,
    /// The repository failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Storage of picture records (the objects themselves go to the [`PictureStore`]). Deleting a user deletes their
/// records with them.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait PictureRecords: Send + Sync + 'static {
    /// Records a new active picture (with `events`) in one transaction: the user's current active picture (if any) becomes
    /// archived and is returned, the new one becomes active, and `users.profile_picture_id` points to it.
    ///
    /// # Errors
    /// [`PictureWriteError::UserGone`] when the user no longer exists; then nothing is stored.
    fn insert_active_picture(
        &self,
        picture: StoredPicture,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Option<StoredPicture>, PictureWriteError>> + Send;

    /// Pictures whose objects are not where their state says ([`StoredPicture::is_placed`] is false): archived by
    /// an upload, a deletion or a restore whose move to the archive (or back) is still to be done. They are recorded
    /// as such by the very transaction that changed their state, so a move survives a crash of whoever was to do it.
    /// At most `limit`, in no promised order; a store that may hold many should vary it from call to call (the
    /// Postgres adapter takes them at random), so that moves that keep failing cannot take every place of every
    /// call while others wait.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn misplaced_pictures(&self, limit: u32) -> impl Future<Output = Result<Vec<StoredPicture>, PortError>> + Send;

    /// Records that the objects of picture `id` now live under `to`, if the picture is still recorded under `from`
    /// and still `archived` (`to` being a prefix of the kind that state calls for); `Ok(false)`, changing nothing,
    /// when it is not: the picture is gone, someone else moved it first, or it was archived or restored meanwhile.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn finish_move(
        &self,
        id: uuid::Uuid,
        from: String,
        to: String,
        archived: bool,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// The user's active picture.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn active_picture(&self, user_id: UserId) -> impl Future<Output = Result<Option<StoredPicture>, PortError>> + Send;

    /// The user's archived pictures, newest first.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn archived_pictures(&self, user_id: UserId) -> impl Future<Output = Result<Vec<StoredPicture>, PortError>> + Send;

    /// Archives the active picture and clears `users.profile_picture_id`, with `events` (written only when there was
    /// an active picture), in one transaction; returns it.
    ///
    /// # Errors
    /// [`PortError`] when storage fails; `Ok(None)` when there was no active picture.
    fn archive_active_picture(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Option<StoredPicture>, PortError>> + Send;

    /// Makes an archived picture active again (with `events`, written only when it was found), in one transaction: the current active one (returned second)
    /// becomes archived and `users.profile_picture_id` points to the restored one (returned first).
    ///
    /// # Errors
    /// [`PortError`] when storage fails; `Ok(None)` when the user has no such archived picture.
    fn restore_picture(
        &self,
        user_id: UserId,
        id: uuid::Uuid,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Option<(StoredPicture, Option<StoredPicture>)>, PortError>> + Send;
}

/// An image ready to store: already decoded, checked and re-encoded by the picture pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's key, generated by the domain (`profile_pictures/{user_id}/...`), never from user input.
    pub key: String,
    /// The MIME type of the encoding.
    pub content_type: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Object storage for profile pictures (S3/MinIO or the local file system).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait PictureStore: Send + Sync + 'static {
    /// Stores an object, replacing any object with the same key.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn put(&self, object: StoredObject) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Reads an object; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn get(&self, key: String) -> impl Future<Output = Result<Option<StoredObject>, PortError>> + Send;

    /// Copies an object to another key within the store, without reading it through the service (S3's
    /// `CopyObject`), replacing any object with that key; `Ok(false)` when there is no object at `from`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn copy(&self, from: String, to: String) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Deletes an object; deleting a missing object succeeds.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn delete(&self, key: String) -> impl Future<Output = Result<(), PortError>> + Send;

    /// The keys of every object under `prefix` (which ends with `/`).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn list(&self, prefix: String) -> impl Future<Output = Result<Vec<String>, PortError>> + Send;

    /// Checks that storage answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    fn ping(&self) -> impl Future<Output = Result<(), PortError>> + Send;
}
