//! Exponential backoff with jitter, for every loop that retries etcd.

use std::time::Duration;

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
