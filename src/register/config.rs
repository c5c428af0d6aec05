//! What to register: [`Registration`]s, from `[[register]]` blocks or built by library users, and
//! the lease TTL they share.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::addr::Addr;
use crate::field::{check_duration, FieldResult, HumanDuration, Key, Lines};
use crate::health::check::Check;
use crate::health::config::RawCheck;
use crate::parsed::deserialize_from_str;
use crate::registry::{Endpoint, Format, InstanceId, ServiceName};

/// One instance to register.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// The service it belongs to.
    pub service: String,
    /// Its instance id, unique within the service.
    pub id: String,
    /// What the registry value says: address, format, and weight, zone or metadata.
    pub endpoint: Endpoint,
    /// When set, the instance is registered only while this check passes.
    pub check: Option<Check>,
}

impl Registration {
    /// An instance with no health check.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        endpoint: Endpoint,
    ) -> Registration {
        Registration {
            service: service.into(),
            id: id.into(),
            endpoint,
            check: None,
        }
    }

    /// Registers the instance only while `check` passes.
    pub fn with_check(mut self, check: Check) -> Registration {
        self.check = Some(check);
        self
    }

    /// `service/id`, for logs.
    pub fn label(&self) -> String {
        format!("{}/{}", self.service, self.id)
    }
}

/// The default instance id: `<hostname>-<port>`.
pub fn default_id(addr: &Addr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}-{}", addr.port())
}

/// The shortest lease etcd grants; shorter requests get this much anyway.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// A dead process's keys linger for the TTL: a day is already far beyond useful, and etcd
/// refuses TTLs near its own limit with an error cairn could only retry.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A lease TTL: a dead process leaves the registry within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Duration);

impl Default for Ttl {
    /// Ten seconds: a dead process leaves the registry quickly without keepalives every instant.
    fn default() -> Self {
        Ttl(Duration::from_secs(10))
    }
}

impl FromStr for Ttl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let HumanDuration(d) = s.parse()?;
        if d < MIN_TTL {
            return Err(format!(
                "ttl must be at least {} (etcd's shortest lease)",
                humantime::format_duration(MIN_TTL)
            ));
        }
        check_duration(d, &(MIN_TTL..=MAX_TTL))
            .map(Ttl)
            .map_err(|m| format!("ttl {m}"))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

deserialize_from_str!(Ttl);

/// One `[[register]]` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegister {
    service: Spanned<ServiceName>,
    id: Option<InstanceId>,
    addr: Addr,
    ttl: Option<Spanned<Ttl>>,
    format: Option<Format>,
    weight: Option<Spanned<u32>>,
    zone: Option<Spanned<String>>,
    metadata: Option<Spanned<toml::Table>>,
    check: Option<RawCheck>,
}

/// The registrations of every `[[register]]` block and the TTL of the lease they share.
///
/// # Errors
/// A block whose keys contradict its format, an instance registered twice, or blocks whose
/// `ttl`s differ (they share one lease).
pub(crate) fn validate(
    raws: Vec<RawRegister>,
    lines: Lines<'_>,
) -> FieldResult<(Vec<Registration>, Ttl)> {
    let mut out = Vec::with_capacity(raws.len());
    let mut ttl: Option<(Ttl, usize)> = None;
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let key = Key::indexed("register", i);
        let line = lines.of(raw.service.span().start);
        let service = raw.service.get_ref().to_string();
        let id = match &raw.id {
            Some(id) => id.to_string(),
            None => default_id(&raw.addr),
        };
        if let Some(first) = seen.insert((service.clone(), id.clone()), line) {
            return Err(key.at(
                "id",
                &raw.service,
                format!("instance \"{service}/{id}\" is already registered at line {first}"),
            ));
        }
        let this_ttl = raw.ttl.as_ref().map_or_else(Ttl::default, |t| *t.get_ref());
        match ttl {
            None => ttl = Some((this_ttl, i)),
            Some((first, j)) if first != this_ttl => {
                let span = raw.ttl.as_ref().map_or(raw.service.span(), Spanned::span);
                return Err(key.field("ttl").error(
                    Some(span),
                    format!(
                        "all registrations share one lease, so their ttl must match: register[{j}] has {first}, this one {this_ttl}"
                    ),
                ));
            }
            Some(_) => {}
        }
        out.push(raw.into_registration(service, id, &key)?);
    }
    Ok((out, ttl.map_or_else(Ttl::default, |(t, _)| t)))
}

impl RawRegister {
    fn into_registration(
        self,
        service: String,
        id: String,
        key: &Key,
    ) -> FieldResult<Registration> {
        let format = self.format.unwrap_or(Format::Plain);
        if format != Format::Json {
            let json_only = [
                ("weight", self.weight.as_ref().map(Spanned::span)),
                ("zone", self.zone.as_ref().map(Spanned::span)),
            ];
            if let Some((field, span)) = json_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(key.field(field).error(
                    span,
                    format!("{field} is written only by format = \"json\" (this block has \"{format}\")"),
                ));
            }
        }
        if let (Format::Plain, Some(m)) = (format, &self.metadata) {
            return Err(key.at(
                "metadata",
                m,
                "metadata is written only by format = \"json\" or \"etcd-endpoints\"",
            ));
        }
        let mut endpoint = Endpoint::new(self.addr, format);
        endpoint.weight = self.weight.map_or(1, Spanned::into_inner);
        endpoint.zone = self.zone.map(|z| z.into_inner().into_boxed_str());
        if let Some(m) = &self.metadata {
            endpoint.metadata = serde_json::to_value(m.get_ref())
                .map_err(|e| key.at("metadata", m, format!("cannot be written as JSON: {e}")))?;
        }
        let check = match self.check {
            Some(c) => Some(c.validate(&key.field("check"), self.service.span())?),
            None => None,
        };
        Ok(Registration {
            service,
            id,
            endpoint,
            check,
        })
    }
}
