//! Straight-line behaviour of the log: append, flush, read, roll, reopen, truncate.

mod common;

use std::rc::Rc;

use common::*;
use ringlog_storage::{BatchHeader, Offset, StorageError, SystemClock, Term};

/// The log these tests use: 16 KiB segments, small buffers, the system clock.
async fn open_small(path: &std::path::Path) -> ringlog_storage::Log {
    open(
        path,
        small_config(16 * 1024),
        small_limits(),
        Rc::new(SystemClock),
    )
    .await
}

#[test]
fn append_flush_read_roll_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let log = open_small(&path).await;
        let mut expected = Vec::new();
        for i in 0..200u64 {
            let b = batch(3, i, 100);
            let info = log.append(b, Term(1)).await.expect("append");
            assert_eq!(info.base_offset, Offset(i as i64 * 3));
            expected.push(info);
            if i % 17 == 0 {
                log.flush().await.expect("flush");
            }
        }
        assert_eq!(log.flush().await.expect("flush"), Offset(600));
        assert!(log.segment_count() > 2, "rolled: {}", log.segment_count());
        let got = log
            .read(Offset(301), 1, log.end_offset())
            .await
            .expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(BatchHeader::read(&got[0]).base_offset, Offset(300));
        log.close().await.expect("close");

        let log = open_small(&path).await;
        assert_eq!(log.end_offset(), Offset(600));
        let mut at = Offset(0);
        let mut n = 0;
        while at < log.end_offset() {
            let got = log.read(at, 10_000, log.end_offset()).await.expect("read");
            assert!(!got.is_empty());
            for b in got {
                let h = BatchHeader::read(&b);
                assert_eq!(h.base_offset, at);
                assert_eq!(h.term, Term(1));
                ringlog_storage::Batch::parse(b).expect("valid");
                at = h.last_offset().plus(1);
                n += 1;
            }
        }
        assert_eq!(n, 200);
        assert_eq!(log.term_at(Offset(599)), Some(Term(1)));
        assert_eq!(log.last_offset_and_term(), Some((Offset(599), Term(1))));

        // Suffix truncation into a sealed segment, then append a new term.
        let end = log.truncate_suffix(Offset(100)).await.expect("truncate");
        assert_eq!(end, Offset(99), "whole batches: 99..=101 holds 100");
        log.append(batch(2, 999, 10), Term(2))
            .await
            .expect("append");
        log.flush().await.expect("flush");
        assert_eq!(log.term_at(Offset(99)), Some(Term(2)));
        assert_eq!(log.term_at(Offset(98)), Some(Term(1)));
        log.close().await.expect("close");

        let log = open_small(&path).await;
        assert_eq!(log.end_offset(), Offset(101));
        log.truncate_prefix(Offset(50)).await.expect("prefix");
        assert_eq!(log.start_offset(), Offset(50));
        assert!(matches!(
            log.read(Offset(10), 100, log.end_offset()).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.close().await.expect("close");
        let log = open_small(&path).await;
        assert_eq!(log.start_offset(), Offset(50));
        assert_eq!(log.end_offset(), Offset(101));
    });
}

#[test]
fn offset_for_timestamp_finds_first_record_at_or_after() {
    use ringlog_storage::batch::build::{encode_batch, NewRecord};
    use ringlog_storage::TimestampMs;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let log = open_small(&path).await;
        for i in 0..10i64 {
            let rec = NewRecord {
                key: None,
                value: Some(vec![1; 10]),
            };
            let b = encode_batch(&[rec.clone(), rec], 1_000 + i * 20);
            log.append(b, Term(1)).await.expect("append");
        }
        log.flush().await.expect("flush");
        let at = |ts| log.offset_for_timestamp(TimestampMs(ts));
        assert_eq!(
            at(1_000).await.expect("lookup").map(|x| x.0),
            Some(Offset(0))
        );
        assert_eq!(
            at(1_041).await.expect("lookup").map(|x| x.0),
            Some(Offset(6))
        );
        assert_eq!(at(999).await.expect("lookup").map(|x| x.0), Some(Offset(0)));
        assert_eq!(at(5_000).await.expect("lookup"), None);
    });
}

#[test]
fn prefix_truncation_remembers_the_term_before_the_new_start() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().to_path_buf();
    common::run_local(move || async move {
        let log = open_small(&path).await;
        assert_eq!(log.term_before_start(), None);
        // Offsets 0..=9 in term 1, 10..=19 in term 2.
        for i in 0..2 {
            log.append(common::batch(5, i, 10), Term(1))
                .await
                .expect("append");
        }
        for i in 2..4 {
            log.append(common::batch(5, i, 10), Term(2))
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        log.truncate_prefix(Offset(10)).await.expect("prefix");
        assert_eq!(log.term_before_start(), Some(Term(1)));
        log.close().await.expect("close");
        let log = open_small(&path).await;
        assert_eq!(log.start_offset(), Offset(10));
        assert_eq!(
            log.term_before_start(),
            Some(Term(1)),
            "persisted with the start"
        );
        // A Raft snapshot past the end: the log restarts there with the term it was given.
        log.truncate_prefix_to(Offset(100), Some(Term(5)))
            .await
            .expect("reset");
        assert_eq!(
            (log.start_offset(), log.end_offset()),
            (Offset(100), Offset(100))
        );
        assert_eq!(log.term_before_start(), Some(Term(5)));
        log.append(common::batch(3, 9, 10), Term(6))
            .await
            .expect("append");
        log.flush().await.expect("flush");
        log.close().await.expect("close");
        let log = open_small(&path).await;
        assert_eq!(
            (log.start_offset(), log.end_offset()),
            (Offset(100), Offset(103))
        );
        assert_eq!(log.term_before_start(), Some(Term(5)));
        log.close().await.expect("close");
    });
}

