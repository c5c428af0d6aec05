//! Real gRPC programs for the gRPC tests: servers and a client built on Python's grpcio, which
//! nobody here wrote (`tests/support/grpc_server.py`, `tests/support/grpc_client.py`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

fn script(name: &str) -> String {
    format!("{}/tests/support/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A grpcio server, as its own process, killed on drop.
pub struct GrpcServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl GrpcServer {
    /// Starts a server that calls itself `id`.
    pub fn start(id: &str) -> GrpcServer {
        GrpcServer::start_with_health(id, None)
    }

    /// Starts a server whose health check answers NOT_SERVING while `health` holds `down`.
    pub fn start_with_health(id: &str, health: Option<&Path>) -> GrpcServer {
        GrpcServer::start_with(id, health, None)
    }

    /// Starts a server with a health file, and at most `max_streams` streams per connection.
    pub fn start_with(id: &str, health: Option<&Path>, max_streams: Option<u32>) -> GrpcServer {
        let mut command = Command::new("python3");
        command
            .arg(script("grpc_server.py"))
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(file) = health {
            command.env("HEALTH_FILE", file);
        }
        if let Some(n) = max_streams {
            command.env("MAX_STREAMS", n.to_string());
        }
        let mut child = command
            .spawn()
            .expect("starting python3 tests/support/grpc_server.py (is grpcio installed? bash scripts/setup)");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the server's port");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the gRPC server printed {line:?}, not its port"));
        GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Kills the server at once, calls in flight and all.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `grpc_client.py` against `target` with `job` (see the script) and returns what it
/// printed. Blocks: call it from `spawn_blocking` in async tests.
pub fn grpc_client(target: SocketAddr, job: &Value) -> Value {
    let out = Command::new("python3")
        .arg(script("grpc_client.py"))
        .arg(target.to_string())
        .arg(job.to_string())
        .output()
        .expect("running python3 tests/support/grpc_client.py");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "the gRPC client printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// [`grpc_client`] off the async runtime.
pub async fn grpc_job(target: SocketAddr, job: Value) -> Value {
    tokio::task::spawn_blocking(move || grpc_client(target, &job))
        .await
        .expect("the gRPC client thread")
}
