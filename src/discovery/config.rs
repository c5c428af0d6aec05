//! The `[discovery]` table: which part of the registry a node lists and watches.

use serde::Deserialize;
use toml::Spanned;

use crate::field::{FieldResult, Key};

/// Which part of the registry a node lists, watches and holds (`[discovery] scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryScope {
    /// The whole prefix, in one list and one watch: a `[[gateway]]` may route to any service.
    All,
    /// Only the services the node's `[[service]]` blocks route to, each in its own list and
    /// watch: a node's memory and etcd's work no longer grow with the registry.
    Routed,
}

/// The `[discovery]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    scope: Option<Spanned<DiscoveryScope>>,
}

impl RawDiscovery {
    /// The scope: as written, else `all` when the node has a gateway and `routed` otherwise.
    ///
    /// # Errors
    /// `routed` beside a gateway, which routes by Host header to services it cannot know in
    /// advance.
    pub fn validate(self, key: &Key, gateway: bool) -> FieldResult<DiscoveryScope> {
        match self.scope {
            None if gateway => Ok(DiscoveryScope::All),
            None => Ok(DiscoveryScope::Routed),
            Some(scope) if gateway && *scope.get_ref() == DiscoveryScope::Routed => Err(key.at(
                "scope",
                &scope,
                "scope = \"routed\" cannot serve a [[gateway]], which may route to any service: use scope = \"all\"",
            )),
            Some(scope) => Ok(scope.into_inner()),
        }
    }
}
