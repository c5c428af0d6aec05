//! The in-memory view of the registry: one immutable, arc-swapped [`Snapshot`] per service.
//!
//! Readers (listeners, the admin endpoint) load a snapshot without locking and never see half an
//! update. The discovery task is the only writer: [`StoreWriter`] keeps the authoritative
//! per-service maps, builds a new snapshot for each service that really changed, and swaps it in
//! whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::balance::Balance;
use crate::discovery::{Change, Sink, Update};
use crate::registry::{Addr, Endpoint};

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The instance id: everything after `<prefix><service>/` in its key.
    pub id: String,
    /// What its registry value says.
    pub endpoint: Endpoint,
}

/// The instances of one service at one moment, sorted by id. Never changes once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    instances: Box<[Arc<Instance>]>,
    /// The instances' addresses, in the same order, side by side so a pick reads one cache line
    /// instead of chasing a pointer per instance.
    addrs: Box<[Addr]>,
}

impl Snapshot {
    /// Builds a snapshot; `instances` must have distinct ids.
    pub fn new(mut instances: Vec<Instance>) -> Snapshot {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            addrs: instances.iter().map(|i| i.endpoint.addr.clone()).collect(),
            instances: instances.into_iter().map(Arc::new).collect(),
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

/// The routing state of one service: its current snapshot and its round-robin position.
///
/// Listeners resolve their cell once at start and keep it; the cell outlives any snapshot.
#[derive(Debug, Default)]
pub struct ServiceCell {
    /// The current instances; replaced whole on every real change.
    snapshot: ArcSwap<Snapshot>,
    /// Round-robin position, kept across snapshot swaps so a change does not restart the cycle.
    next: AtomicUsize,
}

/// The first instance chosen for a connection or request, and where the choice started.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The chosen instance's address.
    pub addr: Addr,
    /// Index the pick started at; retries walk on from here.
    pub start: usize,
    /// How many distinct instances the service had when picked.
    pub candidates: usize,
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
        let start = balance.start(len, &self.next);
        Some(Pick {
            addr: snapshot.addrs[start].clone(),
            start,
            candidates: len,
        })
    }

    /// The address for retry number `attempt` (1, 2, …) of a pick that started at `start`.
    ///
    /// Reads the current snapshot, so an instance removed meanwhile is not retried.
    #[inline]
    pub fn retry(&self, start: usize, attempt: usize) -> Option<Addr> {
        let snapshot = self.snapshot.load();
        let len = snapshot.len();
        (len > 0).then(|| snapshot.addrs[(start + attempt) % len].clone())
    }

    fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}

/// All services cairn knows, with the etcd revision they reflect.
#[derive(Debug, Default)]
pub struct Store {
    /// Service name to its cell. Cells are never removed, so a held cell stays current.
    services: DashMap<String, Arc<ServiceCell>>,
    /// The etcd revision the snapshots reflect.
    revision: AtomicI64,
    /// Whether a full list of the registry has been applied at least once.
    synced: AtomicBool,
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
        let mut all: Vec<_> = self
            .services
            .iter()
            .map(|e| (e.key().clone(), e.value().snapshot.load_full()))
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
    /// (benchmarks, embedding).
    pub fn publish(&self, service: &str, instances: Vec<Instance>) {
        self.cell(service).publish(Snapshot::new(instances));
    }
}

/// The discovery sink that keeps a [`Store`] current.
///
/// Holds the authoritative instance maps; only services whose instance set really changed get a
/// new snapshot.
#[derive(Debug)]
pub struct StoreWriter {
    /// The store readers see.
    store: Arc<Store>,
    /// Service → id → instance, as last applied.
    services: HashMap<String, BTreeMap<String, Instance>>,
}

impl StoreWriter {
    /// A writer for `store`, which it assumes empty.
    pub fn new(store: Arc<Store>) -> StoreWriter {
        StoreWriter {
            store,
            services: HashMap::new(),
        }
    }

    fn publish(&self, service: &str) {
        let instances = self
            .services
            .get(service)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        self.store.cell(service).publish(Snapshot::new(instances));
    }
}

