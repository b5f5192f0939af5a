//! The background task that moves picture objects between the active and the archive prefix.
//!
//! An upload, a deletion or a restore only records the move in the picture's row, in its own transaction, and
//! answers; this task then does it (`Service::move_pictures`). The service wakes it at once after such a change,
//! and it also looks every [`POLL_INTERVAL`] by itself, for the moves another instance recorded and did not get
//! to, or that a crash or a storage failure left behind. Several instances may look at the same moment: a move
//! re-points a row only if it is still where it started, so the worst case is a copy done twice and removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::state::AppService;

/// How often the task looks for recorded moves when nothing woke it.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Moves done per round.
const BATCH: u32 = 20;

/// The running mover; [`PictureMover::stop`] lets the round in flight (at most `BATCH` moves) finish, then ends it.
#[derive(Debug)]
pub struct PictureMover {
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl PictureMover {
    /// The service with its move signal wired to a new mover's wake-up, and that mover started.
    pub fn start(service: AppService) -> (AppService, Self) {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let signal = Arc::clone(&wake);
        let service = service.on_pictures_to_move(move || signal.notify_one());
        let (task_stop, task_wake, mover) = (Arc::clone(&stop), Arc::clone(&wake), service.clone());
        let task = tokio::spawn(async move {
            while !task_stop.load(Ordering::Relaxed) {
                let moved = match mover.move_pictures(BATCH).await {
                    Ok(moved) => moved,
                    Err(error) => {
                        let error = anyhow::Error::new(error);
                        tracing::warn!(error = %format!("{error:#}"), "reading the picture moves to do failed");
                        0
                    }
                };
                if moved > 0 {
                    tracing::debug!(moved, "picture objects moved");
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                    () = task_wake.notified() => {}
                }
            }
        });
        (service, Self { stop, wake, task })
    }

    /// Asks the task to stop after the round in flight and waits until it has. Moves not done yet stay recorded
    /// for the next start (or another instance).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "picture mover ended abnormally");
        }
    }
}
