//! The live state of one instance, shared by the successive snapshots it appears in: requests in
//! flight and latency (in its service's slots, see `slots`), consecutive failures, ejection
//! (Envoy's outlier detection) and active health checks.
//!
//! Time is passed in as milliseconds on the caller's clock, so the rules are pure and testable.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use super::latency::Latency;
use super::policy::Outlier;
use super::slots::{Place, Slot};
use crate::health::streak::AtomicStreak;

/// What a report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing worth telling.
    Nothing,
    /// The instance crossed its failure threshold (or failed on probation): eject it if the
    /// service can spare it.
    Eject,
    /// An instance on probation succeeded: it is back in full.
    Readmitted,
}

/// The live state of one instance.
#[derive(Debug, Default)]
pub struct InstanceState {
    /// What a pick reads (in flight, latency), in its service's slots.
    slot: Slot,
    /// Connect failures in a row (16 bits, saturating: thresholds are at most 1000, and at
    /// 100 000 instances the state's size counts).
    failures: AtomicU16,
    /// 5xx answers in a row.
    errors: AtomicU16,
    /// When the current ejection ends (ms); 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row: each lasts one base ejection time longer.
    ejections: AtomicU16,
    /// Out of an ejection, not yet proven: the next failure ejects it again.
    probation: AtomicBool,
    /// When it was last readmitted (ms), for the decay of `ejections`.
    readmitted_at: AtomicU64,
    /// What active health checks found (healthy until they say otherwise).
    checks: AtomicStreak,
}

/// One connection or request in flight on an instance, until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<InstanceState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.slot.hot().end();
    }
}

impl InstanceState {
    /// A fresh state: healthy, nothing in flight, with a slot of its own (for an instance no
    /// service holds any more).
    pub fn new() -> Arc<InstanceState> {
        Arc::new(InstanceState::default())
    }

    /// A fresh state in `slot`, one of its service's.
    pub(super) fn in_slot(slot: Slot) -> Arc<InstanceState> {
        Arc::new(InstanceState {
            slot,
            ..InstanceState::default()
        })
    }

    /// Where its hot state is among its service's slots.
    pub(super) fn place(&self) -> Place {
        self.slot.place()
    }

    /// Connections or requests in flight.
    #[inline]
    pub fn inflight(&self) -> u32 {
        self.slot.hot().inflight()
    }

    /// Its latency estimate.
    #[inline]
    pub fn latency(&self) -> &Latency {
        self.slot.hot().latency()
    }

