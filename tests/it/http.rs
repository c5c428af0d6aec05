//! HTTP listeners and gateways through a real cairn, with real clients (curl, Python's
//! http.client) and a real Python upstream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::cairn::{Cairn, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::http::{curl, curl_status, memory_kib, python_client, PyUpstream};
use crate::support::{eventually, free_port, patient};

const SOON: Duration = Duration::from_secs(10);

/// etcd, Python upstreams registered as `web/<name>`, and cairn with an HTTP service `web`
/// (plus `service_extra` keys) and `more` config appended.
struct Setup {
    etcd: Etcd,
    ups: Vec<PyUpstream>,
    cairn: Cairn,
    web: SocketAddr,
}

async fn setup(names: &[&str], service_extra: &str, more: &str) -> Setup {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut ups = Vec::new();
    for name in names {
        let up = PyUpstream::start(name);
        kv.put(format!("/services/web/{name}"), up.addr.to_string(), None)
            .await
            .unwrap();
        ups.push(up);
    }
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n{service_extra}\n\n{more}\n",
        etcd.endpoint(),
    );
    let cairn = Cairn::start(&config).await;
    cairn.wait_instances("web", names, SOON).await;
    let web = cairn.listen(0);
    Setup {
        etcd,
        ups,
        cairn,
        web,
    }
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[tokio::test]
async fn one_keepalive_connection_reaches_every_instance_in_turn() {
    let s = setup(&["u0", "u1", "u2"], "", "").await;
    let got = python_client(s.web, 30, &[]);
    assert!(got.iter().all(|r| r.status == 200), "{got:?}");
    assert_eq!(
        got.last().unwrap().connections,
        1,
        "the client had to reconnect"
    );
    for window in got.chunks(3) {
        let mut names: Vec<&str> = window.iter().map(|r| r.body.trim()).collect();
        names.sort();
        assert_eq!(names, ["u0", "u1", "u2"], "{got:?}");
    }

    // curl with several URLs reuses one connection, too.
    let u = url(s.web, "/");
    let out = curl(&["-sv", &u, &u, &u, &u, &u, &u]);
    let body = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<&str> = body.lines().collect();
    names.sort();
    assert_eq!(names, ["u0", "u0", "u1", "u1", "u2", "u2"], "{body}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("Connected to").count(),
        1,
        "curl opened more than one connection:\n{log}"
    );
}

#[tokio::test]
async fn a_100_mb_body_streams_both_ways_with_flat_memory() {
    let s = setup(&["u0"], "", "").await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    let payload: Vec<u8> = (0..100 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&input, &payload).unwrap();

    let pid = s.cairn.pid();
    let (rss_before, peak_before) = memory_kib(pid);
    let data = format!("@{}", input.display());
    let out = curl(&[
        "-sS",
        "--data-binary",
        &data,
        "-o",
        output.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &url(s.web, "/echo"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&output).unwrap() == payload,
        "the echoed body differs"
    );
    let (_, peak_after) = memory_kib(pid);
    eprintln!("cairn memory: rss before {rss_before} KiB, peak before {peak_before} KiB, peak after {peak_after} KiB");
    // 100 MiB passed through twice; buffering even one copy would lift the peak by 100 MiB.
    assert!(
        peak_after < peak_before.max(rss_before) + 32 * 1024,
        "cairn's peak memory grew from {peak_before} KiB to {peak_after} KiB"
    );

    // A chunked upload is answered chunked, and arrives whole.
    let small = dir.path().join("small");
    std::fs::write(&small, &payload[..5 * 1024 * 1024]).unwrap();
    let data = format!("@{}", small.display());
    let out = curl(&[
        "-sS",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        "-o",
        output.to_str().unwrap(),
        &url(s.web, "/echo"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&output).unwrap() == payload[..5 * 1024 * 1024],
        "the chunked echo differs"
    );
}

#[tokio::test]
async fn head_expect_continue_and_h2c_work() {
    let s = setup(&["u0"], "", "").await;
    let out = curl(&["-sS", "-I", &url(s.web, "/")]);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-length: 3"),
        "HEAD lost the length: {head}"
    );

    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 1024 * 1024]).unwrap();
    let data = format!("@{}", body.display());
    // curl waits this long for a 100 Continue before sending the body anyway: only cairn's
    // answer lets the upload start (and the log show it) without that wait.
    let out = curl(&[
        "-sv",
        "--expect100-timeout",
        "30",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url(s.web, "/echo"),
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert!(
        log.contains("HTTP/1.1 100 Continue"),
        "no 100 Continue:\n{log}"
    );

    let out = curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "-w",
        "|%{http_version}",
        &url(s.web, "/"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "u0\n|2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_websocket_upgrade_becomes_an_echo_tunnel() {
    let s = setup(&["u0"], "", "").await;
    let mut ws = TcpStream::connect(s.web).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            ws.read(&mut byte).await.unwrap(),
            1,
            "closed during the handshake: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    for text in ["hello", "through cairn"] {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        ws.write_all(&frame).await.unwrap();
        let mut hdr = [0u8; 2];
        ws.read_exact(&mut hdr).await.unwrap();
        assert_eq!(hdr[0], 0x81);
        let mut payload = vec![0u8; hdr[1] as usize];
        ws.read_exact(&mut payload).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&payload), format!("u0: {text}"));
    }
}

