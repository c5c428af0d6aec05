//! How fast cairn reacts, end to end, with real etcd and real cairn processes: the times the
//! integration tests deliberately do not bound (a loaded CI machine would make such bounds flaky).
//!
//! - a put is routable through a cairn listener; a delete stops being routed;
//! - an instance whose lease nobody keeps alive (TTL 2 s) leaves the data plane;
//! - `cairn register --ttl 2s` killed with -9: its key leaves etcd; stopped with SIGTERM: at once;
//! - etcd down for 4 s (longer than the 2 s TTL): the registration is back after etcd returns;
//! - a TCP health check (every 200 ms, fall 3): the key leaves etcd after the target closes;
//! - one node registers with an HTTP check (every 300 ms, fall 2), another proxies: the instance
//!   leaves the second node's rotation after the backend dies;
//! - cairn started while etcd is down, with a cache file (`[cache]`): its first routed
//!   connection.
//!
//! Each is repeated (`CAIRN_BENCH_REPEAT`, default 5; 20 for puts and deletes) and printed as
//! min / median / max. Polling costs about 0.1 ms per probe, so figures are that fine.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // a bench measures wall time

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use tokio::net::TcpListener;

use support::cairn::{config, Cairn, Proc, ADMIN};
use support::etcd::Etcd;
use support::http::{curl_status, PyUpstream};
use support::upstream::{greeting, Tagged};

/// Give up on any one measurement after this long: something is broken, not slow.
const LIMIT: Duration = Duration::from_secs(30);

fn main() {
    let repeat: usize = std::env::var("CAIRN_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Runtime::new().expect("building a runtime");
    runtime.block_on(async {
        println!("reaction times, {repeat} runs each unless noted (min / median / max)");
        discovery(repeat * 4).await;
        lease_expiry(repeat).await;
        registrar_exit(repeat).await;
        outage(repeat.min(3)).await;
        health_check(repeat).await;
        end_to_end(repeat).await;
        cold_start(repeat).await;
    });
}

/// Polls `check` until it holds; returns how long that took.
async fn until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        tokio::task::yield_now().await;
    }
    start.elapsed()
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "  {what:<58} {:>10} {:>10} {:>10}  (n={})",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    );
}

/// Whether `key` exists in etcd.
async fn present(mut kv: Client, key: String) -> bool {
    kv.get(key, None).await.is_ok_and(|r| !r.kvs().is_empty())
}

/// Put → routable and delete → not routed, through a cairn TCP listener.
async fn discovery(n: usize) {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["svc"], "")).await;
    cairn.wait_ready().await;
    let listen = cairn.listen(0);
    let up = Tagged::start("up").await;
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    for _ in 0..n {
        kv.put("/services/svc/up", up.addr.to_string(), None)
            .await
            .expect("a put");
        puts.push(
            until("a put is routed", || async {
                greeting(listen).await.as_deref() == Some("up")
            })
            .await,
        );
        kv.delete("/services/svc/up", None).await.expect("a delete");
        deletes.push(
            until("a delete is honoured", || async {
                greeting(listen).await.is_none()
            })
            .await,
        );
    }
    report("put -> routable through a cairn listener", puts);
    report("delete -> no longer routed", deletes);
}

/// `cairn run` started with etcd down and a cache file: from the start to the first connection
/// routed to the cached instance.
async fn cold_start(n: usize) {
    let mut etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let up = Tagged::start("cached").await;
    kv.put("/services/svc/cached", up.addr.to_string(), None)
        .await
        .expect("a put");
    let dir = tempfile::tempdir().expect("a temp dir");
    let cache = dir.path().join("registry.json");
    let text = format!(
        "{}\n[cache]\npath = \"{}\"\n",
        config(&etcd.endpoint(), &["svc"], ""),
        cache.display()
    );
    let mut first = Cairn::start(&text).await;
    until("the cache file is written", || async {
        std::fs::read_to_string(&cache).is_ok_and(|b| b.contains(&up.addr.to_string()))
    })
    .await;
    first.signal("TERM");
    first.wait_exit(LIMIT).await;
    etcd.kill();
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let cairn = Cairn::start(&text).await;
        let listen = cairn.listen(0);
        until("the cached instance is routed", || async {
            greeting(listen).await.as_deref() == Some("cached")
        })
        .await;
        times.push(started.elapsed());
    }
    report(
        "etcd down, cache file: `cairn run` -> first routed connection",
        times,
    );
}

/// An instance under a 2 s lease nobody keeps alive leaves cairn's data plane.
async fn lease_expiry(n: usize) {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["l"], "")).await;
    cairn.wait_ready().await;
    let listen = cairn.listen(0);
    let up = Tagged::start("leased").await;
    let mut times = Vec::new();
    for _ in 0..n {
        let lease = kv.lease_grant(2, None).await.expect("a lease").id();
        let granted = Instant::now();
        kv.put(
            "/services/l/leased",
            up.addr.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("a put");
        until("the instance is routed", || async {
            greeting(listen).await.is_some()
        })
        .await;
        until("the expired instance leaves", || async {
            greeting(listen).await.is_none()
        })
        .await;
        times.push(granted.elapsed());
    }
    report(
        "lease granted (ttl 2s, never kept alive) -> not routed",
        times,
    );
}

