//! The command line: `cairn run`, `cairn check` and `cairn dev`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
    /// Run the proxy with a config file until SIGINT or SIGTERM.
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How long open connections may take to finish after a shutdown signal.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::config::parse_duration)]
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
}