#[tokio::test]
async fn failures_answer_502_503_504_404_with_one_line() {
    let dead_port = free_port();
    let s = setup(
        &["u0"],
        "request_timeout = \"300ms\"",
        "[[service]]\nname = \"empty\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
         [[service]]\nname = \"dead\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n",
    )
    .await;
    let mut kv = s.etcd.client().await;
    kv.put("/services/dead/d0", format!("127.0.0.1:{dead_port}"), None)
        .await
        .unwrap();
    s.cairn.wait_instances("dead", &["d0"], SOON).await;
    let (code, body) = curl_status(&[&format!("http://{}/", s.cairn.listen_of("empty"))]);
    assert_eq!(
        (code, body.as_str()),
        (503, "cairn: service \"empty\" has no instances\n")
    );

    let (code, body) = curl_status(&[&format!("http://{}/", s.cairn.listen_of("dead"))]);
    assert_eq!(code, 502, "{body}");
    assert!(
        body.starts_with("cairn: service \"dead\": 1 instance(s) tried, none answered")
            && body.contains("refused"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");

    let (code, body) = curl_status(&[&url(s.web, "/slow?ms=3000")]);
    assert_eq!(code, 504, "{body}");
    assert!(
        body.contains("service \"web\"") && body.contains("no response headers within 300ms"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");
    let series = format!(
        "cairn_listener_timeouts_total{{listen=\"{}\",service=\"web\"}}",
        s.web
    );
    assert_eq!(s.cairn.metric(&series).await, 1.0);
}

#[tokio::test]
async fn a_dead_instance_fails_no_bodyless_request_and_no_post_is_sent_twice() {
    // Ejection off, so every request whose first pick is the dead instance fails over (the
    // ejection tests cover the dead instance leaving the rotation).
    let s = setup(&["live"], "[service.outlier]\nconsecutive_failures = 0", "").await;
    let mut kv = s.etcd.client().await;
    kv.put(
        "/services/web/a-dead",
        format!("127.0.0.1:{}", free_port()),
        None,
    )
    .await
    .unwrap();
    s.cairn
        .wait_instances("web", &["a-dead", "live"], SOON)
        .await;

    let gets = python_client(s.web, 40, &[]);
    assert!(
        gets.iter().all(|r| r.status == 200 && r.body == "live\n"),
        "{gets:?}"
    );
    let posts = python_client(s.web, 40, &["--method", "POST", "--path", "/post"]);
    assert!(
        posts.iter().all(|r| r.status == 200 && r.body == "live\n"),
        "{posts:?}"
    );
    let seen = s.ups[0].stats();
    let counts = seen["posts"].as_object().unwrap();
    assert_eq!(counts.len(), 40, "{seen}");
    assert!(
        counts.values().all(|c| c == 1),
        "a POST was delivered twice: {seen}"
    );
    let series = format!(
        "cairn_listener_connect_failures_total{{listen=\"{}\",service=\"web\"}}",
        s.web
    );
    assert!(
        s.cairn.metric(&series).await >= 40.0,
        "the dead instance was not tried"
    );
}

#[tokio::test]
async fn killing_an_instance_fails_no_request_of_a_keepalive_client() {
    let s = setup(&["a", "b"], "", "").await;
    let victim = s.ups[1].pid().to_string();
    let port = s.ups[1].addr.port().to_string();
    let got = python_client(
        s.web,
        120,
        &[
            "--kill-pid",
            &victim,
            "--kill-port",
            &port,
            "--kill-after",
            "40",
        ],
    );
    let failed: Vec<_> = got.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.is_empty(),
        "requests failed while an instance died: {failed:?}"
    );
    assert!(
        got[..40].iter().any(|r| r.body == "b\n"),
        "b never answered before it was killed"
    );
    assert!(
        got[40..].iter().all(|r| r.body == "a\n"),
        "the killed instance answered"
    );
    assert_eq!(
        got.last().unwrap().connections,
        1,
        "the client's connection to cairn broke"
    );
}

#[tokio::test]
async fn gateways_route_by_host_with_and_without_a_suffix() {
    let s = setup(
        &["u0"],
        "rewrite_host = true",
        "[[gateway]]\nlisten = \"127.0.0.1:0\"\n\n[[gateway]]\nlisten = \"127.0.0.1:0\"\nhost_suffix = \".svc.local\"\n",
    )
    .await;
    let beta = PyUpstream::start("beta");
    s.etcd
        .client()
        .await
        .put("/services/beta/b0", beta.addr.to_string(), None)
        .await
        .unwrap();
    s.cairn.wait_instances("beta", &["b0"], SOON).await;
    let g1 = format!("http://{}", s.cairn.gateway(0));
    let g2 = format!("http://{}", s.cairn.gateway(1));

    assert_eq!(
        curl_status(&["-H", "Host: beta", &format!("{g1}/")]),
        (200, "beta\n".into())
    );
    assert_eq!(
        curl_status(&["-H", "Host: web:8080", &format!("{g1}/")]),
        (200, "u0\n".into())
    );
    assert_eq!(
        curl_status(&["-H", "Host: beta.svc.local", &format!("{g2}/")]),
        (200, "beta\n".into())
    );
    assert_eq!(
        curl_status(&["-H", "Host: BETA.svc.local:80", &format!("{g2}/")]),
        (200, "beta\n".into())
    );

    // A [[service]] block's keys apply through a gateway: `web` rewrites Host, `beta` keeps it.
    let (_, body) = curl_status(&["-H", "Host: web.svc.local", &format!("{g2}/headers")]);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["host"][0], s.ups[0].addr.to_string(), "{h}");
    assert_eq!(h["x-forwarded-host"][0], "web.svc.local", "{h}");
    let (_, body) = curl_status(&["-H", "Host: beta.svc.local", &format!("{g2}/headers")]);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["host"][0], "beta.svc.local", "{h}");

    let (code, body) = curl_status(&["-H", "Host: nosuch.svc.local", &format!("{g2}/")]);
    assert_eq!(
        (code, body.as_str()),
        (
            404,
            "cairn: no service \"nosuch\" in the registry (from Host \"nosuch.svc.local\")\n"
        )
    );
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_ones_removed() {
    let s = setup(&["u0"], "", "").await;
    let (code, body) = curl_status(&[
        "-H",
        "Host: orders.example",
        "-H",
        "Connection: keep-alive, X-Hop",
        "-H",
        "X-Hop: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "Proxy-Authorization: Basic eDp5",
        "-H",
        "X-Forwarded-For: 203.0.113.7",
        "-H",
        "X-Kept: 1",
        &url(s.web, "/headers"),
    ]);
    assert_eq!(code, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["host"][0], "orders.example");
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "orders.example");
    assert_eq!(h["x-kept"][0], "1");
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut s = setup(&["u0"], "", "").await;
    let slow = url(s.web, "/slow?ms=1500");
    let in_flight = std::thread::spawn(move || curl_status(&[&slow]));
    let series = format!(
        "cairn_listener_active{{listen=\"{}\",service=\"web\"}}",
        s.web
    );
    eventually(SOON, "the slow request is in flight", || async {
        (s.cairn.metric(&series).await == 1.0).then_some(())
    })
    .await;
    s.cairn.signal("TERM");
    eventually(SOON, "the listener stops accepting", || async {
        TcpStream::connect(s.web).await.is_err().then_some(())
    })
    .await;
    assert_eq!(in_flight.join().unwrap(), (200, "u0\n".to_string()));
    let status = s.cairn.wait_exit(SOON).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn oversized_headers_get_431_and_idle_connections_are_closed() {
    let s = setup(
        &["u0"],
        "max_header_bytes = 8192\nidle_timeout = \"300ms\"",
        "",
    )
    .await;
    let big = format!("X-Big: {}", "a".repeat(16 * 1024));
    let (code, _) = curl_status(&["-H", &big, &url(s.web, "/")]);
    assert_eq!(code, 431);

    // A client that connects and never speaks, and one that goes quiet after a request.
    let silent = TcpStream::connect(s.web).await.unwrap();
    let mut quiet = TcpStream::connect(s.web).await.unwrap();
    quiet
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n\r\nu0\n") {
        let mut chunk = [0u8; 1024];
        let n = quiet.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before the whole reply: {:?}",
            String::from_utf8_lossy(&reply)
        );
        reply.extend_from_slice(&chunk[..n]);
    }
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    let start = Instant::now();
    for (what, mut conn) in [("silent", silent), ("quiet", quiet)] {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(patient(Duration::from_secs(5)), conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection was kept past its idle timeout"))
            .unwrap_or(0);
        let said = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || said.starts_with("HTTP/1.1 408"), "{what}: {said}");
    }
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "closed after {:?}",
        start.elapsed()
    );
}
