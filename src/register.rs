//! Registration: a process's own instances in etcd, under one kept-alive lease.
//!
//! A [`Registrar`] writes `<prefix><service>/<id>` for each [`Registration`], bound to one
//! lease, and keeps that lease alive every TTL/3. It repairs what goes wrong, forever, until
//! stopped:
//! - a failed keepalive, a lost lease (etcd restarted, the lease expired during a partition,
//!   someone revoked it): grant a new lease and put the keys again, with backoff;
//! - a registered key deleted or overwritten by someone else: put it back;
//! - a failing health check: delete that instance's key after `fall` failures, put it back after
//!   `rise` passes. An instance with a check is registered only once it has passed.
//!
//! Stopping revokes the lease, so every key vanishes at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cairn::register::{Check, Probe, Registrar, Registration};
//! use cairn::registry::{Endpoint, Format};
//!
//! let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
//! let orders = Registration::new("orders", "orders-1", Endpoint::new("10.0.0.5:8080".parse()?, Format::Plain))
//!     .with_check(Check::new(Probe::Http("http://127.0.0.1:8080/health".parse()?)));
//! let registrar = Registrar::new(client, "/services/", Duration::from_secs(10), vec![orders]).spawn();
//! // ... serve until asked to stop ...
//! registrar.stop().await; // revokes the lease: the key is gone at once
//! # Ok(())
//! # }
//! ```

mod check;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use check::{Check, Probe};

use crate::backoff::Backoff;
use crate::etcd::{describe, Outage};
use crate::registry::{instance_key, Addr, Endpoint};
use crate::shutdown::sleep;

/// One instance to register.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// The service it belongs to.
    pub service: String,
    /// Its instance id, unique within the service.
    pub id: String,
    /// What the registry value says: address, format, and weight, zone or metadata.
    pub endpoint: Endpoint,
    /// When set, the instance is registered only while this check passes.
    pub check: Option<Check>,
}

impl Registration {
    /// An instance with no health check.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        endpoint: Endpoint,
    ) -> Registration {
        Registration {
            service: service.into(),
            id: id.into(),
            endpoint,
            check: None,
        }
    }

    /// Registers the instance only while `check` passes.
    pub fn with_check(mut self, check: Check) -> Registration {
        self.check = Some(check);
        self
    }

    /// `service/id`, for logs.
    pub fn label(&self) -> String {
        format!("{}/{}", self.service, self.id)
    }
}

/// The default instance id: `<hostname>-<port>`.
pub fn default_id(addr: &Addr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}-{}", addr.port())
}

/// The shortest lease etcd grants; shorter requests get this much anyway.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Keys written per transaction. Each key costs two comparisons (value and lease), and etcd
/// refuses more than 128 operations per list by default, so 64 keys stay within every list.
const KEYS_PER_TXN: usize = 64;

/// Retry delays: reconnect within a second of etcd's return, so a registration lost during an
/// outage is back quickly.
const RETRY_BASE: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A key repaired less than this long ago is not repaired again yet: two processes fighting
/// over one key (a misconfiguration) must not hammer etcd.
const REPAIR_SPACING: Duration = Duration::from_secs(1);

/// How long revoking the lease may take at stop before giving up (the keys then expire by TTL).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Live state of a registrar, for `/metrics` and tests.
#[derive(Debug)]
pub struct Status {
    /// `service/id` of each registration, in order.
    pub labels: Vec<String>,
    /// Whether each registration's key is currently written under the live lease.
    pub registered: Vec<AtomicBool>,
    /// Leases granted (1 in a quiet life; one more per lost lease).
    pub lease_grants: AtomicU64,
    /// Keys put back after someone else deleted or overwrote them.
    pub repairs: AtomicU64,
}

/// Registers instances under one lease; see the module documentation.
pub struct Registrar {
    client: Client,
    prefix: String,
    ttl: Duration,
    instances: Vec<Registration>,
}

/// The handle of a running registrar.
pub struct Handle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    status: Arc<Status>,
}

