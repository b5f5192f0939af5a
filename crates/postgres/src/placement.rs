//! [`ConnectionPlacement`]: which runtime drives the pooled connections.
//!
//! A connection of this adapter is a client plus a driver task that does its socket and TLS work; the driver runs on
//! the runtime that opened the connection, and every query wakes it there. An HTTP server such as actix-web serves
//! requests on worker threads, each with a runtime of its own, while start-up and the background tasks run on the
//! process's main runtime, whose threads are parked most of the time. A connection opened there and then used by
//! requests makes every one of its queries wake a parked thread twice (there and back): under load that cost about a
//! tenth of the server's CPU and showed as the main runtime's threads busy with other threads' queries.
//!
//! So the server registers its worker threads, and from then on every connection is opened (and driven) on one of
//! them: a worker opens its own connections itself, anyone else has the opening done on a worker in turn. A
//! connection opened before the first worker's runtime was known (by the signing keys, the bootstrap admin, the
//! background tasks' first rounds) is dropped the first time a worker checks it out, so the pool refills on the
//! workers.
//!
//! A worker's runtime is learnt the first time the worker checks a connection out or opens one, since the thread
//! may register from inside another runtime (see [`ConnectionPlacement::register_current_thread`]); until then
//! other threads open connections where they are.
//!
//! A connection driven on a worker dies with that worker's runtime when the server stops: whoever still uses it
//! then gets a connection error, and the pool opens a fresh one on the next checkout. So an embedding server
//! stops its background work and drains its connections before it stops its workers (the service's own `run_until`
//! does). A stopped worker is forgotten the first time opening on it fails.
//!
//! Without registered workers (the command-line tools, tests, an embedding application that does not register its
//! threads) connections are opened where they are needed, as before.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use diesel::ConnectionResult;
use diesel_async::AsyncPgConnection;
use tokio::runtime::Handle;

thread_local! {
    /// The placement this thread registered with as a worker (its address), 0 for none.
    static WORKER_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The placement whose list of worker runtimes holds this thread's runtime (its address), 0 for none.
    static RUNTIME_NOTED_FOR: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Where new pooled connections are opened: on the registered worker threads when there are any, else wherever
/// they are needed. Cheap to clone; clones share the registered workers.
#[derive(Clone, Default)]
pub struct ConnectionPlacement {
    inner: Arc<Workers>,
}

#[derive(Default)]
struct Workers {
    /// The runtimes of the registered worker threads, each with a serial number to forget it by, taken in turn
    /// by [`ConnectionPlacement::open`].
    handles: Mutex<Vec<(u64, Handle)>>,
    /// The serial number of the next worker to register.
    serial: std::sync::atomic::AtomicU64,
    /// The next of `handles` to open a connection on.
    next: std::sync::atomic::AtomicUsize,
    /// When the first worker's runtime became known: until then every connection was opened where it was needed
    /// (start-up, the background tasks' first rounds), so one opened before then is not on a worker.
    since: OnceLock<Instant>,
}

impl fmt::Debug for ConnectionPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workers = self.inner.handles.lock().map_or(0, |handles| handles.len());
        f.debug_struct("ConnectionPlacement").field("workers", &workers).finish()
    }
}

impl ConnectionPlacement {
    /// A placement with no worker registered yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the calling thread as a worker (an actix-web worker calls it from its app factory): it opens its
    /// own connections from now on, and opens other threads' in turn once its runtime is known. That runtime is
    /// taken the first time the thread checks a connection out or opens one, from inside the runtime it serves
    /// requests on, not at registration: actix-server 2.10 runs the app factories inside each worker's own runtime,
    /// but 2.6 ran them on the outer runtime, and other servers may too.
    pub fn register_current_thread(&self) {
        WORKER_OF.with(|worker_of| worker_of.set(self.key()));
    }

