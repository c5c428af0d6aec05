//! Active health checks, one module for this node's registrations and for the instances it
//! discovers alike.
//!
//! - `check`: what a check is ([`Check`]: a probe, its interval and timeout, `rise` and `fall`);
//! - `config`: the `[register.check]` and `[service.health]` tables, validated;
//! - `streak`: the rise/fall hysteresis both follow ([`Streak`]);
//! - `probe`: the one prober (TCP, HTTP over cairn's pool, gRPC, a command), within a timeout;
//!   `grpc`: the standard gRPC health call;
//! - `own`: the check of a registration, which registers or deregisters it;
//! - `instances`: the checks of a service's instances, which take them out of rotation or
//!   bring them back.
//!
//! Both loops probe every interval ±10%, so the nodes of a fleet drift apart.

pub(crate) mod check;
pub(crate) mod config;
pub(crate) mod grpc;
pub(crate) mod instances;
pub(crate) mod own;
pub(crate) mod probe;
pub mod streak;

pub use check::{Check, CheckUrl, HealthCheck, HealthProbe, Probe};
pub use streak::Streak;
