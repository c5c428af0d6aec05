//! A service's instances at one moment, as picks read them: a [`Snapshot`], built whole by
//! [`build`] and never changed, and the pick itself.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::policy::Policy;
use super::slots::{self, Chunk, Place};
use super::state::InstanceState;
use crate::addr::Addr;
use crate::balance::{Balance, Table};
use crate::instance::Instance;

/// The instances of one service at one moment, sorted by id, with the table picks read. Never
/// changes once built: an ejection, a readmission or a failing check builds the next one.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Tells successive instance sets of one cell apart, so a retry knows whether the index it
    /// started from still points at the same instance.
    pub(super) version: u64,
    /// The instances, in id order.
    pub(super) instances: Box<[Arc<Instance>]>,
    /// Their live states, in the same order; shared with the snapshots before and after.
    pub(super) states: Box<[Arc<InstanceState>]>,
    /// The policy the table was built for.
    balance: Balance,
    /// Which instances a pick may return, and how.
    pub(super) table: Table,
    /// What a pick reads of each instance it may return, in the table's pickable order.
    picks: Box<[Entry]>,
    /// The service's slot chunks the entries' places point into.
    chunks: Box<[Arc<Chunk>]>,
    /// Whether fewer than half the instances are usable, so ejections and checks are ignored.
    panic: bool,
}

impl Snapshot {
    /// The instances, in id order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The instances' live states, in the same order.
    pub fn states(&self) -> &[Arc<InstanceState>] {
        &self.states
    }

    /// The address of instance `index`. Read from the instance itself: each instance is held
    /// once, however many snapshots share it.
    #[inline]
    pub(super) fn addr(&self, index: usize) -> &Addr {
        &self.instances[index].endpoint.addr
    }

    /// Where `addr` is among the instances.
    pub(super) fn position(&self, addr: &Addr) -> Option<usize> {
        self.instances.iter().position(|i| i.endpoint.addr == *addr)
    }

    /// The number of instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the service has no instance at all.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// How many instances a pick may return now.
    pub fn usable(&self) -> usize {
        self.table.len()
    }

    /// Whether instance `index` may be picked now.
    pub fn is_usable(&self, index: usize) -> bool {
        self.table.pickable().binary_search(&(index as u32)).is_ok()
    }

    /// Whether too few instances are usable, so every one is picked regardless.
    pub fn in_panic(&self) -> bool {
        self.panic
    }

    /// Picks the first instance to try; see [`super::ServiceCell::pick`]. `counter` is the
    /// service's round-robin position.
    #[inline]
    pub(super) fn pick(
        &self,
        counter: &AtomicUsize,
        key: Option<u64>,
        now_ns: u64,
    ) -> Option<Pick> {
        let balance = self.balance;
        let picks = &self.picks;
        let position = self.table.pick(balance, counter, key, |p| {
            let hot = slots::hot(&self.chunks, picks[p].place);
            match balance {
                Balance::Ewma => hot.latency().load(hot.inflight(), now_ns),
                _ => f64::from(hot.inflight()),
            }
        })?;
        let entry = picks[position];
        let index = entry.index as usize;
        Some(Pick {
            addr: entry
                .v4
                .map_or_else(|| self.addr(index).clone(), |v4| Addr::Ip(v4.into())),
            index,
            candidates: self.table.len(),
            version: self.version,
        })
    }
}

/// What a pick reads of one instance it may return, in 16 bytes: its index, where its hot state
/// is, and its address when that is IPv4 (most are). A pick among 100 000 instances then reads
/// one compact array (1.6 MB) and the slots, not an instance pointer, then the instance, then
/// its state, each a miss to memory.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its index among the snapshot's instances.
    index: u32,
    /// Where its hot state is.
    place: Place,
    /// Its address if IPv4; otherwise it is read from the instance.
    v4: Option<SocketAddrV4>,
}

/// The first instance chosen for a connection or request.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The chosen instance's address.
    pub addr: Addr,
    /// Its index in the snapshot it was picked from.
    pub index: usize,
    /// How many instances could have been picked.
    pub candidates: usize,
    /// The version of that snapshot.
    pub(super) version: u64,
}

/// A snapshot of `instances` (sorted by id, distinct) with `states` (their slots in `chunks`),
/// and the table of the usable
/// ones: weight above zero, not ejected, checks passing; or, when fewer than half are usable,
/// every instance with weight (a panic: better a failing instance than none). With a zone,
/// local instances only, while enough of them are usable.
pub(super) fn build(
    version: u64,
    instances: Vec<Arc<Instance>>,
    states: Vec<Arc<InstanceState>>,
    chunks: Box<[Arc<Chunk>]>,
    policy: &Policy,
) -> Snapshot {
    debug_assert!(
        instances.windows(2).all(|w| w[0].id < w[1].id),
        "snapshot instances must be sorted by id and distinct"
    );
    let eligible: Vec<u32> = (0..instances.len() as u32)
        .filter(|&i| instances[i as usize].endpoint.weight > 0)
        .collect();
    let usable: Vec<u32> = eligible
        .iter()
        .copied()
        .filter(|&i| {
            let s = &states[i as usize];
            s.ejected_until().is_none() && !s.checks_failing()
        })
        .collect();
    let panic = usable.len() * 2 < eligible.len();
    let mut candidates = if panic { eligible } else { usable };
    if let Some(zone) = &policy.zone {
        let local: Vec<u32> = candidates
            .iter()
            .copied()
            .filter(|&i| instances[i as usize].endpoint.zone.as_deref() == Some(zone.as_str()))
            .collect();
        if !local.is_empty() && (local.len() >= policy.min_local || local.len() == candidates.len())
        {
            candidates = local;
        }
    }
    let weights: Vec<u32> = candidates
        .iter()
        .map(|&i| instances[i as usize].endpoint.weight)
        .collect();
    let ids: Vec<&str> = candidates
        .iter()
        .map(|&i| instances[i as usize].id.as_str())
        .collect();
    let picks = candidates
        .iter()
        .map(|&i| {
            let state = &states[i as usize];
            debug_assert!(
                std::ptr::eq(
                    slots::hot(&chunks, state.place()).latency(),
                    state.latency()
                ),
                "a snapshot's states are in its service's slots"
            );
            Entry {
                index: i,
                place: state.place(),
                v4: match instances[i as usize].endpoint.addr {
                    Addr::Ip(SocketAddr::V4(v4)) => Some(v4),
                    _ => None,
                },
            }
        })
        .collect();
    let table = Table::build(policy.balance, candidates, weights, &ids);
    Snapshot {
        version,
        instances: instances.into(),
        states: states.into(),
        balance: policy.balance,
        table,
        picks,
        chunks,
        panic,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pick_entry_is_16_bytes() {
        // What keeps a pick among 100 000 instances within the caches: see `Entry`.
        assert_eq!(std::mem::size_of::<super::Entry>(), 16);
    }
}
