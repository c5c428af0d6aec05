//! What discovery delivers: the whole registry after a list, then the changes of each watch
//! response. The snapshot store and `cairn watch` consume the same stream.

use std::sync::Arc;

use crate::instance::Instance;

/// One step of the registry's history, as discovery delivers it.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The whole registry at `revision`; everything before is replaced.
    Reset {
        /// The revision the list was pinned to.
        revision: i64,
        /// Every usable instance, with its service.
        instances: Vec<(String, Arc<Instance>)>,
    },
    /// The registry as a cache file saw it when etcd last answered, used at a start while etcd
    /// does not answer. Replaces everything before, like `Reset`, but the first `Reset` that
    /// follows replaces it in turn.
    Cached {
        /// The revision the cache was written at.
        revision: i64,
        /// Every usable instance in the file, with its service.
        instances: Vec<(String, Arc<Instance>)>,
        /// When the file was written, in seconds since the Unix epoch.
        written_at: u64,
    },
    /// The changes of one watch response, in order; all happened at or below `revision`.
    Changes {
        /// The highest revision applied by these changes.
        revision: i64,
        /// Puts and deletes, in etcd's order.
        changes: Vec<Change>,
    },
}

/// One change to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An instance was added or its value changed.
    Put {
        /// The service it belongs to.
        service: String,
        /// The instance as it is now.
        instance: Arc<Instance>,
        /// The etcd revision of the change.
        revision: i64,
    },
    /// An instance is gone, or its key now holds a value cairn cannot use.
    Delete {
        /// The service it belonged to.
        service: String,
        /// Its instance id.
        id: String,
        /// The etcd revision of the change.
        revision: i64,
    },
}

impl Change {
    /// The service the change is about.
    pub fn service(&self) -> &str {
        match self {
            Change::Put { service, .. } | Change::Delete { service, .. } => service,
        }
    }

    /// The id of the instance the change is about.
    pub fn id(&self) -> &str {
        match self {
            Change::Put { instance, .. } => &instance.id,
            Change::Delete { id, .. } => id,
        }
    }
}

/// Where discovery delivers updates. `apply` must not block: it runs on the watch task.
pub trait Sink: Send + 'static {
    /// Applies one update.
    fn apply(&mut self, update: Update);
}

#[cfg(test)]
impl Sink for tokio::sync::mpsc::UnboundedSender<Update> {
    /// Forwards the update; a closed receiver means nobody is listening any more.
    fn apply(&mut self, update: Update) {
        let _ = self.send(update);
    }
}
