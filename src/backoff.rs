//! Exponential backoff with jitter, for every loop that retries etcd, and the jitter that keeps
//! a fleet's timers apart.

use std::time::Duration;

/// The first retry of etcd: soon, so a restarted member is picked up quickly.
pub(crate) const RETRY_BASE: Duration = Duration::from_millis(50);
/// The longest wait between retries of etcd: cairn is back within a second of etcd's return (a
/// lost registration too) without flooding a struggling cluster.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(1);

/// Delays that double from `base` up to `max`, each drawn uniformly from its upper half so that
/// many cairn processes retrying one etcd do not retry in step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delays of every loop that retries etcd (discovery's watches, the registrar),
    /// from [`RETRY_BASE`] to [`RETRY_MAX`].
    pub(crate) fn etcd() -> Backoff {
        Backoff::new(RETRY_BASE, RETRY_MAX)
    }

    /// The delay before the next attempt; each call doubles the ceiling up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Starts over from `base`, after an attempt succeeded.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A factor from 0.9 to 1.1: a period scaled by it is ±10%, so the nodes of a fleet that
/// started together (checks, ejections) do not act in the same second.
pub(crate) fn jitter() -> f64 {
    0.9 + 0.2 * rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(
            d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100),
            "{d:?}"
        );
        assert!(
            d[2] >= Duration::from_millis(200) && d[2] <= Duration::from_millis(400),
            "{d:?}"
        );
        for late in &d[4..] {
            assert!(
                *late >= Duration::from_millis(500) && *late <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
