//! One HTTP listener (a `[[service]]` with `protocol = "http"`, or a `[[gateway]]`): accepts
//! clients, serves HTTP/1.1 and h2c on their connections, and routes each request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::activity::{Activity, Tracked};
use super::body::ProxyBody;
use super::forward::Forwarder;
use super::grpc;
use super::h1::{self, Served, Site};
use super::headers::{request_host, Listed, ALLOWED};
use super::prefixed::Prefixed;
use super::routes::{Routes, Routing};
use crate::accept::{accept_loop, Caps};
use crate::proxy::config::Limits;
use crate::proxy::error::ProxyError;
use crate::proxy::metrics::Active;
use crate::proxy::relay::inherited;
use crate::rt::side::Side;
use crate::rt::workers::Workers;

/// How long an idle client gets to take part in closing its connection (an HTTP/2 client must
/// answer the GOAWAY's ping) before it is dropped: a few round trips on any network.
const IDLE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One HTTP listener: a `[[service]]` with `protocol = "http"` or a `[[gateway]]`.
pub(crate) struct HttpListener {
    /// Where requests go.
    pub(crate) routing: Routing,
    /// Routes shared with the other HTTP listeners, swapped whole by a reload.
    pub(crate) routes: Arc<ArcSwap<Routes>>,
    /// Sends requests on and answers failures, with this listener's counters.
    pub(crate) forwarder: Forwarder,
    /// Header size and idle limits.
    pub(crate) limits: Limits,
    /// The workers connections are dealt to.
    pub(crate) workers: Workers,
    /// HTTP/1.1 requests may take cairn's own path; not on a gRPC listener, whose instances
    /// speak HTTP/2 only.
    pub(crate) own_h1: bool,
}

