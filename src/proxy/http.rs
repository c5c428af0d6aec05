//! HTTP listeners and gateways: one instance per request, pooled upstream connections, safe
//! retries and plain-text failure answers.
//!
//! A `[[service]]` with `protocol = "http"` forwards every request to its service. A
//! `[[gateway]]` picks the service from the Host header. Both serve HTTP/1.1 and h2c (prior
//! knowledge) on one port and speak HTTP/1.1 to instances over kept-alive connections that each
//! request drives from its own task.
//!
//! A request is retried on another instance only when connecting failed, which means no byte of
//! it reached an upstream: a request is never delivered twice.
//!
//! - [`listener`]: accepting clients, serving their connections, picking the route.
//! - [`activity`]: when a client connection counts as idle.
//! - [`routes`]: the route of each service, and the service a Host names.
//! - [`forward`]: sending a request to an instance, with retries and failure answers.
//! - [`headers`]: what is removed from and added to requests and responses.
//! - [`body`]: the request body that a failed connect hands to the next attempt.
//! - [`pool`]: kept-alive connections to instances, driven by the requests that use them.
//! - [`upstream`]: one such connection, polled by whichever task uses it.
//! - [`side`]: watching for a drain or an idle timeout without polling on every wake-up.
//! - [`upgrade`]: the tunnel a `101 Switching Protocols` turns a connection into.

pub(crate) mod activity;
pub(crate) mod body;
pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod listener;
pub(crate) mod pool;
pub(crate) mod routes;
pub(crate) mod side;
pub(crate) mod upgrade;
pub(crate) mod upstream;

pub(crate) use forward::Forwarder;
pub(crate) use listener::HttpListener;
pub(crate) use routes::{Routes, Routing};
