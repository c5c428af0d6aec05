//! HTTP listeners and gateways: one instance per request, pooled upstream connections, safe
//! retries and plain-text failure answers.
//!
//! A `[[service]]` with `protocol = "http"` forwards every request to its service. A
//! `[[gateway]]` picks the service from the Host header. Both serve HTTP/1.1 and h2c (prior
//! knowledge) on one port and speak HTTP/1.1 to instances over kept-alive connections that each
//! request drives from its own task.
//!
//! Two server engines share each port. Most HTTP/1.1 requests (a head, and a small body of
//! known length or none) take cairn's own path, [`h1`], which reads and writes both sockets
//! itself. Everything else, from h2c to chunked uploads and WebSocket upgrades, is served by
//! hyper, to which such a connection is handed with the bytes already read.
//!
//! One client speaks to instances: cairn's own HTTP/1.1 client ([`h1::client`]) on bare pooled
//! sockets, whichever engine served the request, with one head writer ([`h1::write`]) and one
//! body state machine ([`h1::framing`]). hyper's client is kept for upgrades only, which need
//! its hand-over of the connection; [`forward`] is where that choice is made.
//!
//! A request is retried on another instance only when nothing of it reached an upstream (the
//! connect failed, or a kept-alive socket failed its first write): a request is never
//! delivered twice.
//!
//! - [`listener`]: accepting clients, serving their connections, picking the route.
//! - [`h1`]: cairn's own HTTP/1.1 path for the common requests, on bare sockets both ways.
//! - [`prefixed`]: a connection handed to hyper with the bytes already read from it.
//! - [`activity`]: when a client connection counts as idle.
//! - [`routes`]: the route of each service, and the service a Host names.
//! - [`forward`]: sending a request hyper's server took to an instance, through cairn's own
//!   client or (upgrades) hyper's, with retries and failure answers.
//! - [`headers`]: the fate of each header, and what cairn reads from them.
//! - [`grpc`]: which requests are gRPC calls, their deadline, and cairn's own gRPC answers.
//! - [`h2`]: HTTP/2 connections to instances, one per instance and worker, for gRPC.
//! - [`body`]: the request body that a failed connect hands to the next attempt.
//! - [`pool`]: idle sockets to instances, and the connection of an upgrade.
//! - [`shelf`]: idle upstream sockets, checked before reuse and swept.
//! - [`upgrade`]: the tunnel a `101 Switching Protocols` turns a connection into.

pub(crate) mod activity;
pub(crate) mod body;
pub(crate) mod forward;
pub(crate) mod grpc;
pub(crate) mod h1;
pub(crate) mod h2;
pub(crate) mod headers;
pub(crate) mod listener;
pub(crate) mod pool;
pub(crate) mod prefixed;
pub(crate) mod replay;
pub(crate) mod routes;
pub(crate) mod shelf;
pub(crate) mod upgrade;

pub(crate) use forward::Forwarder;
pub(crate) use listener::HttpListener;
pub(crate) use routes::{Routes, Routing};
