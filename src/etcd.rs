//! The etcd connection every component shares: its settings, the client options cairn relies on,
//! paged prefix reads, one-line errors, and outage logging.

mod client;
mod config;
mod error;
mod outage;

pub use client::{connect, list_prefix, Listing, MAX_DECODE_BYTES};
pub(crate) use config::RawEtcd;
pub use config::{EndpointUrl, EtcdConfig};
pub use error::EtcdError;
pub(crate) use outage::Outage;
