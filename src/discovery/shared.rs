//! One watch stream for every watch of a node. etcd charges about 18 kB per stream and 350 B
//! per watcher, so a node routing five services holds one stream with five watchers, not five
//! streams; through a grpc-proxy, identical watches of many nodes then share one upstream.
//!
//! A task owns the stream, as etcd's own client does: it opens the stream with the first watch
//! and adds each later one on it, one create in flight at a time (an answer to a create does
//! not name it), and routes every other answer by its watch id. A broken
//! stream fails every watch on it at once; each discovery task then opens its watch again from
//! its own applied revision, and the first to do so opens a new stream (with a fresh token). A
//! watch whose handle is dropped is canceled on the stream.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use etcd_client::{EventType, KeyValue, ResponseHeader, WatchOptions, WatchResponse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::source::{Event, Header, Kv, WatchMessage, WatchStream};
use crate::etcd::{Etcd, EtcdError, Op, MAX_DECODE_BYTES};

/// A handle to a node's shared watch stream; clones share it. The task behind it ends once
/// every handle and every watch is dropped.
#[derive(Debug, Clone)]
pub struct SharedStream {
    requests: mpsc::UnboundedSender<Request>,
}

/// What a handle or a watch asks of the task.
enum Request {
    /// Watch `prefix` from `start`, delivering to `to`.
    Open {
        token: u64,
        prefix: String,
        start: i64,
        to: mpsc::UnboundedSender<Result<WatchMessage, EtcdError>>,
    },
    /// The watch opened with `token` is no longer read.
    Close { token: u64 },
    /// The watch opened with `token` went silent for too long: the stream may be stuck.
    Stale { token: u64 },
}

/// One watch on the shared stream, as discovery reads it.
#[derive(Debug)]
pub struct Watch {
    token: u64,
    messages: mpsc::UnboundedReceiver<Result<WatchMessage, EtcdError>>,
    requests: mpsc::UnboundedSender<Request>,
}

impl SharedStream {
    /// Starts the task that will own the stream through `etcd`.
    pub fn spawn(etcd: Etcd) -> SharedStream {
        let (requests, inbox) = mpsc::unbounded_channel();
        tokio::spawn(run(etcd, inbox));
        SharedStream { requests }
    }

    /// Watches every key under `prefix` from revision `start`, with the previous values and
    /// progress notifications. The first message is `Created`, or an error if the watch could
    /// not be opened.
    pub fn open(&self, prefix: &str, start: i64) -> Watch {
        static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (to, messages) = mpsc::unbounded_channel();
        let _ = self.requests.send(Request::Open {
            token,
            prefix: prefix.to_string(),
            start,
            to,
        });
        Watch {
            token,
            messages,
            requests: self.requests.clone(),
        }
    }
}

impl WatchStream for Watch {
    async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        match self.messages.recv().await {
            Some(message) => message.map(Some),
            // The task ended: only at shutdown.
            None => Ok(None),
        }
    }

    fn stale(&mut self) {
        let _ = self.requests.send(Request::Stale { token: self.token });
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Close { token: self.token });
    }
}

/// A watch asked for, being created, or created.
struct Entry {
    token: u64,
    prefix: String,
    /// The revision it starts from.
    start: i64,
    to: mpsc::UnboundedSender<Result<WatchMessage, EtcdError>>,
    /// Closed while its create was in flight: canceled as soon as etcd names it.
    closed: bool,
}

impl Entry {
    /// Delivers `message`; false once nobody reads this watch.
    fn deliver(&self, message: Result<WatchMessage, EtcdError>) -> bool {
        self.to.send(message).is_ok()
    }
}

/// The open stream and the watches on it.
struct Stream {
    watch: etcd_client::WatchStream,
    /// The create sent and not answered yet. etcd's grpc-proxy answers creates out of order
    /// (one that joins a watch it already has at once, one that needs a new watch once etcd
    /// answers it), and an answer names no create, so one is in flight at a time, as etcd's
    /// own client does.
    creating: Option<Entry>,
    /// Creates not sent yet, oldest first.
    waiting: VecDeque<Entry>,
    /// Created watches, by watch id.
    live: HashMap<i64, Entry>,
    /// When it was opened, with the token it carries.
    opened: Instant,
    /// When the create in flight was sent.
    create_sent: Instant,
}

impl Stream {
    /// Whether the watch opened with `token` is on this stream.
    fn carries(&self, token: u64) -> bool {
        self.live.values().any(|e| e.token == token)
            || self.creating.as_ref().is_some_and(|e| e.token == token)
    }
}

