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
//! A reload hands it new registrations ([`Handle::update`]): unchanged keys stay, others are
//! written or deleted under the same lease. Stopping revokes the lease, so every key vanishes
//! at once. etcd is reached through
//! [`LeaseKeys`], so the state machine is unit-tested on a paused clock against a fake.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cairn::health::{Check, Probe};
//! use cairn::register::{Registrar, Registration};
//! use cairn::registry::{Endpoint, Format};
//!
//! use cairn::etcd::{Etcd, EtcdConfig, EtcdMetrics};
//! let etcd = Etcd::connect(&EtcdConfig::default(), EtcdMetrics::default()).await?;
//! let orders = Registration::new("orders", "orders-1", Endpoint::new("10.0.0.5:8080".parse()?, Format::Plain))
//!     .with_check(Check::new(Probe::Http("http://127.0.0.1:8080/health".parse()?)));
//! let registrar = Registrar::new(etcd, "/services/", Duration::from_secs(10), vec![orders]).spawn();
//! // ... serve until asked to stop ...
//! registrar.stop().await; // revokes the lease: the key is gone at once
//! # Ok(())
//! # }
//! ```

mod config;
mod etcd;
mod handle;
mod lease;
mod owned;
mod status;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{default_id, Registration, Ttl, MAX_TTL, MIN_TTL};
pub(crate) use config::{validate, RawRegister};
pub use etcd::EtcdLeases;
pub use lease::{KeepAlive, KeyEvent, KeyWatch, LeaseKeys};
pub use status::Status;

pub use handle::Handle;
use owned::{Desired, Leftovers, Owned};

use crate::backoff::Backoff;
use crate::etcd::{EtcdError, Kind, Outage};
use crate::shutdown::{cancellable, sleep};

/// A key repaired less than this long ago is not repaired again yet: two processes fighting
/// over one key (a misconfiguration) must not hammer etcd.
const REPAIR_SPACING: Duration = Duration::from_secs(1);

/// How long revoking the lease may take at stop before giving up (the keys then expire by TTL).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Registers instances under one lease; see the module documentation.
#[derive(Debug)]
pub struct Registrar<K = EtcdLeases> {
    /// Where leases and keys are written.
    keys: K,
    /// The registry prefix.
    prefix: String,
    /// The lease TTL, at least [`MIN_TTL`].
    ttl: Duration,
    /// What to register.
    instances: Vec<Registration>,
}

/// A live lease with its keepalive stream and the watch over the owned keys.
struct Session<K: LeaseKeys> {
    lease: i64,
    keepalive: K::KeepAlive,
    watch: Option<K::Watch>,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Stop,
    /// A reload changed the registrations or the TTL.
    Reconfigure(Desired),
    /// The lease is gone: grant a new one.
    LeaseLost(String),
    /// A stream or call failed: reconnect, keeping the lease if it still lives.
    Broken(String),
}

impl From<EtcdError> for End {
    /// A call that names a lease etcd no longer has means the lease is lost; anything else is a
    /// broken connection.
    fn from(e: EtcdError) -> End {
        if e.is_lease_gone() {
            End::LeaseLost(e.to_string())
        } else {
            End::Broken(e.to_string())
        }
    }
}

impl Registrar<EtcdLeases> {
    /// A registrar for `instances` under `prefix` in etcd, with a lease of `ttl` (rounded up to
    /// whole seconds, within [`MIN_TTL`] and [`MAX_TTL`]).
    pub fn new(
        etcd: crate::etcd::Etcd,
        prefix: &str,
        ttl: Duration,
        instances: Vec<Registration>,
    ) -> Self {
        Registrar::with_keys(EtcdLeases::new(etcd), prefix, ttl, instances)
    }
}

impl<K: LeaseKeys> Registrar<K> {
    /// A registrar writing through `keys`.
    pub fn with_keys(keys: K, prefix: &str, ttl: Duration, instances: Vec<Registration>) -> Self {
        Registrar {
            keys,
            prefix: prefix.to_string(),
            ttl: ttl.clamp(MIN_TTL, MAX_TTL),
            instances,
        }
    }

