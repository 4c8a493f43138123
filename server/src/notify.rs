//! A change counter that tasks of one core can wait on (a high watermark moved, a Raft group
//! committed, a leader changed).
//!
//! Core-local (`!Send`). A waiter reads the generation, checks its condition, and waits for
//! the generation to move; a notifier bumps it and wakes everyone, so no change is missed
//! between the check and the wait. Wakers are kept once per task (deduplicated), so the list
//! is bounded by the number of waiting tasks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A counter of changes that tasks can wait on.
#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Records a change and wakes every waiter.
    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once the generation differs from `seen`.
    pub fn wait(&self, seen: u64) -> WaitChange<'_> {
        WaitChange { notify: self, seen }
    }

    /// Waits until `done()` holds or the deadline passes; returns whether it holds.
    pub async fn wait_until(&self, deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
        loop {
            let seen = self.generation();
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let timer = glommio::timer::sleep(deadline - now);
            futures::pin_mut!(timer);
            let changed = self.wait(seen);
            futures::pin_mut!(changed);
            futures::future::select(timer, changed).await;
        }
    }
}

/// The future of [`Notify::wait`].
pub struct WaitChange<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for WaitChange<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.seen {
            return Poll::Ready(());
        }
        let mut w = self.notify.wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
