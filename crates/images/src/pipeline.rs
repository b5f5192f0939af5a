//! [`ImagePipeline`]: the async face of the image processor, bounding how many uploads are decoded at once.
//!
//! Decoding and resizing are CPU work of up to a few hundred milliseconds per upload, so they run on threads of their
//! own at a lower scheduling priority instead of an executor thread (see `users-cpu`: a burst of uploads must not slow
//! the cheap requests down), and a semaphore keeps the number in flight at about the number of cores. A caller that
//! cannot get a slot within the queue timeout gets [`ImageError::Busy`] instead of piling up.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinError;
use users_cpu::CpuThreads;
use users_domain::ports::{ImageError, ImageProcessor, ProcessedImage};

use crate::format::SourceFormat;
use crate::process;

/// The threads pictures are decoded and encoded on, below the priority of the HTTP workers.
static PICTURE_THREADS: CpuThreads = CpuThreads::new("picture-work");

/// How much image processing may run at once, and how long an upload waits for its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Uploads processed at the same time; values below 1 are treated as 1. Defaults to the available cores.
    pub max_concurrent: usize,
    /// How long an upload waits for a free slot before it is answered [`ImageError::Busy`]. Defaults to 5 s.
    pub queue_timeout: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_concurrent: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// The [`ImageProcessor`] of the service: type detection, limited decoding, orientation and re-encoding of three
/// sizes, with bounded concurrency. Cloning is cheap and clones share the same slots.
#[derive(Debug, Clone)]
pub struct ImagePipeline {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl ImagePipeline {
    /// A pipeline with `config`'s concurrency and queue timeout.
    #[must_use]
    pub fn new(config: PipelineConfig) -> Self {
        // Zero slots would refuse every upload, and tokio's semaphore panics above MAX_PERMITS.
        let permits = config.max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Self { permits: Arc::new(Semaphore::new(permits)), queue_timeout: config.queue_timeout }
    }

    /// Waits for a slot (at most the queue timeout, else [`ImageError::Busy`]), then runs `work` on a picture thread
    /// (see [`PICTURE_THREADS`]) while holding it. The inner error is the task's: `work` panicked, or it was cancelled
    /// (the runtime it ran on was shutting down).
    async fn run<T, F>(&self, work: F) -> Result<Result<T, JoinError>, ImageError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = match tokio::time::timeout(self.queue_timeout, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; if it were, no slot would ever come, which is what Busy says.
            Ok(Err(_)) | Err(_) => return Err(ImageError::Busy),
        };
        // The permit moves into the blocking task, so a caller that gives up does not free the slot while the CPU
        // is still busy with its upload.
        let task = PICTURE_THREADS.spawn(move || {
            let _permit = permit;
            work()
        });
        Ok(task.await)
    }
}

impl Default for ImagePipeline {
    fn default() -> Self {
        Self::new(PipelineConfig::default())
    }
}

impl ImageProcessor for ImagePipeline {
    async fn process(&self, bytes: Vec<u8>) -> Result<ProcessedImage, ImageError> {
        // Judging the type reads a few bytes; a file of the wrong type is answered at once, without taking a slot.
        let format = SourceFormat::detect(&bytes)?;
        self.run(move || process::process(format, &bytes)).await?.unwrap_or_else(|error| Err(failed(format, &error)))
    }
}

/// What an upload whose processing task ended without an answer is told.
fn failed(format: SourceFormat, error: &JoinError) -> ImageError {
    if error.is_cancelled() {
        // The runtime is shutting down: nothing was wrong with the upload, which may be tried again.
        return ImageError::Busy;
    }
    // A panic inside a decoder means input it could not cope with; the upload is refused, and we want to know about
    // it.
    tracing::error!(error = %error, format = format.name(), "image processing task failed");
    format.undecodable()
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, ImageFormat};

    use super::*;
    use crate::test_images::{gradient, to_bytes};

    fn jpeg() -> Vec<u8> {
        to_bytes(&DynamicImage::ImageRgb8(gradient(120, 80)), ImageFormat::Jpeg)
    }

    fn saturated(pipeline: &ImagePipeline) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&pipeline.permits).try_acquire_owned().unwrap()
    }

    #[tokio::test]
    async fn picture_work_runs_on_the_picture_threads() {
        let thread = ImagePipeline::default().run(|| std::thread::current().name().map(str::to_owned)).await;
        assert_eq!(thread.unwrap().unwrap().as_deref(), Some("picture-work"));
    }

    #[tokio::test]
    async fn a_panicked_task_refuses_the_upload_and_a_cancelled_one_asks_for_a_retry() {
        let panicked = tokio::spawn(async { panic!("decoder gave up") }).await.unwrap_err();
        assert_eq!(failed(SourceFormat::Png, &panicked), SourceFormat::Png.undecodable());

        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        let cancelled = cancelled.await.unwrap_err();
        assert!(cancelled.is_cancelled());
        assert_eq!(failed(SourceFormat::Png, &cancelled), ImageError::Busy);
    }

    #[tokio::test]
    async fn an_upload_is_processed_into_its_sizes() {
        let processed = ImagePipeline::default().process(jpeg()).await.unwrap();
        assert_eq!((processed.original.width, processed.original.height), (120, 80));
        assert_eq!(processed.thumb.content_type, "image/jpeg");
    }

    #[tokio::test]
    async fn a_saturated_pipeline_answers_busy_after_the_queue_timeout() {
        let pipeline =
            ImagePipeline::new(PipelineConfig { max_concurrent: 1, queue_timeout: Duration::from_millis(20) });
        let held = saturated(&pipeline);
        assert_eq!(pipeline.process(jpeg()).await, Err(ImageError::Busy));

        drop(held);
        assert!(pipeline.process(jpeg()).await.is_ok());
    }

    #[tokio::test]
    async fn a_wrong_type_is_refused_without_waiting_for_a_slot() {
        // A queue timeout this long would hang the test if the type check waited for the held slot.
        let pipeline =
            ImagePipeline::new(PipelineConfig { max_concurrent: 1, queue_timeout: Duration::from_secs(600) });
        let _held = saturated(&pipeline);
        assert_eq!(pipeline.process(b"<svg/>".to_vec()).await, Err(ImageError::UnsupportedType));
    }

    #[tokio::test]
    async fn the_slot_is_returned_after_a_refused_upload() {
        let pipeline = ImagePipeline::new(PipelineConfig { max_concurrent: 1, queue_timeout: Duration::from_secs(5) });
        assert!(matches!(pipeline.process(jpeg()[..100].to_vec()).await, Err(ImageError::Invalid(_))));
        assert_eq!(pipeline.permits.available_permits(), 1);
    }

    #[test]
    fn zero_concurrency_is_raised_to_one_slot() {
        let pipeline = ImagePipeline::new(PipelineConfig { max_concurrent: 0, ..PipelineConfig::default() });
        assert_eq!(pipeline.permits.available_permits(), 1);
    }

    #[test]
    fn the_default_queue_timeout_is_five_seconds() {
        let config = PipelineConfig::default();
        assert_eq!(config.queue_timeout, Duration::from_secs(5));
        assert!(config.max_concurrent >= 1);
    }
}
