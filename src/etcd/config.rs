//! The `[etcd]` section: where the members are and where the registry lives in them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::credentials::Credentials;
use super::tls::{RawTls, TlsConfig};
use crate::field::{duration, FieldResult, HumanDuration, Key};
use crate::parsed::deserialize_from_str;
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
    /// TLS settings for `https://` endpoints; none means the system's roots, no client
    /// certificate.
    pub tls: Option<TlsConfig>,
    /// The user to authenticate as, when etcd has auth enabled.
    pub credentials: Option<Credentials>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec![EndpointUrl::local()],
            prefix: Prefix::default(),
            dial_timeout: Duration::from_secs(5),
            tls: None,
            credentials: None,
        }
    }
}

impl EtcdConfig {
    /// Whether the endpoints speak TLS (`https://`); all of them do or none does.
    pub fn secure(&self) -> bool {
        self.endpoints.iter().any(EndpointUrl::is_https)
    }

    /// Checks what spans fields: one scheme for every endpoint, and TLS settings only for
    /// `https://` endpoints.
    ///
    /// # Errors
    /// A message naming the mismatch.
    pub fn check_schemes(&self) -> Result<(), String> {
        let https = self.endpoints.iter().filter(|e| e.is_https()).count();
        if https != 0 && https != self.endpoints.len() {
            return Err(
                "endpoints mix http:// and https://: a cluster is reached one way".to_string(),
            );
        }
        if https == 0 && self.tls.is_some() {
            return Err(
                "TLS settings are given but the endpoints are http://; use https:// URLs"
                    .to_string(),
            );
        }
        Ok(())
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

    /// Whether the member speaks TLS.
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
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
    tls: Option<RawTls>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    /// Refused with a message saying where a password goes instead.
    password: Option<Spanned<toml::Value>>,
}

impl RawEtcd {
    /// The settings, with defaults for what is absent.
    pub(crate) fn validate(self, key: &Key) -> FieldResult<EtcdConfig> {
        let defaults = EtcdConfig::default();
        let endpoints_span = self.endpoints.as_ref().map(Spanned::span);
        let endpoints = match self.endpoints {
            None => defaults.endpoints,
            Some(eps) if eps.get_ref().is_empty() => {
                return Err(key.at("endpoints", &eps, "needs at least one URL"))
            }
            Some(eps) => eps.into_inner(),
        };
        if let Some(p) = &self.password {
            return Err(key.at(
                "password",
                p,
                "a password is never written in the config: use password_file, or set CAIRN_ETCD_PASSWORD",
            ));
        }
        let credentials = match (&self.username, &self.password_file) {
            (Some(user), file) => Some(
                Credentials::load(user.get_ref(), file.as_ref().map(|f| f.get_ref().as_path()))
                    .map_err(|m| match file {
                        Some(f) => key.at("password_file", f, m),
                        None => key.at("username", user, m),
                    })?,
            ),
            (None, Some(file)) => {
                return Err(key.at("password_file", file, "password_file needs a username"))
            }
            (None, None) => None,
        };
        let config = EtcdConfig {
            endpoints,
            prefix: self.prefix.unwrap_or(defaults.prefix),
            dial_timeout: duration(
                self.dial_timeout.as_ref(),
                &key.field("dial_timeout"),
                DIAL_TIMEOUT,
                defaults.dial_timeout,
            )?,
            tls: match self.tls {
                Some(tls) => Some(tls.validate(&key.field("tls"))?),
                None => None,
            },
            credentials,
        };
        config
            .check_schemes()
            .map_err(|m| key.field("endpoints").error(endpoints_span, m))?;
        Ok(config)
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
