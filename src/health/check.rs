//! What a check is: what it probes, how often, and the thresholds of its [`Streak`]. A
//! registration's check names its target ([`Probe`]); a service's check of its discovered
//! instances names what to ask of each ([`HealthProbe`]).
//!
//! [`Streak`]: super::streak::Streak

use std::fmt;
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
        Ok(CheckUrl(uri))
    }
}

deserialize_from_str!(CheckUrl);
