//! One cairn process: binds every listener, starts discovery, and shuts down in order.
//!
//! Shutdown order: stop accepting, revoke the registration lease, drain open connections within
//! the grace period (then cut the rest, with a warning), then stop the background tasks
//! (discovery, admin).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use prometheus_client::registry::Registry;

use crate::accept::{open_file_budget, Caps};
use crate::admin::{Admin, StoreCollector, ADMIN_BACKLOG};
use crate::config::Config;
use crate::discovery::{Discovery, DiscoveryMetrics};
use crate::error::Error;
use crate::etcd::{Etcd, EtcdMetrics, Members};
use crate::net::OwnAddrs;
use crate::proxy::health::HealthChecker;
use crate::proxy::http::{Forwarder, HttpListener, Routes, Routing};
use crate::proxy::tcp::TcpProxy;
use crate::proxy::{GatewayConfig, ListenerFamilies, Protocol, ServiceConfig};
use crate::register::Registrar;
use crate::snapshot::{Scope, Store, StoreWriter};
use crate::throttle::Throttle;

/// A cairn process with every socket bound, ready to run.
#[derive(Debug)]
pub struct Server {
    /// The validated configuration.
    config: Config,
    /// The admin listener.
    admin: TcpListener,
    /// One bound listener per `[[service]]`, in config order.
    listeners: Vec<(ServiceConfig, TcpListener)>,
    /// One bound listener per `[[gateway]]`, in config order.
    gateways: Vec<(GatewayConfig, TcpListener)>,
    /// The snapshots every listener reads.
    store: Arc<Store>,
    /// Connections every data-plane listener together may hold, so the open-file limit is
    /// never reached by clients alone.
    connections: Arc<Semaphore>,
}

