//! The `[register.check]` and `[service.health]` tables: each names its probe its own way, and
//! both share the timing fields, read here once.

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::check::{Check, CheckUrl, HealthCheck, HealthProbe, Probe};
use crate::addr::Addr;
use crate::field::{duration, within, FieldResult, HumanDuration, Key};

/// The largest count of results in a row a threshold may ask for (`rise`, `fall`, and an
/// outlier's consecutive failures): above it, noticing anything would take hours.
pub(crate) const MAX_IN_A_ROW: u64 = 1000;
/// A probe that may take over an hour has no timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// What one kind of check allows of its timing.
struct Bounds {
    /// The interval's range.
    interval: RangeInclusive<Duration>,
    /// The interval when none is given.
    default_interval: Duration,
    /// Whether a probe may take longer than the interval.
    timeout_past_interval: bool,
}

/// A registration probes one local instance: as often as every 10 ms is cheap enough.
const REGISTRATION: Bounds = Bounds {
    interval: Duration::from_millis(10)..=Duration::from_secs(3600),
    default_interval: Duration::from_secs(2),
    timeout_past_interval: true,
};

/// Every node probes every instance of the service: more often than every 100 ms loads the
/// instances more than it tells, and a probe that outlasts the interval would overlap the next
/// round.
const INSTANCES: Bounds = Bounds {
    interval: Duration::from_millis(100)..=Duration::from_secs(3600),
    default_interval: Duration::from_secs(5),
    timeout_past_interval: false,
};

/// The timing fields both tables share, as written. (Each table spells them out: toml's spans
/// do not survive `#[serde(flatten)]`.)
struct RawTiming<'a> {
    interval: Option<&'a Spanned<HumanDuration>>,
    timeout: Option<&'a Spanned<HumanDuration>>,
    rise: Option<&'a Spanned<u64>>,
    fall: Option<&'a Spanned<u64>>,
}

impl<'a> RawTiming<'a> {
    fn of(
        interval: &'a Option<Spanned<HumanDuration>>,
        timeout: &'a Option<Spanned<HumanDuration>>,
        rise: &'a Option<Spanned<u64>>,
        fall: &'a Option<Spanned<u64>>,
    ) -> RawTiming<'a> {
        RawTiming {
            interval: interval.as_ref(),
            timeout: timeout.as_ref(),
            rise: rise.as_ref(),
            fall: fall.as_ref(),
        }
    }

    /// A check of `probe` with these timings within `bounds`; `key` names the table.
    fn check<P>(&self, probe: P, bounds: &Bounds, key: &Key) -> FieldResult<Check<P>> {
        let interval = duration(
            self.interval,
            &key.field("interval"),
            bounds.interval.clone(),
            bounds.default_interval,
        )?;
        let longest = match bounds.timeout_past_interval {
            true => MAX_TIMEOUT,
            false => interval,
        };
        let timeout = duration(
            self.timeout,
            &key.field("timeout"),
            Duration::from_millis(1)..=longest,
            Duration::from_secs(1).min(longest),
        )?;
        let in_a_row = |value: Option<&Spanned<u64>>, field: &str, default: u64| {
            within(value, &key.field(field), 1..MAX_IN_A_ROW + 1, default).map(|n| n as u32)
        };
        Ok(Check {
            probe,
            interval,
            timeout,
            rise: in_a_row(self.rise, "rise", 2)?,
            fall: in_a_row(self.fall, "fall", 3)?,
        })
    }
}

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
    rise: Option<Spanned<u64>>,
    fall: Option<Spanned<u64>>,
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
        RawTiming::of(&self.interval, &self.timeout, &self.rise, &self.fall).check(
            probe,
            &REGISTRATION,
            key,
        )
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
        const ONE_OF: &str = "a check is one of tcp = true, http = \"/path\" or grpc = \"service\"";
        let tcp = self.tcp.as_ref().filter(|t| *t.get_ref());
        let probe = match (tcp, &self.http, &self.grpc) {
            (_, Some(http), Some(_)) => return Err(key.at("grpc", http, ONE_OF)),
            (Some(_), None, Some(grpc)) => return Err(key.at("grpc", grpc, ONE_OF)),
            (Some(tcp), Some(_), None) => {
                return Err(key.at(
                    "http",
                    tcp,
                    "a check is either tcp = true or http = \"/path\"",
                ))
            }
            (None, None, Some(grpc)) => HealthProbe::Grpc(grpc.get_ref().clone()),
            (None, Some(path), None) if !is_path(path.get_ref()) => {
                return Err(key.at(
                    "http",
                    path,
                    format!(
                        "http = {:?} must be a path, like \"/healthz\"",
                        path.get_ref()
                    ),
                ))
            }
            (None, Some(path), None) => HealthProbe::Http(path.get_ref().clone()),
            (Some(_), None, None) => HealthProbe::Tcp,
            (None, None, None) => return Ok(None),
        };
        RawTiming::of(&self.interval, &self.timeout, &self.rise, &self.fall)
            .check(probe, &INSTANCES, key)
            .map(Some)
    }
}

/// Whether `path` can go in a request line as it is.
fn is_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.chars().any(|c| c.is_whitespace() || c.is_control())
        && path.parse::<http::uri::PathAndQuery>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(table: &str) -> FieldResult<Check> {
        let raw: RawCheck = toml::from_str(table).unwrap();
        raw.validate(&Key::indexed("register", 0).field("check"), 0..0)
    }

    fn instances(table: &str) -> FieldResult<Option<HealthCheck>> {
        let raw: RawHealth = toml::from_str(table).unwrap();
        raw.validate(&Key::indexed("service", 0).field("health"))
    }

    #[test]
    fn both_tables_read_their_timing_alike_within_their_own_bounds() {
        let r = registration("tcp = \"127.0.0.1:9\"\n").unwrap();
        let i = instances("tcp = true\n").unwrap().unwrap();
        assert_eq!(
            (r.interval, r.timeout, r.rise, r.fall),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
        );
        assert_eq!(
            (i.interval, i.timeout, i.rise, i.fall),
            (Duration::from_secs(5), Duration::from_secs(1), 2, 3)
        );
        let timing = "interval = \"50ms\"\ntimeout = \"3s\"\nrise = 1000\nfall = 7\n";
        let r = registration(&format!("tcp = \"127.0.0.1:9\"\n{timing}")).unwrap();
        assert_eq!(
            (r.interval, r.timeout, r.rise, r.fall),
            (Duration::from_millis(50), Duration::from_secs(3), 1000, 7),
            "a registration may probe often, and for longer than its interval"
        );
        let e = instances(&format!("tcp = true\n{timing}")).unwrap_err();
        assert_eq!(e.key, "service[0].health.interval", "{e:?}");
        assert!(e.message.contains("at least 100ms"), "{e:?}");
        let e = instances("tcp = true\ninterval = \"1s\"\ntimeout = \"2s\"\n").unwrap_err();
        assert_eq!(e.key, "service[0].health.timeout", "{e:?}");
        for (field, value) in [("rise", 0), ("fall", 0), ("rise", 1001), ("fall", 1001)] {
            let e =
                registration(&format!("tcp = \"127.0.0.1:9\"\n{field} = {value}\n")).unwrap_err();
            assert_eq!(e.key, format!("register[0].check.{field}"), "{e:?}");
            assert!(e.message.contains("outside 1..=1000"), "{e:?}");
            let e = instances(&format!("tcp = true\n{field} = {value}\n")).unwrap_err();
            assert_eq!(e.key, format!("service[0].health.{field}"), "{e:?}");
        }
    }
}
