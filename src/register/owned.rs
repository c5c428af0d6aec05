//! What a registrar tracks of each registration (its key, value, check and health), and what
//! a reload leaves behind: keys to delete and a lease to revoke.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::config::Registration;
use crate::health::check::Check;
use crate::registry::instance_key;

/// What a running registrar is to hold from a reload on: the lease TTL and the registrations.
#[derive(Debug)]
pub(super) struct Desired {
    /// The lease TTL asked for.
    pub(super) ttl: Duration,
    /// The registrations.
    pub(super) instances: Vec<Registration>,
}

/// One instance as the registrar tracks it.
pub(super) struct Owned {
    /// `service/id`, for logs.
    pub(super) label: String,
    /// Its registry key.
    pub(super) key: String,
    /// Its encoded value.
    pub(super) value: String,
    /// Its health check, if any.
    pub(super) check: Option<Check>,
    /// Whether it should be registered now: no check, or its check passes.
    pub(super) healthy: bool,
}

/// What the registrar must do beyond its registrations: keys of removed registrations to
/// delete, and a lease to revoke once a new one carries the keys.
#[derive(Default)]
pub(super) struct Leftovers {
    /// Keys of registrations a reload removed, deleted under the live lease.
    pub(super) keys: Vec<String>,
    /// The lease before a TTL change, revoked once the keys are written under the new one.
    pub(super) lease: Option<i64>,
}

/// The tracked form of `instances` under `prefix`. A registration unchanged from `previous`
/// keeps what its check found; others start over (healthy only without a check).
pub(super) fn track(prefix: &str, instances: &[Registration], previous: &[Owned]) -> Vec<Owned> {
    instances
        .iter()
        .map(|r| {
            let key = instance_key(prefix, &r.service, &r.id);
            let value = r.endpoint.encode();
            let healthy = previous
                .iter()
                .find(|o| o.key == key && o.value == value && o.check == r.check)
                .map_or(r.check.is_none(), |o| o.healthy);
            Owned {
                label: r.label(),
                key,
                value,
                check: r.check.clone(),
                healthy,
            }
        })
        .collect()
}

impl Leftovers {
    /// Follows a reload from `before` to `after`: keys that left are to be deleted, and a key
    /// that came back is not. Logs what changed.
    pub(super) fn follow(&mut self, before: &[Owned], after: &[Owned]) {
        let removed: Vec<&str> = before
            .iter()
            .filter(|o| !after.iter().any(|n| n.key == o.key))
            .map(|o| o.key.as_str())
            .collect();
        let added = after
            .iter()
            .filter(|n| !before.iter().any(|o| o.key == n.key))
            .count();
        let changed = after
            .iter()
            .filter(|n| {
                before
                    .iter()
                    .any(|o| o.key == n.key && (o.value != n.value || o.check != n.check))
            })
            .count();
        info!(
            added,
            changed,
            removed = removed.len(),
            "registrations reloaded"
        );
        self.keys.extend(removed.iter().map(|k| k.to_string()));
        self.keys.retain(|k| !after.iter().any(|n| n.key == *k));
    }
}

/// Starts the health checks of `owned`, each from its current state, until the returned
/// token (a child of `stop`) is cancelled. Their verdicts arrive on the returned channel,
/// one per generation of checks, so a verdict never reaches a registration of another.
pub(super) fn spawn_checks(
    owned: &[Owned],
    stop: &CancellationToken,
) -> (CancellationToken, mpsc::Receiver<(usize, bool)>) {
    // Flips are rare; a check that finds the channel full waits, it loses nothing.
    let (changes, received) = mpsc::channel(owned.len().clamp(1, 64));
    let checks_stop = stop.child_token();
    for (i, o) in owned.iter().enumerate() {
        if let Some(check) = &o.check {
            check.clone().spawn(
                i,
                o.label.clone(),
                o.healthy,
                changes.clone(),
                checks_stop.clone(),
            );
        }
    }
    (checks_stop, received)
}
