//! How a service's instances are judged: passive ejection (`[service.outlier]`) and active
//! health checks (`[service.health]`).

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::field::{duration, within, FieldResult, HumanDuration, Key};
use crate::snapshot::Outlier;

/// What an active check probes on each instance.
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

/// Active health checks of every instance of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is probed.
    pub probe: HealthProbe,
    /// Time between two probes of one instance (each carries ±10% jitter).
    pub interval: Duration,
    /// Time one probe may take before it counts as failed.
    pub timeout: Duration,
    /// Passes in a row that bring a failing instance back.
    pub rise: u32,
    /// Failures in a row that take an instance out.
    pub fall: u32,
}

/// Ejections shorter than a second are noise; longer than a day, an instance is as good as gone.
const EJECTION_TIME: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
/// As for registration checks: more often than every 100 ms loads the instances more than it
/// tells; less often than hourly is no check.
const INTERVAL: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(3600);
/// A failure threshold above this would take hours to notice anything.
const MAX_IN_A_ROW: u64 = 1000;

/// A `[service.outlier]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    consecutive_failures: Option<Spanned<u64>>,
    consecutive_5xx: Option<Spanned<u64>>,
    base_ejection_time: Option<Spanned<HumanDuration>>,
    max_ejection_time: Option<Spanned<HumanDuration>>,
    max_ejection_percent: Option<Spanned<u64>>,
}

impl RawOutlier {
    /// The ejection rules; `key` is `service[i].outlier`.
    pub(crate) fn validate(&self, key: &Key) -> FieldResult<Outlier> {
        let d = Outlier::default();
        let count = |value: &Option<Spanned<u64>>, field: &str, default: u32| {
            within(
                value.as_ref(),
                &key.field(field),
                0..MAX_IN_A_ROW + 1,
                default.into(),
            )
            .map(|n| n as u32)
        };
        let base = duration(
            self.base_ejection_time.as_ref(),
            &key.field("base_ejection_time"),
            EJECTION_TIME,
            Duration::from_millis(d.base_ejection_ms),
        )?;
        let max = duration(
            self.max_ejection_time.as_ref(),
            &key.field("max_ejection_time"),
            EJECTION_TIME,
            Duration::from_millis(d.max_ejection_ms).max(base),
        )?;
        if max < base {
            let span = self.max_ejection_time.as_ref().map(Spanned::span);
            return Err(key.field("max_ejection_time").error(
                span,
                format!(
                    "max_ejection_time ({}) is shorter than base_ejection_time ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(base)
                ),
            ));
        }
        Ok(Outlier {
            consecutive_failures: count(
                &self.consecutive_failures,
                "consecutive_failures",
                d.consecutive_failures,
            )?,
            consecutive_5xx: count(&self.consecutive_5xx, "consecutive_5xx", d.consecutive_5xx)?,
            base_ejection_ms: base.as_millis() as u64,
            max_ejection_ms: max.as_millis() as u64,
            max_ejection_percent: within(
                self.max_ejection_percent.as_ref(),
                &key.field("max_ejection_percent"),
                0..101,
                d.max_ejection_percent.into(),
            )? as u32,
        })
    }
}

/// A `[service.health]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    tcp: Option<Spanned<bool>>,
    http: Option<Spanned<String>>,
    grpc: Option<Spanned<String>>,
    interval: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    rise: Option<Spanned<u64>>,
    fall: Option<Spanned<u64>>,
}

impl RawHealth {
    /// The check, or none when `tcp = false` and neither `http` nor `grpc`; `key` is
    /// `service[i].health`.
    pub(crate) fn validate(&self, key: &Key) -> FieldResult<Option<HealthCheck>> {
        if let (Some(http), Some(_)) = (&self.http, &self.grpc) {
            return Err(key.at(
                "grpc",
                http,
                "a check is one of tcp = true, http = \"/path\" or grpc = \"service\"",
            ));
        }
        if let (Some(tcp), Some(grpc)) = (&self.tcp, &self.grpc) {
            if *tcp.get_ref() {
                return Err(key.at(
                    "grpc",
                    grpc,
                    "a check is one of tcp = true, http = \"/path\" or grpc = \"service\"",
                ));
            }
        }
        let probe = match (&self.tcp, &self.http) {
            _ if self.grpc.is_some() => HealthProbe::Grpc(
                self.grpc
                    .as_ref()
                    .map(|g| g.get_ref().clone())
                    .unwrap_or_default(),
            ),
            (Some(tcp), Some(_)) if *tcp.get_ref() => {
                return Err(key.at(
                    "http",
                    tcp,
                    "a check is either tcp = true or http = \"/path\"",
                ))
            }
            (_, Some(path))
                if !path.get_ref().starts_with('/')
                    || path
                        .get_ref()
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control())
                    || path.get_ref().parse::<http::uri::PathAndQuery>().is_err() =>
            {
                return Err(key.at(
                    "http",
                    path,
                    format!(
                        "http = {:?} must be a path, like \"/healthz\"",
                        path.get_ref()
                    ),
                ))
            }
            (_, Some(path)) => HealthProbe::Http(path.get_ref().clone()),
            (Some(tcp), None) if *tcp.get_ref() => HealthProbe::Tcp,
            _ => return Ok(None),
        };
        let interval = duration(
            self.interval.as_ref(),
            &key.field("interval"),
            INTERVAL,
            Duration::from_secs(5),
        )?;
        let timeout = duration(
            self.timeout.as_ref(),
            &key.field("timeout"),
            Duration::from_millis(1)..=interval,
            Duration::from_secs(1).min(interval),
        )?;
        let in_a_row = |value: &Option<Spanned<u64>>, field: &str, default: u64| {
            within(
                value.as_ref(),
                &key.field(field),
                1..MAX_IN_A_ROW + 1,
                default,
            )
            .map(|n| n as u32)
        };
        Ok(Some(HealthCheck {
            probe,
            interval,
            timeout,
            rise: in_a_row(&self.rise, "rise", 2)?,
            fall: in_a_row(&self.fall, "fall", 3)?,
        }))
    }
}
