//! The TOML configuration file: parsing, validation and the typed settings the rest of cairn reads.
//!
//! Every mistake is reported as one [`ConfigError`] naming the file, the line and the key, so
//! `cairn check` and `cairn run` can print a single line an operator can act on.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

pub use crate::balance::Balance;
use crate::register::{Check, Probe, Registration, MIN_TTL};
use crate::registry::{Addr, Endpoint, Format};

/// The whole configuration of one cairn process.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach etcd and where the registry lives in it.
    pub etcd: EtcdConfig,
    /// The admin HTTP endpoint.
    pub admin: AdminConfig,
    /// One local listener per service applications dial.
    pub services: Vec<ServiceConfig>,
    /// HTTP listeners that route by Host header to any service.
    pub gateways: Vec<GatewayConfig>,
    /// This node's own instances, registered in etcd under one lease.
    pub registrations: Vec<Registration>,
    /// The TTL of the lease every registration shares.
    pub lease_ttl: Duration,
}

impl Default for Config {
    /// Defaults for every section, no listeners and no registrations.
    fn default() -> Self {
        Config {
            etcd: EtcdConfig::default(),
            admin: AdminConfig::default(),
            services: Vec::new(),
            gateways: Vec::new(),
            registrations: Vec::new(),
            lease_ttl: DEFAULT_TTL,
        }
    }
}

/// The `[etcd]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members; they share one balanced channel.
    pub endpoints: Vec<String>,
    /// Key prefix of the registry; always ends with `/`.
    pub prefix: String,
    /// How long one connection attempt to a member may take.
    pub dial_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/services/".to_string(),
            dial_timeout: Duration::from_secs(5),
        }
    }
}

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where `/healthz`, `/readyz`, `/services` and `/metrics` are served.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }
    }
}

/// How a listener speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Bytes are relayed; one instance is picked per connection.
    Tcp,
    /// HTTP/1.1 and h2c are proxied; one instance is picked per request.
    Http,
}

impl Protocol {
    /// The name used in config files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// One `[[service]]` block: a local port forwarding to a registered service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The service name, as it appears in registry keys.
    pub name: String,
    /// The local address applications dial.
    pub listen: SocketAddr,
    /// The protocol spoken on `listen`.
    pub protocol: Protocol,
    /// How connections and requests reach the service's instances; gateways use it too.
    pub route: RouteConfig,
    /// Limits of the listener.
    pub limits: Limits,
}

/// How connections or requests reach the instances of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The picking policy.
    pub balance: Balance,
    /// How long a connect to one instance may take before another is tried.
    pub connect_timeout: Duration,
    /// How many other instances are tried when a connect fails.
    pub retries: u32,
    /// HTTP: how long an instance may take to send response headers.
    pub request_timeout: Duration,
    /// HTTP: send the instance's address as Host instead of the client's Host.
    pub rewrite_host: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            retries: 2,
            request_timeout: Duration::from_secs(30),
            rewrite_host: false,
        }
    }
}

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// HTTP: how long a kept-alive client connection may sit idle (or take to send headers).
    pub idle_timeout: Duration,
    /// HTTP: the largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// One `[[gateway]]` block: an HTTP port that routes each request by its Host header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The local address clients dial.
    pub listen: SocketAddr,
    /// Stripped from the Host (after its port) to get the service name, e.g. `.svc.local`.
    pub host_suffix: Option<String>,
    /// Limits of the listener.
    pub limits: Limits,
}

/// A configuration mistake, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file that holds the mistake.
    pub path: PathBuf,
    /// 1-based line of the mistake, when it can be located.
    pub line: Option<usize>,
    /// The dotted key at fault, such as `service[1].listen`, when known.
    pub key: Option<String>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] when the file cannot be read, is not valid TOML, has unknown keys or
    /// values of the wrong kind, or breaks a rule checked across blocks (duplicate names, ports).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    ///
    /// # Errors
    /// As for [`Config::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let located = Locator { text, path };
        let de = toml::Deserializer::parse(text).map_err(|e| located.toml_error(&e, None))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = (key != ".").then_some(key);
            located.toml_error(e.inner(), key)
        })?;
        raw.validate(&located)
    }
}

