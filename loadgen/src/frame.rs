//! Request frames that reference large payloads instead of copying them.
//!
//! Runs on the load core that encodes the request. A produce request carries record batches
//! that were just encoded into their own buffers; encoding the request with the
//! `kafka-protocol` codec into one contiguous buffer would copy every batch once more, which
//! at full rate is a sizeable share of the load core (the batches are most of the bytes). A
//! [`FrameBuf`] is a `ByteBufMut` that the codec writes into as usual, except that a slice it is
//! asked to copy which *is* one of the registered payloads (same address and length, at least
//! [`SPLICE_MIN_BYTES`]) is kept by reference: the frame becomes a list of pieces, written to
//! the socket one after another.
//!
//! Invariant: the concatenation of the pieces is byte for byte what the codec would have
//! written into a `BytesMut` (a unit test checks it against the codec's own output).

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Payloads shorter than this are copied: a separate piece costs a write of its own.
pub const SPLICE_MIN_BYTES: usize = 16 * 1024;

/// A frame under construction: owned bytes with referenced payloads between them.
pub struct FrameBuf<'a> {
    /// Completed pieces, in wire order.
    pieces: Vec<Bytes>,
    /// The piece being written.
    tail: BytesMut,
    /// Logical length of `pieces` (where `tail` starts).
    tail_start: usize,
    /// Payloads that may be referenced instead of copied.
    splice: &'a [Bytes],
}

impl<'a> FrameBuf<'a> {
    /// An empty frame; `capacity` sizes the first owned piece.
    pub fn new(capacity: usize, splice: &'a [Bytes]) -> FrameBuf<'a> {
        FrameBuf {
            pieces: Vec::new(),
            tail: BytesMut::with_capacity(capacity),
            tail_start: 0,
            splice,
        }
    }

    /// The pieces, in wire order (empty ones left out).
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.tail.is_empty() {
            self.pieces.push(self.tail.freeze());
        }
        self.pieces
    }

    fn spliceable(&self, src: &[u8]) -> Option<Bytes> {
        if src.len() < SPLICE_MIN_BYTES {
            return None;
        }
        self.splice
            .iter()
            .find(|b| b.as_ptr() == src.as_ptr() && b.len() == src.len())
            .cloned()
    }
}

unsafe impl BufMut for FrameBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.tail.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded; the caller initialised `cnt` bytes of `chunk_mut`, which is the
        // tail's.
        unsafe { self.tail.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.tail.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.spliceable(src) {
            Some(b) => {
                let tail = std::mem::take(&mut self.tail);
                self.tail_start += tail.len() + b.len();
                if !tail.is_empty() {
                    self.pieces.push(tail.freeze());
                }
                self.pieces.push(b);
                // The rest of a produce frame after a batch is a few bytes (tagged fields, the
                // next partition's header).
                self.tail = BytesMut::with_capacity(256);
            }
            None => self.tail.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for FrameBuf<'_> {
    fn offset(&self) -> usize {
        self.tail_start + self.tail.len()
    }

    fn seek(&mut self, offset: usize) {
        assert!(offset >= self.tail_start, "seek into a spliced piece");
        self.tail.resize(offset - self.tail_start, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        assert!(r.start >= self.tail_start, "range inside a spliced piece");
        &mut self.tail[r.start - self.tail_start..r.end - self.tail_start]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn request(records: &[Bytes]) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(
                    records
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            PartitionProduceData::default()
                                .with_index(i as i32)
                                .with_records(Some(r.clone()))
                        })
                        .collect(),
                )])
    }

    #[test]
    fn pieces_concatenate_to_the_codecs_own_encoding() {
        let records = vec![
            Bytes::from(vec![7u8; SPLICE_MIN_BYTES]),
            Bytes::from(vec![1u8; 100]),
            Bytes::from(vec![9u8; 3 * SPLICE_MIN_BYTES + 5]),
        ];
        for version in [3i16, 8, 9, 12] {
            let req = request(&records);
            let mut want = BytesMut::new();
            req.encode(&mut want, version).unwrap();
            let mut f = FrameBuf::new(64, &records);
            req.encode(&mut f, version).unwrap();
            let pieces = f.finish();
            let got: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(got, want.to_vec(), "version {version}");
            // The two large batches are referenced, not copied.
            let shared = pieces
                .iter()
                .filter(|p| records.iter().any(|r| r.as_ptr() == p.as_ptr()))
                .count();
            assert_eq!(shared, 2, "version {version}");
        }
    }

    #[test]
    fn an_equal_copy_elsewhere_is_not_spliced() {
        let records = vec![Bytes::from(vec![3u8; SPLICE_MIN_BYTES])];
        let other = vec![Bytes::from(vec![3u8; SPLICE_MIN_BYTES])];
        let req = request(&other);
        let mut f = FrameBuf::new(64, &records);
        req.encode(&mut f, 9).unwrap();
        assert_eq!(f.finish().len(), 1);
    }
}
