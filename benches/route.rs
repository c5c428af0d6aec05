//! Routing latency, measured beside its baselines in one run.
//!
//! TCP: 64-byte request/response exchanges through
//!   (a) nothing: direct to the upstream;
//!   (b) a plain tokio relay with no discovery: the floor any proxy pays;
//!   (c) cairn, fed by a real etcd;
//! first over one persistent connection, then over a fresh connection per exchange (accept,
//! pick, connect: the part where cairn differs from a plain relay).
//! HTTP: small GET requests over one keep-alive connection, direct, through a plain hyper
//! reverse proxy with a pooled client to one fixed upstream (no discovery, no header rewriting),
//! and through cairn's HTTP listener; then the most requests per second each sustains with
//! concurrent connections.
//!
//! Many short rounds are interleaved, in a rotating order, so drift on the machine (a virtual
//! machine's wake-up costs change over seconds) hits every target alike. Each party runs in its
//! own single-worker runtime, as if in its own process.
//!
//! `CAIRN_BENCH_EXCHANGES` sets the measured exchanges per target (default 100 000);
//! `CAIRN_BENCH_CONNECTS` the fresh connections per target (default 5 000);
//! `CAIRN_BENCH_SECONDS` the length of each throughput run (default 3).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // a bench measures wall time

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::admin::AdminConfig;
use cairn::etcd::EtcdConfig;
use cairn::proxy::{Limits, Protocol, RelayConfig, RouteConfig, ServiceConfig};
use cairn::{Config, Server};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 40;
const WARMUP: usize = 200;
const MESSAGE: usize = 64;
/// Concurrent keep-alive connections in the throughput runs: enough to keep two cores busy.
const CONNECTIONS: usize = 16;

#[derive(Clone, Copy)]
enum Kind {
    /// One persistent TCP connection.
    Tcp,
    /// A fresh TCP connection per exchange.
    Connect,
    /// One keep-alive HTTP/1.1 connection.
    Http,
}

