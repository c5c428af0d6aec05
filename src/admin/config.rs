//! The `[admin]` section.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::field::{duration, FieldResult, HumanDuration, Key, ListenAddr};

/// The admin HTTP endpoint's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where `/healthz`, `/readyz`, `/services` and `/metrics` are served.
    pub listen: SocketAddr,
    /// `/readyz` turns 503 once etcd has been unreachable this long; never when absent (routing
    /// from the last snapshot is the point of a stale cairn).
    pub max_stale: Option<Duration>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            max_stale: None,
        }
    }
}

/// Staleness below a second is a blip, not a reason to leave a load balancer; beyond a week
/// the setting is a typo.
const MAX_STALE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);

/// The `[admin]` section as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<Spanned<ListenAddr>>,
    max_stale: Option<Spanned<HumanDuration>>,
}

impl RawAdmin {
    /// The settings, with defaults for what is absent.
    pub(crate) fn validate(self, key: &Key) -> FieldResult<AdminConfig> {
        let max_stale = match &self.max_stale {
            Some(_) => Some(duration(
                self.max_stale.as_ref(),
                &key.field("max_stale"),
                MAX_STALE,
                Duration::ZERO,
            )?),
            None => None,
        };
        Ok(AdminConfig {
            listen: self
                .listen
                .map_or_else(|| AdminConfig::default().listen, |l| l.into_inner().0),
            max_stale,
        })
    }
}