/// Turns byte offsets into line numbers for error messages.
struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            key: Some(key.to_string()),
            message,
        }
    }

    fn toml_error(&self, e: &toml::de::Error, key: Option<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: e.span().map(|s| self.line_of(s.start)),
            key,
            message: e.message().trim().to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    etcd: RawEtcd,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    #[serde(default, rename = "gateway")]
    gateways: Vec<RawGateway>,
    #[serde(default, rename = "register")]
    registrations: Vec<RawRegister>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    service: Spanned<String>,
    #[serde(default)]
    id: Option<Spanned<String>>,
    addr: Spanned<String>,
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Spanned<Duration>>,
    #[serde(default)]
    format: Option<Spanned<String>>,
    #[serde(default)]
    weight: Option<Spanned<u32>>,
    #[serde(default)]
    zone: Option<Spanned<String>>,
    #[serde(default)]
    metadata: Option<Spanned<toml::Table>>,
    #[serde(default)]
    check: Option<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(default)]
    tcp: Option<Spanned<String>>,
    #[serde(default)]
    http: Option<Spanned<String>>,
    #[serde(default)]
    exec: Option<Spanned<Vec<String>>>,
    #[serde(default, deserialize_with = "duration")]
    interval: Option<Spanned<Duration>>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Spanned<Duration>>,
    #[serde(default)]
    rise: Option<Spanned<u32>>,
    #[serde(default)]
    fall: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Option<Spanned<Vec<String>>>,
    prefix: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "duration")]
    dial_timeout: Option<Spanned<Duration>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default, deserialize_with = "socket_addr")]
    listen: Option<Spanned<SocketAddr>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    #[serde(deserialize_with = "required_socket_addr")]
    listen: Spanned<SocketAddr>,
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    balance: Option<Balance>,
    #[serde(default, deserialize_with = "duration")]
    connect_timeout: Option<Spanned<Duration>>,
    #[serde(default)]
    retries: Option<Spanned<u32>>,
    #[serde(default, deserialize_with = "duration")]
    request_timeout: Option<Spanned<Duration>>,
    #[serde(default)]
    rewrite_host: Option<bool>,
    #[serde(default)]
    max_connections: Option<Spanned<u64>>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Spanned<Duration>>,
    #[serde(default)]
    max_header_bytes: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    #[serde(deserialize_with = "required_socket_addr")]
    listen: Spanned<SocketAddr>,
    #[serde(default)]
    host_suffix: Option<Spanned<String>>,
    #[serde(default)]
    max_connections: Option<Spanned<u64>>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Spanned<Duration>>,
    #[serde(default)]
    max_header_bytes: Option<Spanned<u64>>,
}

/// The most instances a connection may try: the first pick plus this many retries. Beyond a
/// handful, a client waits `connect_timeout` per dead instance, which is worse than failing.
const MAX_RETRIES: u32 = 16;

/// hyper's smallest read buffer; a smaller header limit cannot be enforced.
const MIN_HEADER_BYTES: u64 = 8192;
/// Far above any legitimate request head, low enough that one client cannot pin much memory.
const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// A listener cap above this is a typo: each connection holds two descriptors.
const MAX_CONNECTIONS: u64 = 1_000_000;

/// Listen addresses already taken, with who took them and where.
struct Listens(HashMap<SocketAddr, (String, usize)>);

impl Listens {
    fn claim(
        &mut self,
        listen: &Spanned<SocketAddr>,
        owner: String,
        at: &Locator<'_>,
        key: &str,
    ) -> Result<(), ConfigError> {
        let addr = *listen.get_ref();
        if let Some((first, line)) = self.0.get(&addr) {
            let first = if *line == 0 {
                first.clone()
            } else {
                format!("{first} at line {line}")
            };
            return Err(at.error(
                Some(listen.span()),
                key,
                format!("listen address {addr} is already used by {first}"),
            ));
        }
        self.0
            .insert(addr, (owner, at.line_of(listen.span().start)));
        Ok(())
    }
}

