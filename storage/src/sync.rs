//! A single-threaded FIFO semaphore for tasks of one core.
//!
//! Used instead of `glommio::sync::Semaphore`, whose release path wakes waiters while it holds
//! the semaphore's internal `RefCell` borrowed; under load the broker hit an "already borrowed"
//! panic inside it. Here no borrow is held while a waker runs or is dropped.
//!
//! Waiters are served strictly in arrival order (a large request is not starved by small ones).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    available: u64,
    next_ticket: u64,
    /// Waiting tickets in arrival order, with the units each wants and its waker.
    queue: VecDeque<(u64, u64, Option<Waker>)>,
}

/// A counting semaphore; clone the `Rc` to share it between tasks.
#[derive(Default)]
pub struct LocalSemaphore {
    state: RefCell<State>,
}

/// Units held until dropped.
pub struct LocalPermit {
    sem: Rc<LocalSemaphore>,
    units: u64,
}

impl Drop for LocalPermit {
    fn drop(&mut self) {
        self.sem.release(self.units);
    }
}

impl LocalSemaphore {
    /// A semaphore with `units` available.
    pub fn new(units: u64) -> Rc<LocalSemaphore> {
        Rc::new(LocalSemaphore {
            state: RefCell::new(State {
                available: units,
                ..State::default()
            }),
        })
    }

    /// Waits for `units` (in arrival order) and holds them until the permit drops.
    pub fn acquire(self: &Rc<Self>, units: u64) -> Acquire {
        let ticket = {
            let mut st = self.state.borrow_mut();
            let t = st.next_ticket;
            st.next_ticket += 1;
            st.queue.push_back((t, units, None));
            t
        };
        Acquire {
            sem: self.clone(),
            ticket,
            units,
            done: false,
        }
    }

    fn release(&self, units: u64) {
        let waker = {
            let mut st = self.state.borrow_mut();
            st.available += units;
            st.queue.front_mut().and_then(|w| w.2.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The future of [`LocalSemaphore::acquire`].
pub struct Acquire {
    sem: Rc<LocalSemaphore>,
    ticket: u64,
    units: u64,
    done: bool,
}

impl Future for Acquire {
    type Output = LocalPermit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LocalPermit> {
        let next_waker = {
            let mut st = self.sem.state.borrow_mut();
            let first = st.queue.front().map(|w| w.0) == Some(self.ticket);
            if !(first && st.available >= self.units) {
                if let Some(w) = st.queue.iter_mut().find(|w| w.0 == self.ticket) {
                    w.2 = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            st.available -= self.units;
            st.queue.pop_front();
            // The next waiter may be satisfiable too.
            let available = st.available;
            match st.queue.front_mut() {
                Some(w) if available >= w.1 => w.2.take(),
                _ => None,
            }
        };
        if let Some(w) = next_waker {
            w.wake();
        }
        self.done = true;
        Poll::Ready(LocalPermit {
            sem: self.sem.clone(),
            units: self.units,
        })
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cancelled while waiting: leave the queue, and pass the turn on if we were first.
        let waker = {
            let mut st = self.sem.state.borrow_mut();
            let was_first = st.queue.front().map(|w| w.0) == Some(self.ticket);
            st.queue.retain(|w| w.0 != self.ticket);
            if was_first {
                st.queue.front_mut().and_then(|w| w.2.take())
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_release() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(|| async {
                let sem = LocalSemaphore::new(2);
                let a = sem.acquire(2).await;
                let order = Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                for (i, units) in [(1u64, 2u64), (2, 1), (3, 1)] {
                    let (sem, order) = (sem.clone(), order.clone());
                    tasks.push(glommio::spawn_local(async move {
                        let _p = sem.acquire(units).await;
                        order.borrow_mut().push(i);
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    }));
                }
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                assert!(order.borrow().is_empty());
                drop(a);
                for t in tasks {
                    t.await;
                }
                assert_eq!(*order.borrow(), vec![1, 2, 3]);
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
