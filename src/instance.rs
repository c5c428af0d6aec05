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
