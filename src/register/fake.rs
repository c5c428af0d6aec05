//! A channel-fed [`LeaseKeys`] for unit tests: every call is handed to the test, which answers it.

use tokio::sync::{mpsc, oneshot};

use super::lease::{KeepAlive, KeyEvent, KeyWatch, LeaseKeys};
use crate::etcd::EtcdError;

type Reply<T> = oneshot::Sender<Result<T, EtcdError>>;

/// One call the registrar made.
#[derive(Debug)]
pub(super) enum Call {
    Grant(i64, Reply<i64>),
    KeepAlive(i64, Reply<FakeKeepAlive>),
    Write(i64, Vec<(String, String)>, Reply<i64>),
    Put(i64, String, String, Reply<()>),
    Remove(i64, String, Reply<()>),
    Watch(Vec<String>, i64, Reply<FakeWatch>),
    Revoke(i64, Reply<()>),
}

/// The keys the registrar holds.
pub(super) struct FakeKeys {
    calls: mpsc::UnboundedSender<Call>,
}

/// The test's end: sees each call and answers it.
pub(super) struct FakeEtcd {
    calls: mpsc::UnboundedReceiver<Call>,
}

pub(super) fn pair() -> (FakeKeys, FakeEtcd) {
    let (tx, rx) = mpsc::unbounded_channel();
    (FakeKeys { calls: tx }, FakeEtcd { calls: rx })
}

/// A keepalive stream: pings go to the test, answers come from it.
#[derive(Debug)]
pub(super) struct FakeKeepAlive {
    pings: mpsc::UnboundedSender<()>,
    answers: mpsc::UnboundedReceiver<Result<i64, EtcdError>>,
}

/// The test's end of a keepalive stream; dropping `answers` closes the stream.
pub(super) struct KeepAliveEnd {
    pub(super) pings: mpsc::UnboundedReceiver<()>,
    pub(super) answers: mpsc::UnboundedSender<Result<i64, EtcdError>>,
}

/// A key watch fed by the test.
#[derive(Debug)]
pub(super) struct FakeWatch {
    events: mpsc::UnboundedReceiver<Result<Vec<KeyEvent>, EtcdError>>,
}

/// The test's end of a key watch.
pub(super) type WatchEnd = mpsc::UnboundedSender<Result<Vec<KeyEvent>, EtcdError>>;

impl FakeKeys {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Call) -> Result<T, EtcdError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.calls.send(make(tx));
        rx.await
            .unwrap_or_else(|_| Err(EtcdError::new("the test dropped the call")))
    }
}

impl LeaseKeys for FakeKeys {
    type KeepAlive = FakeKeepAlive;
    type Watch = FakeWatch;

    async fn grant(&mut self, ttl: i64) -> Result<i64, EtcdError> {
        self.call(|r| Call::Grant(ttl, r)).await
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<FakeKeepAlive, EtcdError> {
        self.call(|r| Call::KeepAlive(lease, r)).await
    }

    async fn write(&mut self, lease: i64, keys: &[(&str, &str)]) -> Result<i64, EtcdError> {
        let keys = keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.call(|r| Call::Write(lease, keys, r)).await
    }

    async fn put(&mut self, lease: i64, key: &str, value: &str) -> Result<(), EtcdError> {
        self.call(|r| Call::Put(lease, key.to_string(), value.to_string(), r))
            .await
    }

    async fn remove(&mut self, lease: i64, key: &str) -> Result<(), EtcdError> {
        self.call(|r| Call::Remove(lease, key.to_string(), r)).await
    }

    async fn watch(&mut self, keys: &[&str], start: i64) -> Result<FakeWatch, EtcdError> {
        let keys = keys.iter().map(|k| k.to_string()).collect();
        self.call(|r| Call::Watch(keys, start, r)).await
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), EtcdError> {
        self.call(|r| Call::Revoke(lease, r)).await
    }
}

impl KeepAlive for FakeKeepAlive {
    async fn ping(&mut self) -> Result<(), EtcdError> {
        self.pings
            .send(())
            .map_err(|_| EtcdError::new("channel closed"))
    }

    async fn answer(&mut self) -> Result<Option<i64>, EtcdError> {
        self.answers.recv().await.transpose()
    }
}

impl KeyWatch for FakeWatch {
    async fn next(&mut self) -> Result<Option<Vec<KeyEvent>>, EtcdError> {
        self.events.recv().await.transpose()
    }
}

impl FakeEtcd {
    /// The next call if one was made already.
    pub(super) fn try_call(&mut self) -> Option<Call> {
        self.calls.try_recv().ok()
    }

    /// The next call.
    pub(super) async fn call(&mut self) -> Call {
        self.calls
            .recv()
            .await
            .expect("the registrar stopped calling")
    }

    /// Expects a grant and answers it with `lease`; returns the TTL asked for.
    pub(super) async fn grant(&mut self, lease: i64) -> i64 {
        match self.call().await {
            Call::Grant(ttl, r) => {
                let _ = r.send(Ok(lease));
                ttl
            }
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    /// Expects a keepalive open for `lease` and opens it.
    pub(super) async fn keep_alive(&mut self, lease: i64) -> KeepAliveEnd {
        match self.call().await {
            Call::KeepAlive(l, r) => {
                assert_eq!(l, lease, "keepalive for the wrong lease");
                let (pings_tx, pings) = mpsc::unbounded_channel();
                let (answers, answers_rx) = mpsc::unbounded_channel();
                let _ = r.send(Ok(FakeKeepAlive {
                    pings: pings_tx,
                    answers: answers_rx,
                }));
                KeepAliveEnd { pings, answers }
            }
            other => panic!("expected a keepalive for {lease}, got {other:?}"),
        }
    }

    /// Expects a write under `lease`, answers it with `revision`, and returns the keys.
    pub(super) async fn write(&mut self, lease: i64, revision: i64) -> Vec<(String, String)> {
        match self.call().await {
            Call::Write(l, keys, r) => {
                assert_eq!(l, lease, "write under the wrong lease");
                let _ = r.send(Ok(revision));
                keys
            }
            other => panic!("expected a write under {lease}, got {other:?}"),
        }
    }

    /// Expects a key watch, opens it, and returns its start revision and feed.
    pub(super) async fn watch(&mut self) -> (Vec<String>, i64, WatchEnd) {
        match self.call().await {
            Call::Watch(keys, start, r) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = r.send(Ok(FakeWatch { events: rx }));
                (keys, start, tx)
            }
            other => panic!("expected a watch, got {other:?}"),
        }
    }

    /// Expects a put under `lease` and answers it with `result`; returns the key.
    pub(super) async fn put(&mut self, lease: i64, result: Result<(), EtcdError>) -> String {
        match self.call().await {
            Call::Put(l, key, value, r) => {
                assert_eq!(l, lease, "put under the wrong lease");
                assert!(!value.is_empty(), "put of {key} with an empty value");
                let _ = r.send(result);
                key
            }
            other => panic!("expected a put under {lease}, got {other:?}"),
        }
    }
}
