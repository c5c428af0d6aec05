//! Headers: what a proxy removes (hop-by-hop headers, both ways) and adds (X-Forwarded-*), and
//! what it reads (the Host, an upgrade request, the key the hash policy hashes).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

use crate::balance::{hash, HashKey};

/// The hash of what `key` names in a request from `peer`; `None` when the request lacks it (the
/// pick then falls back to round robin). Several values of one header hash as one.
pub(crate) fn request_key(key: &HashKey, headers: &HeaderMap, peer: SocketAddr) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(hash::ip(peer.ip())),
        HashKey::Header(name) => {
            let mut values = headers.get_all(name.as_str()).iter();
            let first = values.next()?;
            let mut h = hash::hash(first.as_bytes(), 0);
            for more in values {
                h = hash::hash(more.as_bytes(), h);
            }
            Some(h)
        }
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
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
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// The methods cairn forwards, as an `Allow` header lists them.
pub(crate) const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// Headers that describe one connection, not the message; a proxy never forwards them.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName, listed: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-") || listed.contains(name)
}

/// The header names a Connection header lists as hop-by-hop.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n, &listed))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The headers sent upstream: the client's, minus hop-by-hop ones, Host (set per attempt) and
/// Expect (the 100-continue exchange already happened with cairn), plus X-Forwarded-*.
pub(crate) fn forwarded_headers(
    client: &HeaderMap,
    peer: SocketAddr,
    host: Option<&str>,
    upgrade: Option<&HeaderValue>,
) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(client.len() + 4);
    let mut forwarded_for: Option<String> = None;
    for (name, value) in client {
        if is_hop_by_hop(name, &listed) || name == header::HOST || name == header::EXPECT {
            continue;
        }
        if name == "x-forwarded-for" {
            if let Ok(v) = value.to_str() {
                let list = forwarded_for.get_or_insert_with(String::new);
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(v);
            }
            continue;
        }
        if name == "x-forwarded-proto" || name == "x-forwarded-host" {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let mut xff = forwarded_for.unwrap_or_default();
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&peer.ip().to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        out.insert(HeaderName::from_static("x-forwarded-host"), v);
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
        let out = forwarded_headers(&h, "127.0.0.9:5000".parse().unwrap(), Some("orders"), None);
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
        );
        assert_eq!(up[header::UPGRADE], "websocket");
        assert_eq!(up[header::CONNECTION], "upgrade");
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
