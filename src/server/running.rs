//! A running cairn: what it holds (listeners, the admin endpoint, the etcd side, the
//! registrar, health checks, background tasks), how it starts and how it shuts down in order.

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

use super::endpoint::Endpoint;
use super::etcd_side::{EtcdSide, SideMetrics, Wiring};
use super::plane::{Plane, Shared};
use super::prune;
use super::registrations::Registrations;
use super::reload_metrics::ReloadMetrics;
use super::spec::Spec;
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
    /// The admin endpoint.
    pub(super) endpoint: Endpoint,
    /// The etcd client and discovery.
    pub(super) side: EtcdSide,
    /// What every generation of it counts.
    pub(super) side_metrics: SideMetrics,
    /// This node's registrations.
    pub(super) registrations: Registrations,
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
        let registrations = Registrations::start(&side.etcd, &config, &mut registry);
        let families = ListenerFamilies::default();
        families.register(&mut registry);
        let reloads = ReloadMetrics::default();
        reloads.register(&mut registry);

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
            registration: Arc::clone(&registrations.status),
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
        let endpoint = Endpoint::start(admin, config.admin.listen, server.admin);
        let admin_addr = endpoint.addr;
        let background = CancellationToken::new();
        let pruning = tokio::spawn(prune::run(Arc::clone(&server.store), background.clone()));
        let mut running = Running {
            config,
            path: server.path,
            grace,
            plane,
            endpoint,
            side,
            side_metrics,
            registrations,
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
        own.push(self.endpoint.addr);
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
        self.registrations.stop().await;
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
        self.endpoint.stop().await;
        let _ = self.pruning.await;
        if let Some((_, task)) = self.cache {
            let _ = task.await;
        }
        info!("cairn stopped");
    }
}
