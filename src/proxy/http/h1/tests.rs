//! The serve loop and the exchange on real loopback sockets, without etcd: a store fed by hand,
//! a raw client, and instances that answer what the test says.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::instance::Instance;
use crate::proxy::config::{Limits, RouteConfig};
use crate::proxy::http::routes::{Routes, Routing};
use crate::proxy::metrics::ListenerFamilies;
use crate::registry::ServiceName;
use crate::snapshot::Store;

/// One listener's worth of state for `serve`: the service `web` and its instances.
struct Fixture {
    store: Arc<Store>,
    routing: Routing,
    routes: ArcSwap<Routes>,
    metrics: crate::proxy::metrics::ListenerMetrics,
    limits: Limits,
}

impl Fixture {
    fn new(idle: Duration) -> Fixture {
        let store = Store::new();
        let name: ServiceName = "web".parse().unwrap();
        let config = RouteConfig::default();
        let routes = Routes::new(Arc::clone(&store), [(&name, &config)], None, Arc::default());
        Fixture {
            store,
            routing: Routing::Service("web".into()),
            routes: ArcSwap::new(routes),
            metrics: ListenerFamilies::default().listener("test", "web"),
            limits: Limits {
                idle_timeout: idle,
                ..Limits::default()
            },
        }
    }

    /// Sets the instances of `web` (id, address).
    fn instances(&self, instances: &[(&str, String)]) {
        let instances = instances
            .iter()
            .map(|(id, addr)| (*Instance::plain(id, addr)).clone())
            .collect();
        self.store.publish("web", instances);
    }

    /// A fixture whose service has one instance that answers everything; with its log.
    async fn served(idle: Duration) -> (Fixture, Arc<Mutex<Vec<String>>>) {
        let f = Fixture::new(idle);
        let (addr, seen) = instance().await;
        f.instances(&[("a", addr)]);
        (f, seen)
    }

    fn site(&self) -> Site<'_> {
        Site {
            routing: &self.routing,
            routes: &self.routes,
            metrics: &self.metrics,
            limits: &self.limits,
        }
    }
}

/// An instance that answers every request head with `200 ok`, recording each request line.
async fn instance() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        log.lock()
                            .unwrap()
                            .push(head.lines().next().unwrap().to_string());
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A connected pair: the client's end, and cairn's end with the client's address.
async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (served, peer) = listener.accept().await.unwrap();
    (client, served, peer)
}

