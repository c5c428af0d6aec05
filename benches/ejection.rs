//! What clients see while an instance is blackholed: the connect latency of each new connection
//! through cairn, one connection every 50 ms, with one blackholed instance among three and
//! `connect_timeout = "1s"` (the situation of the issue that asked for ejection).
//!
//! Beside it, in the same run: the same exchange direct to a live instance (the floor), and
//! through cairn with ejection turned off (`consecutive_failures = 0`, cairn before ejection).
//! The table shows, per window of connections, the median and the worst exchange, and how many
//! connections waited for the connect timeout. With ejection the slow ones must stop after about
//! `consecutive_failures` (5) failures, and come back for one connection when the 30 s ejection
//! ends (probation), which ejects the instance again for 60 s.
//!
//! `CAIRN_BIN` picks the cairn binary (a release build is fairer); the run lasts about 50 s.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // a bench measures wall time

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::cairn::{Cairn, ADMIN};
use support::etcd::Etcd;
use support::upstream::{greeting, Blackhole, Tagged};

/// A connection this slow waited for the connect timeout (1 s) at least once.
const TIMED_OUT: Duration = Duration::from_millis(900);

fn main() {
    let seconds: u64 = std::env::var("CAIRN_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let runtime = tokio::runtime::Runtime::new().expect("building a runtime");
    runtime.block_on(run(Duration::from_secs(seconds)));
}

async fn run(length: Duration) {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let live = [Tagged::start("a").await, Tagged::start("b").await];
    let hole = Blackhole::start().await;
    for (id, addr) in [("a", live[0].addr), ("b", live[1].addr), ("x", hole.addr)] {
        for service in ["ejecting", "plain"] {
            kv.put(format!("/services/{service}/{id}"), addr.to_string(), None)
                .await
                .expect("registering an instance");
        }
    }
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}
[[service]]\nname = \"ejecting\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n
[[service]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n[service.outlier]\nconsecutive_failures = 0\n",
        etcd.endpoint()
    );
    let cairn = Cairn::start(&config).await;
    for service in ["ejecting", "plain"] {
        cairn
            .wait_instances(service, &["a", "b", "x"], Duration::from_secs(10))
            .await;
    }
    let targets = [
        ("direct", live[0].addr),
        ("cairn, ejection on", cairn.listen_of("ejecting")),
        ("cairn, ejection off", cairn.listen_of("plain")),
    ];
    // Each target gets its own client, all at once, one new connection every 50 ms.
    let start = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for (i, (_, addr)) in targets.iter().enumerate() {
        let addr = *addr;
        runs.spawn(async move { (i, series(addr, start, length).await) });
    }
    let mut results = runs.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    println!(
        "one blackholed instance among three, connect_timeout 1s, a connection every 50 ms for {length:?}"
    );
    println!("cairn: {}", support::cairn::bin());
    for ((name, _), (_, samples)) in targets.iter().zip(&results) {
        report(name, samples);
    }
}

/// `(connection number, started at, exchange time)` of each connection to `addr`.
async fn series(
    addr: SocketAddr,
    start: Instant,
    length: Duration,
) -> Vec<(usize, Duration, Duration)> {
    let mut out = Vec::new();
    let mut next = start;
    let mut n = 0;
    while start.elapsed() < length {
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        next += Duration::from_millis(50);
        let at = start.elapsed();
        let began = Instant::now();
        let greeted = greeting(addr).await;
        assert!(greeted.is_some(), "connection {n} to {addr} was lost");
        out.push((n, at, began.elapsed()));
        n += 1;
    }
    out
}

fn report(name: &str, samples: &[(usize, Duration, Duration)]) {
    println!("\n{name}");
    println!("| connections | from | median | worst | waited for the timeout |");
    println!("| --- | --- | --- | --- | --- |");
    // The first 20 connections one by one in windows of 5, then one row per 5 s.
    let mut windows: Vec<&[(usize, Duration, Duration)]> =
        samples[..20.min(samples.len())].chunks(5).collect();
    let rest = &samples[20.min(samples.len())..];
    let mut from = 0;
    while from < rest.len() {
        let t0 = rest[from].1.as_secs() / 5 * 5;
        let to = rest[from..]
            .iter()
            .position(|s| s.1.as_secs() / 5 * 5 != t0)
            .map_or(rest.len(), |p| from + p);
        windows.push(&rest[from..to]);
        from = to;
    }
    for w in windows {
        let mut times: Vec<Duration> = w.iter().map(|s| s.2).collect();
        times.sort();
        let slow = times.iter().filter(|t| **t >= TIMED_OUT).count();
        println!(
            "| {}–{} | {:.1} s | {:.2} ms | {:.2} ms | {slow} |",
            w[0].0 + 1,
            w[w.len() - 1].0 + 1,
            w[0].1.as_secs_f64(),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
        );
    }
    let slow = samples.iter().filter(|s| s.2 >= TIMED_OUT).count();
    println!(
        "{slow} of {} connections waited for the connect timeout",
        samples.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
