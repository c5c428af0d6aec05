//! The soak run behind `scripts/soak`: mixed TCP and HTTP load through a release cairn for a
//! long time, while instances churn every 50 ms and etcd restarts every few minutes. Every
//! minute it prints cairn's memory, open files and CPU, the errors, and the latency
//! percentiles of that minute; all of them must stay flat.
//!
//! `--minutes N` (default 30), `--etcd-restart-minutes N` (default 5). `CAIRN_BIN` names the
//! cairn binary to run.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // a soak run keeps real time

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use support::cairn::{Cairn, ADMIN};
use support::etcd::Etcd;
use support::http::memory_kib;
use support::upstream::Tagged;

/// Clients of each kind; with cairn, etcd and the upstreams they share the machine.
const TCP_CLIENTS: usize = 4;
const HTTP_CLIENTS: usize = 4;
/// Instances of each service that churn, beside two that never leave.
const CHURNING: usize = 8;

/// What the clients saw in the current minute.
#[derive(Default)]
struct Minute {
    latencies: Mutex<Vec<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    /// What failed, by kind of client and error.
    why: Mutex<std::collections::BTreeMap<String, u64>>,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let minutes = arg("--minutes", 30);
    let restart_every = arg("--etcd-restart-minutes", 5);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(soak(minutes, restart_every));
}

/// An HTTP/1.1 upstream answering `ok`.
async fn http_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

async fn soak(minutes: u64, restart_every: u64) {
    let mut etcd = Etcd::start().await;
    // The upstreams live as long as the run: dropping a `Tagged` closes it.
    let mut tagged = Vec::new();
    let mut http_ups = Vec::new();
    for i in 0..2 + CHURNING {
        tagged.push(Tagged::start(&format!("t{i}")).await);
        http_ups.push(http_upstream().await);
    }
    let tcp_ups: Vec<SocketAddr> = tagged.iter().map(|t| t.addr).collect();
    let mut kv = etcd.client().await;
    for i in 0..2 {
        kv.put(
            format!("/services/tcp/stable-{i}"),
            tcp_ups[i].to_string(),
            None,
        )
        .await
        .expect("a put");
        kv.put(
            format!("/services/web/stable-{i}"),
            http_ups[i].to_string(),
            None,
        )
        .await
        .expect("a put");
    }
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n\
         [[service]]\nname = \"tcp\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
         [[register]]\nservice = \"soak\"\nid = \"node\"\naddr = \"10.0.0.1:80\"\nttl = \"5s\"\n",
        etcd.endpoint()
    ))
    .await;
    cairn
        .wait_instances("tcp", &["stable-0", "stable-1"], Duration::from_secs(10))
        .await;
    let (tcp, web) = (cairn.listen(0), cairn.listen(1));
    let tcp_minute = Arc::new(Minute::default());
    let http_minute = Arc::new(Minute::default());
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for _ in 0..TCP_CLIENTS {
        let (minute, stop) = (Arc::clone(&tcp_minute), Arc::clone(&stop));
        clients.push(std::thread::spawn(move || tcp_client(tcp, &minute, &stop)));
    }
    for _ in 0..HTTP_CLIENTS {
        let (minute, stop) = (Arc::clone(&http_minute), Arc::clone(&stop));
        clients.push(std::thread::spawn(move || http_client(web, &minute, &stop)));
    }

    println!(
        "soak: {minutes} min, {TCP_CLIENTS} TCP and {HTTP_CLIENTS} HTTP clients, {CHURNING} instances per service churning every 50 ms, etcd restarted every {restart_every} min"
    );
    println!(
        "TCP: a fresh connection per 64-byte exchange. HTTP: GET over a kept-alive connection."
    );
    println!(
        "{:>4} {:>8} {:>5} {:>5} | {:>8} {:>5} {:>6} {:>6} {:>7} | {:>8} {:>5} {:>6} {:>6} {:>7}",
        "min",
        "rss KiB",
        "files",
        "cpu%",
        "tcp",
        "errs",
        "p50µs",
        "p99µs",
        "p99.9µs",
        "http",
        "errs",
        "p50µs",
        "p99µs",
        "p99.9µs"
    );
    let start = Instant::now();
    let mut next_report = Duration::from_secs(60);
    let mut cpu_before = support::cpu_time(cairn.pid());
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(minutes * 60) {
        // Churn: put or delete one instance of each service, every 50 ms.
        let i = (n as usize) % CHURNING;
        let (tcp_key, web_key) = (
            format!("/services/tcp/churn-{i}"),
            format!("/services/web/churn-{i}"),
        );
        let result = if n % 2 == 0 {
            let a = kv
                .put(tcp_key, tcp_ups[2 + i].to_string(), None)
                .await
                .map(drop);
            a.and(
                kv.put(web_key, http_ups[2 + i].to_string(), None)
                    .await
                    .map(drop),
            )
        } else {
            let a = kv.delete(tcp_key, None).await.map(drop);
            a.and(kv.delete(web_key, None).await.map(drop))
        };
        if result.is_err() {
            kv = etcd.client().await;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;

        let elapsed = start.elapsed();
        if restart_every > 0 && elapsed.as_secs() > 0 && n % (restart_every * 60 * 20) == 0 {
            etcd.restart().await;
            kv = etcd.client().await;
        }
        if elapsed >= next_report {
            next_report += Duration::from_secs(60);
            let cpu_now = support::cpu_time(cairn.pid());
            let cpu = (cpu_now - cpu_before).as_secs_f64() / 60.0 * 100.0;
            cpu_before = cpu_now;
            report(
                elapsed.as_secs() / 60,
                &cairn,
                [&tcp_minute, &http_minute],
                cpu,
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let mut warnings: std::collections::BTreeMap<String, u64> = Default::default();
    for line in cairn.log().lines().filter(|l| l.contains(" WARN ")) {
        let what = line.split(" WARN ").nth(1).unwrap_or(line);
        let what: String = what
            .split_whitespace()
            .filter(|w| !w.starts_with("addr="))
            .collect::<Vec<_>>()
            .join(" ");
        *warnings.entry(what).or_default() += 1;
    }
    println!("cairn's warnings over the run:");
    for (what, n) in warnings {
        println!("  {n} x {what}");
    }
}

fn report(min: u64, cairn: &Cairn, minutes: [&Minute; 2], cpu: f64) {
    let files = std::fs::read_dir(format!("/proc/{}/fd", cairn.pid()))
        .map(Iterator::count)
        .unwrap_or(0);
    let mut line = format!(
        "{:>4} {:>8} {:>5} {:>5.1}",
        min,
        memory_kib(cairn.pid()).0,
        files,
        cpu
    );
    for minute in minutes {
        let mut lat = std::mem::take(&mut *minute.latencies.lock().expect("the lock"));
        lat.sort_unstable();
        let p = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |ns| *ns as f64 / 1000.0)
        };
        line.push_str(&format!(
            " | {:>8} {:>5} {:>6.0} {:>6.0} {:>7.0}",
            minute.ok.swap(0, Ordering::Relaxed),
            minute.errors.swap(0, Ordering::Relaxed),
            p(0.5),
            p(0.99),
            p(0.999)
        ));
    }
    println!("{line}");
    for minute in minutes {
        for (why, n) in std::mem::take(&mut *minute.why.lock().expect("the lock")) {
            println!("       {n} x {why}");
        }
    }
}

/// Connect, read the greeting, echo 64 bytes, close: over and over.
fn tcp_client(addr: SocketAddr, minute: &Minute, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let result = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut line = String::new();
            r.read_line(&mut line)?;
            if line.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            s.write_all(&[7u8; 64])?;
            let mut back = [0u8; 64];
            r.read_exact(&mut back)?;
            Ok(())
        })();
        record(minute, "tcp", result, t);
    }
}

