//! `cairn dev`: a throwaway etcd, two demo backends and a proxy, so a newcomer sees traffic
//! alternate in one command. Ctrl-C removes everything it started.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::admin::AdminConfig;
use crate::config::Config;
use crate::error::Error;
use crate::etcd::EtcdConfig;
use crate::proxy::{GatewayConfig, Limits, Protocol, RelayConfig, RouteConfig, ServiceConfig};
use crate::server::Server;

/// How long a fresh etcd may take to elect itself and answer.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the demo until `shutdown` fires.
///
/// # Errors
/// [`Error::Dev`] when `etcd` is not on PATH or does not start; the message says what to do.
pub async fn run(shutdown: CancellationToken) -> Result<(), Error> {
    let etcd_bin = find_on_path("etcd").ok_or_else(|| {
        Error::Dev(
            "cairn dev needs the `etcd` binary on PATH.\n  On Debian or Ubuntu: sudo apt-get install -y etcd-server\n  Elsewhere: download a release from https://github.com/etcd-io/etcd/releases and put `etcd` on PATH."
                .to_string(),
        )
    })?;
    let dir = tempfile::Builder::new()
        .prefix("cairn-dev-")
        .tempdir()
        .map_err(|source| Error::Io {
            what: "creating a temporary directory".to_string(),
            source,
        })?;
    let (mut etcd, endpoint) = start_etcd(&etcd_bin, dir.path()).await?;

    let stop_backends = CancellationToken::new();
    let mut backends = Vec::new();
    for name in ["demo-1", "demo-2"] {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| Error::Io {
                what: "binding a demo backend".to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            what: "reading a demo backend's address".to_string(),
            source,
        })?;
        tokio::spawn(serve_backend(listener, name, stop_backends.clone()));
        backends.push((name, addr));
    }

    let mut client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    // One backend in the plain format, one in JSON: both are discovered the same way.
    client
        .put("/services/demo/demo-1", backends[0].1.to_string(), None)
        .await?;
    let json = format!(
        r#"{{"addr":"{}","zone":"local","metadata":{{"demo":true}}}}"#,
        backends[1].1
    );
    client.put("/services/demo/demo-2", json, None).await?;

    let config = Config {
        etcd: EtcdConfig {
            endpoints: vec![endpoint
                .parse()
                .map_err(|e: String| Error::Dev(format!("the demo etcd's URL: {e}")))?],
            ..EtcdConfig::default()
        },
        admin: AdminConfig {
            listen: free_or_ephemeral(AdminConfig::default().listen).await,
            ..AdminConfig::default()
        },
        services: vec![ServiceConfig {
            name: "demo".parse().expect("\"demo\" is a valid service name"),
            listen: free_or_ephemeral(SocketAddr::from(([127, 0, 0, 1], 7001))).await,
            protocol: Protocol::Http,
            route: RouteConfig::default(),
            limits: Limits::default(),
            key: None,
            health: None,
            relay: RelayConfig::default(),
        }],
        gateways: vec![GatewayConfig {
            listen: free_or_ephemeral(SocketAddr::from(([127, 0, 0, 1], 7080))).await,
            host_suffix: Some(".svc.local".to_string()),
            limits: Limits::default(),
        }],
        ..Config::default()
    };
    let server = Server::bind(config).await?;
    let admin = server.admin_addr();
    let listen = server.listen_addrs()[0].1;
    let gateway = server.gateway_addrs()[0];

    println!();
    println!("cairn dev is running. Everything below goes away on Ctrl-C.");
    println!();
    println!(
        "  etcd        {endpoint}   (data in {})",
        dir.path().display()
    );
    for (name, addr) in &backends {
        println!("  backend     {name} on {addr}, registered as /services/demo/{name}");
    }
    println!("  proxy       {listen} -> service \"demo\" (http, round robin per request)");
    println!("  gateway     {gateway} -> the service named by the Host header, minus .svc.local");
    println!("  admin       http://{admin}/   (the live status page; open it in a browser)");
    println!();
    println!("Try, in another terminal:");
    println!("  curl -s http://{listen}/ http://{listen}/ http://{listen}/   # one keep-alive connection; replies alternate");
    println!("  curl -s -H 'Host: demo.svc.local' http://{gateway}/           # the same service through the gateway");
    println!("  curl -s http://{admin}/services                        # what cairn sees in etcd");
    println!(
        "  etcdctl --endpoints {endpoint} del /services/demo/demo-1   # now only demo-2 answers"
    );
    println!(
        "  etcdctl --endpoints {endpoint} put /services/demo/demo-1 {}",
        backends[0].1
    );
    println!();

    let result = server.run(shutdown, Duration::from_secs(2)).await;
    stop_backends.cancel();
    let _ = etcd.kill().await;
    drop(dir);
    println!("cairn dev stopped; the temporary etcd and its data are gone.");
    result
}

/// Starts etcd on free loopback ports with its data in `dir`; returns it and its client URL.
async fn start_etcd(bin: &Path, dir: &Path) -> Result<(Child, String), Error> {
    let client_port = free_port().await?;
    let peer_port = free_port().await?;
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log_path = dir.join("etcd.log");
    let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
        what: format!("creating {}", log_path.display()),
        source,
    })?;
    let log_err = log.try_clone().map_err(|source| Error::Io {
        what: "duplicating the etcd log handle".to_string(),
        source,
    })?;
    let mut child = Command::new(bin)
        .arg("--name=cairn-dev")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=cairn-dev={peer}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Io {
            what: format!("starting {}", bin.display()),
            source,
        })?;

    let deadline = Instant::now() + ETCD_START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(Error::Dev(format!(
                "etcd exited at start ({status}); last lines of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        if let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await {
            if c.status().await.is_ok() {
                return Ok((child, endpoint));
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Dev(format!(
                "etcd did not answer within {ETCD_START_TIMEOUT:?}; see {}",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves `hello from <name>` over HTTP/1.1 until `stop` fires.
async fn serve_backend(listener: TcpListener, name: &'static str, stop: CancellationToken) {
    let addr = listener.local_addr().ok();
    let reply = Arc::new(match addr {
        Some(a) => format!("hello from {name} ({a})\n"),
        None => format!("hello from {name}\n"),
    });
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!(error = %e, "demo backend accept failed");
                    continue;
                }
            },
        };
        let reply = Arc::clone(&reply);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = Bytes::from(reply.as_str().to_owned());
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| Error::Io {
            what: "finding a free port".to_string(),
            source,
        })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "finding a free port".to_string(),
            source,
        })
}

/// `preferred` when it is free, otherwise an ephemeral port on the same IP.
async fn free_or_ephemeral(preferred: SocketAddr) -> SocketAddr {
    match TcpListener::bind(preferred).await {
        Ok(_) => preferred,
        Err(_) => SocketAddr::new(preferred.ip(), 0),
    }
}

/// The first executable called `name` in `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
