//! Forgetting services that left the registry: one that no listener or `[[service]]` block
//! names and that has had no instances for a minute leaves the store, `/services` and
//! `/metrics`, so months of churn leave no trail of empty entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::snapshot::Store;

/// How long a service must stay empty before it is forgotten: long enough that a service whose
/// only instance restarts (deregistered, then registered again) keeps its counters.
pub(crate) const EMPTY_FOR: Duration = Duration::from_secs(60);

/// How often the store is scanned; a service goes between `EMPTY_FOR` and `EMPTY_FOR + SCAN`
/// after its last instance.
const SCAN: Duration = Duration::from_secs(10);

/// Scans `store` every few seconds until `stop`, removing the services empty for
/// [`EMPTY_FOR`].
pub(crate) async fn run(store: Arc<Store>, stop: CancellationToken) {
    // Service to the version of its empty instance set and when it was first seen empty.
    let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        if !crate::shutdown::sleep(&stop, SCAN).await {
            return;
        }
        scan(&store, &mut seen, Instant::now());
    }
}

fn scan(store: &Store, seen: &mut HashMap<String, (u64, Instant)>, now: Instant) {
    let empty = store.empty();
    let mut next = HashMap::with_capacity(empty.len());
    for (service, version) in empty {
        let since = match seen.get(&service) {
            Some(&(v, since)) if v == version => since,
            _ => now,
        };
        if now.duration_since(since) >= EMPTY_FOR && store.prune(&service, version) {
            debug!(service = %crate::text::printable(&service), "service without instances for a minute, forgotten");
            continue;
        }
        next.insert(service, (version, since));
    }
    *seen = next;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;

    #[test]
    fn a_service_empty_for_a_minute_is_forgotten_unless_pinned_or_refilled() {
        let store = Store::new();
        let t0 = Instant::now();
        let mut seen = HashMap::new();
        store.publish(
            "gone",
            vec![Instance::plain("a", "127.0.0.1:1").as_ref().clone()],
        );
        store.publish("gone", vec![]);
        store.publish("back", vec![]);
        store.cell("pinned").pin(true);
        scan(&store, &mut seen, t0);
        scan(&store, &mut seen, t0 + Duration::from_secs(30));
        // "back" gets an instance and loses it again: its minute starts over.
        store.publish(
            "back",
            vec![Instance::plain("a", "127.0.0.1:1").as_ref().clone()],
        );
        store.publish("back", vec![]);
        scan(&store, &mut seen, t0 + Duration::from_secs(61));
        assert!(store.get("gone").is_none());
        assert!(store.get("back").is_some());
        assert!(store.get("pinned").is_some());
        scan(&store, &mut seen, t0 + Duration::from_secs(125));
        assert!(store.get("back").is_none());
        assert!(store.get("pinned").is_some());
    }

    #[test]
    fn a_publish_to_a_pruned_service_lands_in_its_new_cell() {
        let store = Store::new();
        store.publish("s", vec![]);
        let old = store.cell("s");
        assert!(store.prune("s", old.version()));
        assert!(old.is_retired());
        store.publish(
            "s",
            vec![Instance::plain("a", "127.0.0.1:1").as_ref().clone()],
        );
        assert_eq!(store.cell("s").load().len(), 1);
        assert!(old.load().is_empty());
    }
}
