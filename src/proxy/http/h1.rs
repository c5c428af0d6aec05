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
//! - [`head`]: which requests this path takes, and the heads it writes.
//! - [`chunked`]: where a chunked body ends.
//! - [`exchange`]: one request: attempts, the instance's socket, the response.

pub(crate) mod chunked;
pub(crate) mod exchange;
pub(crate) mod head;

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

pub(crate) use self::exchange::Site;
use self::exchange::{Exchange, READ_SIZE};
use self::head::{parse_request, request_headers, Read};

/// How a client connection left this path.
pub(crate) enum Served {
    /// It is over.
    Closed,
    /// hyper serves the rest of it, starting with these bytes.
    Elsewhere(TcpStream, BytesMut),
}

/// Serves the requests of `client` until it closes, idles out, cairn drains, or it sends what
/// hyper has to serve.
pub(crate) async fn serve(site: &Site<'_>, client: TcpStream, peer: SocketAddr) -> Served {
    let mut x = Exchange::new(client, peer);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        // The whole head, and body, within the idle timeout: a kept-alive client that sends
        // nothing is closed, and so is one that sends a head slowly.
        let deadline = Instant::now() + site.limits.idle_timeout;
        let used = loop {
            let mut headers = request_headers();
            match parse_request(&buf, &mut headers, site.limits.max_header_bytes) {
                Read::Request(req) => break x.handle(site, &req, &buf).await,
                Read::Elsewhere => return Served::Elsewhere(x.into_client(), buf),
                Read::More => {}
            }
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            let read = tokio::select! {
                biased;
                r = tokio::time::timeout_at(deadline, x.client().read_buf(&mut buf)) => r,
                // Between requests a drain closes at once; a head under way is served first.
                _ = site.draining.cancelled(), if buf.is_empty() => return Served::Closed,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Served::Closed,
                Err(_) => {
                    debug!(%peer, "no whole request within the idle timeout, closing");
                    return Served::Closed;
                }
            }
        };
        match used {
            Some(n) => buf.advance(n),
            None => return Served::Closed,
        }
    }
}
