//! Shared helpers for the storage integration tests: a glommio executor sized for the 8 MiB
//! locked-memory limit, and logs opened with small segments.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use ringlog_storage::batch::build::{encode_batch, NewRecord};
use ringlog_storage::{BatchCache, BatchHeader, Clock, Log, LogConfig, StorageLimits};

/// Runs `f` on a fresh single-core glommio executor (not pinned) and returns its output.
pub fn run_local<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// A config with small segments so tests roll often.
pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        max_message_bytes: (segment_bytes / 2) as usize,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

/// Small limits so tests exercise buffer boundaries and backpressure.
pub fn small_limits() -> StorageLimits {
    StorageLimits {
        write_buffer_bytes: 16 * 1024,
        write_buffers_in_flight_max: 2,
        read_chunk_bytes: 8 * 1024,
        cache_bytes_max: 64 * 1024,
        compaction_map_bytes_max: 1 << 20,
        preallocate_step_bytes: 16 * 1024,
        recycled_segments_per_log_max: 1,
    }
}

/// Opens a log in `dir`.
pub async fn open(
    dir: &Path,
    config: LogConfig,
    limits: StorageLimits,
    clock: Rc<dyn Clock>,
) -> Log {
    let cache = BatchCache::new(limits.cache_bytes_max);
    Log::open(dir, config, limits, cache, clock)
        .await
        .expect("open log")
}

/// A batch of `n` records with values derived from `tag` (so content can be checked).
pub fn batch(n: usize, tag: u64, value_bytes: usize) -> BytesMut {
    let recs: Vec<NewRecord> = (0..n)
        .map(|i| NewRecord {
            key: Some(format!("k{}", (tag + i as u64) % 7).into_bytes()),
            value: Some(format!("{tag}-{i}-{}", "x".repeat(value_bytes)).into_bytes()),
        })
        .collect();
    encode_batch(&recs, 1_700_000_000_000 + tag as i64)
}

/// Every batch from the log start to its end, read in 64 KiB steps. A read that finds nothing
/// ends it: compaction may remove the last records of the newest sealed segment, and the log
/// end stays (as in Kafka).
pub async fn read_all(log: &Log) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = log.start_offset();
    while at < log.end_offset() {
        let got = log
            .read(at, 64 * 1024, log.end_offset())
            .await
            .expect("read");
        if got.is_empty() {
            break;
        }
        for b in got {
            at = BatchHeader::read(&b).last_offset().plus(1);
            out.push(b);
        }
    }
    out
}
