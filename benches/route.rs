//! Routing latency, measured beside its baselines in one run.
//!
//! TCP: 64-byte request/response exchanges over one persistent connection, through
//!   (a) nothing: direct to the upstream;
//!   (b) a plain tokio relay with no discovery: the floor any proxy pays;
//!   (c) cairn, fed by a real etcd.
//! Many short rounds are interleaved, in a rotating order, so drift on the machine (a virtual
//! machine's wake-up costs change over seconds) hits all three alike.
//! Prints p50, p99 and p99.9 for each, and cairn's added latency over (a) and (b).
//!
//! `CAIRN_BENCH_EXCHANGES` sets the measured exchanges per target (default 100 000).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cairn::config::{AdminConfig, Config, EtcdConfig, Protocol, ServiceConfig};
use cairn::{Balance, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 40;
const WARMUP: usize = 200;
const MESSAGE: usize = 64;

fn main() {
    let exchanges: usize = std::env::var("CAIRN_BENCH_EXCHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
        / ROUNDS;

    // Each party gets its own runtime, as it would in its own process.
    let upstream_rt = runtime(1);
    let relay_rt = runtime(1);
    let cairn_rt = runtime(1);

    let upstream = upstream_rt.block_on(echo_server());
    let relay = relay_rt.block_on(plain_relay(upstream));

    let etcd = cairn_rt.block_on(support::etcd::Etcd::start());
    let stop = CancellationToken::new();
    let cairn = cairn_rt.block_on(start_cairn(&etcd.endpoint(), upstream, stop.clone()));

    let targets = [
        ("direct", upstream),
        ("plain relay", relay),
        ("cairn", cairn),
    ];
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(ROUNDS * exchanges); targets.len()];
    for round in 0..ROUNDS {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            samples[i].extend(tcp_round(targets[i].1, exchanges));
        }
    }

    println!();
    println!(
        "route/tcp: {MESSAGE}-byte request/response over one persistent connection, {ROUNDS} interleaved rounds x {exchanges} exchanges"
    );
    report(&targets.map(|t| t.0), &mut samples);

    stop.cancel();
    drop(etcd);
}

fn runtime(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("building a runtime")
}

/// An upstream that echoes every byte back.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The floor: accept, connect to one fixed upstream, relay both ways. No discovery, no picking.
async fn plain_relay(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = inbound.set_nodelay(true);
                let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}

/// Runs cairn in-process with one TCP listener for service `echo`, registered in etcd.
async fn start_cairn(endpoint: &str, upstream: SocketAddr, stop: CancellationToken) -> SocketAddr {
    let mut kv = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connecting to etcd");
    kv.put("/services/echo/echo-1", upstream.to_string(), None)
        .await
        .expect("registering the upstream");
    let config = Config {
        etcd: EtcdConfig {
            endpoints: vec![endpoint.to_string()],
            ..EtcdConfig::default()
        },
        admin: AdminConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
        },
        services: vec![ServiceConfig {
            name: "echo".to_string(),
            listen: "127.0.0.1:0".parse().expect("an address"),
            protocol: Protocol::Tcp,
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            retries: 2,
        }],
    };
    let server = Server::bind(config).await.expect("binding cairn");
    let listen = server.listen_addrs()[0].1;
    let store = server.store();
    tokio::spawn(server.run(stop, Duration::from_secs(1)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.cell("echo").load().is_empty() {
        assert!(
            Instant::now() < deadline,
            "cairn did not discover the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    listen
}

/// One persistent connection: `WARMUP` unmeasured exchanges, then `n` measured ones (ns each).
fn tcp_round(addr: SocketAddr, n: usize) -> Vec<u64> {
    let mut s = TcpStream::connect(addr).expect("connecting");
    s.set_nodelay(true).expect("setting TCP_NODELAY");
    let request = [0x5au8; MESSAGE];
    let mut reply = [0u8; MESSAGE];
    let mut out = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let start = Instant::now();
        s.write_all(&request).expect("writing a request");
        s.read_exact(&mut reply).expect("reading a reply");
        if i >= WARMUP {
            out.push(start.elapsed().as_nanos() as u64);
        }
    }
    assert_eq!(reply, request, "the echo came back changed");
    out
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Prints the percentiles of each target, then the last target's added latency over the others.
fn report(names: &[&str], samples: &mut [Vec<u64>]) {
    const QS: [(f64, &str); 3] = [(0.50, "p50"), (0.99, "p99"), (0.999, "p99.9")];
    let mut table = Vec::new();
    println!("  {:<22} {:>10} {:>10} {:>10}", "", "p50", "p99", "p99.9");
    for (name, s) in names.iter().zip(samples.iter_mut()) {
        s.sort_unstable();
        let row: Vec<u64> = QS.iter().map(|(q, _)| percentile(s, *q)).collect();
        println!(
            "  {:<22} {:>10} {:>10} {:>10}",
            name,
            us(row[0]),
            us(row[1]),
            us(row[2])
        );
        table.push(row);
    }
    let last = table.len() - 1;
    for (i, name) in names[..last].iter().enumerate() {
        let added: Vec<String> = (0..QS.len())
            .map(|q| signed_us(table[last][q] as i64 - table[i][q] as i64))
            .collect();
        println!(
            "  {:<22} {:>10} {:>10} {:>10}",
            format!("{} over {name}", names[last]),
            added[0],
            added[1],
            added[2]
        );
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}µs", ns as f64 / 1000.0)
}

fn signed_us(ns: i64) -> String {
    format!("{:+.1}µs", ns as f64 / 1000.0)
}
