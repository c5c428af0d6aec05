//! Request heads on cairn's own HTTP/1.1 path: which requests it takes, and the head an
//! instance gets. Response heads are in [`super::response`].

use std::mem::MaybeUninit;
use std::ops::Range;

use httparse::{Header, Status};

use super::write::{write_forwarded, BodyFraming, Forwarding, HeadSink};
use crate::proxy::http::headers::{HeaderValues, Listed};

/// The most headers a request or response may carry, as hyper allows.
pub(crate) const MAX_HEADERS: usize = 100;

/// Request bodies up to this size are read whole before the request is sent. Larger ones, and
/// chunked ones, go the way of hyper, which streams both ways at once.
pub(super) const MAX_BODY: usize = 64 * 1024;

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
    /// The body's length, as its one Content-Length declared it (0 without one).
    pub(super) body: usize,
    /// The client sent a Content-Length: the instance gets one too, written from `body`.
    pub(super) declared: bool,
    /// The client asked to close the connection after this request.
    pub(super) close: bool,
}

impl HeaderValues for [Header<'_>] {
    fn values<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|h| (h.name, h.value))
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
    if method == "CONNECT" || !plain_target(path.as_bytes()) {
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
            let listed = Listed::new(std::iter::once(h.value));
            // hyper's side refuses a request whose Connection lists a framing header.
            if listed.framing().is_some() {
                return Read::Elsewhere;
            }
            close |= listed.has("close");
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
        declared: lengths == 1,
        close,
    })
}

/// Whether `target` is an origin-form target hyper's server takes as it is: the bytes the
/// `http` crate accepts unencoded in a path and a query (httparse accepts more, such as `<` and
/// `>`, which hyper refuses), ASCII only, and no fragment (which hyper strips). Anything else
/// is hyper's to refuse or forward.
fn plain_target(target: &[u8]) -> bool {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(at) => (&target[..at], &target[at + 1..]),
        None => (target, &[][..]),
    };
    path.first() == Some(&b'/')
        && target.len() < usize::from(u16::MAX)
        && path
            .iter()
            .all(|b| matches!(b, 0x21 | 0x22 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7E))
        && query
            .iter()
            .all(|b| matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E))
}

/// A Content-Length value: digits only.
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Writes the head an instance gets for `req` into `out`, all but the Host line and the blank
/// line that ends it, which each attempt adds. The client's framing headers are never copied:
/// the Content-Length is written from the body's length as parsed.
pub(super) fn write_request(req: &RequestHead<'_>, buf: &[u8], peer_ip: &str, out: &mut Vec<u8>) {
    out.clear();
    request_line(out, req.method, req.path);
    let how = Forwarding {
        peer_ip,
        host: Some(&buf[req.host.clone()]),
        body: if req.declared {
            BodyFraming::Length(req.body as u64)
        } else {
            BodyFraming::None
        },
        upgrade: None,
    };
    write_forwarded(req.headers, &how, out);
}

/// Starts a request head in `out`: `method target HTTP/1.1`.
pub(crate) fn request_line(out: &mut Vec<u8>, method: &str, target: &str) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Ends a request head with its Host line.
pub(crate) fn end_request(out: &mut Vec<u8>, host: &[u8]) {
    out.header("host", host);
    out.extend_from_slice(b"\r\n");
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
            // Targets hyper refuses or rewrites (httparse takes them).
            b"GET /a>b HTTP/1.1\r\nHost: web\r\n\r\n",
            b"GET /a?b\"c HTTP/1.1\r\nHost: web\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: web\r\n\r\n",
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
            // A Connection that lists a framing header: hyper's side refuses it.
            b"POST /a HTTP/1.1\r\nHost: web\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, Host\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\nConnection: transfer-encoding\r\n\r\n",
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

    #[test]
    fn the_instance_gets_the_content_length_cairn_framed_the_body_with() {
        let bytes = b"POST /p HTTP/1.1\r\nContent-Length: 007\r\nHost: web\r\n\r\nabcdefg";
        let mut headers = request_headers();
        let Read::Request(req) = parse_request(bytes, &mut headers, 8192) else {
            panic!("not taken");
        };
        assert_eq!((req.body, req.declared), (7, true));
        let mut out = Vec::new();
        write_request(&req, bytes, PEER, &mut out);
        let head = String::from_utf8(out).unwrap();
        assert_eq!(head.matches("ontent-").count(), 1, "{head}");
        assert!(head.ends_with("content-length: 7\r\n"), "{head}");
        // No Content-Length came, none goes.
        let bytes = b"DELETE /p HTTP/1.1\r\nHost: web\r\n\r\n";
        let mut headers = request_headers();
        let Read::Request(req) = parse_request(bytes, &mut headers, 8192) else {
            panic!("not taken");
        };
        let mut out = Vec::new();
        write_request(&req, bytes, PEER, &mut out);
        assert!(!String::from_utf8(out).unwrap().contains("ontent-"));
    }
}
