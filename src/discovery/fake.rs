//! A channel-fed [`ListWatch`] for unit tests: every call is handed to the test, which answers it.

use tokio::sync::{mpsc, oneshot};

use super::source::Header;
use super::source::{Kv, ListWatch, Listing, WatchMessage, WatchStream};
use crate::etcd::EtcdError;

/// One call discovery made.
pub(super) enum Call {
    /// A list; answer through the sender.
    List(oneshot::Sender<Result<Listing, EtcdError>>),
    /// A watch from the revision; answer through the sender.
    Watch(i64, oneshot::Sender<Result<FakeWatch, EtcdError>>),
}

/// The source discovery holds.
pub(super) struct FakeSource {
    calls: mpsc::UnboundedSender<Call>,
}

/// The test's end: sees each call and answers it.
pub(super) struct FakeEtcd {
    calls: mpsc::UnboundedReceiver<Call>,
}

/// A source and the test's end of it.
pub(super) fn pair() -> (FakeSource, FakeEtcd) {
    let (tx, rx) = mpsc::unbounded_channel();
    (FakeSource { calls: tx }, FakeEtcd { calls: rx })
}

/// An open watch, fed by the test through a [`Feed`].
pub(super) struct FakeWatch {
    messages: mpsc::UnboundedReceiver<Result<WatchMessage, EtcdError>>,
}

/// The test's end of an open watch; dropping it closes the stream.
pub(super) type Feed = mpsc::UnboundedSender<Result<WatchMessage, EtcdError>>;

impl ListWatch for FakeSource {
    type Watch = FakeWatch;

    async fn list(&mut self) -> Result<Listing, EtcdError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.calls.send(Call::List(tx));
        rx.await
            .unwrap_or_else(|_| Err(EtcdError::new("the test dropped the list")))
    }

    async fn watch(&mut self, start: i64) -> Result<FakeWatch, EtcdError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.calls.send(Call::Watch(start, tx));
        rx.await
            .unwrap_or_else(|_| Err(EtcdError::new("the test dropped the watch")))
    }
}

impl WatchStream for FakeWatch {
    async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        self.messages.recv().await.transpose()
    }
}

impl FakeEtcd {
    async fn call(&mut self) -> Call {
        self.calls.recv().await.expect("discovery stopped calling")
    }

    /// Waits for the next call and holds it unanswered for as long as the result lives.
    pub(super) async fn call_held(&mut self) -> Call {
        self.call().await
    }

    /// Waits for a list and answers it with `kvs` at `header`.
    pub(super) async fn list(&mut self, header: Header, kvs: Vec<Kv>) {
        self.list_result(Ok(Listing { header, kvs })).await;
    }

    /// Waits for a list and answers it with `result`.
    pub(super) async fn list_result(&mut self, result: Result<Listing, EtcdError>) {
        match self.call().await {
            Call::List(reply) => {
                let _ = reply.send(result);
            }
            Call::Watch(start, _) => panic!("expected a list, got a watch from {start}"),
        }
    }

    /// Waits for a watch, opens it with a `Created` message at `header`, and returns its start
    /// revision and feed.
    pub(super) async fn watch(&mut self, header: Header) -> (i64, Feed) {
        let (start, feed) = self.watch_unopened().await;
        feed.send(Ok(WatchMessage::Created(header)))
            .expect("discovery holds the watch");
        (start, feed)
    }

    /// Waits for a watch and returns its start revision and feed, without a `Created` message.
    pub(super) async fn watch_unopened(&mut self) -> (i64, Feed) {
        match self.call().await {
            Call::Watch(start, reply) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = reply.send(Ok(FakeWatch { messages: rx }));
                (start, tx)
            }
            Call::List(_) => panic!("expected a watch, got a list"),
        }
    }
}
