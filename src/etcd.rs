//! Connecting to etcd with the options every cairn task relies on.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};

use crate::config::EtcdConfig;

/// Watch and list responses may carry a large catch-up batch; the client's 4 MiB default would
/// break the stream on one. etcd caps one request at 1.5 MiB, so 64 MiB holds dozens of them.
pub(crate) const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 pings find a dead member while a stream is open. etcd refuses pings more often than
/// every 5 s, so ping every 10 s and give up after 5 s without an answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds the wait for a unary call's response headers; streams are not affected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    Client::connect(&config.endpoints, Some(options)).await
}

/// Keys fetched per page of a prefix list: small pages keep each response far below the decode
/// limit even with large values, and 1 000 keys per round trip keeps big registries fast.
const PAGE_SIZE: i64 = 1000;

/// Every key under `prefix`, fetched page by page, all pages pinned to the revision of the first
/// one so the result is one consistent view. Returns that revision and the keys in key order.
///
/// # Errors
/// Any failed call, including a compaction of the pinned revision while paging (list again).
pub async fn list_prefix(
    client: &Client,
    prefix: &str,
) -> Result<(i64, Vec<KeyValue>), etcd_client::Error> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_DECODE_BYTES);
    let end = prefix_end(prefix.as_bytes());
    let mut all = Vec::new();
    let mut revision = 0;
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE_SIZE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let mut page = kv.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map(|h| h.revision()).unwrap_or_default();
        }
        let kvs = page.take_kvs();
        let more = page.more();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        let done = !more || kvs.is_empty();
        all.extend(kvs);
        if done {
            return Ok((revision, all));
        }
    }
}

/// The end of the key range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"/services/"), b"/services0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}

/// One line for an etcd error: the gRPC message and its innermost cause, without the nested
/// debug output of the transport stack.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let out = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    let mut innermost = None;
    while let Some(c) = cause {
        innermost = Some(c.to_string());
        cause = c.source();
    }
    match innermost {
        Some(root) if !out.contains(&root) => format!("{out}: {root}"),
        _ => out,
    }
}

/// How often a continuing outage is logged again after the first warning.
const OUTAGE_REMINDER: Duration = Duration::from_secs(30);

/// Tracks an etcd outage so logs say once that etcd is gone, remind every 30 s, and say when it
/// is back, instead of one warning per retry.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// When the outage began and when it was last logged.
    since: Option<(std::time::Instant, std::time::Instant)>,
    /// Failed attempts in this outage.
    failures: u64,
}

impl Outage {
    /// Records a failed attempt at `what`.
    pub(crate) fn failed(&mut self, what: &str, error: &str) {
        let now = std::time::Instant::now();
        self.failures += 1;
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                tracing::warn!(%error, "{what} failed; retrying in the background");
            }
            Some((began, logged)) if now.duration_since(*logged) >= OUTAGE_REMINDER => {
                *logged = now;
                let down_for = humantime::format_duration(Duration::from_secs(
                    now.duration_since(*began).as_secs(),
                ));
                tracing::warn!(%error, failures = self.failures, %down_for, "{what} still failing");
            }
            Some(_) => tracing::debug!(%error, "{what} failed"),
        }
    }

    /// Records a success; logs the end of an outage if there was one.
    pub(crate) fn recovered(&mut self, what: &str) {
        if let Some((began, _)) = self.since.take() {
            let down_for = humantime::format_duration(Duration::from_millis(
                began.elapsed().as_millis() as u64,
            ));
            tracing::info!(failures = self.failures, %down_for, "{what} works again");
        }
        self.failures = 0;
    }
}
