//! Headers: what a proxy removes (hop-by-hop headers, both ways) and adds (X-Forwarded-*), and
//! what it reads (the Host, an upgrade request, the key the hash policy hashes).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

use crate::balance::{hash, HashKey};

/// A message's headers as [`request_key`] reads them: every value of one name, any case.
pub(crate) trait HeaderValues {
    /// The values of the header `name` (lowercase), in order.
    fn values<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s [u8]>;
}

impl HeaderValues for HeaderMap {
    fn values<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// The hash of what `key` names in a request from `peer`; `None` when the request lacks it (the
/// pick then falls back to round robin). Several values of one header hash as one.
pub(crate) fn request_key(
    key: &HashKey,
    headers: &(impl HeaderValues + ?Sized),
    peer: SocketAddr,
) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(hash::ip(peer.ip())),
        HashKey::Header(name) => {
            let mut values = headers.values(name.as_str());
            let first = values.next()?;
            let mut h = hash::hash(first, 0);
            for more in values {
                h = hash::hash(more, h);
            }
            Some(h)
        }
        HashKey::Cookie(name) => headers
            .values("cookie")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| n == name)
            .map(|(_, value)| hash::hash(value.as_bytes(), 0)),
    }
}

/// The host the client asked for: its Host header, or the authority of an HTTP/2 request.
pub(crate) fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty())
}

/// The protocol a client asks to switch to, when it asks in the HTTP/1.1 way.
pub(crate) fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| Listed::tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case("upgrade")));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// The methods cairn forwards, as an `Allow` header lists them.
pub(crate) const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// Headers that describe one connection, not the message; a proxy never forwards them.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names a message's Connection headers list as hop-by-hop.
#[derive(Debug, Default)]
pub(crate) struct Listed<'a> {
    /// The listed tokens, split once: the first few inline, so the usual message allocates
    /// nothing.
    first: [&'a str; 4],
    more: Vec<&'a str>,
}

impl<'a> Listed<'a> {
    /// The names listed in the Connection header values `values`.
    pub(crate) fn new(values: impl Iterator<Item = &'a [u8]>) -> Listed<'a> {
        let mut listed = Listed::default();
        for (i, token) in values.flat_map(Listed::tokens).enumerate() {
            match listed.first.get_mut(i) {
                Some(slot) => *slot = token,
                None => listed.more.push(token),
            }
        }
        listed
    }

    /// The tokens of one Connection header value.
    pub(crate) fn tokens(value: &'a [u8]) -> impl Iterator<Item = &'a str> {
        std::str::from_utf8(value)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// Whether `token` is listed.
    pub(crate) fn has(&self, token: &str) -> bool {
        (self.first.iter().chain(&self.more))
            .any(|t| !t.is_empty() && t.eq_ignore_ascii_case(token))
    }

    /// Whether a header `name` (any case) is hop-by-hop: one of [`HOP_BY_HOP`], a `Proxy-*`
    /// header, or one listed. A header that frames or routes the message is never hop-by-hop
    /// by being listed: whether it goes on is decided from the framing, not by a generic rule.
    pub(crate) fn is_hop_by_hop(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
            || name
                .get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
            || (self.has(name) && !FRAMING.iter().any(|h| h.eq_ignore_ascii_case(name)))
    }

    /// The first header listed that frames or routes a message. A request that lists one asks
    /// each hop to drop the header that says where its body ends (or which service it is for):
    /// one hop would frame it one way and the next another, which is how requests are smuggled.
    pub(crate) fn framing(&self) -> Option<&'static str> {
        FRAMING.into_iter().find(|name| self.has(name))
    }
}

/// Headers that decide where a message ends or where a request goes. A proxy writes them from
/// what it decided, and a Connection header that lists one makes a request ambiguous.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = Listed::new(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| listed.is_hop_by_hop(n.as_str()))
        .cloned()
        .collect();
    drop(listed);
    for name in doomed {
        headers.remove(name);
    }
}

/// What happens to a client's request header on its way to an instance.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Forwarded as it is.
    Keep,
    /// Dropped: hop-by-hop, a framing header (cairn writes the framing it decided), Host (set
    /// per attempt), Expect (the 100-continue exchange already happened with cairn), or an
    /// X-Forwarded-* header cairn sets itself.
    Drop,
    /// Joined into the X-Forwarded-For cairn sends.
    ForwardedFor,
}

/// The fate of the request header `name` (any case).
pub(crate) fn fate(name: &str, listed: &Listed<'_>) -> Fate {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if is("x-forwarded-for") {
        Fate::ForwardedFor
    } else if listed.is_hop_by_hop(name)
        || is("content-length")
        || is("host")
        || is("expect")
        || is("x-forwarded-proto")
        || is("x-forwarded-host")
    {
        Fate::Drop
    } else {
        Fate::Keep
    }
}

