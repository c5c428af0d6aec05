//! Hostile input and faults: each defect found by attacking cairn as a user would has a test here,
//! checked against what a raw-socket upstream actually receives. Request smuggling has a module
//! of its own, `smuggling`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::cairn::{config, run, Cairn, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::http::curl;
use crate::support::raw::{exchange, RawUpstream, Reply};
use crate::support::upstream::{greeting, Tagged};
use crate::support::{cpu_share, eventually};

const SOON: Duration = Duration::from_secs(10);

/// etcd, one raw upstream registered as `web/raw`, and cairn with an HTTP service `web`.
pub(crate) async fn http_setup(reply: Reply, extra: &str) -> (Etcd, RawUpstream, Cairn) {
    let etcd = Etcd::start().await;
    let up = RawUpstream::start(reply).await;
    etcd.client()
        .await
        .put("/services/web/raw", up.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n{extra}\n",
        etcd.endpoint()
    ))
    .await;
    cairn.wait_instances("web", &["raw"], SOON).await;
    (etcd, up, cairn)
}

#[tokio::test]
async fn an_instance_that_is_cairns_own_listener_is_refused_and_frees_every_slot() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["loop"], "max_connections = 8")).await;
    let listen = cairn.listen(0);
    let live = Tagged::start("live").await;
    kv.put("/services/loop/a-self", listen.to_string(), None)
        .await
        .unwrap();
    kv.put("/services/loop/b-live", live.addr.to_string(), None)
        .await
        .unwrap();
    cairn
        .wait_instances("loop", &["a-self", "b-live"], SOON)
        .await;
    for i in 0..20 {
        assert_eq!(
            greeting(listen).await.as_deref(),
            Some("live"),
            "connection {i} looped or was lost"
        );
    }
    assert!(cairn.log().contains("own listener"), "{}", cairn.log());

    // With only itself to go to, every connection is closed, and no slot stays held.
    kv.delete("/services/loop/b-live", None).await.unwrap();
    cairn.wait_instances("loop", &["a-self"], SOON).await;
    for _ in 0..20 {
        assert_eq!(greeting(listen).await, None);
    }
    let active = format!("cairn_listener_active{{listen=\"{listen}\",service=\"loop\"}}");
    eventually(SOON, "no connection is held", || async {
        (cairn.metric(&active).await == 0.0).then_some(())
    })
    .await;
    kv.put("/services/loop/b-live", live.addr.to_string(), None)
        .await
        .unwrap();
    cairn
        .wait_instances("loop", &["a-self", "b-live"], SOON)
        .await;
    for _ in 0..10 {
        assert_eq!(greeting(listen).await.as_deref(), Some("live"));
    }

    // The same over HTTP: one 502 naming the loop, not a hundred hops.
    let http = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"hloop\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n",
        etcd.endpoint()
    ))
    .await;
    let hlisten = http.listen(0);
    kv.put("/services/hloop/self", hlisten.to_string(), None)
        .await
        .unwrap();
    http.wait_instances("hloop", &["self"], SOON).await;
    let (code, body) = crate::support::http::curl_status(&[&format!("http://{hlisten}/")]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("own listener"), "{body}");
    let requests =
        format!("cairn_listener_requests_total{{listen=\"{hlisten}\",service=\"hloop\"}}");
    assert_eq!(http.metric(&requests).await, 1.0, "the request went round");
}

