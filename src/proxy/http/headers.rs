//! Headers: the fate of each one on its way through a proxy (hop-by-hop headers removed both ways,
//! framing headers never copied, X-Forwarded-For joined), which [`super::h1::write`] applies,
//! and what cairn reads (the Host, an upgrade request, the key the hash policy hashes).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

use crate::balance::{hash, HashKey};

/// A message's headers, parsed by httparse or held in hyper's header map: every field in order,
/// and every value of one name, any case.
pub(crate) trait HeaderValues {
    /// The values of the header `name` (lowercase), in order.
    fn values<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s [u8]>;

    /// Every field, name and value.
    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])>;
}

impl HeaderValues for HeaderMap {
    fn values<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))
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
/// (`Trailer` names the trailers a message ends with: it is end to end, and hyper sends an
/// HTTP/1.1 client only the trailers it names.)
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Fields a trailer section must not carry (RFC 9110 §6.5.1: framing, routing, request
/// modifiers, authentication, content metadata), besides hop-by-hop ones and those cairn sets.
const NOT_TRAILERS: [&str; 17] = [
    "authorization",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "expect",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "max-forwards",
    "pragma",
    "range",
    "set-cookie",
    "trailer",
];

/// Whether a trailer field `name` (any case) goes on: not one a trailer must not carry, not
/// hop-by-hop, not one cairn sets itself.
pub(crate) fn trailer_allowed(name: &str) -> bool {
    !NOT_TRAILERS.iter().any(|n| n.eq_ignore_ascii_case(name))
        && fate(name, &Listed::default()) == Fate::Keep
}

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
        || (name.contains('_') && managed_look_alike(name))
    {
        Fate::Drop
    } else {
        Fate::Keep
    }
}

/// Whether `name`, with `_` read as `-`, is a header cairn manages (`Content_Length`,
/// `X_Forwarded_For`): servers that map both to one variable (CGI, WSGI, Rack) would take the
/// client's look-alike for cairn's own, so it never reaches them, as nginx drops it too.
fn managed_look_alike(name: &str) -> bool {
    let dashed = name.replace('_', "-");
    fate(&dashed, &Listed::default()) != Fate::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_header_that_lists_a_framing_header_is_told() {
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
    fn underscore_look_alikes_of_managed_headers_are_dropped() {
        let none = Listed::default();
        for name in [
            "Content_Length",
            "transfer_encoding",
            "X_Forwarded_For",
            "x_forwarded_host",
            "Proxy_Authorization",
        ] {
            assert_eq!(fate(name, &none), Fate::Drop, "{name}");
        }
        assert_eq!(fate("X_Custom_Header", &none), Fate::Keep);
        assert_eq!(fate("x-forwarded-for", &none), Fate::ForwardedFor);
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
