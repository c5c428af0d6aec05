//! Every service cairn knows, each with its [`ServiceCell`], and the etcd revision they reflect.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::cell::ServiceCell;
use super::frozen::Snapshot;
use crate::instance::Instance;

/// All services cairn knows, with the etcd revision they reflect.
#[derive(Debug, Default)]
pub struct Store {
    /// Service name to its cell. A cell leaves only when it is unpinned and has stayed empty
    /// (see [`Store::prune`]); it is marked retired then, so holders can tell.
    services: DashMap<String, Arc<ServiceCell>>,
    /// The etcd revision the snapshots reflect.
    revision: AtomicI64,
    /// Whether a full list of the registry has been applied at least once.
    synced: AtomicBool,
    /// While the snapshots come from a cache file (etcd has not answered since start): when
    /// the file was written, in seconds since the Unix epoch; 0 otherwise.
    cached_at: AtomicU64,
    /// Counts every swap of a snapshot and every service forgotten, so a reader can tell
    /// whether anything changed since it last looked.
    changes: AtomicU64,
}

impl Store {
    /// An empty store: no services, revision 0, not synced.
    pub fn new() -> Arc<Store> {
        Arc::new(Store::default())
    }

    /// The cell of `service`, created empty if the registry has not mentioned it yet.
    pub fn cell(&self, service: &str) -> Arc<ServiceCell> {
        if let Some(cell) = self.services.get(service) {
            return Arc::clone(&cell);
        }
        Arc::clone(&self.services.entry(service.to_string()).or_default())
    }

    /// The cell of `service` if the registry or a listener has mentioned it; never creates one.
    pub fn get(&self, service: &str) -> Option<Arc<ServiceCell>> {
        self.services.get(service).map(|c| Arc::clone(&c))
    }

    /// Every service with its current snapshot, sorted by name.
    pub fn snapshots(&self) -> Vec<(String, Arc<Snapshot>)> {
        self.cells()
            .into_iter()
            .map(|(name, cell)| (name, arc_swap::Guard::into_inner(cell.load())))
            .collect()
    }

    /// Every service with its cell, sorted by name.
    pub fn cells(&self) -> Vec<(String, Arc<ServiceCell>)> {
        let mut all: Vec<_> = self
            .services
            .iter()
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The etcd revision of the last applied update.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Whether a full list of the registry has been applied.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Replaces the instances of `service`, for callers that feed the store without etcd
    /// (benchmarks, embedding). Ids must be distinct.
    pub fn publish(&self, service: &str, instances: Vec<Instance>) {
        let mut instances: Vec<Arc<Instance>> = instances.into_iter().map(Arc::new).collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        self.publish_to(service, |_| Some(instances.clone()));
    }

    /// Publishes what `next` makes of the service's current cell, if anything; when a prune
    /// retired that cell meanwhile, asks again with the service's new (empty) cell.
    pub(super) fn publish_to(
        &self,
        service: &str,
        mut next: impl FnMut(&ServiceCell) -> Option<Vec<Arc<Instance>>>,
    ) {
        loop {
            let cell = self.cell(service);
            match next(&cell) {
                None => return,
                Some(instances) => {
                    if cell.publish(instances) {
                        self.changes.fetch_add(1, Ordering::AcqRel);
                        return;
                    }
                }
            }
        }
    }

    /// Every unpinned service without instances, with the version of its empty instance set:
    /// candidates for [`Store::prune`].
    pub fn empty(&self) -> Vec<(String, u64)> {
        self.services
            .iter()
            .filter(|e| e.value().load().is_empty())
            .map(|e| (e.key().clone(), e.value().version()))
            .collect()
    }

    /// Removes `service` if it is unpinned, still empty, and unchanged since `version`; its cell
    /// is marked retired. Returns whether it was removed.
    pub fn prune(&self, service: &str, version: u64) -> bool {
        let removed = self
            .services
            .remove_if(service, |_, cell| cell.retire_if_unused(version))
            .is_some();
        if removed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    /// Records that every update up to `revision` is applied (when several watches feed the
    /// snapshots, the newest revision they are at).
    pub(super) fn set_revision(&self, revision: i64) {
        self.revision.store(revision, Ordering::Release);
    }

    /// Records that some snapshots come from a cache file written at `written_at` (Unix
    /// seconds).
    pub(super) fn cached(&self, written_at: u64) {
        self.cached_at.store(written_at.max(1), Ordering::Release);
    }

    /// Records that the whole registry cairn watches has been listed: synced, and nothing
    /// comes from a cache file any more.
    pub(super) fn listed(&self) {
        self.synced.store(true, Ordering::Release);
        self.cached_at.store(0, Ordering::Release);
    }

    /// When the cache file the snapshots come from was written (Unix seconds), while they do.
    pub fn cached_at(&self) -> Option<u64> {
        match self.cached_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(at),
        }
    }

    /// A number that changes whenever any snapshot does.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The names of the services that currently have instances.
    pub(super) fn populated(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|e| !e.value().load().is_empty())
            .map(|e| e.key().clone())
            .collect()
    }
}
