//! Workers: one single-threaded runtime per worker thread, as nginx runs one process per core.
//! The runtime that starts cairn is worker 0 and also runs the control plane (etcd, admin,
//! reloads); each accepted connection goes to the next worker in turn and lives there, with the
//! tasks it spawns and the upstream connections it uses. Nothing is stolen between workers, so a
//! connection's wake-ups stay on one thread.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// The workers beside worker 0, once started.
static WORKERS: OnceLock<Workers> = OnceLock::new();

struct Workers {
    /// Workers 1 and up.
    others: Vec<Handle>,
    /// The worker the next connection goes to.
    next: AtomicUsize,
}

thread_local! {
    /// The worker this thread is; 0 for any thread that is not a worker of its own.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Starts `count - 1` worker threads (`cairn-worker-N`) beside the calling thread, worker 0.
///
/// # Errors
/// Why a thread or its runtime could not be made.
pub fn start(count: usize) -> io::Result<()> {
    let mut others = Vec::new();
    for index in 1..count {
        let (tx, rx) = std::sync::mpsc::channel();
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
                        // Serves what it is handed for as long as the process lives.
                        runtime.block_on(std::future::pending::<()>());
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
    }
    let _ = WORKERS.set(Workers {
        others,
        next: AtomicUsize::new(0),
    });
    Ok(())
}

/// The worker the calling thread is: 0 unless it is one of the threads [`start`] made.
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Serves `stream` with `serve` on the next worker in turn, tracked by `tracker`.
pub(crate) fn spawn<F, Fut>(tracker: &TaskTracker, stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let target = WORKERS.get().and_then(|w| {
        let turn = w.next.fetch_add(1, Ordering::Relaxed) % (w.others.len() + 1);
        turn.checked_sub(1).map(|i| &w.others[i])
    });
    let Some(handle) = target else {
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
