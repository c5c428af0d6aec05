//! A real `cairn` process, driven through its command line and admin endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{eventually, free_port, tail};

/// The path of the `cairn` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// A running `cairn run` process with its config file.
pub struct Cairn {
    config_dir: TempDir,
    proc: Proc,
    /// The admin address from the config.
    pub admin: SocketAddr,
}

impl Cairn {
    /// Writes `config` (which must set `[admin] listen` to `admin`) and runs cairn with it,
    /// waiting until `/healthz` answers.
    pub async fn start(config: &str, admin: SocketAddr) -> Cairn {
        Cairn::start_with_args(config, admin, &[]).await
    }

    /// As [`Cairn::start`], with extra arguments to `cairn run`.
    pub async fn start_with_args(config: &str, admin: SocketAddr, args: &[&str]) -> Cairn {
        let config_dir = tempfile::Builder::new()
            .prefix("cairn-test-config-")
            .tempdir()
            .expect("creating a temp dir for the config");
        let path = config_dir.path().join("cairn.toml");
        std::fs::write(&path, config).expect("writing the config");
        let path = path.to_str().expect("a UTF-8 temp path");
        let mut all = vec!["run", "-c", path];
        all.extend_from_slice(args);
        let mut cairn = Cairn {
            proc: Proc::spawn(&all),
            config_dir,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = cairn.try_wait() {
                panic!(
                    "cairn exited at start with {status}; its log:\n{}",
                    cairn.log()
                );
            }
            if let Ok((200, _)) = http_get(admin, "/healthz").await {
                return cairn;
            }
            assert!(
                Instant::now() < deadline,
                "cairn did not serve /healthz; its log:\n{}",
                cairn.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Sends a signal (`"TERM"`, `"STOP"`, `"CONT"`, `"KILL"`, …) with kill(1).
    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait()
    }

    /// Waits up to `deadline` for the process to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        self.proc.wait_exit(deadline).await
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// The directory holding the config.
    pub fn dir(&self) -> &Path {
        self.config_dir.path()
    }

    /// `GET path` on the admin endpoint: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin endpoint failed: {e}"))
    }

    /// The `/services` document.
    pub async fn services(&self) -> Value {
        let (status, body) = self.get("/services").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("/services is JSON")
    }

    /// The instances of `service` as `(id, addr)`, sorted by id.
    pub async fn instances(&self, service: &str) -> Vec<(String, String)> {
        let doc = self.services().await;
        doc["services"][service]["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["id"].as_str().unwrap_or_default().to_string(),
                            i["addr"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `service` has exactly the instance ids `ids`.
    pub async fn wait_instances(&self, service: &str, ids: &[&str], deadline: Duration) {
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        eventually(
            deadline,
            &format!("{service} has instances {want:?}"),
            || async {
                let have: Vec<String> = self
                    .instances(service)
                    .await
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                (have == want).then_some(())
            },
        )
        .await;
    }

    /// The value of one metric line (name plus labels, exactly as printed).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {series} not found in:\n{body}"))
            .trim()
            .parse()
            .expect("metric values are numbers")
    }

    /// Waits until `/readyz` is 200.
    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(10), "cairn is ready", || async {
            (self.get("/readyz").await.0 == 200).then_some(())
        })
        .await;
    }
}

/// A minimal HTTP/1.0 GET: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: cairn\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "admin did not answer"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad response: {head}"),
            )
        })?;
    Ok((status, body.to_string()))
}

/// Free loopback addresses for an admin endpoint and `n` listeners.
pub fn addrs(n: usize) -> (SocketAddr, Vec<SocketAddr>) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listens = (0..n)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    (admin, listens)
}

/// A config with `[etcd]`, `[admin]` and one TCP `[[service]]` per `(name, listen)`, plus `extra`
/// lines appended to each service block.
pub fn config(
    endpoint: &str,
    admin: SocketAddr,
    services: &[(&str, SocketAddr)],
    extra: &str,
) -> String {
    let mut c = format!("[etcd]\nendpoints = [\"{endpoint}\"]\n\n[admin]\nlisten = \"{admin}\"\n");
    for (name, listen) in services {
        c.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\n{extra}\n"
        ));
    }
    c
}

/// Any `cairn` subcommand running as its own process, with its output in a log file.
pub struct Proc {
    dir: TempDir,
    child: Option<Child>,
}

impl Proc {
    /// Runs `cairn <args>`; stdout goes to `stdout.log`, stderr to `stderr.log`.
    pub fn spawn(args: &[&str]) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-proc-")
            .tempdir()
            .expect("creating a temp dir");
        let out =
            std::fs::File::create(dir.path().join("stdout.log")).expect("creating stdout.log");
        let err =
            std::fs::File::create(dir.path().join("stderr.log")).expect("creating stderr.log");
        let child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", "cairn=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawning cairn");
        Proc {
            dir,
            child: Some(child),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the process is running").id()
    }

    /// Sends a signal with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `deadline` for the process to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            assert!(
                start.elapsed() < deadline,
                "cairn did not exit within {deadline:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Everything printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- cairn stderr ---\n{}",
                tail(&self.dir.path().join("stderr.log"), 40)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cairn <args>` to completion: exit status, stdout, stderr.
pub fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("running cairn");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
