//! HTTP listeners and gateways: one instance per request, pooled upstream connections, safe
//! retries and plain-text failure answers.
//!
//! A `[[service]]` with `protocol = "http"` forwards every request to its service. A
//! `[[gateway]]` picks the service from the Host header. Both serve HTTP/1.1 and h2c (prior
//! knowledge) on one port and speak HTTP/1.1 to instances through one shared, pooled client.
//!
//! A request is retried on another instance only when connecting failed, which means no byte of
//! it reached an upstream: a request is never delivered twice.

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{accept_loop, EveryOnce};
use crate::config::{Limits, RouteConfig};
use crate::snapshot::{ServiceCell, Store};
use crate::stats::{ActiveGuard, ListenerStats};

/// What cairn answers clients with: an upstream's streamed body, or a short text of its own.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The client every HTTP listener shares for one connect timeout.
type Upstream = Client<HttpConnector, RequestBody>;

/// Idle upstream connections are kept this long for reuse. Shorter than the 120 s or more most
/// servers allow, so cairn closes first and rarely writes to a connection the server dropped.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How requests for one service are forwarded.
pub(crate) struct Route {
    /// The service name, for logs and error answers.
    service: String,
    /// The service's snapshot cell.
    cell: Arc<ServiceCell>,
    /// Balance, retries, timeouts and Host rewriting.
    config: RouteConfig,
    /// The pooled client for this route's connect timeout.
    client: Upstream,
    /// Throttles connect-failure warnings.
    warn_limit: EveryOnce,
}

/// Every route an HTTP listener may use, shared by all HTTP listeners and gateways.
pub(crate) struct Routes {
    /// Where services not configured by a `[[service]]` block are looked up.
    store: Arc<Store>,
    /// Routes of `[[service]]` blocks, whatever their protocol, so gateways use their settings.
    configured: HashMap<String, Arc<Route>>,
    /// Routes made on first use for services known only from the registry.
    discovered: DashMap<String, Arc<Route>>,
    /// One pooled client per distinct connect timeout, so most setups share a single pool.
    clients: Mutex<HashMap<Duration, Upstream>>,
}

impl Routes {
    /// Routes for every configured service, reading `store`.
    pub(crate) fn new<'a>(
        store: Arc<Store>,
        services: impl IntoIterator<Item = (&'a str, &'a RouteConfig)>,
    ) -> Arc<Routes> {
        let mut routes = Routes {
            store,
            configured: HashMap::new(),
            discovered: DashMap::new(),
            clients: Mutex::new(HashMap::new()),
        };
        for (name, config) in services {
            let route = routes.make(name, config.clone());
            routes.configured.insert(name.to_string(), Arc::new(route));
        }
        Arc::new(routes)
    }

    /// The route of a configured service.
    pub(crate) fn configured(&self, service: &str) -> Option<Arc<Route>> {
        self.configured.get(service).cloned()
    }

    /// The route of `service` if it is configured or in the registry; never creates a cell for a
    /// name the registry has not mentioned, so random Host headers cost nothing.
    fn find(&self, service: &str) -> Option<Arc<Route>> {
        if let Some(route) = self.configured.get(service) {
            return Some(Arc::clone(route));
        }
        if let Some(route) = self.discovered.get(service) {
            return Some(Arc::clone(&route));
        }
        self.store.get(service)?;
        let route = Arc::new(self.make(service, RouteConfig::default()));
        Some(Arc::clone(
            &self.discovered.entry(service.to_string()).or_insert(route),
        ))
    }

    fn make(&self, service: &str, config: RouteConfig) -> Route {
        let client = self
            .clients
            .lock()
            .expect("the client map lock is never held across a panic")
            .entry(config.connect_timeout)
            .or_insert_with(|| upstream_client(config.connect_timeout))
            .clone();
        Route {
            service: service.to_string(),
            cell: self.store.cell(service),
            config,
            client,
            warn_limit: EveryOnce::new(),
        }
    }
}

fn upstream_client(connect_timeout: Duration) -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Where a listener sends requests.
pub(crate) enum Target {
    /// Every request goes to one service.
    Service(Arc<Route>),
    /// The Host header names the service; `suffix` is stripped from it first.
    Gateway {
        /// Lowercase suffix such as `.svc.local`.
        suffix: Option<String>,
    },
}

/// One HTTP listener: a `[[service]]` with `protocol = "http"` or a `[[gateway]]`.
pub(crate) struct HttpListener {
    /// Where requests go.
    pub(crate) target: Target,
    /// Routes shared with the other HTTP listeners.
    pub(crate) routes: Arc<Routes>,
    /// This listener's counters.
    pub(crate) stats: Arc<ListenerStats>,
    /// Header size and idle limits.
    pub(crate) limits: Limits,
    /// Tracks WebSocket and other upgraded tunnels so the drain waits for them.
    pub(crate) tunnels: TaskTracker,
    /// Fires when the grace period is over; tunnels end then.
    pub(crate) abort: CancellationToken,
}

