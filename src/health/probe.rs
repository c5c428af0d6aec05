//! One prober for every check: a TCP connect, an HTTP `GET` answered 2xx (over cairn's own
//! HTTP/1.1 client and an upstream pool, so repeated probes reuse a kept-alive connection),
//! gRPC's `grpc.health.v1.Health/Check` answered `SERVING`, or a command's exit status. Each
//! probe is bounded by the check's timeout.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};

use super::check::{HealthProbe, HttpTarget, Probe};
use super::grpc;
use crate::addr::Addr;
use crate::net::{dial, OwnAddrs};
use crate::proxy::http::h1::client::SendFail;
use crate::proxy::http::h1::decoded::send_request;
use crate::proxy::http::h1::head::{end_request, request_line};
use crate::proxy::http::h1::write::HeadSink;
use crate::proxy::http::pool::Pool;

/// The largest health answer read: a status page, not a download.
const MAX_ANSWER: usize = 1024 * 1024;

/// Runs probes within `timeout` each, dialing through `pool`.
pub(crate) struct Prober {
    /// Where HTTP probes take and return their connections; its own addresses are never
    /// dialed.
    pool: Arc<Pool>,
    /// Time one probe may take, connect included.
    timeout: Duration,
}

impl Prober {
    /// A prober whose HTTP probes share `pool` (a route's, for its instances).
    pub(crate) fn new(pool: Arc<Pool>, timeout: Duration) -> Prober {
        Prober { pool, timeout }
    }

    /// A prober with a pool of its own, for a registration's check.
    pub(crate) fn alone(timeout: Duration) -> Prober {
        Prober::new(Pool::new(timeout, Arc::new(OwnAddrs::default())), timeout)
    }

    /// Probes a registration's target.
    ///
    /// # Errors
    /// Why the target does not count as healthy, in words for the log.
    pub(crate) async fn probe(&self, probe: &Probe) -> Result<(), String> {
        self.bounded(async {
            match probe {
                Probe::Tcp(addr) => self.connect(addr).await,
                Probe::Http(uri) => {
                    let to = HttpTarget::of(uri)?;
                    self.get(&to.addr, to.host.as_bytes(), &to.target).await
                }
                Probe::Grpc(addr, service) => self.grpc(addr, service).await,
                Probe::Exec(argv) => exec(argv).await,
            }
        })
        .await
    }

    /// Probes one instance of a service at `addr`.
    ///
    /// # Errors
    /// As [`Prober::probe`].
    pub(crate) async fn probe_at(&self, probe: &HealthProbe, addr: &Addr) -> Result<(), String> {
        self.bounded(async {
            match probe {
                HealthProbe::Tcp => self.connect(addr).await,
                HealthProbe::Http(path) => self.get(addr, addr.to_string().as_bytes(), path).await,
                HealthProbe::Grpc(service) => self.grpc(addr, service).await,
            }
        })
        .await
    }

    async fn bounded(
        &self,
        probe: impl std::future::Future<Output = Result<(), String>>,
    ) -> Result<(), String> {
        tokio::time::timeout(self.timeout, probe)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ))
            })
    }

    async fn connect(&self, addr: &Addr) -> Result<(), String> {
        dial(addr, self.timeout, self.pool.own())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn grpc(&self, addr: &Addr, service: &str) -> Result<(), String> {
        grpc::check(addr, service, self.timeout, self.pool.own()).await
    }

    async fn get(&self, addr: &Addr, host: &[u8], path: &str) -> Result<(), String> {
        let mut out = Vec::with_capacity(128);
        request_line(&mut out, "GET", path);
        out.header("user-agent", b"cairn-health-check");
        end_request(&mut out, host);
        let resp = send_request(&self.pool, addr, &mut out, None, false, self.timeout)
            .await
            .map_err(|(SendFail::Unsent(cause) | SendFail::Failed(cause))| cause)?;
        let status = resp.status();
        // Read the answer whole, so the connection goes back to the pool; an answer larger
        // than a health page fails the check instead of filling memory.
        Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// Runs `argv` with no input or output; healthy when it exits 0.
async fn exec(argv: &[String]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_tell_healthy_from_unhealthy() {
        let prober = Prober::alone(Duration::from_secs(5));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = Probe::Tcp(Addr::Ip(listener.local_addr().unwrap()));
        assert_eq!(prober.probe(&open).await, Ok(()));
        drop(listener);
        assert!(prober.probe(&open).await.is_err());

        let ok = Probe::Exec(vec!["true".into()]);
        assert_eq!(prober.probe(&ok).await, Ok(()));
        let bad = Probe::Exec(vec!["false".into()]);
        assert!(prober.probe(&bad).await.unwrap_err().contains("exited"));
        let missing = Probe::Exec(vec!["/nonexistent/probe".into()]);
        assert!(prober
            .probe(&missing)
            .await
            .unwrap_err()
            .contains("cannot run"));
    }

    #[tokio::test]
    async fn an_http_probe_sends_the_urls_path_and_host_and_reuses_its_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            for status in ["200 OK", "503 Service Unavailable"] {
                let mut buf = Vec::new();
                while !buf.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    conn.read_exact(&mut byte).await.unwrap();
                    buf.push(byte[0]);
                }
                heads.push(String::from_utf8(buf).unwrap());
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
            heads
        });
        let prober = Prober::alone(Duration::from_secs(5));
        let probe = Probe::Http(
            format!("http://localhost:{port}/ready?deep=1")
                .parse()
                .unwrap(),
        );
        assert_eq!(prober.probe(&probe).await, Ok(()));
        let second = prober.probe(&probe).await.unwrap_err();
        assert!(second.contains("503"), "{second}");
        let heads = server.await.unwrap();
        for head in &heads {
            assert!(head.starts_with("GET /ready?deep=1 HTTP/1.1\r\n"), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains(&format!("\r\nhost: localhost:{port}\r\n")),
                "{head}"
            );
        }
    }
}
