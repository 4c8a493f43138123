//! Idempotent-producer state of one partition: for each producer id, its epoch and the
//! sequence ranges and offsets of its last five batches.
//!
//! Runs on the partition's owner core, inside the partition (no sharing). It decides, before a
//! batch of an idempotent producer is appended, whether the batch is new (append it),
//! a retry of one of the last five (answer with the original offsets, append nothing), or out
//! of order (reject with Kafka's error). Kafka clients keep at most five batches in flight
//! per partition, so five remembered batches recognise every retry a well-behaved client makes.
//!
//! Rebuilt on open from a snapshot plus the batch headers after it (`Partition::open`). The
//! snapshot file `producer_state` in the partition directory is written (atomically) at clean
//! shutdown and by housekeeping when the state changed; it records the log end offset it
//! covers. On open it is used only when that offset is still inside the log (a crash that cut
//! the log's unflushed tail makes it stale, and then the whole log is read), so a restart can
//! not forget a sequence number that was acknowledged. Batches whose segments retention
//! deleted are forgotten with them; a producer that resumes after that gets
//! OUT_OF_ORDER_SEQUENCE_NUMBER and re-initializes, as with Kafka.
//!
//! Transactions will add, per producer, the first offset of the open transaction (for the last
//! stable offset) next to the epoch; the checks below stay as they are.

use std::collections::{HashMap, VecDeque};

use kafka_protocol::error::ResponseError;
use ringlog_storage::batch::BatchHeader;
use ringlog_storage::Offset;

/// Batches remembered per producer (Kafka's max.in.flight for idempotence).
pub const BATCHES_PER_PRODUCER: usize = 5;

/// A batch of an idempotent producer, as it was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducedBatch {
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
    /// Offsets the batch got.
    pub base_offset: Offset,
    pub last_offset: Offset,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    end_offset: i64,
    producers: Vec<SnapshotProducer>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotProducer {
    id: i64,
    epoch: i16,
    /// (first sequence, last sequence, base offset, last offset)
    batches: Vec<(i32, i32, i64, i64)>,
}

#[derive(Clone, Debug, Default)]
struct Producer {
    epoch: i16,
    batches: VecDeque<ProducedBatch>,
}

/// What to do with an incoming batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// A retry of a batch already in the log: answer with its offsets.
    Duplicate(ProducedBatch),
    /// Refuse it with this error.
    Reject(ResponseError, String),
}

/// The sequence of the last record of a batch starting at `first` with `count` records
/// (sequences wrap from i32::MAX to 0, as in Kafka).
pub fn last_sequence(first: i32, count: i32) -> i32 {
    let last = first as i64 + count as i64 - 1;
    if last > i32::MAX as i64 {
        (last - i32::MAX as i64 - 1) as i32
    } else {
        last as i32
    }
}

fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Producer state of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
}

