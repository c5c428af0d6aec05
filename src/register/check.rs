//! Health checks that gate a registration: TCP connect, HTTP 2xx, or a command's exit status.
//!
//! A check starts unhealthy, so an instance is registered only once it has passed `rise` times in
//! a row, and is deregistered after `fall` failures in a row.

use std::fmt;
use std::ops::Range;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toml::Spanned;
use tracing::{debug, info, warn};

use crate::addr::Addr;
use crate::field::{deserialize_from_str, duration, FieldResult, HumanDuration, Key};
use crate::net::{grpc_health, OwnAddrs};

/// What a check probes.
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

/// A health check and its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is probed.
    pub probe: Probe,
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// Time one probe may take before it counts as a failure.
    pub timeout: Duration,
    /// Passes in a row before an unhealthy instance is (re)registered.
    pub rise: u32,
    /// Failures in a row before a healthy instance is deregistered.
    pub fall: u32,
}

impl Check {
    /// A check of `probe` with the defaults: every 2 s, 1 s timeout, rise 2, fall 3.
    pub fn new(probe: Probe) -> Check {
        Check {
            probe,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }

    /// Probes until `stop`, sending `(index, healthy)` to `changes` on every change of state.
    /// `healthy` is where it starts: a new check starts unhealthy, one restarted by a reload
    /// keeps what it found.
    pub(crate) fn spawn(
        self,
        index: usize,
        label: String,
        healthy: bool,
        changes: mpsc::Sender<(usize, bool)>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut prober = Prober::default();
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut state = State::new(self.rise, self.fall);
            state.healthy = healthy;
            let mut told_waiting = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tokio::time::timeout(self.timeout, prober.probe(&self.probe)) => {
                        r.unwrap_or_else(|_| Err(format!("no answer within {}", humantime::format_duration(self.timeout))))
                    }
                };
                let passed = result.is_ok();
                let flipped = state.record(passed);
                match flipped {
                    Some(true) => {
                        info!(instance = %label, check = %self.probe, "health check passing, registering")
                    }
                    Some(false) => warn!(
                        instance = %label,
                        check = %self.probe,
                        error = result.as_ref().err().map(String::as_str).unwrap_or(""),
                        "health check failing, deregistering"
                    ),
                    None if !passed && !state.healthy && !told_waiting => {
                        told_waiting = true;
                        warn!(
                            instance = %label,
                            check = %self.probe,
                            error = result.as_ref().err().map(String::as_str).unwrap_or(""),
                            "health check failing, not registered until it passes"
                        );
                    }
                    None => debug!(instance = %label, passed, "health check"),
                }
                if let Some(healthy) = flipped {
                    if changes.send((index, healthy)).await.is_err() {
                        return;
                    }
                }
            }
        })
    }
}

/// Probes more often than every 10 ms load the checked service more than they tell; an interval
/// over an hour is a check that never runs.
const INTERVAL: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);
/// The connect of a gRPC probe: the check's timeout bounds the whole probe anyway.
const GRPC_CONNECT: Duration = Duration::from_secs(3600);

/// A probe that may take over an hour has no timeout.
const TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);

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

/// A `[register.check]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    tcp: Option<Spanned<Addr>>,
    http: Option<Spanned<CheckUrl>>,
    exec: Option<Spanned<Vec<String>>>,
    grpc: Option<Spanned<Addr>>,
    grpc_service: Option<Spanned<String>>,
    interval: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
}

