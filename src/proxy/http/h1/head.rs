//! Message heads on cairn's own HTTP/1.1 path: which requests it takes, the head an instance
//! gets, and the head the client gets back.

use std::io::Write;
use std::mem::MaybeUninit;
use std::ops::Range;

use http::StatusCode;
use httparse::{Header, Status};

use crate::proxy::http::headers::{
    end_forwarded_for, fate, join_forwarded_for, Fate, HeaderValues, Listed,
};

/// The most headers a request or response may carry, as hyper allows.
pub(crate) const MAX_HEADERS: usize = 100;

/// Request bodies up to this size are read whole before the request is sent. Larger ones, and
/// chunked ones, go the way of hyper, which streams both ways at once.
pub(super) const MAX_BODY: usize = 64 * 1024;

/// The largest response head accepted from an instance.
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Room for a request's parsed headers.
pub(super) type RequestHeaders<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

/// An empty [`RequestHeaders`].
pub(super) fn request_headers<'b>() -> RequestHeaders<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// What the bytes a client sent so far hold.
pub(super) enum Read<'b> {
    /// A request this path serves, with its whole body.
    Request(RequestHead<'b>),
    /// Not yet a whole head.
    More,
    /// A whole head; not yet all of its body.
    Body,
    /// Something hyper serves: HTTP/2, HTTP/1.0, an upgrade, a chunked or large body, an
    /// `Expect`, a head too large, or bytes that are no request at all (hyper answers them).
    Elsewhere,
}

/// A client's request head.
pub(super) struct RequestHead<'b> {
    pub(super) method: &'b str,
    pub(super) path: &'b str,
    pub(super) headers: &'b [Header<'b>],
    /// Where the Host value sits in the client's bytes.
    pub(super) host: Range<usize>,
    /// The head's length in bytes; the body follows.
    pub(super) len: usize,
    /// The body's length.
    pub(super) body: usize,
    /// The client asked to close the connection after this request.
    pub(super) close: bool,
}

impl HeaderValues for [Header<'_>] {
    fn values<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Reads a request from the start of `buf`; heads over `max_head` bytes go to hyper, which
/// answers them with 431.
pub(super) fn parse_request<'b>(
    buf: &'b [u8],
    headers: &'b mut RequestHeaders<'b>,
    max_head: usize,
) -> Read<'b> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(Status::Complete(len)) if len <= max_head => len,
        Ok(Status::Partial) if buf.len() < max_head => return Read::More,
        _ => return Read::Elsewhere,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Read::Elsewhere;
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return Read::Elsewhere;
    }
    let mut host = None;
    let mut body = 0;
    let mut lengths = 0;
    let mut close = false;
    for h in req.headers.iter() {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("transfer-encoding") || is("expect") || is("upgrade") {
            return Read::Elsewhere;
        } else if is("content-length") {
            lengths += 1;
            match parse_length(h.value) {
                Some(n) if lengths == 1 && n <= MAX_BODY as u64 => body = n as usize,
                _ => return Read::Elsewhere,
            }
        } else if is("host") {
            // Kept as a place in `buf`; an empty or odd Host is hyper's to judge.
            let start = (h.value.as_ptr() as usize).checked_sub(buf.as_ptr() as usize);
            let place = start
                .map(|start| start..start + h.value.len())
                .filter(|place| !place.is_empty() && place.end <= buf.len());
            match place {
                Some(place) if host.is_none() && std::str::from_utf8(h.value).is_ok() => {
                    host = Some(place);
                }
                _ => return Read::Elsewhere,
            }
        } else if is("connection") {
            close |= Listed::tokens(h.value).any(|t| t.eq_ignore_ascii_case("close"));
        }
    }
    let Some(host) = host else {
        return Read::Elsewhere;
    };
    if buf.len() < len + body {
        return Read::Body;
    }
    Read::Request(RequestHead {
        method,
        path,
        headers: req.headers,
        host,
        len,
        body,
        close,
    })
}

