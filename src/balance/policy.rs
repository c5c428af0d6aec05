//! The picking policies and what the `hash` policy hashes.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::parsed::deserialize_from_str;

/// How an instance is chosen among a service's usable instances. Every policy follows the
/// instances' weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin, shared by all connections of the service; equal weights
    /// give a strict rotation in id order.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Of two instances drawn at random (weighted), the one with fewer connections or requests
    /// in flight for its weight.
    LeastRequest,
    /// Of two different instances drawn at random (weighted), the one whose peak-EWMA latency
    /// times its connections or requests in flight plus one is lower for its weight
    /// (linkerd2-proxy's balancer): a slow instance gets little, however few requests are in
    /// flight.
    Ewma,
    /// Consistent hashing of a key of the connection or request (Maglev): the same key lands on
    /// the same instance, and an instance's arrival or departure moves about 1/N of the keys.
    Hash,
}

impl Balance {
    /// The name used in config files and `/services`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Random => "random",
            Balance::LeastRequest => "least_request",
            Balance::Ewma => "ewma",
            Balance::Hash => "hash",
        }
    }
}

/// What the `hash` policy hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// The client's IP address (TCP and HTTP).
    ClientIp,
    /// An HTTP request header, by lowercase name.
    Header(String),
    /// An HTTP cookie, by name.
    Cookie(String),
}

impl HashKey {
    /// Whether a TCP listener can hash it (only the client's address is known there).
    pub fn works_for_tcp(&self) -> bool {
        matches!(self, HashKey::ClientIp)
    }
}

impl FromStr for HashKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("hash_key {s:?} must be \"client_ip\", \"header:NAME\" or \"cookie:NAME\"");
        if s == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        match kind {
            "header" => Ok(HashKey::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(HashKey::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

deserialize_from_str!(HashKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse_from_the_config_forms() {
        assert_eq!("client_ip".parse(), Ok(HashKey::ClientIp));
        assert_eq!(
            "header:X-User".parse(),
            Ok(HashKey::Header("x-user".into()))
        );
        assert_eq!(
            "cookie:session".parse(),
            Ok(HashKey::Cookie("session".into()))
        );
        for bad in ["ip", "header:", "query:a", "cookie: a b"] {
            assert!(bad.parse::<HashKey>().is_err(), "{bad}");
        }
        assert!(HashKey::ClientIp.works_for_tcp());
        assert!(!HashKey::Header("a".into()).works_for_tcp());
    }
}
