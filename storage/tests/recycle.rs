//! Segment recycling: retention pools a retired segment's file, the next roll reuses it, and
//! the old bytes in it are never served, before or after a reopen.

mod common;

use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use common::*;
use ringlog_storage::{BatchHeader, Log, ManualClock, Offset, PoolStats, Term};

const T0_MS: i64 = 1_700_000_000_000;
const SEGMENT_BYTES: u64 = 16 * 1024;

/// [`read_all`], checking that the batches are dense and reach the log end.
async fn read_dense(log: &Log) -> Vec<Bytes> {
    let all = read_all(log).await;
    let mut at = log.start_offset();
    for b in &all {
        let h = BatchHeader::read(b);
        assert_eq!(h.base_offset, at, "batches are dense");
        at = h.last_offset().plus(1);
    }
    assert_eq!(at, log.end_offset(), "the batches reach the log end");
    all
}

/// Names in the directory ending with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn segment_file(dir: &Path, base: Offset) -> std::path::PathBuf {
    dir.join(format!("{:020}.log", base.0))
}

/// Appends `n` batches tagged from `tag`, flushes, and returns the next tag.
async fn fill(log: &Log, tag: u64, n: u64) -> u64 {
    for i in 0..n {
        log.append(batch(2, tag + i, 200), Term(1))
            .await
            .expect("append");
    }
    log.flush().await.expect("flush");
    tag + n
}

async fn open_log(dir: &Path, retention_bytes: i64, pool_max: usize) -> Log {
    let mut cfg = small_config(SEGMENT_BYTES);
    cfg.retention_bytes = retention_bytes;
    cfg.retention_ms = -1;
    let limits = ringlog_storage::StorageLimits {
        recycled_segments_per_log_max: pool_max,
        ..small_limits()
    };
    open(dir, cfg, limits, Rc::new(ManualClock::new(T0_MS))).await
}

#[test]
fn retention_pools_a_segment_and_the_next_roll_reuses_it() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let log = open_log(&path, 40 * 1024, 1).await;
        let tag = fill(&log, 0, 300).await;
        assert!(
            log.segment_count() > 4,
            "the log rolled: {}",
            log.segment_count()
        );
        let deleted = log.enforce_retention().await.expect("retention");
        assert!(deleted >= 2, "retention deleted {deleted} segments");
        assert_eq!(
            log.pool_stats(),
            PoolStats {
                pooled: 1,
                reused: 0
            }
        );
        let free = files_ending(&path, ".log.free");
        assert_eq!(free.len(), 1, "one file pooled, the rest deleted: {free:?}");
        let stem = free[0].trim_end_matches(".log.free");
        assert!(
            !path.join(format!("{stem}.index")).exists()
                && !path.join(format!("{stem}.timeindex")).exists(),
            "a pooled segment's indexes are deleted"
        );
        let pooled_bytes = std::fs::metadata(path.join(&free[0])).expect("stat").len();
        assert!(
            pooled_bytes > SEGMENT_BYTES / 2,
            "a full segment was pooled"
        );
        let kept = read_dense(&log).await;

        // The roll takes the pooled file: it is the new active segment, full of old batches.
        let new_base = log.end_offset();
        log.roll().await.expect("roll");
        assert_eq!(
            log.pool_stats(),
            PoolStats {
                pooled: 0,
                reused: 1
            }
        );
        assert!(files_ending(&path, ".log.free").is_empty());
        let active_bytes = std::fs::metadata(segment_file(&path, new_base))
            .expect("new active segment")
            .len();
        assert!(
            active_bytes >= pooled_bytes,
            "the new segment is the pooled file ({active_bytes} < {pooled_bytes} bytes)"
        );
        assert!(
            log.read(new_base, 1 << 20, new_base.plus(100))
                .await
                .expect("read at the end")
                .is_empty(),
            "the old bytes are not served"
        );
        assert_eq!(read_dense(&log).await, kept);

        // Reopened right after the roll (a crash before any append): the recycled segment's
        // old batches do not become data.
        log.close().await.expect("close");
        let log = open_log(&path, 40 * 1024, 1).await;
        assert_eq!(log.end_offset(), new_base, "nothing appears after the roll");
        assert_eq!(read_dense(&log).await, kept);

        // Appends overwrite the old bytes; everything reads back, before and after a reopen.
        fill(&log, tag, 10).await;
        let all = read_dense(&log).await;
        assert_eq!(all.len(), kept.len() + 10);
        assert_eq!(all[..kept.len()], kept[..]);
        let end = log.end_offset();
        log.close().await.expect("close");
        let log = open_log(&path, 40 * 1024, 1).await;
        assert_eq!(log.end_offset(), end);
        assert_eq!(read_dense(&log).await, all);
        // Recovery cut the active segment at its data: the old bytes past it are gone.
        let data: usize = all
            .iter()
            .filter(|b| BatchHeader::read(b).base_offset >= new_base)
            .map(|b| b.len())
            .sum();
        let content = std::fs::read(segment_file(&path, new_base)).expect("read segment");
        assert!(
            content[data..].iter().all(|b| *b == 0),
            "only zeros past the data after recovery"
        );
        log.close().await.expect("close");
    });
}

