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
//! Lock-free: one atomic word holds the estimate (as `f32`, ample for a latency) and the
//! millisecond it was sampled at, so a reader never pairs an estimate with another's time, and
//! 100 000 instances' estimates take 800 kB, which a pick reads at cache speed. Two samples
//! landing at once may lose one of them, which an estimate can afford.
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

const NS_PER_MS: u64 = 1_000_000;

/// One instance's peak-EWMA latency estimate.
#[derive(Debug, Default)]
pub struct Latency {
    /// The estimate in nanoseconds (`f32` bits, at least 1) in the high half, and the
    /// millisecond of its last sample (wrapping) in the low half; 0 before the first sample.
    word: AtomicU64,
}

impl Latency {
    /// The estimate at `now`, decayed toward zero since its last sample.
    #[inline]
    pub fn cost_ns(&self, now: u64) -> f64 {
        match self.read() {
            None => DEFAULT_RTT.as_nanos() as f64,
            Some((estimate, at)) => estimate * decay(elapsed_ms(at, now)),
        }
    }

    /// What `ewma` weighs for an instance with `inflight` requests or connections: the decayed
    /// estimate times `inflight + 1`. Before its first answer, the default times `inflight`:
    /// a new instance is tried at once, but not flooded while its first answer is on its way.
    #[inline]
    pub fn load(&self, inflight: u32, now: u64) -> f64 {
        let inflight = f64::from(inflight);
        match self.read() {
            None => DEFAULT_RTT.as_nanos() as f64 * inflight,
            Some((estimate, at)) => estimate * decay(elapsed_ms(at, now)) * (inflight + 1.0),
        }
    }

    /// The estimate as of its last sample, undecayed (the default before any).
    pub fn estimate_ns(&self) -> f64 {
        self.read()
            .map_or(DEFAULT_RTT.as_nanos() as f64, |(estimate, _)| estimate)
    }

    /// The estimate as of its last sample, if there was one (what `/services` shows).
    pub fn sampled_ns(&self) -> Option<f64> {
        self.read().map(|(estimate, _)| estimate)
    }

    /// An answer took `sample_ns`, observed at `now`.
    pub fn observe(&self, sample_ns: u64, now: u64) {
        let sample = sample_ns as f64;
        let next = match self.read() {
            Some((estimate, at)) if sample < estimate => {
                let old = decay(elapsed_ms(at, now)).min(1.0 - SAMPLE_WEIGHT);
                estimate * old + sample * (1.0 - old)
            }
            _ => sample,
        };
        // At least one nanosecond, so a stored word is never taken for "never sampled".
        let bits = (next.max(1.0) as f32).to_bits();
        self.word.store(
            (u64::from(bits) << 32) | u64::from(ms(now)),
            Ordering::Relaxed,
        );
    }

    /// A connect failed at `now`.
    pub fn penalize(&self, now: u64) {
        self.observe(PENALTY.as_nanos() as u64, now);
    }

    /// Forgets every sample, for a slot handed to a new instance.
    pub(super) fn reset(&self) {
        self.word.store(0, Ordering::Relaxed);
    }

    /// The estimate and the millisecond of its last sample; none before the first.
    #[inline]
    fn read(&self) -> Option<(f64, u32)> {
        match self.word.load(Ordering::Relaxed) {
            0 => None,
            word => Some((f64::from(f32::from_bits((word >> 32) as u32)), word as u32)),
        }
    }
}

/// The millisecond of `now_ns`, wrapping every 49 days: only differences under that matter,
/// and an estimate that old has long decayed.
#[inline]
fn ms(now_ns: u64) -> u32 {
    (now_ns / NS_PER_MS) as u32
}

/// Milliseconds from `at` to `now_ns`; 0 when `at` is later, as it is when another thread
/// sampled the instance after this caller read its clock (up to a minute of that is told apart
/// from a wrap of the millisecond count).
#[inline]
fn elapsed_ms(at: u32, now_ns: u64) -> u32 {
    match ms(now_ns).wrapping_sub(at) {
        ahead if ahead > u32::MAX - 60_000 => 0,
        elapsed => elapsed,
    }
}

/// The weight left to a sample `elapsed_ms` old: `e^(-elapsed/DECAY)`, without calling `exp`
/// on a pick's path when the sample is recent (under load it always is) or long gone.
#[inline]
fn decay(elapsed_ms: u32) -> f64 {
    let x = f64::from(elapsed_ms) / DECAY.as_millis() as f64;
    if x < 0.01 {
        // Within 2e-7 of e^-x.
        1.0 - x + x * x / 2.0
    } else if x > 40.0 {
        0.0
    } else {
        (-x).exp()
    }
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
        assert!(
            (l.estimate_ns() / MS as f64 - expected).abs() < 1e-5,
            "{}",
            l.estimate_ns()
        );
        l.observe(MS, 4 * S);
        let expected = expected * (-0.3f64).exp() + 1.0 * (1.0 - (-0.3f64).exp());
        assert!(
            (l.estimate_ns() / MS as f64 - expected).abs() < 1e-5,
            "{}",
            l.estimate_ns()
        );
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
        assert!((later - 50.0 / std::f64::consts::E).abs() < 1e-5, "{later}");
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
    fn a_sample_newer_than_the_readers_clock_is_not_decayed() {
        // Another thread sampled after this one read its clock: no time has passed, not 49 days.
        let l = Latency::default();
        l.observe(20 * MS, 10 * S + 5 * MS);
        assert_eq!(l.cost_ns(10 * S), 20.0 * MS as f64);
        assert_eq!(l.load(1, 10 * S), 40.0 * MS as f64);
        // And the estimate still decays once the clock moves on, across a wrap of the
        // millisecond count too.
        let wrap = (u64::from(u32::MAX) + 1) * MS;
        l.observe(20 * MS, wrap - S);
        let later = l.cost_ns(wrap + 9 * S) / MS as f64;
        assert!((later - 20.0 / std::f64::consts::E).abs() < 1e-5, "{later}");
    }

    #[test]
    fn a_failed_connect_costs_a_second() {
        let l = Latency::default();
        l.observe(MS, 0);
        l.penalize(S);
        assert_eq!(l.cost_ns(S), 1000.0 * MS as f64);
    }
}
