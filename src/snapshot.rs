//! The in-memory view of the registry: one immutable, arc-swapped [`Snapshot`] per service.
//!
//! Readers (listeners, the admin endpoint) load a snapshot without locking and never see half an
//! update. The discovery task is the only writer: [`StoreWriter`] builds a new snapshot for each
//! service that really changed and swaps it in whole. Instances are shared between successive
//! snapshots by reference count, so each is held in memory once, and so is its live
//! [`InstanceState`]: requests in flight, latency, failures in a row, ejection, health checks.

mod cell;
mod frozen;
pub mod latency;
mod policy;
mod slots;
mod state;
mod store;
pub mod timing;
mod watched;
mod writer;

pub use cell::{Retries, ServiceCell};
pub use frozen::{Pick, Snapshot};
pub use policy::{Outlier, Policy};
pub use state::{InFlight, InstanceState, Verdict};
pub use store::Store;
pub use watched::Watched;
pub use writer::{Scope, StoreWriter};
