//! A running cairn: what it holds (listeners, the admin endpoint, the etcd side, the
//! registrar, health checks, background tasks), how it starts and how it shuts down in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::etcd_side::{EtcdSide, SideMetrics, Wiring};
use super::plane::{Plane, Shared, Spec};
use super::prune;
use super::reload_metrics::ReloadMetrics;
use crate::admin::{Admin, Sources, StoreCollector};
use crate::cache::CacheConfig;
use crate::config::Config;
use crate::discovery::DiscoveryMetrics;
use crate::error::Error;
use crate::etcd::EtcdMetrics;
use crate::health::instances::HealthChecker;
use crate::net::OwnAddrs;
use crate::proxy::http::Routes;
use crate::proxy::ListenerFamilies;
use crate::register::{self, Registrar, Status};
use crate::rt::workers::Workers;
use crate::snapshot::Store;

/// What `Server::bind` prepares: the config, and every socket it asks for, bound.
#[derive(Debug)]
pub(super) struct Bound {
    /// The validated configuration.
    pub(super) config: Config,
    /// The file SIGHUP reads the next configuration from; none: SIGHUP is ignored.
    pub(super) path: Option<PathBuf>,
    /// The admin listener.
    pub(super) admin: TcpListener,
    /// One bound listener per `[[service]]` and `[[gateway]]`, in config order.
    pub(super) listeners: Vec<(Spec, TcpListener)>,
    /// The snapshots every listener reads.
    pub(super) store: Arc<Store>,
    /// Connections every data-plane listener together may hold, so the open-file limit is
    /// never reached by clients alone.
    pub(super) connections: Arc<Semaphore>,
    /// The workers connections are dealt to.
    pub(super) workers: Workers,
}

/// The data-plane listeners a config asks for, in config order.
pub(super) fn specs(config: &Config) -> Vec<Spec> {
    let services = (config.services.iter().cloned()).map(|s| Spec::Service(Box::new(s)));
    let gateways = (config.gateways.iter().cloned().enumerate()).map(|(i, g)| Spec::Gateway(i, g));
    services.chain(gateways).collect()
}

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
            cell.configure(crate::proxy::RouteConfig::default().policy(config.zone.clone()));
        }
    }
}

/// Everything a running cairn holds; a reload changes it in place.
pub(super) struct Running {
    /// The config in force.
    pub(super) config: Config,
    /// Where SIGHUP reads the next one.
    pub(super) path: Option<PathBuf>,
    /// How long removed listeners and the final shutdown may drain.
    pub(super) grace: Duration,
    /// The data-plane listeners.
    pub(super) plane: Plane,
    /// The admin endpoint's state.
    pub(super) admin: Arc<Admin>,
    /// Its bound address.
    pub(super) admin_addr: SocketAddr,
    /// Stops its accept loop.
    pub(super) admin_stop: CancellationToken,
    /// Its accept loop.
    pub(super) admin_task: JoinHandle<TcpListener>,
    /// The etcd client and discovery.
    pub(super) side: EtcdSide,
    /// What every generation of it counts.
    pub(super) side_metrics: SideMetrics,
    /// This node's registrations, when it has any.
    pub(super) registrar: Option<register::Handle>,
    /// The registrations' state, kept across registrars.
    pub(super) registration: Arc<Status>,
    /// Stops the active health checks.
    pub(super) checks_stop: CancellationToken,
    /// The active health checks.
    pub(super) checks: Vec<JoinHandle<()>>,
    /// The task writing the cache file, with what stops it.
    pub(super) cache: Option<(CancellationToken, JoinHandle<()>)>,
    /// Stops the background tasks after the drain.
    pub(super) background: CancellationToken,
    /// Forgets services that left the registry.
    pub(super) pruning: JoinHandle<()>,
    /// Reload counters.
    pub(super) reloads: ReloadMetrics,
}

impl Running {
    /// Starts everything `server` bound.
    pub(super) async fn start(
        server: Bound,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<Running, Error> {
        let started = tokio::time::Instant::now();
        let config = server.config;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StoreCollector(Arc::clone(&server.store))));
        let side_metrics = SideMetrics {
            etcd: EtcdMetrics::default(),
            discovery: DiscoveryMetrics::default(),
        };
        side_metrics.etcd.register(&mut registry);
        side_metrics.discovery.register(&mut registry);
        // Read before discovery starts, served only if etcd does not answer in time.
        let fallback = match config.cache.clone() {
            Some(cache) => {
                let after = config.etcd.dial_timeout;
                tokio::task::spawn_blocking(move || crate::cache::load(&cache, after))
                    .await
                    .unwrap_or(None)
            }
            None => None,
        };
        let side =
            EtcdSide::start(Wiring::of(&config), &server.store, &side_metrics, fallback).await?;

        // Registration runs beside the proxy on its own task: neither can stop the other.
        let registration = Arc::new(Status::new(&config.registrations));
        registration.register(&mut registry);
        let registrar = (!config.registrations.is_empty())
            .then(|| registrar(&side, &config).spawn_with(Arc::clone(&registration)));
        let families = ListenerFamilies::default();
        families.register(&mut registry);
        let reloads = ReloadMetrics::default();
        reloads.register(&mut registry);