impl Handle {
    /// Revokes the lease (every key vanishes at once) and waits for the registrar to end.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// The registrar's live state.
    pub fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status)
    }
}

/// One instance as the registrar tracks it.
struct Owned {
    label: String,
    key: String,
    value: String,
    /// Whether it should be registered now: no check, or its check passes.
    healthy: bool,
}

/// A live lease with its keepalive stream and the watch over the owned keys.
struct Session {
    lease: i64,
    keeper: LeaseKeeper,
    keepalives: LeaseKeepAliveStream,
    watch: Option<WatchStream>,
}

/// Why a session ended.
enum End {
    Stop,
    /// The lease is gone: grant a new one.
    LeaseLost(String),
    /// A stream or call failed: reconnect, keeping the lease if it still lives.
    Broken(String),
}

impl Registrar {
    /// A registrar for `instances` under `prefix`, with a lease of `ttl` (rounded up to whole
    /// seconds, at least [`MIN_TTL`]).
    pub fn new(
        client: Client,
        prefix: &str,
        ttl: Duration,
        instances: Vec<Registration>,
    ) -> Registrar {
        Registrar {
            client,
            prefix: prefix.to_string(),
            ttl: ttl.max(MIN_TTL),
            instances,
        }
    }

    /// Starts registering in the background.
    pub fn spawn(self) -> Handle {
        let stop = CancellationToken::new();
        let status = Arc::new(Status {
            labels: self.instances.iter().map(Registration::label).collect(),
            registered: self
                .instances
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            lease_grants: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
        });
        let task = tokio::spawn(self.run(stop.clone(), Arc::clone(&status)));
        Handle { stop, task, status }
    }

    fn ttl_secs(&self) -> i64 {
        self.ttl.as_secs() as i64 + i64::from(self.ttl.subsec_nanos() > 0)
    }