fn register(endpoint: &str, id: &str) -> Proc {
    Proc::spawn(&[
        "register",
        "--endpoints",
        endpoint,
        "--service",
        "s",
        "--id",
        id,
        "--addr",
        "10.0.0.1:80",
        "--ttl",
        "2s",
    ])
}

/// `cairn register` killed with -9 (the key waits for its TTL) or stopped with SIGTERM.
async fn registrar_exit(n: usize) {
    let etcd = Etcd::start().await;
    let kv = etcd.client().await;
    let (mut killed, mut stopped) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (signal, times) in [("KILL", &mut killed), ("TERM", &mut stopped)] {
            let key = format!("/services/s/{signal}-{i}");
            let proc = register(&etcd.endpoint(), &format!("{signal}-{i}"));
            until("registered", || present(kv.clone(), key.clone())).await;
            proc.signal(signal);
            times.push(
                until("deregistered", || {
                    let present = present(kv.clone(), key.clone());
                    async move { !present.await }
                })
                .await,
            );
            drop(proc);
        }
    }
    report(
        "cairn register (ttl 2s) kill -9 -> key gone from etcd",
        killed,
    );
    report("cairn register SIGTERM -> key gone from etcd", stopped);
}

/// etcd down for 4 s, longer than the 2 s TTL: the registration is back after it returns.
async fn outage(n: usize) {
    let mut etcd = Etcd::start().await;
    let _reg = register(&etcd.endpoint(), "r");
    let mut times = Vec::new();
    for _ in 0..n {
        let kv = etcd.client().await;
        until("registered", || present(kv.clone(), "/services/s/r".into())).await;
        etcd.kill();
        tokio::time::sleep(Duration::from_secs(4)).await;
        etcd.restart().await;
        let back = Instant::now();
        let kv = etcd.client().await;
        // The old key may survive the restart under its old lease; wait for a live lease.
        until("registered again under a live lease", || {
            let mut kv = kv.clone();
            async move {
                let Ok(r) = kv.get("/services/s/r", None).await else {
                    return false;
                };
                let Some(lease) = r.kvs().first().map(|k| k.lease()) else {
                    return false;
                };
                kv.lease_time_to_live(lease, None)
                    .await
                    .is_ok_and(|t| t.ttl() > 0)
            }
        })
        .await;
        times.push(back.elapsed());
    }
    report("etcd back after 4 s down -> registration written", times);
}

/// A TCP health check every 200 ms, fall 3: the key leaves etcd after the target closes.
async fn health_check(n: usize) {
    let etcd = Etcd::start().await;
    let kv = etcd.client().await;
    let mut times = Vec::new();
    for i in 0..n {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("a target");
        let addr = target.local_addr().expect("its address");
        let config = format!(
            "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[register]]\nservice = \"hc\"\nid = \"i{i}\"\naddr = \"{addr}\"\n\
             [register.check]\ntcp = \"{addr}\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 3\n",
            etcd.endpoint()
        );
        let _cairn = Cairn::start(&config).await;
        let key = format!("/services/hc/i{i}");
        until("registered", || present(kv.clone(), key.clone())).await;
        drop(target);
        times.push(
            until("deregistered", || {
                let present = present(kv.clone(), key.clone());
                async move { !present.await }
            })
            .await,
        );
    }
    report("tcp check (200ms, fall 3) target closed -> key gone", times);
}

/// Node A registers a backend with an HTTP check (300 ms, fall 2); node B proxies to it.
async fn end_to_end(n: usize) {
    let etcd = Etcd::start().await;
    let proxying = format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n",
        etcd.endpoint()
    );
    let b = Cairn::start(&proxying).await;
    let listen: SocketAddr = b.listen(0);
    let mut times = Vec::new();
    for i in 0..n {
        let backend = PyUpstream::start("backend");
        let registering = format!(
            "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[register]]\nservice = \"api\"\nid = \"node-{i}\"\naddr = \"{}\"\nttl = \"4s\"\n\
             [register.check]\nhttp = \"http://{}/\"\ninterval = \"300ms\"\nrise = 1\nfall = 2\n",
            etcd.endpoint(),
            backend.addr,
            backend.addr
        );
        let _a = Cairn::start(&registering).await;
        let url = format!("http://{listen}/");
        until("routed through node B", || {
            let url = url.clone();
            async move { curl_status(&[&url]).0 == 200 }
        })
        .await;
        drop(backend);
        times.push(
            until("out of rotation at node B", || async {
                b.instances("api").await.is_empty()
            })
            .await,
        );
    }
    report(
        "http check (300ms, fall 2) backend died -> out of node B",
        times,
    );
}
