//! The upstream pool: kept-alive HTTP/1.1 connections to instances for the requests with a body
//! that hyper's server takes, each driven by the task of the request using it. A request polls its connection itself while it waits for the answer and
//! while its response body streams, then hands the connection back when the body has ended. No
//! background task per connection and no channel hop per request: one task wake-up where a
//! separate connection task costs three.
//!
//! An idle connection is nobody's to poll, so it waits on a [`Shelf`], swept every second. The
//! pool also keeps the bare sockets of cairn's own HTTP/1.1 client ([`super::h1::client`]),
//! which carries every other request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::RequestBody;
use super::shelf::Shelf;
use super::upstream::{handshake, Conn, Parts, TrySendError};
use crate::addr::Addr;
use crate::net::{dial, OwnAddrs};

/// How often idle connections are checked for a close by the instance, and for age.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing reached the instance: no connection, or one that closed before the request was
    /// written. The request comes back, for another instance.
    Unsent(String, Box<Request<RequestBody>>),
    /// The request may have reached the instance; it must not be sent again.
    Failed(hyper::Error),
}

impl From<TrySendError> for SendError {
    /// A request hyper gives back was not written; one it kept may have been.
    fn from(mut e: TrySendError) -> SendError {
        match e.take_message() {
            Some(back) => SendError::Unsent(crate::text::causes(e.error()), Box::new(back)),
            None => SendError::Failed(e.into_error()),
        }
    }
}

/// Kept-alive connections to instances, shared by every route with the same connect timeout.
pub(crate) struct Pool {
    /// Time allowed for the lookup and the connect together.
    connect_timeout: Duration,
    /// cairn's own listeners, never dialed.
    own: Arc<OwnAddrs>,
    /// Idle hyper connections.
    conns: Shelf<Box<Conn>>,
    /// Idle bare sockets of cairn's own HTTP/1.1 path.
    sockets: Shelf<TcpStream>,
    /// Whether the sweeper task runs.
    sweeping: AtomicBool,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, own: Arc<OwnAddrs>) -> Arc<Pool> {
        Arc::new(Pool {
            connect_timeout,
            own,
            conns: Shelf::new(),
            sockets: Shelf::new(),
            sweeping: AtomicBool::new(false),
        })
    }

    /// Sends `req` (origin-form URI, Host set) to `addr` on an idle connection or a new one. A
    /// kept-alive connection that turns out closed before the request was written is replaced
    /// by another; the request is never written twice.
    ///
    /// # Errors
    /// [`SendError::Unsent`] when no connection could take the request, [`SendError::Failed`]
    /// when the request was written and no response came.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: &Addr,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        loop {
            let (mut conn, reused) = match self.conns.take(addr) {
                Some(conn) => (conn, true),
                // Boxed: dialing is rare next to reuse, and its future would make every
                // request's future larger (each request's future is moved a few times).
                None => match Box::pin(self.connect(addr)).await {
                    Ok(conn) => (conn, false),
                    Err(cause) => return Err(SendError::Unsent(cause, Box::new(req))),
                },
            };
            match conn.send(req).await {
                Ok(resp) => {
                    let pool = Arc::clone(self);
                    return Ok(
                        resp.map(|body| UpstreamBody::pooled(body, conn, pool, addr.clone()))
                    );
                }
                Err(e) => match SendError::from(e) {
                    SendError::Unsent(_, back) if reused => {
                        debug!(%addr, "kept-alive connection closed before use, taking another");
                        req = *back;
                    }
                    e => return Err(e),
                },
            }
        }
    }

    /// Sends a request that asks for an upgrade on a connection of its own, driven by a task of
    /// its own so that a `101` hands the connection over; such a connection is never pooled.
    ///
    /// # Errors
    /// As for [`Pool::send`].
    pub(crate) async fn send_upgrade(
        &self,
        addr: &Addr,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (mut sender, conn) = match Box::pin(self.dial(addr)).await {
            Ok(parts) => parts,
            Err(cause) => return Err(SendError::Unsent(cause, Box::new(req))),
        };
        let addr = addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %crate::text::causes(&e), "upgrade connection ended with an error");
            }
        });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(UpstreamBody::unpooled)),
            Err(e) => Err(e.into()),
        }
    }

    /// A new connection to `addr`, or why there is none.
    async fn connect(&self, addr: &Addr) -> Result<Box<Conn>, String> {
        self.dial(addr).await.map(Conn::new)
    }

    async fn dial(&self, addr: &Addr) -> Result<Parts, String> {
        let stream = dial(addr, self.connect_timeout, &self.own)
            .await
            .map_err(|e| e.to_string())?;
        handshake(stream).await
    }

    /// Keeps `conn`, whose response has been read whole, for the next request to `addr`.
    fn checkin(self: &Arc<Self>, addr: Addr, conn: Box<Conn>) {
        if self.conns.put(addr, conn) {
            self.sweeping();
        }
    }

    /// A bare socket to `addr`: an idle one, or a new one. The flag tells whether it was idle.
    ///
    /// # Errors
    /// Why no new connection could be made.
    pub(crate) async fn socket(&self, addr: &Addr) -> Result<(TcpStream, bool), String> {
        match self.sockets.take(addr) {
            Some(stream) => Ok((stream, true)),
            None => dial(addr, self.connect_timeout, &self.own)
                .await
                .map(|s| (s, false))
                .map_err(|e| e.to_string()),
        }
    }

    /// Keeps `stream`, whose exchange is complete, for the next request to `addr`.
    pub(crate) fn keep_socket(self: &Arc<Self>, addr: Addr, stream: TcpStream) {
        if self.sockets.put(addr, stream) {
            self.sweeping();
        }
    }

    /// Starts the sweeper if it does not run yet.
    fn sweeping(self: &Arc<Self>) {
        // A body may be dropped outside the runtime (as it shuts down): no sweeper then.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            if !self.sweeping.swap(true, Ordering::AcqRel) {
                runtime.spawn(sweep(Arc::downgrade(self)));
            }
        }
    }

    /// Drops the idle connections that closed or aged out.
    fn sweep(&self) {
        self.conns.sweep();
        self.sockets.sweep();
    }

    /// The idle connections per instance: for tests and the pool's own checks.
    #[cfg(test)]
    fn idle_count(&self, addr: &Addr) -> usize {
        self.conns.count(addr)
    }
}

