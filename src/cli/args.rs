//! The command line's shape: subcommands and flags, parsed by clap with the same value types
//! the config file uses, so each field's rule and message is written once.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::addr::Addr;
use crate::config::Config;
use crate::error::Error;
use crate::etcd::{Credentials, EndpointUrl, EtcdConfig, TlsConfig};
use crate::field::{check_duration, HumanDuration};
use crate::health::check::CheckUrl;
use crate::register::Ttl;
use crate::registry::{Format, InstanceId, Prefix, ServiceName};

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
    /// Run the proxy (and the config's registrations) until SIGINT or SIGTERM; SIGHUP reloads
    /// the config file.
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How long open connections may take to finish after a shutdown signal.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = grace)]
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
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, or write one page per command into a directory.
    Man {
        /// Write cairn.1 and a page per subcommand (cairn-run.1, …) here.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Register one instance until SIGINT or SIGTERM, then deregister it.
    Register(RegisterArgs),
    /// Delete one instance's key.
    Deregister {
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The service.
        #[arg(long)]
        service: ServiceName,
        /// The instance id.
        #[arg(long)]
        id: InstanceId,
    },
    /// Print the instances in etcd as a table.
    List {
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Only this service.
        service: Option<ServiceName>,
    },
    /// Set up etcd users and roles for cairn.
    Auth {
        /// What to do.
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Print each change to the registry as it happens, until SIGINT or SIGTERM.
    Watch {
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Only this service.
        service: Option<ServiceName>,
    },
}

/// `cairn auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create (idempotently) a read-only role and user for proxies, a read-write role and user
    /// for registrars, their password files, and optionally enable auth.
    Bootstrap(BootstrapArgs),
}

/// Where etcd is: flags, or the `[etcd]` section of a config file.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd client URLs [default: http://127.0.0.1:2379]
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        conflicts_with = "config"
    )]
    endpoints: Vec<EndpointUrl>,
    /// Registry prefix [default: /services/]
    #[arg(long, conflicts_with = "config")]
    prefix: Option<Prefix>,
    /// Use the [etcd] section of this config file
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Authenticate as this etcd user
    #[arg(long, conflicts_with = "config")]
    username: Option<String>,
    /// The user's password, in this file (CAIRN_ETCD_PASSWORD wins over it)
    #[arg(
        long,
        value_name = "FILE",
        requires = "username",
        conflicts_with = "config"
    )]
    password_file: Option<PathBuf>,
    /// Verify the members with this CA (PEM) [default: the system's roots]
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for members that require one
    #[arg(
        long,
        value_name = "FILE",
        requires = "key_file",
        conflicts_with = "config"
    )]
    cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(
        long,
        value_name = "FILE",
        requires = "cert_file",
        conflicts_with = "config"
    )]
    key_file: Option<PathBuf>,
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
        let credentials = match &self.username {
            Some(user) => Some(
                Credentials::load(user, self.password_file.as_deref())
                    .map_err(|m| Error::Usage(format!("--username: {m}")))?,
            ),
            None => None,
        };
        let tls = if self.ca_file.is_some() || self.cert_file.is_some() {
            Some(
                TlsConfig::from_files(
                    self.ca_file.as_deref(),
                    self.cert_file.as_deref(),
                    self.key_file.as_deref(),
                )
                .map_err(Error::Usage)?,
            )
        } else {
            None
        };
        let config = EtcdConfig {
            endpoints: if self.endpoints.is_empty() {
                defaults.endpoints
            } else {
                self.endpoints.clone()
            },
            prefix: self.prefix.clone().unwrap_or(defaults.prefix),
            dial_timeout: defaults.dial_timeout,
            tls,
            credentials,
        };
        config
            .check_schemes()
            .map_err(|m| Error::Usage(format!("--endpoints: {m}")))?;
        Ok(config)
    }
}

/// `cairn register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
    /// The service to register in.
    #[arg(long)]
    pub(crate) service: ServiceName,
    /// The address other nodes dial.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: Addr,
    /// The instance id [default: <hostname>-<port>]
    #[arg(long)]
    pub(crate) id: Option<InstanceId>,
    /// Lease TTL: the key disappears this long after the process dies (at least 2s)
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub(crate) ttl: Ttl,
    /// Value format: plain (host:port), json or etcd-endpoints
    #[arg(long, default_value = "plain")]
    pub(crate) format: Format,
    /// Register only while a TCP connect to this address succeeds
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "check_http")]
    pub(crate) check_tcp: Option<Addr>,
    /// Register only while GET on this URL answers 2xx
    #[arg(long, value_name = "URL")]
    pub(crate) check_http: Option<CheckUrl>,
}

/// The longest drain an operator can ask for: beyond an hour, a stuck client holds a node.
const MAX_GRACE: Duration = Duration::from_secs(3600);

fn grace(s: &str) -> Result<Duration, String> {
    let HumanDuration(d) = s.parse()?;
    check_duration(d, &(Duration::ZERO..=MAX_GRACE))
}

/// `cairn auth bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Where etcd is, and the root user to act as (`--username root --password-file FILE`).
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
    /// The user proxies authenticate as: it may read the prefix
    #[arg(long, default_value = "cairn-proxy")]
    pub(crate) proxy_user: String,
    /// The user registrars authenticate as: it may read and write the prefix
    #[arg(long, default_value = "cairn-registrar")]
    pub(crate) registrar_user: String,
    /// Where each user's password is kept, in <DIR>/<user>.password (generated when missing)
    #[arg(long, value_name = "DIR")]
    pub(crate) password_dir: PathBuf,
    /// Also create root (with --password-file's password) and enable auth, if it is disabled
    #[arg(long)]
    pub(crate) enable_auth: bool,
}
