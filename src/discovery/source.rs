//! What discovery reads the registry through: a narrow list-and-watch interface with one real
//! implementation (etcd) and a channel-fed fake for unit tests.

use std::future::Future;

use crate::etcd::EtcdError;

/// The identity and progress of the store that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The cluster's id; it changes when etcd is restored from a snapshot or wiped.
    pub cluster_id: u64,
    /// The store's revision when it answered.
    pub revision: i64,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value; empty for a delete.
    pub value: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: i64,
}

/// Every key under the prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    /// Who answered, and the revision every key was read at.
    pub header: Header,
    /// The keys, in key order.
    pub kvs: Vec<Kv>,
}

/// One change the watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Whether the key was deleted (otherwise it was put).
    pub deleted: bool,
    /// The key as it is after the change.
    pub kv: Kv,
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch is open.
    Created(Header),
    /// Nothing happened; the header says how far the store is.
    Progress(Header),
    /// Changes, in revision order.
    Events(Header, Vec<Event>),
    /// The start revision was compacted away; the registry must be listed again.
    Compacted {
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
    /// The server ended the watch for another reason.
    Canceled {
        /// What the server said.
        reason: String,
    },
}

/// Lists and watches one registry prefix.
pub trait ListWatch: Send + 'static {
    /// The stream a watch delivers.
    type Watch: WatchStream;

    /// Every key under the prefix, at one revision.
    fn list(&mut self) -> impl Future<Output = Result<Listing, EtcdError>> + Send;

    /// Watches the prefix from revision `start` on.
    fn watch(&mut self, start: i64) -> impl Future<Output = Result<Self::Watch, EtcdError>> + Send;
}

/// The messages of one open watch.
pub trait WatchStream: Send {
    /// The next message; `None` when the server closed the stream.
    fn next(&mut self) -> impl Future<Output = Result<Option<WatchMessage>, EtcdError>> + Send;

    /// Says that the watch went silent for longer than etcd's progress interval, just before
    /// it is given up: what carries it may be stuck as well.
    fn stale(&mut self) {}
}
