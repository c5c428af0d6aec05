//! The root shutdown signal (SIGINT or SIGTERM cancels one token every task watches) and the
//! helpers tasks use to race their waits against it.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// A token cancelled on the first SIGINT or SIGTERM. A second signal exits at once, for an
/// operator who does not want to wait for the drain.
///
/// # Panics
/// If signal handlers cannot be installed, which only happens outside a Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received, shutting down"),
            _ = terminate.recv() => info!("SIGTERM received, shutting down"),
        }
        cancel.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        error!("second signal received, exiting without draining");
        std::process::exit(130);
    });
    token
}

/// Runs `fut` unless `shutdown` fires first.
pub(crate) async fn cancellable<F: std::future::Future>(
    shutdown: &CancellationToken,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        out = fut => Some(out),
    }
}

/// Sleeps for `delay`; returns false if `shutdown` fired meanwhile.
pub(crate) async fn sleep(shutdown: &CancellationToken, delay: Duration) -> bool {
    cancellable(shutdown, tokio::time::sleep(delay))
        .await
        .is_some()
}

/// Sleeps until `at`, or forever when there is no `at`: a `select!` branch for an optional
/// deadline.
pub(crate) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
