//! The decoded client against raw sockets: early answers, uploads, stalls.
use std::sync::Mutex;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::proxy::http::body::{Reclaimable, RequestBody};

/// A client's body whose frames the test sends; it ends when the sender is dropped.
struct Channel(mpsc::Receiver<Frame<Bytes>>);

impl Body for Channel {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn body() -> (mpsc::Sender<Frame<Bytes>>, RequestBody) {
    let (tx, rx) = mpsc::channel(4);
    let body = Reclaimable::new(Channel(rx));
    (tx, RequestBody::of(Some(&body)))
}

/// An instance that reads until it has `until` (the end of what it expects), records
/// every byte, and answers `answer` after the head (`early`) or after `until`.
async fn instance(
    until: &'static [u8],
    answer: &'static [u8],
    early: bool,
) -> (Addr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = Addr::Ip(listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let all = {
                        let mut seen = log.lock().unwrap();
                        seen.extend_from_slice(&buf[..n]);
                        seen.clone()
                    };
                    let head = all.windows(4).any(|w| w == b"\r\n\r\n");
                    if !answered && ((early && head) || all.ends_with(until)) {
                        answered = true;
                        stream.write_all(answer).await.unwrap();
                    }
                }
            });
        }
    });
    (addr, seen)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

async fn post(pool: &Arc<Pool>, addr: &Addr, body: RequestBody) -> Response<BareBody> {
    let mut out = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nhost: t\r\n\r\n".to_vec();
    let upload = Upload {
        body,
        chunked: true,
    };
    send_request(
        pool,
        addr,
        &mut out,
        Some(upload),
        false,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_with_its_trailers() {
    let end = b"0\r\nx-sum: 42\r\n\r\n";
    let (addr, seen) = instance(end, OK, false).await;
    let pool = Pool::new(Duration::from_secs(1), Arc::default());
    let (tx, body) = body();
    let sending = tokio::spawn(async move {
        tx.send(Frame::data(Bytes::from_static(b"hello")))
            .await
            .unwrap();
        tx.send(Frame::data(Bytes::from_static(b" world!")))
            .await
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("42"));
        // Not for a trailer section: dropped on the way.
        trailers.insert("content-length", HeaderValue::from_static("5"));
        trailers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        tx.send(Frame::trailers(trailers)).await.unwrap();
    });
    let resp = post(&pool, &addr, body).await;
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    sending.await.unwrap();
    assert_eq!(&got[..], b"ok");
    let seen = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert!(
        seen.ends_with("\r\n\r\n5\r\nhello\r\n7\r\n world!\r\n0\r\nx-sum: 42\r\n\r\n"),
        "{seen}"
    );
    // The request went whole: the socket serves the next one.
    assert_eq!(pool.idle_count(&addr), 1);
}

#[tokio::test]
async fn an_answer_before_the_end_of_the_body_is_passed_on_and_the_socket_dropped() {
    let early = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
    let (addr, seen) = instance(b"never", early, true).await;
    let pool = Pool::new(Duration::from_secs(1), Arc::default());
    let (tx, body) = body();
    tx.send(Frame::data(Bytes::from_static(b"part")))
        .await
        .unwrap();
    // The body never ends; the answer comes anyway.
    let resp = tokio::time::timeout(Duration::from_secs(5), post(&pool, &addr, body))
        .await
        .expect("the early answer was not read while the body was still coming");
    assert_eq!(resp.status(), 413);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], b"big!");
    // Part of a request is on that socket: it is not reused.
    assert_eq!(pool.idle_count(&addr), 0);
    assert!(String::from_utf8_lossy(&seen.lock().unwrap()).contains("POST / HTTP/1.1"));
    drop(tx);
}

#[tokio::test]
async fn the_rest_of_the_body_goes_out_while_the_answer_streams() {
    // An instance that answers at once and echoes as it reads: a full-duplex exchange.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = Addr::Ip(listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..at + 4);
                break;
            }
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        // Echoes each chunk of the request as a chunk of the answer.
        loop {
            let done = seen.ends_with(b"0\r\n\r\n");
            if !seen.is_empty() {
                stream.write_all(&seen).await.unwrap();
                seen.clear();
            }
            if done {
                return;
            }
            let n = stream.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
    });
    let pool = Pool::new(Duration::from_secs(1), Arc::default());
    let (tx, body) = body();
    let resp = post(&pool, &addr, body).await;
    let mut echo = resp.into_body();
    let mut got = Vec::new();
    for word in ["one", "two", "three"] {
        // The next piece of the body is sent only once the last one came back.
        tx.send(Frame::data(Bytes::from_static(word.as_bytes())))
            .await
            .unwrap();
        while got.len() < word.len() {
            let frame = echo.frame().await.unwrap().unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got, word.as_bytes());
        got.clear();
    }
    drop(tx);
    assert!(
        echo.frame().await.is_none(),
        "the echo did not end with the body"
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
    // Fields a trailer must not carry, and connection-specific ones, stay behind.
    let t = trailers(b"Content-Length: 5\r\nConnection: close\r\nX-Forwarded-For: 6.6.6.6\r\nGrpc-Status: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    let names: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["grpc-status"]);
    assert!(trailers(b"Set-Cookie: a=b\r\n\r\n").unwrap().is_none());
}
