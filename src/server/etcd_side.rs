//! What runs against etcd: one client, the discovery tasks that feed the store, and each
//! member's health.
//!
//! Discovery is one of two shapes (`[discovery] scope`):
//! - `all`: one list and watch of the whole prefix, plus one per service read from its own key
//!   (go-zero's layout), which the prefix's leaves alone;
//! - `routed`: one list and watch per routed service, of its own prefix (or key), and nothing
//!   else: a node holds what it routes, whatever the registry's size.
//!
//! A reload gives it a new config in two steps. [`EtcdSide::prepare`]: a change of `[etcd]` or
//! of the scope starts a whole new side, which must answer a read of the prefix and allow the
//! registrations' writes (or the reload is refused); a change of only the services a `routed`
//! node watches starts the new watches and waits for their first list. [`EtcdSide::commit`]
//! then swaps in the new side and stops the old one, or stops the watches no longer routed;
//! the others are not touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::discovery::{Discovery, DiscoveryMetrics, DiscoveryScope, Fallback, SharedStream};
use crate::error::Error;
use crate::etcd::{Etcd, EtcdConfig, EtcdMetrics, Members};
use crate::registry::service_prefix;
use crate::snapshot::{Scope, Store, StoreWriter, Watched};

/// What an [`EtcdSide`] was started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wiring {
    /// How etcd is reached.
    etcd: EtcdConfig,
    /// Which part of the registry is watched.
    scope: DiscoveryScope,
    /// Services watched on their own, each with the prefix its instances live under: with
    /// scope `all`, those read from their own key; with `routed`, every routed service.
    own: Vec<(String, String)>,
}

impl Wiring {
    /// The part of `config` discovery depends on.
    pub(crate) fn of(config: &Config) -> Wiring {
        let scope = config.scope();
        let own = config
            .services
            .iter()
            .filter_map(|s| match (&s.key, scope) {
                (Some(key), _) => Some((s.name.to_string(), key.clone())),
                (None, DiscoveryScope::Routed) => Some((
                    s.name.to_string(),
                    service_prefix(&config.etcd.prefix, &s.name),
                )),
                (None, DiscoveryScope::All) => None,
            })
            .collect();
        Wiring {
            etcd: config.etcd.clone(),
            scope,
            own,
        }
    }

    /// Whether a side started from `self` can become one of `next` by starting and stopping
    /// per-service watches: same etcd, both `routed`.
    pub(crate) fn rescopes_to(&self, next: &Wiring) -> bool {
        self.etcd == next.etcd
            && self.scope == DiscoveryScope::Routed
            && next.scope == DiscoveryScope::Routed
    }
}

/// One service's own list-and-watch task.
struct OwnWatch {
    /// The prefix it watches.
    prefix: String,
    /// Stops it.
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The etcd client and the tasks reading through it.
pub(crate) struct EtcdSide {
    /// What it was started from.
    pub(crate) wiring: Wiring,
    /// The client, shared with the registrar.
    pub(crate) etcd: Etcd,
    /// Stops every task.
    stop: CancellationToken,
    /// Member health, and with scope `all` the prefix's discovery.
    tasks: Vec<JoinHandle<()>>,
    /// Per-service discoveries, by service.
    own: HashMap<String, OwnWatch>,
    /// With scope `routed`, the per-service writers reporting to the store together.
    group: Option<Arc<Watched>>,
    /// The one watch stream every discovery of this side watches on.
    stream: SharedStream,
    /// What new tasks write to and report to.
    store: Arc<Store>,
    metrics: SideMetrics,
}

/// The counters every generation of the etcd side reports to.
#[derive(Clone)]
pub(crate) struct SideMetrics {
    /// Per etcd call.
    pub(crate) etcd: EtcdMetrics,
    /// Per discovery.
    pub(crate) discovery: DiscoveryMetrics,
}

/// The per-service watches a reload starts and stops on a `routed` side, prepared: the new ones
/// already listed (or given up waiting for). Dropped, the new ones stop.
pub(crate) struct Rescope {
    wiring: Wiring,
    /// Watches of services not watched before, already started.
    started: Vec<(String, OwnWatch)>,
    /// Services watched before under another prefix, with the new one.
    moved: Vec<(String, String)>,
    /// Services whose current watch stops.
    gone: Vec<String>,
    group: Arc<Watched>,
}

impl Rescope {
    /// Waits up to `wait` for the first list of every service it starts watching.
    async fn wait(&self, wait: Duration) {
        let added: Vec<String> = self.started.iter().map(|(s, _)| s.clone()).collect();
        if added.is_empty()
            || tokio::time::timeout(wait, self.group.until_listed(&added))
                .await
                .is_ok()
        {
            return;
        }
        let unlisted: Vec<&String> = added.iter().filter(|s| !self.group.is_listed(s)).collect();
        warn!(
            services = ?unlisted,
            waited = %humantime::format_duration(wait),
            "etcd has not listed these services yet; they route once it does"
        );
    }
}

impl Drop for Rescope {
    fn drop(&mut self) {
        // Abandoned (a SIGTERM during the reload): the services were never routed. A task
        // may still write once before it sees the cancel; the process is ending then anyway.
        for (service, watch) in self.started.drain(..) {
            watch.stop.cancel();
            self.group.forget(&service);
        }
    }
}

/// What a reload changes of the etcd side, prepared. Dropped, it changes nothing: a new side
/// or new watches stop.
pub(crate) enum EtcdChange {
    /// Nothing: same etcd, same watches.
    Unchanged,
    /// A `routed` side's watches change; the new ones have listed.
    Rescope(Box<Rescope>),
    /// A new side (another `[etcd]`, or another scope), answering.
    Replace(Box<EtcdSide>),
}

/// What a commit changed, for the reload's log line.
#[derive(Debug, Default)]
pub(crate) struct Rewired {
    /// The side was replaced: the registrar must move to its client.
    pub(crate) moved: bool,
    /// Per-service watches started.
    pub(crate) watches_started: usize,
    /// Per-service watches stopped.
    pub(crate) watches_stopped: usize,
}

impl EtcdSide {
    /// Everything of `next` that can fail, started beside the running side: see the module's
    /// comment. `registering` are the keys the registrar will write.
    ///
    /// # Errors
    /// When a new side's client cannot be built or etcd does not answer it (unreachable,
    /// wrong credentials, no permission to read the prefix or to write those keys).
    pub(crate) async fn prepare(
        &self,
        next: &Config,
        registering: &[String],
    ) -> Result<EtcdChange, Error> {
        let wiring = Wiring::of(next);
        if wiring == self.wiring {
            return Ok(EtcdChange::Unchanged);
        }
        if self.wiring.rescopes_to(&wiring) {
            let wait = next.etcd.dial_timeout;
            return Ok(EtcdChange::Rescope(Box::new(
                self.rescope(wiring, wait).await,
            )));
        }
        let side = EtcdSide::start_answering(wiring, registering, &self.store, &self.metrics);
        Ok(EtcdChange::Replace(Box::new(side.await?)))
    }

