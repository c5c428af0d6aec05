//! The data plane's settings: `[[service]]` listeners, `[[gateway]]` listeners, and how each
//! reaches a service's instances.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::balance::{Balance, HashKey};
use crate::field::{duration, within, FieldResult, HumanDuration, Key, ListenAddr};
use crate::registry::ServiceName;
use crate::snapshot::Policy;

mod outlier;

use crate::health::check::HealthCheck;
use crate::health::config::RawHealth;
use outlier::RawOutlier;

/// How a listener speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Bytes are relayed; one instance is picked per connection.
    Tcp,
    /// HTTP/1.1 and h2c are proxied; one instance is picked per request.
    Http,
    /// gRPC: clients' HTTP/2 calls go to instances over HTTP/2 (h2c), one instance picked per
    /// call.
    Grpc,
}

impl Protocol {
    /// The name used in config files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// One `[[service]]` block: a local port forwarding to a registered service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The service name, as it appears in registry keys.
    pub name: ServiceName,
    /// The local address applications dial.
    pub listen: SocketAddr,
    /// The protocol spoken on `listen`.
    pub protocol: Protocol,
    /// How connections and requests reach the service's instances; gateways use it too.
    pub route: RouteConfig,
    /// Limits of the listener.
    pub limits: Limits,
    /// Where the service's instances live instead of `<prefix><name>/`: every key under this
    /// prefix (it ends with `/`) is one instance, as go-zero writes `<key>/<lease id>`.
    pub key: Option<String>,
    /// Active health checks of the service's instances; none by default.
    pub health: Option<HealthCheck>,
    /// TCP listeners: how connections are kept and ended.
    pub relay: RelayConfig,
}

/// How a TCP listener keeps its relayed connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// A connection with no byte in either direction for this long is closed; none by
    /// default, since database and message-queue clients may idle for hours.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive on both sockets: the idle time before the first probe; none turns it
    /// off. Finds peers that vanished without a FIN (a rebooted host, a dropped NAT entry).
    pub keepalive: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            idle_timeout: None,
            keepalive: Some(Duration::from_secs(60)),
        }
    }
}

/// How connections or requests reach the instances of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// How the service's instances are picked and judged (no zone: that is the node's).
    pub policy: Policy,
    /// What the `hash` policy hashes; set exactly when `policy.balance` is `hash`.
    pub hash_key: Option<HashKey>,
    /// How long a connect to one instance may take before another is tried.
    pub connect_timeout: Duration,
    /// How many other instances are tried when a connect fails.
    pub retries: u32,
    /// HTTP: how long an instance may take to send response headers.
    pub request_timeout: Duration,
    /// HTTP: send the instance's address as Host instead of the client's Host.
    pub rewrite_host: bool,
    /// The instances speak HTTP/2 (`protocol = "grpc"`): every request goes to them over it.
    pub h2: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            policy: Policy::default(),
            hash_key: None,
            connect_timeout: Duration::from_secs(1),
            retries: 2,
            request_timeout: Duration::from_secs(30),
            rewrite_host: false,
            h2: false,
        }
    }
}

