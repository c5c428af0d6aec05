//! Applying a new config to a running cairn (SIGHUP) in two steps: [`Running::prepare`] does
//! everything that can fail (reading the file, binding new sockets, a new etcd answering a read
//! of the registry and allowing the registrations' writes) and changes nothing, so a refused or abandoned reload leaves cairn as it
//! was; [`Running::commit`] then gives each part what changed, and no open connection is
//! dropped. SIGTERM cuts a reload short while it prepares; a SIGHUP meanwhile makes one more.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::etcd_side::{EtcdSide, Rescope, Wiring};
use super::plane::{Identity, Spec};
use super::running::{bind, configure_cells, registrar, specs, Running};
use crate::admin::ADMIN_BACKLOG;
use crate::config::Config;
use crate::error::Error;
use crate::registry::instance_key;

/// What a reload changed, for its log line.
#[derive(Debug, Default)]
struct Changes {
    added: usize,
    removed: usize,
    changed: usize,
    etcd: bool,
    watches_started: usize,
    watches_stopped: usize,
    registrations: bool,
    admin: bool,
}

/// A new config with everything that could fail already done: its new sockets bound, its new
/// etcd answering. Dropped, it changes nothing.
pub(super) struct Prepared {
    next: Config,
    wanted: Vec<Spec>,
    fresh: HashMap<Identity, TcpListener>,
    admin_socket: Option<TcpListener>,
    side: Option<EtcdSide>,
    rescope: Option<Rescope>,
}

/// What the signal loop does after a reload.
pub(super) enum After {
    /// Go on running.
    Run,
    /// SIGTERM came during the reload: shut down.
    ShutDown,
}

impl Running {
    /// Reads the config file again and applies it; an invalid file, or one whose new ports
    /// or etcd cannot be had, is logged with what is wrong and the running config kept.
    ///
    /// While the new config is prepared (a new etcd may take seconds to answer, or never),
    /// SIGTERM abandons the reload, nothing of it applied, and more SIGHUPs are coalesced into
    /// one more reload once this one is done. Once prepared, the commit is quick and runs to
    /// its end.
    pub(super) async fn reload(
        &mut self,
        hangups: &mut Signal,
        shutdown: &CancellationToken,
    ) -> After {
        let Some(path) = self.path.clone() else {
            info!("SIGHUP received, but this cairn has no config file to read again");
            return After::Run;
        };
        let mut again = true;
        while std::mem::take(&mut again) {
            info!(path = %path.display(), "SIGHUP received, reloading the config");
            let prepared = {
                let prepare = self.prepare(&path);
                tokio::pin!(prepare);
                loop {
                    tokio::select! {
                        prepared = &mut prepare => break prepared,
                        _ = shutdown.cancelled() => {
                            info!("shutting down: the reload is abandoned, nothing of it was applied");
                            return After::ShutDown;
                        }
                        Some(()) = hangups.recv() => {
                            if !again {
                                info!("SIGHUP during a reload: the config is read again once this reload is done");
                            }
                            again = true;
                        }
                    }
                }
            };
            match prepared {
                Ok(prepared) => {
                    let c = self.commit(prepared).await;
                    self.reloads.count(true);
                    info!(
                        listeners_added = c.added,
                        listeners_removed = c.removed,
                        listeners_changed = c.changed,
                        etcd_reconnected = c.etcd,
                        watches_started = c.watches_started,
                        watches_stopped = c.watches_stopped,
                        registrations_changed = c.registrations,
                        admin_moved = c.admin,
                        "config reloaded"
                    );
                }
                Err(e) => {
                    self.reloads.count(false);
                    error!(error = %e, "config reload refused, still running the previous config");
                }
            }
        }
        After::Run
    }

