//! The loop the server's background tasks run (the outbox, webhook deliveries, picture moves): a round, then, when
//! the round found nothing to do, a pause until the poll interval has passed or someone wakes the task. After a
//! round that failed (its database or server unreachable) the pause doubles with each failure in a row, up to
//! [`MAX_BACKOFF`], so an outage is not hammered (nor logged) twice a second. A stop is asked by a flag and a
//! wake-up and takes effect between rounds; a round that handles many items can also look at the flag between them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long [`Background::stop`] waits for the round in flight; then the task is cut off where it is (what it
/// had claimed goes back to the queue when its lease runs out).
pub const STOP_LIMIT: Duration = Duration::from_secs(15);

/// The longest pause after failed rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a round came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// It did some work: the next round follows at once.
    Busy,
    /// It found nothing to do: the next round after the poll interval, or sooner when woken.
    Idle,
    /// It could not work (an error it has logged, or a panic): the next round after a pause that doubles with each
    /// failure in a row (see [`pause_after_failures`]), or sooner when woken.
    Failed,
}

/// The pause after `failures` failed rounds in a row: `poll`, then twice that, four times, ... at most
/// [`MAX_BACKOFF`] (and never shorter than `poll`).
#[must_use]
pub fn pause_after_failures(poll: Duration, failures: u32) -> Duration {
    let factor = 1_u32 << failures.saturating_sub(1).min(16);
    poll.saturating_mul(factor).min(MAX_BACKOFF.max(poll))
}

/// Whether the task was asked to stop, for a round to look at between its items.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// True once [`Background::stop`] was called.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A running background task.
#[derive(Debug)]
pub struct Background {
    name: &'static str,
    stop: StopFlag,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Background {
    /// Spawns a task running `round` again and again; what each round came to ([`Round`]) sets the pause before
    /// the next: none after a busy round, `poll` after an idle one, a growing one after failures, each cut short by
    /// `wake`.
    pub fn spawn<F, Fut>(name: &'static str, poll: Duration, wake: Arc<Notify>, mut round: F) -> Self
    where
        F: FnMut(StopFlag) -> Fut + Send + 'static,
        Fut: Future<Output = Round> + Send,
    {
        let stop = StopFlag(Arc::new(AtomicBool::new(false)));
        let (task_stop, task_wake) = (stop.clone(), Arc::clone(&wake));
        let task = tokio::spawn(async move {
            let mut failures = 0_u32;
            while !task_stop.is_set() {
                // Whatever the round held is dropped by the unwinding itself; nothing of ours is left half-changed.
                let outcome =
                    AssertUnwindSafe(round(task_stop.clone())).catch_unwind().await.unwrap_or_else(|_panic| {
                        // The payload is not logged: the panic hook has printed it, and it may quote what was handled.
                        tracing::error!(task = name, "a background round panicked; the task goes on after a pause");
                        metrics::counter!("background_round_panics_total", "task" => name).increment(1);
                        Round::Failed
                    });
                let pause = match outcome {
                    Round::Busy => {
                        failures = 0;
                        continue;
                    }
                    Round::Idle => {
                        failures = 0;
                        poll
                    }
                    Round::Failed => {
                        failures = failures.saturating_add(1);
                        pause_after_failures(poll, failures)
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = task_wake.notified() => {}
                }
            }
        });
        Self { name, stop, wake, task }
    }

    /// Asks the task to stop after its round in flight and waits until it has, or cuts it off after
    /// [`STOP_LIMIT`].
    pub async fn stop(self) {
        self.stop.0.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let mut task = self.task;
        match tokio::time::timeout(STOP_LIMIT, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(task = self.name, %error, "background task ended abnormally"),
            Err(_) => {
                tracing::warn!(
                    task = self.name,
                    limit_s = STOP_LIMIT.as_secs(),
                    "round still running at the stop limit; cut off"
                );
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;

    /// A task on an hour-long poll whose idle rounds report their number (from 1) and count themselves in the
    /// returned counter; round `panicking` panics after reporting.
    fn counting_task(panicking: usize) -> (Background, Arc<Notify>, UnboundedReceiver<usize>, Arc<AtomicUsize>) {
        let rounds = Arc::new(AtomicUsize::new(0));
        let (counted, wake) = (Arc::clone(&rounds), Arc::new(Notify::new()));
        let (ran, ran_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = Background::spawn("test", Duration::from_secs(3600), Arc::clone(&wake), move |_| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let ran = ran.clone();
            async move {
                let _ = ran.send(n);
                assert!(n != panicking, "round {n} fails");
                Round::Idle
            }
        });
        (task, wake, ran_rx, rounds)
    }

    #[tokio::test]
    async fn an_idle_round_waits_for_a_wake_up_and_stop_ends_the_task() {
        let (task, wake, mut ran, rounds) = counting_task(0);
        assert_eq!(ran.recv().await, Some(1));
        wake.notify_one();
        assert_eq!(ran.recv().await, Some(2), "woken before the hour-long poll");
        task.stop().await;
        assert_eq!(rounds.load(Ordering::SeqCst), 2, "no round after the stop");
    }

    #[tokio::test]
    async fn a_round_that_panics_does_not_end_the_task() {
        let (task, wake, mut ran, _rounds) = counting_task(1);
        assert_eq!(ran.recv().await, Some(1));
        wake.notify_one();
        assert_eq!(ran.recv().await, Some(2), "the task ran again after the panic");
        task.stop().await;
    }

    #[test]
    fn the_pause_after_failures_doubles_from_the_poll_interval_up_to_the_cap() {
        let poll = Duration::from_millis(500);
        let pauses: Vec<u128> = (1..=8).map(|failures| pause_after_failures(poll, failures).as_millis()).collect();
        assert_eq!(pauses, [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        assert_eq!(pause_after_failures(poll, u32::MAX), MAX_BACKOFF);
        assert_eq!(pause_after_failures(Duration::from_secs(60), 3), Duration::from_secs(60), "never below the poll");
    }

    #[tokio::test]
    async fn failed_rounds_in_a_row_wait_longer_each_time() {
        let poll = Duration::from_millis(10);
        let (ran, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = Background::spawn("test", poll, Arc::new(Notify::new()), move |_| {
            let _ = ran.send(tokio::time::Instant::now());
            async { Round::Failed }
        });
        let mut starts = Vec::new();
        for _ in 0..4 {
            starts.push(ran_rx.recv().await.unwrap());
        }
        for (gap, failures) in starts.windows(2).map(|pair| pair[1] - pair[0]).zip(1..) {
            // A sleep never ends early, so each gap is at least the pause its failures call for.
            assert!(gap >= pause_after_failures(poll, failures), "gap {gap:?} after {failures} failure(s)");
        }
        task.stop().await;
    }
}
