//! cairn's integration tests: one binary, real etcd, real sockets, real cairn processes.
// Tests wait on real processes, so they keep real time (library code may not; see clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

#[path = "../support/mod.rs"]
mod support;

mod balancing;
mod check;
mod cluster;
mod discovery;
mod ejection;
mod floods;
mod framing;
mod grpc;
mod grpc_proxy;
mod h2c;
mod hostile;
mod http;
mod layers;
mod operate;
mod page;
mod register;
mod scope;
mod secure;
mod smuggling;
mod tcp;
