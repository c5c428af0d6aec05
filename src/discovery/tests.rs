//! The list/watch state machine against the fake, on tokio's paused clock.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fake::{pair, FakeEtcd};
use super::*;
use crate::backoff::{RETRY_BASE, RETRY_MAX};
use crate::etcd::EtcdError;

const CLUSTER: u64 = 7;

fn at(revision: i64) -> Header {
    Header {
        cluster_id: CLUSTER,
        revision,
    }
}

fn kv(key: &str, value: &str, mod_revision: i64) -> Kv {
    Kv {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        mod_revision,
    }
}

fn put(key: &str, value: &str, rev: i64) -> Event {
    Event {
        deleted: false,
        kv: kv(key, value, rev),
    }
}

fn del(key: &str, rev: i64) -> Event {
    Event {
        deleted: true,
        kv: kv(key, "", rev),
    }
}

struct Running {
    etcd: FakeEtcd,
    updates: mpsc::UnboundedReceiver<Update>,
    metrics: DiscoveryMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start() -> Running {
    start_with(None)
}

fn start_with(fallback: Option<Fallback>) -> Running {
    let (source, etcd) = pair();
    let (tx, updates) = mpsc::unbounded_channel();
    let metrics = DiscoveryMetrics::default();
    let stop = CancellationToken::new();
    let task = Discovery::with_source(source, "/s/", tx, metrics.clone())
        .with_fallback(fallback)
        .spawn(stop.clone());
    Running {
        etcd,
        updates,
        metrics,
        stop,
        task,
    }
}

impl Running {
    async fn update(&mut self) -> Update {
        self.updates.recv().await.expect("an update")
    }

