//! The `[admin]` section.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::field::ListenAddr;

/// The admin HTTP endpoint's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where `/healthz`, `/readyz`, `/services` and `/metrics` are served.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }
    }
}

/// The `[admin]` section as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<Spanned<ListenAddr>>,
}

impl RawAdmin {
    /// The settings, with defaults for what is absent.
    pub(crate) fn validate(self) -> AdminConfig {
        AdminConfig {
            listen: self
                .listen
                .map_or_else(|| AdminConfig::default().listen, |l| l.into_inner().0),
        }
    }
}
