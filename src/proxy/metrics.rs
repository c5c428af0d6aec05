//! Per-listener counters, exported on `/metrics` with `listen` and `service` labels. Each
//! listener resolves its handles once at start; counting is then one atomic add.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The labels of every listener series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Labels {
    /// The listener's bound address.
    listen: String,
    /// The service it forwards to; a gateway says `*`.
    service: String,
}

/// The metric families of every listener, registered once.
#[derive(Debug, Default)]
pub struct ListenerFamilies {
    accepted: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
    no_instances: Family<Labels, Counter>,
    connect_failures: Family<Labels, Counter>,
    exhausted: Family<Labels, Counter>,
    timeouts: Family<Labels, Counter>,
    upstream_errors: Family<Labels, Counter>,
    not_found: Family<Labels, Counter>,
    idle_closed: Family<Labels, Counter>,
}

/// The counters of one listener. Clones share the same counters.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Connections accepted.
    pub accepted: Counter,
    /// HTTP requests received (0 for TCP listeners).
    pub requests: Counter,
    /// Connections or requests open right now.
    pub active: Gauge,
    /// Connections or requests refused because the service had no instances.
    pub no_instances: Counter,
    /// Connects to an instance that failed or timed out.
    pub connect_failures: Counter,
    /// Connections or requests for which every attempt failed.
    pub exhausted: Counter,
    /// HTTP: requests whose instance sent no response headers in time (504).
    pub timeouts: Counter,
    /// HTTP: requests that reached an instance which then failed them (502).
    pub upstream_errors: Counter,
    /// HTTP gateways: requests for a service the registry does not know (404).
    pub not_found: Counter,
    /// TCP: relayed connections closed after `idle_timeout` without traffic.
    pub idle_closed: Counter,
}

impl ListenerFamilies {
    /// Adds every family to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "cairn_listener_accepted",
                "Connections accepted",
                &self.accepted,
            ),
            (
                "cairn_listener_requests",
                "HTTP requests received",
                &self.requests,
            ),
            (
                "cairn_listener_no_instances",
                "Connections or requests refused: no instances",
                &self.no_instances,
            ),
            (
                "cairn_listener_connect_failures",
                "Connects to instances that failed",
                &self.connect_failures,
            ),
            (
                "cairn_listener_exhausted",
                "Connections or requests for which every attempt failed",
                &self.exhausted,
            ),
            (
                "cairn_listener_timeouts",
                "HTTP requests answered 504: no response headers in time",
                &self.timeouts,
            ),
            (
                "cairn_listener_upstream_errors",
                "HTTP requests answered 502 after reaching an instance",
                &self.upstream_errors,
            ),
            (
                "cairn_listener_not_found",
                "Gateway requests answered 404: unknown service",
                &self.not_found,
            ),
            (
                "cairn_listener_idle_closed",
                "TCP connections closed after idle_timeout without traffic",
                &self.idle_closed,
            ),
        ];
        for (name, help, family) in counters {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "cairn_listener_active",
            "Connections or requests in flight",
            self.active.clone(),
        );
    }

    /// The counters of the listener on `listen` forwarding to `service`, created at zero.
    pub fn listener(&self, listen: &str, service: &str) -> ListenerMetrics {
        let labels = Labels {
            listen: listen.to_string(),
            service: service.to_string(),
        };
        ListenerMetrics {
            accepted: self.accepted.get_or_create_owned(&labels),
            requests: self.requests.get_or_create_owned(&labels),
            active: self.active.get_or_create_owned(&labels),
            no_instances: self.no_instances.get_or_create_owned(&labels),
            connect_failures: self.connect_failures.get_or_create_owned(&labels),
            exhausted: self.exhausted.get_or_create_owned(&labels),
            timeouts: self.timeouts.get_or_create_owned(&labels),
            upstream_errors: self.upstream_errors.get_or_create_owned(&labels),
            not_found: self.not_found.get_or_create_owned(&labels),
            idle_closed: self.idle_closed.get_or_create_owned(&labels),
        }
    }
}

/// A running listener as the status page shows it.
#[derive(Debug, Clone)]
pub struct ListenerView {
    /// Its bound address.
    pub listen: std::net::SocketAddr,
    /// The service it forwards to; a gateway says `*`.
    pub service: String,
    /// `tcp` or `http`.
    pub protocol: &'static str,
    /// Its counters.
    pub metrics: ListenerMetrics,
}

/// Keeps a listener's `active` gauge true however its connection or request ends.
pub(crate) struct Active(Gauge);

impl Active {
    /// Counts one more connection or request in flight until dropped.
    pub(crate) fn new(gauge: &Gauge) -> Active {
        gauge.inc();
        Active(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}
