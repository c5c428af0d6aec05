//! cairn's own HTTP/1.1 path against a raw-socket upstream and a raw client: every framing an
//! instance may answer with reaches the client whole and framed once, interim answers stay
//! behind, pipelined requests are answered in order, upstream connections are reused, and a
//! large download streams through without being held.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hostile::http_setup;
use crate::support::http::memory_kib;
use crate::support::raw::{exchange, Reply};

const QUIET: Duration = Duration::from_millis(400);

/// What a raw client gets for one GET through cairn to an upstream answering `reply`.
async fn one_get(reply: &'static [u8]) -> String {
    let (_etcd, _up, cairn) = http_setup(Reply::Raw(reply), "").await;
    exchange(
        cairn.listen(0),
        b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n",
        QUIET,
    )
    .await
}

#[tokio::test]
async fn a_chunked_answer_with_trailers_passes_as_it_came() {
    let got = one_get(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("Transfer-Encoding: chunked\r\n"), "{got}");
    assert!(
        got.ends_with("\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n"),
        "{got}"
    );
}

#[tokio::test]
async fn interim_answers_stay_behind_and_the_final_one_arrives() {
    let got = one_get(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got}");
    assert!(got.ends_with("\r\n\r\nhi"), "{got}");
}

#[tokio::test]
async fn a_body_that_runs_to_the_close_closes_the_client_too() {
    let got = one_get(b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the close").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nuntil the close"), "{got}");
}

#[tokio::test]
async fn a_cut_body_closes_the_client_and_garbage_gets_502() {
    // The client gets what came, then a close: never a hang, never a padded body.
    let got = one_get(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
    assert!(got.ends_with("\r\n\r\nabc"), "{got}");
    let got = one_get(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
    assert!(got.contains("invalid response head"), "{got}");
    // A chunked body broken from its first bytes: a 502, not a head and a cut.
    let got = one_get(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
    assert!(got.contains("malformed chunked body"), "{got}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_upstream_connection() {
    // One worker: each worker keeps upstream connections of its own, and two clients may be
    // dealt to two workers.
    let (_etcd, up, cairn) = http_setup(Reply::Ok, "\n[runtime]\nworkers = 1\n").await;
    let got = exchange(
        cairn.listen(0),
        b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nPOST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\n\r\nbodyGET /3 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        QUIET,
    )
    .await;
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got}");
    assert!(got.contains("connection: close"), "{got}");
    let seen = up.received();
    let lines: Vec<&str> = seen.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        ["GET /1 HTTP/1.1", "POST /2 HTTP/1.1", "GET /3 HTTP/1.1"]
    );
    assert_eq!(seen[1].body, b"body");
    // Another client later reuses the same upstream connection.
    let again = exchange(
        cairn.listen(0),
        b"GET /4 HTTP/1.1\r\nHost: web\r\n\r\n",
        QUIET,
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
    assert_eq!(
        up.connections(),
        1,
        "the upstream connection was not reused"
    );
}

#[tokio::test]
async fn a_64_mib_download_streams_through_with_flat_memory() {
    const SIZE: usize = 64 * 1024 * 1024;
    let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").into_bytes();
    reply.extend((0..SIZE).map(|i| b'a' + (i % 26) as u8));
    let (_etcd, _up, cairn) = http_setup(Reply::Raw(Box::leak(reply.into_boxed_slice())), "").await;
    let (rss_before, peak_before) = memory_kib(cairn.pid());
    let got = exchange(
        cairn.listen(0),
        b"GET /big HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(body.len(), SIZE, "the body arrived cut");
    assert!(body
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'a' + (i % 26) as u8));
    let (_, peak_after) = memory_kib(cairn.pid());
    // Buffering the body whole would lift the peak by 64 MiB.
    assert!(
        peak_after < peak_before.max(rss_before) + 16 * 1024,
        "cairn's peak memory grew from {peak_before} KiB to {peak_after} KiB"
    );
}

#[tokio::test]
async fn an_upstream_connection_the_instance_closed_is_never_written_to() {
    // Every answer is complete and says nothing of closing, then the instance closes: the
    // idle connection cairn kept is dead by the next request, which must go on a new one.
    let (_etcd, up, cairn) = http_setup(
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        "",
    )
    .await;
    let mut client = tokio::net::TcpStream::connect(cairn.listen(0))
        .await
        .unwrap();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let req = format!("GET /{i} HTTP/1.1\r\nHost: web\r\n\r\n");
        client.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nok") {
            let mut chunk = [0u8; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "cairn closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(up.received().len(), 3);
    assert_eq!(up.connections(), 3);
}

/// Reads from `s` until it ends (a close or a reset) and returns what came, or `None` when it
/// was still open after `within`.
async fn until_cut(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

#[tokio::test]
async fn an_instance_that_stalls_mid_body_is_cut_after_the_idle_timeout() {
    let (_etcd, _up, cairn) = http_setup(
        Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
        "idle_timeout = \"500ms\"",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(cairn.listen(0))
        .await
        .unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let got = until_cut(&mut s, crate::support::patient(Duration::from_secs(10)))
        .await
        .expect("the client was held while the instance sent nothing");
    let got = String::from_utf8_lossy(&got);
    assert!(got.ends_with("\r\n\r\npartial"), "{got}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
    const SIZE: usize = 64 * 1024 * 1024;
    let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").into_bytes();
    reply.resize(reply.len() + SIZE, b'x');
    let (_etcd, _up, cairn) = http_setup(
        Reply::Raw(Box::leak(reply.into_boxed_slice())),
        "idle_timeout = \"500ms\"",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(cairn.listen(0))
        .await
        .unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    // Reads nothing for four idle timeouts: cairn's writes stop making progress.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = until_cut(&mut s, crate::support::patient(Duration::from_secs(10)))
        .await
        .expect("the connection was still open");
    assert!(
        got.len() < SIZE,
        "the whole body arrived: the client was never cut"
    );
}

#[tokio::test]
async fn trailers_reach_an_http11_client_that_hyper_serves() {
    // A chunked upload goes through hyper's server; the answer's trailers, named by its
    // Trailer header, must reach the HTTP/1.1 client that asks for them (TE: trailers) there
    // too: hyper sends only the trailers a Trailer header names.
    let (_etcd, _up, cairn) = http_setup(
        Reply::Each(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n",
        ),
        "",
    )
    .await;
    let got = exchange(
        cairn.listen(0),
        b"POST /up HTTP/1.1\r\nHost: web\r\nConnection: TE\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        QUIET,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.to_lowercase().contains("\r\nx-sum: 42\r\n"), "{got}");
}