impl Server {
    /// Binds the admin endpoint and every service listener.
    ///
    /// Binding before running means a port already in use stops cairn at start with a clear
    /// error instead of leaving a listener silently missing.
    ///
    /// # Errors
    /// [`Error::Bind`] naming the listener whose address could not be bound.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let admin = bind(config.admin.listen, ADMIN_BACKLOG, "[admin]")?;
        let mut listeners = Vec::with_capacity(config.services.len());
        for service in &config.services {
            let what = format!("service \"{}\"", service.name);
            let listener = bind(service.listen, service.limits.max_connections, &what)?;
            listeners.push((service.clone(), listener));
        }
        let mut gateways = Vec::with_capacity(config.gateways.len());
        for (i, gateway) in config.gateways.iter().enumerate() {
            let what = format!("gateway[{i}]");
            let listener = bind(gateway.listen, gateway.limits.max_connections, &what)?;
            gateways.push((gateway.clone(), listener));
        }
        let wanted: usize = config
            .services
            .iter()
            .map(|s| s.limits.max_connections)
            .chain(config.gateways.iter().map(|g| g.limits.max_connections))
            .fold(0, usize::saturating_add);
        let allowed = match open_file_budget() {
            Some((open_files, allowed)) => {
                if wanted > allowed {
                    warn!(
                        open_files,
                        max_connections = wanted,
                        served_at_once = allowed,
                        "the open-file limit allows fewer connections than the listeners' max_connections add up to; the rest wait in the backlog (raise LimitNOFILE or ulimit -n)"
                    );
                }
                allowed
            }
            None => wanted,
        };
        let store = Store::new();
        for service in &config.services {
            store
                .cell(&service.name)
                .configure(service.route.policy(config.zone.clone()));
        }
        Ok(Server {
            config,
            admin,
            listeners,
            gateways,
            store,
            connections: Arc::new(Semaphore::new(allowed.clamp(1, Semaphore::MAX_PERMITS))),
        })
    }

    /// The bound admin address (useful when the config asked for port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// Each service's bound listen address, in config order.
    pub fn listen_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|(s, l)| {
                let addr = l
                    .local_addr()
                    .expect("a bound listener has a local address");
                (s.name.to_string(), addr)
            })
            .collect()
    }

    /// Each gateway's bound listen address, in config order.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways
            .iter()
            .map(|(_, l)| {
                l.local_addr()
                    .expect("a bound listener has a local address")
            })
            .collect()
    }

    /// The snapshot store the listeners read.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Runs until `shutdown` fires, then drains open connections for at most `grace`.
    ///
    /// # Errors
    /// When the etcd client cannot be built from the configured endpoints.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<(), Error> {
        let etcd_metrics = EtcdMetrics::default();
        let etcd = Etcd::connect(&self.config.etcd, etcd_metrics.clone()).await?;
        // Background tasks outlive the listeners so the drain still routes with fresh snapshots.
        let background = CancellationToken::new();
        // Fires when the grace period is over and remaining connections must be cut.
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StoreCollector(Arc::clone(&self.store))));

        etcd_metrics.register(&mut registry);
        let members = tokio::spawn(
            Members::new(self.config.etcd.clone(), etcd_metrics).run(background.clone()),
        );
        let discovery_metrics = DiscoveryMetrics::default();
        discovery_metrics.register(&mut registry);
        let freshness = Arc::clone(&discovery_metrics.freshness);
        // Services read from their own key (go-zero's layout) get a watch of their own; the
        // prefix's watch leaves them alone.
        let keyed: Vec<(&ServiceConfig, &str)> = self
            .config
            .services
            .iter()
            .filter_map(|s| s.key.as_deref().map(|k| (s, k)))
            .collect();
        let mut discoveries = vec![Discovery::new(
            etcd.clone(),
            &self.config.etcd.prefix,
            StoreWriter::scoped(
                Arc::clone(&self.store),
                Scope::AllBut(keyed.iter().map(|(s, _)| s.name.to_string()).collect()),
            ),
            discovery_metrics.clone(),
        )
        .spawn(background.clone())];
        for (service, key) in &keyed {
            info!(service = %service.name, key, "reading this service's instances from its own key");
            let metrics = DiscoveryMetrics {
                freshness: Arc::default(),
                ..discovery_metrics.clone()
            };
            let writer = StoreWriter::scoped(
                Arc::clone(&self.store),
                Scope::Only(service.name.to_string()),
            );
            discoveries.push(
                Discovery::new(etcd.clone(), key, writer, metrics)
                    .for_service(&service.name)
                    .spawn(background.clone()),
            );
        }

        // Registration runs beside the proxy on its own task: neither can stop the other.
        let registrar = (!self.config.registrations.is_empty()).then(|| {
            Registrar::new(
                etcd.clone(),
                &self.config.etcd.prefix,
                self.config.lease_ttl,
                self.config.registrations.clone(),
            )
            .spawn()
        });
        if let Some(r) = &registrar {
            r.status().register(&mut registry);
        }
        let families = ListenerFamilies::default();
        families.register(&mut registry);
        let admin = Arc::new(Admin {
            store: Arc::clone(&self.store),
            registry: Arc::new(registry),
            freshness,
            max_stale: self.config.admin.max_stale,
            draining: shutdown.clone(),
        });
        let admin_addr = self.admin_addr();
        let mut own: Vec<SocketAddr> = vec![admin_addr];
        own.extend(self.listen_addrs().into_iter().map(|(_, a)| a));
        own.extend(self.gateway_addrs());
        let own = Arc::new(OwnAddrs::new(own));
        let admin_task = tokio::spawn(admin.run(self.admin, background.clone()));

        let routes = Routes::new(
            Arc::clone(&self.store),
            self.config.services.iter().map(|s| (&s.name, &s.route)),
            self.config.zone.clone(),
            Arc::clone(&own),
        );
        let checks = self.config.services.iter().filter_map(|service| {
            let check = service.health.clone()?;
            let route = routes.configured(&service.name)?;
            Some(tokio::spawn(
                HealthChecker::new(route, check, Arc::clone(&own)).run(background.clone()),
            ))
        });
        let checks: Vec<_> = checks.collect();
        let forwarder = |metrics| Forwarder {
            metrics,
            tunnels: tracker.clone(),
            abort: abort.clone(),
        };
        let mut accepting = Vec::with_capacity(self.listeners.len() + self.gateways.len());
        for (service, listener) in self.listeners {
            let listen = listener
                .local_addr()
                .expect("a bound listener has a local address");
            let metrics = families.listener(&listen.to_string(), &service.name);
            let caps = Caps::new(
                service.limits.max_connections,
                Some(Arc::clone(&self.connections)),
            );
            info!(service = %service.name, %listen, protocol = service.protocol.as_str(), "listening");
            let task = match service.protocol {
                Protocol::Tcp => {
                    let proxy = Arc::new(TcpProxy {
                        cell: self.store.cell(&service.name),
                        service: service.name,
                        hash_client_ip: service.route.hash_key.is_some(),
                        connect_timeout: service.route.connect_timeout,
                        retries: service.route.retries,
                        metrics,
                        throttle: Throttle::per_second(),
                        own: Arc::clone(&own),
                    });
                    tokio::spawn(proxy.run(
                        listener,
                        caps,
                        tracker.clone(),
                        shutdown.clone(),
                        abort.clone(),
                    ))
                }
                Protocol::Http => {
                    let route = routes
                        .configured(&service.name)
                        .expect("every [[service]] block has a route");
                    let http = Arc::new(HttpListener {
                        routing: Routing::Service(route),
                        routes: Arc::clone(&routes),
                        forwarder: forwarder(metrics),
                        limits: service.limits,
                    });
                    tokio::spawn(http.run(listener, caps, tracker.clone(), shutdown.clone()))
                }
            };
            accepting.push(task);
        }
        for (gateway, listener) in self.gateways {
            let listen = listener
                .local_addr()
                .expect("a bound listener has a local address");
            let metrics = families.listener(&listen.to_string(), "*");
            let caps = Caps::new(
                gateway.limits.max_connections,
                Some(Arc::clone(&self.connections)),
            );
            info!(%listen, host_suffix = gateway.host_suffix.as_deref().unwrap_or(""), "gateway listening");
            let http = Arc::new(HttpListener {
                routing: Routing::Gateway {
                    suffix: gateway.host_suffix,
                },
                routes: Arc::clone(&routes),
                forwarder: forwarder(metrics),
                limits: gateway.limits,
            });
            accepting.push(tokio::spawn(http.run(
                listener,
                caps,
                tracker.clone(),
                shutdown.clone(),
            )));
        }

        // Logged last, after every listener's address: whoever waits for it knows them all.
        let endpoints: Vec<&str> = self
            .config
            .etcd
            .endpoints
            .iter()
            .map(|e| e.as_str())
            .collect();
        info!(admin = %admin_addr, ?endpoints, prefix = %self.config.etcd.prefix, "cairn started");

        shutdown.cancelled().await;
        for task in accepting {
            let _ = task.await;
        }
        // Deregister before draining, so other nodes stop sending here while open work finishes.
        if let Some(registrar) = registrar {
            registrar.stop().await;
        }
        tracker.close();
        if !tracker.is_empty() {
            info!(open = tracker.len(), grace = ?grace, "stopped accepting, draining open connections");
        }
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(open = tracker.len(), grace = ?grace, "grace period over, closing the remaining connections");
            abort.cancel();
            tracker.wait().await;
        }
        background.cancel();
        for discovery in discoveries {
            let _ = discovery.await;
        }
        let _ = members.await;
        for check in checks {
            let _ = check.await;
        }
        let _ = admin_task.await;
        info!("cairn stopped");
        Ok(())
    }
}

/// Binds one listener with `backlog`, warning when other hosts can reach it.
fn bind(addr: SocketAddr, backlog: usize, what: &str) -> Result<TcpListener, Error> {
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