/// Reads from `client` until `n` answers have arrived whole (each ends with `ok` or a text
/// line) or it closes.
async fn answers(client: &mut TcpStream, n: usize) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("HTTP/1.1 ").count() < n
        || !(got.ends_with(b"ok") || got.ends_with(b"\n"))
    {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => got.extend_from_slice(&chunk[..k]),
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_until_the_client_closes() {
    let (f, seen) = Fixture::served(Duration::from_secs(5)).await;
    let (mut client, served, peer) = pair().await;
    let never = CancellationToken::new();
    let site = f.site();
    let serving = serve(&site, served, peer, &never, &never);
    let talking = async {
        client
            .write_all(b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nGET /2 HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let got = answers(&mut client, 2).await;
        client.shutdown().await.unwrap();
        got
    };
    let (served, got) = tokio::join!(serving, talking);
    assert!(matches!(served, Served::Closed));
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1"]
    );
}

#[tokio::test]
async fn what_this_path_does_not_take_goes_elsewhere_with_every_byte_read() {
    let (f, seen) = Fixture::served(Duration::from_secs(5)).await;
    let (mut client, served, peer) = pair().await;
    let never = CancellationToken::new();
    let site = f.site();
    let first = b"GET /own HTTP/1.1\r\nHost: web\r\n\r\n";
    let rest = b"GET /old HTTP/1.0\r\nHost: web\r\n\r\nGET /after HTTP/1.1\r\n";
    let talking = async {
        client.write_all(first).await.unwrap();
        answers(&mut client, 1).await;
        client.write_all(rest).await.unwrap();
    };
    let (served, ()) = tokio::join!(serve(&site, served, peer, &never, &never), talking);
    let Served::Elsewhere(_, read) = served else {
        panic!("an HTTP/1.0 request stayed on this path");
    };
    // hyper gets the bytes read so far from the HTTP/1.0 request on, none lost or repeated.
    assert!(
        rest.starts_with(&read),
        "{:?}",
        String::from_utf8_lossy(&read)
    );
    assert!(read.starts_with(b"GET /old HTTP/1.0\r\n"));
    assert_eq!(*seen.lock().unwrap(), ["GET /own HTTP/1.1"]);
}

#[tokio::test]
async fn a_drain_closes_an_idle_connection_at_once_and_a_busy_one_after_its_answer() {
    let (f, _) = Fixture::served(Duration::from_secs(60)).await;
    let site = f.site();
    let never = CancellationToken::new();

    // Idle, between requests: the drain ends it without waiting for the idle timeout.
    let (_client, served, peer) = pair().await;
    let draining = CancellationToken::new();
    draining.cancel();
    let served = tokio::time::timeout(
        Duration::from_secs(5),
        serve(&site, served, peer, &draining, &never),
    )
    .await
    .expect("an idle connection outlived the drain");
    assert!(matches!(served, Served::Closed));

    // A head half sent when the drain comes: it is answered, with a close.
    let (mut client, served, peer) = pair().await;
    let draining = CancellationToken::new();
    let talking = async {
        client.write_all(b"GET /late HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        draining.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"Host: web\r\n\r\n").await.unwrap();
        answers(&mut client, 1).await
    };
    let (served, got) = tokio::join!(serve(&site, served, peer, &draining, &never), talking);
    assert!(matches!(served, Served::Closed));
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
}

#[tokio::test]
async fn no_instance_gets_a_503_and_the_connection_goes_on() {
    let f = Fixture::new(Duration::from_secs(5));
    let (mut client, served, peer) = pair().await;
    let never = CancellationToken::new();
    let site = f.site();
    let talking = async {
        client
            .write_all(b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let first = answers(&mut client, 1).await;
        // The same connection takes the next request.
        client
            .write_all(b"GET /2 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let second = answers(&mut client, 1).await;
        (first, second)
    };
    let (_, (first, second)) = tokio::join!(serve(&site, served, peer, &never, &never), talking);
    assert!(first.starts_with("HTTP/1.1 503"), "{first}");
    assert!(first.contains("has no instances"), "{first}");
    assert!(second.starts_with("HTTP/1.1 503"), "{second}");
    assert!(second.contains("connection: close"), "{second}");
    assert_eq!(f.metrics.no_instances.get(), 2);
}

#[tokio::test]
async fn a_refused_connect_fails_over_and_the_request_arrives_once() {
    let f = Fixture::new(Duration::from_secs(5));
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let (addr, seen) = instance().await;
    f.instances(&[("a-dead", dead_addr), ("b-live", addr)]);
    let never = CancellationToken::new();
    let site = f.site();
    for i in 0..4 {
        let (mut client, served, peer) = pair().await;
        let request = format!("GET /{i} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n");
        let talking = async {
            client.write_all(request.as_bytes()).await.unwrap();
            answers(&mut client, 1).await
        };
        let (_, got) = tokio::join!(serve(&site, served, peer, &never, &never), talking);
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    }
    assert_eq!(seen.lock().unwrap().len(), 4, "{:?}", seen.lock().unwrap());
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_at_the_idle_timeout_from_its_head() {
    let (f, seen) = Fixture::served(Duration::from_millis(500)).await;
    let (mut client, served, peer) = pair().await;
    let never = CancellationToken::new();
    let site = f.site();
    let talking = async {
        client
            .write_all(b"POST /slow HTTP/1.1\r\nHost: web\r\nContent-Length: 20\r\n\r\n")
            .await
            .unwrap();
        // A byte every 200 ms: each read would have moved a per-read deadline.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if client.write_all(b"x").await.is_err() {
                break;
            }
        }
    };
    let started = tokio::time::Instant::now();
    let (served, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(5),
            serve(&site, served, peer, &never, &never)
        ),
        talking
    );
    assert!(
        matches!(served, Ok(Served::Closed)),
        "the trickle was served past the deadline"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(seen.lock().unwrap().is_empty());
}
