//! An instance's latency as the `ewma` policy sees it: a peak-EWMA of the time to its answers
//! (HTTP and gRPC: to the response head; TCP: to the connect), as linkerd2-proxy and Finagle
//! keep it.
//!
//! - A sample above the estimate replaces it at once (the peak): a slowing instance loses its
//!   share from its first slow answer.
//! - A sample below it moves the estimate toward it by how long ago the last sample was
//!   (weight `1 - e^(-elapsed/DECAY)`), and by at least [`SAMPLE_WEIGHT`]: one fast answer after
//!   a quiet minute counts in full, and a hiccup (one answer a scheduler delayed) is forgotten
//!   within a few dozen answers rather than over seconds, which would starve an instance as
//!   good as the others.
//! - Read, the estimate decays toward zero with the time since its last sample, so an instance
//!   that gets no traffic (because it was slow) looks cheaper and cheaper until it is tried
//!   again, and a recovered one wins its share back.
//! - A new instance is tried at once, and costs [`DEFAULT_RTT`] per request in flight until its
//!   first answer; a failed connect counts as [`PENALTY`].
//!
//! Lock-free: two atomics, written with plain stores. Two samples landing at once may lose one
//! of them, which an estimate can afford.
//!
//! Time is passed in as nanoseconds on the caller's clock (`clock::now_ns` in cairn), so the
//! rules are pure and testable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A new instance's estimate before its first answer (linkerd2-proxy's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// How fast the estimate forgets: an old sample's weight falls by e every `DECAY`
/// (linkerd2-proxy's default).
pub const DECAY: Duration = Duration::from_secs(10);

/// The least weight a sample below the estimate gets, however soon after the last one.
pub const SAMPLE_WEIGHT: f64 = 1.0 / 8.0;

/// What a failed connect counts as: far above any answer, so the instance is avoided until the
/// estimate has decayed (about a minute), or ejection takes it out first.
pub const PENALTY: Duration = Duration::from_secs(1);

/// The sample time of an estimate never sampled: no time has passed since, so it never decays.
const NEVER: u64 = u64::MAX;

/// One instance's peak-EWMA latency estimate.
#[derive(Debug, Default)]
pub struct Latency {
    /// The estimate in nanoseconds, as `f64` bits; 0 before the first sample.
    estimate: AtomicU64,
    /// When it was last sampled; the estimate decays from there.
    at: AtomicU64,
}

impl Latency {
    /// The estimate at `now`, decayed toward zero since its last sample.
    #[inline]
    pub fn cost_ns(&self, now: u64) -> f64 {
        let (estimate, at) = self.read();
        estimate * decay(now.saturating_sub(at))
    }

    /// What `ewma` weighs for an instance with `inflight` requests or connections: the decayed
    /// estimate times `inflight + 1`. Before its first answer, the default times `inflight`:
    /// a new instance is tried at once, but not flooded while its first answer is on its way.
    #[inline]
    pub fn load(&self, inflight: u32, now: u64) -> f64 {
        let inflight = f64::from(inflight);
        match self.read() {
            (default, NEVER) => default * inflight,
            (estimate, at) => estimate * decay(now.saturating_sub(at)) * (inflight + 1.0),
        }
    }

    /// The estimate as of its last sample, undecayed (the default before any).
    pub fn estimate_ns(&self) -> f64 {
        self.read().0
    }

    /// The estimate as of its last sample, if there was one (what `/services` shows).
    pub fn sampled_ns(&self) -> Option<f64> {
        match self.read() {
            (_, NEVER) => None,
            (estimate, _) => Some(estimate),
        }
    }

    /// An answer took `sample_ns`, observed at `now`.
    pub fn observe(&self, sample_ns: u64, now: u64) {
        let (estimate, at) = self.read();
        let sample = sample_ns as f64;
        let next = if sample >= estimate || at == NEVER {
            sample
        } else {
            let old = decay(now.saturating_sub(at)).min(1.0 - SAMPLE_WEIGHT);
            estimate * old + sample * (1.0 - old)
        };
        self.write(next, now);
    }

    /// A connect failed at `now`.
    pub fn penalize(&self, now: u64) {
        self.observe(PENALTY.as_nanos() as u64, now);
    }

