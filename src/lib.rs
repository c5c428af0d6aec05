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
//! # Crate map, bottom to top
//! Dependencies run one way: a module only uses modules of its own layer or below (a test in
//! `tests/it/layers.rs` checks the import graph).
//!
//! 1. **Domain core**, no I/O:
//!    - [`addr`]: instance addresses; [`registry`]: key layout and the three value formats;
//!      [`instance`]: one registered instance;
//!    - [`update`]: what discovery delivers (`Reset`, `Changes`) and the [`update::Sink`] it
//!      delivers to;
//!    - [`snapshot`]: immutable per-service snapshots behind `ArcSwap`, the writer that swaps
//!      them, and the order a failed pick retries in; [`balance`]: picking policies;
//!    - [`backoff`]: retry delays and jitter; [`text`]: outside strings made safe to print;
//!      `parsed`: values read from one string alike in the config, the flags and etcd.
//! 2. **Runtime support**: [`shutdown`] (the root signal), `accept` (listening sockets and the
//!    accept loop), `net` (dialing), `throttle` (one warning a second), `clock` (milliseconds
//!    for instance states), [`rt`] (the workers, and the runtime's speed tricks with their
//!    invariants).
//! 3. **Components**, each owning its config section and validation, with [`field`] (the config
//!    field types and located errors they share):
//!    - [`etcd`]: the connection (TLS, the user it authenticates as), paged reads, one-line
//!      errors, outage logging, per-call metrics and each member's health;
//!    - [`discovery`]: list-then-watch with resume, dedup, compaction and restore recovery,
//!      behind the [`discovery::ListWatch`] trait;
//!    - [`register`]: this node's own instances under a kept-alive lease, gated on health
//!      checks, behind the [`register::LeaseKeys`] trait;
//!    - [`health`]: active health checks, for registrations and discovered instances alike
//!      (its rise/fall rule, [`health::streak`], sits in the domain core);
//!    - [`proxy`]: the TCP and HTTP data planes with one failure path;
//!    - [`admin`]: `/healthz`, `/readyz`, `/services`, `/metrics`;
//!    - [`cache`]: the registry persisted to a file, served at a start while etcd is away.
//! 4. **Top**: [`config`] aggregates the sections, [`server`] wires the components together,
//!    [`cli`] and [`dev`] are the commands, [`Error`] what stops them.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![warn(clippy::unwrap_used, clippy::dbg_macro, clippy::todo)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod addr;
pub mod backoff;
pub mod balance;
pub mod instance;
pub(crate) mod parsed;
pub mod registry;
pub mod snapshot;
pub mod text;
pub mod update;

pub(crate) mod accept;
pub(crate) mod clock;
pub(crate) mod net;
pub mod rt;
pub mod shutdown;
pub(crate) mod throttle;

pub mod admin;
pub mod cache;
pub mod discovery;
pub mod etcd;
pub mod field;
pub mod health;
pub mod proxy;
pub mod register;

pub mod cli;
pub mod config;
pub mod dev;
mod error;
pub mod server;

pub use addr::Addr;
pub use balance::Balance;
pub use config::Config;
pub use error::Error;
pub use server::Server;
