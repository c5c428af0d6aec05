//! One kept-alive HTTP/1.1 connection to an instance, polled by whichever task uses it, and the
//! response body that drives it while it streams, then hands it back to its pool.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::body::RequestBody;
use super::pool::Pool;
use crate::addr::Addr;

type Io = TokioIo<TcpStream>;

/// The two halves hyper makes of a connection: the sender of requests and the connection itself.
pub(super) type Parts = (SendRequest<RequestBody>, Connection<Io, RequestBody>);

/// Starts HTTP/1.1 on a dialed `stream` (no I/O happens yet).
pub(super) async fn handshake(stream: TcpStream) -> Result<Parts, String> {
    Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| crate::text::causes(&e))
}

/// One HTTP/1.1 connection to an instance, polled by whichever task uses it.
pub(super) struct Conn {
    sender: SendRequest<RequestBody>,
    conn: Connection<Io, RequestBody>,
    /// The connection future has finished: the connection is closed.
    closed: bool,
}

pub(super) type TrySendError = hyper::client::conn::TrySendError<Request<RequestBody>>;

impl Conn {
    pub(super) fn new((sender, conn): Parts) -> Box<Conn> {
        Box::new(Conn {
            sender,
            conn,
            closed: false,
        })
    }

    /// Sends `req` and drives the connection until the response's head has arrived.
    pub(super) async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError> {
        let answer = self.sender.try_send_request(req);
        let mut answer = std::pin::pin!(answer);
        poll_fn(|cx| {
            self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// Lets the connection read and write what it can.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed {
            if let Poll::Ready(r) = Pin::new(&mut self.conn).poll(cx) {
                self.closed = true;
                if let Err(e) = r {
                    debug!(error = %crate::text::causes(&e), "upstream connection ended with an error");
                }
            }
        }
    }

    /// Whether the connection is open and ready for a request, after letting it notice what
    /// happened since it was last polled (a close by the instance, the end of a response).
    pub(super) fn settle(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.closed && self.sender.is_ready()
    }
}

/// An instance's response body: polling it drives the connection it arrives on, which goes
/// back to the pool once the body has been read to its end.
pub(crate) struct UpstreamBody {
    body: Incoming,
    /// The connection the body arrives on, with the pool it returns to; `None` once released or
    /// given up, and for a connection driven by a task of its own (an upgrade).
    pooled: Option<(Box<Conn>, Arc<Pool>, Addr)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("end", &self.body.is_end_stream())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// A body arriving on `conn`, which goes back to `pool` as a connection to `addr`.
    pub(super) fn pooled(body: Incoming, conn: Box<Conn>, pool: Arc<Pool>, addr: Addr) -> Self {
        UpstreamBody {
            body,
            pooled: Some((conn, pool, addr)),
        }
    }

    /// A body on a connection some other task drives.
    pub(super) fn unpooled(body: Incoming) -> Self {
        UpstreamBody { body, pooled: None }
    }

    /// The body has ended: its connection may serve another request.
    fn release(&mut self) {
        if let Some((conn, pool, addr)) = self.pooled.take() {
            pool.checkin(addr, conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some((conn, ..)) = &mut this.pooled {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            // A connection whose response broke off is never reused.
            Poll::Ready(Some(Err(_))) => this.pooled = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304) may be dropped unpolled; one dropped
        // before its end leaves bytes on the connection, which is then closed.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
