//! Discovery: list the registry prefix at one revision, then watch it from the next, forever.
//!
//! The task pushes [`Update`]s to a [`Sink`]: a `Reset` with the whole registry after every list,
//! then `Changes` per watch response. It never misses a change: a broken stream resumes from the
//! last applied revision + 1, repeated events are dropped, and a compaction that overtook cairn
//! triggers a fresh list. It never blocks readers: the sink swaps snapshots, and while etcd is
//! away the last ones keep serving.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, KeyValue, WatchOptions, WatchStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::etcd::{describe, list_prefix, Outage, MAX_DECODE_BYTES};
use crate::registry::{parse_value, split_key};
use crate::shutdown::{cancellable, sleep};
use crate::snapshot::Instance;
use crate::stats::DiscoveryStats;

/// One step of the registry's history, as discovery delivers it.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The whole registry at `revision`; everything before is replaced.
    Reset {
        /// The revision the list was pinned to.
        revision: i64,
        /// Every usable instance, with its service.
        instances: Vec<(String, Instance)>,
    },
    /// The changes of one watch response, in order; all happened at or below `revision`.
    Changes {
        /// The highest revision applied by these changes.
        revision: i64,
        /// Puts and deletes, in etcd's order.
        changes: Vec<Change>,
    },
}

/// One change to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An instance was added or its value changed.
    Put {
        /// The service it belongs to.
        service: String,
        /// The instance as it is now.
        instance: Instance,
        /// The etcd revision of the change.
        revision: i64,
    },
    /// An instance is gone, or its key now holds a value cairn cannot use.
    Delete {
        /// The service it belonged to.
        service: String,
        /// Its instance id.
        id: String,
        /// The etcd revision of the change.
        revision: i64,
    },
}

/// Where discovery delivers updates. `apply` must not block: it runs on the watch task.
pub trait Sink: Send + 'static {
    /// Applies one update.
    fn apply(&mut self, update: Update);
}

/// etcd sends a progress notification about every 10 minutes on an idle watch. A stream silent
/// for half again as long is assumed stuck (a partition the HTTP/2 pings did not catch), and is
/// reopened from the last applied revision.
const WATCH_SILENCE: Duration = Duration::from_secs(15 * 60);

/// Retry delays: start fast so a restarted member is picked up quickly, and cap at 1 s so cairn
/// reconnects within a second of etcd's return without flooding a struggling cluster.
const RETRY_BASE: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The list-then-watch task for one registry prefix.
pub struct Discovery<S> {
    /// The etcd client; its channel reconnects by itself.
    client: Client,
    /// The registry prefix, ending with `/`.
    prefix: String,
    /// Where updates go.
    sink: S,
    /// Counters for `/metrics`.
    stats: Arc<DiscoveryStats>,
}

/// Why a watch stream ended.
enum StreamEnd {
    /// The process is shutting down.
    Shutdown,
    /// The start revision was compacted: list again.
    Compacted(i64),
    /// The stream broke; reopen it from the last applied revision.
    Broken(String),
}

impl<S: Sink> Discovery<S> {
    /// A discovery task for `prefix` delivering to `sink`.
    pub fn new(client: Client, prefix: &str, sink: S, stats: Arc<DiscoveryStats>) -> Discovery<S> {
        Discovery {
            client,
            prefix: prefix.to_string(),
            sink,
            stats,
        }
    }