#[test]
fn the_pool_survives_a_reopen_and_a_crash_inside_a_roll() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let log = open_log(&path, 40 * 1024, 1).await;
        fill(&log, 0, 300).await;
        log.enforce_retention().await.expect("retention");
        let kept = read_dense(&log).await;
        let end = log.end_offset();
        log.close().await.expect("close");

        let log = open_log(&path, 40 * 1024, 1).await;
        assert_eq!(
            log.pool_stats(),
            PoolStats {
                pooled: 1,
                reused: 0
            }
        );
        log.close().await.expect("close");

        // A crash after the roll renamed the pooled file to the new segment's temporary name,
        // before the old segment was sealed: the temporary file goes, the log is as it was.
        let free = files_ending(&path, ".log.free");
        std::fs::rename(
            path.join(&free[0]),
            path.join(format!("{:020}.log.tmp", end.0)),
        )
        .expect("rename");
        let log = open_log(&path, 40 * 1024, 1).await;
        assert_eq!(log.pool_stats(), PoolStats::default());
        assert!(files_ending(&path, ".tmp").is_empty());
        assert_eq!(log.end_offset(), end);
        assert_eq!(read_dense(&log).await, kept);
        // Without a pooled file the next roll creates one, as before recycling.
        log.roll().await.expect("roll");
        assert_eq!(log.pool_stats(), PoolStats::default());
        log.close().await.expect("close");
    });
}

#[test]
fn the_pool_is_bounded_and_can_be_turned_off() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        // Off: retention deletes as it always did.
        let log = open_log(&path, 40 * 1024, 0).await;
        fill(&log, 0, 300).await;
        assert!(log.enforce_retention().await.expect("retention") >= 2);
        assert_eq!(log.pool_stats(), PoolStats::default());
        assert!(files_ending(&path, ".log.free").is_empty());
        log.close().await.expect("close");

        // Files beyond the bound found at open (the bound was lowered) are deleted.
        for base in [1_i64, 2, 3] {
            std::fs::write(path.join(format!("{base:020}.log.free")), vec![7u8; 8192])
                .expect("write");
        }
        let log = open_log(&path, 40 * 1024, 2).await;
        assert_eq!(log.pool_stats().pooled, 2);
        assert_eq!(
            files_ending(&path, ".log.free"),
            vec![format!("{:020}.log.free", 2), format!("{:020}.log.free", 3)]
        );
        // A roll reuses a file full of garbage (not even batches): still only new data.
        let kept = read_dense(&log).await;
        let base = log.end_offset();
        log.roll().await.expect("roll");
        assert_eq!(log.pool_stats().reused, 1);
        fill(&log, 1000, 5).await;
        let all = read_dense(&log).await;
        assert_eq!(all.len(), kept.len() + 5);
        assert!(all[kept.len()..]
            .iter()
            .all(|b| BatchHeader::read(b).base_offset >= base));
        log.close().await.expect("close");
        let log = open_log(&path, 40 * 1024, 2).await;
        assert_eq!(read_dense(&log).await, all);
        log.close().await.expect("close");
    });
}
