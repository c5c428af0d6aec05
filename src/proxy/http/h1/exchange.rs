//! One request on cairn's own HTTP/1.1 path: the instances it tries, the bare socket it is
//! written to, and the response passed back to the client as it comes.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::chunked::BadChunk;
use super::client::{poll_read, send, SendFail};
use super::framing::{Left, MAX_READ, READ_SIZE};
use super::head::{end_request, write_request, RequestHead};
use super::response::{parse_response, write_answer, Framing, ResponseHead, Written};
use crate::addr::Addr;
use crate::proxy::config::Limits;
use crate::proxy::error::ProxyError;
use crate::proxy::http::pool::Pool;
use crate::proxy::http::routes::{Route, Routes, Routing};
use crate::proxy::metrics::{Active, ListenerMetrics};
use crate::rt::deadline::Deadline;
use crate::rt::flag::Flag;

/// What one listener tells the HTTP/1.1 path.
pub(crate) struct Site<'a> {
    /// Where requests go.
    pub(crate) routing: &'a Routing,
    /// The routes of the current config.
    pub(crate) routes: &'a ArcSwap<Routes>,
    /// The listener's counters.
    pub(crate) metrics: &'a ListenerMetrics,
    /// Header size and idle limits.
    pub(crate) limits: &'a Limits,
}

/// What became of a request this path took.
pub(super) enum Handled {
    /// Answered; this many bytes of the buffer were the request, and the connection goes on.
    Next(usize),
    /// Answered; the connection ends.
    Close,
    /// Not sent: its service's instances speak HTTP/2 only (a gateway's Host named a
    /// `protocol = "grpc"` service). hyper serves it, and the rest of the connection.
    Hyper,
}

/// Response bodies up to this size go out in one write with their head.
const WITH_HEAD: usize = 16 * 1024;

/// A client connection on this path, with the buffers its requests reuse.
pub(super) struct Exchange<'a> {
    client: TcpStream,
    peer: SocketAddr,
    /// The client's address as X-Forwarded-For lists it.
    peer_ip: String,
    /// Set once cairn drains: the connection closes after the response in flight.
    drained: &'a Flag,
    /// The head being written: the request's to the instance, then the response's to the client.
    out: Vec<u8>,
}

impl<'a> Exchange<'a> {
    pub(super) fn new(client: TcpStream, peer: SocketAddr, drained: &'a Flag) -> Self {
        Exchange {
            client,
            peer,
            peer_ip: peer.ip().to_string(),
            drained,
            out: Vec::with_capacity(1024),
        }
    }

    pub(super) fn client(&mut self) -> &mut TcpStream {
        &mut self.client
    }

    pub(super) fn into_client(self) -> TcpStream {
        self.client
    }

    /// Forwards `req`, whose bytes (head and body) start `buf`, and answers the client. Returns
    /// how many bytes of `buf` the request took when the connection goes on, `None` when it
    /// ends.
    pub(super) async fn handle(
        &mut self,
        site: &Site<'_>,
        req: &RequestHead<'_>,
        buf: &[u8],
        timer: &mut Deadline,
    ) -> Handled {
        let host = std::str::from_utf8(&buf[req.host.clone()]).unwrap_or_default();
        let route = site.routing.route(&site.routes.load(), Some(host));
        if route.as_ref().is_ok_and(|r| r.config.h2) {
            return Handled::Hyper;
        }
        let metrics = site.metrics;
        metrics.requests.inc();
        let _active = Active::new(&metrics.active);
        let used = req.len + req.body;
        let sent = match route {
            Ok(route) => self.forward(site, &route, req, buf, timer).await,
            Err(e) => Err(e),
        };
        let open = match sent {
            Ok(open) => open,
            Err(e) => self.answer(site, &e, req.close, timer).await,
        };
        if open {
            Handled::Next(used)
        } else {
            Handled::Close
        }
    }

    /// Sends the request to an instance of `route`, failing over while nothing has been sent,
    /// and passes the response on. Returns whether the client connection stays open.
    ///
    /// # Errors
    /// Why there is no response, before anything has been written to the client.
    async fn forward(
        &mut self,
        site: &Site<'_>,
        route: &Route,
        req: &RequestHead<'_>,
        buf: &[u8],
        timer: &mut Deadline,
    ) -> Result<bool, ProxyError> {
        let (mut attempts, mut addr) = route.attempts(site.metrics, req.headers, self.peer)?;
        write_request(req, buf, &self.peer_ip, &mut self.out);
        let base = self.out.len();
        let body = &buf[req.len..req.len + req.body];
        let head_request = req.method == "HEAD";
        loop {
            self.out.truncate(base);
            if route.config.rewrite_host {
                end_request(&mut self.out, addr.to_string().as_bytes());
            } else {
                end_request(&mut self.out, &buf[req.host.clone()]);
            }
            self.out.extend_from_slice(body);
            let inflight = attempts.begin();
            let close = req.close || self.drained.is_set();
            timer.reset(route.config.request_timeout);
            let sent = tokio::select! {
                sent = send(&route.pool, &addr, &mut self.out, None, |read, out| {
                    parse_response(read, head_request, &mut Written { out, close })
                }) => sent,
                _ = timer.passed() => {
                    return Err(ProxyError::Timeout {
                        service: route.service.clone(),
                        addr: addr.clone(),
                        after: route.config.request_timeout,
                    })
                }
            };
            match sent {
                Ok((up, read, head, _)) => {
                    attempts.answered(&addr, head.status);
                    // The request stays in flight on its instance until the body has been sent.
                    let idle = IdleTimer {
                        after: site.limits.idle_timeout,
                        deadline: timer,
                    };
                    let relayed =
                        self.relay(up, read, head, close, idle, &route.pool, addr.clone());
                    let open = relayed.await.map_err(|e| ProxyError::Upstream {
                        service: route.service.clone(),
                        addr,
                        cause: e.to_string(),
                    });
                    drop(inflight);
                    return open;
                }
                Err(SendFail::Unsent(cause)) => addr = attempts.failed(&addr, &cause)?,
                Err(SendFail::Failed(cause)) => {
                    debug!(service = %route.service, %addr, error = %cause, "upstream request failed");
                    return Err(ProxyError::Upstream {
                        service: route.service.clone(),
                        addr,
                        cause,
                    });
                }
            }
        }
    }

