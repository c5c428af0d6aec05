//! Picking policies: which instance of a service a new connection or request goes to.
//!
//! Every policy is weight-aware and lock-free on the pick path: the work that depends on the
//! number of instances (a weighted schedule, an alias table, a Maglev table) is done when a
//! snapshot is built, so a pick is one counter step or a random draw or two, and a table read.
//!
//! - [`policy`]: the policies and what a `hash` policy hashes;
//! - [`table`]: the tables built per snapshot, and the picks over them;
//! - [`hash`]: the stable hashes they use (the same on every node, for consistent hashing).

mod build;
pub mod hash;
pub mod policy;
pub mod table;

pub use policy::{Balance, HashKey};
pub use table::Table;