    /// On a worker whose runtime is not recorded yet, records the runtime the calling code runs in.
    fn note_worker_runtime(&self) {
        if !self.on_worker() || RUNTIME_NOTED_FOR.with(std::cell::Cell::get) == self.key() {
            return;
        }
        let Ok(handle) = Handle::try_current() else {
            return;
        };
        let serial = self.inner.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut handles) = self.inner.handles.lock() {
            handles.push((serial, handle));
        }
        self.inner.since.get_or_init(Instant::now);
        RUNTIME_NOTED_FOR.with(|noted| noted.set(self.key()));
    }

    /// Whether the calling thread is one of this placement's workers.
    fn on_worker(&self) -> bool {
        WORKER_OF.with(std::cell::Cell::get) == self.key()
    }

    /// This placement's identity for [`WORKER_OF`]: the address of its shared state, never 0.
    fn key(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Whether a connection opened at `created` should be dropped rather than handed to the calling thread: it
    /// is a worker, and the connection was opened before any worker's runtime was known (before then even the
    /// background tasks opened theirs where they ran), so it is driven elsewhere.
    pub(crate) fn misplaced(&self, created: Instant) -> bool {
        self.note_worker_runtime();
        self.on_worker() && self.inner.since.get().is_some_and(|since| created < *since)
    }

    /// Opens a connection with `connect` on this thread if it is a worker or no worker is registered, else on the
    /// next worker in turn. A worker whose runtime has stopped (its server shut down) is forgotten and the
    /// connection opened here instead.
    pub(crate) async fn open<F, Fut>(&self, connect: F) -> ConnectionResult<AsyncPgConnection>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ConnectionResult<AsyncPgConnection>> + Send + 'static,
    {
        if self.on_worker() {
            self.note_worker_runtime();
            return connect().await;
        }
        while let Some((serial, handle)) = self.next_worker() {
            // Aborted if this wait is given up (the pool's create timeout), so no connection attempt outlives it.
            match AbortOnDrop(handle.spawn(connect())).await {
                Ok(opened) => return opened,
                // The runtime dropped the task: it is shutting down.
                Err(error) if error.is_cancelled() => self.forget(serial),
                Err(_panicked) => {
                    return Err(diesel::ConnectionError::BadConnection("opening the connection panicked".to_owned()));
                }
            }
        }
        connect().await
    }

    /// The next registered worker's runtime, if any.
    fn next_worker(&self) -> Option<(u64, Handle)> {
        let handles = self.inner.handles.lock().ok()?;
        if handles.is_empty() {
            return None;
        }
        let turn = self.inner.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        handles.get(turn % handles.len()).cloned()
    }

    /// Drops a worker whose runtime is gone.
    fn forget(&self, stopped: u64) {
        if let Ok(mut handles) = self.inner.handles.lock() {
            handles.retain(|(serial, _)| *serial != stopped);
        }
    }
}

