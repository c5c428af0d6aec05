//! A flag that a task sets for a future it polls itself: waiting on it registers no waker.
//!
//! A client connection on cairn's own HTTP/1.1 path watches for a drain beside its requests
//! ([`super::side::Side`]); when the drain fires, the same task sets this flag and then polls
//! the requests, whose wait for the next head sees the flag and closes an idle connection at
//! once. Registering a waker on every poll of that wait would cost a waker clone per wake-up
//! for an event that comes once in a connection's life.
//!
//! Invariant: [`Flag::set`] is only called by the task that polls [`Flag::wait`], which polls
//! every wait on the flag after setting it. A flag set from elsewhere wakes nobody.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// A flag set once, by the task that waits on it.
#[derive(Debug, Default)]
pub(crate) struct Flag(AtomicBool);

impl Flag {
    /// Sets the flag. The caller is the task that waits on it, and polls its waits next.
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Resolves at the first poll after the flag was set; registers no waker.
    pub(crate) async fn wait(&self) {
        poll_fn(|_| {
            if self.is_set() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_its_own_task_sets_the_flag_and_polls_it() {
        let flag = Flag::default();
        let mut waiting = pin!(flag.wait());
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(1)));
        // As a connection's task does: an outside event (the timer) wakes the task, which sets
        // the flag, then polls the future that waits on it.
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            poll_fn(|cx| {
                if timer.as_mut().poll(cx).is_ready() {
                    flag.set();
                }
                waiting.as_mut().poll(cx)
            }),
        )
        .await;
        assert!(ended.is_ok(), "the wait did not see the flag its task set");
        assert!(flag.is_set());
    }
}
