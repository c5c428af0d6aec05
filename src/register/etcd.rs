//! The real [`LeaseKeys`]: etcd leases, conditional transactions and a watch on the owned keys.

use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, WatchOptions, WatchStream,
};

use super::lease::{KeepAlive, KeyEvent, KeyWatch, LeaseKeys};
use crate::etcd::EtcdError;

/// Keys written per transaction. Each key costs two comparisons (value and lease), and etcd
/// refuses more than 128 operations per list by default, so 64 keys stay within every list.
const KEYS_PER_TXN: usize = 64;

/// Leases and keys in a real etcd.
pub struct EtcdLeases {
    /// The client; its channel reconnects by itself.
    client: Client,
}

impl std::fmt::Debug for EtcdLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLeases").finish_non_exhaustive()
    }
}

impl EtcdLeases {
    /// Leases and keys through `client`.
    pub fn new(client: Client) -> EtcdLeases {
        EtcdLeases { client }
    }
}

fn unless_owned(key: &str, lease: i64) -> Txn {
    Txn::new()
        .when([Compare::lease(key, CompareOp::Equal, lease)])
        .and_then([TxnOp::delete(key, None)])
}

impl LeaseKeys for EtcdLeases {
    type KeepAlive = (LeaseKeeper, LeaseKeepAliveStream);
    type Watch = WatchStream;

    async fn grant(&mut self, ttl: i64) -> Result<i64, EtcdError> {
        Ok(self.client.lease_client().grant(ttl, None).await?.id())
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<Self::KeepAlive, EtcdError> {
        Ok(self.client.lease_client().keep_alive(lease).await?)
    }

    async fn write(&mut self, lease: i64, keys: &[(&str, &str)]) -> Result<i64, EtcdError> {
        let mut kv = self.client.kv_client();
        let mut revision = 0;
        for chunk in keys.chunks(KEYS_PER_TXN) {
            // Written only if anything differs, so a reconnect that finds everything in place
            // does not wake every watcher of the registry.
            let same: Vec<Compare> = chunk
                .iter()
                .flat_map(|(key, value)| {
                    [
                        Compare::value(*key, CompareOp::Equal, *value),
                        Compare::lease(*key, CompareOp::Equal, lease),
                    ]
                })
                .collect();
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, value)| {
                    TxnOp::put(*key, *value, Some(PutOptions::new().with_lease(lease)))
                })
                .collect();
            let resp = kv.txn(Txn::new().when(same).or_else(puts)).await?;
            revision = revision.max(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        Ok(revision)
    }

    async fn put(&mut self, lease: i64, key: &str, value: &str) -> Result<(), EtcdError> {
        self.client
            .kv_client()
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok(())
    }

    async fn remove(&mut self, lease: i64, key: &str) -> Result<(), EtcdError> {
        self.client
            .kv_client()
            .txn(unless_owned(key, lease))
            .await?;
        Ok(())
    }

    async fn watch(&mut self, keys: &[&str], start: i64) -> Result<WatchStream, EtcdError> {
        let (Some(first), Some(last)) = (keys.iter().min(), keys.iter().max()) else {
            return Err(EtcdError::new("no keys to watch"));
        };
        let mut end = last.as_bytes().to_vec();
        end.push(0);
        let mut options = WatchOptions::new().with_range(end);
        if start > 0 {
            options = options.with_start_revision(start);
        }
        Ok(self
            .client
            .watch_client()
            .watch(*first, Some(options))
            .await?)
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), EtcdError> {
        self.client.lease_client().revoke(lease).await?;
        Ok(())
    }
}

impl KeepAlive for (LeaseKeeper, LeaseKeepAliveStream) {
    async fn ping(&mut self) -> Result<(), EtcdError> {
        Ok(self.0.keep_alive().await?)
    }

    async fn answer(&mut self) -> Result<Option<i64>, EtcdError> {
        Ok(self.1.message().await?.map(|r| r.ttl()))
    }
}

impl KeyWatch for WatchStream {
    async fn next(&mut self) -> Result<Option<Vec<KeyEvent>>, EtcdError> {
        let Some(resp) = self.message().await? else {
            return Ok(None);
        };
        if resp.canceled() {
            return Err(EtcdError::new(format!(
                "key watch canceled: {}",
                resp.cancel_reason()
            )));
        }
        Ok(Some(
            resp.events()
                .iter()
                .filter_map(|e| {
                    e.kv().map(|kv| KeyEvent {
                        key: kv.key().to_vec(),
                        value: kv.value().to_vec(),
                        lease: kv.lease(),
                        deleted: e.event_type() == EventType::Delete,
                    })
                })
                .collect(),
        ))
    }
}