    /// Starts the task on the current runtime.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Lists and watches until `shutdown` fires, retrying every failure with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        let mut outage = Outage::default();
        // The revision up to which every update has been delivered; None means list first.
        let mut applied: Option<i64> = None;
        let mut watches = 0u64;
        loop {
            let revision = match applied {
                Some(rev) => rev,
                None => match cancellable(&shutdown, self.list()).await {
                    None => return,
                    Some(Ok(rev)) => {
                        applied = Some(rev);
                        rev
                    }
                    Some(Err(e)) => {
                        outage.failed("listing the registry", &describe(&e));
                        if !sleep(&shutdown, backoff.next_delay()).await {
                            return;
                        }
                        continue;
                    }
                },
            };

            let stream = match cancellable(&shutdown, self.watch_from(revision + 1)).await {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    outage.failed("watching the registry", &describe(&e));
                    if !sleep(&shutdown, backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
            };
            watches += 1;
            if watches > 1 {
                self.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
            }

            let mut last = revision;
            match self
                .follow(stream, &mut last, &mut backoff, &mut outage, &shutdown)
                .await
            {
                StreamEnd::Shutdown => return,
                StreamEnd::Compacted(compact) => {
                    info!(
                        applied = last,
                        compact_revision = compact,
                        "registry compacted past the watch, listing again"
                    );
                    applied = None;
                    continue;
                }
                StreamEnd::Broken(why) => {
                    outage.failed("watching the registry", &why);
                    applied = Some(last);
                }
            }
            if !sleep(&shutdown, backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Lists the whole prefix, page by page, pinned to the revision of the first page, and
    /// delivers it as one `Reset`. Returns that revision.
    async fn list(&mut self) -> Result<i64, etcd_client::Error> {
        let (revision, kvs) = list_prefix(&self.client, &self.prefix).await?;
        let instances: Vec<(String, Instance)> =
            kvs.iter().filter_map(|kv| self.read(kv)).collect();
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        info!(revision, instances = instances.len(), "registry listed");
        self.sink.apply(Update::Reset {
            revision,
            instances,
        });
        Ok(revision)
    }

    async fn watch_from(&mut self, start: i64) -> Result<WatchStream, etcd_client::Error> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE_BYTES)
            .watch(self.prefix.clone(), Some(options))
            .await
    }

    /// Applies watch responses until the stream ends; `applied` tracks the last applied revision.
    async fn follow(
        &mut self,
        mut stream: WatchStream,
        applied: &mut i64,
        backoff: &mut Backoff,
        outage: &mut Outage,
        shutdown: &CancellationToken,
    ) -> StreamEnd {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return StreamEnd::Shutdown,
                m = tokio::time::timeout(WATCH_SILENCE, stream.message()) => m,
            };
            let resp = match message {
                Err(_) => return StreamEnd::Broken(format!("no message for {WATCH_SILENCE:?}")),
                Ok(Err(e)) => return StreamEnd::Broken(describe(&e)),
                Ok(Ok(None)) => {
                    return StreamEnd::Broken("stream closed by the server".to_string())
                }
                Ok(Ok(Some(resp))) => resp,
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return StreamEnd::Compacted(resp.compact_revision());
                }
                return StreamEnd::Broken(format!("watch canceled: {}", resp.cancel_reason()));
            }
            if resp.created() {
                debug!(start = *applied + 1, "registry watch open");
                backoff.reset();
                outage.recovered("watching the registry");
            }
            if resp.events().is_empty() {
                // Creation or progress notification. On etcd 3.4 a progress reply can overtake
                // pending events, so its header revision is never taken as applied.
                continue;
            }
            let mut changes = Vec::with_capacity(resp.events().len());
            let mut newest = *applied;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.mod_revision() <= *applied {
                    // etcd 3.4 can deliver events twice around compaction and snapshots.
                    self.stats.repeated_events.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let revision = kv.mod_revision();
                newest = newest.max(revision);
                let Some((service, id)) = split_key(&self.prefix, kv.key()) else {
                    continue;
                };
                let put = match event.event_type() {
                    EventType::Put => self.read(kv),
                    EventType::Delete => None,
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
            if newest > *applied {
                *applied = newest;
                self.sink.apply(Update::Changes {
                    revision: newest,
                    changes,
                });
            }
        }
    }

    /// Reads one registry entry; unusable ones are logged, counted and skipped.
    fn read(&self, kv: &KeyValue) -> Option<(String, Instance)> {
        let (service, id) = split_key(&self.prefix, kv.key())?;
        match parse_value(kv.value()) {
            Ok(endpoint) => Some((
                service.to_string(),
                Instance {
                    id: id.to_string(),
                    endpoint,
                },
            )),
            Err(e) => {
                self.stats.invalid_values.fetch_add(1, Ordering::Relaxed);
                warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping unusable instance");
                None
            }
        }
    }
}