impl Sink for StoreWriter {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Reset {
                revision,
                instances,
            } => {
                let mut fresh: HashMap<String, BTreeMap<String, Instance>> = HashMap::new();
                for (service, instance) in instances {
                    fresh
                        .entry(service)
                        .or_default()
                        .insert(instance.id.clone(), instance);
                }
                let old = std::mem::replace(&mut self.services, fresh);
                for (service, before) in &old {
                    if self.services.get(service) != Some(before) {
                        self.publish(service);
                    }
                }
                for service in self.services.keys() {
                    if !old.contains_key(service) {
                        self.publish(service);
                    }
                }
                self.services.retain(|_, m| !m.is_empty());
                self.store.revision.store(revision, Ordering::Release);
                self.store.synced.store(true, Ordering::Release);
            }
            Update::Changes { revision, changes } => {
                let mut touched: Vec<String> = Vec::new();
                for change in changes {
                    let (service, changed) = match change {
                        Change::Put {
                            service, instance, ..
                        } => {
                            let map = self.services.entry(service.clone()).or_default();
                            let changed = map.get(&instance.id) != Some(&instance);
                            if changed {
                                map.insert(instance.id.clone(), instance);
                            }
                            (service, changed)
                        }
                        Change::Delete { service, id, .. } => {
                            let changed = self
                                .services
                                .get_mut(&service)
                                .is_some_and(|m| m.remove(&id).is_some());
                            (service, changed)
                        }
                    };
                    if changed && !touched.contains(&service) {
                        touched.push(service);
                    }
                }
                for service in &touched {
                    self.publish(service);
                    if self.services.get(service).is_some_and(BTreeMap::is_empty) {
                        self.services.remove(service);
                    }
                }
                self.store.revision.store(revision, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Format;

    fn inst(id: &str, addr: &str) -> Instance {
        Instance {
            id: id.to_string(),
            endpoint: Endpoint::new(addr.parse().unwrap(), Format::Plain),
        }
    }

    fn ids(store: &Store, service: &str) -> Vec<String> {
        store
            .cell(service)
            .load()
            .instances()
            .iter()
            .map(|i| i.id.clone())
            .collect()
    }

    #[test]
    fn reset_then_changes_publish_whole_snapshots() {
        let store = Store::new();
        let orders = store.cell("orders");
        let mut w = StoreWriter::new(Arc::clone(&store));
        assert!(!store.synced());
        w.apply(Update::Reset {
            revision: 5,
            instances: vec![
                ("orders".into(), inst("b", "10.0.0.2:80")),
                ("orders".into(), inst("a", "10.0.0.1:80")),
                ("users".into(), inst("u", "10.0.0.3:80")),
            ],
        });
        assert!(store.synced());
        assert_eq!(store.revision(), 5);
        assert_eq!(ids(&store, "orders"), ["a", "b"]);
        assert_eq!(
            orders.load().len(),
            2,
            "a cell resolved before the sync sees it"
        );

        w.apply(Update::Changes {
            revision: 7,
            changes: vec![
                Change::Delete {
                    service: "orders".into(),
                    id: "a".into(),
                    revision: 6,
                },
                Change::Put {
                    service: "orders".into(),
                    instance: inst("c", "10.0.0.4:80"),
                    revision: 7,
                },
            ],
        });
        assert_eq!(ids(&store, "orders"), ["b", "c"]);
        assert_eq!(store.revision(), 7);

        w.apply(Update::Reset {
            revision: 9,
            instances: vec![("orders".into(), inst("c", "10.0.0.4:80"))],
        });
        assert_eq!(ids(&store, "orders"), ["c"]);
        assert!(
            ids(&store, "users").is_empty(),
            "a service gone from etcd is emptied"
        );
    }

    #[test]
    fn unchanged_services_keep_their_snapshot() {
        let store = Store::new();
        let mut w = StoreWriter::new(Arc::clone(&store));
        let all = vec![
            ("orders".to_string(), inst("a", "10.0.0.1:80")),
            ("users".to_string(), inst("u", "10.0.0.3:80")),
        ];
        w.apply(Update::Reset {
            revision: 1,
            instances: all.clone(),
        });
        let before = store.cell("users").load_full_for_test();
        w.apply(Update::Reset {
            revision: 2,
            instances: all,
        });
        w.apply(Update::Changes {
            revision: 3,
            changes: vec![Change::Put {
                service: "users".into(),
                instance: inst("u", "10.0.0.3:80"),
                revision: 3,
            }],
        });
        assert!(Arc::ptr_eq(
            &before,
            &store.cell("users").load_full_for_test()
        ));
    }

    #[test]
    fn picks_follow_the_policy_and_retries_walk_on() {
        let store = Store::new();
        let cell = store.cell("s");
        assert!(cell.pick(Balance::RoundRobin).is_none());
        assert!(cell.retry(0, 1).is_none());
        store.publish(
            "s",
            vec![
                inst("a", "10.0.0.1:80"),
                inst("b", "10.0.0.2:80"),
                inst("c", "10.0.0.3:80"),
            ],
        );
        let firsts: Vec<String> = (0..6)
            .map(|_| cell.pick(Balance::RoundRobin).unwrap().addr.to_string())
            .collect();
        assert_eq!(
            firsts,
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].repeat(2)
        );
        let p = cell.pick(Balance::RoundRobin).unwrap();
        assert_eq!((p.start, p.candidates), (0, 3));
        assert_eq!(cell.retry(p.start, 1).unwrap().to_string(), "10.0.0.2:80");
        assert_eq!(cell.retry(p.start, 2).unwrap().to_string(), "10.0.0.3:80");
    }

    impl ServiceCell {
        fn load_full_for_test(&self) -> Arc<Snapshot> {
            self.snapshot.load_full()
        }
    }
}
