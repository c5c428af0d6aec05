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

/// The gRPC message (or the client's own) and the causes below it, walked once, each said once:
/// a transport error says what failed under it (the TLS alert, the refused connection, the name
/// mismatch), not "transport error" twice.
pub(super) fn describe(e: &ClientError) -> String {
    use std::error::Error as _;
    // etcd-client's error has no source of its own: the chain starts at what it wraps.
    let (top, below) = match e {
        ClientError::GRpcStatus(status) => (status.message().to_string(), status.source()),
        ClientError::TransportError(t) => ("transport error".to_string(), t.source()),
        ClientError::IoError(io) => (e.to_string(), io.source()),
        other => (other.to_string(), None),
    };
    let mut parts = vec![top];
    let mut next = below;
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn a_transport_error_says_what_failed_under_it_once() {
        let chain = Layer(
            "transport error",
            Some(Box::new(Layer(
                "transport error",
                Some(Box::new(Layer(
                    "invalid peer certificate: UnknownIssuer",
                    None,
                ))),
            ))),
        );
        let status = tonic::Status::from_error(Box::new(chain));
        let text = describe(&ClientError::GRpcStatus(status));
        assert_eq!(text.matches("transport error").count(), 1, "{text}");
        assert!(
            text.ends_with("invalid peer certificate: UnknownIssuer"),
            "{text}"
        );
    }
}
