//! A timer per connection that is set per request without touching tokio's timer wheel: it
//! fires at the deadline it was armed for, and re-arms itself if the deadline has since moved
//! later. Deadlines that only move later (the next head's, the next response's) then cost no
//! timer operation per request, where a `timeout` per request registers and removes one.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

/// A deadline, lazily re-armed.
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
}

impl Deadline {
    /// A deadline `after` from now.
    pub(crate) fn after(after: Duration) -> Deadline {
        let at = Instant::now() + after;
        Deadline {
            sleep: Box::pin(sleep_until(at)),
            at,
        }
    }

    /// Moves the deadline to `after` from now.
    pub(crate) fn reset(&mut self, after: Duration) {
        self.at = Instant::now() + after;
        if self.at < self.sleep.deadline() {
            self.sleep.as_mut().reset(self.at);
        }
    }

    /// Resolves once the deadline has passed.
    pub(crate) async fn passed(&mut self) {
        std::future::poll_fn(|cx| self.poll_passed(cx)).await;
    }

    /// Ready once the deadline has passed; the task is woken then.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let at = self.at;
            self.sleep.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_its_latest_setting_both_ways() {
        let start = Instant::now();
        let mut d = Deadline::after(Duration::from_secs(10));
        // Later: the timer armed for 10 s re-arms itself for 15 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        d.reset(Duration::from_secs(10));
        d.passed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        // Sooner: the timer moves.
        d.reset(Duration::from_secs(60));
        d.reset(Duration::from_secs(2));
        d.passed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(17));
    }
}