/// A Content-Length value: digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Writes the head an instance gets for `req` into `out`, all but the Host line and the blank
/// line that ends it, which each attempt adds.
pub(super) fn write_request(req: &RequestHead<'_>, buf: &[u8], peer_ip: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let listed = Listed::new(req.headers.values("connection"));
    for h in req.headers {
        if fate(h.name, &listed) == Fate::Keep {
            line(out, h.name.as_bytes(), h.value);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    let start = out.len();
    for h in req.headers {
        if fate(h.name, &listed) == Fate::ForwardedFor {
            join_forwarded_for(out, start, h.value);
        }
    }
    end_forwarded_for(out, start, peer_ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    line(out, b"x-forwarded-host", &buf[req.host.clone()]);
}

pub(super) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Ends a request head with its Host line.
pub(super) fn end_request(out: &mut Vec<u8>, host: &[u8]) {
    line(out, b"host", host);
    out.extend_from_slice(b"\r\n");
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Up to the instance's close.
    UntilClose,
}

/// A response head from an instance, rewritten for the client.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) status: StatusCode,
    /// The head's length in the instance's bytes.
    pub(super) len: usize,
    pub(super) framing: Framing,
    /// The instance keeps the connection open after the body.
    pub(super) keep_alive: bool,
}

/// What the bytes an instance sent so far hold.
pub(super) enum Answer {
    /// A final response head.
    Head(ResponseHead),
    /// An interim (1xx) response of this many bytes, which the client does not get.
    Interim(usize),
    /// Not yet a whole head.
    More,
}

/// Where the client's head goes as a response head is read: its status, then the headers it
/// keeps (no hop-by-hop ones), then its end.
pub(super) trait Emit {
    fn status(&mut self, status: StatusCode);
    /// A header for the client. `coding` marks a Transfer-Encoding, which goes only with a
    /// body passed on as it came.
    fn header(&mut self, name: &str, value: &[u8], coding: bool);
    /// The head is over; `until_close` says the body runs to the instance's close.
    fn end(&mut self, until_close: bool);
}

/// The client's head as HTTP/1.1 bytes in `out`, with `Connection: close` when `close` says the
/// client connection ends after this response (it does too when the body runs to the close).
pub(super) struct Written<'a> {
    pub(super) out: &'a mut Vec<u8>,
    pub(super) close: bool,
}

impl Emit for Written<'_> {
    fn status(&mut self, status: StatusCode) {
        status_line(self.out, status);
    }

    fn header(&mut self, name: &str, value: &[u8], _coding: bool) {
        line(self.out, name.as_bytes(), value);
    }

    fn end(&mut self, until_close: bool) {
        if self.close || until_close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
    }
}

/// Reads a response head from the start of `buf`, and gives the client's head to `emit`.
///
/// # Errors
/// What is wrong with the head, for the 502.
pub(super) fn parse_response(
    buf: &[u8],
    head_request: bool,
    emit: &mut impl Emit,
) -> Result<Answer, String> {
    // Room for the usual response; the rare one with more headers is parsed again.
    let mut few = [httparse::EMPTY_HEADER; 24];
    let mut many;
    let mut resp = httparse::Response::new(&mut few);
    let mut parsed = resp.parse(buf);
    if parsed == Err(httparse::Error::TooManyHeaders) {
        many = [httparse::EMPTY_HEADER; MAX_HEADERS];
        resp = httparse::Response::new(&mut many);
        parsed = resp.parse(buf);
    }
    let len = match parsed {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(Answer::More),
        Ok(Status::Partial) => return Err("response head over 64 KiB".into()),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("switched protocols unasked".into());
    }
    if status.is_informational() {
        return Ok(Answer::Interim(len));
    }
    let listed = Listed::new(resp.headers.values("connection"));
    let mut framing = if head_request || matches!(code, 204 | 304) {
        Some(Framing::Empty)
    } else {
        None
    };
    let mut length = None;
    let mut chunked = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(
                Listed::tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case("chunked")),
            );
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or("invalid content-length")?;
            if length.is_some_and(|m| m != n) {
                return Err("conflicting content-length headers".into());
            }
            length = Some(n);
        }
    }
    let framing = *framing.get_or_insert(match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) | (None, None) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
    });
    emit.status(status);
    for h in resp.headers.iter() {
        let te = h.name.eq_ignore_ascii_case("transfer-encoding");
        let keep = if te {
            // A body passed on chunked as it came takes its coding along.
            framing == Framing::Chunked || (framing == Framing::Empty && chunked.is_some())
        } else if h.name.eq_ignore_ascii_case("content-length") {
            chunked.is_none()
        } else {
            !listed.is_hop_by_hop(h.name)
        };
        if keep {
            emit.header(h.name, h.value, te);
        }
    }
    emit.end(framing == Framing::UntilClose);
    Ok(Answer::Head(ResponseHead {
        status,
        len,
        framing,
        keep_alive: resp.version == Some(1) && !listed.has("close"),
    }))
}

