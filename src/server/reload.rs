//! Applying a new config to a running cairn (SIGHUP) in two steps, each part of the server
//! taking its own: [`Running::prepare`] reads the file and asks each part to prepare what can
//! fail (the plane binds new ports, the admin endpoint its new address, the etcd side a new
//! etcd answering or new watches listed) and changes nothing, so a refused or abandoned reload
//! leaves cairn as it was; [`Running::commit`] then has each part commit, in an order this file
//! alone decides, and no open connection is dropped. SIGTERM cuts a reload short while it
//! prepares; a SIGHUP meanwhile makes one more.

use std::path::Path;

use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::etcd_side::{EtcdChange, Rewired};
use super::plane::{Listeners, Relistened};
use super::registrations::Registrations;
use super::running::Running;
use crate::config::Config;
use crate::error::Error;

/// A new config with what each part prepared for it. Dropped, it changes nothing.
pub(super) struct Prepared {
    /// The config.
    next: Config,
    /// The data plane's listeners, new ones bound.
    listeners: Listeners,
    /// The admin endpoint's new socket, if it moves.
    admin: Option<TcpListener>,
    /// The etcd side's change.
    etcd: EtcdChange,
}

/// What each part's commit changed, for the reload's log line.
struct Committed {
    relistened: Relistened,
    rewired: Rewired,
    registrations: bool,
    admin_moved: bool,
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
                        listeners_added = c.relistened.added,
                        listeners_removed = c.relistened.removed,
                        listeners_changed = c.relistened.changed,
                        etcd_reconnected = c.rewired.moved,
                        watches_started = c.rewired.watches_started,
                        watches_stopped = c.rewired.watches_stopped,
                        registrations_changed = c.registrations,
                        admin_moved = c.admin_moved,
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
        let listeners = self.plane.prepare(&next)?;
        let admin = self.endpoint.prepare(&next)?;
        // Last, as the slowest: a new etcd may take up to its dial timeout to answer.
        let registering = Registrations::keys(&next);
        let etcd = self.side.prepare(&next, &registering).await?;
        Ok(Prepared {
            next,
            listeners,
            admin,
            etcd,
        })
    }

    /// Has each part commit what it prepared for `prepared.next`.
    async fn commit(&mut self, prepared: Prepared) -> Committed {
        let Prepared {
            next,
            listeners,
            admin,
            etcd,
        } = prepared;
        if next.workers != self.config.workers {
            warn!(
                running = self.config.workers,
                configured = next.workers,
                "[runtime] workers takes effect at the next restart"
            );
        }
        // The etcd side first: two discoveries must not write the store at once for long, and
        // a moved registrar needs the new client.
        let rewired = self.side.commit(etcd).await;
        let registrations = (self.registrations)
            .commit(&self.config, &next, &self.side.etcd, rewired.moved)
            .await;
        // Then the listeners, whose cells and routes follow the new config before any of them
        // serves it; the admin endpoint; and what runs in the background.
        let relistened = (self.plane)
            .commit(listeners, &self.config, &next, self.grace)
            .await;
        let admin_moved = self.endpoint.commit(admin, &next).await;
        self.own_addrs();
        if next.cache != self.config.cache {
            self.start_cache(next.cache.clone());
        }
        self.config = next;
        self.start_checks();
        Committed {
            relistened,
            rewired,
            registrations,
            admin_moved,
        }
    }
}
