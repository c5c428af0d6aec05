//! The handle of a running registrar: stop it (revoking its lease), abandon it (leaving the
//! lease to expire), or hand it new registrations.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::Registration;
use super::owned::Desired;
use super::status::Status;

/// The handle of a running registrar.
#[derive(Debug)]
pub struct Handle {
    /// Stops the registrar.
    pub(super) stop: CancellationToken,
    /// Set before `stop` when the lease must be left to expire instead of revoked.
    pub(super) abandon: Arc<AtomicBool>,
    /// The registrar's task.
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Its live state.
    pub(super) status: Arc<Status>,
    /// New registrations and TTL, from a reload.
    pub(super) updates: mpsc::UnboundedSender<Desired>,
}

impl Handle {
    /// Revokes the lease (every key vanishes at once) and waits for the registrar to end.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Stops without revoking the lease, for a registrar that another one replaces (etcd's
    /// settings changed): the successor rewrites the keys under its own lease, and this lease
    /// expires by its TTL with nothing left bound to it.
    pub async fn abandon(self) {
        self.abandon
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop().await;
    }

    /// Registers `instances` instead, under a lease of `ttl`: keys that stay are left alone,
    /// new ones are written, changed ones rewritten and removed ones deleted, all under the
    /// same lease unless the TTL changed (then under a new one, and the old one is revoked).
    /// Health checks of unchanged registrations keep their state.
    pub fn update(&self, ttl: Duration, instances: Vec<Registration>) {
        let _ = self.updates.send(Desired { ttl, instances });
    }

    /// The registrar's live state.
    pub fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status)
    }
}
