//! The live status page: `GET /` is one self-contained HTML page (no external assets) that
//! refreshes itself every 2 s from `GET /status.json`: etcd, the listeners, this node's
//! registrations, and each service with its instances.
//!
//! A registry may hold thousands of services, so `status.json` carries every service's summary
//! but the instances only of the services the page has open (`?open=a&open=b`), of those with a
//! troubled instance, or of all when there are few.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::time::Instant;

use super::services::state_name;
use crate::discovery::Freshness;
use crate::etcd::EtcdMetrics;
use crate::proxy::ListenerView;
use crate::register::Status;
use crate::snapshot::{ServiceCell, Snapshot, Store};

/// The page itself, embedded in the binary.
pub(crate) const PAGE: &str = include_str!("status.html");

/// With this many services or fewer, every service is shown open.
const ALL_OPEN: usize = 50;

/// At most this many services have their instances sent, so one request stays small.
const MOST_OPEN: usize = 200;

/// What the page reports on, besides the store.
pub(crate) struct Sources {
    /// The running listeners.
    pub(crate) listeners: Arc<ArcSwap<Vec<ListenerView>>>,
    /// This node's registrations.
    pub(crate) registration: Arc<Status>,
    /// Each etcd member's last answer.
    pub(crate) etcd: EtcdMetrics,
    /// When cairn started.
    pub(crate) started: Instant,
}

// The page's JSON, one struct per object (named `…Json`, apart from the crate's own types).

#[derive(Serialize)]
struct Page<'a> {
    version: &'static str,
    uptime_seconds: u64,
    etcd: EtcdJson,
    listeners: Vec<ListenerJson>,
    registrations: RegistrationsJson,
    services: Vec<ServiceJson<'a>>,
}

#[derive(Serialize)]
struct EtcdJson {
    connected: bool,
    stale_seconds: Option<u64>,
    synced: bool,
    from_cache: bool,
    revision: i64,
    cluster_id: String,
    members: Vec<MemberJson>,
}

#[derive(Serialize)]
struct MemberJson {
    endpoint: String,
    up: bool,
}

#[derive(Serialize)]
struct ListenerJson {
    listen: String,
    service: String,
    protocol: &'static str,
    balance: &'static str,
    active: i64,
    accepted: u64,
    requests: u64,
    errors: u64,
}

#[derive(Serialize)]
struct RegistrationsJson {
    lease: Option<String>,
    ttl_left_seconds: Option<u64>,
    refusal: Option<String>,
    instances: Vec<RegisteredJson>,
}

#[derive(Serialize)]
struct RegisteredJson {
    service: String,
    id: String,
    registered: bool,
}

#[derive(Serialize)]
struct ServiceJson<'a> {
    name: String,
    balance: &'static str,
    total: usize,
    usable: usize,
    panic: bool,
    ejections: u64,
    troubled: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<Vec<InstanceJson<'a>>>,
}

#[derive(Serialize)]
struct InstanceJson<'a> {
    id: &'a str,
    addr: String,
    zone: Option<&'a str>,
    weight: u32,
    state: &'static str,
    inflight: u32,
    failures: u32,
    ejected_seconds_left: Option<u64>,
}

fn instances<'a>(snapshot: &'a Snapshot, now: u64) -> Vec<InstanceJson<'a>> {
    snapshot
        .instances()
        .iter()
        .zip(snapshot.states())
        .map(|(i, s)| InstanceJson {
            id: &i.id,
            addr: i.endpoint.addr.to_string(),
            zone: i.endpoint.zone.as_deref(),
            weight: i.endpoint.weight,
            state: state_name(s),
            inflight: s.inflight(),
            failures: s.failures(),
            ejected_seconds_left: s.ejected_seconds_left(now),
        })
        .collect()
}

/// `status.json` for a page that has `open` services expanded.
pub(crate) fn json(
    store: &Store,
    freshness: &Freshness,
    sources: &Sources,
    open: &[&str],
    now: u64,
) -> Vec<u8> {
    let cells: Vec<(String, Arc<ServiceCell>)> = store.cells();
    let snapshots: Vec<Arc<Snapshot>> = cells
        .iter()
        .map(|(_, c)| arc_swap::Guard::into_inner(c.load()))
        .collect();
    let mut sent = 0;
    let services = cells
        .iter()
        .zip(&snapshots)
        .map(|((name, cell), snapshot)| {
            let troubled = snapshot
                .states()
                .iter()
                .filter(|s| state_name(s) != "healthy")
                .count();
            let show = cells.len() <= ALL_OPEN || troubled > 0 || open.iter().any(|o| o == name);
            let instances = (show && sent < MOST_OPEN).then(|| {
                sent += 1;
                instances(snapshot, now)
            });
            ServiceJson {
                name: name.clone(),
                balance: cell.policy().balance.as_str(),
                total: snapshot.len(),
                usable: snapshot.usable(),
                panic: snapshot.in_panic(),
                ejections: cell.ejections(),
                troubled,
                instances,
            }
        })
        .collect();
    let listeners = sources
        .listeners
        .load()
        .iter()
        .map(|l| {
            let m = &l.metrics;
            ListenerJson {
                listen: l.listen.to_string(),
                balance: store
                    .get(&l.service)
                    .map_or("-", |c| c.policy().balance.as_str()),
                service: l.service.clone(),
                protocol: l.protocol,
                active: m.active.get(),
                accepted: m.accepted.get(),
                requests: m.requests.get(),
                errors: m.no_instances.get()
                    + m.exhausted.get()
                    + m.timeouts.get()
                    + m.upstream_errors.get()
                    + m.not_found.get(),
            }
        })
        .collect();
    let status = &sources.registration;
    let lease = status.lease();
    let page = Page {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: sources.started.elapsed().as_secs(),
        etcd: EtcdJson {
            connected: freshness.is_connected(),
            stale_seconds: freshness.stale_for().map(|d| d.as_secs()),
            synced: store.synced(),
            from_cache: store.cached_at().is_some(),
            revision: store.revision(),
            cluster_id: format!("{:x}", freshness.cluster_id()),
            members: sources
                .etcd
                .members()
                .into_iter()
                .map(|(endpoint, up)| MemberJson { endpoint, up })
                .collect(),
        },
        listeners,
        registrations: RegistrationsJson {
            lease: lease.map(|(id, _)| format!("{id:x}")),
            ttl_left_seconds: lease.map(|(_, left)| left.as_secs()),
            refusal: status.refusal(),
            instances: status
                .registrations()
                .into_iter()
                .map(|(service, id, registered)| RegisteredJson {
                    service,
                    id,
                    registered,
                })
                .collect(),
        },
        services,
    };
    serde_json::to_vec(&page).expect("serializing plain structs into memory cannot fail")
}
