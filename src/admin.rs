//! The admin HTTP endpoint: liveness, readiness, the current snapshots and counters.
//!
//! - `GET /`: the live status page, refreshing itself from `GET /status.json`.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 once the registry has been listed, 503 before and while draining.
//! - `GET /services[?service=NAME]`: the snapshots as JSON, streamed, with the applied
//!   revision.
//! - `GET /metrics`: counters in the Prometheus text format.

mod config;
mod metrics;
mod services;
mod status;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text::{encode, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use config::AdminConfig;
pub(crate) use config::RawAdmin;
pub(crate) use metrics::StoreCollector;
use services::ServicesBody;
pub(crate) use status::Sources;

use crate::accept::{accept_loop, Caps};
use crate::discovery::Freshness;
use crate::snapshot::Store;

/// Connections the admin endpoint serves at once: room for scrapers, probes and an operator
/// beside a hundred stalled clients, few enough to fit in the descriptors kept out of the data
/// plane's reach.
const ADMIN_CONNECTIONS: usize = 128;

/// Pending admin connections the kernel holds while all of the above are busy.
pub(crate) const ADMIN_BACKLOG: usize = 128;

/// A client gets this long to send a request head, and a kept-alive connection this long to
/// send the next one: an admin request is a few short lines.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest admin request head (hyper's smallest buffer is 8 KiB).
const ADMIN_MAX_HEAD: usize = 16 * 1024;

/// What the admin endpoint reports on.
pub(crate) struct Admin {
    /// The snapshots to show.
    store: Arc<Store>,
    /// Every metric, the store's included.
    registry: Arc<Registry>,
    /// Whether discovery is current with etcd.
    freshness: Arc<Freshness>,
    /// Readiness turns 503 once etcd has been away this long (milliseconds; 0: never). A
    /// reload changes it.
    max_stale_ms: AtomicU64,
    /// Fires when the process starts draining; readiness turns 503 from then on.
    draining: CancellationToken,
    /// What the status page shows besides the store.
    sources: status::Sources,
}

impl Admin {
    /// The endpoint's state: readiness turns 503 once etcd has been away for `max_stale`, and
    /// when `draining` fires.
    pub(crate) fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        freshness: Arc<Freshness>,
        max_stale: Option<Duration>,
        draining: CancellationToken,
        sources: status::Sources,
    ) -> Admin {
        let admin = Admin {
            store,
            registry,
            freshness,
            max_stale_ms: AtomicU64::new(0),
            draining,
            sources,
        };
        admin.set_max_stale(max_stale);
        admin
    }

    /// Readiness turns 503 once etcd has been away for `max_stale` from now on.
    pub(crate) fn set_max_stale(&self, max_stale: Option<Duration>) {
        let ms = max_stale.map_or(0, |d| (d.as_millis() as u64).max(1));
        self.max_stale_ms.store(ms, Ordering::Relaxed);
    }

    fn max_stale(&self) -> Option<Duration> {
        match self.max_stale_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Serves until `stop` fires, then gives the socket back.
    pub(crate) async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> TcpListener {
        let caps = Caps::new(ADMIN_CONNECTIONS, None);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            // Also the idle timeout of a kept-alive connection: it waits for the next head.
            .header_read_timeout(ADMIN_HEADER_TIMEOUT)
            .max_buf_size(ADMIN_MAX_HEAD);
        let closing = stop.clone();
        accept_loop(listener, caps, stop, |stream, peer, permit| {
            let admin = Arc::clone(&self);
            let stop = closing.clone();
            let http = http.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.respond(&req)) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(%peer, error = %e, "admin connection failed");
                    },
                    _ = stop.cancelled() => {}
                }
                drop(permit);
            });
        })
        .await
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<AdminBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is served\n".to_string(),
            );
        }
        match req.uri().path() {
            "/" => {
                let mut resp =
                    Response::new(Full::new(Bytes::from_static(status::PAGE.as_bytes())).boxed());
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp
            }
            "/status.json" => {
                let open = query_all(req.uri(), "open");
                let open: Vec<&str> = open.iter().map(String::as_str).collect();
                let body = status::json(
                    &self.store,
                    &self.freshness,
                    &self.sources,
                    &open,
                    crate::clock::now_ms(),
                );
                let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
            "/readyz" => self.readiness(),
            "/services" => {
                let only = query(req.uri(), "service");
                if let Some(name) = &only {
                    if self.store.get(name).is_none() {
                        return text(
                            StatusCode::NOT_FOUND,
                            format!("no service {:?}\n", crate::text::printable(name)),
                        );
                    }
                }
                let body = ServicesBody::new(&self.store, only.as_deref(), crate::clock::now_ms());
                let mut resp = Response::new(body.boxed());
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            "/metrics" => self.metrics(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /, /healthz, /readyz, /services or /metrics\n".to_string(),
            ),
        }
    }

    /// 503 until the first sync and while draining; 200 after, saying so when etcd has been
    /// away (routing from the last snapshot is the point), 503 once away for `max_stale`.
    fn readiness(&self) -> Response<AdminBody> {
        let unavailable = |body: String| text(StatusCode::SERVICE_UNAVAILABLE, body);
        if self.draining.is_cancelled() {
            return unavailable("draining\n".to_string());
        }
        if !self.store.synced() {
            if let Some(written_at) = self.store.cached_at() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let age = Duration::from_secs(now.saturating_sub(written_at));
                return text(
                    StatusCode::OK,
                    format!(
                        "ready (from cache, {} old)\n",
                        humantime::format_duration(age)
                    ),
                );
            }
            return unavailable("waiting for the first sync with etcd\n".to_string());
        }
        let Some(stale) = self.freshness.stale_for() else {
            return text(StatusCode::OK, "ready\n".to_string());
        };
        let shown = humantime::format_duration(Duration::from_secs(stale.as_secs()));
        match self.max_stale() {
            Some(max) if stale > max => unavailable(format!(
                "stale {shown}: etcd unreachable for longer than max_stale ({})\n",
                humantime::format_duration(max)
            )),
            _ => text(
                StatusCode::OK,
                format!("ready (stale {shown}: etcd unreachable)\n"),
            ),
        }
    }

    fn metrics(&self) -> Response<AdminBody> {
        let mut out = String::new();
        match encode(&mut out, &self.registry) {
            Ok(()) => {
                let mut resp = text(StatusCode::OK, out);
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                resp
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            ),
        }
    }
}

/// What the admin endpoint answers with: a whole text, or a streamed document.
type AdminBody = BoxBody<Bytes, Infallible>;

/// Every value of `name` in the URI's query, percent-decoded (`+` is a space).
fn query_all(uri: &hyper::Uri, name: &str) -> Vec<String> {
    let Some(query) = uri.query() else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(decode)
        .collect()
}

/// The first value of `name` in the URI's query.
fn query(uri: &hyper::Uri, name: &str) -> Option<String> {
    query_all(uri, name).into_iter().next()
}

/// `%XX` escapes and `+` decoded; an invalid escape is kept as written.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: hyper::Uri = "/status.json?open=a%2Cb+c&x=1&open=%E2%82%AC&open=%zz&open=%4"
            .parse()
            .unwrap();
        assert_eq!(query_all(&uri, "open"), ["a,b c", "€", "%zz", "%4"]);
        assert_eq!(query(&uri, "x").as_deref(), Some("1"));
        assert_eq!(query(&uri, "service"), None);
        let bare: hyper::Uri = "/services".parse().unwrap();
        assert!(query_all(&bare, "open").is_empty());
    }
}