impl RawCheck {
    /// The check; `block` locates the `[[register]]` block when no probe is given.
    pub(crate) fn validate(self, key: &Key, block: Range<usize>) -> FieldResult<Check> {
        let given: Vec<Range<usize>> = [
            self.tcp.as_ref().map(Spanned::span),
            self.http.as_ref().map(Spanned::span),
            self.exec.as_ref().map(Spanned::span),
            self.grpc.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            return Err(key.field("tcp").error(
                Some(given.get(1).cloned().unwrap_or(block)),
                "a check needs exactly one of tcp, http, exec or grpc",
            ));
        }
        if let (None, Some(service)) = (&self.grpc, &self.grpc_service) {
            return Err(key.at(
                "grpc_service",
                service,
                "grpc_service names the service a grpc check asks about; set grpc = \"host:port\" too",
            ));
        }
        let grpc = self.grpc.map(|addr| {
            let service = self.grpc_service.map(Spanned::into_inner);
            Probe::Grpc(addr.into_inner(), service.unwrap_or_default())
        });
        let probe = match (grpc, self.tcp, self.http, self.exec) {
            (Some(grpc), ..) => grpc,
            (_, Some(addr), _, _) => Probe::Tcp(addr.into_inner()),
            (_, _, Some(url), _) => Probe::Http(url.into_inner().0),
            (_, _, _, Some(argv)) if argv.get_ref().first().is_none_or(|p| p.is_empty()) => {
                return Err(key.at(
                    "exec",
                    &argv,
                    "needs a program, like [\"/usr/local/bin/probe\", \"--quick\"]",
                ))
            }
            (_, _, _, Some(argv)) => Probe::Exec(argv.into_inner()),
            (None, None, None, None) => unreachable!("exactly one probe was given"),
        };
        let mut check = Check::new(probe);
        check.interval = duration(
            self.interval.as_ref(),
            &key.field("interval"),
            INTERVAL,
            check.interval,
        )?;
        check.timeout = duration(
            self.timeout.as_ref(),
            &key.field("timeout"),
            TIMEOUT,
            check.timeout,
        )?;
        for (field, value, slot) in [
            ("rise", &self.rise, &mut check.rise),
            ("fall", &self.fall, &mut check.fall),
        ] {
            match value {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(key.at(field, n, format!("{field} must be at least 1")))
                }
                Some(n) => *slot = *n.get_ref(),
                None => {}
            }
        }
        Ok(check)
    }
}

/// The rise/fall state machine of one check.
#[derive(Debug)]
struct State {
    rise: u32,
    fall: u32,
    healthy: bool,
    passes: u32,
    failures: u32,
}

impl State {
    fn new(rise: u32, fall: u32) -> State {
        State {
            rise,
            fall,
            healthy: false,
            passes: 0,
            failures: 0,
        }
    }

    /// Records one probe; returns the new state when it flipped.
    fn record(&mut self, passed: bool) -> Option<bool> {
        if passed {
            self.passes += 1;
            self.failures = 0;
            if !self.healthy && self.passes >= self.rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.passes = 0;
            if self.healthy && self.failures >= self.fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Runs probes; holds what it reuses between them.
#[derive(Default)]
struct Prober {
    /// Created on the first HTTP probe and reused, so probes share pooled connections.
    http: Option<Client<HttpConnector, Empty<Bytes>>>,
}

impl Prober {
    async fn probe(&mut self, probe: &Probe) -> Result<(), String> {
        match probe {
            Probe::Tcp(addr) => crate::net::connect(addr)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Probe::Http(uri) => {
                let client = self
                    .http
                    .get_or_insert_with(|| Client::builder(TokioExecutor::new()).build_http());
                let resp = client.get(uri.clone()).await.map_err(|e| {
                    let mut text = e.to_string();
                    let mut cause = std::error::Error::source(&e);
                    while let Some(c) = cause {
                        text = format!("{text}: {c}");
                        cause = c.source();
                    }
                    text
                })?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("answered {}", resp.status()))
                }
            }
            // The check's own timeout bounds the probe; the connect gets as long.
            Probe::Grpc(addr, service) => {
                grpc_health::check(addr, service, GRPC_CONNECT, &OwnAddrs::default()).await
            }
            Probe::Exec(argv) => {
                let (program, args) = argv.split_first().ok_or("empty command")?;
                let status = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| format!("cannot run {program}: {e}"))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("{program} exited with {status}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_count_results_in_a_row() {
        let mut s = State::new(2, 3);
        assert_eq!(s.record(true), None, "one pass is not enough to rise");
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(true), Some(true));
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), None, "a pass resets the failure count");
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), Some(false));
        assert_eq!(s.record(false), None, "already down");
    }

    #[tokio::test]
    async fn probes_tell_healthy_from_unhealthy() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = Probe::Tcp(Addr::Ip(listener.local_addr().unwrap()));
        assert_eq!(Prober::default().probe(&open).await, Ok(()));
        drop(listener);
        assert!(Prober::default().probe(&open).await.is_err());

        let ok = Probe::Exec(vec!["true".into()]);
        assert_eq!(Prober::default().probe(&ok).await, Ok(()));
        let bad = Probe::Exec(vec!["false".into()]);
        assert!(Prober::default()
            .probe(&bad)
            .await
            .unwrap_err()
            .contains("exited"));
        let missing = Probe::Exec(vec!["/nonexistent/probe".into()]);
        assert!(Prober::default()
            .probe(&missing)
            .await
            .unwrap_err()
            .contains("cannot run"));
    }
}
