//! A property test of discovery and the snapshot store together: whatever sequence of puts,
//! deletes, repeated events, broken streams, compactions and restores etcd goes through, the
//! store ends equal to a plain map of etcd's keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fake::{pair, Feed};
use super::*;
use crate::etcd::EtcdError;
use crate::snapshot::{Store, StoreWriter};

/// What the simulated etcd goes through.
#[derive(Debug, Clone)]
enum Op {
    /// A put of instance `id` of service `service`.
    Put(u8, u8, Value),
    /// A delete.
    Delete(u8, u8),
    /// An event already delivered, again, at the head of the next batch (etcd 3.4 repeats
    /// events, even old ones, around compactions).
    Repeat(u8),
    /// The stream breaks; discovery must resume where it was.
    Break,
    /// A compaction overtakes the watch; discovery must list again.
    Compact,
    /// etcd is restored from an older snapshot (new cluster id, lower revision, other keys).
    Restore,
}

/// A registry value of one of the formats, or garbage.
#[derive(Debug, Clone, Copy)]
enum Value {
    Plain(u8),
    Json(u8),
    Garbage,
}

impl Value {
    fn bytes(self) -> Vec<u8> {
        match self {
            Value::Plain(p) => format!("10.0.0.1:{}", u16::from(p) + 1).into_bytes(),
            Value::Json(p) => format!(r#"{{"addr":"10.0.0.2:{}"}}"#, u16::from(p) + 1).into_bytes(),
            Value::Garbage => b"not an address".to_vec(),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        any::<u8>().prop_map(Value::Plain),
        any::<u8>().prop_map(Value::Json),
        Just(Value::Garbage),
    ];
    prop_oneof![
        6 => (0..3u8, 0..4u8, value).prop_map(|(s, i, v)| Op::Put(s, i, v)),
        3 => (0..3u8, 0..4u8).prop_map(|(s, i)| Op::Delete(s, i)),
        2 => any::<u8>().prop_map(Op::Repeat),
        1 => Just(Op::Break),
        1 => Just(Op::Compact),
        1 => Just(Op::Restore),
    ]
}

/// The simulated etcd: its keys with their mod revisions.
struct Sim {
    kvs: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    header: Header,
}

impl Sim {
    fn listing(&self) -> Vec<Kv> {
        self.kvs
            .iter()
            .map(|(k, (v, rev))| Kv {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *rev,
            })
            .collect()
    }

    /// What the store should hold: service → (id, address), sorted.
    fn expected(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (k, (v, _)) in &self.kvs {
            let Some((service, id)) = split_key("/s/", k) else {
                continue;
            };
            if let Ok(e) = parse_value(v) {
                out.entry(service.to_string())
                    .or_default()
                    .push((id.to_string(), e.addr.to_string()));
            }
        }
        out
    }
}

/// Passes updates to the store and reports each revision applied.
struct Tap(StoreWriter, watch::Sender<i64>);

impl Sink for Tap {
    fn apply(&mut self, update: Update) {
        let revision = match &update {
            Update::Reset { revision, .. }
            | Update::Cached { revision, .. }
            | Update::Changes { revision, .. } => *revision,
        };
        self.0.apply(update);
        let _ = self.1.send(revision);
    }
}

fn held(store: &Store) -> BTreeMap<String, Vec<(String, String)>> {
    store
        .snapshots()
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(name, s)| {
            let ids = s
                .instances()
                .iter()
                .map(|i| (i.id.clone(), i.endpoint.addr.to_string()))
                .collect();
            (name, ids)
        })
        .collect()
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (source, mut etcd) = pair();
    let store = Store::new();
    let (tx, mut applied) = watch::channel(0);
    let tap = Tap(StoreWriter::new(Arc::clone(&store)), tx);
    let stop = CancellationToken::new();
    let task =
        Discovery::with_source(source, "/s/", tap, DiscoveryMetrics::default()).spawn(stop.clone());
    let mut sim = Sim {
        kvs: BTreeMap::new(),
        header: Header {
            cluster_id: 1,
            revision: 1,
        },
    };

    // Waits until discovery has applied the simulated etcd's current revision.
    async fn caught_up(applied: &mut watch::Receiver<i64>, revision: i64) {
        let _ = applied.wait_for(|r| *r == revision).await;
    }

    etcd.list(sim.header, sim.listing()).await;
    caught_up(&mut applied, sim.header.revision).await;
    let (start, mut feed): (i64, Feed) = etcd.watch(sim.header).await;
    prop_assert_eq!(start, sim.header.revision + 1);
    // Every event delivered on the current watch, oldest first.
    let mut history: Vec<Event> = Vec::new();
    // An old event to send again with the next batch.
    let mut stale: Option<Event> = None;
    for op in ops {
        match op {
            Op::Put(service, id, _) | Op::Delete(service, id) => {
                let key = format!("/s/svc{service}/i{id}").into_bytes();
                sim.header.revision += 1;
                let rev = sim.header.revision;
                let value = match op {
                    Op::Put(_, _, v) => v.bytes(),
                    _ => Vec::new(),
                };
                if value.is_empty() {
                    sim.kvs.remove(&key);
                } else {
                    sim.kvs.insert(key.clone(), (value.clone(), rev));
                }
                let event = Event {
                    deleted: value.is_empty(),
                    kv: Kv {
                        key,
                        value,
                        mod_revision: rev,
                    },
                };
                history.push(event.clone());
                let batch = stale.take().into_iter().chain([event]).collect();
                let _ = feed.send(Ok(WatchMessage::Events(sim.header, batch)));
                caught_up(&mut applied, rev).await;
            }
            Op::Repeat(pick) => {
                if !history.is_empty() {
                    stale = Some(history[usize::from(pick) % history.len()].clone());
                }
            }
            Op::Break => {
                let _ = feed.send(Err(EtcdError::new("h2 protocol error")));
                let (start, f) = etcd.watch(sim.header).await;
                prop_assert_eq!(start, sim.header.revision + 1, "resumed from elsewhere");
                feed = f;
            }
            Op::Compact => {
                let _ = feed.send(Ok(WatchMessage::Compacted {
                    compact_revision: sim.header.revision,
                }));
                etcd.list(sim.header, sim.listing()).await;
                caught_up(&mut applied, sim.header.revision).await;
                let (start, f) = etcd.watch(sim.header).await;
                prop_assert_eq!(start, sim.header.revision + 1);
                feed = f;
                history.clear();
                stale = None;
            }
            Op::Restore => {
                // An older snapshot: half the keys, a lower revision, another cluster.
                sim.kvs.retain(|k, _| k.last().is_some_and(|b| b % 2 == 0));
                sim.header = Header {
                    cluster_id: sim.header.cluster_id + 1,
                    revision: (sim.header.revision / 2).max(1),
                };
                for (_, rev) in sim.kvs.values_mut() {
                    *rev = (*rev).min(sim.header.revision);
                }
                let _ = feed.send(Ok(WatchMessage::Progress(sim.header)));
                etcd.list(sim.header, sim.listing()).await;
                caught_up(&mut applied, sim.header.revision).await;
                let (start, f) = etcd.watch(sim.header).await;
                prop_assert_eq!(start, sim.header.revision + 1);
                feed = f;
                history.clear();
                stale = None;
            }
        }
    }
    prop_assert_eq!(held(&store), sim.expected());
    prop_assert_eq!(store.revision(), sim.header.revision);
    stop.cancel();
    let _ = task.await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_store_always_ends_equal_to_etcd(ops in proptest::collection::vec(op(), 0..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(check(ops))?;
    }
}
