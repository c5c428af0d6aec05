//! Discovery: list the registry prefix at one revision, then watch it from the next, forever.
//!
//! The task pushes [`Update`]s to a [`Sink`]: a `Reset` with the whole registry after every list,
//! then `Changes` per watch response. It never misses a change:
//! - a broken stream resumes from the last applied revision + 1;
//! - repeated events (etcd 3.4 can send them twice) are dropped;
//! - a compaction that overtook cairn, or a registry that was replaced (the cluster id changed or
//!   the revision went backwards: etcd was restored or wiped), triggers a fresh list;
//! - a watch silent for longer than etcd's progress interval is reopened.
//!
//! It never blocks readers: the sink swaps snapshots, and while etcd is away the last ones keep
//! serving. etcd is reached through [`ListWatch`], so the state machine is unit-tested on a
//! paused clock against a fake.

mod config;
mod etcd;
mod freshness;
mod metrics;
mod shared;
mod source;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::{DiscoveryScope, RawDiscovery};
pub use etcd::EtcdSource;
use freshness::Contact;
pub use freshness::Freshness;
pub use metrics::DiscoveryMetrics;
pub use shared::SharedStream;
pub use source::{Event, Header, Kv, ListWatch, Listing, WatchMessage, WatchStream};

use crate::backoff::Backoff;
use crate::etcd::Outage;
use crate::instance::Instance;
use crate::registry::{parse_value, split_key};
use crate::shutdown::{cancellable, sleep};
use crate::update::{Change, Sink, Update};

/// etcd sends a progress notification about every 10 minutes on an idle watch. A stream silent
/// for half again as long is assumed stuck (a partition the HTTP/2 pings did not catch), and is
/// reopened from the last applied revision.
const WATCH_SILENCE: Duration = Duration::from_secs(15 * 60);

/// The list-then-watch task for one registry prefix.
#[derive(Debug)]
pub struct Discovery<L, S> {
    /// Where the registry is read from.
    source: L,
    /// The registry prefix, ending with `/`.
    prefix: String,
    /// When set, every key under `prefix` is an instance of this one service (go-zero's
    /// `<key>/<lease id>` layout) instead of `<prefix><service>/<id>`.
    service: Option<String>,
    /// Where updates go.
    sink: S,
    /// Counters for `/metrics`.
    metrics: DiscoveryMetrics,
    /// This task's part in the freshness `/readyz` reports.
    contact: Contact,
    /// What to serve if etcd does not answer the first list in time; taken when delivered.
    fallback: Option<Fallback>,
    /// When the fallback is due.
    fallback_at: Option<Instant>,
    /// The cluster the delivered fallback came from, compared with the first list's.
    fallback_cluster: Option<u64>,
}

/// The registry as a cache file saw it, served when etcd does not answer a first list in
/// time: a node that reboots while etcd is away still routes.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// How long the first list may take before the fallback is served.
    pub after: Duration,
    /// The cluster the file was written from.
    pub cluster_id: u64,
    /// The revision it was written at.
    pub revision: i64,
    /// Its instances, with their services.
    pub instances: Vec<(String, Arc<Instance>)>,
    /// When it was written, in seconds since the Unix epoch.
    pub written_at: u64,
}

/// Why a watch stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The process is shutting down.
    Shutdown,
    /// The registry must be listed again: compaction, or a replaced registry.
    Relist,
    /// The stream broke; reopen it from the last applied revision.
    Broken(String),
}

/// Where the task stands in the registry's history.
#[derive(Debug, Default)]
struct Position {
    /// The revision up to which every update has been delivered; `None` means list first.
    applied: Option<i64>,
    /// The cluster that answered the last list.
    cluster_id: u64,
}

impl<S: Sink> Discovery<EtcdSource, S> {
    /// A discovery task reading `prefix` from etcd through `etcd`, watching on `stream` (the
    /// node's one watch stream), delivering to `sink`.
    pub fn new(
        etcd: crate::etcd::Etcd,
        stream: &SharedStream,
        prefix: &str,
        sink: S,
        metrics: DiscoveryMetrics,
    ) -> Self {
        let source = EtcdSource::new(etcd, prefix, stream.clone());
        Discovery::with_source(source, prefix, sink, metrics)
    }
}

impl<L: ListWatch, S: Sink> Discovery<L, S> {
    /// A discovery task reading `prefix` through `source`.
    pub fn with_source(source: L, prefix: &str, sink: S, metrics: DiscoveryMetrics) -> Self {
        Discovery {
            source,
            prefix: prefix.to_string(),
            service: None,
            sink,
            contact: metrics.freshness.join(),
            metrics,
            fallback: None,
            fallback_at: None,
            fallback_cluster: None,
        }
    }

    /// Serves `fallback` as soon as a list fails, or when none succeeded within its `after` of
    /// the start (a list that hangs).
    pub fn with_fallback(mut self, fallback: Option<Fallback>) -> Self {
        self.fallback = fallback;
        self
    }

