//! The data plane's listeners as they run: started from bound sockets, handed to new settings
//! without closing their socket, or removed with their connections drained.
//!
//! A reload gives it a new config in two steps: [`Plane::prepare`] binds the sockets of the
//! listeners it does not run yet (a port in use refuses the reload, nothing changed), and
//! [`Plane::commit`] configures the services' cells and routes, then removes, starts and hands
//! over listeners.

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

use super::spec::{bind, specs, Identity, Spec};
use crate::accept::{relisten, Caps};
use crate::config::Config;
use crate::error::Error;
use crate::net::OwnAddrs;
use crate::proxy::http::{Forwarder, HttpListener, Routes, Routing};
use crate::proxy::tcp::TcpProxy;
use crate::proxy::{
    Limits, ListenerFamilies, ListenerMetrics, ListenerView, Protocol, RouteConfig,
};
use crate::rt::workers::Workers;
use crate::snapshot::Store;
use crate::throttle::Throttle;

/// Pins and configures the cells of the services `config` names; with `previous`, unpins
/// those it named and `config` does not.
pub(super) fn configure_cells(store: &Store, config: &Config, previous: Option<&Config>) {
    for service in &config.services {
        let cell = store.cell(&service.name);
        cell.pin(true);
        cell.configure(service.route.policy(config.zone.clone()));
    }
    for gone in previous
        .iter()
        .flat_map(|p| &p.services)
        .filter(|p| !config.services.iter().any(|s| s.name == p.name))
    {
        if let Some(cell) = store.get(&gone.name) {
            cell.pin(false);
            cell.configure(RouteConfig::default().policy(config.zone.clone()));
        }
    }
}

/// A config's listeners, prepared: the sockets of the new ones bound. Dropped, they close.
pub(crate) struct Listeners {
    /// Every listener the config asks for, in config order.
    wanted: Vec<Spec>,
    /// The sockets of those not running yet.
    fresh: HashMap<Identity, TcpListener>,
}

/// What a commit did to the listeners, for the reload's log line.
#[derive(Debug, Default)]
pub(crate) struct Relistened {
    /// Listeners started.
    pub(crate) added: usize,
    /// Listeners removed (their connections drain).
    pub(crate) removed: usize,
    /// Listeners handed new settings on their socket.
    pub(crate) changed: usize,
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
    async fn hand_over(&mut self, spec: Spec) -> bool {
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
    async fn remove(&mut self, identity: &Identity, grace: Duration) {
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

    /// Binds the sockets of the listeners `next` asks for and that do not run yet.
    ///
    /// # Errors
    /// [`Error::Bind`] naming the listener whose address could not be bound.
    pub(crate) fn prepare(&self, next: &Config) -> Result<Listeners, Error> {
        let wanted = specs(next);
        let mut fresh = HashMap::new();
        for spec in wanted
            .iter()
            .filter(|s| !self.live.contains_key(&s.identity()))
        {
            let listener = bind(spec.listen(), spec.max_connections(), &spec.what())?;
            fresh.insert(spec.identity(), listener);
        }
        Ok(Listeners { wanted, fresh })
    }

    /// Serves `next` (replacing `current`) with the prepared `listeners`: the services' cells
    /// and routes first, so a listener started or handed over serves the new settings from its
    /// first connection; then listeners `next` drops are removed (draining for at most
    /// `grace`), new ones started, and changed ones handed over.
    pub(crate) async fn commit(
        &mut self,
        listeners: Listeners,
        current: &Config,
        next: &Config,
        grace: Duration,
    ) -> Relistened {
        let Listeners { wanted, mut fresh } = listeners;
        configure_cells(&self.shared.store, next, Some(current));
        let routes = self.shared.routes.load().renew(
            next.services.iter().map(|s| (&s.name, &s.route)),
            next.zone.clone(),
        );
        self.shared.routes.store(routes);
        let mut done = Relistened::default();
        let keep: Vec<Identity> = wanted.iter().map(Spec::identity).collect();
        let gone: Vec<Identity> = (self.live.keys())
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect();
        for identity in gone {
            self.remove(&identity, grace).await;
            done.removed += 1;
        }
        for spec in wanted {
            match fresh.remove(&spec.identity()) {
                Some(listener) => {
                    self.start(spec, listener);
                    done.added += 1;
                }
                None => done.changed += usize::from(self.hand_over(spec).await),
            }
        }
        done
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
