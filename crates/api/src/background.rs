//! The loop the server's background tasks run (the outbox, webhook deliveries, picture moves): a round, then, when
//! the round found nothing to do, a pause until the poll interval has passed or someone wakes the task. A stop is
//! asked by a flag and a wake-up and takes effect between rounds; a round that handles many items can also look at
//! the flag between them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

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
    /// Spawns a task running `round` again and again. `round` says whether it found anything to do: a busy round is
    /// followed by the next one at once, an idle one by a pause of `poll`, cut short by `wake`.
    pub fn spawn<F, Fut>(name: &'static str, poll: Duration, wake: Arc<Notify>, mut round: F) -> Self
    where
        F: FnMut(StopFlag) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let stop = StopFlag(Arc::new(AtomicBool::new(false)));
        let (task_stop, task_wake) = (stop.clone(), Arc::clone(&wake));
        let task = tokio::spawn(async move {
            while !task_stop.is_set() {
                // Whatever the round held is dropped by the unwinding itself; nothing of ours is left half-changed.
                let busy = AssertUnwindSafe(round(task_stop.clone())).catch_unwind().await.unwrap_or_else(|_panic| {
                    // The payload is not logged: the panic hook has printed it, and it may quote what was handled.
                    tracing::error!(task = name, "a background round panicked; the task goes on after a pause");
                    metrics::counter!("background_round_panics_total", "task" => name).increment(1);
                    false
                });
                if !busy {
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        () = task_wake.notified() => {}
                    }
                }
            }
        });
        Self { name, stop, wake, task }
    }

    /// Asks the task to stop after its round in flight and waits until it has.
    pub async fn stop(self) {
        self.stop.0.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        if let Err(error) = self.task.await {
            tracing::warn!(task = self.name, %error, "background task ended abnormally");
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
                false
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
}
