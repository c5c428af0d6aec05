//! Instance addresses: an IP socket address, or a hostname resolved when it is dialed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use crate::parsed::deserialize_from_str;

/// A dialable instance address: an IP socket address, or a hostname resolved at connect time.
///
/// Cloning is a copy for IP addresses and one reference-count step for hostnames, so the data
/// plane can carry an address across a connect without touching the snapshot again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// An IPv4 or IPv6 address with its port; dialed without any lookup.
    Ip(SocketAddr),
    /// A DNS name with its port.
    Host {
        /// The hostname, validated as DNS labels, lowercase.
        host: Arc<str>,
        /// The port, never 0.
        port: u16,
    },
}

impl Addr {
    /// The port of the address.
    pub fn port(&self) -> u16 {
        match self {
            Addr::Ip(sa) => sa.port(),
            Addr::Host { port, .. } => *port,
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(sa) => write!(f, "{sa}"),
            Addr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Addr {
    type Err = String;

    /// Parses `ipv4:port`, `[ipv6]:port` or `hostname:port`. Port 0, unspecified IPs,
    /// unbracketed IPv6, empty hosts and characters no DNS name may hold are rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(format!("address {s:?} has port 0"));
            }
            if sa.ip().is_unspecified() {
                return Err(format!("address {s:?} is unspecified and cannot be dialed"));
            }
            return Ok(Addr::Ip(sa));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("address {s:?} has no port (expected host:port)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("address {s:?} has an invalid port {port:?}"))?;
        if port == 0 {
            return Err(format!("address {s:?} has port 0"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(format!(
                "address {s:?} is not valid (IPv6 needs brackets: [::1]:80)"
            ));
        }
        check_hostname(host).map_err(|why| format!("address {s:?}: {why}"))?;
        Ok(Addr::Host {
            host: host.to_ascii_lowercase().into(),
            port,
        })
    }
}

deserialize_from_str!(Addr);

/// DNS names are at most 253 bytes of dot-separated labels of letters, digits, `-` and `_`.
fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    if host.len() > 253 {
        return Err("the host is longer than 253 bytes".to_string());
    }
    for label in host.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("{host:?} is not a valid hostname"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_form_parses() {
        assert_eq!(
            "10.0.0.5:8080".parse::<Addr>().unwrap(),
            Addr::Ip("10.0.0.5:8080".parse().unwrap())
        );
        assert_eq!(
            "[2001:db8::1]:443".parse::<Addr>().unwrap(),
            Addr::Ip("[2001:db8::1]:443".parse().unwrap())
        );
        let host: Addr = "Orders-1.svc.cluster.local:80".parse().unwrap();
        assert_eq!(
            host,
            Addr::Host {
                host: "orders-1.svc.cluster.local".into(),
                port: 80
            }
        );
        assert_eq!(host.to_string(), "orders-1.svc.cluster.local:80");
        assert_eq!(host.port(), 80);
    }

    #[test]
    fn undialable_addresses_are_refused_with_a_reason() {
        for (s, why) in [
            ("10.0.0.5", "no port"),
            ("10.0.0.5:0", "port 0"),
            ("host:0", "port 0"),
            ("10.0.0.5:99999", "invalid port"),
            ("0.0.0.0:80", "unspecified"),
            ("::1:80", "brackets"),
            ("bad host:80", "not a valid hostname"),
            ("-bad:80", "not a valid hostname"),
            (":80", "empty"),
        ] {
            let e = s.parse::<Addr>().expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
        let long = format!("{}:80", "a.".repeat(130));
        assert!(long.parse::<Addr>().unwrap_err().contains("253"));
    }
}
