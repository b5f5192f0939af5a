//! The threads password work runs on: threads of their own, at a lower scheduling priority than the rest of the
//! process.
//!
//! A hash is 15-20 ms of pure CPU, and a login flood keeps one busy on every core. On threads of equal priority the
//! kernel shares each core between the hashing and the HTTP workers, so a cheap read waits behind a slice of argon2
//! and its latency follows the flood. At a lower priority (a niceness of [`NICENESS`], Linux's per-thread nice
//! value) the kernel runs the workers, and Postgres, first whenever they have something to do, and the hashes take
//! the rest: with nothing else to run they still get every cycle, so a login costs no more, but a flood of logins no
//! longer slows the reads down. The price is the reverse order under a load of cheap requests that fills the cores
//! by itself: logins then wait (and, past the hasher's queue timeout, are refused with 503) instead of the reads.
//!
//! The threads are the blocking pool of a small tokio runtime kept for the life of the process, whose thread-start
//! hook sets the priority. The runtime is never driven: its blocking pool runs work handed to it from any runtime,
//! and the caller awaits the result where it is. The permits of [`Argon2Hasher`](super::Argon2Hasher) bound how many
//! of these threads are busy at once.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// The niceness of the password threads: below the default of 0, so a worker thread that wakes up takes the core at
/// once, and the hashing gets about a tenth of a core against each busy thread of default priority.
pub(super) const NICENESS: i32 = 10;

/// How long an idle password thread is kept before it exits (it is started again, with its priority, when needed).
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// The runtime whose blocking pool holds the password threads, built on first use; `None` if it could not be built.
static PASSWORD_THREADS: OnceLock<Option<Runtime>> = OnceLock::new();

/// Runs `work` on a password thread, or on the caller's runtime's blocking pool if those threads could not be had
/// (the work still runs, at the default priority).
pub(super) fn spawn<T, F>(work: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match PASSWORD_THREADS.get_or_init(build) {
        Some(runtime) => runtime.spawn_blocking(work),
        None => tokio::task::spawn_blocking(work),
    }
}

fn build() -> Option<Runtime> {
    Builder::new_current_thread()
        .thread_name("password-work")
        .thread_keep_alive(KEEP_ALIVE)
        .on_thread_start(lower_priority)
        .build()
        .inspect_err(|error| {
            tracing::warn!(%error, "no threads of their own for password hashing; hashing at the default priority");
        })
        .ok()
}

/// Lowers the priority of the calling thread to [`NICENESS`]. On Linux the nice value belongs to the thread, so the
/// rest of the process keeps its own.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICENESS) {
        tracing::warn!(%error, "could not lower the priority of a password hashing thread");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rustix::process::getpriority_process;
    use rustix::thread::gettid;

    use super::*;

    #[tokio::test]
    async fn password_work_runs_on_named_threads_of_lower_priority() {
        let caller = getpriority_process(Some(gettid())).unwrap();
        let (name, niceness) = spawn(|| {
            let name = std::thread::current().name().map(str::to_owned);
            (name, getpriority_process(Some(gettid())).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("password-work"));
        // A process started below it (a higher niceness) stays there: a thread may not raise its own priority.
        assert_eq!(niceness, caller.max(NICENESS));
        assert_eq!(getpriority_process(Some(gettid())).unwrap(), caller, "the caller's thread keeps its priority");
    }
}
