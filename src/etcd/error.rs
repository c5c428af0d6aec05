//! One-line etcd errors: the gRPC message and its innermost cause, and whether a lease is gone.

use etcd_client::Error as ClientError;

use crate::text::printable;

/// A failed etcd call, described in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EtcdError {
    /// The call named a lease etcd no longer has.
    lease_gone: bool,
    /// The gRPC message and its innermost cause.
    message: String,
}

impl EtcdError {
    /// An error with `message`, for sources that are not etcd-client (tests, fakes).
    pub fn new(message: impl Into<String>) -> EtcdError {
        EtcdError {
            lease_gone: false,
            message: printable(&message.into()).into_owned(),
        }
    }

    /// An error saying that etcd no longer has the lease the call named.
    pub fn lease_gone(message: impl Into<String>) -> EtcdError {
        EtcdError {
            lease_gone: true,
            message: message.into(),
        }
    }

    /// Whether the call failed because etcd no longer has its lease (expired or revoked).
    pub fn is_lease_gone(&self) -> bool {
        self.lease_gone
    }
}

impl From<ClientError> for EtcdError {
    fn from(e: ClientError) -> EtcdError {
        let message = printable(&describe(&e)).into_owned();
        // etcd says "requested lease not found"; etcd-client's keepalive open says "lease not
        // found" when the first answer has no TTL left.
        let lease_gone = message.contains("lease not found");
        EtcdError {
            lease_gone,
            message,
        }
    }
}

/// The gRPC message and its innermost cause, without the nested debug output of the transport
/// stack.
pub(super) fn describe(e: &ClientError) -> String {
    let ClientError::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let out = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    let mut innermost = None;
    while let Some(c) = cause {
        innermost = Some(c.to_string());
        cause = c.source();
    }
    match innermost {
        Some(root) if !out.contains(&root) => format!("{out}: {root}"),
        _ => out,
    }
}
