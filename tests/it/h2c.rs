//! HTTP/2 (h2c) clients through cairn's own HTTP/1.1 client to a raw-socket upstream: every
//! framing an instance may answer with is decoded into HTTP/2 data (chunks and trailers
//! included), a body cut short is a stream error and never a clean end, garbage gets a 502, and
//! upstream connections are reused.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::hostile::http_setup;
use crate::support::raw::Reply;

/// What an HTTP/2 client got for one request.
#[derive(Debug)]
struct Got {
    /// `None` when the stream failed before a response head.
    status: Option<StatusCode>,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// The error that ended the body, if it did not end cleanly.
    error: Option<String>,
}

/// An h2c (prior knowledge) connection to cairn.
async fn h2(listen: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(listen).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn request(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    method: Method,
    path: &str,
) -> Got {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://web{path}"))
        .body(Empty::new())
        .unwrap();
    send_one(send, req).await
}

async fn send_one(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> Got {
    let mut got = Got {
        status: None,
        headers: HeaderMap::new(),
        body: Vec::new(),
        trailers: None,
        error: None,
    };
    let resp = match send.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            got.error = Some(e.to_string());
            return got;
        }
    };
    got.status = Some(resp.status());
    got.headers = resp.headers().clone();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => got.body.extend_from_slice(&data),
                Err(frame) => got.trailers = frame.into_trailers().ok(),
            },
            Err(e) => {
                got.error = Some(e.to_string());
                break;
            }
        }
    }
    got
}

/// What an h2c client gets for one request through cairn to an upstream answering `reply`.
async fn one(reply: &'static [u8], method: Method) -> Got {
    let (_etcd, _up, cairn) = http_setup(Reply::Raw(reply), "").await;
    request(&mut h2(cairn.listen(0)).await, method, "/x").await
}

#[tokio::test]
async fn h2c_gets_every_framing_decoded() {
    let got = one(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
        Method::GET,
    )
    .await;
    assert_eq!(got.status, Some(StatusCode::OK), "{got:?}");
    assert_eq!(got.body, b"hello world", "{got:?}");
    assert!(got.error.is_none(), "{got:?}");
    assert_eq!(got.headers["x-up"], "1");
    assert!(!got.headers.contains_key("transfer-encoding"), "{got:?}");
    let trailers = got.trailers.expect("the trailers arrive");
    assert_eq!(trailers["x-sum"], "42");

    let got = one(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        Method::GET,
    )
    .await;
    assert_eq!(
        (got.status, &got.body[..]),
        (Some(StatusCode::OK), &b"hi"[..])
    );
    assert_eq!(got.headers["content-length"], "2");

    let got = one(b"HTTP/1.0 200 OK\r\n\r\nuntil the close", Method::GET).await;
    assert_eq!(got.body, b"until the close", "{got:?}");
    assert!(got.error.is_none(), "{got:?}");

    // HEAD: the length of what a GET would get, and no body.
    let got = one(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        Method::HEAD,
    )
    .await;
    assert_eq!(got.status, Some(StatusCode::OK));
    assert!(got.body.is_empty() && got.error.is_none(), "{got:?}");
}

#[tokio::test]
async fn h2c_sees_a_cut_body_as_an_error_and_garbage_as_502() {
    for cut in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        // The stream is reset: before the head or after part of the body.
        let got = one(cut, Method::GET).await;
        assert!(got.error.is_some(), "a cut body ended cleanly: {got:?}");
        assert!(got.body.len() < 5, "{got:?}");
    }
    let got = one(b"SSH-2.0-OpenSSH_9.2\r\n", Method::GET).await;
    assert_eq!(got.status, Some(StatusCode::BAD_GATEWAY), "{got:?}");
    let text = String::from_utf8_lossy(&got.body);
    assert!(text.contains("invalid response head"), "{text}");
    // A 101 nobody asked for is not passed on.
    let got = one(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        Method::GET,
    )
    .await;
    assert_eq!(got.status, Some(StatusCode::BAD_GATEWAY), "{got:?}");
}