    /// The ids of a `Reset`, as `service/id`.
    async fn reset(&mut self) -> (i64, Vec<String>) {
        match self.update().await {
            Update::Reset {
                revision,
                instances,
            } => (
                revision,
                instances
                    .iter()
                    .map(|(s, i)| format!("{s}/{}", i.id))
                    .collect(),
            ),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    /// A `Changes` as `(revision, ["+svc/id" | "-svc/id"])`.
    async fn changes(&mut self) -> (i64, Vec<String>) {
        match self.update().await {
            Update::Changes { revision, changes } => (
                revision,
                changes
                    .iter()
                    .map(|c| match c {
                        Change::Put { .. } => format!("+{}/{}", c.service(), c.id()),
                        Change::Delete { .. } => format!("-{}/{}", c.service(), c.id()),
                    })
                    .collect(),
            ),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("discovery ended cleanly");
    }
}

#[tokio::test(start_paused = true)]
async fn lists_then_watches_from_the_next_revision() {
    let mut d = start();
    d.etcd
        .list(
            at(5),
            vec![
                kv("/s/a/1", "10.0.0.1:80", 3),
                kv("/s/a/2", "garbage", 4),
                kv("/s/b/1", r#"{"addr":"10.0.0.2:80"}"#, 5),
            ],
        )
        .await;
    assert_eq!(d.reset().await, (5, vec!["a/1".into(), "b/1".into()]));
    assert_eq!(d.metrics.invalid_values.get(), 1);
    assert_eq!(d.metrics.lists.get(), 1);
    let (start, feed) = d.etcd.watch(at(5)).await;
    assert_eq!(start, 6);
    feed.send(Ok(WatchMessage::Events(
        at(7),
        vec![put("/s/a/3", "10.0.0.3:80", 6), del("/s/a/1", 7)],
    )))
    .unwrap();
    assert_eq!(d.changes().await, (7, vec!["+a/3".into(), "-a/1".into()]));
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_resumes_from_the_last_applied_revision_plus_one() {
    let mut d = start();
    d.etcd.list(at(5), vec![]).await;
    d.reset().await;
    let (_, feed) = d.etcd.watch(at(5)).await;
    feed.send(Ok(WatchMessage::Events(
        at(9),
        vec![put("/s/a/1", "10.0.0.1:80", 9)],
    )))
    .unwrap();
    d.changes().await;
    // A progress notification is never taken as applied: etcd 3.4 can send it early.
    feed.send(Ok(WatchMessage::Progress(at(20)))).unwrap();
    feed.send(Err(EtcdError::new("h2 protocol error"))).unwrap();
    let (start, feed) = d.etcd.watch(at(20)).await;
    assert_eq!(
        start, 10,
        "resumed from the last applied event, not the header"
    );
    drop(feed); // closed by the server
    let (start, feed) = d.etcd.watch(at(20)).await;
    assert_eq!(start, 10);
    feed.send(Ok(WatchMessage::Events(at(21), vec![del("/s/a/1", 21)])))
        .unwrap();
    assert_eq!(d.changes().await, (21, vec!["-a/1".into()]));
    assert_eq!(d.metrics.lists.get(), 1, "no re-list after a broken stream");
    assert_eq!(d.metrics.watch_restarts.get(), 2);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn repeated_events_are_dropped() {
    let mut d = start();
    d.etcd.list(at(5), vec![]).await;
    d.reset().await;
    let (_, feed) = d.etcd.watch(at(5)).await;
    feed.send(Ok(WatchMessage::Events(
        at(8),
        vec![put("/s/a/1", "10.0.0.1:80", 8)],
    )))
    .unwrap();
    assert_eq!(d.changes().await.0, 8);
    // etcd 3.4 repeats events around compactions: 7 and 8 again, then 9 for real.
    feed.send(Ok(WatchMessage::Events(
        at(9),
        vec![
            put("/s/a/7", "10.0.0.7:80", 7),
            put("/s/a/1", "10.0.0.1:80", 8),
            put("/s/a/2", "10.0.0.2:80", 9),
        ],
    )))
    .unwrap();
    feed.send(Ok(WatchMessage::Events(
        at(9),
        vec![put("/s/a/2", "10.0.0.2:80", 9)],
    )))
    .unwrap();
    feed.send(Ok(WatchMessage::Events(at(10), vec![del("/s/a/2", 10)])))
        .unwrap();
    assert_eq!(d.changes().await, (9, vec!["+a/2".into()]));
    assert_eq!(
        d.changes().await,
        (10, vec!["-a/2".into()]),
        "a wholly repeated batch delivers nothing"
    );
    assert_eq!(d.metrics.repeated_events.get(), 3);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_compaction_past_the_watch_lists_again() {
    let mut d = start();
    d.etcd
        .list(at(5), vec![kv("/s/a/1", "10.0.0.1:80", 5)])
        .await;
    d.reset().await;
    let (_, feed) = d.etcd.watch(at(5)).await;
    feed.send(Ok(WatchMessage::Compacted {
        compact_revision: 40,
    }))
    .unwrap();
    d.etcd
        .list(at(50), vec![kv("/s/a/2", "10.0.0.2:80", 45)])
        .await;
    assert_eq!(d.reset().await, (50, vec!["a/2".into()]));
    let (start, _feed) = d.etcd.watch(at(50)).await;
    assert_eq!(start, 51);
    assert_eq!(d.metrics.lists.get(), 2);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_replaced_registry_is_listed_again() {
    let mut d = start();
    d.etcd
        .list(at(100), vec![kv("/s/a/1", "10.0.0.1:80", 90)])
        .await;
    d.reset().await;
    // etcd restarted on an empty data dir: a new cluster id, and a revision far below ours.
    let (_, _feed) = d
        .etcd
        .watch(Header {
            cluster_id: 99,
            revision: 3,
        })
        .await;
    let new = Header {
        cluster_id: 99,
        revision: 3,
    };
    d.etcd.list(new, vec![kv("/s/b/1", "10.0.0.5:80", 2)]).await;
    assert_eq!(d.reset().await, (3, vec!["b/1".into()]));
    let (start, feed) = d.etcd.watch(new).await;
    assert_eq!(start, 4);

    // Restored from an older snapshot of the same cluster: only the revision tells.
    feed.send(Ok(WatchMessage::Events(
        Header {
            cluster_id: 99,
            revision: 2,
        },
        vec![put("/s/b/2", "10.0.0.6:80", 2)],
    )))
    .unwrap();
    d.etcd
        .list(
            Header {
                cluster_id: 99,
                revision: 2,
            },
            vec![],
        )
        .await;
    assert_eq!(d.reset().await, (2, vec![]));
    assert_eq!(d.metrics.lists.get(), 3);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_watch_is_reopened_after_the_silence_limit() {
    let mut d = start();
    d.etcd.list(at(5), vec![]).await;
    d.reset().await;
    let (_, _quiet) = d.etcd.watch(at(5)).await;
    let opened = Instant::now();
    let (start, _feed) = d.etcd.watch(at(5)).await;
    assert_eq!(start, 6);
    let waited = opened.elapsed();
    assert!(
        waited >= WATCH_SILENCE && waited <= WATCH_SILENCE + RETRY_MAX,
        "reopened after {waited:?}"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_growing_delays_and_a_cap() {
    let mut d = start();
    let mut last = Instant::now();
    let mut gaps = Vec::new();
    for _ in 0..8 {
        d.etcd
            .list_result(Err(EtcdError::new("connection refused")))
            .await;
        gaps.push(last.elapsed());
        last = Instant::now();
    }
    d.etcd.list(at(5), vec![]).await;
    gaps.push(last.elapsed());
    d.reset().await;
    assert_eq!(gaps[0], Duration::ZERO, "the first list is immediate");
    assert!(
        gaps[1] >= RETRY_BASE / 2 && gaps[1] <= RETRY_BASE,
        "{gaps:?}"
    );
    assert!(gaps.iter().all(|g| *g <= RETRY_MAX), "{gaps:?}");
    assert!(
        gaps[8] >= RETRY_MAX / 2,
        "the delay grows to the cap: {gaps:?}"
    );

    // A watch that fails to open is retried from the same revision.
    let (start, feed) = d.etcd.watch_unopened().await;
    assert_eq!(start, 6);
    drop(feed);
    let (start, _feed) = d.etcd.watch(at(5)).await;
    assert_eq!(start, 6);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_every_wait() {
    // Waiting for a list answer.
    let d = start();
    tokio::task::yield_now().await;
    d.stop().await;
    // Sleeping between retries.
    let mut d = start();
    d.etcd.list_result(Err(EtcdError::new("down"))).await;
    d.stop().await;
}

fn start_with_fallback(after: Duration) -> Running {
    start_with(Some(Fallback {
        after,
        cluster_id: CLUSTER,
        revision: 40,
        instances: vec![("svc".to_string(), Instance::plain("cached", "10.0.0.9:80"))],
        written_at: 1,
    }))
}

#[tokio::test(start_paused = true)]
async fn the_cache_is_served_when_etcd_refuses_a_list_and_replaced_when_it_answers() {
    let began = Instant::now();
    let mut d = start_with_fallback(Duration::from_secs(5));
    // etcd refuses the first list: the cache is served at once.
    d.etcd
        .list_result(Err(EtcdError::new("connection refused")))
        .await;
    match d.update().await {
        Update::Cached {
            revision,
            instances,
            written_at,
        } => {
            assert_eq!((revision, written_at), (40, 1));
            assert_eq!(instances[0].1.id, "cached");
        }
        other => panic!("expected the cache, got {other:?}"),
    }
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "served on the first refusal"
    );
    // Further refusals serve nothing more; the first list that succeeds replaces the cache.
    for _ in 0..3 {
        d.etcd
            .list_result(Err(EtcdError::new("connection refused")))
            .await;
    }
    assert!(d.updates.try_recv().is_err(), "the cache is served once");
    let replaced = loop {
        d.etcd
            .list(at(50), vec![kv("/s/svc/live", "10.0.0.1:80", 50)])
            .await;
        if let Ok(update) = tokio::time::timeout(Duration::from_secs(1), d.update()).await {
            break update;
        }
    };
    match replaced {
        Update::Reset {
            revision,
            instances,
        } => {
            assert_eq!(revision, 50);
            assert_eq!(instances[0].1.id, "live");
        }
        other => panic!("expected etcd's list, got {other:?}"),
    }
    d.stop.cancel();
    d.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_list_that_hangs_past_the_deadline_does_not_hold_the_cache_back() {
    let mut d = start_with_fallback(Duration::from_secs(5));
    // The list is asked for and never answered (a blackholed member).
    let pending = tokio::spawn(async move {
        let _hold = d.etcd.call_held().await;
        std::future::pending::<()>().await;
    });
    match d.updates.recv().await.expect("an update") {
        Update::Cached { .. } => {}
        other => panic!("expected the cache, got {other:?}"),
    }
    pending.abort();
    d.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_list_in_time_means_the_cache_is_never_served() {
    let mut d = start_with_fallback(Duration::from_secs(5));
    d.etcd
        .list(at(50), vec![kv("/s/svc/live", "10.0.0.1:80", 50)])
        .await;
    assert_eq!(d.reset().await, (50, vec!["svc/live".to_string()]));
    let (_, _feed) = d.etcd.watch(at(50)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(d.updates.try_recv().is_err(), "nothing else was delivered");
    d.stop.cancel();
    d.task.await.unwrap();
}