/// GET over one keep-alive connection, reconnecting after an error.
fn http_client(addr: SocketAddr, minute: &Minute, stop: &AtomicBool) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let result = (|| -> std::io::Result<()> {
            if conn.is_none() {
                let s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let r = BufReader::new(s.try_clone()?);
                conn = Some((s, r));
            }
            let (s, r) = conn.as_mut().expect("just connected");
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")?;
            let mut line = String::new();
            let mut length = 0;
            let mut status_ok = false;
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if line.starts_with("HTTP/1.1 ") {
                    status_ok = line.starts_with("HTTP/1.1 200");
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            r.read_exact(&mut body)?;
            if status_ok {
                Ok(())
            } else {
                Err(std::io::Error::other("not a 200"))
            }
        })();
        if result.is_err() {
            conn = None;
        }
        record(minute, "http", result, t);
    }
}

fn record(minute: &Minute, kind: &str, result: std::io::Result<()>, t: Instant) {
    match result {
        Ok(()) => {
            minute.ok.fetch_add(1, Ordering::Relaxed);
            minute
                .latencies
                .lock()
                .expect("the lock")
                .push(t.elapsed().as_nanos() as u64);
        }
        Err(e) => {
            minute.errors.fetch_add(1, Ordering::Relaxed);
            *minute
                .why
                .lock()
                .expect("the lock")
                .entry(format!("{kind}: {e}"))
                .or_default() += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
