//! Forwarding one request: pick an instance, send, fail over while nothing has been sent, and
//! answer failures with a one-line text of cairn's own.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::body::{Guarded, ProxyBody, Reclaimable, RequestBody};
use super::h1::client::{send_bodiless, SendFail};
use super::headers::{
    forwarded_headers, request_host, strip_hop_by_hop, upgrade_protocol, ALLOWED,
};
use super::pool::SendError;
use super::pool::UpstreamBody;
use super::routes::Route;
use super::upgrade::tunnel;
use crate::addr::Addr;
use crate::proxy::error::ProxyError;
use crate::proxy::metrics::ListenerMetrics;
use crate::snapshot::InFlight;

/// What one listener needs to forward requests.
pub(crate) struct Forwarder {
    /// This listener's counters.
    pub(crate) metrics: ListenerMetrics,
    /// Tracks WebSocket and other upgraded tunnels so the drain waits for them.
    pub(crate) tunnels: TaskTracker,
    /// Fires when the grace period is over; tunnels end then.
    pub(crate) abort: CancellationToken,
    /// How long a response body read by cairn's own client may go without a byte.
    pub(crate) idle_timeout: Duration,
}

impl Forwarder {
    /// Sends `req` to an instance of `route`; a failure becomes cairn's own answer.
    pub(crate) async fn forward(
        &self,
        route: &Route,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        match self.send(route, req, peer).await {
            Ok(resp) => resp,
            Err(e) => self.answer(&e),
        }
    }

    /// A one-line plain-text answer for `e`, counted on the listener.
    pub(crate) fn answer(&self, e: &ProxyError) -> Response<ProxyBody> {
        e.count(&self.metrics);
        let mut resp = Response::new(
            Full::new(Bytes::from(e.line()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = e.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let ProxyError::Connect = e {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        }
        resp
    }

    /// Sends `req`, failing over while nothing has been sent.
    async fn send(
        &self,
        route: &Route,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut attempts, mut addr) = route.attempts(&self.metrics, req.headers(), peer)?;
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let host = request_host(&parts.headers, &parts.uri);
        // hyper has framed the body (a Content-Length only when no Transfer-Encoding came): the
        // instance gets the length it decided, never the client's header as it came.
        let length = parts
            .headers
            .contains_key(header::CONTENT_LENGTH)
            .then(|| body.size_hint().exact())
            .flatten();
        let headers = forwarded_headers(&parts.headers, peer, host, upgrade.as_ref(), length);
        let client_host = host.and_then(|h| HeaderValue::from_str(h).ok());
        let body = (!body.is_end_stream()).then(|| Reclaimable::new(body));
        let mut upstream = Request::new(RequestBody::of(body.as_ref()));
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = origin_form(&parts.uri);
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = headers;
        loop {
            let host = match &client_host {
                Some(h) if !route.config.rewrite_host => Some(h.clone()),
                // HTTP/1.1 requires a Host: the instance's address when the client sent none.
                _ => HeaderValue::from_str(&addr.to_string()).ok(),
            };
            if let Some(h) = host {
                upstream.headers_mut().insert(header::HOST, h);
            }

            let inflight = attempts.begin();
            if upgrade.is_none() && body.is_none() {
                // No body to stream and no connection to hand over: cairn's own client.
                let sent = send_bodiless(&route.pool, &addr, &upstream, self.idle_timeout);
                let cause = match self.wait(route, &addr, sent).await? {
                    Ok(resp) => {
                        attempts.answered(&addr, resp.status());
                        // The request stays in flight on its instance until the body is sent.
                        return Ok(resp.map(|body| Guarded::new(body, inflight).boxed()));
                    }
                    Err(SendFail::Unsent(cause)) => cause,
                    Err(SendFail::Failed(cause)) => {
                        debug!(service = %route.service, %addr, error = %cause, "upstream request failed");
                        return Err(upstream_error(route, addr, cause));
                    }
                };
                addr = attempts.failed(&addr, &cause)?;
                continue;
            }
            let sent = if upgrade.is_some() {
                self.wait(route, &addr, route.pool.send_upgrade(&addr, upstream))
                    .await?
            } else {
                self.wait(route, &addr, route.pool.send(&addr, upstream))
                    .await?
            };
            let error = match sent {
                Ok(resp) => {
                    attempts.answered(&addr, resp.status());
                    return self.respond(resp, client_upgrade, route, inflight);
                }
                Err(e) => e,
            };
            let cause = match error {
                // Nothing was sent: the same request goes to the next instance.
                SendError::Unsent(cause, back) if body.as_ref().is_none_or(|b| !b.started()) => {
                    upstream = *back;
                    cause
                }
                SendError::Unsent(cause, _) => return Err(upstream_error(route, addr, cause)),
                SendError::Failed(e) => {
                    let cause = crate::text::causes(&e);
                    debug!(service = %route.service, %addr, error = %cause, "upstream request failed");
                    return Err(upstream_error(route, addr, cause));
                }
            };
            addr = attempts.failed(&addr, &cause)?;
        }
    }

    /// Waits `request_timeout` for an attempt's response head.
    async fn wait<T>(
        &self,
        route: &Route,
        addr: &Addr,
        attempt: impl Future<Output = T>,
    ) -> Result<T, ProxyError> {
        tokio::time::timeout(route.config.request_timeout, attempt)
            .await
            .map_err(|_| ProxyError::Timeout {
                service: route.service.clone(),
                addr: addr.clone(),
                after: route.config.request_timeout,
            })
    }

    /// Passes the upstream's response on; a `101 Switching Protocols` becomes a tunnel.
    fn respond(
        &self,
        mut resp: Response<UpstreamBody>,
        client_upgrade: Option<OnUpgrade>,
        route: &Route,
        inflight: InFlight,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_side) = client_upgrade else {
                return Err(ProxyError::SwitchedUnasked {
                    service: route.service.clone(),
                });
            };
            return Ok(tunnel(
                resp,
                client_side,
                &self.tunnels,
                self.abort.clone(),
                route.service.clone(),
                inflight,
            ));
        }
        // A response framed both ways is framed by Transfer-Encoding (RFC 9112 §6.3): the
        // Content-Length must not reach the client, whose framing is hyper's to choose.
        if resp.headers().contains_key(header::TRANSFER_ENCODING) {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(resp.headers_mut());
        // The request stays in flight on its instance until the body has been sent.
        Ok(resp.map(|body| Guarded::new(body, inflight).map_err(Into::into).boxed()))
    }
}

/// A request that may have reached `addr` and got no response: never sent again.
fn upstream_error(route: &Route, addr: Addr, cause: String) -> ProxyError {
    ProxyError::Upstream {
        service: route.service.clone(),
        cause,
        addr,
    }
}

/// The request target an instance gets: the client's path and query (HTTP/2 and absolute-form
/// requests carry a scheme and authority too, which go in the Host header instead).
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(_) if uri.scheme().is_none() && uri.authority().is_none() => uri.clone(),
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}
