//! Sparse offset and time indexes of one segment, plus the segment's summary (size, last
//! offset, max timestamp, the terms that start inside it).
//!
//! Owned by the log on the partition's core. The active segment's index lives only in memory
//! and is rebuilt by scanning at open; an index is written to disk once, when its segment is
//! sealed, so a sealed segment opens without a scan.
//!
//! ## Files (written with [`crate::file`]'s checked format: header, payload, CRC32C)
//!
//! `<base>.index` payload, big-endian:
//! ```text
//! u64 size_bytes      logical size of the segment (its file is truncated to it when sealed)
//! i64 last_offset     last offset in the segment (-1 if empty)
//! i64 max_timestamp
//! u32 term_count      then term_count x (i32 term, i64 first offset of that term)
//! u32 entry_count     then entry_count x (u32 offset - base, u32 byte position)
//! ```
//! `<base>.timeindex` payload: `u32 count`, then count x (i64 max timestamp so far, u32 offset -
//! base). An entry is added at most every `index.interval.bytes` of log, when the maximum
//! timestamp grew; lookups land on an entry and scan forward.
//!
//! Invariants: entries are strictly increasing in offset and position; every position is the
//! start of a batch; time entries are strictly increasing in timestamp and offset.

use bytes::{Buf, BufMut, BytesMut};

use crate::batch::BatchHeader;
use crate::types::{Offset, Term, TimestampMs};

/// The in-memory index of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    /// Offset the segment starts at (its file name).
    pub base_offset: Offset,
    /// Logical bytes of batches in the segment.
    pub size_bytes: u64,
    /// Last offset held, if any batch.
    pub last_offset: Option<Offset>,
    /// Largest batch max timestamp seen.
    pub max_timestamp: TimestampMs,
    /// (term, first offset) for each term that starts in this segment, in order.
    pub terms: Vec<(Term, Offset)>,
    offsets: Vec<(u32, u32)>,
    times: Vec<(i64, u32)>,
    bytes_since_entry: usize,
}

impl SegmentIndex {
    /// An empty index for a segment starting at `base_offset`.
    pub fn new(base_offset: Offset) -> SegmentIndex {
        SegmentIndex {
            base_offset,
            size_bytes: 0,
            last_offset: None,
            max_timestamp: TimestampMs(-1),
            terms: Vec::new(),
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_entry: 0,
        }
    }