#[tokio::test]
async fn options_asterisk_is_answered_and_connect_refused_without_touching_an_instance() {
    let (_etcd, up, cairn) = http_setup(Reply::Ok, "").await;
    let listen = cairn.listen(0);
    let out = exchange(
        listen,
        b"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_lowercase().contains("allow: get, head"), "{out}");
    let out = exchange(
        listen,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.to_lowercase().contains("allow:"), "{out}");
    let out = exchange(
        listen,
        b"GET * HTTP/1.1\r\nHost: web\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(up.received().is_empty(), "{:?}", up.received());
}

#[tokio::test]
async fn a_response_framed_both_ways_reaches_the_client_framed_once() {
    let (_etcd, _up, cairn) = http_setup(
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        "",
    )
    .await;
    // curl blocks: run it off this runtime, which also runs the upstream.
    let url = format!("http://{}/", cairn.listen(0));
    let out =
        tokio::task::spawn_blocking(move || curl(&["-sS", "-D", "-", "--max-time", "10", &url]))
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("content-length: 100"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
}

#[tokio::test]
async fn an_http2_client_that_only_answers_pings_is_closed_after_the_idle_timeout() {
    let (_etcd, _up, cairn) = http_setup(Reply::Ok, "idle_timeout = \"500ms\"").await;
    let mut s = TcpStream::connect(cairn.listen(0)).await.unwrap();
    // The client preface and an empty SETTINGS frame; then only ever answer what cairn sends.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut goaway = false;
    let closed = tokio::time::timeout(crate::support::patient(SOON), async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return;
            }
            match (head[3], head[4]) {
                // SETTINGS: acknowledge.
                (4, 0) => {
                    let _ = s.write_all(b"\0\0\0\x04\x01\0\0\0\0").await;
                }
                // PING: answer it, as a live client does.
                (6, 0) => {
                    let mut pong = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    let _ = s.write_all(&pong).await;
                }
                (7, _) => goaway = true,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle HTTP/2 connection was kept open");
    assert!(goaway, "closed without a GOAWAY");
}

#[tokio::test]
async fn keys_cannot_forge_log_lines() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["m"], "")).await;
    cairn.wait_ready().await;
    let forged = "2026-01-01T00:00:00.000000Z  INFO cairn::server: forged";
    kv.put(format!("/services/m/x\n{forged}"), "garbage", None)
        .await
        .unwrap();
    kv.put("/services/m/y", format!("bad\n{forged}:1"), None)
        .await
        .unwrap();
    eventually(SOON, "both values are skipped", || async {
        (cairn.metric("cairn_registry_invalid_values_total").await == 2.0).then_some(())
    })
    .await;
    let log = cairn.log();
    assert!(
        log.lines().all(|l| !l.starts_with(forged)),
        "a key or value forged a log line:\n{log}"
    );
}

#[tokio::test]
async fn durations_that_would_overflow_are_refused_by_check_and_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for (text, key) in [
        (
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"http\"\nidle_timeout = \"10000000000000000000s\"\n",
            "service[0].idle_timeout: must be at most",
        ),
        (
            "[[register]]\nservice = \"s\"\naddr = \"10.0.0.1:80\"\nttl = \"10000000000000000000s\"\n",
            "register[0].ttl: ttl must be at most",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nretries = -1\n",
            "service[0].retries: invalid value",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let (status, _, err) = run(&["check", "-c", path.to_str().unwrap()]);
        assert!(!status.success(), "accepted:\n{text}");
        assert!(err.contains(key), "wanted {key} in: {err}");
        assert!(!err.contains("$__serde"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let (status, _, err) = run(&[
        "register",
        "--service",
        "s",
        "--addr",
        "10.0.0.1:80",
        "--ttl",
        "10000000000000000000s",
    ]);
    assert!(!status.success() && err.contains("--ttl"), "{err}");
    let (status, _, err) = run(&["run", "-c", "x.toml", "--shutdown-grace", "1000h"]);
    assert!(
        !status.success() && err.contains("--shutdown-grace"),
        "{err}"
    );
}

#[tokio::test]
async fn the_accept_backlog_matches_the_connection_cap() {
    let etcd = Etcd::start().await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["b"], "max_connections = 300")).await;
    let port = cairn.listen(0).port().to_string();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("running ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // For a listening socket, ss's Send-Q column is the backlog.
    let backlog: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no listener in: {text}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096);
    assert_eq!(backlog, 300.min(somaxconn), "{text}");
}

#[tokio::test]
async fn the_admin_endpoint_sheds_slow_clients_and_warns_when_exposed() {
    let etcd = Etcd::start().await;
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n[admin]\nlisten = \"0.0.0.0:0\"\n",
        etcd.endpoint()
    ))
    .await;
    assert!(
        cairn.log().contains("non-loopback") && cairn.log().contains("[admin]"),
        "{}",
        cairn.log()
    );
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], cairn.admin.port()));
    // A hundred half-sent requests: the endpoint still answers, and cuts them after its header
    // timeout.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let (status, _) = crate::support::cairn::http_get(admin, "/healthz")
        .await
        .expect("the admin endpoint answers");
    assert_eq!(status, 200);
    for mut s in slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(crate::support::patient(SOON), s.read(&mut buf))
            .await
            .expect("a half-sent request was held past the header timeout")
            .unwrap_or(0);
        let said = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || said.starts_with("HTTP/1.1 408"), "{said}");
    }
}

#[tokio::test]
async fn running_out_of_file_descriptors_neither_spins_nor_silences_the_admin_endpoint() {
    let (_etcd, _up, cairn) = {
        let etcd = Etcd::start().await;
        let up = RawUpstream::start(Reply::Ok).await;
        etcd.client()
            .await
            .put("/services/web/raw", up.addr.to_string(), None)
            .await
            .unwrap();
        let cairn = Cairn::start_limited(
            &format!(
                "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n",
                etcd.endpoint()
            ),
            256,
        )
        .await;
        cairn.wait_instances("web", &["raw"], SOON).await;
        (etcd, up, cairn)
    };
    // More idle clients than cairn has descriptors.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(cairn.listen(0)).await.unwrap());
    }
    let share = cpu_share(cairn.pid(), Duration::from_secs(2)).await;
    assert!(
        share < 0.2,
        "cairn used {:.0}% of a CPU while flooded",
        share * 100.0
    );
    assert_eq!(cairn.get("/healthz").await.0, 200);
    assert!(
        cairn
            .log()
            .contains("open-file limit allows fewer connections"),
        "{}",
        cairn.log()
    );
    drop(idle);
}
