//! Whether discovery is current with etcd: connected while every watch is open and answering,
//! otherwise stale since the last contact of the watch that has gone longest without one.
//! `/readyz` and `/metrics` report it.
//!
//! Several discovery tasks may report to one [`Freshness`] (one per watched service when
//! discovery is scoped, one per service read from its own key): each holds a [`Contact`], and a
//! node is as fresh as its stalest watch. With no watch at all there is nothing to be behind
//! on, and it counts as connected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Discovery's contact with etcd, over all its watches.
#[derive(Debug)]
pub struct Freshness {
    /// What contact times count from.
    origin: Instant,
    /// Each live watch, by the id its [`Contact`] holds. Written once per watch message and read
    /// by scrapes and probes, so a mutex costs nothing that matters.
    watches: Mutex<HashMap<u64, WatchState>>,
    /// The id the next watch gets.
    next: AtomicU64,
    /// The id of the cluster that answered the last list (0 before any).
    cluster: AtomicU64,
}

/// One watch's contact with etcd.
#[derive(Debug, Clone, Copy, Default)]
struct WatchState {
    /// Whether its stream is open and current.
    connected: bool,
    /// Milliseconds after `origin` of its last answer from etcd.
    last_contact: u64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            origin: Instant::now(),
            watches: Mutex::default(),
            next: AtomicU64::new(0),
            cluster: AtomicU64::new(0),
        }
    }
}

/// One discovery task's place in a [`Freshness`]; dropped with the task, it leaves.
#[derive(Debug)]
pub(crate) struct Contact {
    freshness: Arc<Freshness>,
    id: u64,
}

impl Freshness {
    /// A new watch's contact, not connected yet: the node is not current until it is.
    pub(crate) fn join(self: &Arc<Self>) -> Contact {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        self.lock().insert(
            id,
            WatchState {
                connected: false,
                last_contact: now,
            },
        );
        Contact {
            freshness: Arc::clone(self),
            id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, WatchState>> {
        // A panic elsewhere cannot leave a map of plain values half-written.
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Records the cluster that answered a list.
    pub(crate) fn set_cluster(&self, id: u64) {
        self.cluster.store(id, Ordering::Relaxed);
    }

    /// The id of the cluster that answered the last list; 0 before any.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.load(Ordering::Relaxed)
    }

    /// Whether every watch is open and current.
    pub fn is_connected(&self) -> bool {
        self.lock().values().all(|w| w.connected)
    }

    /// How long since etcd last answered the watch that has gone longest without an answer,
    /// among those not current; `None` while every one is.
    pub fn stale_for(&self) -> Option<Duration> {
        let oldest = self
            .lock()
            .values()
            .filter(|w| !w.connected)
            .map(|w| w.last_contact)
            .min()?;
        Some(Duration::from_millis(self.now().saturating_sub(oldest)))
    }
}

impl Contact {
    /// Records an answer from etcd.
    pub(crate) fn contact(&self) {
        let now = self.freshness.now();
        if let Some(w) = self.freshness.lock().get_mut(&self.id) {
            w.last_contact = w.last_contact.max(now);
        }
    }

    /// Records whether the watch is open and current.
    pub(crate) fn set_connected(&self, connected: bool) {
        let now = self.freshness.now();
        if let Some(w) = self.freshness.lock().get_mut(&self.id) {
            if connected {
                w.last_contact = w.last_contact.max(now);
            }
            w.connected = connected;
        }
    }

    /// The freshness this watch reports to.
    pub(crate) fn freshness(&self) -> &Freshness {
        &self.freshness
    }
}

impl Drop for Contact {
    fn drop(&mut self) {
        self.freshness.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn staleness_counts_from_the_last_contact() {
        let f = Arc::new(Freshness::default());
        let w = f.join();
        w.set_connected(true);
        assert_eq!(f.stale_for(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        w.contact();
        tokio::time::advance(Duration::from_secs(1)).await;
        w.set_connected(false);
        tokio::time::advance(Duration::from_secs(41)).await;
        assert_eq!(f.stale_for(), Some(Duration::from_secs(42)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_is_as_fresh_as_its_stalest_watch() {
        let f = Arc::new(Freshness::default());
        assert!(f.is_connected(), "no watch: nothing to be behind on");
        let (a, b) = (f.join(), f.join());
        assert!(!f.is_connected(), "a new watch is not current yet");
        a.set_connected(true);
        b.set_connected(true);
        assert!(f.is_connected());
        tokio::time::advance(Duration::from_secs(3)).await;
        b.contact();
        b.set_connected(false);
        tokio::time::advance(Duration::from_secs(10)).await;
        // `a` keeps answering; `b` is still 10 s behind.
        a.contact();
        assert!(!f.is_connected());
        assert_eq!(f.stale_for(), Some(Duration::from_secs(10)));
        drop(b);
        assert!(f.is_connected(), "a watch that stopped no longer counts");
        assert_eq!(f.stale_for(), None);
    }
}