    async fn run(self, stop: CancellationToken, status: Arc<Status>) {
        let mut owned: Vec<Owned> = self
            .instances
            .iter()
            .map(|r| Owned {
                label: r.label(),
                key: instance_key(&self.prefix, &r.service, &r.id),
                value: r.endpoint.encode(),
                healthy: r.check.is_none(),
            })
            .collect();
        let checks_stop = stop.child_token();
        let (changes_tx, mut changes) = mpsc::channel(owned.len().max(1));
        for (i, r) in self.instances.iter().enumerate() {
            if let Some(check) = &r.check {
                check
                    .clone()
                    .spawn(i, r.label(), changes_tx.clone(), checks_stop.clone());
            }
        }
        drop(changes_tx);

        let mut lease: Option<i64> = None;
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        let mut outage = Outage::default();
        let mut registered_once = false;
        let mut attempt = 0u64;
        loop {
            let established = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.establish(&mut lease, &owned, &status) => r,
            };
            let mut session = match established {
                Ok(s) => s,
                Err(e) => {
                    attempt += 1;
                    let delay = backoff.next_delay();
                    if registered_once {
                        outage.failed("registering", &describe(&e));
                    } else {
                        warn!(attempt, retry_in = ?delay, error = %describe(&e), "registering failed, etcd unreachable? retrying");
                    }
                    // Health changes keep arriving while etcd is away; the next session uses them.
                    let deadline = tokio::time::Instant::now() + delay;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep_until(deadline) => break,
                            Some((i, healthy)) = changes.recv() => owned[i].healthy = healthy,
                        }
                    }
                    continue;
                }
            };
            if registered_once {
                outage.recovered("registering");
            }
            registered_once = true;
            attempt = 0;
            backoff.reset();
            match self
                .serve(&mut session, &mut owned, &mut changes, &status, &stop)
                .await
            {
                End::Stop => break,
                End::LeaseLost(why) => {
                    warn!(lease = session.lease, reason = %why, "lease lost, granting a new one and registering again");
                    lease = None;
                    for flag in &status.registered {
                        flag.store(false, Ordering::Relaxed);
                    }
                }
                End::Broken(why) => outage.failed("keeping the registration alive", &why),
            }
            if !sleep(&stop, backoff.next_delay()).await {
                break;
            }
        }

        checks_stop.cancel();
        for flag in &status.registered {
            flag.store(false, Ordering::Relaxed);
        }
        if let Some(id) = lease {
            let mut leases = self.client.lease_client();
            match tokio::time::timeout(REVOKE_TIMEOUT, leases.revoke(id)).await {
                Ok(Ok(_)) => info!(lease = id, "lease revoked, instances deregistered"),
                Ok(Err(e)) => {
                    warn!(lease = id, error = %describe(&e), "could not revoke the lease; its keys expire within the ttl")
                }
                Err(_) => warn!(
                    lease = id,
                    "revoking the lease timed out; its keys expire within the ttl"
                ),
            }
        }
    }

    /// Gets a live lease (the old one if etcd still has it), writes the healthy instances' keys,
    /// removes the unhealthy ones', and watches the owned keys.
    async fn establish(
        &self,
        lease: &mut Option<i64>,
        owned: &[Owned],
        status: &Status,
    ) -> Result<Session, etcd_client::Error> {
        let mut leases = self.client.lease_client();
        let mut kept = None;
        if let Some(id) = *lease {
            match leases.keep_alive(id).await {
                Ok(k) => kept = Some((id, k)),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => *lease = None,
                Err(e) => return Err(e),
            }
        }
        let (id, (keeper, keepalives)) = match kept {
            Some(k) => k,
            None => {
                let id = leases.grant(self.ttl_secs(), None).await?.id();
                status.lease_grants.fetch_add(1, Ordering::Relaxed);
                *lease = Some(id);
                (id, leases.keep_alive(id).await?)
            }
        };

        let mut kv = self.client.kv_client();
        let mut revision = 0;
        let healthy: Vec<&Owned> = owned.iter().filter(|o| o.healthy).collect();
        for chunk in healthy.chunks(KEYS_PER_TXN) {
            // Written only if anything differs, so a reconnect that finds everything in place
            // does not wake every watcher of the registry.
            let same: Vec<Compare> = chunk
                .iter()
                .flat_map(|o| {
                    [
                        Compare::value(o.key.as_str(), CompareOp::Equal, o.value.as_str()),
                        Compare::lease(o.key.as_str(), CompareOp::Equal, id),
                    ]
                })
                .collect();
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|o| {
                    TxnOp::put(
                        o.key.as_str(),
                        o.value.as_str(),
                        Some(PutOptions::new().with_lease(id)),
                    )
                })
                .collect();
            let resp = kv.txn(Txn::new().when(same).or_else(puts)).await?;
            revision = revision.max(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        for o in owned.iter().filter(|o| !o.healthy) {
            let txn = Txn::new()
                .when([Compare::lease(o.key.as_str(), CompareOp::Equal, id)])
                .and_then([TxnOp::delete(o.key.as_str(), None)]);
            kv.txn(txn).await?;
        }
        for (flag, o) in status.registered.iter().zip(owned) {
            flag.store(o.healthy, Ordering::Relaxed);
        }
        if !healthy.is_empty() {
            let keys: Vec<&str> = healthy.iter().map(|o| o.key.as_str()).collect();
            info!(lease = id, ttl = self.ttl_secs(), instances = ?keys, "registered");
        }

        let watch = match (
            owned.iter().map(|o| &o.key).min(),
            owned.iter().map(|o| &o.key).max(),
        ) {
            (Some(first), Some(last)) => {
                let mut end = last.clone().into_bytes();
                end.push(0);
                let mut options = WatchOptions::new().with_range(end);
                if revision > 0 {
                    options = options.with_start_revision(revision + 1);
                }
                Some(
                    self.client
                        .watch_client()
                        .watch(first.as_str(), Some(options))
                        .await?,
                )
            }
            _ => None,
        };
        Ok(Session {
            lease: id,
            keeper,
            keepalives,
            watch,
        })
    }

    /// Keeps the lease alive, follows health changes and repairs owned keys until something
    /// breaks or `stop` fires.
    async fn serve(
        &self,
        session: &mut Session,
        owned: &mut [Owned],
        changes: &mut mpsc::Receiver<(usize, bool)>,
        status: &Status,
        stop: &CancellationToken,
    ) -> End {
        let id = session.lease;
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + self.ttl / 3, self.ttl / 3);
        let mut answered = Instant::now();
        let mut dirty: Vec<usize> = Vec::new();
        let mut last_repair: Option<Instant> = None;
        let mut repair_at: Option<tokio::time::Instant> = None;
        let mut kv = self.client.kv_client();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return End::Stop,
                _ = ticks.tick() => {
                    if answered.elapsed() > self.ttl {
                        return End::Broken(format!("no keepalive answer for {}", humantime::format_duration(self.ttl)));
                    }
                    if let Err(e) = session.keeper.keep_alive().await {
                        return End::Broken(describe(&e));
                    }
                }
                answer = session.keepalives.message() => match answer {
                    Ok(Some(r)) if r.ttl() > 0 => answered = Instant::now(),
                    Ok(Some(_)) => return End::LeaseLost("etcd says the lease expired or was revoked".to_string()),
                    Ok(None) => return End::Broken("keepalive stream closed".to_string()),
                    Err(e) => return End::Broken(describe(&e)),
                },
                Some((i, healthy)) = changes.recv() => {
                    owned[i].healthy = healthy;
                    let o = &owned[i];
                    let done = if healthy {
                        kv.put(o.key.as_str(), o.value.as_str(), Some(PutOptions::new().with_lease(id))).await.map(drop)
                    } else {
                        let txn = Txn::new()
                            .when([Compare::lease(o.key.as_str(), CompareOp::Equal, id)])
                            .and_then([TxnOp::delete(o.key.as_str(), None)]);
                        kv.txn(txn).await.map(drop)
                    };
                    match done {
                        Ok(()) => {
                            status.registered[i].store(healthy, Ordering::Relaxed);
                            info!(instance = %o.label, key = %o.key, registered = healthy, "registration follows its health check");
                        }
                        Err(e) => return lost_or_broken(e),
                    }
                }
                event = next_watch(&mut session.watch) => match event {
                    Ok(Some(resp)) if resp.canceled() => {
                        return End::Broken(format!("key watch canceled: {}", resp.cancel_reason()));
                    }
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let Some(i) = owned.iter().position(|o| o.key.as_bytes() == kv.key()) else { continue };
                            let intact = ev.event_type() == EventType::Put && kv.value() == owned[i].value.as_bytes() && kv.lease() == id;
                            if owned[i].healthy && !intact && !dirty.contains(&i) {
                                dirty.push(i);
                            }
                        }
                        if !dirty.is_empty() && repair_at.is_none() {
                            let due = last_repair.map_or(Instant::now(), |t| t + REPAIR_SPACING);
                            repair_at = Some(tokio::time::Instant::from_std(due));
                        }
                    }
                    Ok(None) => return End::Broken("key watch closed".to_string()),
                    Err(e) => return End::Broken(describe(&e)),
                },
                _ = sleep_until_some(repair_at) => {
                    repair_at = None;
                    last_repair = Some(Instant::now());
                    for i in dirty.drain(..) {
                        let o = &owned[i];
                        if !o.healthy {
                            continue;
                        }
                        warn!(instance = %o.label, key = %o.key, "registered key was deleted or overwritten, putting it back");
                        if let Err(e) = kv.put(o.key.as_str(), o.value.as_str(), Some(PutOptions::new().with_lease(id))).await {
                            return lost_or_broken(e);
                        }
                        status.repairs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A put with a lease etcd no longer has means the lease is lost; anything else is a broken
/// connection.
fn lost_or_broken(e: etcd_client::Error) -> End {
    let why = describe(&e);
    if why.contains("lease not found") {
        End::LeaseLost(why)
    } else {
        End::Broken(why)
    }
}

async fn next_watch(
    watch: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