/// How long etcd may take to answer a create before the stream is given up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream older than this whose create is refused may carry an expired token.
const STALE_TOKEN: Duration = Duration::from_secs(5);

fn options(start: i64) -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_prev_key()
        .with_progress_notify()
}

async fn run(mut etcd: Etcd, mut inbox: mpsc::UnboundedReceiver<Request>) {
    let mut stream: Option<Stream> = None;
    loop {
        // A create etcd never answers would hold back every later one.
        let create_due = stream
            .as_ref()
            .and_then(|s| s.creating.as_ref().map(|_| s.create_sent + CREATE_TIMEOUT));
        let answer = async {
            match stream.as_mut() {
                Some(s) => Some(s.watch.message().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = crate::shutdown::until(create_due) => {
                let e = etcd.at(EtcdError::new(format!(
                    "a watch create was not answered within {}",
                    humantime::format_duration(CREATE_TIMEOUT)
                )));
                fail(stream.take().expect("a create is in flight on an open stream"), &e);
            }
            request = inbox.recv() => match request {
                None => return,
                Some(Request::Open { token, prefix, start, to }) => {
                    let entry = Entry { token, prefix, start, to, closed: false };
                    stream = open(&mut etcd, stream.take(), entry).await;
                }
                Some(Request::Close { token }) => {
                    if let Some(s) = stream.as_mut() {
                        close(s, token).await;
                    }
                }
                Some(Request::Stale { token }) => {
                    // A watch on this stream heard nothing, not even a progress notification:
                    // a fresh stream for all (the silent one reopens on it too).
                    if stream.as_ref().is_some_and(|s| s.carries(token)) {
                        let e = etcd.at(EtcdError::new("a watch on the stream went silent"));
                        fail(stream.take().expect("checked"), &e);
                    }
                }
            },
            Some(answer) = answer => {
                let s = stream.as_mut().expect("an answer comes from an open stream");
                let broken = match answer {
                    Ok(Some(resp)) => route(&etcd, s, resp).await,
                    Ok(None) => Some(EtcdError::new("the watch stream was closed by the server")),
                    Err(e) => Some(etcd.at(e)),
                };
                if let Some(e) = broken {
                    fail(stream.take().expect("checked above"), &e);
                }
            }
        }
    }
}

/// Adds a watch: on `stream` when there is one, else on a new stream it opens with it.
async fn open(etcd: &mut Etcd, stream: Option<Stream>, entry: Entry) -> Option<Stream> {
    if let Some(mut s) = stream {
        s.waiting.push_back(entry);
        return match next_create(etcd, &mut s).await {
            Ok(()) => Some(s),
            Err(e) => {
                // The stream is gone: its watches (this one too) open again on a new one.
                fail(s, &e);
                None
            }
        };
    }
    // A stream carries the token it was opened with, and etcd refuses to create a watch with
    // an expired one: every new stream gets a fresh token.
    if let Err(e) = etcd.authenticate().await {
        entry.deliver(Err(e));
        return None;
    }
    let opened = etcd
        .client()
        .watch_client()
        .max_decoding_message_size(MAX_DECODE_BYTES)
        .watch(entry.prefix.clone(), Some(options(entry.start)))
        .await;
    etcd.metrics().count(Op::Watch, opened.is_ok());
    match opened {
        Ok(watch) => {
            debug!("watch stream opened");
            Some(Stream {
                watch,
                creating: Some(entry),
                waiting: VecDeque::new(),
                live: HashMap::new(),
                opened: Instant::now(),
                create_sent: Instant::now(),
            })
        }
        Err(e) => {
            entry.deliver(Err(etcd.at(e)));
            None
        }
    }
}

/// Sends the oldest waiting create, unless one is in flight.
async fn next_create(etcd: &Etcd, s: &mut Stream) -> Result<(), EtcdError> {
    if s.creating.is_some() {
        return Ok(());
    }
    let Some(entry) = s.waiting.pop_front() else {
        return Ok(());
    };
    let sent = s
        .watch
        .watch(entry.prefix.clone(), Some(options(entry.start)))
        .await;
    etcd.metrics().count(Op::Watch, sent.is_ok());
    // Kept even when the send failed, so that the failure reaches it with the others.
    s.creating = Some(entry);
    s.create_sent = Instant::now();
    sent.map_err(|e| etcd.at(e))
}

/// Stops routing to `token`'s watch and cancels it on the stream.
async fn close(s: &mut Stream, token: u64) {
    if let Some(id) = s
        .live
        .iter()
        .find_map(|(id, e)| (e.token == token).then_some(*id))
    {
        s.live.remove(&id);
        // A failed cancel means a broken stream, which the next answer reports.
        let _ = s.watch.cancel(id).await;
    } else if let Some(entry) = s.creating.as_mut().filter(|e| e.token == token) {
        entry.closed = true;
    } else {
        s.waiting.retain(|e| e.token != token);
    }
}

/// Routes one answer to its watch. Returns an error when the stream must be given up.
async fn route(etcd: &Etcd, s: &mut Stream, resp: WatchResponse) -> Option<EtcdError> {
    let id = resp.watch_id();
    if resp.created() {
        let Some(entry) = s.creating.take() else {
            return Some(EtcdError::new(
                "etcd answered a watch create that was never sent",
            ));
        };
        if let Some(e) = created(etcd, s, entry, &resp).await {
            return Some(e);
        }
        return next_create(etcd, s).await.err();
    }
    if resp.canceled() {
        if let Some(entry) = s.live.remove(&id) {
            entry.deliver(Ok(message(&resp)));
        }
        // Canceled by the server (a compaction): cancel it on our side too, as etcd's own
        // client does, or a grpc-proxy keeps streaming its events to an id nobody reads.
        if id >= 0 {
            let _ = s.watch.cancel(id).await;
        }
        return None;
    }
    if let Some(entry) = s.live.get(&id) {
        if !entry.deliver(Ok(message(&resp))) {
            s.live.remove(&id);
            let _ = s.watch.cancel(id).await;
        }
    }
    None
}

/// Takes etcd's answer to `entry`'s create. Returns an error when the stream must be given up.
async fn created(
    etcd: &Etcd,
    s: &mut Stream,
    entry: Entry,
    resp: &WatchResponse,
) -> Option<EtcdError> {
    let message = message(resp);
    if resp.canceled() {
        // Refused at creation: compacted (the watch must list again) or refused.
        entry.deliver(Ok(message));
        if resp.watch_id() >= 0 {
            let _ = s.watch.cancel(resp.watch_id()).await;
        }
        // etcd checks a create against the token the stream was opened with and says
        // "permission denied" once it expired (a grpc-proxy says "invalid auth token"): only
        // a new stream carries a fresh one. A stream that young refusing means the user really
        // may not read the prefix.
        let reason = resp.cancel_reason();
        if (reason.contains("permission denied") || reason.contains("auth token"))
            && s.opened.elapsed() > STALE_TOKEN
        {
            return Some(etcd.at(EtcdError::new(reason)));
        }
        return None;
    }
    if !entry.closed && entry.deliver(Ok(message)) {
        s.live.insert(resp.watch_id(), entry);
    } else {
        let _ = s.watch.cancel(resp.watch_id()).await;
    }
    None
}

/// Fails every watch of a broken stream with `e`; each discovery task opens its own again.
fn fail(s: Stream, e: &EtcdError) {
    let all = s
        .creating
        .into_iter()
        .chain(s.waiting)
        .chain(s.live.into_values());
    let mut watches = 0;
    for entry in all {
        entry.deliver(Err(e.clone()));
        watches += 1;
    }
    debug!(error = %e, watches, "watch stream broken");
}

fn header(h: Option<&ResponseHeader>) -> Header {
    h.map_or_else(Header::default, |h| Header {
        cluster_id: h.cluster_id(),
        revision: h.revision(),
    })
}

fn kv(kv: &KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

/// One watch answer as discovery reads it.
fn message(resp: &WatchResponse) -> WatchMessage {
    let head = header(resp.header());
    if resp.canceled() {
        if resp.compact_revision() > 0 {
            WatchMessage::Compacted {
                compact_revision: resp.compact_revision(),
            }
        } else {
            WatchMessage::Canceled {
                reason: resp.cancel_reason().to_string(),
            }
        }
    } else if resp.created() {
        WatchMessage::Created(head)
    } else if resp.events().is_empty() {
        WatchMessage::Progress(head)
    } else {
        let events = resp
            .events()
            .iter()
            .filter_map(|e| {
                e.kv().map(|k| Event {
                    deleted: e.event_type() == EventType::Delete,
                    kv: kv(k),
                })
            })
            .collect();
        WatchMessage::Events(head, events)
    }
}
