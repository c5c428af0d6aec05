//! How a service's instances are picked and judged (balance, ejection rules, zone preference),
//! with the defaults written once, and the one policy every service no config names shares.
//! A route's config embeds a [`Policy`]; the node's zone joins it when the route is applied.

use std::sync::{Arc, OnceLock};

use crate::balance::Balance;

/// When instances are taken out of rotation for failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Connects refused, reset or timed out in a row that eject an instance; 0 turns it off.
    pub consecutive_failures: u32,
    /// HTTP 502/503/504 answers in a row that eject an instance; 0 turns it off.
    pub consecutive_5xx: u32,
    /// The first ejection's length; each ejection in a row lasts one more of these.
    pub base_ejection_ms: u64,
    /// The longest ejection.
    pub max_ejection_ms: u64,
    /// At most this share of a service's instances is ejected at once (at least one may be).
    pub max_ejection_percent: u32,
}

impl Default for Outlier {
    /// Envoy's defaults: 5 failures, 30 s doubling-ish up to 300 s, at most half ejected; 5xx off
    /// (a URL that always fails must not let one client eject every instance).
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            consecutive_5xx: 0,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 50,
        }
    }
}

/// How a service's instances are picked and judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The picking policy.
    pub balance: Balance,
    /// When failing instances are ejected.
    pub outlier: Outlier,
    /// This node's zone: picks prefer instances of the same zone. A node setting, so none in
    /// a route's config.
    pub zone: Option<String>,
    /// Local instances are preferred only while at least this many are usable.
    pub min_local: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            balance: Balance::RoundRobin,
            outlier: Outlier::default(),
            zone: None,
            min_local: 2,
        }
    }
}

/// The policy of every service no config names: one shared value, not one per service (a
/// registry may hold ten thousand of them).
pub(super) fn default_policy() -> Arc<Policy> {
    static DEFAULT: OnceLock<Arc<Policy>> = OnceLock::new();
    Arc::clone(DEFAULT.get_or_init(|| Arc::new(Policy::default())))
}
