//! Picking policies as a user meets them, through real cairn processes: weights, least-request,
//! latency (ewma), consistent hashing by client address and by header, and zones.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;

use super::ejection::greetings;
use super::operate::keep_alive_load;
use crate::support::cairn::{http_get_with, Cairn, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::http::{python_client, PyUpstream};
use crate::support::raw::{RawUpstream, Reply};
use crate::support::upstream::Tagged;
use crate::support::{eventually, patient};

const SOON: Duration = Duration::from_secs(10);

fn json_value(addr: SocketAddr, weight: u32, zone: Option<&str>) -> String {
    match zone {
        Some(z) => format!(r#"{{"addr":"{addr}","weight":{weight},"zone":"{z}"}}"#),
        None => format!(r#"{{"addr":"{addr}","weight":{weight}}}"#),
    }
}

fn service(name: &str, lines: &str) -> String {
    format!("\n[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\n{lines}\n")
}

#[tokio::test]
async fn weights_1_2_7_split_ten_thousand_connections_for_every_policy() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut ups = Vec::new();
    let policies = ["round_robin", "random", "least_request"];
    for (name, weight) in [("a", 1), ("b", 2), ("c", 7), ("z", 0)] {
        let up = Tagged::start(name).await;
        for policy in policies {
            kv.put(
                format!("/services/{policy}/{name}"),
                json_value(up.addr, weight, None),
                None,
            )
            .await
            .unwrap();
        }
        ups.push(up);
    }
    let mut config = format!("[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}", etcd.endpoint());
    for policy in policies {
        config.push_str(&service(policy, &format!("balance = \"{policy}\"")));
    }
    let cairn = Cairn::start(&config).await;
    for policy in policies {
        cairn
            .wait_instances(policy, &["a", "b", "c", "z"], SOON)
            .await;
        let served = greetings(cairn.listen_of(policy), 10_000, 20).await;
        let share = |name: &str| served.get(name).copied().unwrap_or(0) as f64 / 10_000.0;
        for (name, want) in [("a", 0.1), ("b", 0.2), ("c", 0.7)] {
            assert!(
                (share(name) - want).abs() <= 0.02,
                "{policy}: {name} got {:.3} of the connections, not {want} ± 0.02: {served:?}",
                share(name)
            );
        }
        assert_eq!(
            served.get("z"),
            None,
            "{policy}: weight 0 got connections: {served:?}"
        );
    }
}

#[tokio::test]
async fn least_request_sends_less_to_a_slow_instance() {
    let lat = Latencies::start("least_request", Reply::Slow(Duration::from_millis(50))).await;
    let ups = &lat.ups;
    let listen = lat.cairn.listen(0);
    // Sixteen clients at once, thirty requests each.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        clients.spawn(async move {
            for _ in 0..30 {
                let (status, body) = http_get_with(listen, "/", &[]).await.expect("a response");
                assert_eq!(status, 200, "{body}");
            }
        });
    }
    clients.join_all().await;
    let [fast_1, fast_2, slow] = ups.each_ref().map(|u| u.received().len());
    assert_eq!(fast_1 + fast_2 + slow, 480);
    // Round robin would give each a third; the slow instance gets less than half a fast one's.
    assert!(slow * 2 < fast_1.min(fast_2), "{fast_1} {fast_2} {slow}");
}

/// etcd with `instances` registered under `name`, and cairn with an HTTP service `name` set up
/// by `lines`, once it routes to every instance.
async fn http_service(name: &str, instances: &[(&str, SocketAddr)], lines: &str) -> (Etcd, Cairn) {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    for (id, addr) in instances {
        kv.put(format!("/services/{name}/{id}"), addr.to_string(), None)
            .await
            .unwrap();
    }
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}{}",
        etcd.endpoint(),
        service(name, &format!("protocol = \"http\"\n{lines}"))
    );
    let cairn = Cairn::start(&config).await;
    let ids: Vec<&str> = instances.iter().map(|(id, _)| *id).collect();
    cairn.wait_instances(name, &ids, SOON).await;
    (etcd, cairn)
}

/// Three raw HTTP instances behind cairn with `balance`, the third answering as `slow`.
struct Latencies {
    ups: [RawUpstream; 3],
    cairn: Cairn,
    _etcd: Etcd,
}

impl Latencies {
    async fn start(balance: &str, slow: Reply) -> Latencies {
        let ups = [
            RawUpstream::start(Reply::Ok).await,
            RawUpstream::start(Reply::Ok).await,
            RawUpstream::start(slow).await,
        ];
        let (etcd, cairn) = http_service(
            "lat",
            &[
                ("fast-1", ups[0].addr),
                ("fast-2", ups[1].addr),
                ("slow", ups[2].addr),
            ],
            &format!("balance = \"{balance}\""),
        )
        .await;
        Latencies {
            ups,
            cairn,
            _etcd: etcd,
        }
    }

