//! The command line: the proxy (`run`, `check`, `dev`), the registry tools (`register`,
//! `deregister`, `list`, `watch`, `auth bootstrap`), and its own documentation
//! (`completions`, `man`).

mod args;
mod bootstrap;
mod commands;
mod docs;

pub use args::{AuthCommand, BootstrapArgs, Cli, Command, EtcdArgs, RegisterArgs};
pub use bootstrap::bootstrap;
pub use commands::{deregister, list, register, watch};
pub use docs::{completions, man};
