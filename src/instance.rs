//! One registered instance of a service: its id and what its registry value says.

use crate::registry::Endpoint;

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The instance id: everything after `<prefix><service>/` in its key.
    pub id: String,
    /// What its registry value says.
    pub endpoint: Endpoint,
}

#[cfg(test)]
impl Instance {
    /// An instance with a plain-format value, for tests.
    pub(crate) fn plain(id: &str, addr: &str) -> std::sync::Arc<Instance> {
        std::sync::Arc::new(Instance {
            id: id.to_string(),
            endpoint: Endpoint::new(
                addr.parse().expect("tests use valid addresses"),
                crate::registry::Format::Plain,
            ),
        })
    }
}
