//! Accepting connections: listening sockets with a backlog sized to the listener, and the accept
//! loop every listener shares, which holds one permit of each connection cap per open connection
//! and pauses instead of spinning when accept fails.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// After a failed accept (out of descriptors or memory), wait this long instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Binds `addr` with a backlog of `backlog` pending connections (the kernel caps it at
/// `net.core.somaxconn`): clients beyond the connection cap wait there, handshake done, instead
/// of in SYN retries.
///
/// # Errors
/// The operating system's answer to binding or listening.
pub(crate) fn bind(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(backlog).unwrap_or(u32::MAX))
}

/// The caps a connection must fit under: its listener's, and the whole process's (what the
/// open-file limit allows).
#[derive(Debug, Clone)]
pub(crate) struct Caps {
    /// The listener's own cap (`max_connections`).
    pub(crate) listener: Arc<Semaphore>,
    /// Connections every data-plane listener together may hold; none for the admin endpoint,
    /// whose few connections live in the descriptors kept in reserve.
    pub(crate) process: Option<Arc<Semaphore>>,
}

/// One connection's place under its caps; released when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    _listener: OwnedSemaphorePermit,
    _process: Option<OwnedSemaphorePermit>,
}

async fn acquire(semaphore: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    Arc::clone(semaphore)
        .acquire_owned()
        .await
        .expect("connection semaphores are never closed")
}

impl Caps {
    /// Caps of `max` connections for one listener, under the process-wide `process` cap.
    pub(crate) fn new(max: usize, process: Option<Arc<Semaphore>>) -> Caps {
        Caps {
            listener: Arc::new(Semaphore::new(max)),
            process,
        }
    }

    /// Waits for room under every cap.
    async fn acquire(&self) -> Permit {
        let listener = acquire(&self.listener).await;
        let process = match &self.process {
            Some(p) => Some(acquire(p).await),
            None => None,
        };
        Permit {
            _listener: listener,
            _process: process,
        }
    }
}

/// Descriptors kept out of the data plane's reach (at most a quarter of the limit): the admin
/// endpoint, etcd, health checks and the resolver must keep working when clients flood in.
const RESERVED_FILES: u64 = 256;

/// How many data-plane connections the open-file limit allows at once, after raising the soft
/// limit to the hard one (as Go's runtime does at start). A proxied connection holds two
/// descriptors: the client's and the instance's.
///
/// Returns the limit and the connections it allows, or `None` when it cannot be read.
pub(crate) fn open_file_budget() -> Option<(u64, usize)> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .ok()?;
    let reserved = RESERVED_FILES.min(limit / 4);
    let connections = limit.saturating_sub(reserved) / 2;
    Some((limit, usize::try_from(connections).unwrap_or(usize::MAX)))
}

/// Accepts connections until `stop`, holding one permit of `caps` per open connection, and
/// hands each to `serve`. When a cap is reached, new clients wait in the kernel's backlog.
///
/// Returns the listening socket, still open: a reload hands it to the listener's next
/// settings, and connections that arrive meanwhile wait in its backlog.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    caps: Caps,
    stop: CancellationToken,
    mut serve: F,
) -> TcpListener
where
    F: FnMut(TcpStream, SocketAddr, Permit),
{
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return listener,
            p = caps.acquire() => p,
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return listener,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer, permit),
            Err(e) => {
                warn!(error = %e, "accept failed");
                if !crate::shutdown::sleep(&stop, ACCEPT_PAUSE).await {
                    return listener;
                }
            }
        }
    }
}

/// Sets the backlog of a socket already listening (Linux takes a second `listen` as that), so
/// a socket handed to new settings queues as many clients as its new `max_connections`.
pub(crate) fn relisten(listener: &TcpListener, backlog: usize) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(i32::try_from(backlog).unwrap_or(i32::MAX))
}