/// A checked batch goes in without a second check and is stamped in place; an already stamped
/// batch (a Raft entry) goes in as it is, and one stamped for another offset or term, or with
/// a broken CRC, is refused and leaves the log as it was.
#[test]
fn append_checked_and_append_stamped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let log = open_small(&path).await;
        let checked = ringlog_storage::CheckedBatch::check(batch(2, 1, 50)).expect("valid");
        let info = log.append_checked(checked, Term(3)).await.expect("append");
        assert_eq!((info.base_offset, info.last_offset), (Offset(0), Offset(1)));

        let stamped = |base: i64, term: i32| {
            let mut b = batch(4, 2, 50);
            ringlog_storage::batch::stamp(&mut b, Offset(base), Term(term));
            b.freeze()
        };
        for (bad, what) in [
            (stamped(5, 3), "wrong base offset"),
            (stamped(2, 4), "wrong term"),
            (
                {
                    let mut b = batch(4, 2, 50);
                    ringlog_storage::batch::stamp(&mut b, Offset(2), Term(3));
                    let last = b.len() - 1;
                    b[last] ^= 0x55;
                    b.freeze()
                },
                "bad CRC",
            ),
        ] {
            let r = log.append_stamped(bad, Term(3)).await;
            assert!(r.is_err(), "{what} was accepted");
            assert_eq!(log.end_offset(), Offset(2), "{what} changed the log");
        }
        let good = stamped(2, 3);
        let info = log
            .append_stamped(good.clone(), Term(3))
            .await
            .expect("append");
        assert_eq!((info.base_offset, info.last_offset), (Offset(2), Offset(5)));
        log.flush().await.expect("flush");
        let got = log
            .read(Offset(2), 1, log.end_offset())
            .await
            .expect("read");
        assert_eq!(got[0], good);
        let got = log
            .read(Offset(0), 1, log.end_offset())
            .await
            .expect("read");
        let h = BatchHeader::read(&got[0]);
        assert_eq!((h.base_offset, h.term), (Offset(0), Term(3)));
        log.close().await.expect("close");
    });
}

/// A flush whose data fits one write goes through the write-through descriptor and needs no
/// fdatasync; once full buffers were written plain during appends, the round ends with one.
/// Either way the data is there after reopening.
#[test]
fn flush_writes_through_unless_plain_writes_are_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        // Segments large enough that nothing rolls; 16 KiB write buffers.
        let open_big = || {
            open(
                &path,
                small_config(8 << 20),
                small_limits(),
                Rc::new(SystemClock),
            )
        };
        let log = open_big().await;
        log.append(batch(2, 1, 100), Term(1)).await.expect("append");
        log.flush().await.expect("flush");
        let s = log.flush_stats();
        assert_eq!(
            (s.rounds(), s.write_through_rounds, s.fdatasyncs),
            (1, 1, 0)
        );

        // Three buffers' worth: full buffers are written (plain) while appending.
        for tag in 2..40 {
            log.append(batch(4, tag, 300), Term(1))
                .await
                .expect("append");
        }
        assert!(log.written_end_offset() > log.flushed_end_offset());
        log.flush().await.expect("flush");
        let s = log.flush_stats();
        assert_eq!((s.rounds(), s.fdatasyncs), (2, 1), "{s:?}");

        // Plain writes are durable again: the next small round writes through.
        log.append(batch(1, 999, 10), Term(1))
            .await
            .expect("append");
        log.flush().await.expect("flush");
        let s = log.flush_stats();
        assert_eq!(
            (s.rounds(), s.write_through_rounds, s.fdatasyncs),
            (3, 2, 1)
        );
        // Nothing new: no round at all.
        log.flush().await.expect("flush");
        assert_eq!(log.flush_stats().rounds(), 3);
        let end = log.end_offset();
        log.close().await.expect("close");

        let log = open_big().await;
        assert_eq!(log.end_offset(), end);
        let mut at = Offset(0);
        while at < end {
            for b in log.read(at, 1 << 20, end).await.expect("read") {
                let h = BatchHeader::read(&b);
                assert_eq!(h.base_offset, at);
                ringlog_storage::Batch::parse(b).expect("valid");
                at = h.last_offset().plus(1);
            }
        }
        log.close().await.expect("close");
    });
}
