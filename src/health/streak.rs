//! Rise/fall hysteresis, the one rule every active check follows: `fall` failures in a row
//! take a healthy target down, `rise` passes in a row bring it back, and a result against the
//! run starts a new run. Pure, so discovered instances (atomically, in their shared state) and
//! registrations (in their check's task) count alike.

use std::sync::atomic::{AtomicU32, Ordering};

/// The results in a row so far and the health they add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// Passes in a row when positive, failures in a row when negative (saturating: thresholds
    /// are at most 1000).
    run: i16,
    /// Whether the target counts as healthy.
    healthy: bool,
}

impl Streak {
    /// No result yet, starting `healthy` or not.
    pub const fn new(healthy: bool) -> Streak {
        Streak { run: 0, healthy }
    }

    /// Whether the target counts as healthy.
    pub fn healthy(self) -> bool {
        self.healthy
    }

    /// Records one result; returns the new health when it flipped. Runs are counted up to
    /// 32 767, and a threshold above that counts as 32 767.
    pub fn record(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        self.run = match (passed, self.run) {
            (true, r) if r > 0 => r.saturating_add(1),
            (true, _) => 1,
            (false, r) if r < 0 => r.saturating_sub(1),
            (false, _) => -1,
        };
        let (run, most) = (i64::from(self.run), i64::from(i16::MAX));
        let flips = match self.healthy {
            true => -run >= i64::from(fall).min(most),
            false => run >= i64::from(rise).min(most),
        };
        if flips {
            self.healthy = !self.healthy;
            return Some(self.healthy);
        }
        None
    }

    /// One word: the run in the low 16 bits, bit 16 set when unhealthy (so 0 is healthy
    /// with no result, a new instance's state).
    fn pack(self) -> u32 {
        u32::from(self.run as u16) | (u32::from(!self.healthy) << 16)
    }

    fn unpack(word: u32) -> Streak {
        Streak {
            run: word as u16 as i16,
            healthy: word & (1 << 16) == 0,
        }
    }
}

/// A [`Streak`] that several tasks may read and record, starting healthy.
#[derive(Debug, Default)]
pub struct AtomicStreak(AtomicU32);

impl AtomicStreak {
    /// The streak now.
    pub fn load(&self) -> Streak {
        Streak::unpack(self.0.load(Ordering::Relaxed))
    }

    /// Records one result; returns the new health when it flipped.
    pub fn record(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let mut flipped = None;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let mut streak = Streak::unpack(word);
                flipped = streak.record(passed, rise, fall);
                Some(streak.pack())
            });
        flipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_count_results_in_a_row() {
        let mut s = Streak::new(false);
        assert_eq!(s.record(true, 2, 3), None, "one pass is not enough to rise");
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(true));
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(
            s.record(true, 2, 3),
            None,
            "a pass resets the failure count"
        );
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), Some(false));
        assert_eq!(s.record(false, 2, 3), None, "already down");
        assert!(!s.healthy());
    }

    #[test]
    fn the_atomic_form_counts_the_same_and_starts_healthy() {
        let atomic = AtomicStreak::default();
        let mut plain = Streak::new(true);
        assert_eq!(atomic.load(), plain);
        let results = [
            false, false, true, false, false, false, true, true, false, true, true,
        ];
        for passed in results.into_iter().cycle().take(200) {
            assert_eq!(atomic.record(passed, 2, 3), plain.record(passed, 2, 3));
            assert_eq!(atomic.load(), plain);
        }
        // Long runs saturate instead of wrapping into the other sign.
        for _ in 0..40_000 {
            atomic.record(false, 1, 1);
        }
        assert!(!atomic.load().healthy());
        assert_eq!(atomic.record(true, 1, 1), Some(true));
        // A threshold past what a run counts to still flips, once the run is at its top.
        let mut huge = Streak::new(true);
        let flipped = (0..40_000).find_map(|_| huge.record(false, 1, u32::MAX));
        assert_eq!(flipped, Some(false));
    }
}
