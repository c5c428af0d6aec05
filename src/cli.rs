//! The command line: the proxy (`run`, `check`, `dev`) and the registry tools (`register`,
//! `deregister`, `list`, `watch`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use etcd_client::DeleteOptions;
use http::Uri;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{
    check_endpoint, check_instance_id, check_service_name, parse_check_url, parse_duration, Config,
    EtcdConfig,
};
use crate::discovery::{Change, Discovery, Sink, Update};
use crate::error::Error;
use crate::etcd::{describe, list_prefix};
use crate::register::{default_id, Check, Probe, Registrar, Registration, MIN_TTL};
use crate::registry::{
    instance_key, parse_value, service_prefix, split_key, Addr, Endpoint, Format,
};
use crate::stats::DiscoveryStats;

/// cairn: a node-local service-discovery proxy backed by etcd.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (and the config's registrations) until SIGINT or SIGTERM.
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How long open connections may take to finish after a shutdown signal.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        shutdown_grace: Duration,
    },
    /// Validate a config file: exit 0 when it is good, print the mistake and exit 1 when not.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start a throwaway etcd, two demo backends and a proxy, and show how to try them.
    Dev,
    /// Register one instance until SIGINT or SIGTERM, then deregister it.
    Register(RegisterArgs),
    /// Delete one instance's key.
    Deregister {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The service.
        #[arg(long, value_parser = service_name)]
        service: String,
        /// The instance id.
        #[arg(long, value_parser = instance_id)]
        id: String,
    },
    /// Print the instances in etcd as a table.
    List {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Only this service.
        #[arg(value_parser = service_name)]
        service: Option<String>,
    },
    /// Print each change to the registry as it happens, until SIGINT or SIGTERM.
    Watch {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Only this service.
        #[arg(value_parser = service_name)]
        service: Option<String>,
    },
}

/// Where etcd is: flags, or the `[etcd]` section of a config file.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd client URLs [default: http://127.0.0.1:2379]
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',', value_parser = endpoint, conflicts_with = "config")]
    endpoints: Vec<String>,
    /// Registry prefix [default: /services/]
    #[arg(long, value_parser = prefix, conflicts_with = "config")]
    prefix: Option<String>,
    /// Use the [etcd] section of this config file
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl EtcdArgs {
    /// The etcd settings the flags or the config file describe.
    ///
    /// # Errors
    /// When the config file is invalid.
    pub fn resolve(&self) -> Result<EtcdConfig, Error> {
        if let Some(path) = &self.config {
            return Ok(Config::load(path)?.etcd);
        }
        let defaults = EtcdConfig::default();
        Ok(EtcdConfig {
            endpoints: if self.endpoints.is_empty() {
                defaults.endpoints
            } else {
                self.endpoints.clone()
            },
            prefix: self.prefix.clone().unwrap_or(defaults.prefix),
            dial_timeout: defaults.dial_timeout,
        })
    }
}

/// `cairn register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The service to register in.
    #[arg(long, value_parser = service_name)]
    service: String,
    /// The address other nodes dial.
    #[arg(long, value_name = "HOST:PORT", value_parser = addr)]
    addr: Addr,
    /// The instance id [default: <hostname>-<port>]
    #[arg(long, value_parser = instance_id)]
    id: Option<String>,
    /// Lease TTL: the key disappears this long after the process dies (at least 2s)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = ttl)]
    ttl: Duration,
    /// Value format: plain (host:port), json or etcd-endpoints
    #[arg(long, default_value = "plain", value_parser = format)]
    format: Format,
    /// Register only while a TCP connect to this address succeeds
    #[arg(long, value_name = "HOST:PORT", value_parser = addr, conflicts_with = "check_http")]
    check_tcp: Option<Addr>,
    /// Register only while GET on this URL answers 2xx
    #[arg(long, value_name = "URL", value_parser = check_url)]
    check_http: Option<Uri>,
}

fn service_name(s: &str) -> Result<String, String> {
    check_service_name(s).map(|()| s.to_string())
}

fn instance_id(s: &str) -> Result<String, String> {
    check_instance_id(s).map(|()| s.to_string())
}

fn endpoint(s: &str) -> Result<String, String> {
    check_endpoint(s).map(|()| s.to_string())
}

fn prefix(s: &str) -> Result<String, String> {
    if s.len() < 2 || !s.ends_with('/') {
        return Err(format!(
            "prefix \"{s}\" must be non-empty and end with '/', like \"/services/\""
        ));
    }
    Ok(s.to_string())
}

fn addr(s: &str) -> Result<Addr, String> {
    s.parse()
}

fn ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_TTL {
        return Err(format!(
            "must be at least {} (etcd's shortest lease)",
            humantime::format_duration(MIN_TTL)
        ));
    }
    Ok(d)
}

fn format(s: &str) -> Result<Format, String> {
    s.parse()
}

fn check_url(s: &str) -> Result<Uri, String> {
    parse_check_url(s)
}