    /// Delivers the fallback, once, if it is due and nothing was listed yet.
    fn serve_fallback(&mut self) {
        let Some(f) = self.fallback.take() else {
            return;
        };
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |now| now.as_secs())
            .saturating_sub(f.written_at);
        warn!(
            revision = f.revision,
            instances = f.instances.len(),
            age = %humantime::format_duration(Duration::from_secs(age)),
            "etcd has not answered; routing from the cache file until it does"
        );
        self.fallback_cluster = Some(f.cluster_id);
        self.sink.apply(Update::Cached {
            revision: f.revision,
            instances: f.instances,
            written_at: f.written_at,
        });
    }

    /// Reads every key under the prefix as an instance of `service`, whatever its path: the id
    /// is the rest of the key.
    pub fn for_service(mut self, service: &str) -> Self {
        self.service = Some(service.to_string());
        self
    }

    /// The service and instance id a key names, if it names one.
    fn locate<'k>(&'k self, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
        match &self.service {
            None => split_key(&self.prefix, key),
            Some(service) => {
                let id = std::str::from_utf8(key.strip_prefix(self.prefix.as_bytes())?).ok()?;
                (!id.is_empty()).then_some((service.as_str(), id))
            }
        }
    }

    /// Starts the task on the current runtime.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Lists and watches until `shutdown` fires, retrying every failure with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::etcd();
        let mut outage = Outage::default();
        let mut at = Position::default();
        let mut watches = 0u64;
        self.fallback_at = self.fallback.as_ref().map(|f| Instant::now() + f.after);
        loop {
            let applied = match at.applied {
                Some(rev) => rev,
                None => {
                    // The fallback's time may come while a list hangs or between attempts.
                    let due = self.fallback.as_ref().and(self.fallback_at);
                    let listed = tokio::select! {
                        r = cancellable(&shutdown, self.list(&mut at)) => r,
                        _ = crate::shutdown::until(due) => {
                            self.serve_fallback();
                            continue;
                        }
                    };
                    match listed {
                        None => return,
                        Some(Ok(rev)) => rev,
                        Some(Err(e)) => {
                            outage.failed("listing the registry", &e.to_string());
                            // etcd answered no: nothing is gained by routing nothing until
                            // the deadline.
                            self.serve_fallback();
                            let delay = backoff.next_delay();
                            let due = self.fallback.as_ref().and(self.fallback_at);
                            tokio::select! {
                                _ = crate::shutdown::until(due) => self.serve_fallback(),
                                slept = sleep(&shutdown, delay) => if !slept {
                                    return;
                                },
                            }
                            continue;
                        }
                    }
                }
            };

            let stream = match cancellable(&shutdown, self.source.watch(applied + 1)).await {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    outage.failed("watching the registry", &e.to_string());
                    if !sleep(&shutdown, backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
            };
            watches += 1;
            if watches > 1 {
                self.metrics.watch_restarts.inc();
            }

            let end = self
                .follow(stream, &mut at, &mut backoff, &mut outage, &shutdown)
                .await;
            self.contact.set_connected(false);
            match end {
                StreamEnd::Shutdown => return,
                StreamEnd::Relist => {
                    at.applied = None;
                    continue;
                }
                StreamEnd::Broken(why) => {
                    outage.failed("watching the registry", &why);
                }
            }
            if !sleep(&shutdown, backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Lists the whole prefix, pinned to one revision, and delivers it as one `Reset`.
    /// Returns that revision.
    async fn list(&mut self, at: &mut Position) -> Result<i64, crate::etcd::EtcdError> {
        let listing = self.source.list().await?;
        let Header {
            cluster_id,
            revision,
        } = listing.header;
        if at.cluster_id != 0 && cluster_id != at.cluster_id {
            warn!(
                old = at.cluster_id,
                new = cluster_id,
                "etcd answers as another cluster now (restored or replaced); serving its registry"
            );
        }
        at.cluster_id = cluster_id;
        self.contact.freshness().set_cluster(cluster_id);
        // Listed in time: the fallback is never served.
        self.fallback = None;
        if let Some(cached) = self.fallback_cluster.take() {
            if cached != cluster_id {
                warn!(
                    cache = cached,
                    etcd = cluster_id,
                    "etcd answers as another cluster than the one the cache file was written from; serving etcd's registry"
                );
            } else {
                info!("etcd answers again; its registry replaces the cache file's");
            }
        }
        let instances: Vec<(String, Arc<Instance>)> =
            listing.kvs.iter().filter_map(|kv| self.read(kv)).collect();
        self.metrics.lists.inc();
        self.contact.contact();
        info!(prefix = %self.prefix, revision, instances = instances.len(), "registry listed");
        self.sink.apply(Update::Reset {
            revision,
            instances,
        });
        at.applied = Some(revision);
        Ok(revision)
    }

    /// Applies watch messages until the stream ends.
    async fn follow(
        &mut self,
        mut stream: L::Watch,
        at: &mut Position,
        backoff: &mut Backoff,
        outage: &mut Outage,
        shutdown: &CancellationToken,
    ) -> StreamEnd {
        let Some(mut applied) = at.applied else {
            return StreamEnd::Relist;
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return StreamEnd::Shutdown,
                m = tokio::time::timeout(WATCH_SILENCE, stream.next()) => m,
            };
            let message = match message {
                Err(_) => {
                    // Whatever carries the watch may be stuck too: say so before leaving it.
                    stream.stale();
                    return StreamEnd::Broken(format!(
                        "no message for {}",
                        humantime::format_duration(WATCH_SILENCE)
                    ));
                }
                Ok(Err(e)) => return StreamEnd::Broken(e.to_string()),
                Ok(Ok(None)) => {
                    return StreamEnd::Broken("stream closed by the server".to_string())
                }
                Ok(Ok(Some(m))) => m,
            };
            // A refusal is an answer, but not one that keeps the watch current.
            if !matches!(message, WatchMessage::Canceled { .. }) {
                self.contact.contact();
            }
            let header = match &message {
                WatchMessage::Compacted { compact_revision } => {
                    info!(
                        applied,
                        compact_revision, "registry compacted past the watch, listing again"
                    );
                    return StreamEnd::Relist;
                }
                WatchMessage::Canceled { reason } => {
                    return StreamEnd::Broken(format!("watch canceled: {reason:?}"))
                }
                WatchMessage::Created(h)
                | WatchMessage::Progress(h)
                | WatchMessage::Events(h, _) => *h,
            };
            if let Some(why) = replaced(at.cluster_id, applied, header) {
                warn!(
                    applied,
                    revision = header.revision,
                    "the registry in etcd was replaced ({why}), listing again"
                );
                return StreamEnd::Relist;
            }
            let events = match message {
                WatchMessage::Created(_) => {
                    debug!(start = applied + 1, "registry watch open");
                    self.contact.set_connected(true);
                    backoff.reset();
                    outage.recovered("watching the registry");
                    continue;
                }
                // On etcd 3.4 a progress reply can overtake pending events, so its header
                // revision is never taken as applied.
                WatchMessage::Progress(_) => continue,
                WatchMessage::Events(_, events) => events,
                WatchMessage::Compacted { .. } | WatchMessage::Canceled { .. } => continue,
            };
            let (newest, changes) = self.changes(applied, events);
            if newest > applied {
                applied = newest;
                at.applied = Some(newest);
                let count = changes.len();
                self.sink.apply(Update::Changes {
                    revision: newest,
                    changes,
                });
                // After the apply: the new snapshots are what picks read from now on.
                debug!(prefix = %self.prefix, revision = newest, changes = count, "registry changes applied");
            }
        }
    }

    /// The changes of one watch response beyond `applied`, and the newest revision among them.
    fn changes(&self, applied: i64, events: Vec<Event>) -> (i64, Vec<Change>) {
        let mut changes = Vec::with_capacity(events.len());
        let mut newest = applied;
        for event in events {
            let revision = event.kv.mod_revision;
            if revision <= applied {
                // etcd 3.4 can deliver events twice around compaction and snapshots.
                self.metrics.repeated_events.inc();
                continue;
            }
            newest = newest.max(revision);
            let Some((service, id)) = self.locate(&event.kv.key) else {
                continue;
            };
            let put = if event.deleted {
                None
            } else {
                self.read(&event.kv)
            };
            changes.push(match put {
                Some((service, instance)) => Change::Put {
                    service,
                    instance,
                    revision,
                },
                // Deleted, or the key now holds nothing usable: its old instance must go.
                None => Change::Delete {
                    service: service.to_string(),
                    id: id.to_string(),
                    revision,
                },
            });
        }
        (newest, changes)
    }

    /// Reads one registry entry; unusable ones are logged, counted and skipped.
    fn read(&self, kv: &Kv) -> Option<(String, Arc<Instance>)> {
        let (service, id) = self.locate(&kv.key)?;
        match parse_value(&kv.value) {
            Ok(endpoint) => Some((
                service.to_string(),
                Arc::new(Instance {
                    id: id.to_string(),
                    endpoint,
                }),
            )),
            Err(e) => {
                self.metrics.invalid_values.inc();
                warn!(key = ?String::from_utf8_lossy(&kv.key), error = %e, "skipping unusable instance");
                None
            }
        }
    }
}

/// Why `header` says the registry was replaced since cairn listed it at cluster `cluster_id` and
/// applied up to `applied`, if it does.
fn replaced(cluster_id: u64, applied: i64, header: Header) -> Option<&'static str> {
    if header.cluster_id != 0 && cluster_id != 0 && header.cluster_id != cluster_id {
        Some("the cluster id changed")
    } else if header.revision > 0 && header.revision < applied {
        Some("its revision went backwards")
    } else {
        None
    }
}