        let admin_addr = server
            .admin
            .local_addr()
            .expect("a bound listener has a local address");
        let own = Arc::new(OwnAddrs::default());
        let routes = Routes::new(
            Arc::clone(&server.store),
            config.services.iter().map(|s| (&s.name, &s.route)),
            config.zone.clone(),
            Arc::clone(&own),
        );
        let mut plane = Plane::new(Shared {
            store: Arc::clone(&server.store),
            routes: Arc::new(ArcSwap::new(routes)),
            families,
            own,
            tracker: TaskTracker::new(),
            connections: server.connections,
            workers: server.workers,
            drain: shutdown.clone(),
            abort: CancellationToken::new(),
            views: Arc::default(),
        });
        for (spec, listener) in server.listeners {
            plane.start(spec, listener);
        }
        let sources = Sources {
            listeners: Arc::clone(&plane.shared().views),
            registration: Arc::clone(&registration),
            etcd: side_metrics.etcd.clone(),
            started,
        };
        let admin = Arc::new(Admin::new(
            Arc::clone(&server.store),
            Arc::new(registry),
            Arc::clone(&side_metrics.discovery.freshness),
            config.admin.max_stale,
            shutdown,
            sources,
        ));
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(Arc::clone(&admin).run(server.admin, admin_stop.clone()));
        let background = CancellationToken::new();
        let pruning = tokio::spawn(prune::run(Arc::clone(&server.store), background.clone()));
        let mut running = Running {
            config,
            path: server.path,
            grace,
            plane,
            admin,
            admin_addr,
            admin_stop,
            admin_task,
            side,
            side_metrics,
            registrar,
            registration,
            checks_stop: CancellationToken::new(),
            checks: Vec::new(),
            cache: None,
            background,
            pruning,
            reloads,
        };
        running.own_addrs();
        running.start_checks();
        running.start_cache(running.config.cache.clone());
        // Logged last, after every listener's address: whoever waits for it knows them all.
        let endpoints: Vec<&str> = running
            .config
            .etcd
            .endpoints
            .iter()
            .map(|e| e.as_str())
            .collect();
        info!(admin = %admin_addr, ?endpoints, prefix = %running.config.etcd.prefix, workers = running.config.workers, "cairn started");
        Ok(running)
    }

    /// Tells the dialer every address cairn listens on, so none is ever dialed.
    pub(super) fn own_addrs(&self) {
        let mut own = self.plane.bound();
        own.push(self.admin_addr);
        self.plane.shared().own.set(own);
    }

    /// Starts the active health checks of the configured services.
    pub(super) fn start_checks(&mut self) {
        self.checks_stop.cancel();
        self.checks_stop = self.background.child_token();
        let routes = self.plane.shared().routes.load();
        self.checks = self
            .config
            .services
            .iter()
            .filter_map(|service| {
                let check = service.health.clone()?;
                let route = routes.configured(&service.name)?;
                Some(tokio::spawn(
                    HealthChecker::new(route, check).run(self.checks_stop.clone()),
                ))
            })
            .collect();
    }

    /// Writes the registry to `cache` from now on (stopping the writer of an earlier one).
    pub(super) fn start_cache(&mut self, cache: Option<CacheConfig>) {
        if let Some((stop, _)) = self.cache.take() {
            stop.cancel();
        }
        self.cache = cache.map(|c| {
            let stop = self.background.child_token();
            let task = tokio::spawn(crate::cache::run(
                c,
                Arc::clone(&self.plane.shared().store),
                Arc::clone(&self.side_metrics.discovery.freshness),
                stop.clone(),
            ));
            (stop, task)
        });
    }

    /// Stops accepting, revokes the lease, drains within the grace period, then stops the
    /// background tasks.
    pub(super) async fn shut_down(mut self) {
        self.plane.stop_all().await;
        // Deregister before draining, so other nodes stop sending here while open work finishes.
        if let Some(registrar) = self.registrar.take() {
            registrar.stop().await;
        }
        let shared = self.plane.shared();
        shared.tracker.close();
        if !shared.tracker.is_empty() {
            info!(open = shared.tracker.len(), grace = ?self.grace, "stopped accepting, draining open connections");
        }
        if tokio::time::timeout(self.grace, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(open = shared.tracker.len(), grace = ?self.grace, "grace period over, closing the remaining connections");
            shared.abort.cancel();
            shared.tracker.wait().await;
        }
        self.background.cancel();
        self.side.stop().await;
        for check in self.checks {
            let _ = check.await;
        }
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
        let _ = self.pruning.await;
        if let Some((_, task)) = self.cache {
            let _ = task.await;
        }
        info!("cairn stopped");
    }
}

/// A registrar of `config`'s registrations through `side`'s client.
pub(super) fn registrar(side: &EtcdSide, config: &Config) -> Registrar {
    Registrar::new(
        side.etcd.clone(),
        &config.etcd.prefix,
        config.lease_ttl,
        config.registrations.clone(),
    )
}

/// Binds one listener with `backlog`, warning when other hosts can reach it.
pub(super) fn bind(addr: SocketAddr, backlog: usize, what: &str) -> Result<TcpListener, Error> {
    let listener = crate::accept::bind(addr, backlog).map_err(|source| Error::Bind {
        what: what.to_string(),
        addr,
        source,
    })?;
    if !addr.ip().is_loopback() {
        warn!(listener = what, listen = %addr, "listening on a non-loopback address: other hosts can reach this port");
    }
    Ok(listener)
}
