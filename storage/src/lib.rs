//! ringlog-storage: the direct-I/O segmented log that every partition lives in.
//!
//! A [`Log`] is one partition's log. It is owned by exactly one core and does all its disk I/O
//! through that core's glommio executor (its own io_uring ring), with O_DIRECT linear appends
//! into preallocated segments. Batches are Kafka RecordBatch v2 bytes exactly as the client sent
//! them; the log stamps `baseOffset` and `partitionLeaderEpoch` (the Raft term), which the batch
//! CRC32C does not cover, and checks the CRC on append and on every read from disk.
//!
//! Rooms:
//! - [`batch`]: the byte layout of a RecordBatch v2, CRC32C (the only code that knows it);
//! - [`log`]: append / flush / read, the written-vs-durable contract, rolling;
//! - `appender`: aligned O_DIRECT writes, the tail-page rewrite, bounded in-flight writes;
//! - `segment`, `index`: file naming and layout, validating scans, sparse offset/time indexes;
//! - `recovery`: opening after a crash; `truncate`: suffix and prefix truncation;
//! - `retention`, `compaction`: housekeeping on a low-priority task queue; `recycle`: the pool
//!   of retired segment files that rolls reuse;
//! - [`cache`]: the per-core cache of recent batches;
//! - [`config`]: topic configs by Kafka name, and every storage limit.

pub mod alloc;
pub mod batch;
pub mod cache;
pub mod config;
pub mod error;
pub mod log;
pub mod sync;
pub mod types;

mod appender;
mod compaction;
pub mod file;
mod index;
mod recovery;
mod recycle;
mod retention;
mod segment;
mod truncate;

pub use batch::{Batch, BatchError, BatchHeader, CheckedBatch};
pub use cache::BatchCache;
pub use compaction::CompactionReport;
pub use config::{CleanupPolicy, ConfigError, LogConfig, StorageLimits};
pub use error::{Result, StorageError};
pub use log::{AppendInfo, FlushStats, Log, PoolStats};
pub use retention::HousekeepingReport;
pub use types::{Clock, ManualClock, Offset, SystemClock, Term, TimestampMs};

/// Creates the low-priority task queue that housekeeping (retention, compaction) runs in, so
/// it only gets the core when appends and fetches leave it idle.
pub fn housekeeping_queue() -> glommio::TaskQueueHandle {
    glommio::executor().create_task_queue(
        glommio::Shares::Static(10),
        glommio::Latency::NotImportant,
        "housekeeping",
    )
}