    /// Applies a prepared change: the new side in, the old one stopped (and the services only
    /// it watched emptied), or the watches changed.
    pub(crate) async fn commit(&mut self, change: EtcdChange) -> Rewired {
        match change {
            EtcdChange::Unchanged => Rewired::default(),
            EtcdChange::Rescope(rescope) => {
                let (watches_started, watches_stopped) = self.rescoped(*rescope).await;
                Rewired {
                    moved: false,
                    watches_started,
                    watches_stopped,
                }
            }
            EtcdChange::Replace(side) => {
                std::mem::replace(self, *side).stop().await;
                self.forget_unwatched();
                Rewired {
                    moved: true,
                    ..Rewired::default()
                }
            }
        }
    }

    /// Connects to etcd and starts discovery into `store`; `fallback` is served if etcd does
    /// not answer a first list in time.
    ///
    /// # Errors
    /// When the client cannot be built from the configured endpoints and TLS files.
    pub(crate) async fn start(
        wiring: Wiring,
        store: &Arc<Store>,
        metrics: &SideMetrics,
        fallback: Option<Fallback>,
    ) -> Result<EtcdSide, Error> {
        let etcd = Etcd::connect(&wiring.etcd, metrics.etcd.clone()).await?;
        Ok(EtcdSide::spawn(wiring, etcd, store, metrics, fallback))
    }

    /// As [`EtcdSide::start`] without a fallback, once etcd has answered a read of the prefix
    /// and would take writes of `registering` (the keys a registrar will write through it): a
    /// reload takes a new `[etcd]` only when it works.
    ///
    /// # Errors
    /// When the client cannot be built, or etcd does not answer (unreachable, wrong
    /// credentials, no permission to read the prefix or to write those keys).
    async fn start_answering(
        wiring: Wiring,
        registering: &[String],
        store: &Arc<Store>,
        metrics: &SideMetrics,
    ) -> Result<EtcdSide, Error> {
        let mut etcd = Etcd::connect(&wiring.etcd, metrics.etcd.clone()).await?;
        crate::etcd::answers(&mut etcd, &wiring.etcd.prefix, registering).await?;
        Ok(EtcdSide::spawn(wiring, etcd, store, metrics, None))
    }

    /// Starts discovery through `etcd`.
    fn spawn(
        wiring: Wiring,
        etcd: Etcd,
        store: &Arc<Store>,
        metrics: &SideMetrics,
        fallback: Option<Fallback>,
    ) -> EtcdSide {
        let stop = CancellationToken::new();
        let stream = SharedStream::spawn(etcd.clone());
        let mut tasks = vec![tokio::spawn(
            Members::new(wiring.etcd.clone(), metrics.etcd.clone()).run(stop.clone()),
        )];
        let group = match wiring.scope {
            DiscoveryScope::All => {
                // Services read from their own key get a watch of their own; the prefix's
                // watch leaves them alone.
                let others = wiring.own.iter().map(|(s, _)| s.clone()).collect();
                tasks.push(
                    Discovery::new(
                        etcd.clone(),
                        &stream,
                        &wiring.etcd.prefix,
                        StoreWriter::scoped(Arc::clone(store), Scope::AllBut(others)),
                        metrics.discovery.clone(),
                    )
                    .with_fallback(fallback.clone())
                    .spawn(stop.clone()),
                );
                None
            }
            DiscoveryScope::Routed => {
                info!(
                    services = wiring.own.len(),
                    "discovery scoped to the routed services: each is listed and watched on its own"
                );
                let services: Vec<String> = wiring.own.iter().map(|(s, _)| s.clone()).collect();
                Some(Watched::new(Arc::clone(store), &services))
            }
        };
        let mut side = EtcdSide {
            wiring: wiring.clone(),
            etcd,
            stop,
            tasks,
            own: HashMap::new(),
            group,
            stream,
            store: Arc::clone(store),
            metrics: metrics.clone(),
        };
        for (service, prefix) in &wiring.own {
            let watch = side.watch(service, prefix, fallback.clone());
            side.own.insert(service.clone(), watch);
        }
        side
    }

