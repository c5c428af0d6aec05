//! The one head writer of cairn's HTTP/1.1 client: what an instance gets for a client's request,
//! written over name/value pairs from whichever parser read it (httparse's fields on cairn's own
//! path, hyper's header map for the rest) into HTTP/1.1 bytes, or into a header map for hyper's
//! client (upgrades). The headers that frame the message are written from what cairn decided.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::proxy::http::headers::{fate, Fate, HeaderValues, Listed};

/// A number's decimal digits, written on the stack: the Content-Length cairn writes from the
/// length it decided.
pub(crate) struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub(crate) fn new(n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut left = n;
        loop {
            start -= 1;
            digits[start] = b'0' + (left % 10) as u8;
            left /= 10;
            if left == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

/// Where the head an instance gets is written: HTTP/1.1 bytes for cairn's own client, or a
/// header map for hyper's (upgrades).
pub(crate) trait HeadSink {
    /// Adds the header `name: value`.
    fn header(&mut self, name: &str, value: &[u8]);

    /// Adds one header whose value is `parts` joined by `sep`.
    fn joined<'p>(&mut self, name: &str, parts: impl Iterator<Item = &'p [u8]>, sep: &[u8]);
}

impl HeadSink for Vec<u8> {
    fn header(&mut self, name: &str, value: &[u8]) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }

    fn joined<'p>(&mut self, name: &str, parts: impl Iterator<Item = &'p [u8]>, sep: &[u8]) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
        for (i, part) in parts.enumerate() {
            if i > 0 {
                self.extend_from_slice(sep);
            }
            self.extend_from_slice(part);
        }
        self.extend_from_slice(b"\r\n");
    }
}

impl HeadSink for HeaderMap {
    fn header(&mut self, name: &str, value: &[u8]) {
        // Names and values come from a parsed message or from cairn: both convert.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            self.append(name, value);
        }
    }

    fn joined<'p>(&mut self, name: &str, parts: impl Iterator<Item = &'p [u8]>, sep: &[u8]) {
        let parts: Vec<&[u8]> = parts.collect();
        self.header(name, &parts.join(sep));
    }
}

/// What cairn adds to a request on its way to an instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// The client's address, appended to X-Forwarded-For.
    pub(crate) peer_ip: &'a str,
    /// The Host the client asked for, sent as X-Forwarded-Host.
    pub(crate) host: Option<&'a [u8]>,
    /// How the body is framed, as cairn decided: written as the one framing header.
    pub(crate) body: BodyFraming,
    /// The protocol an upgrade asks for.
    pub(crate) upgrade: Option<&'a [u8]>,
}

/// How a request's body reaches the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No framing header: no body, and none declared.
    None,
    /// `Content-Length`: the body's length, declared by the client and checked by the parser.
    Length(u64),
    /// `Transfer-Encoding: chunked`: a body of unknown length, chunked by cairn.
    Chunked,
}