    /// `clients` kept-alive clients send requests for `time`: the requests each instance got
    /// meanwhile.
    async fn load(&self, clients: usize, time: Duration) -> [usize; 3] {
        let before = self.ups.each_ref().map(|u| u.received().len());
        let listen = self.cairn.listen(0);
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = tokio::task::JoinSet::new();
        for _ in 0..clients {
            load.spawn(keep_alive_load(listen, Arc::clone(&stop)));
        }
        tokio::time::sleep(time).await;
        stop.store(true, Ordering::Relaxed);
        for done in load.join_all().await {
            done.expect("every request answered");
        }
        let after = self.ups.each_ref().map(|u| u.received().len());
        [0, 1, 2].map(|i| after[i] - before[i])
    }
}

/// The third instance's share of `got`.
fn third_share(got: [usize; 3]) -> f64 {
    got[2] as f64 / got.iter().sum::<usize>().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_sends_a_slow_instance_almost_nothing_and_equal_ones_a_third_each() {
    for (clients, most) in [(8, 0.10), (1, 0.05)] {
        let lat = Latencies::start("ewma", Reply::Slow(Duration::from_millis(50))).await;
        let got = lat.load(clients, Duration::from_secs(5)).await;
        assert!(
            third_share(got) < most,
            "{clients} client(s): the slow instance got {:.3} ({got:?})",
            third_share(got)
        );
        // `/services` shows each instance's estimate: the slow one's near the 50 ms it takes.
        let services = lat.cairn.services().await;
        let slow_ms = services["services"]["lat"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "slow")
            .and_then(|i| i["ewma_ms"].as_f64())
            .expect("the slow instance's ewma_ms");
        assert!(slow_ms > 20.0, "{services}");
    }
    let lat = Latencies::start("ewma", Reply::Ok).await;
    let got = lat.load(8, Duration::from_secs(3)).await;
    let total: usize = got.iter().sum();
    for n in got {
        let share = n as f64 / total as f64;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.1 / 3.0,
            "equal instances split {got:?}"
        );
    }
    // Answer times per service on /metrics.
    let (_, metrics) = lat.cairn.get("/metrics").await;
    let count = metrics
        .lines()
        .find(|l| l.starts_with("cairn_response_seconds_count{service=\"lat\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no response histogram for lat:\n{metrics}"));
    assert_eq!(count, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_gives_a_recovered_instance_its_share_back_within_30_s() {
    // Slow for the first 5 s, then as fast as the others.
    let recovers = tokio::time::Instant::now() + Duration::from_secs(5);
    let lat = Latencies::start(
        "ewma",
        Reply::SlowUntil(Duration::from_millis(50), recovers),
    )
    .await;
    tokio::time::sleep_until(recovers - Duration::from_secs(3)).await;
    let slow = lat.load(8, Duration::from_secs(3)).await;
    assert!(third_share(slow) < 0.10, "{slow:?}");
    // Recovered: within 30 s, a third of the requests again over 3 s (within ±10% of a third).
    let deadline = tokio::time::Instant::now() + patient(Duration::from_secs(30));
    let mut seen = Vec::new();
    loop {
        let got = lat.load(8, Duration::from_secs(3)).await;
        seen.push(got);
        if (third_share(got) - 1.0 / 3.0).abs() <= 0.1 / 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recovered instance never got its third back: {seen:?}"
        );
    }
}

/// Connects to `listen` from source address `ip` and reads the greeting.
async fn greeting_from(listen: SocketAddr, ip: Ipv4Addr) -> String {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .expect("binding a loopback source address");
    let stream = socket
        .connect(listen)
        .await
        .expect("connecting through cairn");
    let mut line = String::new();
    tokio::time::timeout(
        patient(Duration::from_secs(5)),
        BufReader::new(stream).read_line(&mut line),
    )
    .await
    .expect("a greeting within 5 s")
    .expect("reading the greeting");
    assert!(!line.is_empty(), "closed without a greeting from {ip}");
    line.trim_end().to_string()
}

/// The instance each of `clients` source addresses lands on, 20 connections at a time.
async fn placement(listen: SocketAddr, clients: &[Ipv4Addr]) -> Vec<String> {
    let mut out = Vec::with_capacity(clients.len());
    for chunk in clients.chunks(20) {
        let mut set = tokio::task::JoinSet::new();
        for (i, ip) in chunk.iter().enumerate() {
            let ip = *ip;
            set.spawn(async move { (i, greeting_from(listen, ip).await) });
        }
        let mut got: Vec<(usize, String)> = set.join_all().await;
        got.sort();
        out.extend(got.into_iter().map(|(_, name)| name));
    }
    out
}

#[tokio::test]
async fn hashing_by_client_address_is_stable_and_a_departure_moves_few_keys() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut ups = Vec::new();
    let mut names = Vec::new();
    for i in 0..10 {
        let name = format!("i{i}");
        let up = Tagged::start(&name).await;
        kv.put(format!("/services/hc/{name}"), up.addr.to_string(), None)
            .await
            .unwrap();
        ups.push(up);
        names.push(name);
    }
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}{}",
        etcd.endpoint(),
        service("hc", "balance = \"hash\"\nhash_key = \"client_ip\"")
    );
    let cairn = Cairn::start(&config).await;
    let ids: Vec<&str> = names.iter().map(String::as_str).collect();
    cairn.wait_instances("hc", &ids, SOON).await;
    let listen = cairn.listen(0);
    // 10 000 clients, each from its own loopback address.
    let clients: Vec<Ipv4Addr> = (0..10_000u32)
        .map(|i| {
            Ipv4Addr::new(
                127,
                1 + (i / 62_500) as u8,
                ((i / 250) % 250) as u8,
                (i % 250 + 1) as u8,
            )
        })
        .collect();
    let before = placement(listen, &clients).await;
    let spread: HashMap<&str, usize> = before.iter().fold(HashMap::new(), |mut m, n| {
        *m.entry(n.as_str()).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 10, "{spread:?}");
    assert_eq!(
        placement(listen, &clients[..1000]).await,
        before[..1000],
        "a key moved"
    );

    kv.delete("/services/hc/i3", None).await.unwrap();
    let ids: Vec<&str> = ids.into_iter().filter(|i| *i != "i3").collect();
    cairn.wait_instances("hc", &ids, SOON).await;
    let after = placement(listen, &clients).await;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let orphaned = before.iter().filter(|b| *b == "i3").count();
    assert!(after.iter().all(|a| a != "i3"));
    assert!(
        moved <= 1_500,
        "{moved} of 10 000 keys moved ({orphaned} were on the removed instance)"
    );
    assert!(moved >= orphaned, "{moved} < {orphaned}");
}

