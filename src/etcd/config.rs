//! The `[etcd]` section: where the members are and where the registry lives in them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::field::{deserialize_from_str, duration, FieldResult, HumanDuration, Key};
use crate::registry::Prefix;

/// How to reach etcd and where the registry lives in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members; they share one balanced channel.
    pub endpoints: Vec<EndpointUrl>,
    /// Key prefix of the registry.
    pub prefix: Prefix,
    /// How long one connection attempt to a member may take.
    pub dial_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec![EndpointUrl::local()],
            prefix: Prefix::default(),
            dial_timeout: Duration::from_secs(5),
        }
    }
}

/// A connection attempt to a member longer than this is a member that is not coming.
const DIAL_TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(300);

/// The client URL of one etcd member: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointUrl(String);

impl EndpointUrl {
    /// `http://127.0.0.1:2379`, etcd's default client URL.
    pub fn local() -> EndpointUrl {
        EndpointUrl("http://127.0.0.1:2379".to_string())
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EndpointUrl {
    type Err = String;

    fn from_str(ep: &str) -> Result<Self, Self::Err> {
        let rest = ep
            .strip_prefix("http://")
            .or_else(|| ep.strip_prefix("https://"))
            .ok_or_else(|| format!("endpoint {ep:?} must start with http:// or https://"))?;
        let authority = rest.trim_end_matches('/');
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(EndpointUrl(ep.to_string()))
            }
            _ => Err(format!(
                "endpoint {ep:?} must name a host and a port, like http://127.0.0.1:2379"
            )),
        }
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(EndpointUrl);

/// The `[etcd]` section as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcd {
    endpoints: Option<Spanned<Vec<EndpointUrl>>>,
    prefix: Option<Prefix>,
    dial_timeout: Option<Spanned<HumanDuration>>,
}

impl RawEtcd {
    /// The settings, with defaults for what is absent.
    pub(crate) fn validate(self, key: &Key) -> FieldResult<EtcdConfig> {
        let defaults = EtcdConfig::default();
        let endpoints = match self.endpoints {
            None => defaults.endpoints,
            Some(eps) if eps.get_ref().is_empty() => {
                return Err(key.at("endpoints", &eps, "needs at least one URL"))
            }
            Some(eps) => eps.into_inner(),
        };
        Ok(EtcdConfig {
            endpoints,
            prefix: self.prefix.unwrap_or(defaults.prefix),
            dial_timeout: duration(
                self.dial_timeout.as_ref(),
                &key.field("dial_timeout"),
                DIAL_TIMEOUT,
                defaults.dial_timeout,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_a_scheme_a_host_and_a_port() {
        assert!("http://127.0.0.1:2379".parse::<EndpointUrl>().is_ok());
        assert!("https://etcd.internal:2379/".parse::<EndpointUrl>().is_ok());
        for (bad, why) in [
            ("127.0.0.1:2379", "http://"),
            ("http://127.0.0.1", "host and a port"),
            ("http://:2379", "host and a port"),
            ("http://h:0", "host and a port"),
        ] {
            assert!(
                bad.parse::<EndpointUrl>().unwrap_err().contains(why),
                "{bad}"
            );
        }
    }
}
