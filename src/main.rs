//! The `cairn` binary: parses the command line, sets up logging and calls into the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cairn::cli::{self, Cli, Command};
use cairn::{Config, Server};

/// jemalloc returns freed memory to the system within about a second (a background thread
/// purges it), so a flood of connections leaves no lasting footprint.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: purge dirty pages after 1 s from a background thread, and return them to
/// the system at once instead of keeping them "muzzy".
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs piped to a file or journald stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                let count =
                    |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                println!(
                    "{}: ok ({}, {}, {})",
                    config.display(),
                    count(c.services.len(), "service"),
                    count(c.gateways.len(), "gateway"),
                    count(c.registrations.len(), "registration")
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Run {
            config,
            shutdown_grace,
        } => {
            let parsed = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            // One worker is one thread, as an nginx worker or an HAProxy thread: each runs a
            // runtime of its own on one thread, with no work-stealing machinery to pay for.
            // This thread is the first worker; connections are dealt to all of them in turn.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let workers = match cairn::rt::workers::Workers::start(parsed.workers) {
                Ok(w) => w,
                Err(e) => return fail(&e),
            };
            let runtime = match runtime {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            finish(runtime.block_on(async move {
                let shutdown = cairn::shutdown::on_signal();
                Server::bind(parsed)
                    .await?
                    .on(workers)
                    .reloads_from(config)
                    .run(shutdown, shutdown_grace)
                    .await
            }))
        }
        Command::Completions { shell } => {
            cli::completions(shell);
            ExitCode::SUCCESS
        }
        Command::Man { dir } => finish(cli::man(dir.as_deref())),
        Command::Dev => block_on(async {
            let shutdown = cairn::shutdown::on_signal();
            cairn::dev::run(shutdown).await
        }),
        Command::Register(args) => block_on(async {
            let shutdown = cairn::shutdown::on_signal();
            cli::register(args, shutdown).await
        }),
        Command::Deregister { etcd, service, id } => {
            block_on(async move { cli::deregister(&etcd, &service, &id).await })
        }
        Command::List { etcd, service } => {
            block_on(async move { cli::list(&etcd, service.as_deref()).await })
        }
        Command::Auth {
            command: cli::AuthCommand::Bootstrap(args),
        } => block_on(cli::bootstrap(args)),
        Command::Watch { etcd, service } => block_on(async move {
            let shutdown = cairn::shutdown::on_signal();
            cli::watch(&etcd, service.map(|s| s.to_string()), shutdown).await
        }),
    }
}

fn block_on<F: std::future::Future<Output = Result<(), cairn::Error>>>(fut: F) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    finish(runtime.block_on(fut))
}

fn finish(result: Result<(), cairn::Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
