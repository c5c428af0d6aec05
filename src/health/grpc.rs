//! The standard gRPC health check, `grpc.health.v1.Health/Check`, asked of one instance over a
//! connection of its own (HTTP/2, prior knowledge): healthy when it answers `SERVING` for the
//! service named (`""`: the server as a whole). Used for discovered instances and for this
//! node's registrations alike. Messages are encoded by hand: one string field asked, one enum
//! field answered, no protobuf crate needed for that.

use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::Builder;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::addr::Addr;
use crate::net::{dial, OwnAddrs};

/// The longest answer read: a health answer is a few bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Asks `addr` whether `service` is serving; the connect may take `connect_timeout`. The
/// caller bounds the whole probe.
///
/// # Errors
/// Why the instance does not count as healthy: no connection, an HTTP or gRPC failure, an
/// answer that is not `SERVING`.
pub(crate) async fn check(
    addr: &Addr,
    service: &str,
    connect_timeout: Duration,
    own: &OwnAddrs,
) -> Result<(), String> {
    let stream = dial(addr, connect_timeout, own)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| crate::text::causes(&e))?;
    let driving = tokio::spawn(conn);
    let answer = async {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(request(service)))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| crate::text::causes(&e))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("answered HTTP {}", resp.status()));
        }
        let head = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| crate::text::causes(&e))?;
        let trailers = body.trailers().cloned().unwrap_or(head);
        let status = trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if status != "0" {
            let message = trailers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(format!("answered grpc-status {status:?} {message}")
                .trim_end()
                .to_string());
        }
        let bytes = body.to_bytes();
        if bytes.len() > MAX_ANSWER {
            return Err("answer too large".into());
        }
        match serving(bytes) {
            Some(1) => Ok(()),
            Some(2) => Err("NOT_SERVING".into()),
            Some(3) => Err(format!(
                "SERVICE_UNKNOWN: the server knows no service {service:?}"
            )),
            Some(n) => Err(format!("status {n} (not SERVING)")),
            None => Err("unreadable health answer".into()),
        }
    };
    let result = answer.await;
    driving.abort();
    result
}

/// A gRPC message holding `HealthCheckRequest { service }`.
fn request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

/// The `status` of a framed `HealthCheckResponse` (0, UNKNOWN, when absent); `None` when the
/// bytes are not one.
fn serving(mut framed: Bytes) -> Option<u64> {
    if framed.len() < 5 || framed[0] != 0 {
        return None;
    }
    framed.advance(1);
    let len = framed.get_u32() as usize;
    let mut message = framed.get(..len)?;
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = read_varint(&mut message)?,
            (_, 0) => {
                read_varint(&mut message)?;
            }
            (_, 2) => {
                let n = usize::try_from(read_varint(&mut message)?).ok()?;
                message = message.get(n..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_and_the_answer_are_encoded_as_protobuf_would() {
        assert_eq!(&request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&request("ab")[..], &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']);
        let long = "s".repeat(200);
        let framed = request(&long);
        assert_eq!(&framed[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(
            serving(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1])),
            Some(1)
        );
        assert_eq!(
            serving(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 2])),
            Some(2)
        );
        // An empty message is UNKNOWN; unknown fields are skipped.
        assert_eq!(serving(Bytes::from_static(&[0, 0, 0, 0, 0])), Some(0));
        assert_eq!(
            serving(Bytes::from_static(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1])),
            Some(1)
        );
        assert_eq!(serving(Bytes::from_static(&[1, 0, 0, 0, 0])), None);
        assert_eq!(serving(Bytes::from_static(&[0, 0, 0, 0, 9, 0x08])), None);
    }
}
