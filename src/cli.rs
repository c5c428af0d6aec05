//! The command line: the proxy (`run`, `check`, `dev`) and the registry tools (`register`,
//! `deregister`, `list`, `watch`).

mod args;
mod commands;

pub use args::{Cli, Command, EtcdArgs, RegisterArgs};
pub use commands::{deregister, list, register, watch};
