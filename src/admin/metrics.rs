//! The metrics read off the snapshot store at scrape time: the applied revision, whether the
//! registry is synced, and for each service its instances, how many are usable, its ejections,
//! its instances' answer times and its active health checks.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::snapshot::{ServiceCell, Store};

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
        let cells = store.cells();
        per_service(
            &mut encoder,
            (
                "cairn_service_instances",
                "Instances in the current snapshot.",
                MetricType::Gauge,
            ),
            &cells,
            |cell| cell.load().len() as u64,
        )?;
        per_service(
            &mut encoder,
            (
                "cairn_instances_usable",
                "Instances a pick may return now (all of them during a panic).",
                MetricType::Gauge,
            ),
            &cells,
            |cell| cell.load().usable() as u64,
        )?;
        per_service(
            &mut encoder,
            (
                "cairn_instance_ejections",
                "Instances ejected for failing.",
                MetricType::Counter,
            ),
            &cells,
            |cell| cell.ejections(),
        )?;
        let mut family = encoder.encode_descriptor(
            "cairn_response_seconds",
            "Time from a request's start at an instance to its response head (HTTP, gRPC), by service.",
            None,
            MetricType::Histogram,
        )?;
        for (name, cell) in &cells {
            let Some(timings) = cell.timings() else {
                continue;
            };
            let (sum, count, buckets) = timings.read();
            let labels = [("service", name.as_str())];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "cairn_health_checks",
            "Active health checks of instances, by result.",
            None,
            MetricType::Counter,
        )?;
        for (name, cell) in &cells {
            let (passed, failed) = cell.checks();
            if passed + failed == 0 {
                continue;
            }
            for (result, n) in [("passed", passed), ("failed", failed)] {
                let labels = [("service", name.as_str()), ("result", result)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Encodes one family with a sample per service, labelled `service`.
fn per_service(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    cells: &[(String, Arc<ServiceCell>)],
    value: impl Fn(&ServiceCell) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (service, cell) in cells {
        let labels = [("service", service.as_str())];
        let sample = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value(cell)).encode(sample)?,
            _ => ConstGauge::new(value(cell) as i64).encode(sample)?,
        }
    }
    Ok(())
}
