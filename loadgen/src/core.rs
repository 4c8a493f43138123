//! State shared by the tasks of one core, and by all cores of a run.
//!
//! [`CoreStats`] is per core (`Rc`, no locks): producers and consumers on that core record into
//! it, and the core's ticker hands its interval to the reporting thread once a second.
//! [`RunShared`] is the only cross-core state: a few atomics for start, progress and drain, read
//! at most once per loop turn. It is not on any per-message path.

use std::cell::{OnceCell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::payload::Clock;
use crate::stats::{record, Interval, Totals};

/// The run's time window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Load starts.
    pub t0: Instant,
    /// Measurement starts (after the warm-up).
    pub measure_from: Instant,
    /// The last message is due before this; measurement ends.
    pub end: Instant,
}

impl Window {
    /// A window starting at `t0`.
    pub fn new(t0: Instant, warmup_s: u64, duration_s: u64) -> Window {
        let measure_from = t0 + Duration::from_secs(warmup_s);
        Window {
            t0,
            measure_from,
            end: measure_from + Duration::from_secs(duration_s),
        }
    }

    /// True when a message intended at `t` is measured.
    pub fn measures(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }

    /// How many of `ts` are measured.
    pub fn measures_count(&self, ts: &[Instant]) -> u64 {
        ts.iter().filter(|t| self.measures(**t)).count() as u64
    }
}

/// Cross-core run state.
#[derive(Debug, Default)]
pub struct RunShared {
    /// Set by the reporting thread once every consumer is positioned; cores wait for it.
    pub t0: OnceLock<Instant>,
    /// Consumers positioned at the end of their partitions.
    pub consumers_ready: AtomicUsize,
    /// Producers finished (all messages acked, failed or timed out).
    pub producers_done: AtomicUsize,
    /// Messages acknowledged in the whole run (consumers drain until they read this many).
    pub run_acked: AtomicU64,
    /// Messages consumed in the whole run.
    pub run_consumed: AtomicU64,
    /// Set by the reporting thread: consumers stop.
    pub stop_consumers: AtomicBool,
    /// Set when the run must end early (a task failed); every task stops at its next turn.
    pub abort: AtomicBool,
    /// Largest schedule lag any producer had when the window ended, µs.
    pub lag_at_end_us: AtomicU64,
    /// The CPU each load core runs on, as it found at start (for [`crate::cpu`]).
    pub load_cpus: std::sync::Mutex<Vec<usize>>,
}

impl RunShared {
    /// True once the run is aborted.
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// Statistics of one core.
pub struct CoreStats {
    /// Set once at t0; nothing is recorded before (producers start at t0, consumers wait).
    window: OnceCell<Window>,
    pub clock: Clock,
    pub interval: RefCell<Interval>,
    pub totals: RefCell<Totals>,
}

impl CoreStats {
    /// Fresh statistics; the window comes at t0.
    pub fn new(clock: Clock) -> CoreStats {
        CoreStats {
            window: OnceCell::new(),
            clock,
            interval: RefCell::new(Interval::default()),
            totals: RefCell::new(Totals::default()),
        }
    }

    /// Installs the window (once, at t0).
    pub fn set_window(&self, w: Window) {
        assert!(self.window.set(w).is_ok(), "the run window is set once");
    }

    /// The run window. Invariant: only called after t0.
    pub fn window(&self) -> Window {
        *self
            .window
            .get()
            .expect("the window is set at t0, before any recording")
    }

    /// One message acknowledged at `now`, intended at `intended`, sent at `sent`.
    pub fn acked(&self, intended: Instant, sent: Instant, now: Instant, bytes: u64) {
        let lat = now.saturating_duration_since(intended).as_micros() as u64;
        let delay = sent.saturating_duration_since(intended).as_micros() as u64;
        {
            let mut iv = self.interval.borrow_mut();
            record(&mut iv.publish, lat);
            record(&mut iv.publish_delay, delay);
            iv.acked_msgs += 1;
            iv.acked_bytes += bytes;
        }
        let mut t = self.totals.borrow_mut();
        t.run_acked_msgs += 1;
        if self.window().measures(intended) {
            record(&mut t.publish, lat);
            record(&mut t.publish_delay, delay);
            t.acked_msgs += 1;
            t.acked_bytes += bytes;
        }
    }

    /// `n` messages failed; `in_window` of them were intended inside the window.
    pub fn failed(&self, n: u64, in_window: u64) {
        self.interval.borrow_mut().errors += n;
        self.totals.borrow_mut().errors += in_window;
    }

    /// One message consumed at `now_us` (wall clock), stamped `stamp_us` (its intended time).
    pub fn consumed(&self, stamp_us: Option<u64>, now_us: u64, bytes: u64) {
        let w = self.window();
        let measured = stamp_us.is_some_and(|s| {
            s >= self.clock.wall_us(w.measure_from) && s < self.clock.wall_us(w.end)
        });
        {
            let mut iv = self.interval.borrow_mut();
            iv.consumed_msgs += 1;
            iv.consumed_bytes += bytes;
            if let Some(s) = stamp_us {
                record(&mut iv.end_to_end, now_us.saturating_sub(s));
            }
        }
        let mut t = self.totals.borrow_mut();
        t.run_consumed_msgs += 1;
        if measured {
            if let Some(s) = stamp_us {
                record(&mut t.end_to_end, now_us.saturating_sub(s));
            }
            t.consumed_msgs += 1;
            t.consumed_bytes += bytes;
        }
    }

    /// A produce request with `batches` partition batches was sent (counted for the window
    /// when the request's first message was intended inside it).
    pub fn request_sent(&self, batches: u64, first_intended: Option<Instant>) {
        {
            let mut iv = self.interval.borrow_mut();
            iv.produce_requests += 1;
            iv.produce_batches += batches;
        }
        if first_intended.is_some_and(|t| self.window().measures(t)) {
            let mut t = self.totals.borrow_mut();
            t.produce_requests += 1;
            t.produce_batches += batches;
        }
    }

    /// A producer is `lag_us` behind its schedule.
    pub fn lag(&self, lag_us: u64) {
        let mut iv = self.interval.borrow_mut();
        iv.schedule_lag_us = iv.schedule_lag_us.max(lag_us);
    }

    /// Takes this second's interval, leaving a fresh one.
    pub fn take_interval(&self) -> Interval {
        std::mem::take(&mut *self.interval.borrow_mut())
    }
}

/// Adds to a counter and returns nothing (shorthand for the relaxed counters above).
pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
