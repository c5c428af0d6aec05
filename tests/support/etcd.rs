//! A real etcd member on loopback, started from PATH.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tempfile::TempDir;

use super::{free_port, tail};

/// One single-member etcd cluster with its own data directory.
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits until it serves requests.
    pub async fn start() -> Etcd {
        Etcd::start_with(&[]).await
    }

    /// Starts etcd with extra command-line flags.
    pub async fn start_with(extra: &[&str]) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-etcd-")
            .tempdir()
            .expect("creating a temp dir for etcd");
        let mut etcd = Etcd {
            dir,
            client_port: 0,
            peer_port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        // A free port can be taken by another test between picking and binding: retry.
        for attempt in 0..5 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            if etcd.spawn_and_wait().await {
                return etcd;
            }
            eprintln!("etcd did not start (attempt {attempt}), retrying on other ports");
        }
        panic!(
            "etcd failed to start; its log:\n{}",
            tail(&etcd.log_path(), 30)
        );
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A fresh client.
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None)
            .await
            .expect("connecting to the test etcd")
    }

    /// The process id, while running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is running").id()
    }

    /// Kills etcd (SIGKILL) and waits for it to exit; the data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn_and_wait().await,
            "etcd did not restart; its log:\n{}",
            tail(&self.log_path(), 30)
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    async fn spawn_and_wait(&mut self) -> bool {
        let bin = which("etcd").unwrap_or_else(|| {
            panic!("`etcd` is not on PATH: the integration tests start real etcd processes. Install it with `apt-get install -y etcd-server` (or run `bash scripts/setup`).")
        });
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the etcd log");
        let child = Command::new(bin)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            // Elect in a fraction of a second instead of about one.
            .arg("--heartbeat-interval=20")
            .arg("--election-timeout=200")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().expect("duplicating the log handle"),
            ))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if let Ok(mut c) = Client::connect([self.endpoint()], None).await {
                if c.put("/cairn-test/ready", "1", None).await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        false
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- etcd log ({}) ---\n{}",
                self.endpoint(),
                tail(&self.log_path(), 15)
            );
        }
        self.kill();
    }
}

/// The first executable called `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
