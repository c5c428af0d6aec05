//! The reload counters: `cairn_config_reloads_total{result}` and the time of the last good one.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `result` label of the reload counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

/// `cairn_config_reloads_total{result}` and the time of the last good one.
#[derive(Debug, Default)]
pub(crate) struct ReloadMetrics {
    reloads: Family<ReloadResult, Counter>,
    last_success: Gauge<f64, AtomicU64>,
}

impl ReloadMetrics {
    /// Adds both to `registry`; the config read at start counts as the first success.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_config_reloads",
            "Config reloads (SIGHUP), by result",
            self.reloads.clone(),
        );
        registry.register(
            "cairn_config_last_reload_success_timestamp_seconds",
            "When the config in force was read (Unix time)",
            self.last_success.clone(),
        );
        for result in ["success", "failure"] {
            let _ = self.reloads.get_or_create(&ReloadResult { result });
        }
        self.stamp();
    }

    fn stamp(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.last_success.set(now.as_secs_f64());
    }

    pub(super) fn count(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadResult { result }).inc();
        if ok {
            self.stamp();
        }
    }
}
