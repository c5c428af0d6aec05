//! A call's body that can be sent again while no instance has processed it.
//!
//! An HTTP/2 instance may refuse a stream it has not processed (`REFUSED_STREAM`, or a GOAWAY
//! whose last stream id is below the call's). By then the connection has read some of the
//! client's body, so sending the call elsewhere needs those bytes again. [`Replay`] keeps what
//! the current attempt has read, up to [`REPLAY_LIMIT`] bytes, and hands each new attempt the
//! kept frames before the rest of the client's body, as linkerd2-proxy's replay body does.
//!
//! Invariants:
//! - one attempt reads at a time: a new attempt makes every older one fail at its next read, so
//!   a connection still holding a refused stream's body can never take bytes meant for the next;
//! - a call whose body outgrew the limit keeps nothing and cannot be sent again;
//! - once the instance's answer has begun ([`Replay::settle`]) nothing more is kept, and what was
//!   kept is let go as soon as the current attempt has sent it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::body::BodyError;

/// How much of a call's body is kept for sending it again (linkerd2-proxy keeps 64 KiB too):
/// unary calls fit, a long stream's memory is not held for the whole call.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;

/// The client's body of one call, shared by its attempts.
pub(crate) struct Replay<B = Incoming>(Arc<Mutex<State<B>>>);

/// One attempt's view of the body: what was kept, then the client's.
pub(crate) struct Attempt<B = Incoming> {
    shared: Arc<Mutex<State<B>>>,
    generation: u64,
    /// The client's body's size, known before any attempt.
    size: SizeHint,
}

impl<B> std::fmt::Debug for Attempt<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A frame kept for the next attempt.
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

struct State<B> {
    /// The client's body, read by whichever attempt is current.
    body: B,
    /// The client's body's size, known before any attempt.
    size: SizeHint,
    /// What was read from `body`, in order, while it may be needed again.
    kept: VecDeque<Kept>,
    /// The data bytes in `kept` while recording.
    kept_bytes: usize,
    /// How many of `kept` the current attempt has sent (while recording; once settled, `kept`
    /// holds only what is left to send).
    sent: usize,
    /// Whether frames read from `body` are still kept.
    recording: bool,
    /// `body` has ended.
    ended: bool,
    /// `body` failed: no attempt can be complete.
    failed: bool,
    /// The current attempt.
    generation: u64,
}

impl<B: Body<Data = Bytes> + Unpin> Replay<B> {
    /// The body shared by a call's attempts, and its first attempt.
    pub(crate) fn new(body: B) -> (Replay<B>, Attempt<B>) {
        let replay = Replay(Arc::new(Mutex::new(State {
            size: body.size_hint(),
            body,
            kept: VecDeque::new(),
            kept_bytes: 0,
            sent: 0,
            recording: true,
            ended: false,
            failed: false,
            generation: 0,
        })));
        let first = Attempt {
            shared: Arc::clone(&replay.0),
            generation: 0,
            size: lock(&replay.0).size,
        };
        (replay, first)
    }

    /// Another attempt, which every older one yields to; `None` when the body can no longer be
    /// sent whole (it outgrew the limit, failed, or an answer began).
    pub(crate) fn again(&self) -> Option<Attempt<B>> {
        let mut s = lock(&self.0);
        if !s.recording || s.failed {
            return None;
        }
        s.generation += 1;
        s.sent = 0;
        Some(Attempt {
            shared: Arc::clone(&self.0),
            generation: s.generation,
            size: s.size,
        })
    }

    /// The instance has begun to answer: the call will not be sent again, so nothing more is
    /// kept and what the current attempt has sent is let go.
    pub(crate) fn settle(&self) {
        let mut s = lock(&self.0);
        s.recording = false;
        let sent = s.sent;
        s.kept.drain(..sent);
        s.sent = 0;
        s.kept_bytes = 0;
    }
}

fn lock<B>(state: &Mutex<State<B>>) -> MutexGuard<'_, State<B>> {
    state
        .lock()
        .expect("the replay lock is never held across a panic")
}