#[tokio::test]
async fn hashing_by_header_keeps_a_user_on_one_instance_and_spreads_the_rest() {
    let ups: Vec<PyUpstream> = ["u0", "u1", "u2"]
        .iter()
        .map(|n| PyUpstream::start(n))
        .collect();
    let (_etcd, cairn) = http_service(
        "hh",
        &[
            ("u0", ups[0].addr),
            ("u1", ups[1].addr),
            ("u2", ups[2].addr),
        ],
        "balance = \"hash\"\nhash_key = \"header:X-User\"",
    )
    .await;
    let listen = cairn.listen(0);
    let mut homes: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..100 {
            let user = format!("user-{user}");
            let (status, body) = http_get_with(listen, "/", &[("X-User", &user)])
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
            let home = homes.entry(user.clone()).or_insert_with(|| body.clone());
            assert_eq!(*home, body, "{user} moved in round {round}");
        }
    }
    let used: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(used.len(), 3, "100 users all landed on {used:?}");
    // Without the header: round robin.
    let gets = python_client(listen, 30, &[]);
    for name in ["u0\n", "u1\n", "u2\n"] {
        assert_eq!(
            gets.iter().filter(|r| r.body == name).count(),
            10,
            "{gets:?}"
        );
    }
}

#[tokio::test]
async fn local_instances_get_all_traffic_while_two_are_usable() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut ups = Vec::new();
    for (name, zone) in [
        ("l1", "eu-1a"),
        ("l2", "eu-1a"),
        ("r1", "eu-1b"),
        ("r2", "eu-1b"),
    ] {
        let up = Tagged::start(name).await;
        kv.put(
            format!("/services/z/{name}"),
            json_value(up.addr, 1, Some(zone)),
            None,
        )
        .await
        .unwrap();
        ups.push(up);
    }
    let config = format!(
        "[node]\nzone = \"eu-1a\"\n\n[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}{}",
        etcd.endpoint(),
        service("z", "")
    );
    let cairn = Cairn::start(&config).await;
    cairn
        .wait_instances("z", &["l1", "l2", "r1", "r2"], SOON)
        .await;
    let listen = cairn.listen(0);
    let served = greetings(listen, 100, 10).await;
    assert_eq!(
        served,
        HashMap::from([("l1".into(), 50), ("l2".into(), 50)])
    );

    // One local instance dies: once it is ejected, one local is too few and every zone is used.
    ups.remove(0).stop();
    eventually(Duration::from_secs(10), "l1 is ejected", || async {
        greetings(listen, 5, 1).await;
        let doc = cairn.services().await;
        let l1 = doc["services"]["z"]["instances"][0].clone();
        (l1["id"] == "l1" && l1["state"] == "ejected").then_some(())
    })
    .await;
    let served = greetings(listen, 99, 10).await;
    assert_eq!(
        served,
        HashMap::from([("l2".into(), 33), ("r1".into(), 33), ("r2".into(), 33)])
    );
}
