//! The admin HTTP endpoint: liveness, readiness, the current snapshots and counters.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 once the registry has been listed, 503 before and while draining.
//! - `GET /services`: the snapshots as JSON, with the applied revision.
//! - `GET /metrics`: counters in the Prometheus text format.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::register;
use crate::snapshot::Store;
use crate::stats::{ListenerStats, Stats};

/// What the admin endpoint reports on.
pub(crate) struct Admin {
    /// The snapshots to show.
    pub(crate) store: Arc<Store>,
    /// The counters to show.
    pub(crate) stats: Arc<Stats>,
    /// The state of this process's own registrations, when it has any.
    pub(crate) registrations: Option<Arc<register::Status>>,
    /// Fires when the process starts draining; readiness turns 503 from then on.
    pub(crate) draining: CancellationToken,
}

impl Admin {
    /// Serves until `stop` fires.
    pub(crate) async fn run(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        continue;
                    }
                },
            };
            let admin = Arc::clone(&self);
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.respond(&req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(%peer, error = %e, "admin connection failed");
                    },
                    _ = stop.cancelled() => {}
                }
            });
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is served\n".to_string(),
            );
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
            "/readyz" => {
                if self.draining.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string())
                } else if self.store.synced() {
                    text(StatusCode::OK, "ready\n".to_string())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the first sync with etcd\n".to_string(),
                    )
                }
            }
            "/services" => {
                let mut body = serde_json::to_vec_pretty(&self.services_json())
                    .expect("a JSON value always serializes");
                body.push(b'\n');
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            "/metrics" => text(StatusCode::OK, self.metrics()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz, /services or /metrics\n".to_string(),
            ),
        }
    }

    fn services_json(&self) -> Value {
        let mut services = Map::new();
        for (name, snapshot) in self.store.snapshots() {
            let instances: Vec<Value> = snapshot
                .instances()
                .iter()
                .map(|i| {
                    json!({
                        "id": i.id,
                        "addr": i.endpoint.addr.to_string(),
                        "weight": i.endpoint.weight,
                        "zone": i.endpoint.zone,
                        "metadata": i.endpoint.metadata,
                    })
                })
                .collect();
            services.insert(name, json!({ "instances": instances }));
        }
        json!({
            "revision": self.store.revision(),
            "synced": self.store.synced(),
            "services": services,
        })
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let d = &self.stats.discovery;
        metric_line(
            &mut out,
            "cairn_registry_revision",
            "gauge",
            "etcd revision the snapshots reflect.",
            self.store.revision() as u64,
        );
        metric_line(
            &mut out,
            "cairn_registry_synced",
            "gauge",
            "1 once the registry has been listed.",
            u64::from(self.store.synced()),
        );
        metric_line(
            &mut out,
            "cairn_registry_invalid_values_total",
            "counter",
            "Registry values skipped as unusable.",
            d.invalid_values.load(Ordering::Relaxed),
        );
        metric_line(
            &mut out,
            "cairn_discovery_lists_total",
            "counter",
            "Full lists of the registry applied.",
            d.lists.load(Ordering::Relaxed),
        );
        metric_line(
            &mut out,
            "cairn_discovery_watch_restarts_total",
            "counter",
            "Watch streams reopened.",
            d.watch_restarts.load(Ordering::Relaxed),
        );
        metric_line(
            &mut out,
            "cairn_discovery_repeated_events_total",
            "counter",
            "Watch events dropped as already applied.",
            d.repeated_events.load(Ordering::Relaxed),
        );

        let _ = writeln!(out, "# HELP cairn_service_instances Instances in the current snapshot.\n# TYPE cairn_service_instances gauge");
        for (name, snapshot) in self.store.snapshots() {
            let _ = writeln!(
                out,
                "cairn_service_instances{{service=\"{}\"}} {}",
                escape(&name),
                snapshot.len()
            );
        }

        let listeners = self.stats.listeners();
        type Read = fn(&ListenerStats) -> i64;
        let families: [(&str, &str, &str, Read); 9] = [
            (
                "cairn_listener_accepted_total",
                "counter",
                "Connections accepted.",
                |s| s.accepted.load(Ordering::Relaxed) as i64,
            ),
            (
                "cairn_listener_requests_total",
                "counter",
                "HTTP requests received.",
                |s| s.requests.load(Ordering::Relaxed) as i64,
            ),
            (
                "cairn_listener_active",
                "gauge",
                "Connections or requests in flight.",
                |s| s.active.load(Ordering::Relaxed),
            ),
            (
                "cairn_listener_no_instances_total",
                "counter",
                "Connections or requests refused: no instances.",
                |s| s.no_instances.load(Ordering::Relaxed) as i64,
            ),
            (
                "cairn_listener_connect_failures_total",
                "counter",
                "Connects to instances that failed.",
                |s| s.connect_failures.load(Ordering::Relaxed) as i64,
            ),
            (
                "cairn_listener_exhausted_total",
                "counter",
                "Connections or requests for which every attempt failed.",
                |s| s.exhausted.load(Ordering::Relaxed) as i64,
            ),
            (
                "cairn_listener_timeouts_total",
                "counter",
                "HTTP requests answered 504: no response headers in time.",
                |s| s.timeouts.load(Ordering::Relaxed) as i64,
            ),
            (
                "cairn_listener_upstream_errors_total",
                "counter",
                "HTTP requests answered 502 after reaching an instance.",
                |s| s.upstream_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "cairn_listener_not_found_total",
                "counter",
                "Gateway requests answered 404: unknown service.",
                |s| s.not_found.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, read) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (listen, s) in &listeners {
                let _ = writeln!(
                    out,
                    "{name}{{listen=\"{}\",service=\"{}\"}} {}",
                    escape(listen),
                    escape(&s.service),
                    read(s)
                );
            }
        }
        if let Some(r) = &self.registrations {
            let _ = writeln!(out, "# HELP cairn_registration_registered 1 while the instance's key is written under the live lease.\n# TYPE cairn_registration_registered gauge");
            for (label, flag) in r.labels.iter().zip(&r.registered) {
                let (service, id) = label.split_once('/').unwrap_or((label, ""));
                let _ = writeln!(
                    out,
                    "cairn_registration_registered{{service=\"{}\",id=\"{}\"}} {}",
                    escape(service),
                    escape(id),
                    u8::from(flag.load(Ordering::Relaxed))
                );
            }
            metric_line(
                &mut out,
                "cairn_registration_lease_grants_total",
                "counter",
                "Leases granted for this process's registrations.",
                r.lease_grants.load(Ordering::Relaxed),
            );
            metric_line(
                &mut out,
                "cairn_registration_repairs_total",
                "counter",
                "Registered keys put back after someone deleted or overwrote them.",
                r.repairs.load(Ordering::Relaxed),
            );
        }
        out
    }
}

fn metric_line(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Escapes a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
