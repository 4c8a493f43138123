//! Retention, age-based rolling and compaction, with a manual clock, and group commit under
//! concurrent appenders.

mod common;

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use common::*;
use ringlog_storage::batch::build::{encode_batch, NewRecord};
use ringlog_storage::{batch, Batch, CleanupPolicy, ManualClock, Offset, StorageError, Term};

const T0_MS: i64 = 1_700_000_000_000;

fn keyed(key: &str, value: Option<&str>, ts_ms: i64) -> bytes::BytesMut {
    let rec = NewRecord {
        key: Some(key.as_bytes().to_vec()),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    encode_batch(&[rec], ts_ms)
}

#[test]
fn retention_by_size_and_time_and_roll_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let clock = Rc::new(ManualClock::new(T0_MS));
        let mut cfg = small_config(16 * 1024);
        cfg.retention_bytes = 40 * 1024;
        cfg.retention_ms = -1;
        let log = open(&path, cfg.clone(), small_limits(), clock.clone()).await;
        for i in 0..300u64 {
            log.append(batch(2, i, 200), Term(1)).await.expect("append");
        }
        log.flush().await.expect("flush");
        let before = log.size_bytes();
        let deleted = log.enforce_retention().await.expect("retention");
        assert!(deleted > 0);
        let after = log.size_bytes();
        assert!(after < before);
        assert!(
            after >= 40 * 1024 - 16 * 1024,
            "kept at least the limit minus a segment"
        );
        assert!(log.start_offset() > Offset(0));
        assert!(matches!(
            log.read(Offset(0), 100, log.end_offset()).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            read_all(&log).await.len() as i64 * 2,
            log.end_offset().0 - log.start_offset().0
        );

        // Time: everything sealed is older than retention.ms once the clock moves on.
        let mut cfg2 = cfg.clone();
        cfg2.retention_bytes = -1;
        cfg2.retention_ms = 60_000;
        log.set_config(cfg2.clone());
        clock.advance_ms(10 * 60_000);
        log.enforce_retention().await.expect("retention");
        assert_eq!(log.segment_count(), 1, "only the active segment is left");

        // Age roll: a non-empty active segment older than segment.ms rolls in housekeeping.
        let mut cfg3 = cfg2;
        cfg3.segment_ms = 1000;
        cfg3.retention_ms = -1;
        log.set_config(cfg3);
        clock.advance_ms(2000);
        let report = log.housekeeping().await.expect("housekeeping");
        assert!(report.rolled);
        assert_eq!(log.segment_count(), 2);
        let start = log.start_offset();
        log.close().await.expect("close");
        let log = open(&path, cfg.clone(), small_limits(), clock.clone()).await;
        assert_eq!(log.start_offset(), start, "start offset survives reopen");
    });
}

#[test]
fn compaction_keeps_latest_per_key_and_drops_old_tombstones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let clock = Rc::new(ManualClock::new(T0_MS));
        let mut cfg = small_config(16 * 1024);
        cfg.cleanup_policy = CleanupPolicy::Compact;
        cfg.delete_retention_ms = 60_000;
        let log = Rc::new(open(&path, cfg.clone(), small_limits(), clock.clone()).await);
        let mut latest: HashMap<String, (Offset, Option<String>)> = HashMap::new();
        for i in 0..400 {
            let key = format!("key{}", i % 13);
            let value = if i % 50 == 49 {
                None
            } else {
                Some(format!("v{i}-{}", "p".repeat(100)))
            };
            let info = log
                .append(keyed(&key, value.as_deref(), T0_MS + i), Term(1))
                .await
                .expect("append");
            latest.insert(key, (info.base_offset, value));
        }
        log.roll().await.expect("roll");
        log.flush().await.expect("flush");
        let before = read_all(&log).await;
        assert_eq!(before.len(), 400);
        // Run in the low-priority housekeeping queue, as the server will.
        let l = log.clone();
        let q = ringlog_storage::housekeeping_queue();
        let report = glommio::spawn_local_into(async move { l.compact().await }, q)
            .expect("spawn")
            .await
            .expect("compact");
        assert!(report.records_removed > 300, "{report:?}");
        assert!(report.bytes_after < report.bytes_before);
        let after = read_all(&log).await;
        let mut seen: HashMap<String, Vec<Offset>> = HashMap::new();
        let mut last = Offset(-1);
        for b in &after {
            let batch = Batch::parse(b.clone()).expect("valid after compaction");
            let h = batch.header();
            for r in batch::records(&batch).expect("records") {
                let off = h.base_offset.plus(r.offset_delta as i64);
                assert!(off > last, "offsets increase");
                last = off;
                let key = String::from_utf8(r.key.expect("key").to_vec()).expect("utf8");
                seen.entry(key).or_default().push(off);
            }
        }
        for (key, (off, value)) in &latest {
            assert_eq!(
                seen.get(key),
                Some(&vec![*off]),
                "only the latest of {key} is left"
            );
            let _ = value;
        }
        assert!(after.len() < before.len());
        // Tombstones stay until delete.retention.ms has passed, then go.
        let tombstones = |bs: &[Bytes]| {
            bs.iter()
                .flat_map(|b| {
                    batch::records(&Batch::parse(b.clone()).expect("valid")).expect("records")
                })
                .filter(|r| r.is_tombstone)
                .count()
        };
        let t_before = tombstones(&after);
        assert!(
            t_before > 0,
            "the latest records of some keys are tombstones"
        );
        clock.advance_ms(120_000);
        log.compact().await.expect("compact");
        assert_eq!(tombstones(&read_all(&log).await), 0);
        // The compacted log reopens with the same content.
        let content = read_all(&log).await;
        drop(log);
        let log = open(&path, cfg, small_limits(), clock.clone()).await;
        assert_eq!(read_all(&log).await, content);
    });
}

#[test]
fn concurrent_appenders_share_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let clock = Rc::new(ManualClock::new(T0_MS));
        let log = Rc::new(open(&path, small_config(256 * 1024), small_limits(), clock).await);
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut mine = Vec::new();
                for i in 0..50u64 {
                    let info = log
                        .append(batch(1, t * 1000 + i, 300), Term(1))
                        .await
                        .expect("append");
                    let flushed = log.flush().await.expect("flush");
                    assert!(flushed > info.last_offset, "flush covers my batch");
                    mine.push(info.base_offset);
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await);
        }
        all.sort();
        assert_eq!(
            all,
            (0..400).map(Offset).collect::<Vec<_>>(),
            "dense, unique offsets"
        );
        assert_eq!(read_all(&log).await.len(), 400);
    });
}
