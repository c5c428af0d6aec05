//! A service's active health checks: every instance probed each interval (see `probe`); one
//! failing `fall` times in a row leaves the rotation until it passes `rise` times in a row (see
//! `streak`). HTTP probes go through the route's connection pool, so they reuse its kept-alive
//! connections instead of opening one per probe.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::check::HealthCheck;
use super::probe::Prober;
use crate::addr::Addr;
use crate::backoff::jitter;
use crate::proxy::http::routes::Route;
use crate::snapshot::InstanceState;

/// Probes the instances of one service until stopped.
pub(crate) struct HealthChecker {
    /// The service's route: its cell and connection pool.
    route: Arc<Route>,
    /// What to probe and how often.
    check: HealthCheck,
    /// Probes through the route's pool (which never dials cairn's own listeners).
    prober: Prober,
}

impl HealthChecker {
    pub(crate) fn new(route: Arc<Route>, check: HealthCheck) -> HealthChecker {
        let prober = Prober::new(Arc::clone(&route.pool), check.timeout);
        HealthChecker {
            route,
            check,
            prober,
        }
    }

    /// Probes a round every interval (±10%, so the nodes of a fleet drift apart) until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let checker = Arc::new(self);
        let mut next = Instant::now() + checker.check.interval.mul_f64(jitter());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            next += checker.check.interval.mul_f64(jitter());
            let snapshot = arc_swap::Guard::into_inner(checker.route.cell.load());
            let mut probes = JoinSet::new();
            for (instance, state) in snapshot.instances().iter().zip(snapshot.states()) {
                let (checker, state) = (Arc::clone(&checker), Arc::clone(state));
                let addr = instance.endpoint.addr.clone();
                // Spread over the first tenth of the interval: no burst on a large service.
                let spread = checker.check.interval.mul_f64(rand::random::<f64>() / 10.0);
                probes.spawn(async move {
                    tokio::time::sleep(spread).await;
                    let result = checker.prober.probe_at(&checker.check.probe, &addr).await;
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
            Some(false) => {
                cell.rebuild();
                warn!(
                    service,
                    %addr,
                    error = result.err().unwrap_or_default(),
                    usable = cell.load().usable(),
                    "instance failing health checks: out of rotation"
                );
            }
            Some(true) => {
                cell.rebuild();
                info!(service, %addr, "instance passing health checks again: back in rotation");
            }
            None => debug!(service, %addr, passed = result.is_ok(), "health check"),
        }
    }
}
