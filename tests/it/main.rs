//! cairn's integration tests: one binary, real etcd, real sockets, real cairn processes.

#[path = "../support/mod.rs"]
mod support;

mod check;
mod cluster;
mod discovery;
mod http;
mod register;
mod tcp;
