//! Lets one event through per second, so a dead instance under load logs one warning a second,
//! not one per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One event per interval; lock-free, so the data plane can ask on every failure.
#[derive(Debug)]
pub(crate) struct Throttle {
    /// What elapsed times are measured from.
    origin: Instant,
    /// How often an event gets through.
    every: Duration,
    /// Milliseconds since `origin` of the last event let through, plus one (0 = never).
    last: AtomicU64,
}

impl Throttle {
    /// A throttle letting one event through per second.
    pub(crate) fn per_second() -> Throttle {
        Throttle {
            origin: Instant::now(),
            every: Duration::from_secs(1),
            last: AtomicU64::new(0),
        }
    }

    /// Whether this event may be logged loudly.
    pub(crate) fn allow(&self) -> bool {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.every.as_millis() as u64 {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_event_per_second_gets_through() {
        let limit = Throttle::per_second();
        assert!(limit.allow());
        assert!(!limit.allow());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!limit.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limit.allow());
        assert!(!limit.allow());
    }
}
