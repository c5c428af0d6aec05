//! Whether discovery is current with etcd: connected while its watch is open and answering,
//! otherwise stale since its last contact. `/readyz` and `/metrics` report it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Discovery's contact with etcd.
#[derive(Debug)]
pub struct Freshness {
    /// What `last_contact` counts from.
    origin: Instant,
    /// Whether the watch is open and current.
    connected: AtomicBool,
    /// Milliseconds after `origin` of the last answer from etcd.
    last_contact: AtomicU64,
    /// The id of the cluster that answered the last list (0 before any).
    cluster: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            origin: Instant::now(),
            connected: AtomicBool::new(false),
            last_contact: AtomicU64::new(0),
            cluster: AtomicU64::new(0),
        }
    }
}

impl Freshness {
    /// Records an answer from etcd.
    pub(crate) fn contact(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_contact.fetch_max(now, Ordering::Relaxed);
    }

    /// Records whether the watch is open and current.
    pub(crate) fn set_connected(&self, connected: bool) {
        if connected {
            self.contact();
        }
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Records the cluster that answered a list.
    pub(crate) fn set_cluster(&self, id: u64) {
        self.cluster.store(id, Ordering::Relaxed);
    }

    /// The id of the cluster that answered the last list; 0 before any.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.load(Ordering::Relaxed)
    }

    /// Whether the watch is open and current.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// How long since etcd last answered, while the watch is not current; `None` while it is.
    pub fn stale_for(&self) -> Option<Duration> {
        if self.is_connected() {
            return None;
        }
        let last = Duration::from_millis(self.last_contact.load(Ordering::Relaxed));
        Some(self.origin.elapsed().saturating_sub(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn staleness_counts_from_the_last_contact() {
        let f = Freshness::default();
        f.set_connected(true);
        assert_eq!(f.stale_for(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        f.contact();
        tokio::time::advance(Duration::from_secs(1)).await;
        f.set_connected(false);
        tokio::time::advance(Duration::from_secs(41)).await;
        assert_eq!(f.stale_for(), Some(Duration::from_secs(42)));
    }
}