impl HttpListener {
    /// Accepts until `shutdown`, then lets in-flight requests finish: idle keep-alive
    /// connections close at once, busy ones after their current response.
    pub(crate) async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        limit: Arc<Semaphore>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The header timer also runs while a kept-alive connection waits for its next
            // request, so it is the idle timeout too.
            .header_read_timeout(self.limits.idle_timeout)
            .max_buf_size(self.limits.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(self.limits.idle_timeout / 2);
        let graceful = GracefulShutdown::new();
        let abort = self.abort.clone();
        let idle = self.limits.idle_timeout;
        let draining = shutdown.clone();
        accept_loop(listener, limit, shutdown, |stream, peer, permit| {
            ListenerStats::bump(&self.stats.accepted);
            let _ = stream.set_nodelay(true);
            let this = Arc::clone(&self);
            let service = hyper::service::service_fn(move |req| {
                let this = Arc::clone(&this);
                async move { Ok::<_, Infallible>(this.handle(req, peer).await) }
            });
            let abort = abort.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let draining = draining.clone();
            tracker.spawn(async move {
                // Detecting HTTP/1.1 or h2 waits for the client's first bytes with no timer of
                // its own; a client that says nothing is dropped after the idle timeout, or at
                // once when cairn starts draining.
                let mut first = [0u8; 1];
                tokio::select! {
                    r = tokio::time::timeout(idle, stream.peek(&mut first)) => match r {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return,
                        Err(_) => {
                            debug!(%peer, "client sent nothing within the idle timeout, closing");
                            return;
                        }
                    },
                    _ = draining.cancelled() => return,
                }
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = watcher.watch(conn);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(%peer, error = %e, "client connection ended with an error");
                    },
                    _ = abort.cancelled() => {}
                }
                drop(permit);
            });
        })
        .await;
        let abort = self.abort.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = graceful.shutdown() => {}
                _ = abort.cancelled() => {}
            }
        });
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        ListenerStats::bump(&self.stats.requests);
        let _active = ActiveGuard::new(&self.stats);
        let route = match &self.target {
            Target::Service(route) => Arc::clone(route),
            Target::Gateway { suffix } => {
                let Some(host) = request_host(&req) else {
                    ListenerStats::bump(&self.stats.not_found);
                    return failure(
                        StatusCode::NOT_FOUND,
                        "cairn: the request has no Host header to pick a service by".to_string(),
                    );
                };
                let name = service_from_host(host, suffix.as_deref());
                let found = self.routes.find(name).or_else(|| {
                    let lower = name.to_ascii_lowercase();
                    (lower != name).then(|| self.routes.find(&lower)).flatten()
                });
                match found {
                    Some(route) => route,
                    None => {
                        ListenerStats::bump(&self.stats.not_found);
                        return failure(
                            StatusCode::NOT_FOUND,
                            format!("cairn: no service \"{name}\" in the registry (from Host \"{host}\")"),
                        );
                    }
                }
            }
        };
        self.forward(&route, req, peer).await
    }

    /// Sends `req` to an instance of `route`, failing over while nothing has been sent.
    async fn forward(
        &self,
        route: &Route,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let Some(pick) = route.cell.pick(route.config.balance) else {
            ListenerStats::bump(&self.stats.no_instances);
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cairn: service \"{}\" has no instances", route.service),
            );
        };
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let host = request_host_parts(&parts.headers, &parts.uri);
        let mut headers = forwarded_headers(&parts.headers, peer, host, upgrade.as_ref());
        let client_host = host.and_then(|h| HeaderValue::from_str(h).ok());
        let body = (!body.is_end_stream()).then(|| Reclaimable::new(body));
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());

        let attempts = pick.candidates.min(route.config.retries as usize + 1);
        let mut addr = pick.addr;
        let mut attempt = 0;
        loop {
            let uri = match format!("http://{addr}{path}").parse::<Uri>() {
                Ok(uri) => uri,
                Err(e) => {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "cairn: service \"{}\": cannot build the upstream URI: {e}",
                            route.service
                        ),
                    )
                }
            };
            let mut upstream = Request::new(match &body {
                None => RequestBody::Empty,
                Some(b) => RequestBody::Streamed(b.clone()),
            });
            *upstream.method_mut() = parts.method.clone();
            *upstream.uri_mut() = uri;
            *upstream.version_mut() = Version::HTTP_11;
            // Only an attempt that may be followed by another needs its own copy.
            *upstream.headers_mut() = if attempt + 1 < attempts {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            let host_value = if route.config.rewrite_host {
                HeaderValue::from_str(&addr.to_string()).ok()
            } else {
                client_host.clone()
            };
            if let Some(h) = host_value {
                upstream.headers_mut().insert(header::HOST, h);
            }

            let sent =
                tokio::time::timeout(route.config.request_timeout, route.client.request(upstream))
                    .await;
            let error = match sent {
                Ok(Ok(resp)) => return self.respond(resp, client_upgrade, route),
                Err(_) => {
                    ListenerStats::bump(&self.stats.timeouts);
                    return failure(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "cairn: service \"{}\": instance {addr} sent no response headers within {}",
                            route.service,
                            humantime::format_duration(route.config.request_timeout)
                        ),
                    );
                }
                Ok(Err(e)) => e,
            };
            let reclaimable = body.as_ref().is_none_or(|b| !b.started());
            if !error.is_connect() || !reclaimable {
                ListenerStats::bump(&self.stats.upstream_errors);
                debug!(service = %route.service, %addr, error = %cause(&error), "upstream request failed");
                return failure(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "cairn: service \"{}\": instance {addr} failed: {}",
                        route.service,
                        cause(&error)
                    ),
                );
            }
            ListenerStats::bump(&self.stats.connect_failures);
            if route.warn_limit.allow() {
                warn!(service = %route.service, %addr, error = %cause(&error), "connect to instance failed");
            } else {
                debug!(service = %route.service, %addr, error = %cause(&error), "connect to instance failed");
            }
            attempt += 1;
            if attempt >= attempts {
                ListenerStats::bump(&self.stats.exhausted);
                return failure(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "cairn: service \"{}\": {attempts} instance(s) tried, none answered; last {addr}: {}",
                        route.service,
                        cause(&error)
                    ),
                );
            }
            match route.cell.retry(pick.start, attempt) {
                Some(next) => addr = next,
                None => {
                    ListenerStats::bump(&self.stats.no_instances);
                    return failure(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cairn: service \"{}\" has no instances", route.service),
                    );
                }
            }
        }
    }

    /// Passes the upstream's response on; a `101 Switching Protocols` becomes a tunnel.
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        route: &Route,
    ) -> Response<ProxyBody> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_side) = client_upgrade else {
                ListenerStats::bump(&self.stats.upstream_errors);
                return failure(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "cairn: service \"{}\": instance switched protocols unasked",
                        route.service
                    ),
                );
            };
            let upstream_side = hyper::upgrade::on(&mut resp);
            let upgrade = resp.headers().get(header::UPGRADE).cloned();
            strip_hop_by_hop(resp.headers_mut());
            if let Some(protocol) = upgrade {
                resp.headers_mut().insert(header::UPGRADE, protocol);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            let abort = self.abort.clone();
            let service = route.service.clone();
            self.tunnels.spawn(async move {
                let relay = async {
                    let (client, upstream) = tokio::try_join!(client_side, upstream_side)?;
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    tokio::io::copy_bidirectional(&mut client, &mut upstream)
                        .await
                        .map_err(|e| Box::new(e) as Box<dyn StdError + Send + Sync>)?;
                    Ok::<_, Box<dyn StdError + Send + Sync>>(())
                };
                tokio::select! {
                    r = relay => if let Err(e) = r {
                        debug!(%service, error = %e, "upgraded connection ended with an error");
                    },
                    _ = abort.cancelled() => {}
                }
            });
            return resp.map(BodyExt::boxed);
        }
        strip_hop_by_hop(resp.headers_mut());
        resp.map(BodyExt::boxed)
    }
}

