//! Real HTTP programs for the HTTP tests: the Python upstream, Python's http.client and curl.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

fn script(name: &str) -> String {
    format!("{}/tests/support/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `tests/support/upstream.py` running as its own process.
pub struct PyUpstream {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl PyUpstream {
    /// Starts an upstream that answers with `name`.
    pub fn start(name: &str) -> PyUpstream {
        PyUpstream::start_with(name, &[])
    }

    /// Starts an upstream with options: `--port P`, `--delay-ms N`.
    pub fn start_with(name: &str, options: &[&str]) -> PyUpstream {
        let mut child = Command::new("python3")
            .arg(script("upstream.py"))
            .arg(name)
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting python3 tests/support/upstream.py (is python3 installed?)");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the upstream's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("upstream printed {line:?}, not a port"));
        PyUpstream {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /stats`, asked directly.
    pub fn stats(&self) -> Value {
        let out = curl(&["-sS", &format!("http://{}/stats", self.addr)]);
        serde_json::from_slice(&out.stdout).expect("stats are JSON")
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One response seen by `tests/support/client.py`.
#[derive(Debug, Clone, PartialEq)]
pub struct PyResponse {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
    /// How many connections the client had opened by then.
    pub connections: u64,
}

/// Runs `tests/support/client.py`: `count` requests over one keep-alive connection.
pub fn python_client(addr: SocketAddr, count: usize, extra: &[&str]) -> Vec<PyResponse> {
    let out = Command::new("python3")
        .arg(script("client.py"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(count.to_string())
        .args(extra)
        .output()
        .expect("running python3 tests/support/client.py");
    assert!(
        out.status.success(),
        "client.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("client.py prints JSON lines");
            PyResponse {
                status: v["status"].as_u64().expect("a status") as u16,
                body: v["body"].as_str().expect("a body").to_string(),
                connections: v["conn"].as_u64().expect("a connection count"),
            }
        })
        .collect()
}

/// Runs curl with `args` and returns its output.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(args)
        .output()
        .expect("running curl (is curl installed?)")
}

/// `curl -s -w` the status code and body of one request.
pub fn curl_status(args: &[&str]) -> (u16, String) {
    let mut all = vec!["-s", "-o", "-", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A process's resident set and its peak, in KiB, from /proc.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}
