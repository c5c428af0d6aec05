//! Counters of the discovery task, exported on `/metrics`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::freshness::Freshness;

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
    /// Whether discovery is current with etcd.
    pub freshness: Arc<Freshness>,
}

/// Encodes `cairn_registry_connected` and `cairn_registry_stale_seconds` at each scrape.
#[derive(Debug)]
struct FreshnessCollector(Arc<Freshness>);

impl Collector for FreshnessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        ConstGauge::new(i64::from(self.0.is_connected())).encode(encoder.encode_descriptor(
            "cairn_registry_connected",
            "1 while the registry watch is open and current.",
            None,
            MetricType::Gauge,
        )?)?;
        let stale = self.0.stale_for().map_or(0.0, |d| d.as_secs_f64());
        ConstGauge::new(stale).encode(encoder.encode_descriptor(
            "cairn_registry_stale_seconds",
            "0 while connected; else seconds since etcd last answered.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
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
        registry.register_collector(Box::new(FreshnessCollector(Arc::clone(&self.freshness))));
    }
}
