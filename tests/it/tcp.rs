//! The TCP data plane through a real cairn process: balancing, failover, half-close, shutdown.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::cairn::{config, Cairn};
use crate::support::etcd::Etcd;
use crate::support::upstream::{echo_after_half_close, greeting, Tagged};
use crate::support::{eventually, free_port};

const SOON: Duration = Duration::from_secs(10);

/// Starts etcd, `n` tagged upstreams registered as `svc/<name>`, and cairn with `extra` service
/// keys; waits until cairn sees all of them.
async fn setup(n: usize, extra: &str) -> (Etcd, Vec<Tagged>, Cairn, std::net::SocketAddr) {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut ups = Vec::new();
    for i in 0..n {
        let up = Tagged::start(&format!("u{i}")).await;
        kv.put(format!("/services/svc/u{i}"), up.addr.to_string(), None)
            .await
            .unwrap();
        ups.push(up);
    }
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["svc"], extra)).await;
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let ids: Vec<&str> = names.iter().map(String::as_str).collect();
    cairn.wait_instances("svc", &ids, SOON).await;
    let listen = cairn.listen(0);
    (etcd, ups, cairn, listen)
}

#[tokio::test]
async fn round_robin_is_exact_over_n_connections() {
    let (_etcd, _ups, _cairn, listen) = setup(3, "").await;
    let mut order = Vec::new();
    for _ in 0..30 {
        order.push(greeting(listen).await.expect("a greeting"));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in &order {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{order:?}");
    assert!(counts.values().all(|c| *c == 10), "{counts:?}");
    // A strict cycle: each window of three has every instance once.
    for w in order.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["u0", "u1", "u2"], "{order:?}");
    }
}

#[tokio::test]
async fn random_is_roughly_uniform() {
    let (_etcd, _ups, _cairn, listen) = setup(3, "balance = \"random\"").await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..600 {
        *counts
            .entry(greeting(listen).await.expect("a greeting"))
            .or_default() += 1;
    }
    // Each expects 200 with a standard deviation of about 11.5; 140..260 is over five of them.
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|c| (140..=260).contains(c)),
        "{counts:?}"
    );
}

#[tokio::test]
async fn a_closed_port_fails_over_without_the_client_noticing() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let live = Tagged::start("live").await;
    // A port nobody listens on: connects are refused.
    let dead = format!("127.0.0.1:{}", free_port());
    kv.put("/services/f/a-dead", dead, None).await.unwrap();
    kv.put("/services/f/b-live", live.addr.to_string(), None)
        .await
        .unwrap();
    // Ejection off, so every other first pick is the dead instance and fails over (the ejection
    // tests cover the dead instance leaving the rotation).
    let no_ejection = "[service.outlier]\nconsecutive_failures = 0";
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["f"], no_ejection)).await;
    cairn.wait_instances("f", &["a-dead", "b-live"], SOON).await;
    for i in 0..20 {
        assert_eq!(
            greeting(cairn.listen(0)).await.as_deref(),
            Some("live"),
            "connection {i} was lost"
        );
    }
    let series = format!(
        "cairn_listener_connect_failures_total{{listen=\"{}\",service=\"f\"}}",
        cairn.listen(0)
    );
    assert_eq!(
        cairn.metric(&series).await,
        10.0,
        "every other first pick is the dead instance"
    );

    // With retries = 0 the client sees the failure as a closed connection.
    let strict = Cairn::start(&config(&etcd.endpoint(), &["f"], "retries = 0")).await;
    strict
        .wait_instances("f", &["a-dead", "b-live"], SOON)
        .await;
    let got: Vec<Option<String>> = futures_seq(4, || greeting(strict.listen(0))).await;
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 2, "{got:?}");
}

async fn futures_seq<F, Fut, T>(n: usize, mut f: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(f().await);
    }
    out
}

#[tokio::test]
async fn a_service_without_instances_closes_connections() {
    let etcd = Etcd::start().await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["empty"], "")).await;
    cairn.wait_ready().await;
    for _ in 0..3 {
        assert_eq!(greeting(cairn.listen(0)).await, None);
    }
    let series = format!(
        "cairn_listener_no_instances_total{{listen=\"{}\",service=\"empty\"}}",
        cairn.listen(0)
    );
    assert_eq!(cairn.metric(&series).await, 3.0);
}

