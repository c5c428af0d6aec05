//! gRPC over cairn's HTTP listeners: which requests are gRPC calls, their deadline
//! (`grpc-timeout`), and the answer a client gets when cairn itself fails a call: HTTP 200,
//! `content-type: application/grpc` and a trailers-only response carrying `grpc-status` and a
//! `grpc-message` naming the service and the cause, as Envoy and linkerd2-proxy answer.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::Response;
use http_body_util::{BodyExt, Empty};

use super::body::ProxyBody;
use crate::proxy::error::ProxyError;

/// gRPC status codes cairn answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// 4: the deadline passed before the instance answered.
    DeadlineExceeded = 4,
    /// 12: the gateway knows no such service.
    Unimplemented = 12,
    /// 13: the call was refused by cairn as malformed.
    Internal = 13,
    /// 14: no instance could take the call (none, none answered, or one failed it).
    Unavailable = 14,
}

/// Whether a request is a gRPC call: its content type is `application/grpc` or one of its
/// `+proto`, `+json`, … forms.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start();
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
                && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The deadline a `grpc-timeout` value sets (an integer of at most 8 digits and a unit: `H`,
/// `M`, `S`, `m`, `u`, `n`); `None` when it is absent or malformed.
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `left`, in milliseconds (rounded up, at least 1), or in seconds
/// past what 8 digits of milliseconds hold.
pub(crate) fn timeout_value(left: Duration) -> HeaderValue {
    let ms = left.as_nanos().div_ceil(1_000_000).max(1);
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::try_from(text).expect("digits and a unit make a header value")
}

/// The gRPC status a call cairn failed gets for `e`.
pub(crate) fn code(e: &ProxyError) -> Code {
    match e {
        ProxyError::Timeout { .. } => Code::DeadlineExceeded,
        ProxyError::UnknownService { .. } | ProxyError::NoHost => Code::Unimplemented,
        ProxyError::FramingListed { .. } | ProxyError::Asterisk { .. } | ProxyError::Connect => {
            Code::Internal
        }
        ProxyError::NoInstances { .. }
        | ProxyError::Exhausted { .. }
        | ProxyError::Upstream { .. } => Code::Unavailable,
    }
}

/// The trailers-only answer to a call cairn failed with `e`.
pub(crate) fn answer(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code(e) as u16));
    let message = percent_encode(&format!("cairn: {e}"));
    if let Ok(v) = HeaderValue::try_from(message) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// `text` percent-encoded as gRPC's `grpc-message` is: every byte outside printable ASCII, and
/// `%`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in ["application/grpcx", "application/json", "text/plain"] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_are_read_in_every_unit_and_written_back_in_milliseconds() {
        for (value, want) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("3M", Some(Duration::from_secs(180))),
            ("250u", Some(Duration::from_micros(250))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("-1S", None),
        ] {
            let h = headers(&[("grpc-timeout", value)]);
            assert_eq!(timeout(&h), want, "{value}");
        }
        assert_eq!(timeout_value(Duration::from_millis(80)), "80m");
        assert_eq!(timeout_value(Duration::from_micros(1)), "1m");
        assert_eq!(timeout_value(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn a_failed_call_gets_a_trailers_only_answer_naming_the_cause() {
        let e = ProxyError::NoInstances {
            service: "orders".into(),
        };
        let resp = answer(&e);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "cairn: service \"orders\" has no instances"
        );
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }
}
