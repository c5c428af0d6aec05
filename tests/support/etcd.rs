//! Real etcd members on loopback, started from PATH: a single-member cluster, or three.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use super::pki::Pki;
use super::{free_port, tail};

/// The root user the tests enable auth with.
pub const ROOT: (&str, &str) = ("root", "root-password");

/// One etcd member process with its data directory under a shared temp dir.
struct Member {
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Certificates, when clients must speak TLS and present a client certificate.
    tls: Option<Arc<Pki>>,
    /// Whether auth is enabled: the tests' clients authenticate as [`ROOT`].
    auth: bool,
}

impl Member {
    /// Sends `sig` (`"STOP"`, `"CONT"`) to the member.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the member is running").id();
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    fn new(root: &Path, name: &str) -> Member {
        Member {
            name: name.to_string(),
            dir: root.join(name),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            tls: None,
            auth: false,
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Options for a test client: the certificates and the root user, as needed.
    fn options(&self) -> Option<ConnectOptions> {
        let mut options = match &self.tls {
            Some(pki) => pki.client_options(),
            None => ConnectOptions::new(),
        };
        if self.auth {
            options = options
                .with_user(ROOT.0, ROOT.1)
                .with_auto_token_refresh(true);
        }
        Some(options)
    }

    fn peer(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    fn spawn(&mut self, initial_cluster: &str, extra: &[String]) {
        let bin = which("etcd").unwrap_or_else(|| {
            panic!("`etcd` is not on PATH: the integration tests start real etcd processes. Install it with `apt-get install -y etcd-server` (or run `bash scripts/setup`).")
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the etcd log");
        let child = Command::new(bin)
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={}", self.peer()))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            // Elect in a fraction of a second instead of about one.
            .arg("--heartbeat-interval=20")
            .arg("--election-timeout=200")
            .args(self.tls.iter().flat_map(|pki| {
                [
                    format!("--cert-file={}", pki.server_cert.display()),
                    format!("--key-file={}", pki.server_key.display()),
                    format!("--trusted-ca-file={}", pki.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().expect("duplicating the log handle"),
            ))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning etcd");
        self.child = Some(child);
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether a write through this member succeeds.
    async fn serves(&self) -> bool {
        match Client::connect([self.endpoint()], self.options()).await {
            Ok(mut c) => c
                .put("/cairn-test/ready", self.name.as_str(), None)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// Starts `members` (already spawned) and waits until each serves writes; false if one exits.
async fn wait_serving(members: &mut [Member]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    for m in members.iter_mut() {
        loop {
            if m.exited() {
                return false;
            }
            if m.serves().await {
                break;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    true
}

/// A single-member etcd cluster with its own data directory.
pub struct Etcd {
    _root: TempDir,
    member: Member,
    extra: Vec<String>,
}

impl Etcd {
    /// Starts etcd and waits until it serves requests.
    pub async fn start() -> Etcd {
        Etcd::start_with(&[]).await
    }

    /// Starts etcd with extra command-line flags.
    pub async fn start_with(extra: &[&str]) -> Etcd {
        Etcd::launch(extra, None).await
    }

    /// Starts etcd speaking only TLS to clients, which must present a certificate of `pki`.
    pub async fn start_secure(pki: Arc<Pki>, extra: &[&str]) -> Etcd {
        Etcd::launch(extra, Some(pki)).await
    }

    async fn launch(extra: &[&str], tls: Option<Arc<Pki>>) -> Etcd {
        let root = temp_root();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // A free port can be taken by another test between picking and binding: retry.
        for attempt in 0..5 {
            let mut member = Member::new(root.path(), &format!("solo{attempt}"));
            member.tls = tls.clone();
            member.spawn(&format!("{}={}", member.name, member.peer()), &extra);
            if wait_serving(std::slice::from_mut(&mut member)).await {
                return Etcd {
                    _root: root,
                    member,
                    extra,
                };
            }
            eprintln!(
                "etcd did not start (attempt {attempt}):\n{}",
                tail(&member.log_path(), 10)
            );
            member.kill();
        }
        panic!("etcd failed to start five times");
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// A fresh client (with the certificates, as root when auth is enabled).
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], self.member.options())
            .await
            .expect("connecting to the test etcd")
    }

    /// Creates the root user and enables auth; test clients authenticate as [`ROOT`] from then.
    pub async fn enable_auth(&mut self) {
        let c = self.client().await;
        let mut auth = c.auth_client();
        auth.user_add(ROOT.0, ROOT.1, None)
            .await
            .expect("adding root");
        auth.user_grant_role(ROOT.0, "root")
            .await
            .expect("granting root");
        auth.auth_enable().await.expect("enabling auth");
        self.member.auth = true;
    }

    /// Kills etcd and starts it again on the same ports with an empty data directory: a new
    /// cluster, as after a wipe or a restore from an old snapshot.
    pub async fn restart_empty(&mut self) {
        self.member.kill();
        let _ = std::fs::remove_dir_all(&self.member.dir);
        self.member.auth = false;
        let initial = format!("{}={}", self.member.name, self.member.peer());
        self.member.spawn(&initial, &self.extra);
        assert!(
            wait_serving(std::slice::from_mut(&mut self.member)).await,
            "etcd did not start empty; its log:\n{}",
            tail(&self.member.log_path(), 30)
        );
    }

    /// Sends `sig` (`"STOP"` freezes it, `"CONT"` thaws it).
    pub fn signal(&self, sig: &str) {
        self.member.signal(sig);
    }

    /// Kills etcd (SIGKILL) and waits for it to exit; the data directory stays.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Starts etcd again on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.member.kill();
        let initial = format!("{}={}", self.member.name, self.member.peer());
        self.member.spawn(&initial, &self.extra);
        assert!(
            wait_serving(std::slice::from_mut(&mut self.member)).await,
            "etcd did not restart; its log:\n{}",
            tail(&self.member.log_path(), 30)
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- etcd log ({}) ---\n{}",
                self.endpoint(),
                tail(&self.member.log_path(), 15)
            );
        }
        self.member.kill();
    }
}

/// A three-member etcd cluster on loopback.
pub struct Cluster {
    _root: TempDir,
    members: Vec<Member>,
    initial: String,
}

impl Cluster {
    /// Starts three members and waits until each serves writes.
    pub async fn start() -> Cluster {
        for attempt in 0..5 {
            let root = temp_root();
            let mut members: Vec<Member> = (0..3)
                .map(|i| Member::new(root.path(), &format!("m{i}")))
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer()))
                .collect::<Vec<_>>()
                .join(",");
            for m in members.iter_mut() {
                m.spawn(&initial, &[]);
            }
            if wait_serving(&mut members).await {
                return Cluster {
                    _root: root,
                    members,
                    initial,
                };
            }
            eprintln!("the cluster did not start (attempt {attempt}), retrying on other ports");
            for m in members.iter_mut() {
                m.kill();
            }
        }
        panic!("the etcd cluster failed to start five times");
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// A client of member `i` alone.
    pub async fn client(&self, i: usize) -> Client {
        Client::connect([self.members[i].endpoint()], None)
            .await
            .expect("connecting to a cluster member")
    }

    /// Kills member `i` (SIGKILL); its data directory stays.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Sends `sig` (`"STOP"`, `"CONT"`) to member `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        self.members[i].signal(sig);
    }

    /// The index of the member that leads, asked of each live member in turn.
    pub async fn leader(&self) -> Option<usize> {
        for m in &self.members {
            let Ok(mut c) = Client::connect([m.endpoint()], None).await else {
                continue;
            };
            let Ok(status) = c.status().await else {
                continue;
            };
            let leader = status.leader();
            for (i, other) in self.members.iter().enumerate() {
                let Ok(mut oc) = Client::connect([other.endpoint()], None).await else {
                    continue;
                };
                if let Ok(s) = oc.status().await {
                    if s.header().map(|h| h.member_id()) == Some(leader) {
                        return Some(i);
                    }
                }
            }
        }
        None
    }

    /// Starts member `i` again and waits until it serves writes.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].kill();
        let initial = self.initial.clone();
        self.members[i].spawn(&initial, &[]);
        assert!(
            wait_serving(std::slice::from_mut(&mut self.members[i])).await,
            "member {i} did not rejoin; its log:\n{}",
            tail(&self.members[i].log_path(), 30)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in self.members.iter_mut() {
            if std::thread::panicking() {
                eprintln!("--- etcd log ({}) ---\n{}", m.name, tail(&m.log_path(), 10));
            }
            m.kill();
        }
    }
}

fn temp_root() -> TempDir {
    tempfile::Builder::new()
        .prefix("cairn-test-etcd-")
        .tempdir()
        .expect("creating a temp dir for etcd")
}

/// The first executable called `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// etcd's own gRPC proxy (`etcd grpc-proxy start`) in front of some members: it coalesces
/// identical watches and lease keep-alives from many clients into one stream to etcd.
pub struct GrpcProxy {
    dir: TempDir,
    port: u16,
    /// The members it forwards to, as `host:port`.
    members: Vec<String>,
    child: Option<Child>,
}

impl GrpcProxy {
    /// Starts a proxy in front of `endpoints` and waits until a write through it succeeds.
    pub async fn start(endpoints: &[String]) -> GrpcProxy {
        let mut proxy = GrpcProxy {
            dir: temp_root(),
            port: free_port(),
            members: endpoints
                .iter()
                .map(|e| e.trim_start_matches("http://").to_string())
                .collect(),
            child: None,
        };
        proxy.spawn().await;
        proxy
    }

    /// Where clients reach the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("grpc-proxy.log")
    }

    async fn spawn(&mut self) {
        let bin = which("etcd").expect("`etcd` is on PATH (bash scripts/setup installs it)");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the proxy log");
        let addr = format!("127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .args(["grpc-proxy", "start"])
            .arg(format!("--endpoints={}", self.members.join(",")))
            .arg(format!("--listen-addr={addr}"))
            .arg(format!("--advertise-client-url={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().expect("duplicating the log handle"),
            ))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning etcd grpc-proxy");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect([self.endpoint()], None).await {
                if c.put("/cairn-test/proxy", "up", None).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the grpc-proxy did not serve within 20 s; its log:\n{}",
                tail(&self.log_path(), 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the proxy (SIGKILL): every client stream through it breaks.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and waits until it serves.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- grpc-proxy log ---\n{}", tail(&self.log_path(), 15));
        }
        self.kill();
    }
}
