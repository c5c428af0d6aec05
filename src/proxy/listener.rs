//! The accept loop every listener shares: one permit of the connection cap per open connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// After a failed accept (out of descriptors or memory), wait this long instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections until `shutdown`, holding one `limit` permit per open connection, and
/// hands each to `serve`. When the cap is reached, new clients wait in the kernel's backlog.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
{
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = Arc::clone(&limit).acquire_owned() => p.expect("the connection semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer, permit),
            Err(e) => {
                warn!(error = %e, "accept failed");
                if !crate::shutdown::sleep(&shutdown, ACCEPT_PAUSE).await {
                    return;
                }
            }
        }
    }
}
