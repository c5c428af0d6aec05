//! A future polled beside a busy one, only when what it waits on has happened.
//!
//! A client connection's task wakes several times per request (the client's bytes, the
//! instance's answer, each write), and `select!` polls every branch on every wake-up. The
//! branches that watch for a drain, an idle timeout or an abort are ready a handful of times in a
//! connection's life, yet polling them cost a sixth of the HTTP path's user time (two
//! cancellation tokens and a timer, each taking a lock). [`Side`] gives its future a waker of its
//! own and polls it only after that waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// A future polled only when its own waker has fired.
pub(crate) struct Side<F> {
    future: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// The side future's waker: sets `signal.fired`, then wakes the polling task.
    waker: Waker,
    /// The polling task's waker last handed to `signal`.
    parent: Option<Waker>,
}

struct Signal {
    fired: AtomicBool,
    parent: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let parent = self
            .parent
            .lock()
            .expect("the waker lock is never held across a panic");
        if let Some(waker) = parent.as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl<F: Future> Side<F> {
    pub(crate) fn new(future: F) -> Side<F> {
        let signal = Arc::new(Signal {
            // The first poll registers the future's interests.
            fired: AtomicBool::new(true),
            parent: Mutex::new(None),
        });
        Side {
            future: Box::pin(future),
            waker: Waker::from(Arc::clone(&signal)),
            signal,
            parent: None,
        }
    }

    /// Polls the future if its waker fired since the last poll; `Pending` otherwise.
    pub(crate) fn poll_side(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self
            .parent
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            *self
                .signal
                .parent
                .lock()
                .expect("the waker lock is never held across a panic") = Some(cx.waker().clone());
            self.parent = Some(cx.waker().clone());
        }
        if !self.signal.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.future
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_side_future_is_polled_only_when_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&polls);
        let timer = tokio::time::sleep(Duration::from_secs(1));
        let mut timer = Box::pin(timer);
        let mut side = Side::new(poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            timer.as_mut().poll(cx)
        }));
        // A busy future that wakes its task 100 times before the timer is due.
        let mut busy = 0;
        poll_fn(|cx| {
            if side.poll_side(cx).is_ready() {
                return Poll::Ready(());
            }
            if busy < 100 {
                busy += 1;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await;
        // Once to register, once when the timer fired.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert_eq!(busy, 100);
    }
}