/// Adds one X-Forwarded-For value (itself a list) to the list that starts at `out[start..]`.
pub(crate) fn join_forwarded_for(out: &mut Vec<u8>, start: usize, value: &[u8]) {
    if out.len() > start {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(value);
}

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

/// Ends the X-Forwarded-For list that starts at `out[start..]` with the client's address.
pub(crate) fn end_forwarded_for(out: &mut Vec<u8>, start: usize, ip: &str) {
    if out.len() > start {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip.as_bytes());
}

/// The headers sent upstream: the client's, minus those [`fate`] drops, plus X-Forwarded-*, and
/// a Content-Length of `length` when the body's length was declared and decided.
pub(crate) fn forwarded_headers(
    client: &HeaderMap,
    peer: SocketAddr,
    host: Option<&str>,
    upgrade: Option<&HeaderValue>,
    length: Option<u64>,
) -> HeaderMap {
    let listed = Listed::new(
        client
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut out = HeaderMap::with_capacity(client.len() + 4);
    let mut forwarded_for = Vec::new();
    for (name, value) in client {
        match fate(name.as_str(), &listed) {
            Fate::Keep => {
                out.append(name.clone(), value.clone());
            }
            Fate::ForwardedFor => join_forwarded_for(&mut forwarded_for, 0, value.as_bytes()),
            Fate::Drop => {}
        }
    }
    // An HTTP/2 client may send each cookie in a field of its own; an HTTP/1.1 instance gets
    // them in one line (RFC 9113 §8.2.3).
    if out.get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = out
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            out.insert(header::COOKIE, v);
        }
    }
    end_forwarded_for(&mut forwarded_for, 0, &peer.ip().to_string());
    if let Ok(v) = HeaderValue::from_bytes(&forwarded_for) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        out.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    if let Some(n) = length {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(protocol) = upgrade {
        out.insert(header::UPGRADE, protocol.clone());
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_in_fields_of_their_own_reach_the_instance_in_one_line() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        let out = forwarded_headers(&h, "10.0.0.9:5000".parse().unwrap(), None, None, None);
        let cookies: Vec<_> = out.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        // One Cookie line stays as it is.
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        let out = forwarded_headers(&h, "10.0.0.9:5000".parse().unwrap(), None, None, None);
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
        let out = forwarded_headers(
            &h,
            "127.0.0.9:5000".parse().unwrap(),
            Some("orders"),
            None,
            None,
        );
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

        let up = forwarded_headers(
            &h,
            "127.0.0.9:5000".parse().unwrap(),
            None,
            Some(&HeaderValue::from_static("websocket")),
            None,
        );
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
        let peer = "10.0.0.9:5000".parse().unwrap();
        let out = forwarded_headers(&h, peer, None, None, Some(66));
        let lengths: Vec<_> = out.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["66"]);
        let out = forwarded_headers(&h, peer, None, None, None);
        assert!(!out.contains_key(header::CONTENT_LENGTH));
        // Whether a Connection header lists a framing header is told, in any case.
        for (value, named) in [
            (&b"Content-Length"[..], Some("content-length")),
            (b"keep-alive, TRANSFER-ENCODING", Some("transfer-encoding")),
            (b"host", Some("host")),
            (b"te, keep-alive, close", None),
            (b"content-lengthx", None),
        ] {
            assert_eq!(Listed::new([value].into_iter()).framing(), named);
        }
        // A response's Content-Length stays, listed or not.
        let listed = Listed::new([&b"content-length, x-a"[..]].into_iter());
        assert!(!listed.is_hop_by_hop("Content-Length"));
        assert!(listed.is_hop_by_hop("x-a"));
    }

    #[test]
    fn decimals_are_written_as_digits() {
        for n in [0, 7, 10, 66, 1234567890, u64::MAX] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn every_connection_header_counts() {
        let values: [&[u8]; 5] = [b"keep-alive", b"X-A, x-b", b"", b" X-C ", b"x-e,,x-f"];
        let listed = Listed::new(values.into_iter());
        for name in [
            "x-a",
            "X-B",
            "x-c",
            "x-e",
            "X-F",
            "keep-alive",
            "Connection",
            "proxy-x",
            "TE",
        ] {
            assert!(listed.is_hop_by_hop(name), "{name}");
        }
        assert!(!listed.is_hop_by_hop("x-d"));
        assert!(!Listed::default().is_hop_by_hop("x-a"));
    }

    #[test]
    fn hash_keys_come_from_the_header_the_cookie_or_the_peer() {
        let peer: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.append(header::COOKIE, HeaderValue::from_static("a=1; session=s42"));
        let user = HashKey::Header("x-user".into());
        let session = HashKey::Cookie("session".into());
        assert_eq!(request_key(&user, &h, peer), Some(hash::hash(b"alice", 0)));
        assert_eq!(request_key(&session, &h, peer), Some(hash::hash(b"s42", 0)));
        assert_eq!(
            request_key(&HashKey::ClientIp, &h, peer),
            Some(hash::ip(peer.ip()))
        );
        assert_eq!(request_key(&HashKey::Cookie("sess".into()), &h, peer), None);
        assert_eq!(
            request_key(&HashKey::Header("x-other".into()), &h, peer),
            None
        );
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let req = Request::builder()
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert_eq!(upgrade_protocol(&req).unwrap(), "websocket");
        let req = Request::builder()
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(upgrade_protocol(&req).is_none());
    }
}