    /// Passes the response whose head is in `out` and whose first bytes are in `read` to the
    /// client, then keeps the instance's socket if it can serve another request. Returns
    /// whether the client connection stays open. A client that reads nothing and an instance
    /// that sends nothing for `idle.after` end both connections.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &mut self,
        mut up: TcpStream,
        mut read: BytesMut,
        head: ResponseHead,
        close: bool,
        mut idle: IdleTimer<'_>,
        pool: &Arc<Pool>,
        addr: Addr,
    ) -> Result<bool, BadChunk> {
        read.advance(head.len);
        let mut left = Left::new(head.framing);
        let mut want = READ_SIZE;
        // A body broken from its first bytes is found before the client gets anything: it is
        // answered with a 502, not with a head and a cut.
        let mut n = left.take(&read)?;
        if n <= WITH_HEAD {
            self.out.extend_from_slice(&read[..n]);
            read.advance(n);
            n = 0;
        }
        if idle.write(&mut self.client, &self.out).await.is_err() {
            return Ok(false);
        }
        loop {
            if n > 0 {
                if idle.write(&mut self.client, &read[..n]).await.is_err() {
                    return Ok(false);
                }
                read.advance(n);
            }
            if left.is_done() {
                break;
            }
            if !read.is_empty() {
                // Bytes past the body's end that are not the end of a chunk: broken framing.
                return Ok(false);
            }
            read.reserve(want);
            let room = read.capacity();
            match idle.read(&mut up, &mut read).await {
                Ok(0) if left.closed() => break,
                Ok(0) => {
                    debug!(%addr, "instance closed before the end of the response body");
                    return Ok(false);
                }
                Err(e) => {
                    debug!(%addr, error = %e, "response body cut");
                    return Ok(false);
                }
                // A read that fills the buffer says a large body is streaming: larger reads
                // then take fewer system calls per byte.
                Ok(got) if got == room && want < MAX_READ => want *= 2,
                Ok(_) => {}
            }
            n = match left.take(&read) {
                Ok(n) => n,
                Err(e) => {
                    debug!(%addr, error = %e, "broken response body");
                    return Ok(false);
                }
            };
        }
        if head.keep_alive && head.framing != Framing::UntilClose && read.is_empty() {
            pool.keep_socket(addr, up);
        }
        Ok(!close && head.framing != Framing::UntilClose)
    }

    /// Answers the client with cairn's own one-line text. Returns whether the connection stays
    /// open.
    async fn answer(
        &mut self,
        site: &Site<'_>,
        e: &ProxyError,
        close: bool,
        timer: &mut Deadline,
    ) -> bool {
        e.count(site.metrics);
        let close = close || self.drained.is_set();
        write_answer(&mut self.out, e.status(), &e.line(), close);
        let mut idle = IdleTimer {
            after: site.limits.idle_timeout,
            deadline: timer,
        };
        idle.write(&mut self.client, &self.out).await.is_ok() && !close
    }
}

/// The idle timeout while a response streams: a read from the instance or a write to the
/// client that has to wait may wait `after`, then the exchange ends. The deadline is set only
/// when one has to wait, so an exchange whose reads and writes all complete at once reads no
/// clock and touches no timer.
struct IdleTimer<'d> {
    after: Duration,
    deadline: &'d mut Deadline,
}

impl IdleTimer<'_> {
    /// Writes `bytes` to `io`, giving up when the client takes nothing for the timeout.
    async fn write(&mut self, io: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match io.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.deadline.reset(self.after);
            tokio::select! {
                biased;
                ready = io.writable() => ready?,
                _ = self.deadline.passed() => {
                    debug!("client read nothing of the response within the idle timeout");
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
        }
        Ok(())
    }

    /// Reads what `io` has into `buf`, giving up when the instance sends nothing for the
    /// timeout.
    async fn read(&mut self, io: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
        // A first attempt without the deadline: most reads find bytes waiting.
        let now = poll_fn(|cx| Poll::Ready(poll_read(cx, io, buf))).await;
        if let Poll::Ready(got) = now {
            return got;
        }
        self.deadline.reset(self.after);
        tokio::select! {
            biased;
            got = io.read_buf(buf) => got,
            _ = self.deadline.passed() => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the instance sent nothing of the response body within the idle timeout",
            )),
        }
    }
}
