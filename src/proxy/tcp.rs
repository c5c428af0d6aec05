//! TCP listeners: one instance per connection, bytes relayed both ways with half-close kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{accept_loop, connect_with_failover, EveryOnce, Unreachable};
use crate::balance::Balance;
use crate::snapshot::ServiceCell;
use crate::stats::{ActiveGuard, ListenerStats};

/// What a TCP listener needs to forward one connection.
pub(crate) struct TcpProxy {
    /// The service name, for logs.
    pub(crate) service: String,
    /// The service's snapshot cell, resolved once when the listener starts.
    pub(crate) cell: Arc<ServiceCell>,
    /// The picking policy.
    pub(crate) balance: Balance,
    /// Time allowed for each connect.
    pub(crate) connect_timeout: Duration,
    /// Other instances tried after a failed connect.
    pub(crate) retries: u32,
    /// This listener's counters.
    pub(crate) stats: Arc<ListenerStats>,
    /// Throttles connect-failure warnings.
    pub(crate) warn_limit: EveryOnce,
}

impl TcpProxy {
    /// Accepts until `shutdown`; connections run on `tracker` and end early only on `abort`.
    pub(crate) async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        limit: Arc<Semaphore>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) {
        accept_loop(listener, limit, shutdown, |stream, peer, permit| {
            let proxy = Arc::clone(&self);
            let abort = abort.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = proxy.handle(stream, peer) => {}
                    _ = abort.cancelled() => {}
                }
                drop(permit);
            });
        })
        .await;
    }

    async fn handle(&self, mut inbound: TcpStream, peer: SocketAddr) {
        ListenerStats::bump(&self.stats.accepted);
        let _active = ActiveGuard::new(&self.stats);
        let _ = inbound.set_nodelay(true);
        let Some(pick) = self.cell.pick(self.balance) else {
            ListenerStats::bump(&self.stats.no_instances);
            debug!(service = %self.service, %peer, "no instances, closing connection");
            return;
        };
        let connected = connect_with_failover(
            &self.cell,
            pick,
            self.retries,
            self.connect_timeout,
            &self.stats,
            &self.warn_limit,
            &self.service,
        )
        .await;
        let (mut outbound, addr) = match connected {
            Ok(c) => c,
            Err(Unreachable::NoInstances) => {
                ListenerStats::bump(&self.stats.no_instances);
                debug!(service = %self.service, %peer, "no instances left, closing connection");
                return;
            }
            Err(Unreachable::Exhausted {
                attempts,
                addr,
                error,
            }) => {
                debug!(service = %self.service, %peer, attempts, last = %addr, error = %error, "every instance failed, closing connection");
                return;
            }
        };
        debug!(service = %self.service, %peer, upstream = %addr, "connection forwarded");
        // copy_bidirectional forwards a half-close: when one side finishes sending it shuts down
        // the other side's write half and keeps relaying the opposite direction.
        match tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
            Ok((up, down)) => debug!(service = %self.service, %peer, up, down, "connection closed"),
            Err(e) => {
                debug!(service = %self.service, %peer, error = %e, "connection ended with an error")
            }
        }
    }
}