impl RouteConfig {
    /// The picking and ejection policy of the route's service on a node in `zone`.
    pub fn policy(&self, zone: Option<String>) -> Policy {
        Policy {
            zone,
            ..self.policy.clone()
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

/// A connect that takes a minute is a dead instance; with up to 16 retries a client would wait
/// a quarter of an hour.
const CONNECT_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(60);
/// Long enough for long polls, short enough that a stuck instance is noticed the same day.
const REQUEST_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);
/// An idle client kept for a day holds a slot for nothing.
const IDLE_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(24 * 3600);
/// A relayed TCP connection may idle for a week (a database pool's spare connection) but not
/// forever: past that, use keepalive to find dead peers instead.
const TCP_IDLE_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
/// Keepalive probes more often than every second are noise on the wire; Linux refuses an idle
/// time above 32767 s. `0s` turns keepalive off.
const TCP_KEEPALIVE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(32_767);

/// The most instances a connection may try: the first pick plus this many retries. Beyond a
/// handful, a client waits `connect_timeout` per dead instance, which is worse than failing.
const MAX_RETRIES: u32 = 16;
/// More local instances than this is never a sensible requirement.
const MAX_MIN_LOCAL: u64 = 10_000;
/// hyper's smallest read buffer; a smaller header limit cannot be enforced.
const MIN_HEADER_BYTES: u64 = 8192;
/// Far above any legitimate request head, low enough that one client cannot pin much memory.
const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// A listener cap above this is a typo: each connection holds two descriptors.
const MAX_CONNECTIONS: u64 = 1_000_000;

/// The limit keys of a listener block, as written.
struct RawLimits<'a> {
    max_connections: Option<&'a Spanned<u64>>,
    idle_timeout: Option<&'a Spanned<HumanDuration>>,
    max_header_bytes: Option<&'a Spanned<u64>>,
}

impl RawLimits<'_> {
    fn validate(&self, key: &Key) -> FieldResult<Limits> {
        let defaults = Limits::default();
        Ok(Limits {
            max_connections: within(
                self.max_connections,
                &key.field("max_connections"),
                1..MAX_CONNECTIONS + 1,
                defaults.max_connections as u64,
            )? as usize,
            idle_timeout: duration(
                self.idle_timeout,
                &key.field("idle_timeout"),
                IDLE_TIMEOUT,
                defaults.idle_timeout,
            )?,
            max_header_bytes: within(
                self.max_header_bytes,
                &key.field("max_header_bytes"),
                MIN_HEADER_BYTES..MAX_HEADER_BYTES + 1,
                defaults.max_header_bytes as u64,
            )? as usize,
        })
    }
}

/// One `[[service]]` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) name: Spanned<ServiceName>,
    pub(crate) listen: Spanned<ListenAddr>,
    protocol: Option<Protocol>,
    balance: Option<Balance>,
    hash_key: Option<Spanned<HashKey>>,
    min_local: Option<Spanned<u64>>,
    outlier: Option<RawOutlier>,
    health: Option<RawHealth>,
    connect_timeout: Option<Spanned<HumanDuration>>,
    retries: Option<Spanned<u32>>,
    request_timeout: Option<Spanned<HumanDuration>>,
    rewrite_host: Option<bool>,
    max_connections: Option<Spanned<u64>>,
    idle_timeout: Option<Spanned<HumanDuration>>,
    max_header_bytes: Option<Spanned<u64>>,
    tcp_keepalive: Option<Spanned<HumanDuration>>,
    key: Option<Spanned<String>>,
}