    /// Starts the list-and-watch task of `service`, whose instances live under `prefix`.
    fn watch(&self, service: &str, prefix: &str, fallback: Option<Fallback>) -> OwnWatch {
        let writer = match &self.group {
            Some(group) => StoreWriter::watched(group, service),
            None => {
                info!(service = %service, key = prefix, "reading this service's instances from its own key");
                StoreWriter::scoped(Arc::clone(&self.store), Scope::Only(service.to_string()))
            }
        };
        let stop = self.stop.child_token();
        let task = Discovery::new(
            self.etcd.clone(),
            &self.stream,
            prefix,
            writer,
            self.metrics.discovery.clone(),
        )
        .for_service(service)
        .with_fallback(fallback)
        .spawn(stop.clone());
        OwnWatch {
            prefix: prefix.to_string(),
            stop,
            task,
        }
    }

    /// Starts the watches `next` adds to this `routed` side and waits up to `wait` for their
    /// first list, so a service a reload adds routes as soon as its listener opens. Those
    /// `next` drops are only stopped by [`EtcdSide::rescoped`].
    async fn rescope(&self, next: Wiring, wait: Duration) -> Rescope {
        let group = Arc::clone(
            self.group
                .as_ref()
                .expect("only a routed side is rescoped, and it has a group"),
        );
        let wanted: HashMap<&str, &str> = next
            .own
            .iter()
            .map(|(s, p)| (s.as_str(), p.as_str()))
            .collect();
        let gone = self
            .own
            .iter()
            .filter(|(s, w)| wanted.get(s.as_str()) != Some(&w.prefix.as_str()))
            .map(|(s, _)| s.clone())
            .collect();
        // A service whose key moved keeps its old watch until the commit, which stops it and
        // only then starts the new one: two watches must not write one service.
        let (new, moved): (Vec<_>, Vec<_>) = next
            .own
            .iter()
            .filter(|(s, p)| self.own.get(s).is_none_or(|w| w.prefix != *p))
            .cloned()
            .partition(|(s, _)| !self.own.contains_key(s));
        let started: Vec<(String, OwnWatch)> = new
            .iter()
            .map(|(s, p)| (s.clone(), self.watch(s, p, None)))
            .collect();
        let rescope = Rescope {
            wiring: next,
            started,
            moved,
            gone,
            group,
        };
        // Built before the wait: a reload abandoned while it waits drops it, which stops the
        // watches it started.
        rescope.wait(wait).await;
        rescope
    }

    /// Takes a prepared [`Rescope`]: adopts its new watches, stops those no longer wanted and
    /// empties their services, and restarts those whose key moved. Returns how many watches
    /// started and stopped.
    async fn rescoped(&mut self, mut rescope: Rescope) -> (usize, usize) {
        let started = std::mem::take(&mut rescope.started);
        let gone = std::mem::take(&mut rescope.gone);
        let (added, removed) = (started.len() + rescope.moved.len(), gone.len());
        for service in gone {
            if let Some(old) = self.own.remove(&service) {
                old.stop.cancel();
                let _ = old.task.await;
                // Only now, with its task ended, can nothing write the service again. One
                // whose key moved keeps its instances until its new watch's list replaces them.
                if !rescope.moved.iter().any(|(s, _)| *s == service) {
                    rescope.group.forget(&service);
                }
            }
        }
        self.own.extend(started);
        for (service, prefix) in std::mem::take(&mut rescope.moved) {
            let watch = self.watch(&service, &prefix, None);
            self.own.insert(service, watch);
        }
        self.wiring = rescope.wiring.clone();
        (added, removed)
    }

    /// Empties every service this side does not watch, if it watches only the routed ones: after
    /// it replaced a side that watched more (another scope, or services a reload dropped along
    /// with a change of `[etcd]`), nothing keeps those current any more.
    fn forget_unwatched(&self) {
        let Some(group) = &self.group else {
            return;
        };
        for (service, snapshot) in self.store.snapshots() {
            if !snapshot.is_empty() && !self.own.contains_key(&service) {
                group.forget(&service);
            }
        }
    }

    /// Stops every task and waits for them.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        for (_, watch) in self.own {
            let _ = watch.task.await;
        }
    }
}
