//! The check of one of this node's own registrations: its target probed every interval (±10%),
//! and each flip of its [`Streak`] sent to the registrar, which registers or deregisters it.
//!
//! [`Streak`]: super::streak::Streak

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::check::Check;
use super::probe::Prober;
use super::streak::Streak;
use crate::backoff::jitter;

impl Check {
    /// Probes until `stop`, sending `(index, healthy)` to `changes` on every change of state.
    /// `healthy` is where it starts: a new check starts unhealthy, one restarted by a reload
    /// keeps what it found.
    pub(crate) fn spawn(
        self,
        index: usize,
        label: String,
        healthy: bool,
        changes: mpsc::Sender<(usize, bool)>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let prober = Prober::alone(self.timeout);
            let mut streak = Streak::new(healthy);
            let mut told_waiting = false;
            let mut next = Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
                // From the probe's start, and never a burst to catch up after a slow probe.
                next = Instant::now().max(next + self.interval.mul_f64(jitter()));
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = prober.probe(&self.probe) => r,
                };
                let passed = result.is_ok();
                let error = result.as_ref().err().map(String::as_str).unwrap_or("");
                let flipped = streak.record(passed, self.rise, self.fall);
                match flipped {
                    Some(true) => {
                        info!(instance = %label, check = %self.probe, "health check passing, registering")
                    }
                    Some(false) => warn!(
                        instance = %label,
                        check = %self.probe,
                        error,
                        "health check failing, deregistering"
                    ),
                    None if !passed && !streak.healthy() && !told_waiting => {
                        told_waiting = true;
                        warn!(
                            instance = %label,
                            check = %self.probe,
                            error,
                            "health check failing, not registered until it passes"
                        );
                    }
                    None => debug!(instance = %label, passed, "health check"),
                }
                if let Some(healthy) = flipped {
                    if changes.send((index, healthy)).await.is_err() {
                        return;
                    }
                }
            }
        })
    }
}
