//! What the registrar writes through: a lease, the keys bound to it, and a watch on those keys.
//! One real implementation (etcd) and a channel-fed fake for unit tests.

use std::future::Future;

use crate::etcd::EtcdError;

/// One change to an owned key, seen by the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// The key.
    pub key: Vec<u8>,
    /// Its value after the change (empty for a delete).
    pub value: Vec<u8>,
    /// The lease it is bound to after the change (0 for none).
    pub lease: i64,
    /// Whether the key was deleted.
    pub deleted: bool,
}

/// Leases and the keys bound to them.
pub trait LeaseKeys: Send + 'static {
    /// An open keepalive stream.
    type KeepAlive: KeepAlive;
    /// An open watch on owned keys.
    type Watch: KeyWatch;

    /// Grants a lease of `ttl` seconds; returns its id.
    fn grant(&mut self, ttl: i64) -> impl Future<Output = Result<i64, EtcdError>> + Send;

    /// Opens a keepalive stream for `lease`; an error that
    /// [is lease-gone](EtcdError::is_lease_gone) means etcd no longer has it.
    fn keep_alive(
        &mut self,
        lease: i64,
    ) -> impl Future<Output = Result<Self::KeepAlive, EtcdError>> + Send;

    /// Writes `(key, value)` pairs bound to `lease`, leaving keys already in place untouched;
    /// returns the store revision after the writes (0 when nothing was written).
    fn write(
        &mut self,
        lease: i64,
        keys: &[(&str, &str)],
    ) -> impl Future<Output = Result<i64, EtcdError>> + Send;

    /// Puts one key bound to `lease`.
    fn put(
        &mut self,
        lease: i64,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// Deletes `key` if it is bound to `lease` (someone else's key is left alone).
    fn remove(
        &mut self,
        lease: i64,
        key: &str,
    ) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// Watches `keys` from revision `start` (0: from now).
    fn watch(
        &mut self,
        keys: &[&str],
        start: i64,
    ) -> impl Future<Output = Result<Self::Watch, EtcdError>> + Send;

    /// Revokes `lease`: every key bound to it vanishes at once.
    fn revoke(&mut self, lease: i64) -> impl Future<Output = Result<(), EtcdError>> + Send;
}

/// An open keepalive stream for one lease.
pub trait KeepAlive: Send {
    /// Asks etcd to renew the lease.
    fn ping(&mut self) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// The next answer: the lease's remaining TTL in seconds (0 or less: the lease is gone), or
    /// `None` when the stream closed.
    fn answer(&mut self) -> impl Future<Output = Result<Option<i64>, EtcdError>> + Send;
}

/// An open watch on owned keys.
pub trait KeyWatch: Send {
    /// The events of the next watch response; an error when the stream broke or was canceled,
    /// `None` when it closed.
    fn next(&mut self) -> impl Future<Output = Result<Option<Vec<KeyEvent>>, EtcdError>> + Send;
}

/// The next events of `watch`, or never when there is none (a `select!` branch).
pub(super) async fn next_watch<W: KeyWatch>(
    watch: &mut Option<W>,
) -> Result<Option<Vec<KeyEvent>>, EtcdError> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
