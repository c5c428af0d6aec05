//! Workers: one single-threaded runtime per worker thread, as nginx runs one process per core.
//! The runtime that runs the server is worker 0 and also runs the control plane (etcd, admin,
//! reloads); each accepted connection goes to the next worker in turn and lives there, with the
//! tasks it spawns and the upstream sockets it uses. Nothing is stolen between workers, so a
//! connection's wake-ups stay on one thread.
//!
//! The workers are a value the server holds, not a process global: two servers in one process
//! (a test's) each deal connections to their own. What a thread knows of itself is only which
//! worker it is ([`index`]), which worker-local state (the idle sockets of the upstream pool)
//! is keyed by.
//!
//! Invariant: a socket is registered with the poller of the worker that serves it, so whatever
//! is keyed by [`index`] is only ever touched by that worker's thread on the data path.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::debug;

thread_local! {
    /// The worker this thread is; 0 for any thread that is not a worker of its own.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is: 0 unless it is one of the threads [`Workers::start`]
/// made.
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// The workers a server deals connections to. Cloning shares them; the threads stop when the
/// last clone is dropped.
#[derive(Clone, Debug, Default)]
pub struct Workers(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Workers 1 and up.
    others: Vec<Handle>,
    /// The worker the next connection goes to.
    next: AtomicUsize,
    /// Dropped with the last clone: each worker thread's runtime then returns.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Only the calling runtime, worker 0: every connection is served where it was accepted.
    pub fn single() -> Workers {
        Workers::default()
    }

    /// Starts `count - 1` worker threads (`cairn-worker-N`) beside the calling thread's
    /// runtime, worker 0.
    ///
    /// # Errors
    /// Why a thread or its runtime could not be made.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut others = Vec::new();
        let mut stops = Vec::new();
        for index in 1..count {
            let (tx, rx) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("cairn-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = tx.send(Ok(runtime.handle().clone()));
                            // Serves what it is handed until its workers are dropped.
                            let _ = runtime.block_on(stopped);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended while starting"))??;
            others.push(handle);
            stops.push(stop);
        }
        Ok(Workers(Arc::new(Inner {
            others,
            next: AtomicUsize::new(0),
            _stop: stops,
        })))
    }

    /// How many workers there are, worker 0 included.
    pub fn count(&self) -> usize {
        self.0.others.len() + 1
    }

    /// Serves `stream` with `serve` on the next worker in turn, tracked by `tracker`.
    pub(crate) fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let turn = self.0.next.fetch_add(1, Ordering::Relaxed) % self.count();
        let Some(handle) = turn.checked_sub(1).map(|i| &self.0.others[i]) else {
            tracker.spawn(serve(stream));
            return;
        };
        // The socket leaves this runtime's poller for the worker's.
        match stream.into_std() {
            Ok(std) => {
                handle.spawn(tracker.track_future(async move {
                    match TcpStream::from_std(std) {
                        Ok(stream) => serve(stream).await,
                        Err(e) => debug!(error = %e, "cannot hand a connection to its worker"),
                    }
                }));
            }
            Err(e) => debug!(error = %e, "cannot hand a connection to its worker"),
        }
    }
}

/// Runs `f` as if the calling thread were worker `index`: for tests of worker-local state.
#[cfg(test)]
pub(crate) fn as_worker<T>(index: usize, f: impl FnOnce() -> T) -> T {
    let was = INDEX.with(|i| i.replace(index));
    let out = f();
    INDEX.with(|i| i.set(was));
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// Accepts `n` connections and hands each to `workers`; returns the worker index each
    /// was served on.
    async fn served_on(workers: &Workers, n: usize) -> Vec<usize> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tracker = TaskTracker::new();
        for _ in 0..n {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&seen);
            workers.spawn(&tracker, stream, move |_stream| async move {
                log.lock().unwrap().push(index());
            });
            client.shutdown().await.unwrap();
        }
        tracker.close();
        tracker.wait().await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        seen
    }

    #[tokio::test]
    async fn connections_are_dealt_to_each_worker_in_turn() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(served_on(&workers, 6).await, [0, 0, 1, 1, 2, 2]);
        // Two sets of workers in one process each deal to their own.
        let other = Workers::start(2).unwrap();
        assert_eq!(served_on(&other, 4).await, [0, 0, 1, 1]);
        assert_eq!(served_on(&Workers::single(), 2).await, [0, 0]);
    }

    #[test]
    fn worker_threads_stop_with_their_workers() {
        let workers = Workers::start(2).unwrap();
        let handle = workers.0.others[0].clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The worker's runtime shut down, dropping its tasks (and the sender they held).
        assert!(matches!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}
