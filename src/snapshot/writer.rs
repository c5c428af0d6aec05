//! The discovery sink that keeps a [`Store`] current: applies each [`Update`] and swaps in a new
//! snapshot for every service whose instances really changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::cell::ServiceCell;
use super::store::Store;
use super::watched::Watched;
use crate::instance::Instance;
use crate::update::{Change, Sink, Update};

/// The discovery sink that keeps a [`Store`] current.
///
/// It keeps no copy of the registry: the current snapshots are the state, and a change builds
/// the next snapshot from the current one, sharing every untouched instance.
#[derive(Debug)]
pub struct StoreWriter {
    /// The store readers see.
    store: Arc<Store>,
    /// The services this writer owns.
    scope: Scope,
    /// The scoped discovery this writer is one watch of, which reports to the store for all
    /// of them; none when the writer reports alone (`AllBut`) or not at all (`Only`, beside
    /// an `AllBut` writer).
    group: Option<Arc<Watched>>,
}

/// Which services a writer owns, when several discoveries feed one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every service but these (owned by other writers). This writer's revision is the store's.
    AllBut(HashSet<String>),
    /// This one service only. Beside an `AllBut` writer it leaves the store's revision
    /// alone; as one of a scoped discovery's, its group reports it.
    Only(String),
}

impl StoreWriter {
    /// A writer for `store`, which it assumes empty, owning every service.
    pub fn new(store: Arc<Store>) -> StoreWriter {
        StoreWriter::scoped(store, Scope::AllBut(HashSet::new()))
    }

    /// A writer for `store` that owns the services of `scope` and leaves the others alone.
    pub fn scoped(store: Arc<Store>, scope: Scope) -> StoreWriter {
        StoreWriter {
            store,
            scope,
            group: None,
        }
    }

    /// The writer of `service` in a scoped discovery's `group`, which is not listed until it
    /// applies a first list.
    pub fn watched(group: &Arc<Watched>, service: &str) -> StoreWriter {
        group.expect(service);
        StoreWriter {
            store: Arc::clone(group.store()),
            scope: Scope::Only(service.to_string()),
            group: Some(Arc::clone(group)),
        }
    }

    fn owns(&self, service: &str) -> bool {
        match &self.scope {
            Scope::AllBut(others) => !others.contains(service),
            Scope::Only(one) => one == service,
        }
    }

    fn reset(&self, instances: Vec<(String, Arc<Instance>)>) {
        let mut fresh: HashMap<String, Vec<Arc<Instance>>> = HashMap::new();
        for (service, instance) in instances {
            if self.owns(&service) {
                fresh.entry(service).or_default().push(instance);
            }
        }
        for service in self.store.populated() {
            if self.owns(&service) && !fresh.contains_key(&service) {
                self.store
                    .publish_to(&service, |cell| (!cell.load().is_empty()).then(Vec::new));
            }
        }
        for (service, mut instances) in fresh {
            // etcd lists keys in order, so this sort is a check that costs one pass.
            if !instances.is_sorted_by(|a, b| a.id <= b.id) {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
            }
            instances.dedup_by(|b, a| a.id == b.id);
            self.store.publish_to(&service, |cell| {
                (cell.load().instances() != instances.as_slice()).then(|| instances.clone())
            });
        }
    }

    fn change(&self, changes: Vec<Change>) {
        // Per service, the last change of each id wins, in id order for the merge below.
        let mut edits: HashMap<String, BTreeMap<String, Option<Arc<Instance>>>> = HashMap::new();
        for change in changes.into_iter().filter(|c| self.owns(c.service())) {
            match change {
                Change::Put {
                    service, instance, ..
                } => {
                    let id = instance.id.clone();
                    edits.entry(service).or_default().insert(id, Some(instance));
                }
                Change::Delete { service, id, .. } => {
                    edits.entry(service).or_default().insert(id, None);
                }
            }
        }
        for (service, edits) in edits {
            // Deleting what was never there creates nothing.
            if self.store.get(&service).is_none() && edits.values().all(Option::is_none) {
                continue;
            }
            self.store.publish_to(&service, |cell| merge(cell, &edits));
        }
    }
}

/// `edits` merged into the cell's sorted snapshot, if that changes anything. Untouched
/// instances are shared with the old snapshot, not copied.
fn merge(
    cell: &ServiceCell,
    edits: &BTreeMap<String, Option<Arc<Instance>>>,
) -> Option<Vec<Arc<Instance>>> {
    let current = cell.load();
    let mut out = Vec::with_capacity(current.len() + edits.len());
    let mut changed = false;
    let mut edits = edits.iter().map(|(id, e)| (id, e.clone())).peekable();
    for instance in current.instances() {
        // Edits of ids the snapshot lacks, sorted before this one: only a put adds something.
        while let Some((_, edit)) = edits.next_if(|(id, _)| id.as_str() < instance.id.as_str()) {
            if let Some(new) = edit {
                out.push(new);
                changed = true;
            }
        }
        match edits.next_if(|(id, _)| **id == instance.id) {
            Some((_, Some(new))) if new == *instance => out.push(Arc::clone(instance)),
            Some((_, Some(new))) => {
                out.push(new);
                changed = true;
            }
            Some((_, None)) => changed = true,
            None => out.push(Arc::clone(instance)),
        }
    }
    for (_, edit) in edits {
        if let Some(new) = edit {
            out.push(new);
            changed = true;
        }
    }
    changed.then_some(out)
}

