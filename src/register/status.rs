//! The live state of a registrar, read by `/metrics`, tests and library users.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::config::Registration;

/// Labels of one registration's gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Labels {
    service: String,
    id: String,
}

/// Live state of a registrar.
#[derive(Debug)]
pub struct Status {
    /// Each registration's labels and gauge (1 while its key is written under the live lease),
    /// in order; replaced when a reload changes the registrations.
    registered: Mutex<Vec<(Labels, Gauge)>>,
    /// Every registration's gauge, labelled with its service and id.
    family: Family<Labels, Gauge>,
    /// Leases granted (1 in a quiet life; one more per lost lease).
    pub lease_grants: Counter,
    /// Keys put back after someone else deleted or overwrote them.
    pub repairs: Counter,
    /// Why etcd refuses to register anything (bad credentials, no write permission), while it
    /// does: retries go on, but a foreground command can give up on it.
    refusal: Mutex<Option<String>>,
    /// The live lease, the TTL etcd gave it at its last keepalive answer, and when that was.
    lease: Mutex<Option<(i64, i64, Instant)>>,
}

impl Status {
    /// The state of a registrar of `registrations`: nothing registered yet.
    pub fn new(registrations: &[Registration]) -> Status {
        let status = Status {
            registered: Mutex::new(Vec::new()),
            family: Family::<Labels, Gauge>::default(),
            lease_grants: Counter::default(),
            repairs: Counter::default(),
            refusal: Mutex::new(None),
            lease: Mutex::new(None),
        };
        status.set_registrations(registrations);
        status
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<(Labels, Gauge)>> {
        self.registered
            .lock()
            .expect("the registrations lock is never held across a panic")
    }

    /// Follows a new list of registrations: gauges of the ones that stay are kept, those of
    /// the ones that left disappear from `/metrics`, new ones start at 0.
    pub(crate) fn set_registrations(&self, registrations: &[Registration]) {
        let mut entries = self.entries();
        let next: Vec<(Labels, Gauge)> = registrations
            .iter()
            .map(|r| {
                let labels = Labels {
                    service: r.service.clone(),
                    id: r.id.clone(),
                };
                let gauge = self.family.get_or_create_owned(&labels);
                (labels, gauge)
            })
            .collect();
        for (labels, _) in entries.iter() {
            if !next.iter().any(|(l, _)| l == labels) {
                self.family.remove(labels);
            }
        }
        *entries = next;
    }

    /// `service/id` of each registration, in order.
    pub fn labels(&self) -> Vec<String> {
        self.entries()
            .iter()
            .map(|(l, _)| format!("{}/{}", l.service, l.id))
            .collect()
    }

    /// Why etcd refuses this registrar's user, if it does.
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .expect("the refusal lock is never held across a panic")
            .clone()
    }

    /// Records why etcd refuses the registrar's user, or that it no longer does.
    pub(super) fn set_refusal(&self, why: Option<String>) {
        *self
            .refusal
            .lock()
            .expect("the refusal lock is never held across a panic") = why;
    }

    /// Whether registration `index` is written under the live lease.
    pub fn is_registered(&self, index: usize) -> bool {
        self.entries().get(index).is_some_and(|(_, g)| g.get() == 1)
    }

    /// Records whether registration `index` is written under the live lease.
    pub(super) fn set_registered(&self, index: usize, registered: bool) {
        if let Some((_, g)) = self.entries().get(index) {
            g.set(i64::from(registered));
        }
    }

    /// Records that etcd gave `lease` `ttl` seconds more just now.
    pub(super) fn kept_alive(&self, lease: i64, ttl: i64) {
        *self
            .lease
            .lock()
            .expect("the lease lock is never held across a panic") =
            Some((lease, ttl, Instant::now()));
    }

    /// The live lease and the time it has left, as of its last keepalive answer.
    pub fn lease(&self) -> Option<(i64, Duration)> {
        let lease = *self
            .lease
            .lock()
            .expect("the lease lock is never held across a panic");
        lease.map(|(id, ttl, at)| {
            let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
            (id, ttl.saturating_sub(at.elapsed()))
        })
    }

    /// Each registration's `service/id` and whether its key is written under the live lease.
    pub fn registrations(&self) -> Vec<(String, String, bool)> {
        self.entries()
            .iter()
            .map(|(l, g)| (l.service.clone(), l.id.clone(), g.get() == 1))
            .collect()
    }

    /// Records that no registration is written (the lease is gone or revoked).
    pub(super) fn clear(&self) {
        *self
            .lease
            .lock()
            .expect("the lease lock is never held across a panic") = None;
        for (_, g) in self.entries().iter() {
            g.set(0);
        }
    }

    /// Adds the registrar's metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_registration_registered",
            "1 while the instance's key is written under the live lease",
            self.family.clone(),
        );
        registry.register(
            "cairn_registration_lease_grants",
            "Leases granted for this process's registrations",
            self.lease_grants.clone(),
        );
        registry.register(
            "cairn_registration_repairs",
            "Registered keys put back after someone deleted or overwrote them",
            self.repairs.clone(),
        );
    }
}
