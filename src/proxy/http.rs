//! HTTP listeners and gateways: one instance per request, pooled upstream connections, safe
//! retries and plain-text failure answers.
//!
//! A `[[service]]` with `protocol = "http"` forwards every request to its service. A
//! `[[gateway]]` picks the service from the Host header. Both serve HTTP/1.1 and h2c (prior
//! knowledge) on one port and speak HTTP/1.1 to instances over kept-alive connections that each
//! request drives from its own task.
//!
//! Most HTTP/1.1 requests (a head, and a small body of known length or none) take cairn's own
//! path, [`h1`], which reads and writes both sockets itself. Everything else, from h2c to
//! chunked uploads and WebSocket upgrades, is served by hyper, to which such a connection is
//! handed with the bytes already read. Of those requests, the ones without a body reach the
//! instance through cairn's own client ([`h1::client`]) too; the rest through hyper's.
//!
//! A request is retried on another instance only when connecting failed, which means no byte of
//! it reached an upstream: a request is never delivered twice.
//!
//! - [`listener`]: accepting clients, serving their connections, picking the route.
//! - [`h1`]: cairn's own HTTP/1.1 path for the common requests, on bare sockets both ways.
//! - [`prefixed`]: a connection handed to hyper with the bytes already read from it.
//! - [`activity`]: when a client connection counts as idle.
//! - [`routes`]: the route of each service, and the service a Host names.
//! - [`forward`]: sending a request to an instance, with retries and failure answers.
//! - [`headers`]: what is removed from and added to requests and responses.
//! - [`body`]: the request body that a failed connect hands to the next attempt.
//! - [`pool`]: kept-alive connections to instances, driven by the requests that use them.
//! - [`upstream`]: one such connection, polled by whichever task uses it.
//! - [`shelf`]: idle upstream connections, checked before reuse and swept.
//! - [`side`]: watching for a drain or an idle timeout without polling on every wake-up.
//! - [`upgrade`]: the tunnel a `101 Switching Protocols` turns a connection into.

pub(crate) mod activity;
pub(crate) mod body;
pub(crate) mod forward;
pub(crate) mod h1;
pub(crate) mod headers;
pub(crate) mod listener;
pub(crate) mod pool;
pub(crate) mod prefixed;
pub(crate) mod routes;
pub(crate) mod shelf;
pub(crate) mod side;
pub(crate) mod upgrade;
pub(crate) mod upstream;

pub(crate) use forward::Forwarder;
pub(crate) use listener::HttpListener;
pub(crate) use routes::{Routes, Routing};