impl RawConfig {
    fn validate(self, at: &Locator<'_>) -> Result<Config, ConfigError> {
        let etcd = self.etcd.validate(at)?;
        let admin = AdminConfig {
            listen: self
                .admin
                .listen
                .map(Spanned::into_inner)
                .unwrap_or_else(|| AdminConfig::default().listen),
        };

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut listens = Listens(HashMap::from([(admin.listen, ("[admin]".to_string(), 0))]));
        let mut services = Vec::with_capacity(self.services.len());
        for (i, raw) in self.services.iter().enumerate() {
            let key = |field: &str| format!("service[{i}].{field}");
            let name = raw.name.get_ref();
            check_service_name(name)
                .map_err(|m| at.error(Some(raw.name.span()), &key("name"), m))?;
            let line = at.line_of(raw.name.span().start);
            if let Some(first) = names.insert(name, line) {
                return Err(at.error(
                    Some(raw.name.span()),
                    &key("name"),
                    format!("duplicate service name \"{name}\" (first defined at line {first})"),
                ));
            }
            listens.claim(
                &raw.listen,
                format!("service \"{name}\""),
                at,
                &key("listen"),
            )?;
            let protocol = raw.protocol.unwrap_or(Protocol::Tcp);
            if protocol == Protocol::Tcp {
                let http_only = [
                    ("idle_timeout", raw.idle_timeout.as_ref().map(Spanned::span)),
                    (
                        "max_header_bytes",
                        raw.max_header_bytes.as_ref().map(Spanned::span),
                    ),
                ];
                if let Some((field, span)) = http_only.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(at.error(
                        span,
                        &key(field),
                        "applies only to protocol = \"http\" listeners".to_string(),
                    ));
                }
            }
            let defaults = RouteConfig::default();
            let route = RouteConfig {
                balance: raw.balance.unwrap_or(defaults.balance),
                connect_timeout: positive(
                    raw.connect_timeout.as_ref(),
                    at,
                    &key("connect_timeout"),
                )?
                .unwrap_or(defaults.connect_timeout),
                retries: match &raw.retries {
                    None => defaults.retries,
                    Some(r) if *r.get_ref() > MAX_RETRIES => {
                        return Err(at.error(
                            Some(r.span()),
                            &key("retries"),
                            format!(
                                "retries = {} is more than the allowed {MAX_RETRIES}",
                                r.get_ref()
                            ),
                        ))
                    }
                    Some(r) => *r.get_ref(),
                },
                request_timeout: positive(
                    raw.request_timeout.as_ref(),
                    at,
                    &key("request_timeout"),
                )?
                .unwrap_or(defaults.request_timeout),
                rewrite_host: raw.rewrite_host.unwrap_or(defaults.rewrite_host),
            };
            let limits = limits(
                &raw.max_connections,
                &raw.idle_timeout,
                &raw.max_header_bytes,
                at,
                &key,
            )?;
            services.push(ServiceConfig {
                name: name.clone(),
                listen: *raw.listen.get_ref(),
                protocol,
                route,
                limits,
            });
        }

        let mut gateways = Vec::with_capacity(self.gateways.len());
        for (i, raw) in self.gateways.iter().enumerate() {
            let key = |field: &str| format!("gateway[{i}].{field}");
            listens.claim(&raw.listen, format!("gateway[{i}]"), at, &key("listen"))?;
            let host_suffix = match &raw.host_suffix {
                None => None,
                Some(s) if s.get_ref().len() < 2 || !s.get_ref().starts_with('.') => {
                    return Err(at.error(
                        Some(s.span()),
                        &key("host_suffix"),
                        format!(
                            "host_suffix \"{}\" must start with '.', like \".svc.local\"",
                            s.get_ref()
                        ),
                    ))
                }
                Some(s) => Some(s.get_ref().to_ascii_lowercase()),
            };
            gateways.push(GatewayConfig {
                listen: *raw.listen.get_ref(),
                host_suffix,
                limits: limits(
                    &raw.max_connections,
                    &raw.idle_timeout,
                    &raw.max_header_bytes,
                    at,
                    &key,
                )?,
            });
        }
        let (registrations, lease_ttl) = validate_registrations(&self.registrations, at)?;
        Ok(Config {
            etcd,
            admin,
            services,
            gateways,
            registrations,
            lease_ttl,
        })
    }
}

