//! Profile pictures: what an uploaded image becomes, and the port that turns untrusted bytes into it.
//!
//! An upload is never stored as sent. The image processor judges the type from the bytes, decodes within limits,
//! applies the orientation, and re-encodes three sizes, so metadata (EXIF, GPS) and anything appended to the file
//! are gone before a byte reaches storage.

use std::future::Future;

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
pub enum ImageError {
    /// The bytes are not JPEG, PNG, GIF or WebP (judged from the content, never the name or declared type).
    #[error("only JPEG, PNG, GIF and WebP images are accepted")]
    UnsupportedType,
    /// A recognised type that does not decode, or dimensions outside the limits or the pixel budget.
    #[error("{0}")]
    Invalid(String),
    /// Too many images are being processed; try again shortly.
    #[error("image processing is saturated")]
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
