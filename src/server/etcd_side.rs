//! What runs against etcd: one client, the discovery tasks that feed the store (the prefix's,
//! and one per service read from its own key), and each member's health. A reload that changes
//! `[etcd]` or the services' keys replaces it whole.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::discovery::{Discovery, DiscoveryMetrics, Fallback};
use crate::error::Error;
use crate::etcd::{Etcd, EtcdConfig, EtcdMetrics, Members};
use crate::snapshot::{Scope, Store, StoreWriter};

/// What an [`EtcdSide`] was started from: a reload replaces it when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wiring {
    /// How etcd is reached.
    etcd: EtcdConfig,
    /// Services read from their own key (go-zero's layout), with that key.
    keyed: Vec<(String, String)>,
}

impl Wiring {
    /// The part of `config` discovery depends on.
    pub(crate) fn of(config: &Config) -> Wiring {
        Wiring {
            etcd: config.etcd.clone(),
            keyed: config
                .services
                .iter()
                .filter_map(|s| Some((s.name.to_string(), s.key.clone()?)))
                .collect(),
        }
    }
}

/// The etcd client and the tasks reading through it.
pub(crate) struct EtcdSide {
    /// What it was started from.
    pub(crate) wiring: Wiring,
    /// The client, shared with the registrar.
    pub(crate) etcd: Etcd,
    /// Stops the tasks.
    stop: CancellationToken,
    /// Discovery and member-health tasks.
    tasks: Vec<JoinHandle<()>>,
}

/// The counters every generation of the etcd side reports to.
#[derive(Clone)]
pub(crate) struct SideMetrics {
    /// Per etcd call.
    pub(crate) etcd: EtcdMetrics,
    /// Per discovery.
    pub(crate) discovery: DiscoveryMetrics,
}

impl EtcdSide {
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
    pub(crate) async fn start_answering(
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
        let mut tasks = vec![tokio::spawn(
            Members::new(wiring.etcd.clone(), metrics.etcd.clone()).run(stop.clone()),
        )];
        // Services read from their own key get a watch of their own; the prefix's watch
        // leaves them alone.
        tasks.push(
            Discovery::new(
                etcd.clone(),
                &wiring.etcd.prefix,
                StoreWriter::scoped(
                    Arc::clone(store),
                    Scope::AllBut(wiring.keyed.iter().map(|(s, _)| s.clone()).collect()),
                ),
                metrics.discovery.clone(),
            )
            .with_fallback(fallback.clone())
            .spawn(stop.clone()),
        );
        for (service, key) in &wiring.keyed {
            info!(service = %service, key, "reading this service's instances from its own key");
            let own = DiscoveryMetrics {
                freshness: Arc::default(),
                ..metrics.discovery.clone()
            };
            let writer = StoreWriter::scoped(Arc::clone(store), Scope::Only(service.clone()));
            tasks.push(
                Discovery::new(etcd.clone(), key, writer, own)
                    .for_service(service)
                    .with_fallback(fallback.clone())
                    .spawn(stop.clone()),
            );
        }
        EtcdSide {
            wiring,
            etcd,
            stop,
            tasks,
        }
    }

    /// Stops every task and waits for them.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