    /// Records a batch written at byte `position`. Batches arrive in offset order.
    pub fn add(&mut self, h: &BatchHeader, position: u64, interval_bytes: usize) {
        assert_eq!(position, self.size_bytes, "batches are indexed in order");
        assert!(h.base_offset >= self.base_offset);
        let rel = (h.base_offset.0 - self.base_offset.0) as u32;
        if self.offsets.is_empty() || self.bytes_since_entry >= interval_bytes {
            self.offsets.push((rel, position as u32));
            if h.max_timestamp > self.max_timestamp {
                self.times.push((h.max_timestamp.0, rel));
            }
            self.bytes_since_entry = 0;
        }
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
        }
        if self.terms.last().map(|t| t.0) != Some(h.term) {
            self.terms.push((h.term, h.base_offset));
        }
        self.bytes_since_entry += h.size_bytes;
        self.size_bytes += h.size_bytes as u64;
        self.last_offset = Some(h.last_offset());
    }

    /// The last index entry at or before `offset`: the base offset of the batch it names and
    /// that batch's byte position (the segment's start if none).
    pub fn entry_for(&self, offset: Offset) -> (Offset, u64) {
        let rel = offset
            .0
            .saturating_sub(self.base_offset.0)
            .clamp(0, u32::MAX as i64) as u32;
        let i = self.offsets.partition_point(|e| e.0 <= rel);
        if i == 0 {
            (self.base_offset, 0)
        } else {
            let (r, p) = self.offsets[i - 1];
            (self.base_offset.plus(r as i64), p as u64)
        }
    }

    /// An offset from which to scan for the first batch with a max timestamp at or after
    /// `ts`: that of the time entry before the first one that reaches `ts`.
    pub fn offset_for_time(&self, ts: TimestampMs) -> Offset {
        let i = self.times.partition_point(|e| e.0 < ts.0);
        if i == 0 {
            return self.base_offset;
        }
        self.base_offset.plus(self.times[i - 1].1 as i64)
    }

    /// The next offset after this segment's data.
    pub fn end_offset(&self) -> Offset {
        self.last_offset.map_or(self.base_offset, |o| o.plus(1))
    }

    /// Encodes the `.index` payload.
    pub fn encode_offsets(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(40 + self.terms.len() * 12 + self.offsets.len() * 8);
        b.put_u64(self.size_bytes);
        b.put_i64(self.last_offset.map_or(-1, |o| o.0));
        b.put_i64(self.max_timestamp.0);
        b.put_u32(self.terms.len() as u32);
        for (t, o) in &self.terms {
            b.put_i32(t.0);
            b.put_i64(o.0);
        }
        b.put_u32(self.offsets.len() as u32);
        for (r, p) in &self.offsets {
            b.put_u32(*r);
            b.put_u32(*p);
        }
        b
    }

    /// Encodes the `.timeindex` payload.
    pub fn encode_times(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(4 + self.times.len() * 12);
        b.put_u32(self.times.len() as u32);
        for (t, r) in &self.times {
            b.put_i64(*t);
            b.put_u32(*r);
        }
        b
    }

    /// Decodes both payloads and checks the invariants against the segment file's size. Any
    /// mismatch returns `None`: the caller rebuilds the index by scanning.
    pub fn decode(
        base_offset: Offset,
        offsets: &[u8],
        times: &[u8],
        file_size_bytes: u64,
    ) -> Option<SegmentIndex> {
        let mut o = offsets;
        let mut idx = SegmentIndex::new(base_offset);
        if o.remaining() < 28 {
            return None;
        }
        idx.size_bytes = o.get_u64();
        let last = o.get_i64();
        idx.last_offset = (last >= 0).then_some(Offset(last));
        idx.max_timestamp = TimestampMs(o.get_i64());
        let n_terms = o.get_u32() as usize;
        if o.remaining() < n_terms.checked_mul(12)? + 4 {
            return None;
        }
        for _ in 0..n_terms {
            idx.terms.push((Term(o.get_i32()), Offset(o.get_i64())));
        }
        let n = o.get_u32() as usize;
        if o.remaining() != n.checked_mul(8)? {
            return None;
        }
        for _ in 0..n {
            idx.offsets.push((o.get_u32(), o.get_u32()));
        }
        let mut t = times;
        if t.remaining() < 4 {
            return None;
        }
        let n = t.get_u32() as usize;
        if t.remaining() != n.checked_mul(12)? {
            return None;
        }
        for _ in 0..n {
            idx.times.push((t.get_i64(), t.get_u32()));
        }
        let sorted_offsets = idx
            .offsets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let sorted_times = idx
            .times
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let sorted_terms = idx
            .terms
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let in_file = idx.size_bytes <= file_size_bytes
            && idx
                .offsets
                .last()
                .is_none_or(|e| (e.1 as u64) < idx.size_bytes);
        let consistent = idx.last_offset.is_some() == (idx.size_bytes > 0);
        let last_rel = idx.last_offset.map_or(-1, |l| l.0 - base_offset.0);
        let times_fit = idx
            .times
            .iter()
            .all(|(t, r)| (*r as i64) <= last_rel && *t <= idx.max_timestamp.0);
        let offsets_fit = idx.offsets.iter().all(|(r, _)| (*r as i64) <= last_rel);
        let consistent = consistent && times_fit && offsets_fit;
        (sorted_offsets && sorted_times && sorted_terms && in_file && consistent).then_some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{build::filler_batch, stamp, Batch};

    fn header(base: i64, term: i32, ts: i64) -> BatchHeader {
        let mut b = filler_batch(3, 100, 1);
        stamp(&mut b, Offset(base), Term(term));
        b[35..43].copy_from_slice(&ts.to_be_bytes());
        let crc = crate::batch::compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Batch::parse(b.freeze()).expect("valid").header()
    }

    #[test]
    fn lookups_and_round_trip() {
        let mut idx = SegmentIndex::new(Offset(100));
        let mut pos = 0;
        for i in 0..50 {
            let h = header(100 + i * 3, (i / 20) as i32, 1000 + i);
            idx.add(&h, pos, 1000);
            pos += h.size_bytes as u64;
        }
        assert_eq!(idx.end_offset(), Offset(250));
        assert_eq!(idx.terms.len(), 3);
        assert_eq!(idx.entry_for(Offset(0)), (Offset(100), 0));
        let p = idx.entry_for(Offset(200)).1;
        assert!(p > 0 && p <= pos);
        let dec =
            SegmentIndex::decode(Offset(100), &idx.encode_offsets(), &idx.encode_times(), pos)
                .expect("decodes");
        assert_eq!(dec.entry_for(Offset(200)).1, p);
        assert_eq!(dec.terms, idx.terms);
        assert!(SegmentIndex::decode(
            Offset(100),
            &idx.encode_offsets(),
            &idx.encode_times(),
            pos - 1
        )
        .is_none());
        assert!(SegmentIndex::decode(
            Offset(100),
            &idx.encode_offsets()[..30],
            &idx.encode_times(),
            pos
        )
        .is_none());
    }
}
