//! One cairn process: binds every listener, starts discovery and registration, applies a new
//! config on SIGHUP, and shuts down in order.
//!
//! Shutdown order: stop accepting, revoke the registration lease, drain open connections within
//! the grace period (then cut the rest, with a warning), then stop the background tasks
//! (discovery, admin).
//!
//! The parts, each with its own reload steps (`prepare` does what can fail and changes
//! nothing; `commit` applies it):
//! - `plane`: the data-plane listeners as they run, with the services' cells and routes;
//!   `spec`: what a listener is across reloads, and how its socket is bound;
//! - `endpoint`: the admin endpoint;
//! - `etcd_side`: the etcd client and the discovery tasks;
//! - `registrations`: the registrar and its state.
//!
//! And what ties them: `running` (what a running cairn holds, how it starts and shuts down),
//! `reload` (the order of the parts' steps, SIGTERM and SIGHUP during a reload) with
//! `reload_metrics`, and `prune` (services that left the registry are forgotten).

mod endpoint;
mod etcd_side;
mod plane;
mod prune;
mod registrations;
mod reload;
mod reload_metrics;
mod running;
mod spec;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::accept::open_file_budget;
use crate::admin::ADMIN_BACKLOG;
use crate::config::Config;
use crate::error::Error;
use crate::rt::workers::Workers;
use crate::snapshot::Store;
use plane::configure_cells;
use running::{Bound, Running};
use spec::{bind, specs, Spec};

/// A cairn process with every socket bound, ready to run.
#[derive(Debug)]
pub struct Server {
    /// The config and the sockets it asked for.
    bound: Bound,
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
        let mut listeners = Vec::new();
        for spec in specs(&config) {
            let listener = bind(spec.listen(), spec.max_connections(), &spec.what())?;
            listeners.push((spec, listener));
        }
        let wanted: usize = listeners
            .iter()
            .map(|(s, _)| s.max_connections())
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
        configure_cells(&store, &config, None);
        Ok(Server {
            bound: Bound {
                config,
                path: None,
                admin,
                listeners,
                store,
                connections: Arc::new(Semaphore::new(allowed.clamp(1, Semaphore::MAX_PERMITS))),
                workers: Workers::single(),
            },
        })
    }

    /// Deals accepted connections to `workers` (started from `[runtime] workers`) instead of
    /// serving them all on the calling runtime.
    pub fn on(mut self, workers: Workers) -> Server {
        self.bound.workers = workers;
        self
    }

    /// Reads the next configuration from `path` on each SIGHUP, and applies what changed
    /// without dropping a connection; an invalid file is logged and the running config kept.
    pub fn reloads_from(mut self, path: PathBuf) -> Server {
        self.bound.path = Some(path);
        self
    }

    /// The bound admin address (useful when the config asked for port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.bound
            .admin
            .local_addr()
            .expect("a bound listener has a local address")
    }

    fn bound(&self, gateways: bool) -> impl Iterator<Item = (&Spec, SocketAddr)> {
        self.bound
            .listeners
            .iter()
            .filter(move |(s, _)| matches!(s, Spec::Gateway(..)) == gateways)
            .map(|(s, l)| {
                let addr = l
                    .local_addr()
                    .expect("a bound listener has a local address");
                (s, addr)
            })
    }

    /// Each service's bound listen address, in config order.
    pub fn listen_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.bound(false)
            .filter_map(|(s, a)| match s {
                Spec::Service(s) => Some((s.name.to_string(), a)),
                Spec::Gateway(..) => None,
            })
            .collect()
    }

    /// Each gateway's bound listen address, in config order.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.bound(true).map(|(_, a)| a).collect()
    }

    /// The snapshot store the listeners read.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.bound.store)
    }

    /// Runs until `shutdown` fires, then drains open connections for at most `grace`.
    ///
    /// # Errors
    /// When the etcd client cannot be built from the configured endpoints.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> Result<(), Error> {
        // Installed first: from here on SIGHUP reloads instead of killing the process.
        let mut hangups = signal(SignalKind::hangup()).map_err(|source| Error::Io {
            what: "installing a SIGHUP handler".to_string(),
            source,
        })?;
        let mut running = Running::start(self.bound, shutdown.clone(), grace).await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = hangups.recv() => match running.reload(&mut hangups, &shutdown).await {
                    reload::After::Run => {}
                    reload::After::ShutDown => break,
                },
            }
        }
        running.shut_down().await;
        Ok(())
    }
}
