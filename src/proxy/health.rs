//! Active health checks: every instance of a service probed each interval (TCP connect, an
//! HTTP GET answered 2xx, or gRPC's `grpc.health.v1.Health/Check` answered `SERVING`); one failing `fall` times in a row leaves the rotation until it passes
//! `rise` times in a row. HTTP probes go through the route's connection pool, so they reuse its
//! kept-alive connections instead of opening one per probe.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::{HealthCheck, HealthProbe};
use super::http::h1::client::SendFail;
use super::http::h1::decoded::send_request;
use super::http::h1::head::{end_request, request_line};
use super::http::h1::write::HeadSink;
use super::http::routes::Route;
use crate::addr::Addr;
use crate::net::{dial, grpc_health, OwnAddrs};
use crate::snapshot::InstanceState;

/// The largest health answer read: a status page, not a download.
const MAX_ANSWER: usize = 1024 * 1024;

/// Probes the instances of one service until stopped.
pub(crate) struct HealthChecker {
    /// The service's route: its cell and connection pool.
    route: Arc<Route>,
    /// What to probe and how often.
    check: HealthCheck,
    /// cairn's own listeners, never probed.
    own: Arc<OwnAddrs>,
}

impl HealthChecker {
    pub(crate) fn new(route: Arc<Route>, check: HealthCheck, own: Arc<OwnAddrs>) -> HealthChecker {
        HealthChecker { route, check, own }
    }

    /// Probes a round every interval (±10%, so the nodes of a fleet drift apart) until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let checker = Arc::new(self);
        let mut next = Instant::now() + jittered(checker.check.interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            next += jittered(checker.check.interval);
            let snapshot = arc_swap::Guard::into_inner(checker.route.cell.load());
            let mut probes = JoinSet::new();
            for (instance, state) in snapshot.instances().iter().zip(snapshot.states()) {
                let (checker, state) = (Arc::clone(&checker), Arc::clone(state));
                let addr = instance.endpoint.addr.clone();
                // Spread over the first tenth of the interval: no burst on a large service.
                let spread = checker.check.interval.mul_f64(rand::random::<f64>() / 10.0);
                probes.spawn(async move {
                    tokio::time::sleep(spread).await;
                    let result = checker.probe(&addr).await;
                    checker.record(&addr, &state, result);
                });
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    done = probes.join_next() => if done.is_none() { break },
                }
            }
        }
    }

    fn record(&self, addr: &Addr, state: &InstanceState, result: Result<(), String>) {
        let cell = &self.route.cell;
        let service = self.route.service.as_str();
        cell.count_check(result.is_ok());
        match state.checked(result.is_ok(), self.check.rise, self.check.fall) {
            Some(true) => {
                cell.rebuild();
                warn!(
                    service,
                    %addr,
                    error = result.err().unwrap_or_default(),
                    usable = cell.load().usable(),
                    "instance failing health checks: out of rotation"
                );
            }
            Some(false) => {
                cell.rebuild();
                info!(service, %addr, "instance passing health checks again: back in rotation");
            }
            None => debug!(service, %addr, passed = result.is_ok(), "health check"),
        }
    }

    async fn probe(&self, addr: &Addr) -> Result<(), String> {
        let timeout = self.check.timeout;
        let probe = async {
            match &self.check.probe {
                HealthProbe::Tcp => dial(addr, timeout, &self.own)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                HealthProbe::Http(path) => self.get(addr, path).await,
                HealthProbe::Grpc(service) => {
                    grpc_health::check(addr, service, timeout, &self.own).await
                }
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            })
    }

    async fn get(&self, addr: &Addr, path: &str) -> Result<(), String> {
        let mut out = Vec::with_capacity(128);
        request_line(&mut out, "GET", path);
        out.header("user-agent", b"cairn-health-check");
        end_request(&mut out, addr.to_string().as_bytes());
        let timeout = self.check.timeout;
        let resp = send_request(&self.route.pool, addr, &mut out, None, false, timeout)
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

/// `interval` ±10%.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}
