//! Counters operators read from `/metrics`: what discovery skipped and what listeners did.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of the discovery task.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    /// Registry values skipped because they fit no format or name an unusable address.
    pub invalid_values: AtomicU64,
    /// Full lists of the registry applied (the first sync, and one per compaction).
    pub lists: AtomicU64,
    /// Watch streams opened after the first (after errors, compaction or silence).
    pub watch_restarts: AtomicU64,
    /// Events ignored because their revision was already applied.
    pub repeated_events: AtomicU64,
}

/// Counters of one listener.
#[derive(Debug)]
pub struct ListenerStats {
    /// The service the listener forwards to; a gateway says `*`.
    pub service: String,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// HTTP requests received (0 for TCP listeners).
    pub requests: AtomicU64,
    /// Connections or requests open right now.
    pub active: AtomicI64,
    /// Connections or requests refused because the service had no instances.
    pub no_instances: AtomicU64,
    /// Connects to an instance that failed or timed out.
    pub connect_failures: AtomicU64,
    /// Connections or requests for which every attempt failed.
    pub exhausted: AtomicU64,
    /// HTTP: requests whose instance sent no response headers in time (504).
    pub timeouts: AtomicU64,
    /// HTTP: requests that reached an instance which then failed them (502).
    pub upstream_errors: AtomicU64,
    /// HTTP gateways: requests for a service the registry does not know (404).
    pub not_found: AtomicU64,
}

impl ListenerStats {
    fn new(service: &str) -> ListenerStats {
        ListenerStats {
            service: service.to_string(),
            accepted: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            active: AtomicI64::new(0),
            no_instances: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
        }
    }

    /// Adds one to `counter`.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps a listener's `active` gauge true however its connection ends.
pub(crate) struct ActiveGuard(Arc<ListenerStats>);

impl ActiveGuard {
    pub(crate) fn new(stats: &Arc<ListenerStats>) -> ActiveGuard {
        stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(stats))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All counters of one cairn process.
#[derive(Debug, Default)]
pub struct Stats {
    /// Discovery counters.
    pub discovery: Arc<DiscoveryStats>,
    /// One entry per listener, added at start.
    listeners: Mutex<Vec<(String, Arc<ListenerStats>)>>,
}

impl Stats {
    /// Registers the counters of the listener on `listen` forwarding to `service`.
    pub fn listener(&self, listen: &str, service: &str) -> Arc<ListenerStats> {
        let stats = Arc::new(ListenerStats::new(service));
        self.listeners
            .lock()
            .expect("stats lock is never held across a panic")
            .push((listen.to_string(), Arc::clone(&stats)));
        stats
    }

    /// Every listener's counters, keyed by listen address, in registration order.
    pub fn listeners(&self) -> Vec<(String, Arc<ListenerStats>)> {
        self.listeners
            .lock()
            .expect("stats lock is never held across a panic")
            .clone()
    }
}