fn main() {
    let exchanges: usize = env("CAIRN_BENCH_EXCHANGES", 100_000) / ROUNDS;
    let connects: usize = env("CAIRN_BENCH_CONNECTS", 5_000) / ROUNDS;
    let seconds = env("CAIRN_BENCH_SECONDS", 3) as u64;

    let upstream_rt = runtime(1);
    let relay_rt = runtime(1);
    let cairn_rt = runtime(1);

    let echo = upstream_rt.block_on(echo_server());
    let web = upstream_rt.block_on(http_server());
    let relay = relay_rt.block_on(plain_relay(echo));
    let http_relay = relay_rt.block_on(plain_http_proxy(web));

    let etcd = cairn_rt.block_on(support::etcd::Etcd::start());
    let stop = CancellationToken::new();
    let (cairn_tcp, cairn_http) =
        cairn_rt.block_on(start_cairn(&etcd.endpoint(), echo, web, stop.clone()));

    let targets = [
        ("direct", echo, Kind::Tcp),
        ("plain relay", relay, Kind::Tcp),
        ("cairn", cairn_tcp, Kind::Tcp),
        ("direct", echo, Kind::Connect),
        ("plain relay", relay, Kind::Connect),
        ("cairn", cairn_tcp, Kind::Connect),
        ("direct", web, Kind::Http),
        ("plain proxy", http_relay, Kind::Http),
        ("cairn", cairn_http, Kind::Http),
    ];
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(ROUNDS * exchanges); targets.len()];
    for round in 0..ROUNDS {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let (_, addr, kind) = targets[i];
            samples[i].extend(match kind {
                Kind::Tcp => measure(exchanges, WARMUP, TcpExchange::new(addr)),
                // Each exchange is its own connection: a few warm the caches, not the socket.
                Kind::Connect => measure(connects, WARMUP / 10, ConnectExchange(addr)),
                Kind::Http => measure(exchanges, WARMUP, HttpExchange::new(addr)),
            });
        }
    }

    let names = ["direct", "plain relay", "cairn"];
    println!();
    println!(
        "route/tcp: {MESSAGE}-byte request/response over one persistent connection, {ROUNDS} interleaved rounds x {exchanges} exchanges"
    );
    let tcp = report(&names, &mut samples[..3]);
    println!();
    println!(
        "route/connect: a fresh connection per {MESSAGE}-byte exchange (connect, exchange, close), same rounds x {connects}"
    );
    report(&names, &mut samples[3..6]);
    println!();
    println!("route/http: GET with a 3-byte body over one keep-alive connection, same rounds");
    let http = report(&["direct", "plain proxy", "cairn"], &mut samples[6..]);
    let tcp_added = tcp[2][0] as f64 - tcp[0][0] as f64;
    let http_added = http[2][0] as f64 - http[0][0] as f64;
    println!(
        "  added p50: http {:.1}µs, tcp {:.1}µs, ratio {:.2} (target: at most 2.00)",
        http_added / 1000.0,
        tcp_added / 1000.0,
        http_added / tcp_added
    );

    println!();
    println!("route/http throughput: {CONNECTIONS} keep-alive connections for {seconds}s each; the load generator shares the machine");
    for (name, addr) in [
        ("direct", web),
        ("plain proxy", http_relay),
        ("cairn", cairn_http),
    ] {
        let rps = throughput(addr, Duration::from_secs(seconds));
        println!("  {name:<22} {rps:>10.0} requests/s");
    }

    stop.cancel();
    drop(etcd);
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// The HTTP floor: a hyper server whose requests go, unchanged but for the URI, through a pooled
/// hyper-util client to one fixed upstream. No discovery, no retries, no header rewriting.
async fn plain_http_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the HTTP relay");
    let addr = listener.local_addr().expect("HTTP relay address");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        let client = client.clone();
                        async move {
                            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                            *req.uri_mut() = format!("http://{upstream}{path}")
                                .parse()
                                .expect("a valid upstream URI");
                            client.request(req).await
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 upstream answering every request with `ok\n`, keep-alive.
async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the HTTP upstream");
    let addr = listener.local_addr().expect("HTTP upstream address");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
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

/// Runs cairn in-process with a TCP listener for `echo` and an HTTP listener for `web`, both
/// registered in etcd; returns the two listen addresses once cairn routes to both.
async fn start_cairn(
    endpoint: &str,
    echo: SocketAddr,
    web: SocketAddr,
    stop: CancellationToken,
) -> (SocketAddr, SocketAddr) {
    let mut kv = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connecting to etcd");
    kv.put("/services/echo/echo-1", echo.to_string(), None)
        .await
        .expect("registering the echo upstream");
    kv.put("/services/web/web-1", web.to_string(), None)
        .await
        .expect("registering the HTTP upstream");
    let service = |name: &str, protocol| ServiceConfig {
        name: name.parse().expect("a valid service name"),
        listen: "127.0.0.1:0".parse().expect("an address"),
        protocol,
        route: RouteConfig::default(),
        limits: Limits::default(),
        key: None,
        health: None,
        relay: RelayConfig::default(),
    };
    let config = Config {
        etcd: EtcdConfig {
            endpoints: vec![endpoint.parse().expect("a valid endpoint")],
            ..EtcdConfig::default()
        },
        admin: AdminConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            ..AdminConfig::default()
        },
        services: vec![
            service("echo", Protocol::Tcp),
            service("web", Protocol::Http),
        ],
        ..Config::default()
    };
    let server = Server::bind(config).await.expect("binding cairn");
    let listens = server.listen_addrs();
    let store = server.store();
    tokio::spawn(server.run(stop, Duration::from_secs(1)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.cell("echo").load().is_empty() || store.cell("web").load().is_empty() {
        assert!(
            Instant::now() < deadline,
            "cairn did not discover the upstreams"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (listens[0].1, listens[1].1)
}

/// One request/response over an open connection.
trait Exchange {
    fn exchange(&mut self);
}

struct TcpExchange {
    stream: TcpStream,
    reply: [u8; MESSAGE],
}

impl TcpExchange {
    fn new(addr: SocketAddr) -> TcpExchange {
        let stream = TcpStream::connect(addr).expect("connecting");
        stream.set_nodelay(true).expect("setting TCP_NODELAY");
        TcpExchange {
            stream,
            reply: [0; MESSAGE],
        }
    }
}

impl Exchange for TcpExchange {
    fn exchange(&mut self) {
        let request = [0x5au8; MESSAGE];
        self.stream.write_all(&request).expect("writing a request");
        self.stream
            .read_exact(&mut self.reply)
            .expect("reading a reply");
        assert_eq!(self.reply, request, "the echo came back changed");
    }
}

/// One exchange over a connection opened for it and closed after it.
struct ConnectExchange(SocketAddr);

impl Exchange for ConnectExchange {
    fn exchange(&mut self) {
        let mut conn = TcpExchange::new(self.0);
        conn.exchange();
    }
}

/// A minimal keep-alive HTTP/1.1 client: the same cost whatever it talks to.
struct HttpExchange {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl HttpExchange {
    fn new(addr: SocketAddr) -> HttpExchange {
        let writer = TcpStream::connect(addr).expect("connecting");
        writer.set_nodelay(true).expect("setting TCP_NODELAY");
        let reader = BufReader::new(writer.try_clone().expect("cloning the stream"));
        HttpExchange {
            writer,
            reader,
            line: String::new(),
            body: Vec::new(),
        }
    }
}

impl Exchange for HttpExchange {
    fn exchange(&mut self) {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .expect("writing a request");
        let mut length = None;
        let mut first = true;
        loop {
            self.line.clear();
            self.reader
                .read_line(&mut self.line)
                .expect("reading a response head");
            if first {
                assert!(self.line.starts_with("HTTP/1.1 200"), "{}", self.line);
                first = false;
            }
            if self.line == "\r\n" {
                break;
            }
            if let Some((name, value)) = self.line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        self.body.resize(length.expect("a Content-Length"), 0);
        self.reader
            .read_exact(&mut self.body)
            .expect("reading a body");
    }
}

/// `warmup` unmeasured exchanges, then `n` measured ones (ns each).
fn measure(n: usize, warmup: usize, mut conn: impl Exchange) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let start = Instant::now();
        conn.exchange();
        if i >= warmup {
            out.push(start.elapsed().as_nanos() as u64);
        }
    }
    out
}

/// Requests per second over `CONNECTIONS` keep-alive connections for `length`.
fn throughput(addr: SocketAddr, length: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut conn = HttpExchange::new(addr);
                while !stop.load(Ordering::Relaxed) {
                    conn.exchange();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a load thread panicked");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Prints the percentiles of each target, then the last target's added latency over the others;
/// returns the p50, p99 and p99.9 of each target.
fn report(names: &[&str], samples: &mut [Vec<u64>]) -> Vec<Vec<u64>> {
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
    table
}

fn us(ns: u64) -> String {
    format!("{:.1}µs", ns as f64 / 1000.0)
}

fn signed_us(ns: i64) -> String {
    format!("{:+.1}µs", ns as f64 / 1000.0)
}
