//! The library's error type: what can stop cairn from starting or a command from finishing.

use std::io;
use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::etcd::EtcdError;

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
    /// The etcd client could not be built.
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    /// An etcd request of a one-shot command failed.
    #[error("etcd: {what}: {source}")]
    EtcdCall {
        /// What the command was doing, such as `listing /services/`.
        what: String,
        /// etcd's answer.
        source: EtcdError,
    },
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

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Error {
        Error::Etcd(e.into())
    }
}
