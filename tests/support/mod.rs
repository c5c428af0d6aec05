//! Test harness: real etcd processes, real cairn processes, real sockets.
//!
//! Every process gets free loopback ports and a temporary directory, and is killed on drop. When
//! a test fails, the logs of the processes it started are printed.
#![allow(dead_code)]

pub mod cairn;
pub mod etcd;
pub mod http;
pub mod upstream;

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1. The port is released before returning, so another process may
/// grab it first; callers that bind it retry on failure.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port on 127.0.0.1")
        .port()
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
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