/// Starts `out` with the status line of `status`.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes cairn's own plain-text answer.
pub(super) fn write_answer(out: &mut Vec<u8>, status: StatusCode, text: &str, close: bool) {
    status_line(out, status);
    let _ = write!(
        out,
        "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{text}",
        text.len(),
        if close { "connection: close\r\n" } else { "" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "10.0.0.9";

    fn takes(bytes: &[u8]) -> Option<(String, usize, usize, bool)> {
        let mut headers = request_headers();
        match parse_request(bytes, &mut headers, 8192) {
            Read::Request(r) => Some((
                String::from_utf8_lossy(&bytes[r.host.clone()]).into_owned(),
                r.len,
                r.body,
                r.close,
            )),
            Read::More => Some(("more".into(), 0, 0, false)),
            Read::Body => Some(("body".into(), 0, 0, false)),
            Read::Elsewhere => None,
        }
    }

    #[test]
    fn plain_requests_are_taken_and_the_rest_left_to_hyper() {
        let get = b"GET /a?b HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\nNEXT";
        assert_eq!(takes(get), Some(("web".into(), get.len() - 4, 0, true)));
        let post = b"POST / HTTP/1.1\r\nhost: web:80\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(
            takes(post),
            Some(("web:80".into(), post.len() - 3, 3, false))
        );
        // The head or the body is not all there yet.
        assert_eq!(takes(&post[..20]).unwrap().0, "more");
        assert_eq!(takes(&post[..post.len() - 1]).unwrap().0, "body");
        for elsewhere in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nHost: web\r\n\r\n",
            b"GET http://web/ HTTP/1.1\r\nHost: web\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
            b"CONNECT web:443 HTTP/1.1\r\nHost: web\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 65537\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost web\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(
                takes(elsewhere),
                None,
                "{}",
                String::from_utf8_lossy(elsewhere)
            );
        }
        // A head over the limit goes to hyper, which answers 431.
        let big = format!("GET / HTTP/1.1\r\nHost: web\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(takes(big.as_bytes()), None);
    }

    #[test]
    fn the_instance_gets_the_head_without_hop_by_hop_headers() {
        let bytes = b"GET /p HTTP/1.1\r\nHost: Orders\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nX-Kept: yes\r\n\r\n";
        let mut headers = request_headers();
        let Read::Request(req) = parse_request(bytes, &mut headers, 8192) else {
            panic!("not taken");
        };
        let mut out = Vec::new();
        write_request(&req, bytes, PEER, &mut out);
        end_request(&mut out, b"orders");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p HTTP/1.1\r\nX-Kept: yes\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: Orders\r\nhost: orders\r\n\r\n"
        );
    }

    fn answer(bytes: &[u8], head: bool, close: bool) -> Result<(Answer, String), String> {
        let mut out = Vec::new();
        let a = parse_response(
            bytes,
            head,
            &mut Written {
                out: &mut out,
                close,
            },
        )?;
        Ok((a, String::from_utf8(out).unwrap()))
    }

    fn head_of(bytes: &[u8], head: bool, close: bool) -> (ResponseHead, String) {
        match answer(bytes, head, close) {
            Ok((Answer::Head(h), out)) => (h, out),
            other => panic!("{other:?}"),
        }
    }

    impl std::fmt::Debug for Answer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Answer::Head(h) => write!(f, "Head({h:?})"),
                Answer::Interim(n) => write!(f, "Interim({n})"),
                Answer::More => f.write_str("More"),
            }
        }
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        let (h, out) = head_of(b"HTTP/1.1 200 Fine\r\nContent-Length: 3\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nok\n", false, false);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");

        // Chunked wins over a Content-Length, which the client never sees.
        let (h, out) = head_of(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");

        // No length: the body runs to the close, and so does the client's connection.
        let (h, out) = head_of(b"HTTP/1.0 200 OK\r\nX: 1\r\n\r\n", false, false);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: 1\r\nconnection: close\r\n\r\n");
        let (h, _) = head_of(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            false,
        );
        assert_eq!(h.framing, Framing::UntilClose);

        // HEAD, 204 and 304 have no body whatever their headers say.
        let (h, out) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true, true);
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nconnection: close\r\n\r\n"
        );
        for code in [204, 304] {
            let bytes = format!("HTTP/1.1 {code} X\r\nConnection: close\r\n\r\n");
            let (h, _) = head_of(bytes.as_bytes(), false, false);
            assert_eq!(h.framing, Framing::Empty);
            assert!(!h.keep_alive);
        }

        // Interim answers are skipped; a 101 nobody asked for is an error.
        assert!(matches!(
            answer(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200",
                false,
                false
            ),
            Ok((Answer::Interim(40), _))
        ));
        assert!(answer(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false, false).is_err());
        assert!(matches!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Le", false, false),
            Ok((Answer::More, _))
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                answer(bad, false, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