impl<B> Body for Attempt<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut s = lock(&self.shared);
        if s.generation != self.generation {
            return Poll::Ready(Some(Err("the call went to another instance".into())));
        }
        if !s.recording {
            // Settled: what is left of `kept` is sent once more, and let go.
            if let Some(kept) = s.kept.pop_front() {
                return Poll::Ready(Some(Ok(match kept {
                    Kept::Data(b) => Frame::data(b),
                    Kept::Trailers(t) => Frame::trailers(t),
                })));
            }
        } else if let Some(kept) = s.kept.get(s.sent) {
            let frame = match kept {
                Kept::Data(b) => Frame::data(b.clone()),
                Kept::Trailers(t) => Frame::trailers(t.clone()),
            };
            s.sent += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        let s = &mut *s;
        match Pin::new(&mut s.body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if s.recording {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    if s.kept_bytes + len > REPLAY_LIMIT {
                        // Everything kept has been sent by this attempt: let it go.
                        s.recording = false;
                        s.kept = VecDeque::new();
                        s.kept_bytes = 0;
                        s.sent = 0;
                    } else if let Some(b) = frame.data_ref() {
                        s.kept.push_back(Kept::Data(b.clone()));
                        s.kept_bytes += len;
                        s.sent += 1;
                    } else if let Some(t) = frame.trailers_ref() {
                        s.kept.push_back(Kept::Trailers(t.clone()));
                        s.sent += 1;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        let drained = if s.recording {
            s.sent == s.kept.len()
        } else {
            s.kept.is_empty()
        };
        s.generation == self.generation && drained && (s.ended || s.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    /// A client's body: these frames, then its end.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn body(chunks: &[&'static [u8]], trailers: bool) -> (Replay<Frames>, Attempt<Frames>) {
        let mut frames: VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c)))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-sum", "7".parse().unwrap());
            frames.push_back(Frame::trailers(t));
        }
        Replay::new(Frames(frames))
    }

    /// Reads `n` frames of `attempt` (or all of them), as text: data as is, trailers as `[t]`.
    async fn read(attempt: &mut Attempt<Frames>, n: usize) -> String {
        let mut out = String::new();
        for _ in 0..n {
            match attempt.frame().await {
                None => break,
                Some(Ok(f)) if f.is_data() => {
                    out.push_str(std::str::from_utf8(f.data_ref().unwrap()).unwrap());
                }
                Some(Ok(_)) => out.push_str("[t]"),
                Some(Err(e)) => {
                    out.push_str(&format!("<{e}>"));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_new_attempt_sends_what_the_refused_one_read_then_the_rest() {
        let (replay, mut first) = body(&[b"ab", b"cd", b"ef"], true);
        assert_eq!(read(&mut first, 2).await, "abcd");
        let mut second = replay.again().unwrap();
        assert_eq!(read(&mut second, 10).await, "abcdef[t]");
        assert!(second.is_end_stream());
        // The refused attempt's connection may still poll its body: it gets nothing more.
        assert_eq!(
            read(&mut first, 1).await,
            "<the call went to another instance>"
        );
        // A third attempt after the whole body was read gets all of it again.
        let mut third = replay.again().unwrap();
        assert_eq!(read(&mut third, 10).await, "abcdef[t]");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_keeps_nothing_and_cannot_be_sent_again() {
        let big: &'static [u8] = Box::leak(vec![b'x'; REPLAY_LIMIT].into_boxed_slice());
        let (replay, mut first) = body(&[b"a", big, b"b"], false);
        let all = read(&mut first, 10).await;
        assert_eq!(
            all.len(),
            REPLAY_LIMIT + 2,
            "the attempt itself gets every byte"
        );
        assert!(replay.again().is_none());
        let s = lock(&replay.0);
        assert!(s.kept.is_empty() && s.kept_bytes == 0, "memory was kept");
    }

    #[tokio::test]
    async fn once_the_answer_began_nothing_is_kept_but_the_attempt_still_gets_every_byte() {
        let (replay, mut first) = body(&[b"ab", b"cd", b"ef"], false);
        assert_eq!(read(&mut first, 2).await, "abcd");
        let mut second = replay.again().unwrap();
        assert_eq!(read(&mut second, 1).await, "ab");
        replay.settle();
        assert_eq!(
            lock(&replay.0).kept.len(),
            1,
            "what was sent was not let go"
        );
        assert!(replay.again().is_none());
        assert_eq!(read(&mut second, 10).await, "cdef");
        assert!(
            lock(&replay.0).kept.is_empty(),
            "what was sent was not let go"
        );
    }
}
