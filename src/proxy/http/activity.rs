//! Whether a client connection is idle: no request in flight, and none for the idle timeout.
//! HTTP/1.1's header timer covers a silent kept-alive connection; this covers HTTP/2, where a
//! client that only answers pings would otherwise hold its connection slot forever.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::body::{Guarded, ProxyBody};

/// The request activity of one client connection.
#[derive(Debug)]
pub(crate) struct Activity {
    /// What `last` counts from.
    origin: Instant,
    /// Requests being handled now.
    busy: AtomicUsize,
    /// Milliseconds after `origin` when a request last started or finished.
    last: AtomicU64,
}

/// One request in flight; the connection is busy until it is dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            busy: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(Arc::clone(self))
    }

    /// Resolves once no request has been in flight for `after`.
    pub(crate) async fn idle(&self, after: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + after;
            if self.busy.load(Ordering::Relaxed) == 0 && Instant::now() >= deadline {
                return;
            }
            // Busy: look again after a whole idle period; the request's end moves `last`.
            let wake = if self.busy.load(Ordering::Relaxed) == 0 {
                deadline
            } else {
                Instant::now() + after
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A response body that keeps its connection busy until it has been sent (or dropped), so a long
/// download is never taken for an idle connection.
pub(crate) type Tracked = Guarded<ProxyBody, Busy>;

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_and_never_while_one_runs() {
        let a = Activity::new();
        let start = Instant::now();
        a.idle(Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        let busy = a.begin();
        let waiting = tokio::time::timeout(Duration::from_secs(20), a.idle(Duration::from_secs(5)));
        assert!(waiting.await.is_err(), "idle while a request runs");
        drop(busy);
        let ended = Instant::now();
        a.idle(Duration::from_secs(5)).await;
        assert!(ended.elapsed() >= Duration::from_secs(5));
        assert!(ended.elapsed() <= Duration::from_secs(6));
    }
}
