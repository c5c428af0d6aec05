//! The upstream pool: idle bare sockets to instances, for cairn's own HTTP/1.1 client, which
//! carries every request but upgrades. A request takes a socket, drives it itself while the
//! request is written and the response read, and puts it back once the response has ended. No
//! background task per connection and no channel hop per request.
//!
//! An idle socket is nobody's to poll, so it waits on a [`Shelf`], swept every second. An
//! upgrade request gets a connection of its own, driven by hyper's client so a `101` can hand it
//! over, and never pooled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::Builder;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::body::RequestBody;
use super::h2::{CallBody, CallError, H2Conns, StreamBody};
use super::shelf::Shelf;
use crate::addr::Addr;
use crate::net::{dial, OwnAddrs};

/// How often idle sockets are checked for a close by the instance, and for age.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why an upgrade request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing reached the instance: no connection, or one that closed before the request was
    /// written. The request comes back, for another instance.
    Unsent(String, Box<Request<RequestBody>>),
    /// The request may have reached the instance; it must not be sent again.
    Failed(hyper::Error),
}

/// Idle sockets to instances, shared by every route with the same connect timeout.
pub(crate) struct Pool {
    /// Time allowed for the lookup and the connect together.
    connect_timeout: Duration,
    /// cairn's own listeners, never dialed.
    own: Arc<OwnAddrs>,
    /// Idle bare sockets.
    sockets: Shelf<TcpStream>,
    /// HTTP/2 connections, for instances that speak it (gRPC).
    h2: H2Conns,
    /// Whether the sweeper task runs.
    sweeping: AtomicBool,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, own: Arc<OwnAddrs>) -> Arc<Pool> {
        Arc::new(Pool {
            connect_timeout,
            own,
            sockets: Shelf::new(),
            h2: H2Conns::new(),
            sweeping: AtomicBool::new(false),
        })
    }

    /// cairn's own addresses, which this pool never dials.
    pub(crate) fn own(&self) -> &OwnAddrs {
        &self.own
    }

    /// Sends a request that asks for an upgrade on a connection of its own, driven by a task of
    /// its own so that a `101` hands the connection over.
    ///
    /// # Errors
    /// [`SendError::Unsent`] when no connection could take the request, [`SendError::Failed`]
    /// when the request was written and no response came.
    pub(crate) async fn send_upgrade(
        &self,
        addr: &Addr,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let stream = match dial(addr, self.connect_timeout, &self.own).await {
            Ok(stream) => stream,
            Err(e) => return Err(SendError::Unsent(e.to_string(), Box::new(req))),
        };
        let (mut sender, conn) = match Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(parts) => parts,
            Err(e) => return Err(SendError::Unsent(crate::text::causes(&e), Box::new(req))),
        };
        let task_addr = addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(addr = %task_addr, error = %crate::text::causes(&e), "upgrade connection ended with an error");
            }
        });
        sender.try_send_request(req).await.map_err(|mut e| {
            // A request hyper gives back was not written; one it kept may have been.
            match e.take_message() {
                Some(back) => SendError::Unsent(crate::text::causes(e.error()), Box::new(back)),
                None => SendError::Failed(e.into_error()),
            }
        })
    }

    /// Sends a call over this worker's HTTP/2 connection to `addr`.
    ///
    /// # Errors
    /// As for [`H2Conns::send`].
    pub(crate) async fn send_call(
        self: &Arc<Self>,
        addr: &Addr,
        call: Request<CallBody>,
    ) -> Result<Response<StreamBody>, CallError> {
        let sent = self
            .h2
            .send(addr, self.connect_timeout, &self.own, call)
            .await;
        self.sweeping();
        sent
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

    /// Drops the idle sockets that closed or aged out, and forgets the HTTP/2 connections
    /// that closed.
    fn sweep(&self) {
        self.sockets.sweep();
        self.h2.sweep();
    }

    /// The idle sockets per instance: for tests.
    #[cfg(test)]
    pub(crate) fn idle_count(&self, addr: &Addr) -> usize {
        self.sockets.count(addr)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http::Response;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::http::h1::client::SendFail;
    use crate::proxy::http::h1::decoded::{send_request, BareBody};

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

    /// Sends `GET path` through cairn's own client.
    async fn get(
        pool: &Arc<Pool>,
        addr: &Addr,
        path: &str,
    ) -> Result<Response<BareBody>, SendFail> {
        let mut out = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").into_bytes();
        send_request(pool, addr, &mut out, None, false, Duration::from_secs(5)).await
    }

    async fn body_of(resp: Response<BareBody>) -> String {
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
            let resp = get(&pool, &addr, "/").await.unwrap();
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
            let resp = get(&pool, &addr, "/").await.unwrap();
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
        let resp = get(&pool, &addr, "/").await.unwrap();
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
        let resp = get(&pool, &addr, "/").await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(&addr), 0);
        let resp = get(&pool, &addr, "/").await.unwrap();
        drop(resp);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_bodyless_answer_frees_its_connection_unread() {
        const EMPTY: &str = "HTTP/1.1 204 No Content\r\n\r\n";
        let (addr, accepted) = instance(EMPTY, None).await;
        let pool = pool();
        for _ in 0..3 {
            let resp = get(&pool, &addr, "/").await.unwrap();
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
        match get(&pool, &dead, "/").await {
            Err(SendFail::Unsent(cause)) => assert!(cause.contains("refused"), "{cause}"),
            other => panic!("{:?}", other.map(|r| r.status())),
        }
        // An instance that reads the request and closes without answering.
        let (mute, _) = instance("", Some(1)).await;
        match get(&pool, &mute, "/").await {
            Err(SendFail::Failed(_)) => {}
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }
}
