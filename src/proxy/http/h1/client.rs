//! cairn's own HTTP/1.1 client to instances, on bare pooled sockets: it sends the requests of the
//! own path as they came rewritten, and the bodiless requests hyper's server takes (HTTP/2 ones
//! above all) with a head written from their header map. A response to those is decoded into
//! body frames ([`BareBody`]), chunks and trailers included, so hyper can pass it on in HTTP/2
//! or HTTP/1.1 alike. hyper's client, with its dispatch channel and connection state machine,
//! is left for requests with a body and upgrades.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::chunked::Piece;
use super::deadline::Deadline;
use super::framing::{Framing, Left};
use super::head::{line, MAX_HEADERS};
use super::response::{parse_response, Answer, Emit, ResponseHead};
use crate::addr::Addr;
use crate::proxy::http::body::{BodyError, RequestBody};
use crate::proxy::http::pool::Pool;

/// The first read of a response, and of each body read until reads grow.
pub(super) const READ_SIZE: usize = 8 * 1024;

/// The largest read of a response body, which reads grow to while a large body streams.
pub(super) const MAX_READ: usize = 256 * 1024;

/// The most trailer bytes a chunked response may end with.
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendFail {
    /// Nothing reached the instance: another one may take the request.
    Unsent(String),
    /// The request may have reached the instance; it is never sent again.
    Failed(String),
}

/// Writes the request in `out` to `addr` and reads the response head, which `parse` reads (it
/// may reuse `out`); the bytes read after it come back too. A kept-alive socket that fails the
/// first write is replaced by another: nothing of the request reached it.
pub(super) async fn send(
    pool: &Arc<Pool>,
    addr: &Addr,
    out: &mut Vec<u8>,
    mut parse: impl FnMut(&[u8], &mut Vec<u8>) -> Result<Answer, String>,
) -> Result<(TcpStream, BytesMut, ResponseHead), SendFail> {
    let mut up = loop {
        let (mut up, reused) = pool.socket(addr).await.map_err(SendFail::Unsent)?;
        let written = match up.write(out).await {
            Ok(n) if n > 0 => n,
            Ok(_) => return Err(SendFail::Unsent("the connection took no bytes".into())),
            Err(e) if reused => {
                debug!(%addr, error = %e, "kept-alive connection closed before use, taking another");
                continue;
            }
            Err(e) => return Err(SendFail::Unsent(e.to_string())),
        };
        (up.write_all(&out[written..]).await).map_err(|e| SendFail::Failed(e.to_string()))?;
        break up;
    };
    // Allocated per exchange: an idle client connection holds no upstream buffer.
    let mut read = BytesMut::with_capacity(READ_SIZE);
    loop {
        if !read.is_empty() {
            match parse(&read, out) {
                Ok(Answer::Head(head)) => return Ok((up, read, head)),
                Ok(Answer::Interim(n)) => {
                    read.advance(n);
                    continue;
                }
                Ok(Answer::More) => {}
                Err(e) => return Err(SendFail::Failed(e)),
            }
        }
        read.reserve(READ_SIZE);
        match up.read_buf(&mut read).await {
            Ok(0) => {
                return Err(SendFail::Failed(
                    "connection closed before a response".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(SendFail::Failed(e.to_string())),
        }
    }
}

/// Sends `req`, which has no body, its target in origin form and its Host set, to `addr`.
///
/// # Errors
/// [`SendFail::Unsent`] when no connection took the request, [`SendFail::Failed`] when it was
/// written and no readable response head came.
pub(crate) async fn send_bodiless(
    pool: &Arc<Pool>,
    addr: &Addr,
    req: &Request<RequestBody>,
    idle: Duration,
) -> Result<Response<BareBody>, SendFail> {
    let mut out = Vec::with_capacity(512);
    write_head(req, &mut out);
    let head_request = req.method() == Method::HEAD;
    let mut mapped = Mapped::default();
    let (up, mut read, head) = send(pool, addr, &mut out, |buf, _| {
        mapped.headers.clear();
        parse_response(buf, head_request, &mut mapped)
    })
    .await?;
    read.advance(head.len);
    let body = BareBody::new(up, read, &head, Arc::clone(pool), addr.clone(), idle);
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = mapped.headers;
    Ok(resp)
}

/// An HTTP/1.1 request head for `req`.
fn write_head(req: &Request<RequestBody>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
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
}

impl BareBody {
    fn new(
        io: TcpStream,
        buf: BytesMut,
        head: &ResponseHead,
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
        };
        if body.left.is_done() {
            body.release();
        }
        body
    }

    /// The body is over: the socket serves another request if nothing followed the body.
    fn release(&mut self) {
        self.left = Left::Done;
        if let Some(io) = self.io.take() {
            if self.keep_alive && self.buf.is_empty() {
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

    /// Reads more of the body; `Ok(0)` at the instance's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = &self.io else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(self.want);
        let room = self.buf.capacity() - self.buf.len();
        loop {
            if io.poll_read_ready(cx)?.is_pending() {
                let idle = self.idle;
                let stall = self.stall.get_or_insert_with(|| Deadline::after(idle));
                ready!(stall.poll_passed(cx));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the instance sent nothing of the response body within the idle timeout",
                )));
            }
            match io.try_read_buf(&mut self.buf) {
                Ok(got) => {
                    if let Some(stall) = &mut self.stall {
                        stall.reset(self.idle);
                    }
                    // A read that fills the buffer says a large body is streaming: larger reads
                    // then take fewer system calls per byte.
                    if got == room && self.want < MAX_READ {
                        self.want *= 2;
                    }
                    return Poll::Ready(Ok(got));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
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
    for f in fields.iter() {
        map.header(f.name, f.value, false);
    }
    Ok(Some(map.headers))
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
mod tests {
    use super::*;

    #[test]
    fn a_head_is_written_from_the_header_map() {
        let req = Request::builder()
            .method(Method::DELETE)
            .uri("/a/b?c=1")
            .header("host", "orders")
            .header("x-forwarded-for", "10.0.0.9")
            .header("accept", "a")
            .header("accept", "b")
            .body(RequestBody::Empty)
            .unwrap();
        let mut out = Vec::new();
        write_head(&req, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DELETE /a/b?c=1 HTTP/1.1\r\nhost: orders\r\nx-forwarded-for: 10.0.0.9\r\n\
             accept: a\r\naccept: b\r\n\r\n"
        );
    }

    #[test]
    fn a_trailer_section_becomes_a_header_map() {
        let t = trailers(b"X-Sum: 42\r\nx-more: a b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(t["x-sum"], "42");
        assert_eq!(t["x-more"], "a b");
        assert!(trailers(b"\r\n").unwrap().is_none());
        assert!(trailers(b"bad line\r\n\r\n").is_err());
    }
}
