//! Bodies: what cairn answers with, and the client's request body, which a failed connect hands
//! to the next attempt as long as no attempt has started reading it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

/// Why a body stopped short: hyper's error, or the framing of a response read by cairn's own
/// client.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What cairn answers clients with: an upstream's streamed body, or a short text of its own.
pub(crate) type ProxyBody = BoxBody<Bytes, BodyError>;

/// A client's request body that can be handed to another attempt as long as no attempt has
/// started reading it.
#[derive(Clone)]
pub(crate) struct Reclaimable(Arc<Shared>);

struct Shared {
    /// The client's body (hyper's), streamed in place by whichever attempt polls it.
    body: Mutex<UnsyncBoxBody<Bytes, BodyError>>,
    /// Set on the first poll: from then on, bytes may have reached an upstream.
    started: AtomicBool,
    /// The body's size, known before any attempt, so upstreams get a Content-Length.
    size: SizeHint,
}

impl Reclaimable {
    pub(crate) fn new<B>(body: B) -> Reclaimable
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        Reclaimable(Arc::new(Shared {
            size: body.size_hint(),
            body: Mutex::new(body.map_err(Into::into).boxed_unsync()),
            started: AtomicBool::new(false),
        }))
    }

    /// Whether an attempt has started sending the body.
    pub(crate) fn started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }
}

/// The body of an upstream request.
pub(crate) enum RequestBody {
    /// The client sent no body.
    Empty,
    /// The client's body, shared so a failed connect can hand it to the next attempt.
    Streamed(Reclaimable),
}

impl RequestBody {
    /// The body for one attempt.
    pub(crate) fn of(body: Option<&Reclaimable>) -> RequestBody {
        match body {
            None => RequestBody::Empty,
            Some(b) => RequestBody::Streamed(b.clone()),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Empty => f.write_str("Empty"),
            RequestBody::Streamed(r) => f
                .debug_struct("Streamed")
                .field("started", &r.started())
                .finish_non_exhaustive(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streamed(r) => {
                r.0.started.store(true, Ordering::Release);
                let mut body =
                    r.0.body
                        .lock()
                        .expect("the body lock is never held across a panic");
                Pin::new(&mut *body).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streamed(r) => {
                r.0.body
                    .lock()
                    .expect("the body lock is never held across a panic")
                    .is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streamed(r) => r.0.size,
        }
    }
}

/// A body that holds `G` until it has been sent or dropped: a request in flight on an instance,
/// or a client connection kept busy by a long download.
#[derive(Debug)]
pub(crate) struct Guarded<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    pub(crate) fn new(body: B, guard: G) -> Guarded<B, G> {
        Guarded {
            body,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
