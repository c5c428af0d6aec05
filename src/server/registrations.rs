//! This node's registrations as a part of the server: the registrar (when there is anything
//! to register) and its state, which outlives registrars so `/metrics` and the status page
//! follow one history.
//!
//! A reload's commit hands it the new config and, when `[etcd]` changed, the new client: the
//! registrar is told the new registrations, or replaced by one on the new client (the old lease
//! is left to expire, so the keys never disappear in between), or stopped when nothing is left
//! to register. A stop's lease revoke runs in the background (up to 3 s each on a frozen etcd),
//! so neither a reload nor a SIGTERM after it waits on it; it is awaited before another
//! registrar reports to the same state, and at shutdown.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::etcd::Etcd;
use crate::register::{Handle, Registrar, Status};
use crate::registry::instance_key;

/// The registrar and its state.
pub(super) struct Registrations {
    /// The running registrar, when the config has registrations.
    registrar: Option<Handle>,
    /// Its state, kept across registrars.
    pub(super) status: Arc<Status>,
    /// Registrars being stopped (their leases revoked) in the background.
    retiring: Vec<JoinHandle<()>>,
}

impl Registrations {
    /// Starts registering `config`'s registrations through `etcd`, if it has any.
    pub(super) fn start(etcd: &Etcd, config: &Config, metrics: &mut Registry) -> Registrations {
        let status = Arc::new(Status::new(&config.registrations));
        status.register(metrics);
        let registrar = (!config.registrations.is_empty())
            .then(|| registrar(etcd, config).spawn_with(Arc::clone(&status)));
        Registrations {
            registrar,
            status,
            retiring: Vec::new(),
        }
    }

    /// The keys `next` would have a registrar write: a new etcd must allow writing them before
    /// a reload moves there.
    pub(super) fn keys(next: &Config) -> Vec<String> {
        next.registrations
            .iter()
            .map(|r| instance_key(&next.etcd.prefix, &r.service, &r.id))
            .collect()
    }

    /// Follows `next` (whose registrations or TTL may differ from `current`'s) through `etcd`,
    /// the client now in force; `moved` when it is a new one (`[etcd]` changed). Returns
    /// whether the registrations changed.
    pub(super) async fn commit(
        &mut self,
        current: &Config,
        next: &Config,
        etcd: &Etcd,
        moved: bool,
    ) -> bool {
        let changed =
            next.registrations != current.registrations || next.lease_ttl != current.lease_ttl;
        self.retiring.retain(|task| !task.is_finished());
        match self.registrar.take() {
            Some(old) if next.registrations.is_empty() => {
                // Nothing left to register: revoke the lease, so the keys go at once.
                self.retiring.push(tokio::spawn(old.stop()));
                self.status.set_registrations(&[]);
            }
            // The new registrar rewrites the keys under its own lease at once.
            Some(old) if moved => old.abandon().await,
            Some(running) => {
                if changed {
                    running.update(next.lease_ttl, next.registrations.clone());
                }
                self.registrar = Some(running);
            }
            None => {}
        }
        if let (None, false) = (&self.registrar, next.registrations.is_empty()) {
            // A retiring registrar clears the state as it ends: it must be done first.
            for task in self.retiring.drain(..) {
                let _ = task.await;
            }
            self.registrar = Some(registrar(etcd, next).spawn_with(Arc::clone(&self.status)));
        }
        changed
    }

    /// Revokes the lease (this node's instances leave the registry at once) and waits for
    /// every registrar to end.
    pub(super) async fn stop(mut self) {
        if let Some(registrar) = self.registrar.take() {
            registrar.stop().await;
        }
        for task in self.retiring {
            let _ = task.await;
        }
    }
}

/// A registrar of `config`'s registrations through `etcd`.
fn registrar(etcd: &Etcd, config: &Config) -> Registrar {
    Registrar::new(
        etcd.clone(),
        &config.etcd.prefix,
        config.lease_ttl,
        config.registrations.clone(),
    )
}