    /// Starts registering in the background.
    pub fn spawn(self) -> Handle {
        let status = Arc::new(Status::new(&self.instances));
        self.spawn_with(status)
    }

    /// Starts registering in the background, reporting to `status` (which a predecessor may
    /// have used: its gauges follow this registrar's registrations).
    pub fn spawn_with(self, status: Arc<Status>) -> Handle {
        status.set_registrations(&self.instances);
        let stop = CancellationToken::new();
        let abandon = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (updates, rx) = mpsc::unbounded_channel();
        let task =
            tokio::spawn(self.run(stop.clone(), Arc::clone(&abandon), Arc::clone(&status), rx));
        Handle {
            stop,
            abandon,
            task,
            status,
            updates,
        }
    }

    fn ttl_secs(&self) -> i64 {
        self.ttl.as_secs() as i64 + i64::from(self.ttl.subsec_nanos() > 0)
    }

    /// Takes on `update`: the new registrations and TTL. Returns the new owned list; keys that
    /// left go to `leftovers`, and so does the lease when the TTL changed.
    fn reconfigure(
        &mut self,
        update: Desired,
        owned: &[Owned],
        lease: &mut Option<i64>,
        leftovers: &mut Leftovers,
        status: &Status,
    ) -> Vec<Owned> {
        let ttl = update.ttl.clamp(MIN_TTL, MAX_TTL);
        self.instances = update.instances;
        let next = owned::track(&self.prefix, &self.instances, owned);
        leftovers.follow(owned, &next);
        if ttl != self.ttl {
            self.ttl = ttl;
            // The keys move to a lease of the new TTL; the old lease is revoked after.
            if let Some(id) = lease.take() {
                leftovers.lease = leftovers.lease.or(Some(id));
            }
        }
        status.set_registrations(&self.instances);
        next
    }

