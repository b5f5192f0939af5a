//! The background task that moves picture objects between the active and the archive prefix.
//!
//! An upload, a deletion or a restore only records the move in the picture's row, in its own transaction, and
//! answers; this task then does it (`Service::move_pictures`). The service wakes it at once after such a change,
//! and it also looks every [`POLL_INTERVAL`] by itself, for the moves another instance recorded and did not get
//! to, or that a crash or a storage failure left behind. Several instances may look at the same moment: a move
//! re-points a row only if it is still where it started, so the worst case is a copy done twice and removed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::background::{Background, Round};
use crate::state::AppService;

/// How often the task looks for recorded moves when nothing woke it.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Moves done per round.
const BATCH: u32 = 20;

/// The running mover; [`PictureMover::stop`] lets the round in flight (at most `BATCH` moves) finish, then ends it.
#[derive(Debug)]
pub struct PictureMover(Background);

impl PictureMover {
    /// The service with its move signal wired to a new mover's wake-up, and that mover started.
    pub fn start(service: AppService) -> (AppService, Self) {
        let wake = Arc::new(Notify::new());
        let signal = Arc::clone(&wake);
        let service = service.on_pictures_to_move(move || signal.notify_one());
        let mover = service.clone();
        let task = Background::spawn("picture mover", POLL_INTERVAL, wake, move |stop| {
            let mover = mover.clone();
            async move {
                match mover.move_pictures_until(BATCH, || stop.is_set()).await {
                    Ok(0) => Round::Idle,
                    Ok(moved) => {
                        tracing::debug!(moved, "picture objects moved");
                        Round::Busy
                    }
                    Err(error) => {
                        let error = anyhow::Error::new(error);
                        tracing::warn!(error = %format!("{error:#}"), "reading the picture moves to do failed");
                        Round::Failed
                    }
                }
            }
        });
        (service, Self(task))
    }

    /// Asks the task to stop after the round in flight and waits until it has. Moves not done yet stay recorded
    /// for the next start (or another instance).
    pub async fn stop(self) {
        self.0.stop().await;
    }
}
