//! The image processor of user-management: turns untrusted upload bytes into metadata-free profile pictures.
//!
//! [`ImagePipeline`] implements the domain's [`ImageProcessor`](users_domain::ports::ImageProcessor) port. The type is
//! judged from the bytes alone (JPEG, PNG, GIF or WebP), the header dimensions are checked before a single pixel is
//! decoded, decoding runs under `image::Limits`, the EXIF orientation is applied, and three sizes are re-encoded from
//! the pixels, so EXIF/GPS, ICC and XMP payloads and anything appended to the file never reach storage. The CPU work
//! runs on threads of its own at a lower scheduling priority, behind a semaphore, and a caller that cannot get a slot
//! in time is told [`ImageError::Busy`](users_domain::ports::ImageError::Busy) rather than queueing without bound.

mod format;
mod jpeg;
mod pipeline;
mod process;
#[cfg(test)]
mod test_images;

pub use pipeline::{ImagePipeline, PipelineConfig};
