//! What a check is: what it probes, how often, and the thresholds of its [`Streak`]. A
//! registration's check names its target ([`Probe`]); a service's check of its discovered
//! instances names what to ask of each ([`HealthProbe`]).
//!
//! [`Streak`]: super::streak::Streak

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use http::Uri;

use crate::addr::Addr;
use crate::parsed::deserialize_from_str;

/// What a registration's check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Healthy when a TCP connect to the address succeeds.
    Tcp(Addr),
    /// Healthy when `GET` on the `http://` URL answers 2xx.
    Http(Uri),
    /// Healthy when the command (program and arguments) exits 0.
    Exec(Vec<String>),
    /// Healthy when the gRPC server at the address answers `grpc.health.v1.Health/Check` for
    /// the service (`""`: the whole server) with `SERVING`.
    Grpc(Addr, String),
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Tcp(addr) => write!(f, "tcp {addr}"),
            Probe::Http(uri) => write!(f, "http {uri}"),
            Probe::Exec(argv) => write!(f, "exec {}", argv.join(" ")),
            Probe::Grpc(addr, service) if service.is_empty() => write!(f, "grpc {addr}"),
            Probe::Grpc(addr, service) => write!(f, "grpc {addr} {service:?}"),
        }
    }
}

/// What a service's check asks of each of its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// Healthy when a TCP connect succeeds.
    Tcp,
    /// Healthy when `GET` on this path answers 2xx.
    Http(String),
    /// Healthy when `grpc.health.v1.Health/Check` for this service (`""`: the whole server)
    /// answers `SERVING`.
    Grpc(String),
}

/// A health check and its thresholds: `P` is a registration's [`Probe`] or a service's
/// [`HealthProbe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check<P = Probe> {
    /// What is probed.
    pub probe: P,
    /// Time between two probes of one target (each carries ±10% jitter).
    pub interval: Duration,
    /// Time one probe may take before it counts as a failure.
    pub timeout: Duration,
    /// Passes in a row before an unhealthy target counts as healthy again.
    pub rise: u32,
    /// Failures in a row before a healthy target counts as unhealthy.
    pub fall: u32,
}

/// A service's check of its discovered instances.
pub type HealthCheck = Check<HealthProbe>;

impl Check {
    /// A registration's check of `probe` with the defaults: every 2 s, 1 s timeout, rise 2,
    /// fall 3.
    pub fn new(probe: Probe) -> Check {
        Check {
            probe,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// A health-check URL: `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckUrl(pub Uri);

impl FromStr for CheckUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|e| format!("invalid URL {s:?}: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("URL {s:?} must be http://host:port/path"));
        }
        // Refused now rather than failing every probe.
        HttpTarget::of(&uri).map_err(|e| format!("URL {s:?}: {e}"))?;
        Ok(CheckUrl(uri))
    }
}

deserialize_from_str!(CheckUrl);

/// Where an `http://` check URL's `GET` goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpTarget {
    /// The address dialed: the URL's host and port (80 when it names none); an unspecified
    /// IP (`0.0.0.0`, `[::]`) is this host, as a connect to it is on Linux.
    pub(crate) addr: Addr,
    /// The Host header: the host, and the port unless it is 80 (as browsers and hyper write it).
    pub(crate) host: String,
    /// The request target: the path (`/` when empty) and the query.
    pub(crate) target: String,
}

impl HttpTarget {
    /// The target of `uri`, which names a host (a user and password before it are left out).
    ///
    /// # Errors
    /// A host that is no IP and no valid DNS name.
    pub(crate) fn of(uri: &Uri) -> Result<HttpTarget, String> {
        let host = uri.host().ok_or("the URL names no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        let addr = match ip {
            Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => {
                Addr::Ip(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            }
            Ok(ip) if ip.is_unspecified() => {
                Addr::Ip(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            }
            Ok(ip) => Addr::Ip(SocketAddr::from((ip, port))),
            Err(_) => format!("{host}:{port}").parse()?,
        };
        let host = match port {
            80 => host.to_string(),
            port => format!("{host}:{port}"),
        };
        let target = match uri.query() {
            Some(query) => format!("{}?{query}", uri.path()),
            None => uri.path().to_string(),
        };
        Ok(HttpTarget { addr, host, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<(String, String, String), String> {
        let uri: Uri = url.parse().unwrap();
        HttpTarget::of(&uri).map(|t| (t.addr.to_string(), t.host, t.target))
    }

    #[test]
    fn a_check_url_is_dialed_and_asked_as_hyper_would_ask_it() {
        let cases = [
            (
                "http://127.0.0.1:8080/health",
                ("127.0.0.1:8080", "127.0.0.1:8080", "/health"),
            ),
            (
                "http://localhost/h?deep=1",
                ("localhost:80", "localhost", "/h?deep=1"),
            ),
            ("http://svc.local:80/", ("svc.local:80", "svc.local", "/")),
            ("http://h:8080?ready=1", ("h:8080", "h:8080", "/?ready=1")),
            ("http://h:8080", ("h:8080", "h:8080", "/")),
            ("http://[::1]:9000/x", ("[::1]:9000", "[::1]:9000", "/x")),
            (
                "http://0.0.0.0:8080/h",
                ("127.0.0.1:8080", "0.0.0.0:8080", "/h"),
            ),
            ("http://[::]:8080/h", ("[::1]:8080", "[::]:8080", "/h")),
            ("http://user:pw@h:81/h", ("h:81", "h:81", "/h")),
        ];
        for (url, (addr, host, path)) in cases {
            let want = (addr.to_string(), host.to_string(), path.to_string());
            assert_eq!(target(url), Ok(want), "{url}");
            assert!(url.parse::<CheckUrl>().is_ok(), "{url}");
        }
        // A URL the http crate takes but no connect could reach is refused at load.
        assert!(target("http://a..b:80/").is_err());
        assert!("http://a..b:80/".parse::<CheckUrl>().is_err());
        for bad in ["https://h/", "h:80/x", "http:///x"] {
            assert!(bad.parse::<CheckUrl>().is_err(), "{bad}");
        }
    }
}
