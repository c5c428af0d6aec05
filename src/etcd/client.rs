//! Connecting to etcd with the options every cairn task relies on (TLS, the user to
//! authenticate as), and reading a prefix page by page at one revision.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    TlsOptions, Txn, TxnOp,
};

use super::config::EtcdConfig;
use super::credentials::Credentials;
use super::error::EtcdError;
use super::metrics::{EtcdMetrics, Op};
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

/// The client options for `config`: timeouts, pings, require-leader and TLS. No user: cairn
/// authenticates itself (see [`Etcd::authenticate`]) so that building a client never waits for
/// etcd.
fn options(config: &EtcdConfig) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_require_leader(true)
        // Unary calls whose token expired authenticate again and are retried once.
        .with_auto_token_refresh(true);
    if config.secure() {
        let tls = config.tls.clone().unwrap_or_default();
        let mut t = TlsOptions::new();
        t = match &tls.ca {
            Some(ca) => t.ca_certificate(Certificate::from_pem(&ca.pem)),
            None => t.with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(&cert.pem, &key.pem));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name.clone());
        }
        options = options.with_tls(t);
    }
    options
}

/// Builds a client for `config`'s endpoints.
///
/// The channel connects lazily, so this succeeds while etcd is down; calls fail until a member
/// answers. Every call carries require-leader, so a member cut off from its quorum answers
/// "no leader" instead of serving a frozen view.
///
/// # Errors
/// When an endpoint URL cannot be used at all.
pub async fn connect(config: &EtcdConfig) -> Result<Client, EtcdError> {
    let endpoints: Vec<&str> = config.endpoints.iter().map(|e| e.as_str()).collect();
    let named = endpoints.join(",");
    Client::connect(endpoints, Some(options(config)))
        .await
        .map_err(|e| EtcdError::from(e).context(format_args!("etcd at {named}")))
}

/// A client for one member alone, for its status.
pub(crate) async fn connect_member(
    config: &EtcdConfig,
    endpoint: &str,
) -> Result<Client, EtcdError> {
    Client::connect([endpoint], Some(options(config)))
        .await
        .map_err(|e| EtcdError::from(e).context(format_args!("etcd at {endpoint}")))
}

/// A connection to etcd with the user it authenticates as and the metrics of its calls.
/// Clones share the connection, the token and the metrics.
#[derive(Clone)]
pub struct Etcd {
    /// The client; its channel reconnects by itself.
    client: Client,
    /// Who to authenticate as, when etcd has auth enabled.
    credentials: Option<Credentials>,
    /// The endpoints, for error messages.
    endpoints: String,
    /// Counters of every call.
    metrics: EtcdMetrics,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// A connection for `config`, counting its calls on `metrics`. It never waits for etcd.
    ///
    /// # Errors
    /// When an endpoint URL cannot be used at all.
    pub async fn connect(config: &EtcdConfig, metrics: EtcdMetrics) -> Result<Etcd, EtcdError> {
        Ok(Etcd {
            client: connect(config).await?,
            credentials: config.credentials.clone(),
            endpoints: config
                .endpoints
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(","),
            metrics,
        })
    }

    /// The client, for calls the caller counts itself.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The metrics calls are counted on.
    pub fn metrics(&self) -> &EtcdMetrics {
        &self.metrics
    }

    /// `e`, said to come from this connection's endpoints: what an operator reads names where
    /// cairn was talking to.
    pub fn at(&self, e: impl Into<EtcdError>) -> EtcdError {
        e.into().context(format_args!("etcd at {}", self.endpoints))
    }

    /// Authenticates again, for a fresh token: streams carry the token they were opened with,
    /// and etcd refuses a watch created on a stream whose token expired. Nothing to do without
    /// credentials.
    ///
    /// # Errors
    /// A message naming the user and the endpoints (never the password).
    pub async fn authenticate(&mut self) -> Result<(), EtcdError> {
        let Some(c) = &self.credentials else {
            return Ok(());
        };
        let creds = Some((c.username.clone(), c.password.expose().to_string()));
        let user = c.username.clone();
        let endpoints = self.endpoints.clone();
        let metrics = self.metrics.clone();
        let client = &mut self.client;
        metrics
            .observe(Op::Authenticate, async move {
                client.update_user(creds).await.map_err(|e| {
                    EtcdError::from(e).context(format!("authenticating as {user:?} at {endpoints}"))
                })
            })
            .await
    }
}

/// Whether etcd answers a read of `prefix` (a count, no values) as this connection's user, and
/// would let it write `writes`: reachable, authenticated, allowed to read the registry and to
/// write these keys.
///
/// The writes are checked without writing: a transaction whose only branch puts them, behind a
/// condition that never holds (a key created before revision 0). etcd checks the permissions of
/// every branch before it evaluates the condition.
///
/// # Errors
/// What failed, naming the endpoints.
pub async fn answers(etcd: &mut Etcd, prefix: &str, writes: &[String]) -> Result<(), EtcdError> {
    etcd.authenticate().await?;
    let mut kv = etcd.client.kv_client();
    let options = GetOptions::new()
        .with_range(prefix_end(prefix.as_bytes()))
        .with_count_only();
    let checked = etcd
        .metrics
        .observe(Op::Range, async {
            Ok(kv.get(prefix.as_bytes(), Some(options)).await?)
        })
        .await;
    checked.map_err(|e| etcd.at(e))?;
    let Some(first) = writes.first() else {
        return Ok(());
    };
    let never = Compare::create_revision(first.as_str(), CompareOp::Less, 0);
    let puts: Vec<TxnOp> = writes
        .iter()
        .map(|key| TxnOp::put(key.as_str(), "", None))
        .collect();
    let txn = Txn::new().when([never]).and_then(puts);
    let tried = etcd
        .metrics
        .observe(Op::Txn, async { Ok(kv.txn(txn).await?) })
        .await;
    tried.map(drop).map_err(|e| etcd.at(e))
}

/// One consistent read of a prefix.
#[derive(Debug)]
pub struct PrefixRead {
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
pub async fn list_prefix(etcd: &Etcd, prefix: &str) -> Result<PrefixRead, EtcdError> {
    list_pages(etcd, prefix).await.map_err(|e| etcd.at(e))
}

async fn list_pages(etcd: &Etcd, prefix: &str) -> Result<PrefixRead, EtcdError> {
    let mut kv = etcd
        .client
        .kv_client()
        .max_decoding_message_size(MAX_DECODE_BYTES);
    let end = prefix_end(prefix.as_bytes());
    let mut listing = PrefixRead {
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
        let mut page = etcd
            .metrics
            .observe(Op::Range, async {
                Ok(kv.get(from.clone(), Some(options)).await?)
            })
            .await?;
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
