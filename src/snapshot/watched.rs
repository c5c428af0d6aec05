//! Scoped discovery's writers: one per watched service, each fed by its own watch, reporting
//! to the store together. The store's revision is the newest their watches are at; it is synced
//! once each has listed its service, and it stops counting as restored from a cache file then.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::store::Store;

/// The writers of one scoped discovery and which of them have listed.
#[derive(Debug)]
pub struct Watched {
    store: Arc<Store>,
    state: Mutex<State>,
    /// Woken whenever a service is listed.
    listed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Services whose writer has not applied a first list yet.
    unlisted: HashSet<String>,
    /// The revision each service's writer applied last. A list after a restore may go back,
    /// so the store's revision is the newest of these, not the newest ever seen.
    revisions: HashMap<String, i64>,
}

impl State {
    fn newest(&self) -> i64 {
        self.revisions.values().copied().max().unwrap_or(0)
    }
}

impl Watched {
    /// A group writing to `store` that will watch `services`: the store is synced once each
    /// has listed, at once if there are none.
    pub fn new(store: Arc<Store>, services: &[String]) -> Arc<Watched> {
        let w = Arc::new(Watched {
            store,
            state: Mutex::new(State {
                unlisted: services.iter().cloned().collect(),
                revisions: HashMap::new(),
            }),
            listed: Notify::new(),
        });
        w.settle(&w.lock());
        w
    }

    /// The store the group writes to.
    pub(super) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the store synced once nothing is left to list.
    fn settle(&self, state: &State) {
        if state.unlisted.is_empty() {
            self.store.listed();
        }
    }

    /// Records `service`'s newest revision and gives the store the newest of all.
    fn at(&self, state: &mut State, service: &str, revision: i64) {
        state.revisions.insert(service.to_string(), revision);
        self.store.set_revision(state.newest());
    }

    /// Waits for `service`'s first list too. One added after the group was made leaves the
    /// store synced: it was, once.
    pub(super) fn expect(&self, service: &str) {
        self.lock().unlisted.insert(service.to_string());
    }

    /// Stops waiting for `service` (its watch is gone) and empties it: nothing keeps its
    /// instances current any more.
    pub fn forget(&self, service: &str) {
        let mut state = self.lock();
        state.unlisted.remove(service);
        if state.revisions.remove(service).is_some() {
            self.store.set_revision(state.newest());
        }
        self.settle(&state);
        drop(state);
        if self.store.get(service).is_some() {
            self.store.publish(service, Vec::new());
        }
    }

    /// Whether `service`'s writer has applied a list.
    pub fn is_listed(&self, service: &str) -> bool {
        !self.lock().unlisted.contains(service)
    }

    /// Returns once every one of `services` is listed.
    pub async fn until_listed(&self, services: &[String]) {
        loop {
            let woken = self.listed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if services.iter().all(|s| self.is_listed(s)) {
                return;
            }
            woken.await;
        }
    }

    /// Records that `service`'s writer applied a list at `revision`.
    pub(super) fn has_listed(&self, service: &str, revision: i64) {
        let mut state = self.lock();
        self.at(&mut state, service, revision);
        if state.unlisted.remove(service) {
            self.settle(&state);
            drop(state);
            self.listed.notify_waiters();
        }
    }

    /// Records that `service`'s writer applied changes up to `revision`.
    pub(super) fn has_applied(&self, service: &str, revision: i64) {
        self.at(&mut self.lock(), service, revision);
    }

    /// Records that `service`'s writer serves a cache file written at `written_at`, at
    /// `revision`.
    pub(super) fn has_restored(&self, service: &str, revision: i64, written_at: u64) {
        self.at(&mut self.lock(), service, revision);
        self.store.cached(written_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;
    use crate::snapshot::StoreWriter;
    use crate::update::{Change, Sink, Update};

    fn listing(service: &str, revision: i64, ids: &[&str]) -> Update {
        Update::Reset {
            revision,
            instances: ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let addr = format!("10.0.0.{}:80", i + 1);
                    (service.to_string(), Instance::plain(id, &addr))
                })
                .collect(),
        }
    }

    #[test]
    fn the_store_is_synced_once_every_watched_service_has_listed() {
        let store = Store::new();
        let group = Watched::new(Arc::clone(&store), &["a".into(), "b".into()]);
        let (mut a, mut b) = (
            StoreWriter::watched(&group, "a"),
            StoreWriter::watched(&group, "b"),
        );
        a.apply(listing("a", 12, &["a1"]));
        assert!(!store.synced(), "b has not listed yet");
        assert!(group.is_listed("a") && !group.is_listed("b"));
        b.apply(listing("b", 10, &["b1", "b2"]));
        assert!(store.synced());
        assert_eq!(
            store.revision(),
            12,
            "the newest revision any watch applied"
        );
        a.apply(Update::Changes {
            revision: 15,
            changes: vec![Change::Delete {
                service: "a".into(),
                id: "a1".into(),
                revision: 15,
            }],
        });
        assert_eq!(store.revision(), 15);
        assert!(store.cell("a").load().is_empty());
        assert_eq!(store.cell("b").load().len(), 2, "a's writer leaves b alone");
        // etcd restored from an older snapshot: both watches list again, at a lower revision.
        a.apply(listing("a", 8, &["a1"]));
        b.apply(listing("b", 8, &["b1"]));
        assert_eq!(store.revision(), 8, "the revision follows a restore back");
    }

    #[test]
    fn watching_nothing_is_synced_and_a_forgotten_service_is_emptied() {
        let store = Store::new();
        let group = Watched::new(Arc::clone(&store), &[]);
        assert!(store.synced(), "nothing to list");

        let store = Store::new();
        let group2 = Watched::new(Arc::clone(&store), &["a".into(), "b".into()]);
        let (mut a, _b) = (
            StoreWriter::watched(&group2, "a"),
            StoreWriter::watched(&group2, "b"),
        );
        a.apply(listing("a", 3, &["a1"]));
        assert!(!store.synced());
        // b's watch stops before it ever listed (a reload dropped it): nothing to wait for.
        group2.forget("b");
        assert!(store.synced());
        group2.forget("a");
        assert!(
            store.cell("a").load().is_empty(),
            "nothing keeps a current any more"
        );
        drop(group);
    }

    #[test]
    fn a_cache_file_counts_until_every_service_has_listed() {
        let store = Store::new();
        let group = Watched::new(Arc::clone(&store), &["a".into(), "b".into()]);
        let (mut a, mut b) = (
            StoreWriter::watched(&group, "a"),
            StoreWriter::watched(&group, "b"),
        );
        let cached = |service: &str| Update::Cached {
            revision: 7,
            instances: vec![(service.to_string(), Instance::plain("x", "10.0.0.9:80"))],
            written_at: 1_700_000_000,
        };
        a.apply(cached("a"));
        b.apply(cached("b"));
        assert_eq!(store.cached_at(), Some(1_700_000_000));
        a.apply(listing("a", 9, &["a1"]));
        assert_eq!(
            store.cached_at(),
            Some(1_700_000_000),
            "b still comes from the file"
        );
        b.apply(listing("b", 9, &[]));
        assert_eq!(store.cached_at(), None);
        assert!(store.synced());
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_its_services_are_listed() {
        let store = Store::new();
        let group = Watched::new(Arc::clone(&store), &[]);
        let mut a = StoreWriter::watched(&group, "a");
        let waiting = tokio::spawn({
            let group = Arc::clone(&group);
            async move { group.until_listed(&["a".to_string()]).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        a.apply(listing("a", 2, &[]));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
