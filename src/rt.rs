//! The runtime's speed tricks, each in one module that states its invariant at the top and has
//! a unit test that fails when it is broken.
//!
//! - [`workers`]: one single-threaded runtime per worker thread, connections dealt in turn, and
//!   the worker a thread is (the key of worker-local state, such as the pool's idle sockets).
//! - [`side`]: a future polled beside a busy one only when its own waker fired.
//! - [`deadline`]: a timer set per request without touching the timer wheel, re-armed lazily
//!   when its deadline has moved later.
//! - [`flag`]: a flag a task sets for a future it polls itself, waited on without a waker.

pub(crate) mod deadline;
pub(crate) mod flag;
pub(crate) mod side;
pub mod workers;
