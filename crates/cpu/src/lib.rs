//! Threads of their own, at a lower scheduling priority, for the CPU-bound work of user-management: password hashing
//! and the strength estimate (`users-crypto`), decoding and re-encoding pictures (`users-images`).
//!
//! A hash is 15-20 ms of pure CPU and a picture about 40 ms, and a flood of either keeps one running on every core.
//! On threads of equal priority the kernel shares each core between that work and the HTTP workers, so a cheap read
//! waits behind slices of it and its latency follows the flood. At a lower priority (a niceness of [`NICENESS`],
//! Linux's per-thread nice value) the kernel runs the workers, and Postgres, first whenever they have something to
//! do, and the heavy work takes the rest: with nothing else to run it still gets every cycle, so a login or an
//! upload costs no more, but a flood of them no longer slows the reads down. The price is the reverse order under a
//! load of cheap requests that fills the cores by itself: the heavy work then waits (and, past its queue timeout, is
//! refused with 503) instead of the reads.
//!
//! Each [`CpuThreads`] is the blocking pool of a small tokio runtime built on first use and kept for the life of the
//! process, whose thread-start hook sets the priority. The runtime is never driven: its blocking pool runs work handed
//! to it from any runtime, and the caller awaits the result where it is. The callers bound how many of the threads
//! are busy at once (their semaphores).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// The niceness of the threads: below the default of 0, so a worker thread that wakes up takes the core at once,
/// and the heavy work gets about a tenth of a core against each busy thread of default priority.
pub const NICENESS: i32 = 10;

/// How long an idle thread is kept before it exits (it is started again, with its priority, when needed).
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// A named set of lower-priority threads, meant for a `static`: built on first use, kept for the life of the process.
#[derive(Debug)]
pub struct CpuThreads {
    name: &'static str,
    runtime: OnceLock<Option<Runtime>>,
}

impl CpuThreads {
    /// Threads called `name` (as the operating system and a debugger show them), not started yet.
    #[must_use]
    pub const fn new(name: &'static str) -> Self {
        Self { name, runtime: OnceLock::new() }
    }

    /// Runs `work` on one of these threads, or on the caller's runtime's blocking pool if they could not be had
    /// (the work still runs, at the default priority).
    pub fn spawn<T, F>(&'static self, work: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.runtime.get_or_init(|| self.build()) {
            Some(runtime) => runtime.spawn_blocking(work),
            None => tokio::task::spawn_blocking(work),
        }
    }

    fn build(&self) -> Option<Runtime> {
        let name = self.name;
        Builder::new_current_thread()
            .thread_name(name)
            .thread_keep_alive(KEEP_ALIVE)
            .on_thread_start(move || lower_priority(name))
            .build()
            .inspect_err(|error| tracing::warn!(%error, threads = name, "no threads of their own; running at the default priority"))
            .ok()
    }
}

/// Lowers the priority of the calling thread to [`NICENESS`]. On Linux the nice value belongs to the thread, so the
/// rest of the process keeps its own.
fn lower_priority(name: &'static str) {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICENESS) {
        tracing::warn!(%error, threads = name, "could not lower a thread's priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rustix::process::getpriority_process;
    use rustix::thread::gettid;

    use super::*;

    static TEST_THREADS: CpuThreads = CpuThreads::new("test-work");

    #[tokio::test]
    async fn work_runs_on_named_threads_of_lower_priority() {
        let caller = getpriority_process(Some(gettid())).unwrap();
        let (name, niceness) = TEST_THREADS
            .spawn(|| {
                let name = std::thread::current().name().map(str::to_owned);
                (name, getpriority_process(Some(gettid())).unwrap())
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-work"));
        // A process started below it (a higher niceness) stays there: a thread may not raise its own priority.
        assert_eq!(niceness, caller.max(NICENESS));
        assert_eq!(getpriority_process(Some(gettid())).unwrap(), caller, "the caller's thread keeps its priority");
    }
}