impl Sink for StoreWriter {
    fn apply(&mut self, update: Update) {
        let alone = matches!(self.scope, Scope::AllBut(_));
        match update {
            Update::Reset {
                revision,
                instances,
            } => {
                self.reset(instances);
                if alone {
                    self.store.set_revision(revision);
                    self.store.listed();
                } else if let (Some(group), Scope::Only(service)) = (&self.group, &self.scope) {
                    group.has_listed(service, revision);
                }
            }
            Update::Cached {
                revision,
                instances,
                written_at,
            } => {
                self.reset(instances);
                if alone {
                    self.store.set_revision(revision);
                    self.store.cached(written_at);
                } else if let (Some(group), Scope::Only(service)) = (&self.group, &self.scope) {
                    group.has_restored(service, revision, written_at);
                }
            }
            Update::Changes { revision, changes } => {
                self.change(changes);
                if alone {
                    self.store.set_revision(revision);
                } else if let (Some(group), Scope::Only(service)) = (&self.group, &self.scope) {
                    group.has_applied(service, revision);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, addr: &str) -> Arc<Instance> {
        Instance::plain(id, addr)
    }

    fn put(service: &str, id: &str, addr: &str, revision: i64) -> Change {
        Change::Put {
            service: service.into(),
            instance: inst(id, addr),
            revision,
        }
    }

    fn delete(service: &str, id: &str, revision: i64) -> Change {
        Change::Delete {
            service: service.into(),
            id: id.into(),
            revision,
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
            revision: 8,
            changes: vec![
                delete("orders", "a", 6),
                put("orders", "c", "10.0.0.4:80", 7),
                put("orders", "0", "10.0.0.5:80", 7),
                put("orders", "d", "10.0.0.6:80", 8),
                delete("orders", "d", 8),
                delete("nobody", "x", 8),
            ],
        });
        assert_eq!(ids(&store, "orders"), ["0", "b", "c"]);
        assert_eq!(store.revision(), 8);
        assert!(
            store.get("nobody").is_none(),
            "a delete of nothing creates no service"
        );

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
    fn unchanged_services_keep_their_snapshot_and_changes_share_instances() {
        let store = Store::new();
        let mut w = StoreWriter::new(Arc::clone(&store));
        let all = vec![
            ("orders".to_string(), inst("a", "10.0.0.1:80")),
            ("orders".to_string(), inst("b", "10.0.0.2:80")),
            ("users".to_string(), inst("u", "10.0.0.3:80")),
        ];
        w.apply(Update::Reset {
            revision: 1,
            instances: all.clone(),
        });
        let users = arc_swap::Guard::into_inner(store.cell("users").load());
        let orders = arc_swap::Guard::into_inner(store.cell("orders").load());
        w.apply(Update::Reset {
            revision: 2,
            instances: all,
        });
        w.apply(Update::Changes {
            revision: 3,
            changes: vec![put("users", "u", "10.0.0.3:80", 3)],
        });
        let now = arc_swap::Guard::into_inner(store.cell("users").load());
        assert!(
            Arc::ptr_eq(&users, &now),
            "an identical put published a snapshot"
        );

        w.apply(Update::Changes {
            revision: 4,
            changes: vec![put("orders", "b", "10.0.0.9:80", 4)],
        });
        let after = store.cell("orders").load();
        assert!(
            Arc::ptr_eq(&after.instances()[0], &orders.instances()[0]),
            "the untouched instance was copied"
        );
        assert_eq!(
            after.instances()[1].endpoint.addr.to_string(),
            "10.0.0.9:80"
        );
    }

    #[test]
    fn scoped_writers_leave_each_others_services_alone() {
        let store = Store::new();
        let keyed: HashSet<String> = ["product".to_string()].into();
        let mut main = StoreWriter::scoped(Arc::clone(&store), Scope::AllBut(keyed));
        let mut product = StoreWriter::scoped(Arc::clone(&store), Scope::Only("product".into()));
        product.apply(Update::Reset {
            revision: 3,
            instances: vec![("product".into(), inst("7587", "10.0.0.7:80"))],
        });
        main.apply(Update::Reset {
            revision: 4,
            instances: vec![
                ("orders".into(), inst("a", "10.0.0.1:80")),
                ("product".into(), inst("stray", "10.0.0.9:80")),
            ],
        });
        assert_eq!(
            ids(&store, "product"),
            ["7587"],
            "the main writer touched a keyed service"
        );
        assert_eq!(ids(&store, "orders"), ["a"]);
        assert_eq!(
            store.revision(),
            4,
            "only the main writer sets the revision"
        );
        main.apply(Update::Reset {
            revision: 5,
            instances: vec![],
        });
        assert_eq!(ids(&store, "product"), ["7587"]);
        assert!(ids(&store, "orders").is_empty());
    }
}
