//! The data plane: local listeners that forward to picked instances.
//!
//! [`tcp`] relays bytes and picks once per connection; [`http`] proxies requests and picks once
//! per request. Both share the accept loop's connection cap and the once-per-second warning
//! below.

pub mod http;
pub mod tcp;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::registry::Addr;
use crate::snapshot::{Pick, ServiceCell};
use crate::stats::ListenerStats;

/// Connects to `addr`, resolving a hostname first.
pub(crate) async fn connect(addr: &Addr) -> io::Result<TcpStream> {
    match addr {
        Addr::Ip(sa) => TcpStream::connect(*sa).await,
        Addr::Host { host, port } => TcpStream::connect((&**host, *port)).await,
    }
}

/// Dials `addr` with TCP_NODELAY set, giving up after `timeout`.
pub(crate) async fn dial(addr: &Addr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Why no instance could be reached.
#[derive(Debug)]
pub(crate) enum Unreachable {
    /// The service has no instances.
    NoInstances,
    /// Every attempt failed; the last error is kept.
    Exhausted {
        /// How many instances were tried.
        attempts: usize,
        /// The last instance tried.
        addr: String,
        /// Its error.
        error: io::Error,
    },
}

/// Connects to the picked instance, trying up to `retries` other instances of `cell` when a
/// connect fails. Nothing has been sent when a connect fails, so the client never notices.
pub(crate) async fn connect_with_failover(
    cell: &ServiceCell,
    pick: Pick,
    retries: u32,
    timeout: Duration,
    stats: &ListenerStats,
    warn_limit: &EveryOnce,
    service: &str,
) -> Result<(TcpStream, Addr), Unreachable> {
    let attempts = pick.candidates.min(retries as usize + 1);
    let mut addr = pick.addr;
    let mut attempt = 0;
    loop {
        match dial(&addr, timeout).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(error) => {
                ListenerStats::bump(&stats.connect_failures);
                if warn_limit.allow() {
                    warn!(service, %addr, error = %error, "connect to instance failed");
                } else {
                    debug!(service, %addr, error = %error, "connect to instance failed");
                }
                attempt += 1;
                if attempt >= attempts {
                    ListenerStats::bump(&stats.exhausted);
                    return Err(Unreachable::Exhausted {
                        attempts,
                        addr: addr.to_string(),
                        error,
                    });
                }
                match cell.retry(pick.start, attempt) {
                    Some(next) => addr = next,
                    None => return Err(Unreachable::NoInstances),
                }
            }
        }
    }
}

/// Lets one event through per second, so a dead instance under load logs a warning a second, not
/// one per connection.
#[derive(Debug)]
pub(crate) struct EveryOnce {
    origin: Instant,
    /// Milliseconds since `origin` of the last event let through, plus one (0 = never).
    last: AtomicU64,
}

impl EveryOnce {
    pub(crate) fn new() -> EveryOnce {
        EveryOnce {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    pub(crate) fn allow(&self) -> bool {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Accepts connections until `shutdown`, holding one `limit` permit per open connection, and
/// hands each to `serve`. When the cap is reached, new clients wait in the kernel's backlog.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    mut serve: F,
) where
    F: FnMut(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit),
{
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = Arc::clone(&limit).acquire_owned() => p.expect("the connection semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer, permit),
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning on accept.
                warn!(error = %e, "accept failed");
                if !crate::shutdown::sleep(&shutdown, Duration::from_millis(100)).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_once_lets_one_through_per_second() {
        let limit = EveryOnce::new();
        assert!(limit.allow());
        assert!(!limit.allow());
        limit.last.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1001));
        assert!(limit.allow());
    }
}
