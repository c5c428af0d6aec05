//! The data plane's listeners as they run: started from bound sockets, handed to new settings
//! without closing their socket, or removed with their connections drained.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accept::{relisten, Caps};
use crate::net::OwnAddrs;
use crate::proxy::http::{Forwarder, HttpListener, Routes, Routing};
use crate::proxy::tcp::TcpProxy;
use crate::proxy::{
    GatewayConfig, Limits, ListenerFamilies, ListenerMetrics, ListenerView, Protocol, ServiceConfig,
};
use crate::rt::workers::Workers;
use crate::snapshot::Store;
use crate::throttle::Throttle;

/// One data-plane listener's settings: a `[[service]]` block, or the `i`-th `[[gateway]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    /// A local port for one service (boxed: it is much larger than a gateway's settings).
    Service(Box<ServiceConfig>),
    /// A Host-routed HTTP port, with its index among the gateways.
    Gateway(usize, GatewayConfig),
}

impl Spec {
    /// The address the config asks for.
    pub(crate) fn listen(&self) -> SocketAddr {
        match self {
            Spec::Service(s) => s.listen,
            Spec::Gateway(_, g) => g.listen,
        }
    }

    /// Connections served at once, which is also the accept backlog.
    pub(crate) fn max_connections(&self) -> usize {
        match self {
            Spec::Service(s) => s.limits.max_connections,
            Spec::Gateway(_, g) => g.limits.max_connections,
        }
    }

    /// Which listener this is across reloads: its address, or for one on port 0 (the kernel
    /// picks the port) its service or gateway index.
    pub(crate) fn identity(&self) -> Identity {
        match self {
            _ if self.listen().port() != 0 => Identity::Addr(self.listen()),
            Spec::Service(s) => Identity::Service(s.name.to_string()),
            Spec::Gateway(i, _) => Identity::Gateway(*i),
        }
    }

    /// How the listener is named in errors and logs.
    pub(crate) fn what(&self) -> String {
        match self {
            Spec::Service(s) => format!("service \"{}\"", s.name),
            Spec::Gateway(i, _) => format!("gateway[{i}]"),
        }
    }
}

/// A listener's identity across reloads; see [`Spec::identity`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Identity {
    /// A fixed address.
    Addr(SocketAddr),
    /// A service's listener on port 0.
    Service(String),
    /// A gateway on port 0.
    Gateway(usize),
}

/// One running listener.
struct Live {
    /// How the status page shows it.
    view: ListenerView,
    /// Its settings.
    spec: Spec,
    /// Its bound address.
    bound: SocketAddr,
    /// Stops accepting; the task then returns the socket.
    stop: CancellationToken,
    /// Closes its HTTP connections gracefully.
    drain: CancellationToken,
    /// Cuts its connections.
    abort: CancellationToken,
    /// The accept loop, which returns the socket when stopped.
    task: JoinHandle<TcpListener>,
}

/// What every listener shares.
pub(crate) struct Shared {
    /// The snapshots listeners read.
    pub(crate) store: Arc<Store>,
    /// Routes of the current config, read per HTTP request.
    pub(crate) routes: Arc<ArcSwap<Routes>>,
    /// Per-listener counters.
    pub(crate) families: ListenerFamilies,
    /// cairn's own addresses, never dialed.
    pub(crate) own: Arc<OwnAddrs>,
    /// Every connection and upgraded tunnel, for the drain.
    pub(crate) tracker: TaskTracker,
    /// Connections every listener together may hold (the open-file budget).
    pub(crate) connections: Arc<Semaphore>,
    /// The process's drain: every listener's drain is a child of it.
    pub(crate) drain: CancellationToken,
    /// The end of the grace period: every listener's abort is a child of it.
    pub(crate) abort: CancellationToken,
    /// The running listeners, as the status page shows them.
    pub(crate) views: Arc<ArcSwap<Vec<ListenerView>>>,
    /// The workers connections are dealt to.
    pub(crate) workers: Workers,
}

/// The running listeners.
pub(crate) struct Plane {
    /// What they share.
    shared: Shared,
    /// The listeners, by identity.
    live: HashMap<Identity, Live>,
}

impl Plane {
    /// No listener yet.
    pub(crate) fn new(shared: Shared) -> Plane {
        Plane {
            shared,
            live: HashMap::new(),
        }
    }

    /// What the listeners share.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Whether a listener with `identity` runs.
    pub(crate) fn has(&self, identity: &Identity) -> bool {
        self.live.contains_key(identity)
    }

    /// Publishes the running listeners for the status page, in address order.
    fn publish(&self) {
        let mut views: Vec<ListenerView> = self.live.values().map(|l| l.view.clone()).collect();
        views.sort_by_key(|v| v.listen);
        self.shared.views.store(Arc::new(views));
    }

    /// Every listener's bound address.
    pub(crate) fn bound(&self) -> Vec<SocketAddr> {
        self.live.values().map(|l| l.bound).collect()
    }

