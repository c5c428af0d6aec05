//! The data plane: local listeners that forward to picked instances.
//!
//! [`tcp`] relays bytes and picks once per connection; [`http`] proxies requests and picks once
//! per request. Both share one failure
//! path ([`failover`]: which instances to try, what a failed connect counts and logs), and one
//! error type ([`error`]: the status, the counter and the one-line message of every failure).

pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod failover;
pub(crate) mod http;
mod judge;
pub(crate) mod metrics;
pub(crate) mod relay;
pub(crate) mod tcp;

pub use config::{GatewayConfig, Limits, Protocol, RelayConfig, RouteConfig, ServiceConfig};
pub use metrics::{ListenerFamilies, ListenerMetrics, ListenerView};
