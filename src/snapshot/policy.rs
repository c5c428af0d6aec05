//! How a service's instances are picked and judged, and the one policy every service no config
//! names shares.

use std::sync::{Arc, OnceLock};

use super::state::Outlier;
use crate::balance::Balance;

/// How a service's instances are picked and judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The picking policy.
    pub balance: Balance,
    /// When failing instances are ejected.
    pub outlier: Outlier,
    /// This node's zone: picks prefer instances of the same zone.
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
