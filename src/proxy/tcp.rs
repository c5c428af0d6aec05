//! TCP listeners: one instance per connection, bytes relayed both ways with half-close kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::config::RelayConfig;
use super::error::ProxyError;
use super::failover::{Attempts, Target};
use super::metrics::{Active, ListenerMetrics};
use super::relay::{inherited, relay, Relayed};
use crate::accept::{accept_loop, Caps};
use crate::addr::Addr;
use crate::balance::hash;
use crate::net::{dial, OwnAddrs};
use crate::registry::ServiceName;
use crate::rt::workers::Workers;
use crate::snapshot::{InFlight, ServiceCell};
use crate::throttle::Throttle;

/// What a TCP listener needs to forward one connection.
pub(crate) struct TcpProxy {
    /// The service name, for logs.
    pub(crate) service: ServiceName,
    /// The service's snapshot cell, resolved once when the listener starts.
    pub(crate) cell: Arc<ServiceCell>,
    /// Whether the hash policy picks by the client's IP address.
    pub(crate) hash_client_ip: bool,
    /// Time allowed for each connect.
    pub(crate) connect_timeout: Duration,
    /// Other instances tried after a failed connect.
    pub(crate) retries: u32,
    /// This listener's counters.
    pub(crate) metrics: ListenerMetrics,
    /// Throttles connect-failure warnings.
    pub(crate) throttle: Throttle,
    /// cairn's own listeners, which are never dialed.
    pub(crate) own: Arc<OwnAddrs>,
    /// Idle timeout and keepalive of relayed connections.
    pub(crate) relay: RelayConfig,
    /// The workers connections are dealt to.
    pub(crate) workers: Workers,
}

impl TcpProxy {
    /// Accepts until `stop`, then gives the socket back; connections run on `tracker` and end
    /// early only on `abort`.
    pub(crate) async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        caps: Caps,
        tracker: TaskTracker,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> TcpListener {
        // Accepted sockets get these from the listener; a reload sets them anew.
        if let Err(e) = inherited(&listener, self.relay.keepalive) {
            warn!(service = %self.service, error = %e, "cannot set tcp options on the listener");
        }
        accept_loop(listener, caps, stop, |stream, peer, permit| {
            let proxy = Arc::clone(&self);
            let abort = abort.clone();
            self.workers
                .spawn(&tracker, stream, move |stream| async move {
                    tokio::select! {
                        _ = proxy.handle(stream, peer) => {}
                        _ = abort.cancelled() => {}
                    }
                    drop(permit);
                });
        })
        .await
    }

    async fn handle(&self, mut inbound: TcpStream, peer: SocketAddr) {
        self.metrics.accepted.inc();
        let _active = Active::new(&self.metrics.active);
        let (mut outbound, addr, _inflight) = match self.connect(peer).await {
            Ok(connected) => connected,
            Err(e) => {
                e.count(&self.metrics);
                debug!(service = %self.service, %peer, error = %e, "closing connection");
                return;
            }
        };
        debug!(service = %self.service, %peer, upstream = %addr, "connection forwarded");
        match relay(&mut inbound, &mut outbound, self.relay).await {
            Ok(Relayed::Done(up, down)) => {
                debug!(service = %self.service, %peer, up, down, "connection closed")
            }
            Ok(Relayed::Idle) => {
                self.metrics.idle_closed.inc();
                debug!(service = %self.service, %peer, "connection idle, closing")
            }
            Err(e) => {
                debug!(service = %self.service, %peer, error = %e, "connection ended with an error")
            }
        }
    }

    /// Connects to an instance, failing over while nothing has been sent: the client never
    /// notices a dead instance.
    /// The connection stays counted in flight on its instance until the guard is dropped.
    async fn connect(&self, peer: SocketAddr) -> Result<(TcpStream, Addr, InFlight), ProxyError> {
        let target = Target {
            cell: &self.cell,
            service: &self.service,
            retries: self.retries,
            throttle: &self.throttle,
        };
        let key = self.hash_client_ip.then(|| hash::ip(peer.ip()));
        let (mut attempts, mut addr) = Attempts::start(&target, &self.metrics, key)?;
        loop {
            let inflight = attempts.begin();
            match dial(&addr, self.connect_timeout, &self.own).await {
                Ok(stream) => {
                    attempts.connected(&addr);
                    return Ok((stream, addr, inflight));
                }
                Err(e) => addr = attempts.failed(&addr, &e)?,
            }
        }
    }
}
