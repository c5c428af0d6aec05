//! The etcd connection every component shares: its settings (TLS, the user and its password),
//! the client options cairn relies on, paged prefix reads, one-line errors, outage logging, the
//! metrics of every call and each member's health.

mod client;
mod config;
mod credentials;
mod error;
mod members;
mod metrics;
mod outage;
mod tls;

pub use client::{answers, connect, list_prefix, Etcd, PrefixRead, MAX_DECODE_BYTES};
pub(crate) use config::RawEtcd;
pub use config::{EndpointUrl, EtcdConfig};
pub use credentials::{Credentials, Secret, PASSWORD_ENV};
pub use error::{EtcdError, Kind};
pub use members::Members;
pub use metrics::{EtcdMetrics, Op};
pub(crate) use outage::Outage;
pub use tls::{PemFile, PemKind, TlsConfig};