    async fn run(
        mut self,
        stop: CancellationToken,
        abandon: Arc<std::sync::atomic::AtomicBool>,
        status: Arc<Status>,
        mut updates: mpsc::UnboundedReceiver<Desired>,
    ) {
        let mut owned = owned::track(&self.prefix, &self.instances, &[]);
        let (mut checks, mut changes) = owned::spawn_checks(&owned, &stop);
        let mut lease: Option<i64> = None;
        let mut leftovers = Leftovers::default();
        let mut backoff = Backoff::etcd();
        let mut outage = Outage::default();
        loop {
            let established = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.establish(&mut lease, &owned, &mut leftovers, &status) => r,
            };
            let mut session = match established {
                Ok(s) => s,
                Err(e) => {
                    let e = match e.kind() {
                        Kind::PermissionDenied => e.context(format!(
                            "the etcd user may not write under {} (it needs readwrite there)",
                            self.prefix
                        )),
                        _ => e,
                    };
                    let refused = matches!(e.kind(), Kind::AuthFailed | Kind::PermissionDenied);
                    status.set_refusal(refused.then(|| e.to_string()));
                    // What etcd said, once, then every 30 s while it lasts (a full etcd, a
                    // refused lease or an unreachable cluster may last for hours).
                    outage.failed("registering", &e.to_string());
                    // Health changes and reloads keep arriving while etcd is away; the next
                    // session uses them.
                    let deadline = Instant::now() + backoff.next_delay();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep_until(deadline) => break,
                            Some((i, healthy)) = changes.recv() => {
                                if let Some(o) = owned.get_mut(i) {
                                    o.healthy = healthy;
                                }
                            }
                            Some(update) = updates.recv() => {
                                owned = self.reconfigure(update, &owned, &mut lease, &mut leftovers, &status);
                                checks.cancel();
                                (checks, changes) = owned::spawn_checks(&owned, &stop);
                            }
                        }
                    }
                    continue;
                }
            };
            outage.recovered("registering");
            status.set_refusal(None);
            backoff.reset();
            if let Some(old) = leftovers.lease.take() {
                self.revoke(old, "the ttl changed").await;
            }
            match self
                .serve(
                    &mut session,
                    &mut owned,
                    &mut changes,
                    &mut updates,
                    &status,
                    &stop,
                )
                .await
            {
                End::Stop => break,
                End::Reconfigure(update) => {
                    owned = self.reconfigure(update, &owned, &mut lease, &mut leftovers, &status);
                    checks.cancel();
                    (checks, changes) = owned::spawn_checks(&owned, &stop);
                    // A new session at once: same lease (unless the TTL changed), new keys.
                    continue;
                }
                End::LeaseLost(why) => {
                    warn!(lease = session.lease, reason = %why, "lease lost, granting a new one and registering again");
                    lease = None;
                    status.clear();
                }
                End::Broken(why) => {
                    outage.failed("keeping the registration alive", &why);
                }
            }
            if !sleep(&stop, backoff.next_delay()).await {
                break;
            }
        }

        checks.cancel();
        status.clear();
        if abandon.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(id) = lease {
                info!(
                    lease = id,
                    "registrar replaced; its lease expires within the ttl"
                );
            }
            return;
        }
        for id in [leftovers.lease, lease].into_iter().flatten() {
            self.revoke(id, "stopping").await;
        }
    }

    /// Revokes `id`, bounded in time: its keys vanish at once, or else by TTL.
    async fn revoke(&mut self, id: i64, why: &str) {
        match tokio::time::timeout(REVOKE_TIMEOUT, self.keys.revoke(id)).await {
            Ok(Ok(())) => info!(
                lease = id,
                reason = why,
                "lease revoked, its keys deregistered"
            ),
            Ok(Err(e)) => {
                warn!(lease = id, error = %e, "could not revoke the lease; its keys expire within the ttl")
            }
            Err(_) => warn!(
                lease = id,
                "revoking the lease timed out; its keys expire within the ttl"
            ),
        }
    }

    /// Gets a live lease (the old one if etcd still has it), writes the healthy instances' keys,
    /// removes the unhealthy ones', and watches the owned keys.
    async fn establish(
        &mut self,
        lease: &mut Option<i64>,
        owned: &[Owned],
        leftovers: &mut Leftovers,
        status: &Status,
    ) -> Result<Session<K>, EtcdError> {
        let mut kept = None;
        if let Some(id) = *lease {
            match self.keys.keep_alive(id).await {
                Ok(k) => kept = Some((id, k)),
                Err(e) if e.is_lease_gone() => *lease = None,
                Err(e) => return Err(e),
            }
        }
        let (id, keepalive) = match kept {
            Some(k) => k,
            None => {
                let id = self.keys.grant(self.ttl_secs()).await?;
                status.lease_grants.inc();
                status.kept_alive(id, self.ttl_secs());
                *lease = Some(id);
                (id, self.keys.keep_alive(id).await?)
            }
        };

        let healthy: Vec<(&str, &str)> = owned
            .iter()
            .filter(|o| o.healthy)
            .map(|o| (o.key.as_str(), o.value.as_str()))
            .collect();
        let revision = self.keys.write(id, &healthy).await?;
        for o in owned.iter().filter(|o| !o.healthy) {
            self.keys.remove(id, &o.key).await?;
        }
        // Keys of registrations a reload removed: deleted if still ours (under the old lease
        // after a TTL change, they vanish when it is revoked).
        while let Some(key) = leftovers.keys.last() {
            self.keys.remove(id, key).await?;
            info!(key = %key, "registration removed by a reload, deregistered");
            leftovers.keys.pop();
        }
        for (i, o) in owned.iter().enumerate() {
            status.set_registered(i, o.healthy);
        }
        if !healthy.is_empty() {
            let keys: Vec<&str> = healthy.iter().map(|(k, _)| *k).collect();
            info!(lease = id, ttl = self.ttl_secs(), instances = ?keys, "registered");
        }

        let keys: Vec<&str> = owned.iter().map(|o| o.key.as_str()).collect();
        let watch = if keys.is_empty() {
            None
        } else {
            let start = if revision > 0 { revision + 1 } else { 0 };
            Some(self.keys.watch(&keys, start).await?)
        };
        Ok(Session {
            lease: id,
            keepalive,
            watch,
        })
    }

    /// Keeps the lease alive, follows health changes and repairs owned keys until something
    /// breaks or `stop` fires.
    async fn serve(
        &mut self,
        session: &mut Session<K>,
        owned: &mut [Owned],
        changes: &mut mpsc::Receiver<(usize, bool)>,
        updates: &mut mpsc::UnboundedReceiver<Desired>,
        status: &Status,
        stop: &CancellationToken,
    ) -> End {
        let id = session.lease;
        let period = self.ttl / 3;
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        let mut answered = Instant::now();
        let mut dirty: Vec<usize> = Vec::new();
        let mut last_repair: Option<Instant> = None;
        let mut repair_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return End::Stop,
                _ = ticks.tick() => {
                    if answered.elapsed() > self.ttl {
                        return End::Broken(format!("no keepalive answer for {}", humantime::format_duration(self.ttl)));
                    }
                    match cancellable(stop, session.keepalive.ping()).await {
                        None => return End::Stop,
                        Some(Err(e)) => return End::Broken(e.to_string()),
                        Some(Ok(())) => {}
                    }
                }
                answer = session.keepalive.answer() => match answer {
                    Ok(Some(ttl)) if ttl > 0 => {
                        answered = Instant::now();
                        status.kept_alive(id, ttl);
                    }
                    Ok(Some(_)) => return End::LeaseLost("etcd says the lease expired or was revoked".to_string()),
                    Ok(None) => return End::Broken("keepalive stream closed".to_string()),
                    Err(e) => return End::Broken(e.to_string()),
                },
                Some(update) = updates.recv() => return End::Reconfigure(update),
                Some((i, healthy)) = changes.recv() => {
                    let Some(o) = owned.get_mut(i) else { continue };
                    if o.healthy == healthy {
                        continue;
                    }
                    o.healthy = healthy;
                    let o = &owned[i];
                    let done = if healthy {
                        cancellable(stop, self.keys.put(id, &o.key, &o.value)).await
                    } else {
                        cancellable(stop, self.keys.remove(id, &o.key)).await
                    };
                    match done {
                        None => return End::Stop,
                        Some(Ok(())) => {
                            status.set_registered(i, healthy);
                            info!(instance = %o.label, key = %o.key, registered = healthy, "registration follows its health check");
                        }
                        Some(Err(e)) => return e.into(),
                    }
                }
                event = lease::next_watch(&mut session.watch) => match event {
                    Ok(Some(events)) => {
                        for ev in events {
                            let Some(i) = owned.iter().position(|o| o.key.as_bytes() == ev.key) else { continue };
                            let intact = !ev.deleted && ev.value == owned[i].value.as_bytes() && ev.lease == id;
                            if owned[i].healthy && !intact && !dirty.contains(&i) {
                                dirty.push(i);
                            }
                        }
                        if !dirty.is_empty() && repair_at.is_none() {
                            let now = Instant::now();
                            repair_at = Some(last_repair.map_or(now, |t| (t + REPAIR_SPACING).max(now)));
                        }
                    }
                    Ok(None) => return End::Broken("key watch closed".to_string()),
                    Err(e) => return End::Broken(e.to_string()),
                },
                _ = crate::shutdown::until(repair_at) => {
                    repair_at = None;
                    last_repair = Some(Instant::now());
                    for i in std::mem::take(&mut dirty) {
                        let o = &owned[i];
                        if !o.healthy {
                            continue;
                        }
                        warn!(instance = %o.label, key = %o.key, "registered key was deleted or overwritten, putting it back");
                        match cancellable(stop, self.keys.put(id, &o.key, &o.value)).await {
                            None => return End::Stop,
                            Some(Err(e)) => return e.into(),
                            Some(Ok(())) => {
                                status.repairs.inc();
                            }
                        }
                    }
                }
            }
        }
    }
}
