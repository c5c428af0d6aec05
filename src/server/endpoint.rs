//! The admin endpoint as a part of the server: its accept loop, and a reload's two steps for
//! it. [`Endpoint::prepare`] binds the new address when `[admin] listen` changed (a port in use
//! refuses the reload); [`Endpoint::commit`] moves the accept loop there and applies
//! `max_stale`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::spec::bind;
use crate::admin::{Admin, ADMIN_BACKLOG};
use crate::config::Config;
use crate::error::Error;

/// The admin endpoint, serving.
pub(super) struct Endpoint {
    /// Its state, shared with every request.
    pub(super) admin: Arc<Admin>,
    /// The address the config asked for.
    listen: SocketAddr,
    /// The address it is bound to (another port when the config asked for port 0).
    pub(super) addr: SocketAddr,
    /// Stops its accept loop.
    stop: CancellationToken,
    /// Its accept loop, which returns the socket when stopped.
    task: JoinHandle<TcpListener>,
}

impl Endpoint {
    /// Serves `admin` on `socket`, bound for `listen`.
    pub(super) fn start(admin: Arc<Admin>, listen: SocketAddr, socket: TcpListener) -> Endpoint {
        let addr = socket
            .local_addr()
            .expect("a bound listener has a local address");
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&admin).run(socket, stop.clone()));
        Endpoint {
            admin,
            listen,
            addr,
            stop,
            task,
        }
    }

    /// The socket `next` moves the endpoint to, bound; none when it stays.
    ///
    /// # Errors
    /// [`Error::Bind`] when the new address cannot be bound.
    pub(super) fn prepare(&self, next: &Config) -> Result<Option<TcpListener>, Error> {
        match next.admin.listen == self.listen {
            true => Ok(None),
            false => bind(next.admin.listen, ADMIN_BACKLOG, "[admin]").map(Some),
        }
    }

    /// Applies `next`: its `max_stale`, and the accept loop moved to `moved` if prepared.
    /// Returns whether the endpoint moved.
    pub(super) async fn commit(&mut self, moved: Option<TcpListener>, next: &Config) -> bool {
        self.admin.set_max_stale(next.admin.max_stale);
        let Some(socket) = moved else {
            return false;
        };
        let old = std::mem::replace(
            self,
            Endpoint::start(Arc::clone(&self.admin), next.admin.listen, socket),
        );
        old.stop().await;
        info!(admin = %self.addr, "admin endpoint moved");
        true
    }

    /// Stops accepting and waits for the accept loop to end.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
