//! One-line etcd errors: the gRPC message and its innermost cause, and whether a lease is gone.

use etcd_client::Error as ClientError;

use crate::text::printable;

/// What kind of failure an etcd call met, where cairn reacts differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything else: retry.
    Other,
    /// The call named a lease etcd no longer has: grant a new one.
    LeaseGone,
    /// etcd refused the user or password: retrying with them will not help.
    AuthFailed,
    /// The user may not do this: retrying will not help until its roles change.
    PermissionDenied,
}

impl Kind {
    /// The kind an etcd message tells.
    fn of(message: &str) -> Kind {
        if message.contains("lease not found") {
            // etcd says "requested lease not found"; etcd-client's keepalive open says "lease
            // not found" when the first answer has no TTL left.
            Kind::LeaseGone
        } else if message.contains("authentication failed") {
            Kind::AuthFailed
        } else if message.contains("permission denied") {
            Kind::PermissionDenied
        } else {
            Kind::Other
        }
    }
}

/// A failed etcd call, described in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EtcdError {
    /// What kind of failure.
    kind: Kind,
    /// The gRPC message and its innermost cause.
    message: String,
}

impl EtcdError {
    /// An error with `message`, its kind read from it.
    pub fn new(message: impl Into<String>) -> EtcdError {
        let message = printable(&message.into()).into_owned();
        EtcdError {
            kind: Kind::of(&message),
            message,
        }
    }

    /// An error saying that etcd no longer has the lease the call named.
    pub fn lease_gone(message: impl Into<String>) -> EtcdError {
        EtcdError {
            kind: Kind::LeaseGone,
            message: message.into(),
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the call failed because etcd no longer has its lease (expired or revoked).
    pub fn is_lease_gone(&self) -> bool {
        self.kind == Kind::LeaseGone
    }

    /// The same error, with `context` before its message.
    pub fn context(self, context: impl std::fmt::Display) -> EtcdError {
        EtcdError {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl From<ClientError> for EtcdError {
    fn from(e: ClientError) -> EtcdError {
        EtcdError::new(describe(&e))
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