/// The default lease TTL: a dead process leaves the registry within ten seconds.
const DEFAULT_TTL: Duration = Duration::from_secs(10);

fn validate_registrations(
    raws: &[RawRegister],
    at: &Locator<'_>,
) -> Result<(Vec<Registration>, Duration), ConfigError> {
    let mut out = Vec::with_capacity(raws.len());
    let mut ttl: Option<(Duration, usize)> = None;
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for (i, raw) in raws.iter().enumerate() {
        let key = |field: &str| format!("register[{i}].{field}");
        let service = raw.service.get_ref();
        check_service_name(service)
            .map_err(|m| at.error(Some(raw.service.span()), &key("service"), m))?;
        let addr: Addr = raw
            .addr
            .get_ref()
            .parse()
            .map_err(|m| at.error(Some(raw.addr.span()), &key("addr"), m))?;
        let id = match &raw.id {
            Some(id) => {
                check_instance_id(id.get_ref())
                    .map_err(|m| at.error(Some(id.span()), &key("id"), m))?;
                id.get_ref().clone()
            }
            None => crate::register::default_id(&addr),
        };
        let line = at.line_of(raw.service.span().start);
        if let Some(first) = seen.insert((service.clone(), id.clone()), line) {
            return Err(at.error(
                Some(raw.service.span()),
                &key("id"),
                format!("instance \"{service}/{id}\" is already registered at line {first}"),
            ));
        }
        let this_ttl = match &raw.ttl {
            Some(t) if *t.get_ref() < MIN_TTL => {
                return Err(at.error(
                    Some(t.span()),
                    &key("ttl"),
                    format!(
                        "ttl must be at least {} (etcd's shortest lease)",
                        humantime::format_duration(MIN_TTL)
                    ),
                ))
            }
            Some(t) => *t.get_ref(),
            None => DEFAULT_TTL,
        };
        match ttl {
            None => ttl = Some((this_ttl, i)),
            Some((first, j)) if first != this_ttl => {
                return Err(at.error(
                    raw.ttl.as_ref().map(Spanned::span).or(Some(raw.service.span())),
                    &key("ttl"),
                    format!(
                        "all registrations share one lease, so their ttl must match: register[{j}] has {}, this one {}",
                        humantime::format_duration(first),
                        humantime::format_duration(this_ttl)
                    ),
                ))
            }
            Some(_) => {}
        }
        let format = match &raw.format {
            None => Format::Plain,
            Some(f) => f
                .get_ref()
                .parse()
                .map_err(|m| at.error(Some(f.span()), &key("format"), m))?,
        };
        let json_only = [
            ("weight", raw.weight.as_ref().map(Spanned::span)),
            ("zone", raw.zone.as_ref().map(Spanned::span)),
        ];
        if format != Format::Json {
            if let Some((field, span)) = json_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(at.error(
                    span,
                    &key(field),
                    format!("{field} is written only by format = \"json\" (this block has \"{format}\")"),
                ));
            }
        }
        if let (Format::Plain, Some(m)) = (format, &raw.metadata) {
            return Err(at.error(
                Some(m.span()),
                &key("metadata"),
                "metadata is written only by format = \"json\" or \"etcd-endpoints\"".to_string(),
            ));
        }
        let mut endpoint = Endpoint::new(addr, format);
        endpoint.weight = raw.weight.as_ref().map_or(1, |w| *w.get_ref());
        endpoint.zone = raw.zone.as_ref().map(|z| z.get_ref().clone());
        if let Some(m) = &raw.metadata {
            endpoint.metadata = serde_json::to_value(m.get_ref()).map_err(|e| {
                at.error(
                    Some(m.span()),
                    &key("metadata"),
                    format!("cannot be written as JSON: {e}"),
                )
            })?;
        }
        let mut registration = Registration::new(service.clone(), id, endpoint);
        if let Some(check) = &raw.check {
            registration.check = Some(validate_check(check, raw, at, &|f| {
                key(&format!("check.{f}"))
            })?);
        }
        out.push(registration);
    }
    Ok((out, ttl.map_or(DEFAULT_TTL, |(t, _)| t)))
}