/// Sweeps `pool` every [`SWEEP_EVERY`] for as long as it exists.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep();
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
    fn pooled(body: Incoming, conn: Box<Conn>, pool: Arc<Pool>, addr: Addr) -> Self {
        UpstreamBody {
            body,
            pooled: Some((conn, pool, addr)),
        }
    }

    /// A body on a connection some other task drives.
    fn unpooled(body: Incoming) -> Self {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http::header::HOST;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An instance on a real socket that answers every request head with `answer` and counts
    /// its connections; with `close_after`, it closes each connection after that many answers
    /// and `linger` more.
    async fn instance_lingering(
        answer: &'static str,
        close_after: Option<usize>,
        linger: Duration,
    ) -> (Addr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Addr::Ip(listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut answered = 0;
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            stream.write_all(answer.as_bytes()).await.unwrap();
                            answered += 1;
                            if close_after == Some(answered) {
                                tokio::time::sleep(linger).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn instance(
        answer: &'static str,
        close_after: Option<usize>,
    ) -> (Addr, Arc<AtomicUsize>) {
        instance_lingering(answer, close_after, Duration::ZERO).await
    }

    fn get(path: &str) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Empty);
        *req.uri_mut() = path.parse().unwrap();
        req.headers_mut().insert(HOST, "test".parse().unwrap());
        req
    }

    async fn body_of(resp: Response<UpstreamBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn pool() -> Arc<Pool> {
        Pool::new(Duration::from_secs(1), Arc::default())
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

    #[tokio::test]
    async fn one_connection_serves_requests_in_turn() {
        let (addr, accepted) = instance(OK, None).await;
        let pool = pool();
        for _ in 0..5 {
            let resp = pool.send(&addr, get("/")).await.unwrap();
            assert_eq!(body_of(resp).await, "ok\n");
            assert_eq!(pool.idle_count(&addr), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_reused() {
        let (addr, accepted) = instance(OK, Some(1)).await;
        let pool = pool();
        for _ in 0..3 {
            let resp = pool.send(&addr, get("/")).await.unwrap();
            assert_eq!(body_of(resp).await, "ok\n");
            // The instance's close reaches cairn before the next request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        pool.sweep();
        assert_eq!(pool.idle_count(&addr), 0, "a closed connection stayed idle");
    }

    #[tokio::test]
    async fn the_sweeper_drops_idle_connections_the_instance_closed() {
        let (addr, _) = instance_lingering(OK, Some(1), Duration::from_millis(300)).await;
        let pool = pool();
        let resp = pool.send(&addr, get("/")).await.unwrap();
        assert_eq!(body_of(resp).await, "ok\n");
        assert_eq!(pool.idle_count(&addr), 1);
        // No request comes: the sweep alone notices the close.
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert_eq!(pool.idle_count(&addr), 0, "a closed connection stayed idle");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        const LONG: &str = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial";
        let (addr, accepted) = instance(LONG, None).await;
        let pool = pool();
        let resp = pool.send(&addr, get("/")).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(&addr), 0);
        let resp = pool.send(&addr, get("/")).await.unwrap();
        drop(resp);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_bodyless_answer_frees_its_connection_unread() {
        const EMPTY: &str = "HTTP/1.1 204 No Content\r\n\r\n";
        let (addr, accepted) = instance(EMPTY, None).await;
        let pool = pool();
        for _ in 0..3 {
            let resp = pool.send(&addr, get("/")).await.unwrap();
            assert_eq!(resp.status(), 204);
            drop(resp);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connect_is_unsent_and_an_unanswered_request_failed() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = Addr::Ip(closed.local_addr().unwrap());
        drop(closed);
        let pool = pool();
        match pool.send(&dead, get("/")).await {
            Err(SendError::Unsent(cause, back)) => {
                assert!(cause.contains("refused"), "{cause}");
                assert_eq!(back.uri(), "/", "the request did not come back whole");
            }
            other => panic!("{other:?}"),
        }
        // An instance that reads the request and closes without answering.
        let (mute, _) = instance("", Some(1)).await;
        match pool.send(&mute, get("/")).await {
            Err(SendError::Failed(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
