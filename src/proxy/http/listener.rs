//! One HTTP listener (a `[[service]]` with `protocol = "http"`, or a `[[gateway]]`): accepts
//! clients, serves HTTP/1.1 and h2c on their connections, and routes each request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::body::ProxyBody;
use super::forward::Forwarder;
use super::headers::request_host;
use super::routes::{Routes, Routing};
use crate::proxy::config::Limits;
use crate::proxy::error::ProxyError;
use crate::proxy::listener::accept_loop;
use crate::proxy::metrics::Active;

/// One HTTP listener: a `[[service]]` with `protocol = "http"` or a `[[gateway]]`.
pub(crate) struct HttpListener {
    /// Where requests go.
    pub(crate) routing: Routing,
    /// Routes shared with the other HTTP listeners.
    pub(crate) routes: Arc<Routes>,
    /// Sends requests on and answers failures, with this listener's counters.
    pub(crate) forwarder: Forwarder,
    /// Header size and idle limits.
    pub(crate) limits: Limits,
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
        let abort = self.forwarder.abort.clone();
        let idle = self.limits.idle_timeout;
        let draining = shutdown.clone();
        accept_loop(listener, limit, shutdown, |stream, peer, permit| {
            self.forwarder.metrics.accepted.inc();
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
        let abort = self.forwarder.abort.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = graceful.shutdown() => {}
                _ = abort.cancelled() => {}
            }
        });
    }

    /// Routes one request and forwards it.
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let metrics = &self.forwarder.metrics;
        metrics.requests.inc();
        let _active = Active::new(&metrics.active);
        let found;
        let route = match &self.routing {
            Routing::Service(route) => route,
            Routing::Gateway { suffix } => {
                let Some(host) = request_host(req.headers(), req.uri()) else {
                    return self.forwarder.answer(&ProxyError::NoHost);
                };
                match self.routes.for_host(host, suffix.as_deref()) {
                    (_, Some(route)) => {
                        found = route;
                        &found
                    }
                    (name, None) => {
                        return self.forwarder.answer(&ProxyError::UnknownService {
                            name: name.to_string(),
                            host: host.to_string(),
                        })
                    }
                }
            }
        };
        self.forwarder.forward(route, req, peer).await
    }
}
