//! Why a connection or request could not be forwarded: one type that says which status a client
//! gets, which counter goes up, and the one line that explains it.

use std::time::Duration;

use http::StatusCode;

use super::metrics::ListenerMetrics;
use crate::addr::Addr;

/// Why cairn could not forward a connection or request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The service has no instances.
    #[error("service \"{service}\" has no instances")]
    NoInstances {
        /// The service.
        service: String,
    },
    /// Every instance tried refused or timed out the connect.
    #[error(
        "service \"{service}\": {attempts} instance(s) tried, none answered; last {addr}: {cause}"
    )]
    Exhausted {
        /// The service.
        service: String,
        /// How many instances were tried.
        attempts: usize,
        /// The last one.
        addr: Addr,
        /// Its error.
        cause: String,
    },
    /// HTTP: no response headers in time.
    #[error(
        "service \"{service}\": instance {addr} sent no response headers within {}",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The service.
        service: String,
        /// The instance.
        addr: Addr,
        /// The request timeout.
        after: Duration,
    },
    /// HTTP: the instance received the request, then failed it.
    #[error("service \"{service}\": instance {addr} failed: {cause}")]
    Upstream {
        /// The service.
        service: String,
        /// The instance.
        addr: Addr,
        /// What went wrong.
        cause: String,
    },
    /// HTTP gateways: the Host names no known service.
    #[error("no service {name:?} in the registry (from Host {host:?})")]
    UnknownService {
        /// The service name taken from the Host.
        name: String,
        /// The Host as sent.
        host: String,
    },
    /// HTTP gateways: the request has no Host.
    #[error("the request has no Host header to pick a service by")]
    NoHost,
    /// HTTP: a request in asterisk form (`* HTTP/1.1`) other than `OPTIONS`.
    #[error("{method} * names no resource to forward")]
    Asterisk {
        /// The request's method.
        method: String,
    },
    /// HTTP: a request whose Connection header lists a header that frames or routes it, which
    /// each hop would then be asked to drop: its framing is ambiguous, so it is not forwarded.
    #[error("the Connection header lists {name}, which frames the request; refused as ambiguous")]
    FramingListed {
        /// The header listed.
        name: &'static str,
    },
    /// HTTP: a CONNECT request; cairn is not a forward proxy.
    #[error("CONNECT is not served: cairn forwards requests to services, it opens no tunnels")]
    Connect,
}

impl ProxyError {
    /// The status an HTTP client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoInstances { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Exhausted { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UnknownService { .. } | ProxyError::NoHost => StatusCode::NOT_FOUND,
            ProxyError::Asterisk { .. } | ProxyError::FramingListed { .. } => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The one line a client gets as the answer's body.
    pub(crate) fn line(&self) -> String {
        format!("cairn: {self}\n")
    }

    /// Counts the failure on the listener's counters.
    pub(crate) fn count(&self, metrics: &ListenerMetrics) {
        let counter = match self {
            ProxyError::NoInstances { .. } => &metrics.no_instances,
            ProxyError::Exhausted { .. } => &metrics.exhausted,
            ProxyError::Timeout { .. } => &metrics.timeouts,
            ProxyError::Upstream { .. } => &metrics.upstream_errors,
            ProxyError::UnknownService { .. } | ProxyError::NoHost => &metrics.not_found,
            ProxyError::Asterisk { .. }
            | ProxyError::FramingListed { .. }
            | ProxyError::Connect => return,
        };
        counter.inc();
    }
}