/// A one-line plain-text answer of cairn's own.
fn failure(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The error chain below the client's generic "client error (Connect)", in one line.
fn cause(e: &hyper_util::client::legacy::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

fn request_host<B>(req: &Request<B>) -> Option<&str> {
    request_host_parts(req.headers(), req.uri())
}

/// The host the client asked for: its Host header, or the authority of an HTTP/2 request.
fn request_host_parts<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty())
}

/// The service a gateway routes `host` to: the host without its port, trailing dot and suffix.
fn service_from_host<'h>(host: &'h str, suffix: Option<&str>) -> &'h str {
    let mut name = match host.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    name = name.strip_suffix('.').unwrap_or(name);
    if let Some(suffix) = suffix {
        let cut = name.len().wrapping_sub(suffix.len());
        if name.len() > suffix.len()
            && name.is_char_boundary(cut)
            && name[cut..].eq_ignore_ascii_case(suffix)
        {
            name = &name[..cut];
        }
    }
    name
}

/// The protocol a client asks to switch to, when it asks in the HTTP/1.1 way.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Headers that describe one connection, not the message; a proxy never forwards them.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName, listed: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-") || listed.contains(name)
}

/// The header names a Connection header lists as hop-by-hop.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n, &listed))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The headers sent upstream: the client's, minus hop-by-hop ones, Host (set per attempt) and
/// Expect (the 100-continue exchange already happened with cairn), plus X-Forwarded-*.
fn forwarded_headers(
    client: &HeaderMap,
    peer: SocketAddr,
    host: Option<&str>,
    upgrade: Option<&HeaderValue>,
) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(client.len() + 4);
    let mut forwarded_for: Option<String> = None;
    for (name, value) in client {
        if is_hop_by_hop(name, &listed) || name == header::HOST || name == header::EXPECT {
            continue;
        }
        if name == "x-forwarded-for" {
            if let Ok(v) = value.to_str() {
                let list = forwarded_for.get_or_insert_with(String::new);
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(v);
            }
            continue;
        }
        if name == "x-forwarded-proto" || name == "x-forwarded-host" {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let mut xff = forwarded_for.unwrap_or_default();
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&peer.ip().to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        out.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    if let Some(protocol) = upgrade {
        out.insert(header::UPGRADE, protocol.clone());
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    out
}

/// A client's request body that can be handed to another attempt as long as no attempt has
/// started reading it.
#[derive(Clone)]
struct Reclaimable(Arc<Shared>);

struct Shared {
    /// The client's body, streamed in place by whichever attempt polls it.
    body: Mutex<Incoming>,
    /// Set on the first poll: from then on, bytes may have reached an upstream.
    started: AtomicBool,
    /// The body's size, known before any attempt, so upstreams get a Content-Length.
    size: SizeHint,
}

impl Reclaimable {
    fn new(body: Incoming) -> Reclaimable {
        Reclaimable(Arc::new(Shared {
            size: body.size_hint(),
            body: Mutex::new(body),
            started: AtomicBool::new(false),
        }))
    }

    fn started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }
}

/// The body of an upstream request.
enum RequestBody {
    /// The client sent no body.
    Empty,
    /// The client's body, shared so a failed connect can hand it to the next attempt.
    Streamed(Reclaimable),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streamed(r) => {
                r.0.started.store(true, Ordering::Release);
                let mut body =
                    r.0.body
                        .lock()
                        .expect("the body lock is never held across a panic");
                Pin::new(&mut *body).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streamed(r) => {
                r.0.body
                    .lock()
                    .expect("the body lock is never held across a panic")
                    .is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streamed(r) => r.0.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_hosts_name_services() {
        assert_eq!(service_from_host("orders", None), "orders");
        assert_eq!(service_from_host("orders:8080", None), "orders");
        assert_eq!(
            service_from_host("orders.svc.local", Some(".svc.local")),
            "orders"
        );
        assert_eq!(
            service_from_host("orders.SVC.local:80", Some(".svc.local")),
            "orders"
        );
        assert_eq!(
            service_from_host("orders.svc.local.", Some(".svc.local")),
            "orders"
        );
        assert_eq!(service_from_host("orders", Some(".svc.local")), "orders");
        assert_eq!(
            service_from_host(".svc.local", Some(".svc.local")),
            ".svc.local"
        );
        assert_eq!(service_from_host("[::1]:80", None), "[::1]");
        assert_eq!(service_from_host("é.svc.local", Some(".svc.local")), "é");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_forwarding_headers_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::HOST, HeaderValue::from_static("orders"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.2.2.2"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let out = forwarded_headers(&h, "127.0.0.9:5000".parse().unwrap(), Some("orders"), None);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "transfer-encoding",
            "proxy-authorization",
            "expect",
            "host",
        ] {
            assert!(!names.contains(&gone), "{gone} was forwarded: {names:?}");
        }
        assert_eq!(out["x-kept"], "yes");
        assert_eq!(out["x-forwarded-for"], "10.1.1.1, 10.2.2.2, 127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "orders");

        let up = forwarded_headers(
            &h,
            "127.0.0.9:5000".parse().unwrap(),
            None,
            Some(&HeaderValue::from_static("websocket")),
        );
        assert_eq!(up[header::UPGRADE], "websocket");
        assert_eq!(up[header::CONNECTION], "upgrade");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let req = Request::builder()
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert_eq!(upgrade_protocol(&req).unwrap(), "websocket");
        let req = Request::builder()
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(upgrade_protocol(&req).is_none());
    }
}