fn validate_check(
    raw: &RawCheck,
    block: &RawRegister,
    at: &Locator<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Check, ConfigError> {
    let probes = [
        raw.tcp.as_ref().map(Spanned::span),
        raw.http.as_ref().map(Spanned::span),
        raw.exec.as_ref().map(Spanned::span),
    ];
    let given: Vec<Range<usize>> = probes.into_iter().flatten().collect();
    if given.len() != 1 {
        return Err(at.error(
            given.get(1).cloned().or(Some(block.service.span())),
            &key("tcp"),
            "a check needs exactly one of tcp, http or exec".to_string(),
        ));
    }
    let probe = if let Some(tcp) = &raw.tcp {
        Probe::Tcp(
            tcp.get_ref()
                .parse()
                .map_err(|m| at.error(Some(tcp.span()), &key("tcp"), m))?,
        )
    } else if let Some(url) = &raw.http {
        Probe::Http(
            parse_check_url(url.get_ref())
                .map_err(|m| at.error(Some(url.span()), &key("http"), m))?,
        )
    } else if let Some(argv) = &raw.exec {
        if argv.get_ref().first().is_none_or(|p| p.is_empty()) {
            return Err(at.error(
                Some(argv.span()),
                &key("exec"),
                "needs a program, like [\"/usr/local/bin/probe\", \"--quick\"]".to_string(),
            ));
        }
        Probe::Exec(argv.get_ref().clone())
    } else {
        unreachable!("exactly one probe was given")
    };
    let mut check = Check::new(probe);
    if let Some(d) = positive(raw.interval.as_ref(), at, &key("interval"))? {
        check.interval = d;
    }
    if let Some(d) = positive(raw.timeout.as_ref(), at, &key("timeout"))? {
        check.timeout = d;
    }
    for (field, value, slot) in [
        ("rise", &raw.rise, &mut check.rise),
        ("fall", &raw.fall, &mut check.fall),
    ] {
        match value {
            Some(n) if *n.get_ref() == 0 => {
                return Err(at.error(
                    Some(n.span()),
                    &key(field),
                    format!("{field} must be at least 1"),
                ))
            }
            Some(n) => *slot = *n.get_ref(),
            None => {}
        }
    }
    Ok(check)
}

/// Parses a health-check URL: `http://host:port/path`.
pub(crate) fn parse_check_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("invalid URL \"{s}\": {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!("URL \"{s}\" must be http://host:port/path"));
    }
    Ok(uri)
}

/// Checks that an instance id can be the last part of a registry key.
pub(crate) fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("instance id is empty".to_string());
    }
    if let Some(c) = id.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("instance id \"{id}\" contains {c:?}"));
    }
    Ok(())
}

fn limits(
    max_connections: &Option<Spanned<u64>>,
    idle_timeout: &Option<Spanned<Duration>>,
    max_header_bytes: &Option<Spanned<u64>>,
    at: &Locator<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let in_range =
        |v: &Option<Spanned<u64>>, field: &str, min: u64, max: u64, default: usize| match v {
            None => Ok(default),
            Some(n) if !(min..=max).contains(n.get_ref()) => Err(at.error(
                Some(n.span()),
                &key(field),
                format!("{field} = {} is outside {min}..={max}", n.get_ref()),
            )),
            Some(n) => Ok(*n.get_ref() as usize),
        };
    Ok(Limits {
        max_connections: in_range(
            max_connections,
            "max_connections",
            1,
            MAX_CONNECTIONS,
            defaults.max_connections,
        )?,
        idle_timeout: positive(idle_timeout.as_ref(), at, &key("idle_timeout"))?
            .unwrap_or(defaults.idle_timeout),
        max_header_bytes: in_range(
            max_header_bytes,
            "max_header_bytes",
            MIN_HEADER_BYTES,
            MAX_HEADER_BYTES,
            defaults.max_header_bytes,
        )?,
    })
}

