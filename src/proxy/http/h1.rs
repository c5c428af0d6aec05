//! cairn's own HTTP/1.1 path, for the requests most clients send: a head, and a body of a known
//! and small size or none. The client's connection and the instance's bare socket are both read
//! and written by the connection's task, with no message objects in between: the request head is
//! parsed, rewritten and sent in one write, and the response head likewise, its body passed on
//! as it comes (chunked bodies as they came).
//!
//! Whatever else a client sends (HTTP/2, HTTP/1.0, an upgrade, a chunked or large body,
//! `Expect: 100-continue`, a head too large or no request at all) hands the connection, and the
//! bytes read so far, to hyper for the rest of its life ([`Served::Elsewhere`]).
//!
//! - [`head`]: which requests this path takes, and the head an instance gets.
//! - [`write`]: the one head writer: what an instance gets, over name/value pairs from either
//!   parser, framing headers written from what cairn decided.
//! - [`response`]: how a response is framed, and the head the client gets back.
//! - [`framing`]: where a body ends, for the relay (as it came) and the decoder alike.
//! - [`chunked`]: the chunked coding, byte by byte.
//! - [`exchange`]: one request: attempts, the instance's socket, the response.
//! - [`client`]: the instance's side: a request sent on a bare pooled socket, its body streamed,
//!   and its response head read, for this path and for the requests hyper's server takes.
//! - [`upload`]: a request body streamed to an instance as the socket takes it.
//! - [`decoded`]: a response body decoded into frames for hyper's server, driving the upload
//!   when the instance answered before its end.

pub(crate) mod chunked;
pub(crate) mod client;
pub(crate) mod decoded;
#[cfg(test)]
mod differential;
pub(crate) mod exchange;
pub(crate) mod framing;
pub(crate) mod head;
pub(crate) mod response;
#[cfg(test)]
mod tests;
pub(crate) mod upload;
pub(crate) mod write;

use std::net::SocketAddr;

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) use self::exchange::Site;
use self::exchange::{Exchange, Handled};
use self::framing::READ_SIZE;
use self::head::{parse_request, request_headers, Read};
use crate::rt::deadline::Deadline;
use crate::rt::flag::Flag;
use crate::rt::side::Side;

/// How a client connection left this path.
pub(crate) enum Served {
    /// It is over.
    Closed,
    /// hyper serves the rest of it, starting with these bytes.
    Elsewhere(TcpStream, BytesMut),
}

/// Serves the requests of `client` until it closes, idles out, cairn drains, or it sends what
/// hyper has to serve. At `abort` it is dropped whatever it is doing.
pub(crate) async fn serve(
    site: &Site<'_>,
    client: TcpStream,
    peer: SocketAddr,
    draining: &CancellationToken,
    abort: &CancellationToken,
) -> Served {
    let drained = Flag::default();
    let mut requests = pin!(requests(site, client, peer, &drained));
    // The drain and the abort are watched beside the connection, polled only when one fires.
    let mut stop = Side::new(next_stop(draining, abort, false));
    poll_fn(|cx| {
        loop {
            match stop.poll_side(cx) {
                Poll::Ready(Stop::Abort) => return Poll::Ready(Served::Closed),
                Poll::Ready(Stop::Drain) => {
                    // Set by this task, which polls the requests next: see `Flag`.
                    drained.set();
                    stop = Side::new(next_stop(draining, abort, true));
                }
                Poll::Pending => break,
            }
        }
        requests.as_mut().poll(cx)
    })
    .await
}

/// What stops a connection from outside.
enum Stop {
    /// cairn is draining: finish the request in flight, then close.
    Drain,
    /// The grace period is over.
    Abort,
}

async fn next_stop(draining: &CancellationToken, abort: &CancellationToken, drained: bool) -> Stop {
    tokio::select! {
        _ = draining.cancelled(), if !drained => Stop::Drain,
        _ = abort.cancelled() => Stop::Abort,
    }
}

async fn requests(site: &Site<'_>, client: TcpStream, peer: SocketAddr, drained: &Flag) -> Served {
    let mut x = Exchange::new(client, peer, drained);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let idle = site.limits.idle_timeout;
    let mut deadline = Deadline::after(idle);
    // The request timeout's timer, kept apart so that both deadlines only ever move later.
    let mut timer = Deadline::after(idle);
    loop {
        // The whole head within the idle timeout: a kept-alive client that sends nothing is
        // closed, and so is one that sends a head slowly.
        deadline.reset(idle);
        let mut in_body = false;
        let used = loop {
            let mut headers = request_headers();
            match parse_request(&buf, &mut headers, site.limits.max_header_bytes) {
                Read::Request(req) => break x.handle(site, &req, &buf, &mut timer).await,
                Read::Elsewhere => return Served::Elsewhere(x.into_client(), buf),
                Read::More => {}
                // The body (64 KiB at most on this path) within the idle timeout from the end
                // of the head, however it trickles in: a client that sends a byte a minute
                // holds no connection for days.
                Read::Body if !in_body => {
                    in_body = true;
                    deadline.reset(idle);
                }
                Read::Body => {}
            }
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            let read = tokio::select! {
                biased;
                // Between requests a drain closes at once; a head under way is served first.
                _ = drained.wait(), if buf.is_empty() => return Served::Closed,
                r = x.client().read_buf(&mut buf) => r,
                _ = deadline.passed() => {
                    debug!(%peer, "no whole request within the idle timeout, closing");
                    return Served::Closed;
                }
            };
            match read {
                Ok(n) if n > 0 => {}
                _ => return Served::Closed,
            }
        };
        match used {
            Handled::Next(n) => buf.advance(n),
            Handled::Close => return Served::Closed,
            Handled::Hyper => return Served::Elsewhere(x.into_client(), buf),
        }
    }
}
