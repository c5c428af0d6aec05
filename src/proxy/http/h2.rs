//! HTTP/2 to instances (gRPC): one multiplexed connection per instance and worker, prior
//! knowledge (h2c), as linkerd2-proxy and Envoy keep them, and more only when the instance's
//! `MAX_CONCURRENT_STREAMS` is reached on every one (each stream is counted until its answer
//! has ended). Each call is a stream on it, so a
//! client's one long-lived connection has its calls spread over every instance. The connection
//! is driven by a task of its own on the worker that made it; HTTP/2 pings find a dead instance
//! while the connection is idle; a connection that closed (the instance's GOAWAY, a failed
//! ping) is replaced at the next call. A call that the connection gives back unsent (it was
//! closing) goes on a new connection; one the instance refused unprocessed (`REFUSED_STREAM`,
//! or a GOAWAY below its stream id) is [`CallError::Refused`]; any other is never sent again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::addr::Addr;
use crate::net::{dial, OwnAddrs};
use crate::rt::workers;

/// How often an idle connection is pinged, and how long an answer may take: a dead instance
/// is found within 15 s even when no call is in flight (etcd's own client keeps the same).
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams opened on a new connection before the instance's SETTINGS arrive.
const INITIAL_STREAMS: usize = 1;

/// The calls' body: the client's, kept so a refused call can be sent again.
pub(crate) type CallBody = super::replay::Attempt;

/// Why a call got no response.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing of the call reached the instance (no connection, or one that gave the call
    /// back): another instance may take it, with the request given back.
    Unsent(String, Box<Request<CallBody>>),
    /// The instance refused the call before processing any of it: another instance may take
    /// it, with its body sent again.
    Refused(String),
    /// The call may have reached the instance: it is never sent again.
    Failed(String),
}

/// The HTTP/2 connections to instances, by instance and worker.
pub(crate) struct H2Conns {
    conns: Mutex<HashMap<(Addr, usize), Vec<Conn>>>,
}

/// One HTTP/2 connection to an instance, the streams open on it, and how many it may have.
#[derive(Clone)]
struct Conn {
    sender: SendRequest<CallBody>,
    streams: Arc<AtomicUsize>,
    /// The instance's `MAX_CONCURRENT_STREAMS`, as the connection's task last saw it.
    max: Arc<AtomicUsize>,
}

impl Conn {
    /// Whether the connection takes one more stream now: open, and below the instance's
    /// `MAX_CONCURRENT_STREAMS`.
    fn has_room(&self) -> bool {
        !self.sender.is_closed()
            && self.streams.load(Ordering::Relaxed) < self.max.load(Ordering::Relaxed)
    }
}