    /// Starts serving `spec` on `listener`.
    pub(crate) fn start(&mut self, spec: Spec, listener: TcpListener) {
        let bound = listener
            .local_addr()
            .expect("a bound listener has a local address");
        let stop = self.shared.drain.child_token();
        let drain = self.shared.drain.child_token();
        let abort = self.shared.abort.child_token();
        let caps = Caps::new(
            spec.max_connections(),
            Some(Arc::clone(&self.shared.connections)),
        );
        let shared = &self.shared;
        let (service, protocol) = match &spec {
            Spec::Service(s) => (s.name.to_string(), s.protocol.as_str()),
            Spec::Gateway(..) => ("*".to_string(), "http"),
        };
        let view = ListenerView {
            listen: bound,
            metrics: shared.families.listener(&bound.to_string(), &service),
            service,
            protocol,
        };
        let metrics = view.metrics.clone();
        let task = match &spec {
            Spec::Service(service) => {
                info!(service = %service.name, listen = %bound, protocol = service.protocol.as_str(), "listening");
                match service.protocol {
                    Protocol::Tcp => {
                        let proxy = Arc::new(TcpProxy {
                            cell: shared.store.cell(&service.name),
                            service: service.name.clone(),
                            hash_client_ip: service.route.hash_key.is_some(),
                            connect_timeout: service.route.connect_timeout,
                            retries: service.route.retries,
                            metrics,
                            throttle: Throttle::per_second(),
                            own: Arc::clone(&shared.own),
                            relay: service.relay,
                            workers: shared.workers.clone(),
                        });
                        tokio::spawn(proxy.run(
                            listener,
                            caps,
                            shared.tracker.clone(),
                            stop.clone(),
                            abort.clone(),
                        ))
                    }
                    Protocol::Http | Protocol::Grpc => self.spawn_http(
                        Routing::Service(service.name.to_string()),
                        service.limits,
                        service.protocol == Protocol::Http,
                        metrics,
                        listener,
                        caps,
                        [&stop, &drain, &abort],
                    ),
                }
            }
            Spec::Gateway(_, gateway) => {
                info!(listen = %bound, host_suffix = gateway.host_suffix.as_deref().unwrap_or(""), "gateway listening");
                self.spawn_http(
                    Routing::Gateway {
                        suffix: gateway.host_suffix.clone(),
                    },
                    gateway.limits,
                    true,
                    metrics,
                    listener,
                    caps,
                    [&stop, &drain, &abort],
                )
            }
        };
        self.live.insert(
            spec.identity(),
            Live {
                view,
                spec,
                bound,
                stop,
                drain,
                abort,
                task,
            },
        );
        self.publish();
    }

    /// Starts an HTTP listener; `tokens` are its stop, drain and abort.
    #[allow(clippy::too_many_arguments)]
    fn spawn_http(
        &self,
        routing: Routing,
        limits: Limits,
        own_h1: bool,
        metrics: ListenerMetrics,
        listener: TcpListener,
        caps: Caps,
        [stop, drain, abort]: [&CancellationToken; 3],
    ) -> JoinHandle<TcpListener> {
        let http = Arc::new(HttpListener {
            routing,
            routes: Arc::clone(&self.shared.routes),
            forwarder: Forwarder {
                metrics,
                tunnels: self.shared.tracker.clone(),
                abort: abort.clone(),
                idle_timeout: limits.idle_timeout,
            },
            limits,
            workers: self.shared.workers.clone(),
            own_h1,
        });
        tokio::spawn(http.run(
            listener,
            caps,
            self.shared.tracker.clone(),
            stop.clone(),
            drain.clone(),
        ))
    }

    /// Serves `spec` on the socket of the running listener with the same identity: it stops
    /// accepting, and the next accept already follows `spec`. Clients arriving in between wait
    /// in the socket's backlog; connections already open keep the settings they started with.
    /// Returns whether anything changed.
    pub(crate) async fn hand_over(&mut self, spec: Spec) -> bool {
        let Some(live) = self.live.get(&spec.identity()) else {
            return false;
        };
        if live.spec == spec {
            return false;
        }
        let live = self
            .live
            .remove(&spec.identity())
            .expect("the listener was just found");
        live.stop.cancel();
        let listener = match live.task.await {
            Ok(l) => l,
            Err(e) => {
                warn!(listen = %live.bound, error = %e, "a listener's task failed; its port is lost until restart");
                return true;
            }
        };
        if let Err(e) = relisten(&listener, spec.max_connections()) {
            warn!(listen = %live.bound, error = %e, "cannot resize the accept backlog");
        }
        self.start(spec, listener);
        true
    }

    /// Stops the listener with `identity`: its socket closes, its HTTP connections close
    /// gracefully, and whatever is still open after `grace` is cut.
    pub(crate) async fn remove(&mut self, identity: &Identity, grace: Duration) {
        let Some(live) = self.live.remove(identity) else {
            return;
        };
        live.stop.cancel();
        live.drain.cancel();
        let _ = live.task.await;
        self.publish();
        info!(listen = %live.bound, listener = live.spec.what(), "listener removed, its connections drain");
        let abort = live.abort;
        tokio::spawn(async move {
            // Cut what the drain did not finish; a no-op when nothing is left.
            tokio::select! {
                _ = tokio::time::sleep(grace) => abort.cancel(),
                _ = abort.cancelled() => {}
            }
        });
    }

    /// The identities of the running listeners that `keep` does not contain.
    pub(crate) fn absent_from(&self, keep: &[Identity]) -> Vec<Identity> {
        self.live
            .keys()
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect()
    }

    /// Stops every listener from accepting (their sockets close) and starts the drain.
    pub(crate) async fn stop_all(&mut self) {
        for live in self.live.values() {
            live.stop.cancel();
        }
        self.shared.drain.cancel();
        for (_, live) in self.live.drain() {
            let _ = live.task.await;
        }
    }
}