/// A spawned task, aborted when its handle is dropped before it finished.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread::ThreadId;
    use std::time::Duration;

    use diesel::ConnectionError;

    use super::*;

    /// A worker thread: a current-thread runtime registered with `placement`, serving until `stop` is sent.
    fn start_worker(
        placement: &ConnectionPlacement,
    ) -> (ThreadId, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (registered, is_registered) = mpsc::channel();
        let placement = placement.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                placement.register_current_thread();
                // Its first checkout or open records its runtime; connections it opens from then on are kept.
                placement.note_worker_runtime();
                assert!(!placement.misplaced(Instant::now()));
                registered.send(std::thread::current().id()).unwrap();
                let _ = stopped.await;
            });
        });
        let id = is_registered.recv_timeout(Duration::from_secs(10)).unwrap();
        (id, stop, thread)
    }

    /// Opens through `placement` with a connect that fails, and returns the thread the connect ran on.
    async fn thread_of_open(placement: &ConnectionPlacement) -> ThreadId {
        let ran_on = Arc::new(Mutex::new(None));
        let result = placement
            .open(|| {
                let ran_on = Arc::clone(&ran_on);
                async move {
                    *ran_on.lock().unwrap() = Some(std::thread::current().id());
                    Err(ConnectionError::BadConnection("not a real connection".to_owned()))
                }
            })
            .await;
        assert!(result.is_err(), "the connect's own result is returned");
        ran_on.lock().unwrap().expect("the connect ran")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_workers_a_connection_is_opened_where_it_is_needed() {
        let placement = ConnectionPlacement::new();
        assert_eq!(thread_of_open(&placement).await, std::thread::current().id());
        assert!(!placement.misplaced(Instant::now()), "nothing is misplaced before a worker registers");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn once_a_worker_registered_other_threads_open_their_connections_on_it() {
        let placement = ConnectionPlacement::new();
        let before_workers = Instant::now();
        let (worker, stop, thread) = start_worker(&placement);
        assert_eq!(thread_of_open(&placement).await, worker, "opened on the worker, not here");
        assert_eq!(thread_of_open(&placement).await, worker, "and again");
        // Off the workers nothing is dropped, even a connection opened before them.
        assert!(!placement.misplaced(before_workers));
        stop.send(()).unwrap();
        thread.join().unwrap();
    }

    /// As actix-server 2.6 did inside a tokio runtime: the app factory (which registers) runs on the worker thread
    /// but inside the outer runtime, and the worker then serves on a runtime of its own. Connections must be opened
    /// on that own runtime, not on the outer one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_registered_from_inside_another_runtime_opens_on_its_own() {
        let placement = ConnectionPlacement::new();
        let outer = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let outer_handle = outer.handle().clone();
        let (registered, is_registered) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker_placement = placement.clone();
        let thread = std::thread::spawn(move || {
            outer_handle.block_on(async { worker_placement.register_current_thread() });
            let own = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            own.block_on(async move {
                worker_placement.note_worker_runtime();
                assert!(!worker_placement.misplaced(Instant::now()), "opened on its runtime: kept");
                registered.send(std::thread::current().id()).unwrap();
                let _ = stopped.await;
            });
        });
        let worker = is_registered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(thread_of_open(&placement).await, worker, "opened on the worker's own runtime, not the outer one");
        stop.send(()).unwrap();
        thread.join().unwrap();
        outer.shutdown_background();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_abandoned_open_on_a_worker_is_aborted() {
        /// Tells `dropped` when the never-ending connect it is part of is dropped.
        struct Tell(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Tell {
            fn drop(&mut self) {
                if let Some(sender) = self.0.take() {
                    let _ = sender.send(());
                }
            }
        }
        let placement = ConnectionPlacement::new();
        let (_worker, stop, thread) = start_worker(&placement);
        let (dropped, was_dropped) = tokio::sync::oneshot::channel::<()>();
        let dropped = Arc::new(Mutex::new(Some(dropped)));
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(Mutex::new(Some(started)));
        let opener = placement.clone();
        let opening = tokio::spawn(async move {
            opener
                .open(move || {
                    let tell = Tell(dropped.lock().unwrap().take());
                    let started = started.lock().unwrap().take();
                    async move {
                        let _tell = tell;
                        if let Some(started) = started {
                            let _ = started.send(());
                        }
                        std::future::pending::<ConnectionResult<AsyncPgConnection>>().await
                    }
                })
                .await
        });
        has_started.await.unwrap();
        opening.abort();
        tokio::time::timeout(Duration::from_secs(10), was_dropped)
            .await
            .expect("the connect on the worker was aborted with the wait")
            .unwrap();
        stop.send(()).unwrap();
        thread.join().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_whose_runtime_stopped_is_forgotten() {
        let placement = ConnectionPlacement::new();
        let (_worker, stop, thread) = start_worker(&placement);
        stop.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(thread_of_open(&placement).await, std::thread::current().id(), "opened here instead");
        assert!(placement.next_worker().is_none(), "the stopped worker is no longer taken");
    }

    #[test]
    fn on_a_worker_connections_opened_before_a_worker_runtime_was_known_are_misplaced() {
        let placement = ConnectionPlacement::new();
        let before = Instant::now();
        // Registered from the app factory, inside another runtime: the worker's own is not known yet, so a
        // connection opened now (by a background task, say) is opened where it is needed, off the workers.
        let factory = tokio::runtime::Builder::new_current_thread().build().unwrap();
        factory.block_on(async { placement.register_current_thread() });
        let between = Instant::now();
        let own = tokio::runtime::Builder::new_current_thread().build().unwrap();
        own.block_on(async {
            assert!(placement.misplaced(before), "opened before any worker: dropped on a worker's checkout");
            assert!(placement.misplaced(between), "opened before a worker's runtime was known: dropped too");
            assert!(!placement.misplaced(Instant::now()), "opened since: kept");
        });
        let other = ConnectionPlacement::new();
        assert!(!other.misplaced(before), "this thread is not a worker of another placement");
    }
}
