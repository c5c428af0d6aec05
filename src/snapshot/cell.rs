//! One service's routing state: its current snapshot, its round-robin position, and the order in
//! which a failed pick tries the other instances.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::addr::Addr;
use crate::balance::Balance;
use crate::instance::Instance;

/// The instances of one service at one moment, sorted by id. Never changes once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Tells successive snapshots of one cell apart, so a retry knows whether the index it
    /// started from still points at the same instance.
    version: u64,
    /// The instances, in id order.
    instances: Box<[Arc<Instance>]>,
    /// The instances' addresses, in the same order, side by side so a pick reads one cache line
    /// instead of chasing a pointer per instance.
    addrs: Box<[Addr]>,
}

impl Snapshot {
    /// A snapshot of `instances`, which must be sorted by id with no id twice.
    fn from_sorted(version: u64, instances: Vec<Arc<Instance>>) -> Snapshot {
        debug_assert!(
            instances.windows(2).all(|w| w[0].id < w[1].id),
            "snapshot instances must be sorted by id and distinct"
        );
        Snapshot {
            version,
            addrs: instances.iter().map(|i| i.endpoint.addr.clone()).collect(),
            instances: instances.into(),
        }
    }

    /// The instances, in id order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The number of instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the service has no instance to route to.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

/// The first instance chosen for a connection or request, and where the choice was made.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The chosen instance's address.
    pub addr: Addr,
    /// Its index in the snapshot it was picked from.
    pub index: usize,
    /// How many instances the service had when picked.
    pub candidates: usize,
    /// The version of that snapshot.
    version: u64,
}

/// The routing state of one service: its current snapshot and its round-robin positions.
///
/// Listeners resolve their cell once at start and keep it; the cell outlives any snapshot.
#[derive(Debug, Default)]
pub struct ServiceCell {
    /// The current instances; replaced whole on every real change.
    snapshot: ArcSwap<Snapshot>,
    /// Round-robin position, kept across snapshot swaps so a change does not restart the cycle.
    next: AtomicUsize,
    /// Where the next failed pick starts trying the others, so a dead instance's share is
    /// spread over every survivor instead of landing on its neighbour.
    retry_next: AtomicUsize,
    /// The version of the last snapshot published.
    versions: AtomicU64,
}

impl ServiceCell {
    /// The current snapshot. Do not hold the guard across an `.await`.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Picks the first instance to try: one arc-swap load and one counter step or RNG draw. The
    /// address is copied out, so nothing of the snapshot is held afterwards.
    ///
    /// Returns `None` when the service has no instances.
    #[inline]
    pub fn pick(&self, balance: Balance) -> Option<Pick> {
        let snapshot = self.snapshot.load();
        let len = snapshot.len();
        if len == 0 {
            return None;
        }
        let index = balance.start(len, &self.next);
        Some(Pick {
            addr: snapshot.addrs[index].clone(),
            index,
            candidates: len,
            version: snapshot.version,
        })
    }

    /// The other instances to try after `pick` failed, each once, from the current snapshot (so
    /// an instance removed meanwhile is not tried).
    ///
    /// Successive calls start at successive instances after the failed one, so the retries of
    /// a dead instance are shared evenly by every other instance.
    pub fn retries(&self, pick: &Pick) -> Retries {
        let snapshot = self.snapshot.load_full();
        let len = snapshot.len();
        let failed = if snapshot.version == pick.version {
            Some(pick.index)
        } else {
            snapshot.addrs.iter().position(|a| *a == pick.addr)
        };
        let others = len - usize::from(failed.is_some());
        let offset = match others {
            0 => 0,
            n => self.retry_next.fetch_add(1, Ordering::Relaxed) % n,
        };
        Retries {
            // Without the failed instance in this snapshot, walk every instance from its index.
            base: failed.map_or(pick.index, |i| i + 1),
            snapshot,
            others,
            offset,
            step: 0,
        }
    }

    /// Swaps in `instances` (sorted by id, distinct) as the service's new snapshot.
    pub(super) fn publish(&self, instances: Vec<Arc<Instance>>) {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        self.snapshot
            .store(Arc::new(Snapshot::from_sorted(version, instances)));
    }
}

