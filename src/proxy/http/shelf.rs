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
    /// Whether the connection is still open and clean: the instance has neither closed it nor
    /// sent anything unasked. Asked of the socket itself, every time.
    fn clean(&self) -> bool;
}

/// A bare socket is clean while a peek at it finds nothing to read and no close. The peek
/// goes to the kernel: tokio's cached readiness is cleared by the short read that ended the
/// last response, so reading through tokio would find nothing without looking, and bytes an
/// instance sent after its response (a body for a HEAD, a second answer) would be taken as
/// the next request's answer.
impl Reusable for TcpStream {
    fn clean(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::uninit(); 1];
        matches!(
            socket2::SockRef::from(self).peek(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
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
            if idle.since.elapsed() < IDLE_TIMEOUT && idle.conn.clean() {
                return Some(idle.conn);
            }
        }
    }

    /// Keeps `conn`, which has finished its exchange, for the next request to `addr`: it is
    /// checked when taken back. Returns whether it was kept.
    pub(super) fn put(&self, addr: Addr, conn: C) -> bool {
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
                    let idle = &list[i];
                    if now.duration_since(idle.since) >= IDLE_TIMEOUT || !idle.conn.clean() {
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
    // The waits block on purpose: the runtime must not poll for events in between.
    #[allow(clippy::disallowed_methods)]
    async fn bytes_an_instance_sent_after_its_answer_keep_the_socket_off_the_next_request() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Addr::Ip(listener.local_addr().unwrap());
        let socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut instance, _) = listener.accept().unwrap();
        let shelf = Shelf::new();
        assert!(shelf.put(addr.clone(), socket));
        // The instance sends more, and cairn takes the socket back before its runtime has
        // polled for events: only a look at the socket itself can see the bytes.
        std::io::Write::write_all(&mut instance, b"HTTP/1.1 200 OK\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            shelf.take(&addr).is_none(),
            "a socket with unread bytes was reused"
        );
        // The same for a close.
        let socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (instance, _) = listener.accept().unwrap();
        assert!(shelf.put(addr.clone(), socket));
        drop(instance);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            shelf.take(&addr).is_none(),
            "a socket the instance closed was reused"
        );
    }

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