impl RawEtcd {
    fn validate(self, at: &Locator<'_>) -> Result<EtcdConfig, ConfigError> {
        let defaults = EtcdConfig::default();
        let endpoints = match self.endpoints {
            None => defaults.endpoints,
            Some(eps) => {
                let span = eps.span();
                let eps = eps.into_inner();
                if eps.is_empty() {
                    return Err(at.error(
                        Some(span),
                        "etcd.endpoints",
                        "needs at least one URL".to_string(),
                    ));
                }
                for ep in &eps {
                    check_endpoint(ep)
                        .map_err(|m| at.error(Some(span.clone()), "etcd.endpoints", m))?;
                }
                eps
            }
        };
        let prefix = match self.prefix {
            None => defaults.prefix,
            Some(p) => {
                let span = p.span();
                let p = p.into_inner();
                if !p.ends_with('/') || p.len() < 2 {
                    return Err(at.error(
                        Some(span),
                        "etcd.prefix",
                        format!("prefix \"{p}\" must be non-empty and end with '/', like \"/services/\""),
                    ));
                }
                p
            }
        };
        let dial_timeout = positive(self.dial_timeout.as_ref(), at, "etcd.dial_timeout")?
            .unwrap_or(defaults.dial_timeout);
        Ok(EtcdConfig {
            endpoints,
            prefix,
            dial_timeout,
        })
    }
}

/// Checks that a service name can be a registry key segment and a Host label.
pub(crate) fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("service name is empty".to_string());
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
    {
        return Err(format!(
            "service name \"{name}\" contains {c:?}, which cannot appear in a registry key segment"
        ));
    }
    Ok(())
}

/// Checks that an etcd endpoint is an `http://host:port` or `https://host:port` URL.
pub(crate) fn check_endpoint(ep: &str) -> Result<(), String> {
    let rest = ep
        .strip_prefix("http://")
        .or_else(|| ep.strip_prefix("https://"))
        .ok_or_else(|| format!("endpoint \"{ep}\" must start with http:// or https://"))?;
    let authority = rest.trim_end_matches('/');
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!(
            "endpoint \"{ep}\" must name a host and a port, like http://127.0.0.1:2379"
        )),
    }
}

fn positive(
    value: Option<&Spanned<Duration>>,
    at: &Locator<'_>,
    key: &str,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(d) if d.get_ref().is_zero() => {
            Err(at.error(Some(d.span()), key, "must be longer than zero".to_string()))
        }
        Some(d) => Ok(Some(*d.get_ref())),
        None => Ok(None),
    }
}

/// Parses a human duration such as `"1s"`, `"250ms"` or `"1m 30s"`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration \"{s}\": {e} (use e.g. \"500ms\", \"5s\", \"1m\")"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<Duration>>, D::Error> {
    let s = Spanned::<String>::deserialize(d)?;
    let span = s.span();
    let value = parse_duration(s.get_ref()).map_err(serde::de::Error::custom)?;
    Ok(Some(Spanned::new(span, value)))
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "invalid address \"{s}\": expected IP:port, like \"127.0.0.1:7001\" or \"[::1]:7001\""
        )
    })
}

