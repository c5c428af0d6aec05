//! One service's routing state: its current snapshot (see `frozen`), its policy, its
//! round-robin positions, the slots of its instances' hot states, and the order in which a
//! failed pick tries the others.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use super::frozen::{build, Pick, Snapshot};
use super::policy::{default_policy, Policy};
use super::slots::Slots;
use super::state::InstanceState;
use super::timing::Timings;
use crate::addr::Addr;
use crate::instance::Instance;

/// The routing state of one service.
///
/// Listeners resolve their cell once at start and keep it; the cell outlives any snapshot.
#[derive(Debug)]
pub struct ServiceCell {
    /// The current instances; replaced whole on every change.
    snapshot: ArcSwap<Snapshot>,
    /// How instances are picked and judged.
    policy: ArcSwap<Policy>,
    /// Round-robin position, kept across snapshot swaps so a change does not restart the cycle.
    next: AtomicUsize,
    /// Where the next failed pick starts trying the others, so a dead instance's share is
    /// spread over every survivor instead of landing on its neighbour.
    retry_next: AtomicUsize,
    /// The version of the last instance set published.
    versions: AtomicU64,
    /// Where its instances' hot states are.
    slots: Arc<Slots>,
    /// Serializes snapshot builds (never taken on the pick path).
    building: Mutex<()>,
    /// Ejections since cairn started.
    ejections: AtomicU64,
    /// How long its instances take to answer; made at the first answer (a registry may hold
    /// thousands of services no listener sends to).
    timings: OnceLock<Box<Timings>>,
    /// Active health checks since cairn started: passed, failed.
    checks: [AtomicU64; 2],
    /// A listener or a `[[service]]` block names the service: it stays in the store, empty
    /// or not.
    pinned: AtomicBool,
    /// Removed from the store: whoever still holds it must fetch the service's new cell.
    /// Set under the building lock, so no publish lands on a retired cell.
    retired: AtomicBool,
}

impl Default for ServiceCell {
    fn default() -> Self {
        ServiceCell {
            snapshot: ArcSwap::default(),
            policy: ArcSwap::new(default_policy()),
            next: AtomicUsize::new(0),
            retry_next: AtomicUsize::new(0),
            versions: AtomicU64::new(0),
            slots: Arc::default(),
            building: Mutex::new(()),
            ejections: AtomicU64::new(0),
            timings: OnceLock::new(),
            checks: Default::default(),
            pinned: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }
}

impl ServiceCell {
    /// The current snapshot. Do not hold the guard across an `.await`.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Sets how instances are picked and judged, and rebuilds the table for it.
    pub fn configure(&self, policy: Policy) {
        let policy = match policy == Policy::default() {
            true => default_policy(),
            false => Arc::new(policy),
        };
        self.policy.store(policy);
        self.rebuild();
    }

    /// Picks the first instance to try: one arc-swap load, one counter step or a random draw or
    /// two (or a hash lookup when `key` is given to the hash policy), and a table read.
    ///
    /// `now_ns` is the caller's clock reading for this connection or request (it times the
    /// attempt from there whatever the policy); only `ewma` weighs it.
    ///
    /// Returns `None` when no instance may be picked.
    #[inline]
    pub fn pick(&self, key: Option<u64>, now_ns: u64) -> Option<Pick> {
        self.snapshot.load().pick(&self.next, key, now_ns)
    }

    /// The live state of the picked instance, for its in-flight count and the outcome of the
    /// attempt: read apart from the pick, so a pick touches no reference count. A fresh state
    /// when the instance left the service meanwhile.
    pub fn state(&self, pick: &Pick) -> Arc<InstanceState> {
        let snapshot = self.snapshot.load();
        let index = if snapshot.version == pick.version {
            Some(pick.index)
        } else {
            snapshot.position(&pick.addr)
        };
        index.map_or_else(InstanceState::new, |i| Arc::clone(&snapshot.states[i]))
    }

    /// The other usable instances to try after `pick` failed, each once, from the current
    /// snapshot (so an instance removed or ejected meanwhile is not tried).
    ///
    /// Successive calls start at successive instances after the failed one, so the retries of
    /// a dead instance are shared evenly by every other instance.
    pub fn retries(&self, pick: &Pick) -> Retries {
        let snapshot = self.snapshot.load_full();
        let failed = if snapshot.version == pick.version {
            Some(pick.index)
        } else {
            snapshot.position(&pick.addr)
        };
        let pickable = snapshot.table.pickable();
        let failed_at = failed.and_then(|f| pickable.binary_search(&(f as u32)).ok());
        let others = pickable.len() - usize::from(failed_at.is_some());
        let base = match failed_at {
            Some(p) => p + 1,
            // The failed instance is not pickable now: walk them all, from about where it was.
            None => pickable.partition_point(|&i| (i as usize) < pick.index),
        };
        let offset = match others {
            0 => 0,
            n => self.retry_next.fetch_add(1, Ordering::Relaxed) % n,
        };
        Retries {
            snapshot,
            base,
            others,
            offset,
            step: 0,
        }
    }

