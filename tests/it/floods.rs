//! Floods: thousands of connections against a small and the default connection cap, and
//! slowloris clients over HTTP/1.1 and h2c. Throughout, the admin endpoint answers; after each,
//! cairn goes back to idle (under 5% of a CPU) and to about its starting memory.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::cairn::{Cairn, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::http::memory_kib;
use crate::support::raw::{RawUpstream, Reply};
use crate::support::{cpu_share, eventually, patient};

const SOON: Duration = Duration::from_secs(10);

/// cairn with one HTTP service `web` (to a raw upstream) whose listener has `limits`.
async fn setup(limits: &str) -> (Etcd, RawUpstream, Cairn) {
    let etcd = Etcd::start().await;
    let up = RawUpstream::start(Reply::Ok).await;
    etcd.client()
        .await
        .put("/services/web/raw", up.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n{limits}\n",
        etcd.endpoint()
    ))
    .await;
    cairn.wait_instances("web", &["raw"], SOON).await;
    (etcd, up, cairn)
}

/// Opens `n` connections to `addr`, each sending `first` (maybe nothing) and then holding on.
async fn flood(addr: SocketAddr, n: usize, first: &'static [u8]) -> Vec<TcpStream> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(async move {
            // Past the cap and its backlog the kernel drops SYNs: such a client just fails here.
            let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            if !first.is_empty() {
                s.write_all(first).await.ok()?;
            }
            Some(s)
        });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        held.extend(r.ok().flatten());
    }
    held
}

/// The admin endpoint answers within a few seconds.
async fn admin_answers(cairn: &Cairn) {
    let answered =
        tokio::time::timeout(patient(Duration::from_secs(5)), cairn.get("/healthz")).await;
    assert!(
        matches!(answered, Ok((200, _))),
        "the admin endpoint did not answer during the flood"
    );
}

/// The descriptors process `pid` has open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// What cairn looked like before a flood.
struct Baseline {
    rss: u64,
    files: usize,
}

/// After a flood, cairn settles: every flood connection gone, idle CPU, and memory back near
/// where it started.
async fn settles(cairn: &Cairn, before: Baseline) {
    eventually(SOON, "every flood connection is closed", || async {
        (open_files(cairn.pid()) <= before.files + 2).then_some(())
    })
    .await;
    let share = cpu_share(cairn.pid(), Duration::from_secs(2)).await;
    assert!(
        share < 0.05,
        "cairn used {:.1}% of a CPU idle after the flood",
        share * 100.0
    );
    // jemalloc hands freed memory back after about a second.
    let rss_before = before.rss;
    eventually(
        SOON,
        "memory returns to within 10% of where it started",
        || async { (memory_kib(cairn.pid()).0 <= rss_before + rss_before / 10).then_some(()) },
    )
    .await;
}

/// cairn once warmed up: a few requests served.
async fn warmed(cairn: &Cairn) -> Baseline {
    for _ in 0..20 {
        let _ = crate::support::raw::exchange(
            cairn.listen(0),
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
            Duration::from_millis(200),
        )
        .await;
        admin_answers(cairn).await;
    }
    Baseline {
        rss: memory_kib(cairn.pid()).0,
        files: open_files(cairn.pid()),
    }
}

#[tokio::test]
async fn five_thousand_connections_against_a_cap_of_100_and_the_default() {
    for limits in [
        "max_connections = 100\nidle_timeout = \"2s\"",
        "idle_timeout = \"2s\"",
    ] {
        let (_etcd, _up, cairn) = setup(limits).await;
        let before = warmed(&cairn).await;
        let held = flood(cairn.listen(0), 5000, b"").await;
        assert!(
            held.len() >= 100,
            "only {} connections got through",
            held.len()
        );
        admin_answers(&cairn).await;
        drop(held);
        settles(&cairn, before).await;
    }
}

#[tokio::test]
async fn slowloris_over_http1_and_h2c_is_cut_and_forgotten() {
    let (_etcd, _up, cairn) = setup("idle_timeout = \"1s\"").await;
    let before = warmed(&cairn).await;
    // Half a request head, then nothing.
    let http1 = flood(
        cairn.listen(0),
        1000,
        b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ",
    )
    .await;
    // The h2 preface and a SETTINGS frame, then nothing.
    let h2c = flood(
        cairn.listen(0),
        1000,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .await;
    assert!(
        http1.len() + h2c.len() >= 1000,
        "the slow clients could not connect"
    );
    admin_answers(&cairn).await;
    // cairn cuts them itself: the clients never close.
    settles(&cairn, before).await;
    drop((http1, h2c));
}