#[tokio::test]
async fn h2c_requests_share_one_upstream_connection_and_arrive_as_http11() {
    let (_etcd, up, cairn) = http_setup(Reply::Ok, "\n[runtime]\nworkers = 1\n").await;
    let mut send = h2(cairn.listen(0)).await;
    for i in 0..3 {
        let got = request(&mut send, Method::GET, &format!("/{i}?q=1")).await;
        assert_eq!(got.status, Some(StatusCode::OK), "{got:?}");
        assert!(got.error.is_none(), "{got:?}");
    }
    // Cookies an HTTP/2 client sent in fields of their own arrive in one line.
    let req = Request::builder()
        .uri("http://web/3")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::new())
        .unwrap();
    assert_eq!(send_one(&mut send, req).await.status, Some(StatusCode::OK));
    let seen = up.received();
    let lines: Vec<&str> = seen.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "GET /0?q=1 HTTP/1.1",
            "GET /1?q=1 HTTP/1.1",
            "GET /2?q=1 HTTP/1.1",
            "GET /3 HTTP/1.1"
        ]
    );
    assert_eq!(seen[0].header("host"), ["web"]);
    assert_eq!(seen[0].header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen[3].header("cookie"), ["a=1; b=2"]);
    assert_eq!(
        up.connections(),
        1,
        "the upstream connection was not reused"
    );
}

#[tokio::test]
async fn h2c_fails_over_a_refused_instance_and_times_out_a_slow_one() {
    let (etcd, up, cairn) = http_setup(Reply::Ok, "").await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    etcd.client()
        .await
        .put("/services/web/dead", dead.to_string(), None)
        .await
        .unwrap();
    cairn
        .wait_instances("web", &["dead", "raw"], Duration::from_secs(10))
        .await;
    // Every request reaches the live instance, once: a refused connect sent nothing.
    let mut send = h2(cairn.listen(0)).await;
    for i in 0..6 {
        let got = request(&mut send, Method::GET, &format!("/{i}")).await;
        assert_eq!(got.status, Some(StatusCode::OK), "{got:?}");
    }
    assert_eq!(up.received().len(), 6);

    let (_etcd, _up, cairn) = http_setup(
        Reply::Slow(Duration::from_secs(5)),
        "request_timeout = \"300ms\"",
    )
    .await;
    let got = request(&mut h2(cairn.listen(0)).await, Method::GET, "/slow").await;
    assert_eq!(got.status, Some(StatusCode::GATEWAY_TIMEOUT), "{got:?}");
}

#[tokio::test]
async fn h2c_gets_a_stream_error_when_the_instance_stalls_mid_body() {
    let (_etcd, _up, cairn) = http_setup(
        Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
        "idle_timeout = \"500ms\"",
    )
    .await;
    let mut send = h2(cairn.listen(0)).await;
    let got = tokio::time::timeout(
        crate::support::patient(Duration::from_secs(10)),
        request(&mut send, Method::GET, "/stall"),
    )
    .await
    .expect("the stream was held while the instance sent nothing");
    assert_eq!(got.status, Some(StatusCode::OK), "{got:?}");
    assert_eq!(got.body, b"partial", "{got:?}");
    assert!(got.error.is_some(), "a stalled body ended cleanly: {got:?}");
}

/// An upload whose length is unknown until it ends: its frames, given one at a time.
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn an_h2c_upload_reaches_the_instance_chunked_by_cairn_with_its_trailers() {
    use hyper::body::Frame;

    let (_etcd, up, cairn) = http_setup(Reply::Ok, "").await;
    let io = TokioIo::new(TcpStream::connect(cairn.listen(0)).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "42".parse().unwrap());
    let upload = |frames: Vec<Frame<Bytes>>| Frames(frames.into());
    // No content-length: the length is unknown until the stream ends.
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://web/up")
        .body(upload(vec![
            Frame::data(Bytes::from_static(b"hello ")),
            Frame::data(Bytes::from_static(b"upload")),
            Frame::trailers(trailers),
        ]))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = up.received();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].line, "POST /up HTTP/1.1");
    assert_eq!(seen[0].header("transfer-encoding"), ["chunked"]);
    assert!(seen[0].header("content-length").is_empty(), "{seen:?}");
    assert_eq!(seen[0].body, b"hello upload");
    assert_eq!(seen[0].trailers, ["x-sum: 42"]);

    // With a content-length, the instance gets that length and the body as it came.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("http://web/put")
        .header("content-length", "5")
        .body(upload(vec![Frame::data(Bytes::from_static(b"12345"))]))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = up.received();
    assert_eq!(seen[1].header("content-length"), ["5"]);
    assert!(seen[1].header("transfer-encoding").is_empty(), "{seen:?}");
    assert_eq!(seen[1].body, b"12345");
}
