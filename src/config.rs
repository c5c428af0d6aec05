//! The TOML configuration file, aggregated from the sections each component owns.
//!
//! This module parses the file, reads `[node]` and `[runtime]`, hands `[etcd]`, `[admin]`,
//! `[cache]`, `[discovery]`, each `[[service]]`, `[[gateway]]` and `[[register]]` block to the component that
//! owns its settings, and checks what spans sections
//! (service names, listen addresses). Every mistake is reported as one [`ConfigError`] naming
//! the file, the line and the key, so `cairn check` and `cairn run` print a single line an
//! operator can act on.

mod error;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use error::ConfigError;

use crate::admin::{AdminConfig, RawAdmin};
use crate::cache::{CacheConfig, RawCache};
use crate::discovery::{DiscoveryScope, RawDiscovery};
use crate::etcd::{EtcdConfig, RawEtcd};
use crate::field::{within, FieldError, FieldResult, Key, Lines, ListenAddr};
use crate::proxy::config::{RawGateway, RawService};
use crate::proxy::{GatewayConfig, ServiceConfig};
use crate::register::{RawRegister, Registration, Ttl};
use error::Locator;

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
    /// This node's failure zone (`[node] zone`): picks prefer instances of the same zone.
    pub zone: Option<String>,
    /// Worker threads of the runtime (`[runtime] workers`); by default one per core.
    pub workers: usize,
    /// Where the registry is persisted for a cold start while etcd is away; off by default.
    pub cache: Option<CacheConfig>,
    /// Which part of the registry is listed and watched (`[discovery] scope`); see
    /// [`Config::scope`].
    pub discovery: DiscoveryScope,
}

/// The number of cores this process may run on, the default for `[runtime] workers`.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// More worker threads than this is a typo: a node-local proxy never needs them.
const MAX_WORKERS: u64 = 1024;

impl Default for Config {
    /// Defaults for every section, no listeners and no registrations.
    fn default() -> Self {
        Config {
            etcd: EtcdConfig::default(),
            admin: AdminConfig::default(),
            services: Vec::new(),
            gateways: Vec::new(),
            registrations: Vec::new(),
            lease_ttl: Ttl::default().0,
            zone: None,
            workers: cores(),
            cache: None,
            discovery: DiscoveryScope::Routed,
        }
    }
}

impl Config {
    /// The part of the registry to list and watch: `discovery`, except that a gateway, which
    /// may route to any service, always gets the whole prefix (a config built in code may
    /// leave `discovery` at its default beside one).
    pub fn scope(&self) -> DiscoveryScope {
        if self.gateways.is_empty() {
            self.discovery
        } else {
            DiscoveryScope::All
        }
    }

    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] when the file cannot be read, is not valid TOML, has unknown keys or
    /// values of the wrong kind, or breaks a rule checked across blocks (duplicate names, ports).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Locator { text: "", path }.whole(format!("cannot read the file: {e}")))?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    ///
    /// # Errors
    /// As for [`Config::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = Locator { text, path };
        let de = toml::Deserializer::parse(text).map_err(|e| at.toml(&e, None))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| at.toml(e.inner(), Some(e.path().to_string())))?;
        raw.validate(at.lines()).map_err(|e| at.field(e))
    }
}

/// The file as written, each section in its owner's raw form.
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
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    runtime: RawRuntime,
    cache: Option<RawCache>,
    #[serde(default)]
    discovery: RawDiscovery,
}

/// The `[runtime]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    workers: Option<Spanned<u64>>,
}

/// The `[node]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    zone: Option<Spanned<String>>,
}

impl RawNode {
    fn validate(self, key: &Key) -> FieldResult<Option<String>> {
        let Some(zone) = self.zone else {
            return Ok(None);
        };
        let z = zone.get_ref();
        if z.is_empty() || z.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(key.at(
                "zone",
                &zone,
                format!("zone {z:?} must be a name without spaces, like \"eu-1a\""),
            ));
        }
        Ok(Some(zone.into_inner()))
    }
}

/// Listen addresses already taken, with who took them and on which line (0: by default).
struct Listens<'a> {
    taken: HashMap<SocketAddr, (String, usize)>,
    lines: Lines<'a>,
}

impl Listens<'_> {
    fn claim(&mut self, listen: &Spanned<ListenAddr>, owner: String, key: &Key) -> FieldResult<()> {
        let addr = listen.get_ref().0;
        // Port 0 asks the kernel for a free port: never a clash.
        if addr.port() == 0 {
            return Ok(());
        }
        if let Some((first, line)) = self.taken.get(&addr) {
            let first = match line {
                0 => first.clone(),
                line => format!("{first} at line {line}"),
            };
            return Err(key.at(
                "listen",
                listen,
                format!("listen address {addr} is already used by {first}"),
            ));
        }
        let line = self.lines.of(listen.span().start);
        self.taken.insert(addr, (owner, line));
        Ok(())
    }
}

impl RawConfig {
    fn validate(self, lines: Lines<'_>) -> Result<Config, FieldError> {
        let etcd = self.etcd.validate(&Key::new("etcd"))?;
        let mut listens = Listens {
            taken: HashMap::new(),
            lines,
        };
        let admin_line = self
            .admin
            .listen
            .as_ref()
            .map_or(0, |l| lines.of(l.span().start));
        let admin = self.admin.validate(&Key::new("admin"))?;
        listens
            .taken
            .insert(admin.listen, ("[admin]".to_string(), admin_line));

        let mut names: HashMap<String, usize> = HashMap::new();
        let mut services = Vec::with_capacity(self.services.len());
        for (i, raw) in self.services.into_iter().enumerate() {
            let key = Key::indexed("service", i);
            let name = raw.name.get_ref().to_string();
            let line = lines.of(raw.name.span().start);
            if let Some(first) = names.insert(name.clone(), line) {
                return Err(key.at(
                    "name",
                    &raw.name,
                    format!("duplicate service name \"{name}\" (first defined at line {first})"),
                ));
            }
            listens.claim(&raw.listen, format!("service \"{name}\""), &key)?;
            services.push(raw.validate(&key)?);
        }

        let mut gateways = Vec::with_capacity(self.gateways.len());
        for (i, raw) in self.gateways.into_iter().enumerate() {
            let key = Key::indexed("gateway", i);
            listens.claim(&raw.listen, format!("gateway[{i}]"), &key)?;
            gateways.push(raw.validate(&key)?);
        }

        let discovery = self
            .discovery
            .validate(&Key::new("discovery"), !gateways.is_empty())?;
        let (registrations, ttl) = crate::register::validate(self.registrations, lines)?;
        let zone = self.node.validate(&Key::new("node"))?;
        let workers = within(
            self.runtime.workers.as_ref(),
            &Key::new("runtime").field("workers"),
            1..MAX_WORKERS + 1,
            cores() as u64,
        )? as usize;
        let cache = match self.cache {
            Some(c) => Some(c.validate(&Key::new("cache"))?),
            None => None,
        };
        Ok(Config {
            discovery,
            zone,
            workers,
            cache,
            etcd,
            admin,
            services,
            gateways,
            registrations,
            lease_ttl: ttl.0,
        })
    }
}

#[cfg(test)]
mod tests;
