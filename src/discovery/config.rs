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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::DiscoveryScope;
    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("cairn.toml"))
    }

    #[test]
    fn discovery_is_scoped_to_the_routed_services_unless_a_gateway_needs_them_all() {
        let routed = parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:7001\"\n").unwrap();
        assert_eq!(routed.discovery, DiscoveryScope::Routed);
        let gateway = parse("[[gateway]]\nlisten = \"127.0.0.1:7002\"\n").unwrap();
        assert_eq!(gateway.discovery, DiscoveryScope::All);
        let all = parse("[discovery]\nscope = \"all\"\n").unwrap();
        assert_eq!(all.discovery, DiscoveryScope::All);

        let e =
            parse("[discovery]\nscope = \"routed\"\n\n[[gateway]]\nlisten = \"127.0.0.1:7002\"\n")
                .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert_eq!(e.key.as_deref(), Some("discovery.scope"), "{e}");
        assert!(e.message.contains("gateway"), "{e}");
        let e = parse("[discovery]\nscope = \"some\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.message.contains("all") && e.message.contains("routed"),
            "{e}"
        );
    }
}
