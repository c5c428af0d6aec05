//! cairn: a node-local service-discovery proxy backed by etcd.
//!
//! Legacy applications dial a fixed localhost port; cairn forwards each connection to one
//! registered instance of the service behind that port, from a snapshot kept current by etcd
//! watches.
//!
//! ```text
//! etcd ──list+watch──▶ discovery ──Update──▶ StoreWriter ──swap──▶ Store (one ArcSwap per service)
//!                                                                     │ load + pick
//!                                       application ──▶ listener ─────┴──▶ instance
//! ```
//!
//! # Crate map
//! - [`config`]: the TOML file, validated with line-accurate errors.
//! - [`registry`]: key layout and the three value formats (plain, JSON, etcd endpoints).
//! - [`discovery`]: list-then-watch with resume, dedup and compaction recovery.
//! - [`snapshot`]: immutable per-service snapshots behind `ArcSwap`, and the writer that swaps them.
//! - [`balance`]: lock-free, allocation-free picking policies.
//! - [`register`]: this node's own instances under a kept-alive lease, gated on health checks.
//! - `proxy`: the TCP data plane.
//! - `admin`: `/healthz`, `/readyz`, `/services`, `/metrics`.
//! - [`server`]: binds everything and shuts down in order.
//! - [`dev`]: the `cairn dev` demo.
//! - [`cli`], [`shutdown`], [`stats`], [`etcd`]: the command line, the root signal, counters
//!   and the etcd connection.

mod admin;
mod backoff;
pub mod balance;
pub mod cli;
pub mod config;
pub mod dev;
pub mod discovery;
mod error;
pub mod etcd;
mod proxy;
pub mod register;
pub mod registry;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod stats;

pub use balance::Balance;
pub use config::Config;
pub use error::Error;
pub use server::Server;
