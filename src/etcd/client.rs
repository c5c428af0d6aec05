//! Connecting to etcd with the options every cairn task relies on, and reading a prefix page by
//! page at one revision.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};

use super::config::EtcdConfig;
use super::error::EtcdError;
use crate::registry::prefix_end;

/// Watch and list responses may carry a large catch-up batch; the client's 4 MiB default would
/// break the stream on one. etcd caps one request at 1.5 MiB, so 64 MiB holds dozens of them.
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 pings find a dead member while a stream is open. etcd refuses pings more often than
/// every 5 s, so ping every 10 s and give up after 5 s without an answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds the wait for a unary call's response headers; streams are not affected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys fetched per page of a prefix list: small pages keep each response far below the decode
/// limit even with large values, and 1 000 keys per round trip keeps big registries fast.
const PAGE_SIZE: i64 = 1000;

/// Builds a client for `config`'s endpoints.
///
/// The channel connects lazily, so this succeeds while etcd is down; calls fail until a member
/// answers. Every call carries require-leader, so a member cut off from its quorum answers
/// "no leader" instead of serving a frozen view.
///
/// # Errors
/// When an endpoint URL cannot be used at all.
pub async fn connect(config: &EtcdConfig) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_require_leader(true);
    let endpoints: Vec<&str> = config.endpoints.iter().map(|e| e.as_str()).collect();
    Client::connect(endpoints, Some(options)).await
}

/// One consistent read of a prefix.
#[derive(Debug)]
pub struct Listing {
    /// The revision every page was read at.
    pub revision: i64,
    /// The id of the cluster that answered.
    pub cluster_id: u64,
    /// Every key under the prefix, in key order.
    pub kvs: Vec<KeyValue>,
}

/// Every key under `prefix`, fetched page by page, all pages pinned to the revision of the first
/// one so the result is one consistent view.
///
/// # Errors
/// Any failed call, including a compaction of the pinned revision while paging (list again).
pub async fn list_prefix(client: &Client, prefix: &str) -> Result<Listing, EtcdError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_DECODE_BYTES);
    let end = prefix_end(prefix.as_bytes());
    let mut listing = Listing {
        revision: 0,
        cluster_id: 0,
        kvs: Vec::new(),
    };
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE_SIZE);
        if listing.revision > 0 {
            options = options.with_revision(listing.revision);
        }
        let mut page = kv.get(from.clone(), Some(options)).await?;
        if listing.revision == 0 {
            if let Some(h) = page.header() {
                listing.revision = h.revision();
                listing.cluster_id = h.cluster_id();
            }
        }
        let kvs = page.take_kvs();
        let more = page.more();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        let done = !more || kvs.is_empty();
        listing.kvs.extend(kvs);
        if done {
            return Ok(listing);
        }
    }
}
