//! The real [`ListWatch`]: etcd-client with paged lists, prev-kv and progress notifications.

use etcd_client::{EventType, KeyValue, ResponseHeader, WatchOptions};

use super::source::{Event, Header, Kv, ListWatch, Listing, WatchMessage, WatchStream};
use crate::etcd::{list_prefix, Etcd, EtcdError, Op, MAX_DECODE_BYTES};

/// Lists and watches a prefix of a real etcd.
pub struct EtcdSource {
    /// The connection; its channel reconnects by itself.
    etcd: Etcd,
    /// The registry prefix.
    prefix: String,
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSource")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdSource {
    /// A source for `prefix` through `etcd`.
    pub fn new(etcd: Etcd, prefix: &str) -> EtcdSource {
        EtcdSource {
            etcd,
            prefix: prefix.to_string(),
        }
    }
}

fn header(h: Option<&ResponseHeader>) -> Header {
    h.map_or_else(Header::default, |h| Header {
        cluster_id: h.cluster_id(),
        revision: h.revision(),
    })
}

fn kv(kv: &KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

impl ListWatch for EtcdSource {
    type Watch = etcd_client::WatchStream;

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
        // A watch stream carries the token it was opened with, and etcd refuses to create a
        // watch with an expired one: every (re)open gets a fresh token.
        self.etcd.authenticate().await?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        let opened = self
            .etcd
            .client()
            .watch_client()
            .max_decoding_message_size(MAX_DECODE_BYTES)
            .watch(self.prefix.clone(), Some(options))
            .await;
        self.etcd.metrics().count(Op::Watch, opened.is_ok());
        opened.map_err(|e| self.etcd.at(e))
    }
}

impl WatchStream for etcd_client::WatchStream {
    async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        let Some(resp) = self.message().await? else {
            return Ok(None);
        };
        let head = header(resp.header());
        Ok(Some(if resp.canceled() {
            if resp.compact_revision() > 0 {
                WatchMessage::Compacted {
                    compact_revision: resp.compact_revision(),
                }
            } else {
                WatchMessage::Canceled {
                    reason: resp.cancel_reason().to_string(),
                }
            }
        } else if resp.created() {
            WatchMessage::Created(head)
        } else if resp.events().is_empty() {
            WatchMessage::Progress(head)
        } else {
            let events = resp
                .events()
                .iter()
                .filter_map(|e| {
                    e.kv().map(|k| Event {
                        deleted: e.event_type() == EventType::Delete,
                        kv: kv(k),
                    })
                })
                .collect();
            WatchMessage::Events(head, events)
        }))
    }
}
