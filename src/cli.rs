//! The command line: the proxy (`run`, `check`, `dev`) and the registry tools (`register`,
//! `deregister`, `list`, `watch`).

mod args;
mod bootstrap;
mod commands;

pub use args::{AuthCommand, BootstrapArgs, Cli, Command, EtcdArgs, RegisterArgs};
pub use bootstrap::bootstrap;
pub use commands::{deregister, list, register, watch};
