//! The metrics read off the snapshot store at scrape time: the applied revision, whether the
//! registry is synced, and the instances of each service.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::snapshot::Store;

/// Encodes the store's gauges on each scrape.
#[derive(Debug)]
pub(crate) struct StoreCollector(pub(crate) Arc<Store>);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let store = &self.0;
        let revision = ConstGauge::new(store.revision());
        revision.encode(encoder.encode_descriptor(
            "cairn_registry_revision",
            "etcd revision the snapshots reflect.",
            None,
            MetricType::Gauge,
        )?)?;
        let synced = ConstGauge::new(i64::from(store.synced()));
        synced.encode(encoder.encode_descriptor(
            "cairn_registry_synced",
            "1 once the registry has been listed.",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "cairn_service_instances",
            "Instances in the current snapshot.",
            None,
            MetricType::Gauge,
        )?;
        for (name, snapshot) in store.snapshots() {
            let labels = [("service", name.as_str())];
            ConstGauge::new(snapshot.len() as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
