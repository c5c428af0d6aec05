//! Response heads on cairn's own HTTP/1.1 client: how an instance's response is framed, and
//! the head the client gets back, written as HTTP/1.1 bytes or kept as a header map for hyper.

use std::io::Write;

use http::StatusCode;
use httparse::Status;

pub(crate) use super::framing::Framing;
use super::head::{parse_length, MAX_HEADERS};
use super::write::{Decimal, HeadSink};
use crate::proxy::http::headers::{HeaderValues, Listed};

/// The largest response head accepted from an instance.
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

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
        self.out.header(name, value);
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
        } else {
            // The Content-Length is written below from the framing decided, once.
            !h.name.eq_ignore_ascii_case("content-length") && !listed.is_hop_by_hop(h.name)
        };
        if keep {
            emit.header(h.name, h.value, te);
        }
    }
    if let (None, Some(n)) = (chunked, length) {
        emit.header("content-length", Decimal::new(n).as_bytes(), false);
    }
    emit.end(framing == Framing::UntilClose);
    Ok(Answer::Head(ResponseHead {
        status,
        len,
        framing,
        // A 204 or 304 that declares a body is broken: whatever follows it on the socket is
        // not to be taken as the next request's answer.
        keep_alive: resp.version == Some(1)
            && !listed.has("close")
            && !(matches!(code, 204 | 304) && (chunked.is_some() || length.is_some_and(|n| n > 0))),
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
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n");

        // The Content-Length is cairn's, written once from the framing: listed in Connection
        // or sent twice, it still frames the body the client gets.
        let (h, out) = head_of(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
        );
        assert_eq!(h.framing, Framing::Length(2));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n");

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
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n"
        );
        for code in [204, 304] {
            let bytes = format!("HTTP/1.1 {code} X\r\nConnection: close\r\n\r\n");
            let (h, _) = head_of(bytes.as_bytes(), false, false);
            assert_eq!(h.framing, Framing::Empty);
            assert!(!h.keep_alive);
            // One that declares a body it must not have leaves the socket unused after it.
            let (h, _) = head_of(
                format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes(),
                false,
                false,
            );
            assert!(h.keep_alive);
            let bytes = format!("HTTP/1.1 {code} X\r\nContent-Length: 9\r\n\r\n");
            let (h, _) = head_of(bytes.as_bytes(), false, false);
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