impl ProducerStates {
    /// Checks a batch against the state (nothing changes).
    pub fn check(&self, h: &BatchHeader) -> Verdict {
        if h.producer_id < 0 {
            return Verdict::Append;
        }
        if h.base_sequence < 0 || h.producer_epoch < 0 {
            return Verdict::Reject(
                ResponseError::InvalidRecord,
                format!(
                    "batch of producer {} has epoch {} and base sequence {}",
                    h.producer_id, h.producer_epoch, h.base_sequence
                ),
            );
        }
        let first = h.base_sequence;
        let last = last_sequence(first, h.records_count.max(1));
        let Some(p) = self.producers.get(&h.producer_id) else {
            return if first == 0 {
                Verdict::Append
            } else {
                Verdict::Reject(
                    ResponseError::OutOfOrderSequenceNumber,
                    format!(
                        "producer {} is unknown on this partition and its batch starts at sequence {first}, not 0",
                        h.producer_id
                    ),
                )
            };
        };
        if h.producer_epoch < p.epoch {
            return Verdict::Reject(
                ResponseError::InvalidProducerEpoch,
                format!(
                    "producer {} epoch {} is older than the current epoch {}",
                    h.producer_id, h.producer_epoch, p.epoch
                ),
            );
        }
        if h.producer_epoch > p.epoch {
            return if first == 0 {
                Verdict::Append
            } else {
                Verdict::Reject(
                    ResponseError::OutOfOrderSequenceNumber,
                    format!(
                        "producer {} starts epoch {} at sequence {first}, not 0",
                        h.producer_id, h.producer_epoch
                    ),
                )
            };
        }
        if let Some(b) = p
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return Verdict::Duplicate(*b);
        }
        match p.batches.back() {
            Some(b) if next_sequence(b.last_seq) != first => Verdict::Reject(
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {} epoch {}: batch starts at sequence {first}, expected {}",
                    h.producer_id,
                    h.producer_epoch,
                    next_sequence(b.last_seq)
                ),
            ),
            _ => Verdict::Append,
        }
    }

    /// Checks the batches of one produce request in order, each as if the ones before it were
    /// appended (nothing changes).
    pub fn check_all(&self, headers: &[BatchHeader]) -> Vec<Verdict> {
        if headers.iter().all(|h| h.producer_id < 0) {
            return vec![Verdict::Append; headers.len()];
        }
        // A scratch copy of the producers involved.
        let mut scratch = ProducerStates::default();
        for h in headers {
            if let Some(p) = self.producers.get(&h.producer_id) {
                scratch.producers.insert(h.producer_id, p.clone());
            }
        }
        let mut out = Vec::with_capacity(headers.len());
        let mut next_offset = Offset(0);
        for h in headers {
            let v = scratch.check(h);
            if v == Verdict::Append {
                scratch.record(h, next_offset);
                next_offset = next_offset.plus(h.last_offset_delta as i64 + 1);
            }
            out.push(v);
        }
        out
    }

    /// Records a batch that was appended at `base_offset` (or read back from the log).
    pub fn record(&mut self, h: &BatchHeader, base_offset: Offset) {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let p = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.batches.clear();
        }
        let count = h.last_offset_delta + 1;
        p.batches.push_back(ProducedBatch {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h.base_sequence, count),
            base_offset,
            last_offset: base_offset.plus(h.last_offset_delta as i64),
        });
        while p.batches.len() > BATCHES_PER_PRODUCER {
            p.batches.pop_front();
        }
    }

    /// The snapshot payload: the state, covering the log up to `end_offset`.
    pub fn to_snapshot(&self, end_offset: Offset) -> Vec<u8> {
        let producers: Vec<SnapshotProducer> = self
            .producers
            .iter()
            .map(|(pid, p)| SnapshotProducer {
                id: *pid,
                epoch: p.epoch,
                batches: p
                    .batches
                    .iter()
                    .map(|b| (b.first_seq, b.last_seq, b.base_offset.0, b.last_offset.0))
                    .collect(),
            })
            .collect();
        serde_json::to_vec(&Snapshot {
            end_offset: end_offset.0,
            producers,
        })
        .expect("producer snapshots always encode")
    }

    /// Loads a snapshot payload: the state and the end offset it covers.
    pub fn from_snapshot(payload: &[u8]) -> Result<(ProducerStates, Offset), String> {
        let s: Snapshot = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let mut states = ProducerStates::default();
        for p in s.producers {
            states.producers.insert(
                p.id,
                Producer {
                    epoch: p.epoch,
                    batches: p
                        .batches
                        .into_iter()
                        .rev()
                        .take(BATCHES_PER_PRODUCER)
                        .rev()
                        .map(|(f, l, b, e)| ProducedBatch {
                            first_seq: f,
                            last_seq: l,
                            base_offset: Offset(b),
                            last_offset: Offset(e),
                        })
                        .collect(),
                },
            );
        }
        Ok((states, Offset(s.end_offset)))
    }

    /// Producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// True when no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_storage::batch::build::filler_batch;
    use ringlog_storage::batch::{compute_crc, Batch};

    fn header(pid: i64, epoch: i16, seq: i32, count: usize) -> BatchHeader {
        let mut b = filler_batch(count, 10, 1);
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&epoch.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        let crc = compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Batch::parse(b.freeze()).expect("valid").header()
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut s = ProducerStates::default();
        let h0 = header(7, 0, 0, 3);
        assert_eq!(s.check(&h0), Verdict::Append);
        s.record(&h0, Offset(10));
        let h1 = header(7, 0, 3, 2);
        assert_eq!(s.check(&h1), Verdict::Append);
        s.record(&h1, Offset(13));
        // A retry of either is a duplicate with its original offsets.
        match s.check(&h0) {
            Verdict::Duplicate(b) => {
                assert_eq!((b.base_offset, b.last_offset), (Offset(10), Offset(12)))
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(s.check(&h1), Verdict::Duplicate(_)));
        // A gap.
        assert!(matches!(
            s.check(&header(7, 0, 9, 1)),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        // An old epoch after a new one.
        let e1 = header(7, 1, 0, 1);
        assert_eq!(s.check(&e1), Verdict::Append);
        s.record(&e1, Offset(15));
        assert!(matches!(
            s.check(&header(7, 0, 5, 1)),
            Verdict::Reject(ResponseError::InvalidProducerEpoch, _)
        ));
        // A new epoch must start at 0.
        assert!(matches!(
            s.check(&header(7, 2, 4, 1)),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        // Unknown producers start at 0; non-idempotent batches always append.
        assert!(matches!(s.check(&header(8, 0, 1, 1)), Verdict::Reject(..)));
        assert_eq!(s.check(&header(-1, -1, -1, 1)), Verdict::Append);
    }

    #[test]
    fn only_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            let h = header(1, 0, i, 1);
            assert_eq!(s.check(&h), Verdict::Append);
            s.record(&h, Offset(i as i64));
        }
        // Batches 2..=6 are remembered; 0 and 1 are too old to be recognised.
        assert!(matches!(
            s.check(&header(1, 0, 2, 1)),
            Verdict::Duplicate(_)
        ));
        assert!(matches!(s.check(&header(1, 0, 1, 1)), Verdict::Reject(..)));
    }

    #[test]
    fn snapshots_round_trip() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(&header(1, 0, i, 1), Offset(i as i64));
        }
        s.record(&header(2, 3, 0, 2), Offset(7));
        let (back, end) = ProducerStates::from_snapshot(&s.to_snapshot(Offset(9))).unwrap();
        assert_eq!(end, Offset(9));
        assert_eq!(back.len(), 2);
        assert!(matches!(
            back.check(&header(1, 0, 6, 1)),
            Verdict::Duplicate(_)
        ));
        assert_eq!(back.check(&header(1, 0, 7, 1)), Verdict::Append);
        assert!(matches!(
            back.check(&header(2, 2, 5, 1)),
            Verdict::Reject(..)
        ));
        assert!(ProducerStates::from_snapshot(b"nonsense").is_err());
    }

    #[test]
    fn sequences_wrap() {
        assert_eq!(last_sequence(i32::MAX, 1), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 2), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 4), 1);
        assert_eq!(next_sequence(i32::MAX), 0);
    }
}
