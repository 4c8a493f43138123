//! Model check: random sequences of append / flush / truncate-suffix / truncate-prefix / roll /
//! reopen / read against a simple in-memory model of the log.

mod common;

use std::rc::Rc;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use ringlog_storage::{BatchHeader, Offset, SystemClock, Term};

#[derive(Clone, Debug)]
enum Op {
    Append { records: usize, value_bytes: usize },
    NewTerm,
    Flush,
    TruncateSuffix { at_permille: u16 },
    TruncatePrefix { at_permille: u16 },
    Roll,
    Reopen,
    Read { at_permille: u16, max_bytes: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (1usize..6, 0usize..2500).prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
        1 => Just(Op::NewTerm),
        3 => Just(Op::Flush),
        1 => (0u16..1000).prop_map(|at_permille| Op::TruncateSuffix { at_permille }),
        1 => (0u16..1000).prop_map(|at_permille| Op::TruncatePrefix { at_permille }),
        1 => Just(Op::Roll),
        1 => Just(Op::Reopen),
        4 => (0u16..1000, 1usize..20_000).prop_map(|(at_permille, max_bytes)| Op::Read { at_permille, max_bytes }),
    ]
}

/// The model: batches as stamped, in order, plus the log start offset.
#[derive(Default)]
struct Model {
    batches: Vec<(Offset, Offset, Term, Bytes)>,
    start: Offset,
    end: Offset,
}

impl Model {
    fn pick(&self, permille: u16) -> Offset {
        let span = (self.end.0 - self.start.0).max(0);
        Offset(self.start.0 + span * permille as i64 / 1000)
    }

    fn truncate_suffix(&mut self, from: Offset) {
        self.batches.retain(|b| b.1 < from);
        self.end = self
            .batches
            .last()
            .map_or(self.start.max(Offset(0)), |b| b.1.plus(1));
        if self.batches.is_empty() {
            self.end = self.end.max(self.start);
        }
    }
}

fn run_ops(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let config = small_config(32 * 1024);
        let mut log = open(&path, config.clone(), small_limits(), Rc::new(SystemClock)).await;
        let mut m = Model::default();
        let mut term = Term(1);
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append {
                    records,
                    value_bytes,
                } => {
                    let b = batch(records, step as u64, value_bytes);
                    let info = log.append(b, term).await.expect("append");
                    assert_eq!(info.base_offset, m.end, "step {step}: offsets are dense");
                    assert_eq!(info.last_offset, m.end.plus(records as i64 - 1));
                    let got = log
                        .read(info.base_offset, 1, log.end_offset())
                        .await
                        .expect("read back");
                    m.batches
                        .push((info.base_offset, info.last_offset, term, got[0].clone()));
                    m.end = info.last_offset.plus(1);
                }
                Op::NewTerm => term = Term(term.0 + 1),
                Op::Flush => {
                    assert_eq!(log.flush().await.expect("flush"), m.end);
                }
                Op::TruncateSuffix { at_permille } => {
                    let at = m.pick(at_permille);
                    let end = log.truncate_suffix(at).await.expect("truncate suffix");
                    m.truncate_suffix(at);
                    assert_eq!(end, m.end, "step {step}: end after truncating at {at}");
                }
                Op::TruncatePrefix { at_permille } => {
                    let at = m.pick(at_permille);
                    log.truncate_prefix(at).await.expect("truncate prefix");
                    if at > m.start {
                        m.start = at;
                        m.batches.retain(|b| b.1 >= at);
                    }
                }
                Op::Roll => log.roll().await.expect("roll"),
                Op::Reopen => {
                    log.close().await.expect("close");
                    log = open(&path, config.clone(), small_limits(), Rc::new(SystemClock)).await;
                }
                Op::Read {
                    at_permille,
                    max_bytes,
                } => {
                    let at = m.pick(at_permille);
                    let got = log
                        .read(at, max_bytes, log.end_offset())
                        .await
                        .expect("read");
                    let first = m.batches.iter().position(|b| b.1 >= at);
                    match first {
                        None => assert!(
                            got.is_empty(),
                            "step {step}: read past the end returned data"
                        ),
                        Some(i) => {
                            assert!(
                                !got.is_empty(),
                                "step {step}: read at {at} returned nothing"
                            );
                            let total: usize = got.iter().map(Bytes::len).sum();
                            assert!(
                                total <= max_bytes.max(got[0].len()),
                                "step {step}: over max_bytes"
                            );
                            for (k, b) in got.iter().enumerate() {
                                assert_eq!(
                                    b,
                                    &m.batches[i + k].3,
                                    "step {step}: batch {k} differs"
                                );
                            }
                        }
                    }
                }
            }
            assert_eq!(log.end_offset(), m.end, "step {step}: end offset");
            assert_eq!(log.start_offset(), m.start, "step {step}: start offset");
            if let Some(b) = m.batches.last() {
                assert_eq!(log.last_offset_and_term(), Some((b.1, b.2)));
                assert_eq!(log.term_at(b.0.max(m.start)), Some(b.2));
            }
        }
        // Everything the model holds reads back, whole, after a final reopen.
        log.close().await.expect("close");
        let log = open(&path, config, small_limits(), Rc::new(SystemClock)).await;
        assert_eq!(log.end_offset(), m.end);
        let mut at = m.start;
        let mut i = 0;
        while at < m.end {
            let got = log.read(at, 50_000, m.end).await.expect("final read");
            assert!(!got.is_empty());
            for b in got {
                assert_eq!(b, m.batches[i].3);
                at = BatchHeader::read(&b).last_offset().plus(1);
                i += 1;
            }
        }
        assert_eq!(i, m.batches.len());
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run_ops(ops);
    }
}
