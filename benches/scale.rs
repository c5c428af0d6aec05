//! cairn's footprint at scale: 100 000 instances across 10 000 services written into a real
//! etcd, a third in each value format (plain `host:port`, JSON, etcd's naming/endpoints), no
//! metadata. Printed:
//! - cold start to ready: `cairn run` started until `/readyz` answers 200;
//! - resident memory after the sync (`VmRSS`), beside the same cairn with no registry;
//! - the peak of resident memory while a client reads `GET /services` (the peak is reset
//!   before, through `/proc/PID/clear_refs`), and the document's size;
//! - `GET /services?service=NAME` for one service.
//!
//! `CAIRN_BIN` picks the cairn binary (a release build is what a node runs);
//! `CAIRN_SCALE_SERVICES` and `CAIRN_SCALE_PER_SERVICE` change the sizes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // a bench measures wall time

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::cairn::{Cairn, ADMIN};
use support::etcd::Etcd;
use support::http::memory_kib;

/// Puts per transaction: etcd refuses more than 128 operations in one.
const PER_TXN: usize = 128;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let services = env("CAIRN_SCALE_SERVICES", 10_000);
    let per = env("CAIRN_SCALE_PER_SERVICE", 10);
    let runtime = tokio::runtime::Runtime::new().expect("building a runtime");
    runtime.block_on(run(services, per));
}

/// The value of instance `n` in one of the three formats, in turn.
fn value(n: usize) -> String {
    let addr = format!(
        "10.{}.{}.{}:8080",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    );
    match n % 3 {
        0 => addr,
        1 => format!("{{\"addr\":\"{addr}\"}}"),
        _ => format!("{{\"Op\":0,\"Addr\":\"{addr}\",\"Metadata\":null}}"),
    }
}

async fn run(services: usize, per: usize) {
    let etcd = Etcd::start_with(&["--quota-backend-bytes", "4294967296"]).await;
    let mut kv = etcd.client().await;
    let total = services * per;
    let began = Instant::now();
    let keys: Vec<(String, String)> = (0..total)
        .map(|n| {
            (
                format!("/services/svc-{:05}/i-{:02}", n / per, n % per),
                value(n),
            )
        })
        .collect();
    for chunk in keys.chunks(PER_TXN) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        kv.txn(Txn::new().and_then(puts))
            .await
            .expect("writing instances");
    }
    println!(
        "wrote {total} instances in {services} services in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    println!("cairn: {}", support::cairn::bin());

    let config = format!("[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}", etcd.endpoint());
    // Baseline: the same cairn on an empty prefix.
    let empty = Cairn::start(&config.replace("[etcd]\n", "[etcd]\nprefix = \"/empty/\"\n")).await;
    empty.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (empty_rss, _) = memory_kib(empty.pid());
    drop(empty);

    let started = Instant::now();
    let cairn = Cairn::start(&config).await;
    loop {
        if cairn.get("/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    // jemalloc hands freed memory back within a second or two: measure after it settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, peak_at_sync) = memory_kib(cairn.pid());

    std::fs::write(format!("/proc/{}/clear_refs", cairn.pid()), "5")
        .expect("resetting the peak (needs root)");
    let before = memory_kib(cairn.pid()).1;
    let read = Instant::now();
    let size = get_all(cairn.admin, "/services").await;
    let read_for = read.elapsed();
    let (_, peak) = memory_kib(cairn.pid());
    let one = get_all(cairn.admin, "/services?service=svc-04242").await;

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("\n| {total} instances, {services} services | value |");
    println!("| --- | --- |");
    println!(
        "| cold start to ready (`cairn run` until `/readyz` is 200) | {:.0} ms |",
        ready.as_secs_f64() * 1000.0
    );
    println!("| RSS after the sync | {:.1} MiB |", mib(rss));
    println!("| RSS with an empty registry | {:.1} MiB |", mib(empty_rss));
    println!(
        "| per instance, over the empty registry | {:.0} bytes |",
        (rss.saturating_sub(empty_rss) * 1024) as f64 / total as f64
    );
    println!(
        "| peak RSS during the sync | {:.1} MiB |",
        mib(peak_at_sync)
    );
    println!(
        "| `GET /services`: {:.1} MiB in {:.0} ms; peak RSS meanwhile | {:.1} MiB (+{:.1} MiB) |",
        size as f64 / 1048576.0,
        read_for.as_secs_f64() * 1000.0,
        mib(peak),
        mib(peak.saturating_sub(before))
    );
    println!("| `GET /services?service=…` | {one} bytes |");
}

/// `GET path` over HTTP/1.0, read to the end; returns the body's size.
async fn get_all(addr: std::net::SocketAddr, path: &str) -> usize {
    let mut s = TcpStream::connect(addr).await.expect("connecting to admin");
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .expect("sending the request");
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.expect("reading the answer");
    let head = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    assert!(body.starts_with(b"HTTP/1.0 200") || body.starts_with(b"HTTP/1.1 200"));
    body.len() - head - 4
}
