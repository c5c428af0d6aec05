//! cairn's own client for the requests hyper's server takes: the response body decoded into
//! frames, data with chunks de-chunked and a chunked body's trailers as a trailers frame, so
//! hyper can pass it on in HTTP/2 or HTTP/1.1 alike. Read to its end, its socket goes back to
//! the pool.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tracing::debug;

use super::chunked::Piece;
use super::client::{poll_read, send, SendFail, Upload};
use super::framing::{Framing, Left, MAX_READ, READ_SIZE};
use super::head::MAX_HEADERS;
use super::response::{parse_response, Emit, ResponseHead};
use super::upload::Uploading;
use crate::addr::Addr;
use crate::proxy::http::body::BodyError;
use crate::proxy::http::headers::trailer_allowed;
use crate::proxy::http::pool::Pool;
use crate::rt::deadline::Deadline;

/// The most trailer bytes a chunked response may end with.
const MAX_TRAILERS: usize = 64 * 1024;

/// Sends the request whose whole head is in `out` (its target in origin form, its Host set),
/// and its body `upload`, to `addr`; the response's body is decoded into frames.
///
/// # Errors
/// [`SendFail::Unsent`] when no connection took the request, [`SendFail::Failed`] when it was
/// written and no readable response head came.
pub(crate) async fn send_request(
    pool: &Arc<Pool>,
    addr: &Addr,
    out: &mut Vec<u8>,
    upload: Option<Upload>,
    head_request: bool,
    idle: Duration,
) -> Result<Response<BareBody>, SendFail> {
    let mut mapped = Mapped::default();
    let (up, mut read, head, uploading) = send(pool, addr, out, upload, |buf, _| {
        mapped.headers.clear();
        parse_response(buf, head_request, &mut mapped)
    })
    .await?;
    read.advance(head.len);
    let body = BareBody::new(
        up,
        read,
        &head,
        uploading,
        Arc::clone(pool),
        addr.clone(),
        idle,
    );
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = mapped.headers;
    Ok(resp)
}

/// A response head as a header map, for hyper's server. The body is decoded, so its
/// Transfer-Encoding is left out.
#[derive(Default)]
struct Mapped {
    headers: HeaderMap,
}

impl Emit for Mapped {
    fn status(&mut self, _status: StatusCode) {}

    fn header(&mut self, name: &str, value: &[u8], coding: bool) {
        if coding {
            return;
        }
        // httparse has checked both: the conversions do not fail on what it accepts.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            self.headers.append(name, value);
        }
    }

    fn end(&mut self, _until_close: bool) {}
}

/// A response body read from an instance's bare socket, decoded into data frames (and a
/// trailers frame when a chunked body ends with some). Read to its end, the socket goes back to
/// the pool if the instance keeps it open; dropped before, the socket is closed.
pub(crate) struct BareBody {
    io: Option<TcpStream>,
    /// Bytes read and not yet given out.
    buf: BytesMut,
    left: Left,
    keep_alive: bool,
    /// The size of the next read.
    want: usize,
    pool: Arc<Pool>,
    addr: Addr,
    /// How long the instance may send nothing while the body is read.
    idle: Duration,
    /// When that runs out: armed at the first read that has to wait, moved by each read.
    stall: Option<Deadline>,
    /// The request body, still on its way when the instance answered before its end: sent as
    /// the response is read, and the socket kept only once it has all gone.
    upload: Option<Uploading>,
}

impl BareBody {
    fn new(
        io: TcpStream,
        buf: BytesMut,
        head: &ResponseHead,
        upload: Option<Uploading>,
        pool: Arc<Pool>,
        addr: Addr,
        idle: Duration,
    ) -> Self {
        let left = Left::new(head.framing);
        let mut body = BareBody {
            io: Some(io),
            buf,
            left,
            keep_alive: head.keep_alive && head.framing != Framing::UntilClose,
            want: READ_SIZE,
            pool,
            addr,
            idle,
            stall: None,
            upload,
        };
        if body.left.is_done() {
            body.release();
        }
        body
    }

    /// The body is over: the socket serves another request if nothing followed the body and
    /// the request went whole.
    fn release(&mut self) {
        self.left = Left::Done;
        if let Some(io) = self.io.take() {
            if self.keep_alive && self.buf.is_empty() && self.upload.is_none() {
                self.pool.keep_socket(self.addr.clone(), io);
            }
        }
    }

    /// The next frame from the bytes read so far: `None` when more must be read first, or when
    /// the body is over.
    fn next_frame(&mut self) -> Result<Option<Frame<Bytes>>, BodyError> {
        while !self.left.is_done() {
            match self.left.decode(&self.buf)? {
                Piece::Data { skip, len } => {
                    self.buf.advance(skip);
                    let data = self.buf.split_to(len).freeze();
                    if self.left.is_done() {
                        self.release();
                    }
                    if len > 0 {
                        return Ok(Some(Frame::data(data)));
                    }
                }
                Piece::End(n) => {
                    let section = self.buf.split_to(n);
                    self.release();
                    return trailers(&section).map(|t| t.map(Frame::trailers));
                }
                Piece::More if self.buf.len() > MAX_TRAILERS => {
                    return Err("response trailers over 64 KiB".into())
                }
                Piece::More => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Reads more of the body; `Ok(0)` at the instance's close. The rest of the request body
    /// goes out meanwhile.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = &mut self.io else {
            return Poll::Ready(Ok(0));
        };
        let mut progress = false;
        if let Some(upload) = &mut self.upload {
            match upload.poll_send(cx, io, &mut progress) {
                Poll::Ready(Ok(())) => self.upload = None,
                Poll::Ready(Err(e)) => {
                    debug!(addr = %self.addr, error = %e, "request body cut after the answer began");
                    // The instance has part of a request: the socket goes with this exchange.
                    self.upload = None;
                    self.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        self.buf.reserve(self.want);
        let room = self.buf.capacity() - self.buf.len();
        match poll_read(cx, io, &mut self.buf) {
            Poll::Ready(Ok(got)) => {
                // A read that fills the buffer says a large body is streaming: larger reads
                // then take fewer system calls per byte.
                if got == room && self.want < MAX_READ {
                    self.want *= 2;
                }
                if let Some(stall) = &mut self.stall {
                    stall.reset(self.idle);
                }
                Poll::Ready(Ok(got))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let idle = self.idle;
                let stall = self.stall.get_or_insert_with(|| Deadline::after(idle));
                if progress {
                    stall.reset(idle);
                }
                ready!(stall.poll_passed(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the instance sent nothing of the response body within the idle timeout",
                )))
            }
        }
    }
}

/// The trailers of a chunked body's final section (`name: value` lines, then an empty line);
/// `None` when there are none.
fn trailers(section: &[u8]) -> Result<Option<HeaderMap>, BodyError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) => return Err("incomplete response trailers".into()),
        Err(e) => return Err(format!("invalid response trailers: {e}").into()),
    };
    if fields.is_empty() {
        return Ok(None);
    }
    let mut map = Mapped::default();
    for f in fields.iter().filter(|f| trailer_allowed(f.name)) {
        map.header(f.name, f.value, false);
    }
    Ok((!map.headers.is_empty()).then_some(map.headers))
}

impl Body for BareBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match this.next_frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.left.is_done() => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    debug!(addr = %this.addr, error = %e, "broken response body");
                    this.io = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.left.closed() => {
                    this.io = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.io = None;
                    return Poll::Ready(Some(Err(
                        "the instance closed before the end of the response body".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    this.io = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .len()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests;
