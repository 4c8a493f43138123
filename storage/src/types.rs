//! Newtypes for the quantities the log deals in.
//!
//! Kafka offsets and leader epochs (Raft terms) are both plain integers on the wire; mixing them
//! up is the classic bug of a replicated log, so each gets its own type. Raft indexes are a
//! separate type in `ringlog-raft`; the mapping between the two lives there.

use std::fmt;

/// A Kafka offset: the position of a record in a partition, assigned by the log.
///
/// Offsets are dense on append (every record gets the next one) and may have gaps after
/// compaction. `Offset(0)` is the first offset of a new partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub i64);

impl Offset {
    /// The offset `n` records later.
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A leader epoch, which is the Raft term of the leader that appended a batch. Stored in the
/// batch header's `partitionLeaderEpoch` field. `Term(0)` is the term of a single-node log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub i32);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milliseconds since the Unix epoch, as Kafka timestamps are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampMs(pub i64);

/// The source of wall-clock time for the log (segment age, retention, tombstone expiry).
///
/// A seam: production uses [`SystemClock`]; tests and the simulator use a manual clock so that
/// age-based behaviour is deterministic.
pub trait Clock {
    /// The current time.
    fn now_ms(&self) -> TimestampMs;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> TimestampMs {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        TimestampMs(since.as_millis() as i64)
    }
}

/// A clock that only moves when told to; for tests and simulation.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: std::cell::Cell<i64>,
}

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: std::cell::Cell::new(now_ms),
        }
    }

    /// Moves the clock forward by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: i64) {
        self.now_ms.set(self.now_ms.get() + delta_ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> TimestampMs {
        TimestampMs(self.now_ms.get())
    }
}
