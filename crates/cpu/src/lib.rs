//! Threads of their own, at a lower scheduling priority, for the CPU-bound work of user-management: password hashing
//! and the strength estimate (`users-crypto`), decoding and re-encoding pictures (`users-images`).
//!
//! A hash is 15-20 ms of pure CPU and a picture about 40 ms, and a flood of either keeps one running on every core.
//! On threads of equal priority the kernel shares each core evenly between that work and the HTTP workers, so a
//! cheap read waits behind slices of it. A few nice values lower (Linux's per-thread nice value, raised by
//! [`NICENESS`]) the heavy work weighs less than the workers in the kernel's fair shares: while both want a core,
//! the workers get more of it; with nothing else to run, the heavy work still gets every cycle, so a login or an
//! upload costs no more. It is a weight, not a strict order: under a flood of cheap requests the heavy work keeps a
//! share and goes on. The weights only compare threads of one scheduling group: Postgres in another container, or a
//! CPU quota on the service's own, is shared out by the cgroups' settings, whatever these threads' nice value.
//!
//! Each [`CpuThreads`] is the blocking pool of a small tokio runtime built on first use and kept for the life of the
//! process, whose thread-start hook sets the priority. The runtime is never driven: its blocking pool runs work handed
//! to it from any runtime, and the caller awaits the result where it is. The callers bound how many of the threads
//! are busy at once (their semaphores).

use std::sync::{Once, OnceLock};
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// How far below the rest of the process the threads run, in nice values: three steps, so that the heavy work
/// weighs about half as much as a thread of the process's own priority (the kernel's weights fall by about a
/// fifth per step). Measured against the default priority and against 6 and 10 (see `docs/performance.md`, "Latest
/// figures: a whole run, and CPU work at a lower priority"): with 3, `GET /me` during a flood of logins kept about
/// half of the gain that 10 gave, while logins sent during a flood of reads were as fast as before; with 6 and 10
/// those logins' p99 grew from about 0.2 s to 0.4-1.2 s.
pub const NICENESS: i32 = 3;

/// The highest nice value, the lowest priority, Linux allows.
#[cfg(target_os = "linux")]
const LOWEST: i32 = 19;

/// How long an idle thread is kept before it exits (it is started again, with its priority, when needed).
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// A named set of lower-priority threads, meant for a `static`: built on first use, kept for the life of the process.
#[derive(Debug)]
pub struct CpuThreads {
    name: &'static str,
    runtime: OnceLock<Option<Runtime>>,
    /// Whether a refused priority change was logged: said once per set, since whatever stops one thread (a seccomp
    /// filter, say) stops the next one too.
    warned: Once,
}

impl CpuThreads {
    /// Threads called `name` (as the operating system and a debugger show them), not started yet.
    #[must_use]
    pub const fn new(name: &'static str) -> Self {
        Self { name, runtime: OnceLock::new(), warned: Once::new() }
    }

    /// Runs `work` on one of these threads, or on the caller's runtime's blocking pool if they could not be had
    /// (the work still runs, at the default priority). `work` must be plain computation: the runtime it runs under
    /// is never driven, so a task it spawns never runs and a timer it starts panics.
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

    fn build(&'static self) -> Option<Runtime> {
        Builder::new_current_thread()
            .thread_name(self.name)
            .thread_keep_alive(KEEP_ALIVE)
            .on_thread_start(move || self.lower_priority())
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, threads = self.name, "no threads of their own; running at the default priority");
            })
            .ok()
    }

    /// Lowers the priority of the calling thread by [`NICENESS`] from where it is (a process started at nice 5 gets
    /// threads at 8), at most to the lowest. On Linux the nice value belongs to the thread, so the rest of the
    /// process keeps its own; elsewhere nothing is changed.
    fn lower_priority(&self) {
        #[cfg(target_os = "linux")]
        {
            use rustix::process::{getpriority_process, setpriority_process};
            let thread = Some(rustix::thread::gettid());
            let lowered = getpriority_process(thread)
                .and_then(|current| setpriority_process(thread, (current + NICENESS).min(LOWEST)));
            if let Err(error) = lowered {
                self.warned.call_once(|| {
                    tracing::warn!(%error, threads = self.name, "could not lower the threads' priority");
                });
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rustix::process::{getpid, getpriority_process, setpriority_process};
    use rustix::thread::gettid;

    use super::*;

    static TEST_THREADS: CpuThreads = CpuThreads::new("test-work");

    #[tokio::test]
    async fn work_runs_on_named_threads_of_lower_priority() {
        let main_thread = Some(getpid());
        let main = getpriority_process(main_thread).unwrap();
        // The test's thread first moves two steps down itself (which needs no privilege), so that a value set
        // relative to it differs from the same value set absolutely.
        let caller = (getpriority_process(Some(gettid())).unwrap() + 2).min(LOWEST);
        setpriority_process(Some(gettid()), caller).unwrap();
        let (name, niceness) = TEST_THREADS
            .spawn(|| {
                let name = std::thread::current().name().map(str::to_owned);
                (name, getpriority_process(Some(gettid())).unwrap())
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-work"));
        // Lowered from where the thread that started it was (it inherits that nice value), not set to a fixed value.
        assert_eq!(niceness, (caller + NICENESS).min(LOWEST));
        assert_eq!(getpriority_process(Some(gettid())).unwrap(), caller, "the caller's thread keeps its priority");
        assert_eq!(getpriority_process(main_thread).unwrap(), main, "and so does the process's main thread");
    }
}