/// The instances a failed pick tries next: every other instance once, in an order that starts
/// at a different one each time. See [`ServiceCell::retries`].
#[derive(Debug)]
pub struct Retries {
    /// The snapshot the order was taken from.
    snapshot: Arc<Snapshot>,
    /// The index the cyclic walk starts from (the one after the failed instance).
    base: usize,
    /// How many instances the walk visits.
    others: usize,
    /// Where in the walk this failure starts.
    offset: usize,
    /// How many have been handed out.
    step: usize,
}

impl Retries {
    /// Whether the service had no instance at all when the retries were taken.
    pub fn service_is_empty(&self) -> bool {
        self.snapshot.is_empty()
    }
}

impl Iterator for Retries {
    type Item = Addr;

    fn next(&mut self) -> Option<Addr> {
        if self.step >= self.others {
            return None;
        }
        let len = self.snapshot.len();
        let index = (self.base + (self.offset + self.step) % self.others) % len;
        self.step += 1;
        Some(self.snapshot.addrs[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, addr: &str) -> Arc<Instance> {
        Instance::plain(id, addr)
    }

    fn cell(n: usize) -> ServiceCell {
        let cell = ServiceCell::default();
        cell.publish(
            (0..n)
                .map(|i| inst(&format!("i{i}"), &format!("10.0.0.{i}:80")))
                .collect(),
        );
        cell
    }

    fn port_of(a: &Addr) -> String {
        a.to_string()
    }

    #[test]
    fn picks_follow_the_policy() {
        let empty = ServiceCell::default();
        assert!(empty.pick(Balance::RoundRobin).is_none());
        let c = cell(3);
        let firsts: Vec<String> = (0..6)
            .map(|_| port_of(&c.pick(Balance::RoundRobin).unwrap().addr))
            .collect();
        assert_eq!(
            firsts,
            ["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"].repeat(2)
        );
    }

    #[test]
    fn retries_visit_every_other_instance_once() {
        let c = cell(4);
        for _ in 0..8 {
            let p = c.pick(Balance::RoundRobin).unwrap();
            let mut seen: Vec<String> = c.retries(&p).map(|a| port_of(&a)).collect();
            assert_eq!(seen.len(), 3);
            assert!(!seen.contains(&port_of(&p.addr)), "{seen:?}");
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 3);
        }
    }

    #[test]
    fn a_dead_instances_share_is_split_evenly() {
        let c = cell(3);
        let dead = port_of(&c.load().addrs[0]);
        let mut served = std::collections::HashMap::<String, usize>::new();
        for _ in 0..300 {
            let p = c.pick(Balance::RoundRobin).unwrap();
            let addr = if port_of(&p.addr) == dead {
                c.retries(&p).next().unwrap()
            } else {
                p.addr
            };
            *served.entry(port_of(&addr)).or_default() += 1;
        }
        assert_eq!(served.get(&dead), None);
        assert_eq!(served.values().copied().collect::<Vec<_>>(), [150, 150]);
    }

    #[test]
    fn retries_after_a_swap_skip_the_failed_address_and_removed_instances() {
        let c = cell(3);
        let p = c.pick(Balance::RoundRobin).unwrap();
        assert_eq!(port_of(&p.addr), "10.0.0.0:80");
        // The failed instance moved to another index; one more instance came.
        c.publish(vec![
            inst("a", "10.0.0.9:80"),
            inst("i0", "10.0.0.0:80"),
            inst("i2", "10.0.0.2:80"),
        ]);
        let mut rest: Vec<String> = c.retries(&p).map(|a| port_of(&a)).collect();
        rest.sort();
        assert_eq!(rest, ["10.0.0.2:80", "10.0.0.9:80"]);
        // Every instance gone: nothing to retry.
        c.publish(Vec::new());
        assert_eq!(c.retries(&p).count(), 0);
        // Only the failed one left: nothing else to try.
        c.publish(vec![inst("i0", "10.0.0.0:80")]);
        assert_eq!(c.retries(&p).count(), 0);
    }
}
