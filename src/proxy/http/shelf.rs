//! Idle upstream connections by instance, kept for reuse: checked before each reuse (one the
//! instance closed is dropped, never written to), capped per instance, and swept of the ones
//! that closed or aged out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::addr::Addr;
use crate::rt::workers;

/// Idle upstream connections are kept this long for reuse. Shorter than the 120 s or more most
/// servers allow, so cairn closes first and rarely writes to a connection the server dropped.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many idle connections are kept per instance; more are closed when they finish.
const MAX_IDLE_PER_INSTANCE: usize = 256;

/// A connection that can sit on a shelf.
pub(super) trait Reusable {
    /// Whether the connection is still open and ready for a request, after noticing what
    /// happened since it was last used (a close by the instance).
    fn settle(&mut self) -> bool;
}

/// A bare socket is reusable while the instance has neither closed it nor sent anything
/// unasked: reading finds nothing to read.
impl Reusable for TcpStream {
    fn settle(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Idle connections of one kind, by instance and by worker: a connection is only reused on the
/// worker whose poller it is registered with, so its wake-ups never cross threads (the
/// invariant of [`workers`]). The sweep, on whichever thread, only drops connections.
pub(super) struct Shelf<C> {
    /// Per instance, per worker, the most recently used last.
    idle: Mutex<HashMap<Addr, Vec<Vec<Idle<C>>>>>,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C: Reusable> Shelf<C> {
    pub(super) fn new() -> Shelf<C> {
        Shelf {
            idle: Mutex::default(),
        }
    }

    /// An idle connection to `addr` still open and ready, the most recently used first.
    pub(super) fn take(&self, addr: &Addr) -> Option<C> {
        loop {
            let idle = self
                .lock()
                .get_mut(addr)?
                .get_mut(workers::index())?
                .pop()?;
            // Checked outside the lock: a closed one is dropped (closing its socket) here too.
            if idle.since.elapsed() < IDLE_TIMEOUT {
                let mut conn = idle.conn;
                if conn.settle() {
                    return Some(conn);
                }
            }
        }
    }

    /// Keeps `conn`, which has finished its exchange, for the next request to `addr`. Returns
    /// whether it was kept.
    pub(super) fn put(&self, addr: Addr, mut conn: C) -> bool {
        if !conn.settle() {
            return false;
        }
        let mut idle = self.lock();
        let lists = idle.entry(addr).or_default();
        let worker = workers::index();
        if lists.len() <= worker {
            lists.resize_with(worker + 1, Vec::new);
        }
        let list = &mut lists[worker];
        if list.len() >= MAX_IDLE_PER_INSTANCE {
            return false;
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
        true
    }

    /// Drops the idle connections that closed or aged out, and empty lists.
    pub(super) fn sweep(&self) {
        let mut gone = Vec::new();
        let now = Instant::now();
        self.lock().retain(|_, lists| {
            for list in lists.iter_mut() {
                let mut i = 0;
                while i < list.len() {
                    let idle = &mut list[i];
                    if now.duration_since(idle.since) >= IDLE_TIMEOUT || !idle.conn.settle() {
                        gone.push(list.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            lists.iter().any(|l| !l.is_empty())
        });
        // Closing the sockets happens after the lock is released.
        drop(gone);
    }

    /// The idle connections to `addr`.
    #[cfg(test)]
    pub(super) fn count(&self, addr: &Addr) -> usize {
        self.lock()
            .get(addr)
            .map_or(0, |lists| lists.iter().map(Vec::len).sum())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Addr, Vec<Vec<Idle<C>>>>> {
        self.idle
            .lock()
            .expect("the shelf lock is never held across a panic")
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::rt::workers::as_worker;

    #[tokio::test]
    async fn a_socket_is_taken_back_only_by_the_worker_that_put_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Addr::Ip(listener.local_addr().unwrap());
        let socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let _peer = listener.accept().await.unwrap();
        let shelf = Shelf::new();
        assert!(as_worker(1, || shelf.put(addr.clone(), socket)));
        assert!(as_worker(0, || shelf.take(&addr)).is_none());
        assert!(as_worker(2, || shelf.take(&addr)).is_none());
        assert_eq!(shelf.count(&addr), 1);
        assert!(as_worker(1, || shelf.take(&addr)).is_some());
    }
}
