//! A real `cairn` process, driven through its command line and admin endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{eventually, patient, tail};

/// The path of the `cairn` binary under test.
/// `CAIRN_BIN` when set (the soak run points it at a release build), else the binary cargo built
/// for these tests.
pub fn bin() -> String {
    match (
        std::env::var("CAIRN_BIN"),
        option_env!("CARGO_BIN_EXE_cairn"),
    ) {
        (Ok(bin), _) => bin,
        (Err(_), Some(bin)) => bin.to_string(),
        (Err(_), None) => panic!("set CAIRN_BIN to the cairn binary to run"),
    }
}

/// A running `cairn run` process with its config file.
pub struct Cairn {
    config_dir: TempDir,
    proc: Proc,
    /// The admin address cairn bound.
    pub admin: SocketAddr,
    /// Each `[[service]]` listener cairn bound, in config order: service and address.
    services: Vec<(String, SocketAddr)>,
    /// Each `[[gateway]]` listener cairn bound, in config order.
    gateways: Vec<SocketAddr>,
}

/// What `cairn run` logs once every listener is bound.
struct Bound {
    admin: SocketAddr,
    services: Vec<(String, SocketAddr)>,
    gateways: Vec<SocketAddr>,
}

/// The value of `name=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(|v| v.trim_matches('"'))
}

/// The addresses in `cairn run`'s log, once its "cairn started" line (logged after every
/// listener) is there.
fn bound(log: &str) -> Option<Bound> {
    let mut services = Vec::new();
    let mut gateways = Vec::new();
    for line in log.lines() {
        let addr = |name| field(line, name).and_then(|a| a.parse::<SocketAddr>().ok());
        if line.contains(": cairn started ") {
            return Some(Bound {
                admin: addr("admin")?,
                services,
                gateways,
            });
        } else if line.contains(": gateway listening listen=") {
            gateways.push(addr("listen")?);
        } else if line.contains(": listening service=") {
            services.push((field(line, "service")?.to_string(), addr("listen")?));
        }
    }
    None
}

impl Cairn {
    /// Writes `config` and runs cairn with it, waiting until `/healthz` answers. Listen on port
    /// 0 (see [`config`] and [`ADMIN`]); the bound addresses are read back from cairn's log.
    pub async fn start(config: &str) -> Cairn {
        Cairn::start_with_args(config, &[]).await
    }

    /// As [`Cairn::start`], with extra arguments to `cairn run`.
    pub async fn start_with_args(config: &str, args: &[&str]) -> Cairn {
        Cairn::launch(config, args, None).await
    }

    /// As [`Cairn::start`], under an open-file limit of `nofile` (soft and hard).
    pub async fn start_limited(config: &str, nofile: u64) -> Cairn {
        Cairn::launch(config, &[], Some(nofile)).await
    }

    async fn launch(config: &str, args: &[&str], nofile: Option<u64>) -> Cairn {
        let config_dir = tempfile::Builder::new()
            .prefix("cairn-test-config-")
            .tempdir()
            .expect("creating a temp dir for the config");
        let path = config_dir.path().join("cairn.toml");
        std::fs::write(&path, config).expect("writing the config");
        let path = path.to_str().expect("a UTF-8 temp path");
        let mut all = vec!["run", "-c", path];
        all.extend_from_slice(args);
        let mut proc = Proc::spawn_limited(&all, nofile);
        let deadline = Instant::now() + patient(Duration::from_secs(20));
        let bound = loop {
            if let Some(status) = proc.try_wait() {
                panic!(
                    "cairn exited at start with {status}; its log:\n{}",
                    proc.stderr()
                );
            }
            if let Some(b) = bound(&proc.stderr()) {
                break b;
            }
            assert!(
                Instant::now() < deadline,
                "cairn did not log its addresses; its log:\n{}",
                proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let cairn = Cairn {
            proc,
            config_dir,
            admin: bound.admin,
            services: bound.services,
            gateways: bound.gateways,
        };
        eventually(Duration::from_secs(20), "cairn serves /healthz", || async {
            matches!(http_get(cairn.admin, "/healthz").await, Ok((200, _))).then_some(())
        })
        .await;
        cairn
    }

    /// The address of the `i`-th `[[service]]` listener.
    pub fn listen(&self, i: usize) -> SocketAddr {
        self.services[i].1
    }

    /// The address of the `[[service]]` listener for `service`.
    pub fn listen_of(&self, service: &str) -> SocketAddr {
        self.services
            .iter()
            .find(|(s, _)| s == service)
            .unwrap_or_else(|| panic!("no listener for {service}: {:?}", self.services))
            .1
    }

    /// The address of the `i`-th `[[gateway]]` listener.
    pub fn gateway(&self, i: usize) -> SocketAddr {
        self.gateways[i]
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

    /// Writes `config` over the running one and sends SIGHUP; waits for cairn's verdict.
    /// `Err` carries the log line of a refused reload.
    pub async fn reload(&self, config: &str) -> Result<(), String> {
        std::fs::write(self.config_dir.path().join("cairn.toml"), config)
            .expect("writing the new config");
        let verdicts = |log: &str| {
            log.lines()
                .filter(|l| l.contains("config reloaded") || l.contains("config reload refused"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let before = verdicts(&self.log()).len();
        self.signal("HUP");
        let line = eventually(Duration::from_secs(20), "cairn answers SIGHUP", || async {
            verdicts(&self.log()).get(before).cloned()
        })
        .await;
        if line.contains("config reloaded") {
            Ok(())
        } else {
            Err(line)
        }
    }

    /// The address `service`'s listener was last bound to, from the log (a reload may have
    /// added it after start).
    pub fn listening(&self, service: &str) -> Option<SocketAddr> {
        self.log()
            .lines()
            .rev()
            .filter(|l| l.contains(": listening service=") && field(l, "service") == Some(service))
            .find_map(|l| field(l, "listen")?.parse().ok())
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
        super::metric_in(&body, series)
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
    http_get_with(addr, path, &[]).await
}

/// A minimal HTTP/1.0 GET with extra `headers`: status and body.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: cairn\r\n{extra}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(patient(Duration::from_secs(5)), s.read_to_end(&mut buf))
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

/// An `[admin]` section on a port the kernel picks.
pub const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// Appended to a config: list and watch the whole registry prefix, not only the routed
/// services, for tests about services a node holds without routing them.
pub const SCOPE_ALL: &str = "\n[discovery]\nscope = \"all\"\n";

/// A config with `[etcd]`, `[admin]` and one TCP `[[service]]` per name, every listener on a
/// port the kernel picks, plus `extra` lines appended to each service block.
pub fn config(endpoint: &str, services: &[&str], extra: &str) -> String {
    let mut c = format!("[etcd]\nendpoints = [\"{endpoint}\"]\n\n{ADMIN}");
    for name in services {
        c.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\n{extra}\n"
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
        Proc::spawn_limited(args, None)
    }

    /// As [`Proc::spawn`], under an open-file limit of `nofile` when given.
    pub fn spawn_limited(args: &[&str], nofile: Option<u64>) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-proc-")
            .tempdir()
            .expect("creating a temp dir");
        let out =
            std::fs::File::create(dir.path().join("stdout.log")).expect("creating stdout.log");
        let err =
            std::fs::File::create(dir.path().join("stderr.log")).expect("creating stderr.log");
        let mut command = match nofile {
            None => Command::new(bin()),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin());
                sh
            }
        };
        let child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| "cairn=debug".to_string()),
            )
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

    /// Waits up to `deadline` (stretched by [`patient`]) for the process to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let deadline = patient(deadline);
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