/// Writes the headers an instance gets for a request whose headers are `client`: those
/// [`fate`] keeps (Cookie fields joined in one line, RFC 9113 §8.2.3), X-Forwarded-*, then the
/// framing and upgrade headers cairn decided. The Host, set per attempt, is not written.
pub(crate) fn write_forwarded(
    client: &(impl HeaderValues + ?Sized),
    how: &Forwarding<'_>,
    out: &mut impl HeadSink,
) {
    let listed = Listed::new(client.values("connection"));
    let mut cookies = false;
    for (name, value) in client.fields() {
        match fate(name, &listed) {
            Fate::Keep if name.eq_ignore_ascii_case("cookie") => {
                if !cookies {
                    cookies = true;
                    out.joined(name, client.values("cookie"), b"; ");
                }
            }
            Fate::Keep => out.header(name, value),
            Fate::ForwardedFor | Fate::Drop => {}
        }
    }
    let forwarded_for = client
        .fields()
        .filter(|(name, _)| fate(name, &listed) == Fate::ForwardedFor)
        .map(|(_, value)| value);
    out.joined(
        "x-forwarded-for",
        forwarded_for.chain([how.peer_ip.as_bytes()]),
        b", ",
    );
    out.header("x-forwarded-proto", b"http");
    if let Some(host) = how.host {
        out.header("x-forwarded-host", host);
    }
    match how.body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => out.header("content-length", Decimal::new(n).as_bytes()),
        BodyFraming::Chunked => out.header("transfer-encoding", b"chunked"),
    }
    if let Some(protocol) = how.upgrade {
        out.header("upgrade", protocol);
        out.header("connection", b"upgrade");
    }
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;

    /// The headers an instance gets for `client`'s, into a header map.
    fn forwarded_headers(
        client: &HeaderMap,
        host: Option<&str>,
        body: BodyFraming,
        upgrade: Option<&str>,
    ) -> HeaderMap {
        let how = Forwarding {
            peer_ip: "127.0.0.9",
            host: host.map(str::as_bytes),
            body,
            upgrade: upgrade.map(str::as_bytes),
        };
        let mut out = HeaderMap::new();
        write_forwarded(client, &how, &mut out);
        // The bytes a bare socket gets say the same.
        let mut bytes = Vec::new();
        write_forwarded(client, &how, &mut bytes);
        let mut expected = Vec::new();
        for (name, value) in &out {
            expected.extend_from_slice(format!("{name}: ").as_bytes());
            expected.extend_from_slice(value.as_bytes());
            expected.extend_from_slice(b"\r\n");
        }
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let mut want: Vec<&[u8]> = expected.split(|b| *b == b'\n').collect();
        lines.sort_unstable();
        want.sort_unstable();
        assert_eq!(
            String::from_utf8_lossy(&lines.concat()).to_lowercase(),
            String::from_utf8_lossy(&want.concat()).to_lowercase()
        );
        out
    }

    #[test]
    fn cookies_in_fields_of_their_own_reach_the_instance_in_one_line() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        let out = forwarded_headers(&h, None, BodyFraming::None, None);
        let cookies: Vec<_> = out.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        // One Cookie line stays as it is.
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        let out = forwarded_headers(&h, None, BodyFraming::None, None);
        assert_eq!(out[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_forwarding_headers_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::HOST, HeaderValue::from_static("orders"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.2.2.2"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let out = forwarded_headers(&h, Some("orders"), BodyFraming::None, None);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "transfer-encoding",
            "proxy-authorization",
            "expect",
            "host",
        ] {
            assert!(!names.contains(&gone), "{gone} was forwarded: {names:?}");
        }
        assert_eq!(out["x-kept"], "yes");
        assert_eq!(out["x-forwarded-for"], "10.1.1.1, 10.2.2.2, 127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "orders");

        let up = forwarded_headers(&h, None, BodyFraming::None, Some("websocket"));
        assert_eq!(up[header::UPGRADE], "websocket");
        assert_eq!(up[header::CONNECTION], "upgrade");
    }

    #[test]
    fn framing_headers_are_written_from_the_decided_length_never_copied() {
        // The client's Content-Length (listed in Connection, or not, or twice) never goes on
        // as it came: the instance gets the length the body was framed with.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("content-length"),
        );
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("66"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("66"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let out = forwarded_headers(&h, None, BodyFraming::Length(66), None);
        let lengths: Vec<_> = out.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["66"]);
        assert!(!out.contains_key(header::TRANSFER_ENCODING));
        let out = forwarded_headers(&h, None, BodyFraming::None, None);
        assert!(!out.contains_key(header::CONTENT_LENGTH));
        assert!(!out.contains_key(header::TRANSFER_ENCODING));
        let out = forwarded_headers(&h, None, BodyFraming::Chunked, None);
        assert!(!out.contains_key(header::CONTENT_LENGTH));
        assert_eq!(out[header::TRANSFER_ENCODING], "chunked");
    }

    #[test]
    fn decimals_are_written_as_digits() {
        for n in [0, 7, 10, 66, 1234567890, u64::MAX] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes());
        }
    }
}
