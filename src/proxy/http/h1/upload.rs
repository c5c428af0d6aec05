//! A request body streamed to an instance by cairn's own client: as the socket takes it, while
//! the response is read, so an instance that answers as it reads (an echo, a stream) gets the
//! rest of the body after its answer has begun. A body of unknown length is chunked by cairn,
//! its trailers included; one of declared length goes as it comes.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::write::HeadSink;
use crate::proxy::http::body::RequestBody;
use crate::proxy::http::headers::trailer_allowed;

/// A request body to stream after its head.
pub(crate) struct Upload {
    /// The client's body, as hyper's server reads it.
    pub(crate) body: RequestBody,
    /// The length is unknown and the head says `Transfer-Encoding: chunked`: cairn chunks the
    /// body. Otherwise the head declares the Content-Length hyper's server has held the
    /// client's body to.
    pub(crate) chunked: bool,
}

/// An upload under way.
pub(crate) struct Uploading {
    body: RequestBody,
    chunked: bool,
    /// The encoded bytes of the frame being written.
    pending: Vec<u8>,
    /// How many of them have been written.
    at: usize,
    /// The body's end (and a chunked body's last chunk) is in `pending`.
    ended: bool,
}

impl Uploading {
    pub(crate) fn new(upload: Upload) -> Uploading {
        Uploading {
            body: upload.body,
            chunked: upload.chunked,
            pending: Vec::new(),
            at: 0,
            ended: false,
        }
    }

    /// Writes to `io` what the client's body gives and the socket takes. Ready with `Ok` once
    /// the whole body is sent; with an error when the socket or the client's body failed.
    /// Each write that makes progress sets `progress`.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut TcpStream,
        progress: &mut bool,
    ) -> Poll<Result<(), String>> {
        loop {
            if self.at < self.pending.len() {
                match ready!(Pin::new(&mut *io).poll_write(cx, &self.pending[self.at..])) {
                    Ok(0) => return Poll::Ready(Err("the connection took no bytes".into())),
                    Ok(n) => {
                        self.at += n;
                        *progress = true;
                    }
                    Err(e) => return Poll::Ready(Err(e.to_string())),
                }
                continue;
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            self.pending.clear();
            self.at = 0;
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => self.end(None),
                Some(Ok(frame)) => self.encode(frame),
                Some(Err(e)) => {
                    return Poll::Ready(Err(format!("the client's body broke off: {e}")))
                }
            }
        }
    }

    /// Puts one frame of the client's body in `pending`, as the framing says.
    fn encode(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) if !self.chunked => self.pending.extend_from_slice(&data),
            Ok(data) if !data.is_empty() => {
                self.pending
                    .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                self.pending.extend_from_slice(&data);
                self.pending.extend_from_slice(b"\r\n");
            }
            Ok(_) => {}
            // Trailers end a body; one of declared length has no place for them.
            Err(frame) => self.end(frame.into_trailers().ok()),
        }
    }

    /// The body is over: a chunked one gets its last chunk and trailer section.
    fn end(&mut self, trailers: Option<HeaderMap>) {
        if self.chunked {
            self.pending.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.iter().flatten() {
                if trailer_allowed(name.as_str()) {
                    self.pending.header(name.as_str(), value.as_bytes());
                }
            }
            self.pending.extend_from_slice(b"\r\n");
        }
        self.ended = true;
    }
}
