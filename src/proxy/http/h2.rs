//! HTTP/2 to instances (gRPC): one multiplexed connection per instance and worker, prior
//! knowledge (h2c), as linkerd2-proxy and Envoy keep them. Each call is a stream on it, so a
//! client's one long-lived connection has its calls spread over every instance. The connection
//! is driven by a task of its own on the worker that made it; HTTP/2 pings find a dead instance
//! while the connection is idle; a connection that closed (the instance's GOAWAY, a failed
//! ping) is replaced at the next call. A call that the connection gives back unsent (it was
//! closing) goes on a new connection; one it may have sent is never sent again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
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

/// The calls' body: the client's, as hyper's server reads it.
pub(crate) type CallBody = Incoming;

/// Why a call got no response.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing of the call reached the instance (no connection, or one that gave the call
    /// back): another instance may take it, with the request given back.
    Unsent(String, Box<Request<CallBody>>),
    /// The call may have reached the instance: it is never sent again.
    Failed(String),
}

/// The HTTP/2 connections to instances, by instance and worker.
pub(crate) struct H2Conns {
    conns: Mutex<HashMap<(Addr, usize), SendRequest<CallBody>>>,
}

impl H2Conns {
    pub(crate) fn new() -> H2Conns {
        H2Conns {
            conns: Mutex::default(),
        }
    }

    /// Sends `req` (an absolute URI: its authority is the `:authority`) to `addr` as a stream
    /// of this worker's connection to it, made if there is none.
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
    ) -> Result<Response<Incoming>, CallError> {
        let key = (addr.clone(), workers::index());
        // A connection that closed gives the call back; a new one gets it once.
        for fresh in [false, true] {
            let sender = match self.live(&key).filter(|_| !fresh) {
                Some(sender) => sender,
                None => match connect(addr, connect_timeout, own).await {
                    Ok(sender) => {
                        self.lock().insert(key.clone(), sender.clone());
                        sender
                    }
                    Err(cause) => return Err(CallError::Unsent(cause, Box::new(req))),
                },
            };
            let mut sender = sender;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
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
                    None => return Err(CallError::Failed(crate::text::causes(e.error()))),
                },
            }
        }
        unreachable!("the loop returns on its second turn")
    }

    /// This worker's open connection to the instance of `key`.
    fn live(&self, key: &(Addr, usize)) -> Option<SendRequest<CallBody>> {
        let mut conns = self.lock();
        match conns.get(key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                conns.remove(key);
                None
            }
            None => None,
        }
    }

    /// Forgets the connections that closed.
    pub(crate) fn sweep(&self) {
        self.lock().retain(|_, sender| !sender.is_closed());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Addr, usize), SendRequest<CallBody>>> {
        self.conns
            .lock()
            .expect("the h2 connection lock is never held across a panic")
    }
}

/// A new HTTP/2 connection to `addr`, driven by a task on this worker.
async fn connect(
    addr: &Addr,
    timeout: Duration,
    own: &OwnAddrs,
) -> Result<SendRequest<CallBody>, String> {
    let stream = dial(addr, timeout, own).await.map_err(|e| e.to_string())?;
    let (sender, conn) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| crate::text::causes(&e))?;
    let task_addr = addr.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(addr = %task_addr, error = %crate::text::causes(&e), "h2 connection to an instance ended");
        }
    });
    Ok(sender)
}