impl RawService {
    /// The block's settings; `key` is `service[i]`.
    pub(crate) fn validate(self, key: &Key) -> FieldResult<ServiceConfig> {
        let protocol = self.protocol.unwrap_or(Protocol::Tcp);
        let mut relay = RelayConfig::default();
        match protocol {
            Protocol::Tcp => {
                if let Some(m) = &self.max_header_bytes {
                    return Err(key.at(
                        "max_header_bytes",
                        m,
                        "applies only to protocol = \"http\" listeners",
                    ));
                }
                if let Some(idle) = &self.idle_timeout {
                    relay.idle_timeout = Some(duration(
                        Some(idle),
                        &key.field("idle_timeout"),
                        TCP_IDLE_TIMEOUT,
                        Duration::ZERO,
                    )?);
                }
                if let Some(k) = &self.tcp_keepalive {
                    let k = duration(
                        Some(k),
                        &key.field("tcp_keepalive"),
                        TCP_KEEPALIVE,
                        Duration::ZERO,
                    )?;
                    relay.keepalive = (!k.is_zero()).then_some(k);
                }
            }
            Protocol::Http | Protocol::Grpc => {
                if let Some(k) = &self.tcp_keepalive {
                    return Err(key.at(
                        "tcp_keepalive",
                        k,
                        "applies only to protocol = \"tcp\" listeners (HTTP clients are closed after idle_timeout)",
                    ));
                }
            }
        }
        let defaults = RouteConfig::default();
        let retries = match &self.retries {
            None => defaults.retries,
            Some(r) if *r.get_ref() > MAX_RETRIES => {
                return Err(key.at(
                    "retries",
                    r,
                    format!(
                        "retries = {} is more than the allowed {MAX_RETRIES}",
                        r.get_ref()
                    ),
                ))
            }
            Some(r) => *r.get_ref(),
        };
        let balance = self.balance.unwrap_or(defaults.policy.balance);
        let hash_key = match (&self.hash_key, balance) {
            (None, Balance::Hash) => Some(HashKey::ClientIp),
            (None, _) => None,
            (Some(k), Balance::Hash) if protocol == Protocol::Tcp && !k.get_ref().works_for_tcp() => {
                return Err(key.at(
                    "hash_key",
                    k,
                    format!(
                        "hash_key = \"{}\" needs protocol = \"http\"; a TCP listener can only hash \"client_ip\"",
                        k.get_ref()
                    ),
                ))
            }
            (Some(k), Balance::Hash) => Some(k.get_ref().clone()),
            (Some(k), _) => {
                return Err(key.at(
                    "hash_key",
                    k,
                    "hash_key applies only to balance = \"hash\"",
                ))
            }
        };
        let route = RouteConfig {
            policy: Policy {
                balance,
                outlier: self
                    .outlier
                    .unwrap_or_default()
                    .validate(&key.field("outlier"))?,
                zone: None,
                min_local: within(
                    self.min_local.as_ref(),
                    &key.field("min_local"),
                    0..MAX_MIN_LOCAL + 1,
                    defaults.policy.min_local as u64,
                )? as usize,
            },
            hash_key,
            connect_timeout: duration(
                self.connect_timeout.as_ref(),
                &key.field("connect_timeout"),
                CONNECT_TIMEOUT,
                defaults.connect_timeout,
            )?,
            retries,
            request_timeout: duration(
                self.request_timeout.as_ref(),
                &key.field("request_timeout"),
                REQUEST_TIMEOUT,
                defaults.request_timeout,
            )?,
            rewrite_host: self.rewrite_host.unwrap_or(defaults.rewrite_host),
            h2: protocol == Protocol::Grpc,
        };
        let key_prefix = match &self.key {
            None => None,
            Some(k) => {
                let raw = k.get_ref().trim_end_matches('/');
                if raw.is_empty() || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(key.at(
                        "key",
                        k,
                        format!(
                            "key {:?} must be a non-empty etcd key, like \"product.rpc\"",
                            k.get_ref()
                        ),
                    ));
                }
                Some(format!("{raw}/"))
            }
        };
        let health = match &self.health {
            None => None,
            Some(h) => h.validate(&key.field("health"))?,
        };
        Ok(ServiceConfig {
            key: key_prefix,
            health,
            relay,
            limits: RawLimits {
                max_connections: self.max_connections.as_ref(),
                idle_timeout: match protocol {
                    Protocol::Http | Protocol::Grpc => self.idle_timeout.as_ref(),
                    Protocol::Tcp => None,
                },
                max_header_bytes: self.max_header_bytes.as_ref(),
            }
            .validate(key)?,
            name: self.name.into_inner(),
            listen: self.listen.into_inner().0,
            protocol,
            route,
        })
    }
}

/// One `[[gateway]]` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub(crate) listen: Spanned<ListenAddr>,
    host_suffix: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
    idle_timeout: Option<Spanned<HumanDuration>>,
    max_header_bytes: Option<Spanned<u64>>,
}

impl RawGateway {
    /// The block's settings; `key` is `gateway[i]`.
    pub(crate) fn validate(self, key: &Key) -> FieldResult<GatewayConfig> {
        let host_suffix = match &self.host_suffix {
            None => None,
            Some(s) if s.get_ref().len() < 2 || !s.get_ref().starts_with('.') => {
                return Err(key.at(
                    "host_suffix",
                    s,
                    format!(
                        "host_suffix {:?} must start with '.', like \".svc.local\"",
                        s.get_ref()
                    ),
                ))
            }
            Some(s) => Some(s.get_ref().to_ascii_lowercase()),
        };
        Ok(GatewayConfig {
            limits: RawLimits {
                max_connections: self.max_connections.as_ref(),
                idle_timeout: self.idle_timeout.as_ref(),
                max_header_bytes: self.max_header_bytes.as_ref(),
            }
            .validate(key)?,
            listen: self.listen.into_inner().0,
            host_suffix,
        })
    }
}