    /// Ejects the instance whose state is `state` if the service can spare it (at most
    /// `max_ejection_percent` of its instances, at least one), from `now` for base x
    /// ejections-in-a-row scaled by `jitter`. Returns when the ejection ends.
    pub fn eject(&self, state: &Arc<InstanceState>, now: u64, jitter: f64) -> Option<u64> {
        let policy = self.policy.load();
        let until = {
            let _building = self.lock();
            let snapshot = self.snapshot.load();
            let total = snapshot.states.len();
            let ejected = snapshot
                .states
                .iter()
                .filter(|s| s.ejected_until().is_some())
                .count();
            let allowed = (total * policy.outlier.max_ejection_percent as usize / 100).max(1);
            if ejected >= allowed {
                return None;
            }
            state.eject(now, &policy.outlier, jitter)?
        };
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.rebuild();
        Some(until)
    }

    /// An instance answered a request in `ns` (to its response head).
    pub fn answered_in(&self, ns: u64) {
        self.timings.get_or_init(Box::default).observe(ns);
    }

    /// How long its instances took to answer, once one has.
    pub fn timings(&self) -> Option<&Timings> {
        self.timings.get().map(|t| &**t)
    }

    /// Ejections since cairn started.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts one active health check of an instance.
    pub fn count_check(&self, passed: bool) {
        self.checks[usize::from(!passed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Active health checks since cairn started: passed, failed.
    pub fn checks(&self) -> (u64, u64) {
        (
            self.checks[0].load(Ordering::Relaxed),
            self.checks[1].load(Ordering::Relaxed),
        )
    }

    /// Ends the ejections that are over at `now` (those instances go on probation) and returns
    /// how many ended.
    pub fn expire(&self, now: u64) -> usize {
        let ended = self
            .snapshot
            .load()
            .states
            .iter()
            .filter(|s| s.expire(now))
            .count();
        if ended > 0 {
            self.rebuild();
        }
        ended
    }

    /// Rebuilds the table from the current instances and their states (after an ejection, a
    /// readmission, a check flipping, or a new policy).
    pub fn rebuild(&self) {
        let _building = self.lock();
        let current = self.snapshot.load_full();
        let snapshot = build(
            current.version,
            current.instances.to_vec(),
            current.states.to_vec(),
            self.slots.chunks(),
            &self.policy.load(),
        );
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Keeps the service in the store while `pinned`, even without instances.
    pub fn pin(&self, pinned: bool) {
        self.pinned.store(pinned, Ordering::Relaxed);
    }

    /// Whether the cell was removed from the store; its service, if it comes back, has a new
    /// cell.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The version of the last instance set published.
    pub fn version(&self) -> u64 {
        self.versions.load(Ordering::Relaxed)
    }

    /// Retires the cell if it is unpinned, has no instances and nothing was published since
    /// `version`. Returns whether it did.
    pub(super) fn retire_if_unused(&self, version: u64) -> bool {
        let _building = self.lock();
        let unused = !self.pinned.load(Ordering::Relaxed)
            && self.snapshot.load().is_empty()
            && self.versions.load(Ordering::Relaxed) == version;
        if unused {
            self.retired.store(true, Ordering::Release);
        }
        unused
    }

    /// Swaps in `instances` (sorted by id, distinct) as the service's new instance set. An
    /// instance already known at the same address keeps its state; others start fresh.
    ///
    /// Returns `false`, publishing nothing, when the cell is retired: the caller publishes to
    /// the service's new cell instead.
    #[must_use]
    pub(super) fn publish(&self, instances: Vec<Arc<Instance>>) -> bool {
        let _building = self.lock();
        if self.retired.load(Ordering::Relaxed) {
            return false;
        }
        let current = self.snapshot.load_full();
        let states: Vec<Arc<InstanceState>> = instances
            .iter()
            .map(|new| {
                current
                    .instances
                    .binary_search_by(|old| old.id.as_str().cmp(&new.id))
                    .ok()
                    .filter(|&i| current.instances[i].endpoint.addr == new.endpoint.addr)
                    .map_or_else(
                        || InstanceState::in_slot(self.slots.take()),
                        |i| Arc::clone(&current.states[i]),
                    )
            })
            .collect();
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = build(
            version,
            instances,
            states,
            self.slots.chunks(),
            &self.policy.load(),
        );
        self.snapshot.store(Arc::new(snapshot));
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.building
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The instances a failed pick tries next: every other usable instance once, in an order that
/// starts at a different one each time. See [`ServiceCell::retries`].
#[derive(Debug)]
pub struct Retries {
    /// The snapshot the order was taken from.
    snapshot: Arc<Snapshot>,
    /// The position in the pickable list the cyclic walk starts from.
    base: usize,
    /// How many instances the walk visits.
    others: usize,
    /// Where in the walk this failure starts.
    offset: usize,
    /// How many have been handed out.
    step: usize,
}

impl Retries {
    /// Whether the service had no usable instance at all when the retries were taken.
    pub fn service_is_empty(&self) -> bool {
        self.snapshot.table.is_empty()
    }
}

impl Iterator for Retries {
    type Item = (Addr, Arc<InstanceState>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.step >= self.others {
            return None;
        }
        let pickable = self.snapshot.table.pickable();
        let position = (self.base + (self.offset + self.step) % self.others) % pickable.len();
        self.step += 1;
        let index = pickable[position] as usize;
        Some((
            self.snapshot.addr(index).clone(),
            Arc::clone(&self.snapshot.states[index]),
        ))
    }
}

#[cfg(test)]
#[path = "cell_tests.rs"]
mod tests;
