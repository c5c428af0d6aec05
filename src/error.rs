//! The library's error type.

use std::io;
use std::net::SocketAddr;

use crate::config::ConfigError;

/// What can stop cairn from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// Which listener: `[admin]`, `service "orders"`, …
        what: String,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        source: io::Error,
    },
    /// The etcd client could not be built or a call failed for good.
    #[error("etcd: {}", crate::etcd::describe(.0))]
    EtcdClient(#[from] etcd_client::Error),
    /// An etcd request of a one-shot command failed; the message says which.
    #[error("etcd: {0}")]
    Etcd(String),
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// `cairn dev` could not set up its demo.
    #[error("{0}")]
    Dev(String),
    /// Any other I/O failure, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What cairn was doing.
        what: String,
        /// The operating system's answer.
        source: io::Error,
    },
}
