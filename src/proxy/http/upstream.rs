//! One kept-alive HTTP/1.1 connection to an instance, polled by whichever task uses it: the
//! request while it waits for the answer, then the response body while it streams.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::body::RequestBody;
use super::shelf::Reusable;

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
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed {
            if let Poll::Ready(r) = Pin::new(&mut self.conn).poll(cx) {
                self.closed = true;
                if let Err(e) = r {
                    debug!(error = %crate::text::causes(&e), "upstream connection ended with an error");
                }
            }
        }
    }
}

impl Reusable for Box<Conn> {
    /// Open and ready for a request, after letting the connection notice what happened since it
    /// was last polled (a close by the instance, the end of a response).
    fn settle(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.closed && self.sender.is_ready()
    }
}
