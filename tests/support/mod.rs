//! Test harness: real etcd processes, real cairn processes, real sockets.
//!
//! Every process gets loopback ports and a temporary directory, and is killed on drop. cairn
//! binds its listeners to port 0 and the harness reads the addresses back, so no port can be
//! taken in between. When a test fails, the logs of the processes it started are printed.
//!
//! Every deadline goes through [`patient`]: set `CAIRN_TEST_PATIENCE=3` on a slow or loaded
//! machine to give every wait three times as long.
#![allow(dead_code)]

pub mod browser;
pub mod cairn;
pub mod etcd;
pub mod grpc;
pub mod h2raw;
pub mod http;
pub mod pki;
pub mod raw;
pub mod upstream;

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1. The port is released before returning, so another process may
/// grab it first: use it for an address nobody should listen on, or retry on failure.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port on 127.0.0.1")
        .port()
}

/// `deadline`, stretched by `CAIRN_TEST_PATIENCE` (a factor, 1 by default).
pub fn patient(deadline: Duration) -> Duration {
    let factor = std::env::var("CAIRN_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0);
    deadline.mul_f64(factor)
}

/// How long a test waits for something that should take milliseconds: generous, because a
/// loaded CI machine is slow, and scaled by [`patient`].
pub fn soon() -> Duration {
    patient(Duration::from_secs(10))
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `deadline`
/// (stretched by [`patient`]).
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = patient(deadline);
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last `n` lines of a log file, for failure messages.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The CPU time process `pid` has used so far (user and system), from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // Linux reports CPU time in clock ticks of 1/100 s on every platform cairn runs on.
    Duration::from_millis(ticks * 10)
}

/// The share of one CPU process `pid` used over the next `window`.
pub async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_time(pid);
    tokio::time::sleep(window).await;
    (cpu_time(pid) - before).as_secs_f64() / window.as_secs_f64()
}

/// The value of one series (name plus labels, exactly as printed) in a Prometheus text page.
pub fn metric_in(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {series} not found in:\n{page}"))
        .trim()
        .parse()
        .expect("metric values are numbers")
}

/// etcd's current revision, as the header of a read reports it.
pub async fn head(kv: &mut etcd_client::Client) -> i64 {
    kv.get("/", None)
        .await
        .expect("reading etcd")
        .header()
        .expect("a response header")
        .revision()
}

/// The instances of `service` as etcd holds them under `/services/`: (id, raw value), sorted
/// by id, as `Cairn::instances` shows them.
pub async fn etcd_instances(kv: &mut etcd_client::Client, service: &str) -> Vec<(String, String)> {
    let prefix = format!("/services/{service}/");
    let got = kv
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("listing the service in etcd");
    let mut all: Vec<(String, String)> = got
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv.key_str().expect("a UTF-8 key");
            let id = key.strip_prefix(prefix.as_str()).unwrap_or(key);
            (
                id.to_string(),
                kv.value_str().expect("a UTF-8 value").to_string(),
            )
        })
        .collect();
    all.sort();
    all
}
