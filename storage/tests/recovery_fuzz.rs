//! Property test of recovery: whatever happens to the bytes of the active segment (flipped
//! bytes, a torn tail, garbage appended), reopening succeeds, keeps every batch that lies wholly
//! before the first damaged byte, and serves nothing invalid.

mod common;

use std::os::unix::fs::FileExt;
use std::rc::Rc;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use ringlog_storage::{Batch, BatchHeader, Log, ManualClock, Term};

#[derive(Clone, Debug)]
enum Damage {
    Flip { at_permille: u32, xor: u8 },
    Cut { at_permille: u32 },
    Garbage { len: usize, fill: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u32..1000, 1u8..=255).prop_map(|(at_permille, xor)| Damage::Flip { at_permille, xor }),
        (0u32..1000).prop_map(|at_permille| Damage::Cut { at_permille }),
        (1usize..300, any::<u8>()).prop_map(|(len, fill)| Damage::Garbage { len, fill }),
    ]
}

async fn read_all(log: &Log) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = log.start_offset();
    while at < log.end_offset() {
        let got = log
            .read(at, 1 << 20, log.end_offset())
            .await
            .expect("read after recovery");
        assert!(!got.is_empty());
        for b in got {
            Batch::parse(b.clone()).expect("only valid batches are served");
            at = BatchHeader::read(&b).last_offset().plus(1);
            out.push(b);
        }
    }
    out
}

fn check(batches: usize, damage: Damage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let cfg = small_config(1 << 20);
    let (p, c) = (path.clone(), cfg.clone());
    let original: Vec<Bytes> = run_local(move || async move {
        let log = open(&p, c, small_limits(), Rc::new(ManualClock::new(0))).await;
        for i in 0..batches {
            log.append(batch(1 + i % 4, i as u64, 50 + i * 37 % 700), Term(1))
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        let all = read_all(&log).await;
        log.close().await.expect("close");
        all
    });
    let data_len: usize = original.iter().map(Bytes::len).sum();
    let seg = path.join(format!("{:020}.log", 0));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .expect("segment");
    let first_damaged = match damage {
        Damage::Flip { at_permille, xor } => {
            let at = data_len as u64 * at_permille as u64 / 1000;
            let mut b = [0u8];
            f.read_exact_at(&mut b, at).expect("read byte");
            b[0] ^= xor;
            f.write_all_at(&b, at).expect("write byte");
            at as usize
        }
        Damage::Cut { at_permille } => {
            let at = data_len as u64 * at_permille as u64 / 1000;
            f.set_len(at).expect("cut");
            at as usize
        }
        Damage::Garbage { len, fill } => {
            f.write_all_at(&vec![fill; len], data_len as u64)
                .expect("garbage");
            data_len
        }
    };
    drop(f);
    let kept_min = {
        let mut pos = 0;
        original
            .iter()
            .take_while(|b| {
                pos += b.len();
                pos <= first_damaged
            })
            .count()
    };
    run_local(move || async move {
        let log = open(
            &path,
            cfg.clone(),
            small_limits(),
            Rc::new(ManualClock::new(0)),
        )
        .await;
        let got = read_all(&log).await;
        assert!(
            got.len() >= kept_min,
            "lost batches before the damage: {} < {kept_min}",
            got.len()
        );
        assert!(got.len() <= original.len());
        let differs = got.iter().zip(&original).position(|(a, b)| a != b);
        assert_eq!(
            differs, None,
            "recovered data is a prefix of what was written"
        );
        // The log keeps working after recovery, and a second reopen agrees.
        log.append(batch(2, 9999, 10), Term(2))
            .await
            .expect("append after recovery");
        log.flush().await.expect("flush after recovery");
        let end = log.end_offset();
        log.close().await.expect("close");
        let log = open(&path, cfg, small_limits(), Rc::new(ManualClock::new(0))).await;
        assert_eq!(log.end_offset(), end);
        assert_eq!(read_all(&log).await.len(), got.len() + 1);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn recovery_keeps_the_valid_prefix(batches in 1usize..60, d in damage()) {
        check(batches, d);
    }
}