/// `cairn register`: registers one instance until `shutdown`, then revokes its lease.
///
/// # Errors
/// When the config file given with `-c` is invalid. An unreachable etcd is retried, not an error.
pub async fn register(args: RegisterArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let etcd = args.etcd.resolve()?;
    let client = crate::etcd::connect(&etcd).await?;
    let id = args.id.unwrap_or_else(|| default_id(&args.addr));
    let mut registration =
        Registration::new(args.service, id, Endpoint::new(args.addr, args.format));
    if let Some(tcp) = args.check_tcp {
        registration = registration.with_check(Check::new(Probe::Tcp(tcp)));
    } else if let Some(url) = args.check_http {
        registration = registration.with_check(Check::new(Probe::Http(url)));
    }
    info!(
        key = %instance_key(&etcd.prefix, &registration.service, &registration.id),
        value = %registration.endpoint.encode(),
        ttl = %humantime::format_duration(args.ttl),
        "registering until SIGINT or SIGTERM"
    );
    let handle = Registrar::new(client, &etcd.prefix, args.ttl, vec![registration]).spawn();
    shutdown.cancelled().await;
    handle.stop().await;
    Ok(())
}

/// `cairn deregister`: deletes one instance's key.
///
/// # Errors
/// When etcd cannot be reached or has no such key.
pub async fn deregister(etcd: &EtcdArgs, service: &str, id: &str) -> Result<(), Error> {
    let etcd = etcd.resolve()?;
    let mut client = crate::etcd::connect(&etcd).await?;
    let key = instance_key(&etcd.prefix, service, id);
    let resp = client
        .delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
        .await
        .map_err(|e| Error::Etcd(format!("deleting {key}: {}", describe(&e))))?;
    let Some(prev) = resp.prev_kvs().first() else {
        return Err(Error::Usage(format!(
            "no instance at {key}; `cairn list {service}` shows what is registered"
        )));
    };
    println!("deleted {key}");
    if prev.lease() != 0 {
        eprintln!(
            "note: the key was bound to a lease; if the process that registered it still runs, it puts the key back. Stop that process to deregister for good."
        );
    }
    Ok(())
}

/// `cairn list`: prints the instances in etcd, with the time left on their leases.
///
/// # Errors
/// When etcd cannot be reached.
pub async fn list(etcd: &EtcdArgs, service: Option<&str>) -> Result<(), Error> {
    let etcd = etcd.resolve()?;
    let client = crate::etcd::connect(&etcd).await?;
    let scope = match service {
        Some(s) => service_prefix(&etcd.prefix, s),
        None => etcd.prefix.clone(),
    };
    let (_, kvs) = list_prefix(&client, &scope)
        .await
        .map_err(|e| Error::Etcd(format!("listing {scope}: {}", describe(&e))))?;

    let mut ttls: HashMap<i64, String> = HashMap::new();
    let mut leases = client.lease_client();
    let mut rows = vec![["SERVICE", "ID", "ADDRESS", "FORMAT", "TTL"].map(String::from)];
    for kv in &kvs {
        let Some((service, id)) = split_key(&etcd.prefix, kv.key()) else {
            continue;
        };
        let (address, format) = match parse_value(kv.value()) {
            Ok(e) => (e.addr.to_string(), e.format.to_string()),
            Err(e) => ("-".to_string(), format!("invalid: {e}")),
        };
        let ttl = match kv.lease() {
            0 => "-".to_string(),
            lease => match ttls.get(&lease) {
                Some(t) => t.clone(),
                None => {
                    let t = match leases.time_to_live(lease, None).await {
                        Ok(r) if r.ttl() >= 0 => format!("{}s", r.ttl()),
                        Ok(_) => "expired".to_string(),
                        Err(e) => format!("? ({})", describe(&e)),
                    };
                    ttls.insert(lease, t.clone());
                    t
                }
            },
        };
        rows.push([service.to_string(), id.to_string(), address, format, ttl]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.len() == 1 {
        eprintln!("no instances under {scope}");
    }
    Ok(())
}

/// `cairn watch`: prints the registry, then every change, until `shutdown`.
///
/// # Errors
/// When the config file given with `-c` is invalid. An unreachable etcd is retried, not an error.
pub async fn watch(
    etcd: &EtcdArgs,
    service: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let etcd = etcd.resolve()?;
    let client = crate::etcd::connect(&etcd).await?;
    let printer = Printer { service };
    Discovery::new(
        client,
        &etcd.prefix,
        printer,
        std::sync::Arc::new(DiscoveryStats::default()),
    )
    .run(shutdown)
    .await;
    Ok(())
}

/// Prints discovery updates as lines on stdout.
struct Printer {
    service: Option<String>,
}

impl Printer {
    fn wanted(&self, service: &str) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
    }
}

impl Sink for Printer {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Reset {
                revision,
                instances,
            } => {
                let shown: Vec<_> = instances.iter().filter(|(s, _)| self.wanted(s)).collect();
                println!("listed at revision {revision}: {} instance(s)", shown.len());
                for (service, i) in shown {
                    println!(
                        "  {service}/{}  {}  {}",
                        i.id, i.endpoint.addr, i.endpoint.format
                    );
                }
            }
            Update::Changes { changes, .. } => {
                for change in changes {
                    match change {
                        Change::Put {
                            service,
                            instance,
                            revision,
                        } if self.wanted(&service) => println!(
                            "put     {service}/{}  {}  {}  (revision {revision})",
                            instance.id, instance.endpoint.addr, instance.endpoint.format
                        ),
                        Change::Delete {
                            service,
                            id,
                            revision,
                        } if self.wanted(&service) => {
                            println!("delete  {service}/{id}  (revision {revision})")
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
