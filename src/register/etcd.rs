//! The real [`LeaseKeys`]: etcd leases, conditional transactions and a watch on the owned keys.

use etcd_client::{
    Compare, CompareOp, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};

use super::lease::{KeepAlive, KeyEvent, KeyWatch, LeaseKeys};
use crate::etcd::{Etcd, EtcdError, EtcdMetrics, Op};

/// Keys written per transaction. Each key costs two comparisons (value and lease), and etcd
/// refuses more than 128 operations per list by default, so 64 keys stay within every list.
const KEYS_PER_TXN: usize = 64;

/// Leases and keys in a real etcd.
#[derive(Debug)]
pub struct EtcdLeases {
    /// The connection; its channel reconnects by itself.
    etcd: Etcd,
}

impl EtcdLeases {
    /// Leases and keys through `etcd`.
    pub fn new(etcd: Etcd) -> EtcdLeases {
        EtcdLeases { etcd }
    }

    fn metrics(&self) -> EtcdMetrics {
        self.etcd.metrics().clone()
    }
}

fn unless_owned(key: &str, lease: i64) -> Txn {
    Txn::new()
        .when([Compare::lease(key, CompareOp::Equal, lease)])
        .and_then([TxnOp::delete(key, None)])
}

/// An open keep-alive stream, counting what it sends.
#[derive(Debug)]
pub struct KeepAliveStream {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    metrics: EtcdMetrics,
}

impl LeaseKeys for EtcdLeases {
    type KeepAlive = KeepAliveStream;
    type Watch = WatchStream;

    async fn grant(&mut self, ttl: i64) -> Result<i64, EtcdError> {
        // A session starts here or with a keep-alive: either way with a fresh token, since any
        // change to etcd's users and roles makes every older token stale.
        self.etcd.authenticate().await?;
        let mut leases = self.etcd.client().lease_client();
        let granted = self
            .metrics()
            .observe(Op::LeaseGrant, async {
                Ok(leases.grant(ttl, None).await?.id())
            })
            .await;
        granted.map_err(|e| self.etcd.at(e))
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<Self::KeepAlive, EtcdError> {
        self.etcd.authenticate().await?;
        let opened = self.etcd.client().lease_client().keep_alive(lease).await;
        self.etcd.metrics().count(Op::KeepAlive, opened.is_ok());
        let (keeper, stream) = opened.map_err(|e| self.etcd.at(e))?;
        Ok(KeepAliveStream {
            keeper,
            stream,
            metrics: self.metrics(),
        })
    }

    async fn write(&mut self, lease: i64, keys: &[(&str, &str)]) -> Result<i64, EtcdError> {
        let mut kv = self.etcd.client().kv_client();
        let metrics = self.metrics();
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
            let txn = Txn::new().when(same).or_else(puts);
            let resp = metrics
                .observe(Op::Txn, async { Ok(kv.txn(txn).await?) })
                .await?;
            revision = revision.max(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        Ok(revision)
    }

    async fn put(&mut self, lease: i64, key: &str, value: &str) -> Result<(), EtcdError> {
        let mut kv = self.etcd.client().kv_client();
        self.metrics()
            .observe(Op::Put, async {
                kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await?;
                Ok(())
            })
            .await
    }

    async fn remove(&mut self, lease: i64, key: &str) -> Result<(), EtcdError> {
        let mut kv = self.etcd.client().kv_client();
        self.metrics()
            .observe(Op::Txn, async {
                kv.txn(unless_owned(key, lease)).await?;
                Ok(())
            })
            .await
    }

    async fn watch(&mut self, keys: &[&str], start: i64) -> Result<WatchStream, EtcdError> {
        // One watch per owned key, all on one stream: exactly those keys, not the range
        // between the smallest and the largest, which can be most of the registry.
        let Some((first, rest)) = keys.split_first() else {
            return Err(EtcdError::new("no keys to watch"));
        };
        let mut options = WatchOptions::new();
        if start > 0 {
            options = options.with_start_revision(start);
        }
        let opened = async {
            let mut stream = self
                .etcd
                .client()
                .watch_client()
                .watch(*first, Some(options.clone()))
                .await?;
            for key in rest {
                stream.watch(*key, Some(options.clone())).await?;
            }
            Ok::<_, etcd_client::Error>(stream)
        }
        .await;
        self.etcd.metrics().count(Op::Watch, opened.is_ok());
        Ok(opened?)
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), EtcdError> {
        let mut leases = self.etcd.client().lease_client();
        self.metrics()
            .observe(Op::LeaseRevoke, async {
                leases.revoke(lease).await?;
                Ok(())
            })
            .await
    }
}

impl KeepAlive for KeepAliveStream {
    async fn ping(&mut self) -> Result<(), EtcdError> {
        let sent = self.keeper.keep_alive().await;
        self.metrics.count(Op::KeepAlive, sent.is_ok());
        Ok(sent?)
    }

    async fn answer(&mut self) -> Result<Option<i64>, EtcdError> {
        Ok(self.stream.message().await?.map(|r| r.ttl()))
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
