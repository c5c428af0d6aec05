//! The real [`ListWatch`]: etcd-client with paged lists, prev-kv and progress notifications.

use super::shared::{SharedStream, Watch};
use super::source::{Header, Kv, ListWatch, Listing};
use crate::etcd::{list_prefix, Etcd, EtcdError};

/// Lists and watches a prefix of a real etcd; the watch goes on the node's shared stream.
pub struct EtcdSource {
    /// The connection; its channel reconnects by itself.
    etcd: Etcd,
    /// The registry prefix.
    prefix: String,
    /// The stream watches are opened on.
    stream: SharedStream,
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSource")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdSource {
    /// A source for `prefix` through `etcd`, watching on `stream`.
    pub fn new(etcd: Etcd, prefix: &str, stream: SharedStream) -> EtcdSource {
        EtcdSource {
            etcd,
            prefix: prefix.to_string(),
            stream,
        }
    }
}

impl ListWatch for EtcdSource {
    type Watch = Watch;

    async fn list(&mut self) -> Result<Listing, EtcdError> {
        self.etcd.authenticate().await?;
        let listed = list_prefix(&self.etcd, &self.prefix).await?;
        Ok(Listing {
            header: Header {
                cluster_id: listed.cluster_id,
                revision: listed.revision,
            },
            kvs: listed
                .kvs
                .into_iter()
                .map(|kv| {
                    let mod_revision = kv.mod_revision();
                    let (key, value) = kv.into_key_value();
                    Kv {
                        key,
                        value,
                        mod_revision,
                    }
                })
                .collect(),
        })
    }

    async fn watch(&mut self, start: i64) -> Result<Self::Watch, EtcdError> {
        Ok(self.stream.open(&self.prefix, start))
    }
}