    /// Counts one more in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.slot.hot().begin();
        InFlight(Arc::clone(self))
    }

    /// Whether the instance is ejected at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// When the current ejection ends, if ejected.
    pub fn ejected_until(&self) -> Option<u64> {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => None,
            until => Some(until),
        }
    }

    /// Whole seconds left in the current ejection at `now` (ms), rounded up, if ejected.
    pub fn ejected_seconds_left(&self, now: u64) -> Option<u64> {
        self.ejected_until()
            .map(|until| until.saturating_sub(now).div_ceil(1000))
    }

    /// Connect failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed).into()
    }

    /// Whether it is on probation after an ejection.
    pub fn on_probation(&self) -> bool {
        self.probation.load(Ordering::Relaxed)
    }

    /// Whether active health checks say it is down.
    pub fn checks_failing(&self) -> bool {
        !self.checks.load().healthy()
    }

    /// A connect succeeded at `now`.
    pub fn connected(&self, now: u64, policy: &Outlier) -> Verdict {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        self.succeeded(now, policy)
    }

    /// A connect failed at `now`.
    pub fn connect_failed(&self, policy: &Outlier) -> Verdict {
        let n = bump(&self.failures);
        self.failed(n.into(), policy.consecutive_failures)
    }

    /// An HTTP response arrived; `server_error` when it was a 502, 503 or 504. Any answer proves
    /// the instance reachable; a server error counts against it only when 5xx ejection is on.
    pub fn answered(&self, server_error: bool, now: u64, policy: &Outlier) -> Verdict {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if !server_error || policy.consecutive_5xx == 0 {
            if self.errors.load(Ordering::Relaxed) != 0 {
                self.errors.store(0, Ordering::Relaxed);
            }
            return self.succeeded(now, policy);
        }
        let n = bump(&self.errors);
        self.failed(n.into(), policy.consecutive_5xx)
    }

    fn failed(&self, in_a_row: u32, threshold: u32) -> Verdict {
        if threshold == 0 {
            return Verdict::Nothing;
        }
        if self.on_probation() || in_a_row >= threshold {
            Verdict::Eject
        } else {
            Verdict::Nothing
        }
    }

    fn succeeded(&self, now: u64, policy: &Outlier) -> Verdict {
        if self.probation.swap(false, Ordering::Relaxed) {
            self.readmitted_at.store(now, Ordering::Relaxed);
            return Verdict::Readmitted;
        }
        // Staying healthy for a base ejection time forgives the past ejections.
        if self.ejections.load(Ordering::Relaxed) != 0
            && now.saturating_sub(self.readmitted_at.load(Ordering::Relaxed))
                >= policy.base_ejection_ms
        {
            self.ejections.store(0, Ordering::Relaxed);
        }
        Verdict::Nothing
    }

    /// Ejects the instance at `now`, for base x ejections-in-a-row (capped), scaled by `jitter`
    /// (about 0.9 to 1.1, so a fleet does not readmit in lockstep). Returns when it ends, or
    /// `None` when it already was ejected (another thread won).
    pub fn eject(&self, now: u64, policy: &Outlier, jitter: f64) -> Option<u64> {
        let ejections = u64::from(bump(&self.ejections));
        let length = policy
            .base_ejection_ms
            .saturating_mul(ejections)
            .min(policy.max_ejection_ms);
        let until = now + ((length as f64) * jitter) as u64;
        let previous = self.ejected_until.load(Ordering::Relaxed);
        if previous != 0 && now < previous {
            self.ejections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if self
            .ejected_until
            .compare_exchange(previous, until.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.ejections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.probation.store(false, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        Some(until)
    }

    /// Ends an ejection that is over at `now`: the instance goes on probation. Returns whether
    /// it did.
    pub fn expire(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 || now < until {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.probation.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records an active health check; returns the new health when it flipped (false: out of
    /// rotation).
    pub fn checked(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        self.checks.record(passed, rise, fall)
    }
}

/// Adds one to a count of things in a row, stopping at the top instead of wrapping.
fn bump(counter: &AtomicU16) -> u16 {
    let before = counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_add(1))
        })
        .unwrap_or_else(|n| n);
    before.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_and_a_success_in_between_forgives() {
        let p = Outlier::default();
        let s = InstanceState::new();
        for _ in 0..4 {
            assert_eq!(s.connect_failed(&p), Verdict::Nothing);
        }
        assert_eq!(s.connected(0, &p), Verdict::Nothing);
        for _ in 0..4 {
            assert_eq!(s.connect_failed(&p), Verdict::Nothing);
        }
        assert_eq!(s.connect_failed(&p), Verdict::Eject);
    }

    #[test]
    fn ejections_grow_end_in_probation_and_decay() {
        let p = Outlier::default();
        let s = InstanceState::new();
        assert_eq!(s.eject(1_000, &p, 1.0), Some(31_000));
        assert!(s.is_ejected(30_999) && !s.is_ejected(31_000));
        assert_eq!(s.eject(2_000, &p, 1.0), None, "already ejected");
        assert!(!s.expire(30_000));
        assert!(s.expire(31_000));
        assert!(s.on_probation() && !s.is_ejected(31_000));
        // One failure on probation ejects again, for twice as long.
        assert_eq!(s.connect_failed(&p), Verdict::Eject);
        assert_eq!(s.eject(32_000, &p, 1.0), Some(92_000));
        assert!(s.expire(92_000));
        assert_eq!(s.connected(92_000, &p), Verdict::Readmitted);
        assert!(!s.on_probation());
        // Healthy for a base ejection time: the count starts over.
        assert_eq!(s.connected(122_000, &p), Verdict::Nothing);
        assert_eq!(s.eject(130_000, &p, 1.0), Some(160_000));
        // The cap, and the jitter.
        let capped = InstanceState::new();
        for i in 0..20 {
            let now = i * 1_000_000;
            if let Some(until) = capped.eject(now, &p, 1.1) {
                assert!(until - now <= 330_000, "{}", until - now);
            }
            capped.expire(now + 400_000);
        }
    }

    #[test]
    fn server_errors_count_only_when_asked() {
        let off = Outlier::default();
        let s = InstanceState::new();
        for _ in 0..100 {
            assert_eq!(s.answered(true, 0, &off), Verdict::Nothing);
        }
        let on = Outlier {
            consecutive_5xx: 3,
            ..off
        };
        let s = InstanceState::new();
        assert_eq!(s.answered(true, 0, &on), Verdict::Nothing);
        assert_eq!(s.answered(false, 0, &on), Verdict::Nothing);
        assert_eq!(s.answered(true, 0, &on), Verdict::Nothing);
        assert_eq!(s.answered(true, 0, &on), Verdict::Nothing);
        assert_eq!(s.answered(true, 0, &on), Verdict::Eject);
    }

    #[test]
    fn checks_flip_after_fall_and_rise() {
        let s = InstanceState::new();
        assert_eq!(s.checked(false, 2, 3), None);
        assert_eq!(s.checked(false, 2, 3), None);
        assert_eq!(s.checked(false, 2, 3), Some(false));
        assert!(s.checks_failing());
        assert_eq!(s.checked(true, 2, 3), None);
        assert_eq!(s.checked(true, 2, 3), Some(true));
        assert!(!s.checks_failing());
        let guard = s.begin();
        assert_eq!(s.inflight(), 1);
        drop(guard);
        assert_eq!(s.inflight(), 0);
    }
}
