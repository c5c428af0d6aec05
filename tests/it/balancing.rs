//! Picking policies as a user meets them, through real cairn processes: weights, least-request,
//! consistent hashing by client address and by header, and zones.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;

use super::ejection::greetings;
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
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let ups = [
        RawUpstream::start(Reply::Ok).await,
        RawUpstream::start(Reply::Ok).await,
        RawUpstream::start(Reply::Slow(Duration::from_millis(50))).await,
    ];
    for (name, up) in ["fast-1", "fast-2", "slow"].iter().zip(&ups) {
        kv.put(format!("/services/lr/{name}"), up.addr.to_string(), None)
            .await
            .unwrap();
    }
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}{}",
        etcd.endpoint(),
        service("lr", "protocol = \"http\"\nbalance = \"least_request\"")
    );
    let cairn = Cairn::start(&config).await;
    cairn
        .wait_instances("lr", &["fast-1", "fast-2", "slow"], SOON)
        .await;
    let listen = cairn.listen(0);
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
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let ups: Vec<PyUpstream> = ["u0", "u1", "u2"]
        .iter()
        .map(|n| PyUpstream::start(n))
        .collect();
    for (name, up) in ["u0", "u1", "u2"].iter().zip(&ups) {
        kv.put(format!("/services/hh/{name}"), up.addr.to_string(), None)
            .await
            .unwrap();
    }
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}{}",
        etcd.endpoint(),
        service(
            "hh",
            "protocol = \"http\"\nbalance = \"hash\"\nhash_key = \"header:X-User\""
        )
    );
    let cairn = Cairn::start(&config).await;
    cairn.wait_instances("hh", &["u0", "u1", "u2"], SOON).await;
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