#[tokio::test]
async fn a_half_closed_client_still_gets_the_whole_reply() {
    let (_etcd, _ups, _cairn, listen) = setup(1, "").await;
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = echo_after_half_close(listen, &payload).await;
    assert_eq!(&reply[..3], b"u0\n");
    assert_eq!(reply.len(), 3 + payload.len());
    assert!(reply[3..] == payload[..], "the echoed bytes differ");
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let (_etcd, _ups, mut cairn, listen) = setup(1, "").await;
    let stream = TcpStream::connect(listen).await.unwrap();
    let mut open = BufReader::new(stream);
    let mut line = String::new();
    open.read_line(&mut line).await.unwrap();
    assert_eq!(line, "u0\n");

    cairn.signal("TERM");
    eventually(SOON, "the listener stops accepting", || async {
        TcpStream::connect(listen).await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        cairn.try_wait(),
        None,
        "cairn exited with a connection still open"
    );
    // The open connection still relays both ways.
    open.get_mut().write_all(b"still here\n").await.unwrap();
    line.clear();
    open.read_line(&mut line).await.unwrap();
    assert_eq!(line, "still here\n");
    drop(open);
    let status = cairn.wait_exit(SOON).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let etcd = Etcd::start().await;
    let up = Tagged::start("u0").await;
    etcd.client()
        .await
        .put("/services/svc/u0", up.addr.to_string(), None)
        .await
        .unwrap();
    let mut cairn = Cairn::start_with_args(
        &config(&etcd.endpoint(), &["svc"], ""),
        &["--shutdown-grace", "500ms"],
    )
    .await;
    cairn.wait_instances("svc", &["u0"], SOON).await;
    // A client that never closes: without the grace period, cairn would wait for it forever.
    let _idle = TcpStream::connect(cairn.listen(0)).await.unwrap();
    eventually(SOON, "the connection is open", || async {
        (cairn
            .metric(&format!(
                "cairn_listener_active{{listen=\"{}\",service=\"svc\"}}",
                cairn.listen(0)
            ))
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    cairn.signal("TERM");
    let status = cairn.wait_exit(SOON).await;
    assert!(status.success(), "{status}");
    assert!(cairn.log().contains("grace period over"), "{}", cairn.log());
}

#[tokio::test]
async fn a_dead_instances_share_is_split_evenly_between_the_live_ones() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let a = Tagged::start("a").await;
    let c = Tagged::start("c").await;
    // Sorted by id, the dead instance sits between the two live ones: its share used to go to
    // its neighbour alone.
    kv.put("/services/even/1-a", a.addr.to_string(), None)
        .await
        .unwrap();
    kv.put(
        "/services/even/2-dead",
        format!("127.0.0.1:{}", free_port()),
        None,
    )
    .await
    .unwrap();
    kv.put("/services/even/3-c", c.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["even"], "")).await;
    cairn
        .wait_instances("even", &["1-a", "2-dead", "3-c"], SOON)
        .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let name = greeting(cairn.listen(0))
            .await
            .unwrap_or_else(|| panic!("connection {i} was lost"));
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(
        counts.values().all(|n| (140..=160).contains(n)),
        "the survivors split 300 connections {counts:?}"
    );
}

#[tokio::test]
async fn an_idle_relay_is_closed_after_idle_timeout_and_a_busy_one_is_kept() {
    let (_etcd, _ups, cairn, listen) = setup(1, "idle_timeout = \"1s\"").await;
    let idle = TcpStream::connect(listen).await.unwrap();
    let mut idle = BufReader::new(idle);
    let mut line = String::new();
    idle.read_line(&mut line).await.unwrap();
    assert_eq!(line, "u0\n");

    // A connection that talks every 300 ms outlives several idle timeouts.
    let busy = TcpStream::connect(listen).await.unwrap();
    let mut busy = BufReader::new(busy);
    let mut greeting_line = String::new();
    busy.read_line(&mut greeting_line).await.unwrap();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        busy.get_mut()
            .write_all(format!("ping {i}\n").as_bytes())
            .await
            .unwrap();
        let mut echo = String::new();
        busy.read_line(&mut echo).await.unwrap();
        assert_eq!(echo, format!("ping {i}\n"), "the busy connection was cut");
    }

    // The silent one was closed meanwhile: cairn ends it, the client reads EOF.
    line.clear();
    let n = tokio::time::timeout(SOON, idle.read_line(&mut line))
        .await
        .expect("the idle connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "read {line:?} instead of EOF");
    eventually(SOON, "the idle close is counted", || async {
        let series =
            format!("cairn_listener_idle_closed_total{{listen=\"{listen}\",service=\"svc\"}}");
        (cairn.metric(&series).await == 1.0).then_some(())
    })
    .await;
}

/// The keepalive timer of every socket `ss` shows for `port`'s connections, as `ss -tno`
/// prints it (`timer:(keepalive,59sec,0)`).
fn keepalive_timers(port: u16) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(":{port} ")))
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("timer:"))
                .unwrap_or("no-timer")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn relayed_sockets_have_tcp_keepalive_on_both_sides() {
    let (_etcd, ups, _cairn, listen) = setup(1, "tcp_keepalive = \"45s\"").await;
    let client = TcpStream::connect(listen).await.unwrap();
    let mut client = BufReader::new(client);
    let mut line = String::new();
    client.read_line(&mut line).await.unwrap();
    // cairn's end of the client connection (local port = the listener's) and its end of the
    // upstream connection (remote port = the upstream's) both run a keepalive timer.
    let client_side: Vec<String> = keepalive_timers(listen.port())
        .into_iter()
        .filter(|t| t.starts_with("timer:(keepalive"))
        .collect();
    assert_eq!(
        client_side.len(),
        1,
        "{:?}",
        keepalive_timers(listen.port())
    );
    // The upstream side gets it once the connection has lasted a second.
    eventually(
        SOON,
        "the upstream socket runs a keepalive timer",
        || async {
            // The upstream's own socket of that connection matches the port too, without one.
            let timers = keepalive_timers(ups[0].addr.port());
            (timers
                .iter()
                .filter(|t| t.starts_with("timer:(keepalive"))
                .count()
                == 1)
                .then_some(())
        },
    )
    .await;
    let secs: u64 = client_side[0]
        .trim_start_matches("timer:(keepalive,")
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|s| s.parse().ok())
        .expect("a keepalive timer in seconds");
    assert!((40..=45).contains(&secs), "{client_side:?}");
}