impl HttpListener {
    /// Accepts until `stop`, then gives the socket back. Connections are closed gracefully on
    /// `drain` (in-flight requests finish: idle keep-alive connections close at once, busy ones
    /// after their current response), and the same way after the idle timeout. A reload that
    /// only stops accepting leaves them serving.
    pub(crate) async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        caps: Caps,
        tracker: TaskTracker,
        stop: CancellationToken,
        drain: CancellationToken,
    ) -> TcpListener {
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
        let builder = Arc::new(builder);
        // Accepted sockets get TCP_NODELAY from the listener (and no keepalive, which a TCP
        // listener on the same socket before a reload may have set).
        if let Err(e) = inherited(&listener, None) {
            debug!(error = %e, "cannot set tcp options on the listener");
        }
        accept_loop(listener, caps, stop, |stream, peer, permit| {
            self.forwarder.metrics.accepted.inc();
            let this = Arc::clone(&self);
            let builder = Arc::clone(&builder);
            let draining = drain.clone();
            self.workers
                .spawn(&tracker, stream, move |stream| async move {
                    let abort = &this.forwarder.abort;
                    let site = Site {
                        routing: &this.routing,
                        routes: &this.routes,
                        metrics: &this.forwarder.metrics,
                        limits: &this.limits,
                    };
                    let served = if this.own_h1 {
                        h1::serve(&site, stream, peer, &draining, abort).await
                    } else {
                        Served::Elsewhere(stream, BytesMut::new())
                    };
                    if let Served::Elsewhere(stream, read) = served {
                        let io = TokioIo::new(Prefixed::new(read, stream));
                        Arc::clone(&this)
                            .serve_hyper(io, peer, &builder, &draining)
                            .await;
                    }
                    drop(permit);
                });
        })
        .await
    }

    /// Serves a client connection with hyper: HTTP/2, and the HTTP/1.1 requests cairn's own
    /// path leaves to it.
    async fn serve_hyper(
        self: Arc<Self>,
        io: TokioIo<Prefixed>,
        peer: SocketAddr,
        builder: &auto::Builder<TokioExecutor>,
        draining: &CancellationToken,
    ) {
        let abort = &self.forwarder.abort;
        let idle = self.limits.idle_timeout;
        let activity = Activity::new();
        let busy = Arc::clone(&activity);
        let this = Arc::clone(&self);
        let service = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&this);
            let busy = busy.begin();
            // Boxed: a request's state is kilobytes (the HTTP/1.1 path's alone some 9 KiB), and
            // hyper moves the future it is given whole, into each HTTP/2 stream's task and out
            // of it at the end; those copies were a seventh of a gRPC call's CPU.
            Box::pin(async move {
                let resp = this.handle(req, peer).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
            })
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        // A graceful shutdown lets the requests in flight finish, then closes: HTTP/2
        // clients get a GOAWAY, kept-alive HTTP/1.1 clients a close after the response.
        let mut closing = false;
        // An idle connection has nothing in flight: if the client does not take part in
        // the close (an HTTP/2 client that no longer reads), it is dropped.
        let mut give_up: Option<tokio::time::Instant> = None;
        loop {
            // Watched beside the connection, polled only when one of them fires.
            let mut side = Side::new(next_event(
                draining, &activity, idle, abort, closing, give_up,
            ));
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(r));
                }
                side.poll_side(cx)
            })
            .await;
            match event {
                Event::Ended(r) => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "client connection ended with an error");
                    }
                    break;
                }
                Event::Drain => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Event::Idle => {
                    debug!(%peer, "client connection idle, closing");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    give_up = Some(tokio::time::Instant::now() + IDLE_CLOSE_WAIT);
                }
                Event::GiveUp => {
                    debug!(%peer, "idle client did not close, dropping its connection");
                    break;
                }
                Event::Abort => break,
            }
        }
    }

    /// Routes one request and forwards it.
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let metrics = &self.forwarder.metrics;
        metrics.requests.inc();
        let _active = Active::new(&metrics.active);
        let call = grpc::is_grpc(req.headers());
        if req.method() == Method::CONNECT {
            return self.forwarder.answer(&ProxyError::Connect);
        }
        let listed = Listed::new(
            req.headers()
                .get_all(header::CONNECTION)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        if let Some(name) = listed.framing() {
            debug!(%peer, name, "request lists a framing header in Connection, refused");
            return self
                .forwarder
                .answer_as(&ProxyError::FramingListed { name }, call);
        }
        drop(listed);
        if req.uri() == "*" {
            // Asterisk-form asks about the server, not a resource: cairn answers for itself
            // instead of building an upstream URI out of "*".
            return if req.method() == Method::OPTIONS {
                options_asterisk()
            } else {
                self.forwarder.answer(&ProxyError::Asterisk {
                    method: req.method().to_string(),
                })
            };
        }
        // The routes of the current config: a reload swaps them, and the next request of a
        // kept-alive connection follows the new settings.
        let host = request_host(req.headers(), req.uri());
        let route = match self.routing.route(&self.routes.load(), host) {
            Ok(route) => route,
            Err(e) => return self.forwarder.answer_as(&e, call),
        };
        self.forwarder.forward(&route, req, peer).await
    }
}

/// What ends a client connection's wait.
enum Event<E> {
    /// The connection closed, or failed.
    Ended(Result<(), E>),
    /// cairn is draining: finish what is in flight, then close.
    Drain,
    /// No request for the idle timeout: close.
    Idle,
    /// An idle client did not take part in the close: drop it.
    GiveUp,
    /// The grace period is over.
    Abort,
}

/// The next event beside the connection itself, given what has happened so far.
async fn next_event<E>(
    draining: &CancellationToken,
    activity: &Activity,
    idle: Duration,
    abort: &CancellationToken,
    closing: bool,
    give_up: Option<tokio::time::Instant>,
) -> Event<E> {
    tokio::select! {
        _ = draining.cancelled(), if !closing => Event::Drain,
        _ = activity.idle(idle), if !closing => Event::Idle,
        _ = crate::shutdown::until(give_up) => Event::GiveUp,
        _ = abort.cancelled() => Event::Abort,
    }
}

/// The answer to `OPTIONS *`: what cairn forwards.
fn options_asterisk() -> Response<ProxyBody> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
    resp
}