fn required_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Spanned<SocketAddr>, D::Error> {
    let s = Spanned::<String>::deserialize(d)?;
    let span = s.span();
    let addr = parse_socket_addr(s.get_ref()).map_err(serde::de::Error::custom)?;
    Ok(Spanned::new(span, addr))
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<SocketAddr>>, D::Error> {
    required_socket_addr(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("cairn.toml"))
    }

    #[test]
    fn defaults_apply_to_a_minimal_file() {
        let c = parse("[[service]]\nname = \"orders\"\nlisten = \"127.0.0.1:7001\"\n").unwrap();
        assert_eq!(c.etcd, EtcdConfig::default());
        assert_eq!(c.admin, AdminConfig::default());
        let s = &c.services[0];
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.route, RouteConfig::default());
        assert_eq!(s.route.balance, Balance::RoundRobin);
        assert_eq!(s.route.connect_timeout, Duration::from_secs(1));
        assert_eq!(s.route.retries, 2);
        assert_eq!(s.route.request_timeout, Duration::from_secs(30));
        assert!(!s.route.rewrite_host);
        assert_eq!(s.limits, Limits::default());
        assert!(c.gateways.is_empty());
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../config/cairn.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.services[0].name, "orders");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\ntimeout = \"5s\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("unknown field `timeout`"), "{e}");
    }

    #[test]
    fn unknown_key_in_a_service_names_the_block() {
        let e =
            parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nport = 3\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().contains("service[0]"), "{e}");
        assert!(e.message.contains("port"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let e = parse("[etcd]\n\ndial_timeout = \"5 parsecs\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("etcd.dial_timeout"), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn bad_address_names_key_and_line() {
        let e = parse("[[service]]\nname = \"a\"\nlisten = \"localhost:99999\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("service[0].listen"), "{e}");
    }

    #[test]
    fn duplicate_names_and_listens_are_rejected() {
        let dup_name = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\n";
        let e = parse(dup_name).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(
            e.message
                .contains("duplicate service name \"a\" (first defined at line 2)"),
            "{e}"
        );

        let dup_listen = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:1\"\n";
        let e = parse(dup_listen).unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(
            e.message
                .contains("already used by service \"a\" at line 3"),
            "{e}"
        );

        let admin_clash = "[admin]\nlisten = \"127.0.0.1:9\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:9\"\n";
        let e = parse(admin_clash).unwrap_err();
        assert!(e.message.contains("[admin]"), "{e}");
    }

    #[test]
    fn bad_enums_endpoints_and_prefix_are_rejected() {
        let e =
            parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbalance = \"fastest\"\n")
                .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("fastest"), "{e}");
        let e = parse("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n").unwrap_err();
        assert!(e.message.contains("http://"), "{e}");
        let e = parse("[etcd]\nendpoints = []\n").unwrap_err();
        assert!(e.message.contains("at least one"), "{e}");
        let e = parse("[etcd]\nprefix = \"/services\"\n").unwrap_err();
        assert!(e.message.contains("end with '/'"), "{e}");
        let e = parse("[[service]]\nname = \"a/b\"\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.message.contains("'/'"), "{e}");
        let e = parse(
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nconnect_timeout = \"0s\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("longer than zero"), "{e}");
    }

    #[test]
    fn http_services_and_gateways_are_read() {
        let c = parse(
            "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"http\"\nrequest_timeout = \"2s\"\nrewrite_host = true\nmax_connections = 10\nidle_timeout = \"5s\"\nmax_header_bytes = 16384\n\n[[gateway]]\nlisten = \"127.0.0.1:2\"\nhost_suffix = \".SVC.local\"\n",
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.protocol, Protocol::Http);
        assert_eq!(s.route.request_timeout, Duration::from_secs(2));
        assert!(s.route.rewrite_host);
        assert_eq!(
            s.limits,
            Limits {
                max_connections: 10,
                idle_timeout: Duration::from_secs(5),
                max_header_bytes: 16384
            }
        );
        let g = &c.gateways[0];
        assert_eq!(g.host_suffix.as_deref(), Some(".svc.local"));
        assert_eq!(g.limits, Limits::default());
    }

    #[test]
    fn http_mistakes_are_rejected() {
        let e =
            parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nidle_timeout = \"5s\"\n")
                .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("service[0].idle_timeout")),
            "{e}"
        );
        assert!(e.message.contains("only to protocol = \"http\""), "{e}");
        let e = parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nhost_suffix = \"svc.local\"\n")
            .unwrap_err();
        assert!(e.message.contains("must start with '.'"), "{e}");
        let e =
            parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nmax_header_bytes = 100\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("gateway[0].max_header_bytes")),
            "{e}"
        );
        let e = parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nmax_connections = 0\n").unwrap_err();
        assert!(e.message.contains("outside 1..="), "{e}");
        let e = parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[gateway]]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.message.contains("already used by service \"a\""), "{e}");
        let e = parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nprefix = \"x\"\n").unwrap_err();
        assert!(e.message.contains("unknown field `prefix`"), "{e}");
        let e = parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nretries = 17\n")
            .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn missing_required_key_is_reported() {
        let e = parse("[[service]]\nname = \"a\"\n").unwrap_err();
        assert!(e.message.contains("missing field `listen`"), "{e}");
    }

    #[test]
    fn invalid_toml_is_located() {
        let e = parse("[etcd\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }
}
