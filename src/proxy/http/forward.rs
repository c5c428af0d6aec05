//! Forwarding one request: pick an instance, send, fail over while nothing has been sent, and
//! answer failures with a one-line text of cairn's own.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::body::{Guarded, ProxyBody, Reclaimable, RequestBody};
use super::grpc;
use super::h1::client::{SendFail, Upload};
use super::h1::decoded::send_request;
use super::h1::head::{end_request, request_line};
use super::h1::write::{write_forwarded, BodyFraming, Forwarding};
use super::h2::CallError;
use super::headers::{request_host, strip_hop_by_hop, upgrade_protocol, Listed, ALLOWED};
use super::pool::SendError;
use super::replay::{Replay, REPLAY_LIMIT};
use super::routes::Route;
use super::upgrade::tunnel;
use crate::addr::Addr;
use crate::proxy::error::ProxyError;
use crate::proxy::failover::Attempts;
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
    /// Sends `req` to an instance of `route`; a failure becomes cairn's own answer. A gRPC
    /// call, and every request of a route whose instances speak HTTP/2, goes over HTTP/2.
    pub(crate) async fn forward(
        &self,
        route: &Route,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let call = grpc::is_grpc(req.headers());
        let sent = if call || route.config.h2 {
            self.send_call(route, req, peer).await
        } else {
            self.send(route, req, peer).await
        };
        match sent {
            Ok(resp) => resp,
            Err(e) => self.answer_as(&e, call),
        }
    }

    /// cairn's own answer for `e`: gRPC's trailers-only form to a gRPC call, else one line of
    /// text.
    pub(crate) fn answer_as(&self, e: &ProxyError, call: bool) -> Response<ProxyBody> {
        if call {
            e.count(&self.metrics);
            grpc::answer(e)
        } else {
            self.answer(e)
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

    /// Sends `req`, failing over while nothing has been sent: through cairn's own client, or
    /// hyper's for an upgrade.
    async fn send(
        &self,
        route: &Route,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut attempts, mut addr) = route.attempts(&self.metrics, req.headers(), peer)?;
        if let Some(protocol) = upgrade_protocol(&req) {
            let client_side = hyper::upgrade::on(&mut req);
            return self
                .upgrade(route, req, peer, protocol, client_side, attempts, addr)
                .await;
        }
        let (parts, body) = req.into_parts();
        let framing = body_framing(&parts.headers, &body);
        let body = (!body.is_end_stream()).then(|| Reclaimable::new(body));
        let host = request_host(&parts.headers, &parts.uri);
        let peer_ip = peer.ip().to_string();
        let mut out = Vec::with_capacity(512);
        request_line(&mut out, parts.method.as_str(), origin_target(&parts.uri));
        let how = Forwarding {
            peer_ip: &peer_ip,
            host: host.map(str::as_bytes),
            body: framing,
            upgrade: None,
        };
        write_forwarded(&parts.headers, &how, &mut out);
        let base = out.len();
        let head_request = parts.method == Method::HEAD;
        loop {
            out.truncate(base);
            match host {
                Some(h) if !route.config.rewrite_host => end_request(&mut out, h.as_bytes()),
                // HTTP/1.1 requires a Host: the instance's address when the client sent none.
                _ => end_request(&mut out, addr.to_string().as_bytes()),
            }
            let inflight = attempts.begin();
            let upload = body.as_ref().map(|b| Upload {
                body: RequestBody::of(Some(b)),
                chunked: framing == BodyFraming::Chunked,
            });
            let sent = send_request(
                &route.pool,
                &addr,
                &mut out,
                upload,
                head_request,
                self.idle_timeout,
            );
            let cause = match self.wait(route, &addr, sent).await? {
                Ok(resp) => {
                    attempts.answered(&addr, resp.status());
                    // The request stays in flight on its instance until the body is sent.
                    return Ok(resp.map(|body| Guarded::new(body, inflight).boxed()));
                }
                // Nothing was sent, not even a byte of the body: the next instance takes it.
                Err(SendFail::Unsent(cause)) if body.as_ref().is_none_or(|b| !b.started()) => cause,
                Err(SendFail::Unsent(cause) | SendFail::Failed(cause)) => {
                    debug!(service = %route.service, %addr, error = %cause, "upstream request failed");
                    return Err(upstream_error(route, addr, cause));
                }
            };
            addr = attempts.failed(&addr, &cause)?;
        }
    }

    /// Sends a call over HTTP/2, as a stream of this worker's connection to the instance picked
    /// for it, failing over while nothing of it has been sent. A `grpc-timeout` bounds the wait
    /// for the answer (capped by `request_timeout`) and reaches the instance reduced by the
    /// time spent in cairn.
    async fn send_call(
        &self,
        route: &Route,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let started = Instant::now();
        let (mut attempts, mut addr) = route.attempts(&self.metrics, req.headers(), peer)?;
        let asked = grpc::timeout(req.headers());
        let deadline = asked.map_or(route.config.request_timeout, |t| {
            t.min(route.config.request_timeout)
        });
        let (parts, body) = req.into_parts();
        let host = request_host(&parts.headers, &parts.uri).map(str::to_string);
        let peer_ip = peer.ip().to_string();
        // HTTP/2 frames the body itself: only a declared length goes on.
        let framing = match body_framing(&parts.headers, &body) {
            BodyFraming::Length(n) => BodyFraming::Length(n),
            _ => BodyFraming::None,
        };
        let how = Forwarding {
            peer_ip: &peer_ip,
            host: host.as_deref().map(str::as_bytes),
            body: framing,
            upgrade: None,
        };
        // gRPC asks for trailers end to end; `te: trailers` is the one TE HTTP/2 allows.
        let trailers = parts
            .headers
            .get_all(header::TE)
            .iter()
            .any(|v| Listed::tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case("trailers")));
        // The call's headers, written for each attempt that needs them (most need them once).
        let head = || {
            let mut headers = HeaderMap::new();
            write_forwarded(&parts.headers, &how, &mut headers);
            if trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
            headers.remove("grpc-timeout");
            headers
        };
        let target = origin_target(&parts.uri).to_string();
        let build = |body| {
            let mut call = Request::new(body);
            *call.method_mut() = parts.method.clone();
            *call.version_mut() = Version::HTTP_2;
            *call.headers_mut() = head();
            call
        };
        let (replay, first) = Replay::new(body);
        let mut call = build(first);
        loop {
            let authority = match &host {
                Some(h) if !route.config.rewrite_host => h.clone(),
                _ => addr.to_string(),
            };
            *call.uri_mut() = Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(target.as_str())
                .build()
                .map_err(|e| upstream_error(route, addr.clone(), e.to_string()))?;
            let left = deadline.saturating_sub(started.elapsed());
            if asked.is_some() {
                call.headers_mut()
                    .insert("grpc-timeout", grpc::timeout_value(left));
            }
            let inflight = attempts.begin();
            let sent = tokio::time::timeout(left, route.pool.send_call(&addr, call))
                .await
                .map_err(|_| ProxyError::Timeout {
                    service: route.service.clone(),
                    addr: addr.clone(),
                    after: deadline,
                })?;
            match sent {
                Ok(resp) => {
                    replay.settle();
                    attempts.answered(&addr, resp.status());
                    // The call stays in flight on its instance until its answer has ended.
                    return Ok(
                        resp.map(|body| Guarded::new(body, inflight).map_err(Into::into).boxed())
                    );
                }
                // Nothing of the call was sent: the next instance takes it as it was.
                Err(CallError::Unsent(cause, back)) => {
                    call = *back;
                    addr = attempts.failed(&addr, &cause)?;
                }
                // The instance processed none of it: the next takes it, body and all.
                Err(CallError::Refused(cause)) => {
                    let Some(body) = replay.again() else {
                        let cause = format!(
                            "{cause} (refused unprocessed, but not sent again: its body is over {} KiB or failed)",
                            REPLAY_LIMIT / 1024
                        );
                        return Err(upstream_error(route, addr, cause));
                    };
                    call = build(body);
                    addr = attempts.refused(&addr, &cause)?;
                }
                Err(CallError::Failed(cause)) => {
                    debug!(service = %route.service, %addr, error = %cause, "upstream call failed");
                    return Err(upstream_error(route, addr, cause));
                }
            }
        }
    }

    /// Sends a request that asks for an upgrade through hyper's client, on a connection of its
    /// own that a `101` hands over, failing over while nothing has been sent.
    #[allow(clippy::too_many_arguments)]
    async fn upgrade(
        &self,
        route: &Route,
        req: Request<Incoming>,
        peer: SocketAddr,
        protocol: HeaderValue,
        client_side: OnUpgrade,
        mut attempts: Attempts<'_>,
        mut addr: Addr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, body) = req.into_parts();
        let host = request_host(&parts.headers, &parts.uri);
        let peer_ip = peer.ip().to_string();
        let how = Forwarding {
            peer_ip: &peer_ip,
            host: host.map(str::as_bytes),
            body: body_framing(&parts.headers, &body),
            upgrade: Some(protocol.as_bytes()),
        };
        let mut headers = HeaderMap::new();
        write_forwarded(&parts.headers, &how, &mut headers);
        let client_host = host.and_then(|h| HeaderValue::from_str(h).ok());
        let body = (!body.is_end_stream()).then(|| Reclaimable::new(body));
        let mut upstream = Request::new(RequestBody::of(body.as_ref()));
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = Uri::from_static("/");
        if let Ok(target) = origin_target(&parts.uri).parse() {
            *upstream.uri_mut() = target;
        }
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = headers;
        loop {
            let host = match &client_host {
                Some(h) if !route.config.rewrite_host => Some(h.clone()),
                _ => HeaderValue::from_str(&addr.to_string()).ok(),
            };
            if let Some(h) = host {
                upstream.headers_mut().insert(header::HOST, h);
            }
            let inflight = attempts.begin();
            let sent = self
                .wait(route, &addr, route.pool.send_upgrade(&addr, upstream))
                .await?;
            let cause = match sent {
                Ok(resp) => {
                    attempts.answered(&addr, resp.status());
                    return self.respond(resp, client_side, route, inflight);
                }
                // Nothing was sent: the same request goes to the next instance.
                Err(SendError::Unsent(cause, back))
                    if body.as_ref().is_none_or(|b| !b.started()) =>
                {
                    upstream = *back;
                    cause
                }
                Err(SendError::Unsent(cause, _)) => return Err(upstream_error(route, addr, cause)),
                Err(SendError::Failed(e)) => {
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

    /// Passes the answer to an upgrade request on: a `101 Switching Protocols` becomes a
    /// tunnel, anything else goes as hyper's client read it.
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        client_side: OnUpgrade,
        route: &Route,
        inflight: InFlight,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
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

/// How the body of a request hyper's server framed reaches the instance: with the length
/// hyper held it to when the client declared one, chunked by cairn when its length is unknown,
/// and with no framing header when there is none and none was declared.
fn body_framing(client: &HeaderMap, body: &Incoming) -> BodyFraming {
    let declared = client.contains_key(header::CONTENT_LENGTH);
    match body.size_hint().exact() {
        Some(n) if declared => BodyFraming::Length(n),
        _ if body.is_end_stream() => BodyFraming::None,
        _ => BodyFraming::Chunked,
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
fn origin_target(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}
