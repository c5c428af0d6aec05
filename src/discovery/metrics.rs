//! Counters of the discovery task, exported on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters of the discovery task. Clones share the same counters.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryMetrics {
    /// Registry values skipped because they fit no format or name an unusable address.
    pub invalid_values: Counter,
    /// Full lists of the registry applied (the first sync, one per compaction or restore).
    pub lists: Counter,
    /// Watch streams opened after the first (after errors, compaction or silence).
    pub watch_restarts: Counter,
    /// Events ignored because their revision was already applied.
    pub repeated_events: Counter,
}

impl DiscoveryMetrics {
    /// Adds the counters to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_registry_invalid_values",
            "Registry values skipped as unusable",
            self.invalid_values.clone(),
        );
        registry.register(
            "cairn_discovery_lists",
            "Full lists of the registry applied",
            self.lists.clone(),
        );
        registry.register(
            "cairn_discovery_watch_restarts",
            "Watch streams reopened",
            self.watch_restarts.clone(),
        );
        registry.register(
            "cairn_discovery_repeated_events",
            "Watch events dropped as already applied",
            self.repeated_events.clone(),
        );
    }
}