/// A stream counted on its connection until dropped (with the response body it rides in).
#[derive(Debug)]
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn take(streams: &Arc<AtomicUsize>) -> OpenStream {
        streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(Arc::clone(streams))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An instance's answer body, holding its stream's place on the connection until it ends.
#[derive(Debug)]
pub(crate) struct StreamBody {
    body: Incoming,
    slot: Option<OpenStream>,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.slot = None;
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

impl H2Conns {
    pub(crate) fn new() -> H2Conns {
        H2Conns {
            conns: Mutex::default(),
        }
    }

    /// Sends `req` (an absolute URI: its authority is the `:authority`) to `addr` as a stream
    /// of this worker's connection to it with room for one more; a new connection is made when
    /// every one has reached the instance's `MAX_CONCURRENT_STREAMS`, or there is none.
    ///
    /// # Errors
    /// [`CallError::Unsent`] when no connection took the call, [`CallError::Failed`] when it
    /// may have been sent and no response head came.
    pub(crate) async fn send(
        &self,
        addr: &Addr,
        connect_timeout: Duration,
        own: &OwnAddrs,
        mut req: Request<CallBody>,
    ) -> Result<Response<StreamBody>, CallError> {
        let key = (addr.clone(), workers::index());
        // A connection that closed gives the call back; a new one gets it once.
        for fresh in [false, true] {
            let conn = match self.with_room(&key).filter(|_| !fresh) {
                Some(conn) => conn,
                // Boxed: a connect's state is large and rare, a call's moves with it.
                None => match Box::pin(connect(addr, connect_timeout, own)).await {
                    Ok((sender, max)) => {
                        let conn = Conn {
                            sender,
                            streams: Arc::default(),
                            max,
                        };
                        self.lock()
                            .entry(key.clone())
                            .or_default()
                            .push(conn.clone());
                        conn
                    }
                    Err(cause) => return Err(CallError::Unsent(cause, Box::new(req))),
                },
            };
            let slot = OpenStream::take(&conn.streams);
            let mut sender = conn.sender;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|body| StreamBody {
                        body,
                        slot: Some(slot),
                    }))
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if !fresh => {
                        debug!(%addr, error = %crate::text::causes(e.error()), "h2 connection closing, taking a new one");
                        req = back;
                    }
                    Some(back) => {
                        return Err(CallError::Unsent(
                            crate::text::causes(e.error()),
                            Box::new(back),
                        ))
                    }
                    None if refused_unprocessed(e.error()) => {
                        return Err(CallError::Refused(crate::text::causes(e.error())))
                    }
                    None => return Err(CallError::Failed(crate::text::causes(e.error()))),
                },
            }
        }
        unreachable!("the loop returns on its second turn")
    }

    /// This worker's first connection to the instance of `key` with room for a stream; the
    /// closed ones are forgotten on the way.
    fn with_room(&self, key: &(Addr, usize)) -> Option<Conn> {
        let mut conns = self.lock();
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.sender.is_closed());
        list.iter().find(|c| c.has_room()).cloned()
    }

    /// Forgets the connections that closed.
    pub(crate) fn sweep(&self) {
        self.lock().retain(|_, list| {
            list.retain(|c| !c.sender.is_closed());
            !list.is_empty()
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Addr, usize), Vec<Conn>>> {
        self.conns
            .lock()
            .expect("the h2 connection lock is never held across a panic")
    }
}

/// Whether the instance said it processed none of the stream: it reset it with
/// `REFUSED_STREAM`, or its graceful GOAWAY named a last stream below it (RFC 9113 §8.7: either
/// way the request may be sent again).
fn refused_unprocessed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(e) = cause.downcast_ref::<h2::Error>() {
            // A GOAWAY with an error code may answer this very call (it broke the
            // connection): only a graceful one is taken as a refusal, so such a call is not
            // carried to every instance in turn.
            let reason = e.reason();
            return e.is_remote()
                && ((e.is_go_away() && reason == Some(h2::Reason::NO_ERROR))
                    || (e.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM)));
        }
        source = cause.source();
    }
    false
}

/// A new HTTP/2 connection to `addr`, driven by a task on this worker, with the instance's
/// stream limit as that task sees it.
async fn connect(
    addr: &Addr,
    timeout: Duration,
    own: &OwnAddrs,
) -> Result<(SendRequest<CallBody>, Arc<AtomicUsize>), String> {
    let stream = dial(addr, timeout, own).await.map_err(|e| e.to_string())?;
    let (sender, conn) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        // Until the instance's SETTINGS say how many streams it takes, one: a server that takes
        // fewer than hyper's default of 100 resets the streams past its limit, and a call on a
        // reset stream cannot be sent again.
        .initial_max_send_streams(INITIAL_STREAMS)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| crate::text::causes(&e))?;
    let max = Arc::new(AtomicUsize::new(INITIAL_STREAMS));
    let limit = Arc::clone(&max);
    let task_addr = addr.clone();
    tokio::spawn(async move {
        let mut conn = conn;
        let ended = std::future::poll_fn(|cx| {
            let polled = Pin::new(&mut conn).poll(cx);
            limit.store(conn.current_max_send_streams(), Ordering::Relaxed);
            polled
        })
        .await;
        if let Err(e) = ended {
            debug!(addr = %task_addr, error = %crate::text::causes(&e), "h2 connection to an instance ended");
        }
    });
    Ok((sender, max))
}
