//! What a data-plane listener is across reloads: its settings ([`Spec`]), which listener it is
//! ([`Identity`]), and how its socket is bound.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tracing::warn;

use crate::config::Config;
use crate::error::Error;
use crate::proxy::{GatewayConfig, ServiceConfig};

/// One data-plane listener's settings: a `[[service]]` block, or the `i`-th `[[gateway]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    /// A local port for one service (boxed: it is much larger than a gateway's settings).
    Service(Box<ServiceConfig>),
    /// A Host-routed HTTP port, with its index among the gateways.
    Gateway(usize, GatewayConfig),
}

impl Spec {
    /// The address the config asks for.
    pub(crate) fn listen(&self) -> SocketAddr {
        match self {
            Spec::Service(s) => s.listen,
            Spec::Gateway(_, g) => g.listen,
        }
    }

    /// Connections served at once, which is also the accept backlog.
    pub(crate) fn max_connections(&self) -> usize {
        match self {
            Spec::Service(s) => s.limits.max_connections,
            Spec::Gateway(_, g) => g.limits.max_connections,
        }
    }

    /// Which listener this is across reloads: its address, or for one on port 0 (the kernel
    /// picks the port) its service or gateway index.
    pub(crate) fn identity(&self) -> Identity {
        match self {
            _ if self.listen().port() != 0 => Identity::Addr(self.listen()),
            Spec::Service(s) => Identity::Service(s.name.to_string()),
            Spec::Gateway(i, _) => Identity::Gateway(*i),
        }
    }

    /// How the listener is named in errors and logs.
    pub(crate) fn what(&self) -> String {
        match self {
            Spec::Service(s) => format!("service \"{}\"", s.name),
            Spec::Gateway(i, _) => format!("gateway[{i}]"),
        }
    }
}

/// A listener's identity across reloads; see [`Spec::identity`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Identity {
    /// A fixed address.
    Addr(SocketAddr),
    /// A service's listener on port 0.
    Service(String),
    /// A gateway on port 0.
    Gateway(usize),
}

/// The data-plane listeners a config asks for, in config order.
pub(super) fn specs(config: &Config) -> Vec<Spec> {
    let services = (config.services.iter().cloned()).map(|s| Spec::Service(Box::new(s)));
    let gateways = (config.gateways.iter().cloned().enumerate()).map(|(i, g)| Spec::Gateway(i, g));
    services.chain(gateways).collect()
}

/// Binds one listener with `backlog`, warning when other hosts can reach it.
pub(super) fn bind(addr: SocketAddr, backlog: usize, what: &str) -> Result<TcpListener, Error> {
    let listener = crate::accept::bind(addr, backlog).map_err(|source| Error::Bind {
        what: what.to_string(),
        addr,
        source,
    })?;
    if !addr.ip().is_loopback() {
        warn!(listener = what, listen = %addr, "listening on a non-loopback address: other hosts can reach this port");
    }
    Ok(listener)
}