    fn read(&self) -> (f64, u64) {
        // Acquire, paired with the Release in `write`: an estimate is never read with an older
        // sample time than its own.
        match self.estimate.load(Ordering::Acquire) {
            // Never sampled: the default, undecayed (a fresh instance must not look free), until
            // the first sample replaces it.
            0 => (DEFAULT_RTT.as_nanos() as f64, NEVER),
            bits => (f64::from_bits(bits), self.at.load(Ordering::Relaxed)),
        }
    }

    fn write(&self, estimate: f64, now: u64) {
        self.at.store(now, Ordering::Relaxed);
        // At least one nanosecond, so a stored estimate is never taken for "never sampled".
        self.estimate
            .store(estimate.max(1.0).to_bits(), Ordering::Release);
    }
}

/// The weight left to a sample `elapsed_ns` old.
#[inline]
fn decay(elapsed_ns: u64) -> f64 {
    if elapsed_ns == 0 {
        return 1.0;
    }
    (-(elapsed_ns as f64) / DECAY.as_nanos() as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    #[test]
    fn a_new_instance_costs_the_default_until_its_first_answer() {
        let l = Latency::default();
        assert_eq!(l.cost_ns(0), 30.0 * MS as f64);
        assert_eq!(l.cost_ns(3600 * S), 30.0 * MS as f64, "the default decayed");
        l.observe(2 * MS, 10 * S);
        assert_eq!(
            l.cost_ns(10 * S),
            2.0 * MS as f64,
            "the first sample did not replace the default"
        );
    }

    #[test]
    fn a_slow_answer_is_taken_at_once_and_fast_ones_bring_it_down_with_time() {
        let l = Latency::default();
        l.observe(MS, 0);
        l.observe(50 * MS, S);
        assert_eq!(l.estimate_ns(), 50.0 * MS as f64, "the peak was not taken");
        // A fast answer right after moves it by an eighth; three seconds later, by 1 - e^-0.3.
        l.observe(MS, S);
        let expected = 50.0 * 7.0 / 8.0 + 1.0 / 8.0;
        assert!((l.estimate_ns() / MS as f64 - expected).abs() < 1e-6);
        l.observe(MS, 4 * S);
        let expected = expected * (-0.3f64).exp() + 1.0 * (1.0 - (-0.3f64).exp());
        assert!((l.estimate_ns() / MS as f64 - expected).abs() < 1e-6);
        // A few dozen fast answers in the same instant forget the peak.
        for _ in 0..60 {
            l.observe(MS, 4 * S);
        }
        assert!(l.estimate_ns() < 1.1 * MS as f64, "{}", l.estimate_ns());
    }

    #[test]
    fn an_instance_without_traffic_looks_cheaper_until_it_is_tried_again() {
        let l = Latency::default();
        l.observe(50 * MS, 0);
        assert_eq!(l.cost_ns(0), 50.0 * MS as f64);
        // One DECAY later, e times cheaper; it passes a 2 ms instance after ln(25) DECAYs.
        let later = l.cost_ns(10 * S) / MS as f64;
        assert!((later - 50.0 / std::f64::consts::E).abs() < 1e-6, "{later}");
        assert!(l.cost_ns(33 * S) < 2.0 * MS as f64);
        assert_eq!(
            l.estimate_ns(),
            50.0 * MS as f64,
            "reading changed the estimate"
        );
    }

    #[test]
    fn a_new_instance_is_tried_at_once_but_not_flooded() {
        let l = Latency::default();
        assert_eq!(l.load(0, 5 * S), 0.0);
        assert_eq!(l.load(2, 5 * S), 60.0 * MS as f64);
        l.observe(MS, 5 * S);
        assert_eq!(l.load(0, 5 * S), MS as f64);
        assert_eq!(l.load(2, 5 * S), 3.0 * MS as f64);
    }

    #[test]
    fn a_failed_connect_costs_a_second() {
        let l = Latency::default();
        l.observe(MS, 0);
        l.penalize(S);
        assert_eq!(l.cost_ns(S), 1000.0 * MS as f64);
    }
}