    /// Everything of the config at `path` that can fail, changing nothing that runs.
    async fn prepare(&self, path: &Path) -> Result<Prepared, Error> {
        let next = Config::load(path).map_err(Error::Config)?;
        let wanted = specs(&next);
        let mut fresh: HashMap<_, TcpListener> = HashMap::new();
        for spec in &wanted {
            if !self.plane.has(&spec.identity()) {
                let listener = bind(spec.listen(), spec.max_connections(), &spec.what())?;
                fresh.insert(spec.identity(), listener);
            }
        }
        let admin_socket = match next.admin.listen == self.config.admin.listen {
            true => None,
            false => Some(bind(next.admin.listen, ADMIN_BACKLOG, "[admin]")?),
        };
        let wiring = Wiring::of(&next);
        let (mut side, mut rescope) = (None, None);
        if wiring != self.side.wiring && self.side.wiring.rescopes_to(&wiring) {
            // Only the routed services changed: their watches start now and list before the
            // commit, so a new listener has its instances the moment it opens.
            rescope = Some(self.side.rescope(wiring, next.etcd.dial_timeout).await);
        } else if wiring != self.side.wiring {
            // The registrar moves to the new etcd: it must be able to write there, or the old
            // lease would be given up for keys nobody can write.
            let registering: Vec<String> = next
                .registrations
                .iter()
                .map(|r| instance_key(&next.etcd.prefix, &r.service, &r.id))
                .collect();
            let store = &self.plane.shared().store;
            side = Some(
                EtcdSide::start_answering(wiring, &registering, store, &self.side_metrics).await?,
            );
        }
        Ok(Prepared {
            next,
            wanted,
            fresh,
            admin_socket,
            side,
            rescope,
        })
    }

    /// Applies a prepared config: each part takes what changed.
    async fn commit(&mut self, prepared: Prepared) -> Changes {
        let Prepared {
            next,
            wanted,
            mut fresh,
            admin_socket,
            side,
            rescope,
        } = prepared;
        if next.workers != self.config.workers {
            warn!(
                running = self.config.workers,
                configured = next.workers,
                "[runtime] workers takes effect at the next restart"
            );
        }

        let mut changes = Changes::default();
        // The etcd side first: two discoveries must not write the store at once for long.
        let registrations_changed = next.registrations != self.config.registrations
            || next.lease_ttl != self.config.lease_ttl;
        if let Some(rescope) = rescope {
            (changes.watches_started, changes.watches_stopped) = self.side.rescoped(rescope).await;
        }
        if let Some(side) = side {
            // The old registrar's lease is left to expire: the new one rewrites the keys under
            // its own lease at once, so they never disappear in between. With nothing left to
            // register, it is revoked instead.
            match self.registrar.take() {
                Some(old) if next.registrations.is_empty() => {
                    old.stop().await;
                    self.registration.set_registrations(&[]);
                }
                Some(old) => old.abandon().await,
                None => {}
            }
            std::mem::replace(&mut self.side, side).stop().await;
            self.side.forget_unwatched();
            changes.etcd = true;
            if !next.registrations.is_empty() {
                let status = Arc::clone(&self.registration);
                self.registrar = Some(registrar(&self.side, &next).spawn_with(status));
            }
        } else if registrations_changed {
            match self.registrar.take() {
                Some(r) if next.registrations.is_empty() => {
                    r.stop().await;
                    self.registration.set_registrations(&[]);
                }
                Some(r) => {
                    r.update(next.lease_ttl, next.registrations.clone());
                    self.registrar = Some(r);
                }
                None if next.registrations.is_empty() => {}
                None => {
                    let status = Arc::clone(&self.registration);
                    self.registrar = Some(registrar(&self.side, &next).spawn_with(status));
                }
            }
        }
        let shared = self.plane.shared();
        configure_cells(&shared.store, &next, Some(&self.config));
        let routes = shared.routes.load().renew(
            next.services.iter().map(|s| (&s.name, &s.route)),
            next.zone.clone(),
        );
        shared.routes.store(routes);
        let keep: Vec<_> = wanted.iter().map(Spec::identity).collect();
        for gone in self.plane.absent_from(&keep) {
            self.plane.remove(&gone, self.grace).await;
            changes.removed += 1;
        }
        for spec in wanted {
            match fresh.remove(&spec.identity()) {
                Some(listener) => {
                    self.plane.start(spec, listener);
                    changes.added += 1;
                }
                None => changes.changed += usize::from(self.plane.hand_over(spec).await),
            }
        }
        self.admin.set_max_stale(next.admin.max_stale);
        if let Some(socket) = admin_socket {
            self.admin_stop.cancel();
            let _ = (&mut self.admin_task).await;
            self.admin_addr = socket
                .local_addr()
                .expect("a bound listener has a local address");
            self.admin_stop = tokio_util::sync::CancellationToken::new();
            self.admin_task =
                tokio::spawn(Arc::clone(&self.admin).run(socket, self.admin_stop.clone()));
            info!(admin = %self.admin_addr, "admin endpoint moved");
            changes.admin = true;
        }
        self.own_addrs();

        changes.registrations = registrations_changed;
        if next.cache != self.config.cache {
            self.start_cache(next.cache.clone());
        }
        self.config = next;
        self.start_checks();
        changes
    }
}
