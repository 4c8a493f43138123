//! A zero-copy view of a Kafka RecordBatch (magic v2) and its CRC32C: the only code that knows the
//! byte layout of a batch.
//!
//! Runs on whichever core holds the bytes; pure functions, no I/O.
//!
//! ```text
//! offset  size  field                 covered by crc
//!  0      8     baseOffset            no   (set by the log on append)
//!  8      4     batchLength           no   (bytes after this field: total = 12 + batchLength)
//! 12      4     partitionLeaderEpoch  no   (set by the log on append: the Raft term)
//! 16      1     magic (= 2)           no
//! 17      4     crc (CRC32C of bytes 21..end)
//! 21      2     attributes            yes  (bits 0-2 compression, 4 transactional, 5 control)
//! 23      4     lastOffsetDelta       yes
//! 27      8     baseTimestamp         yes
//! 35      8     maxTimestamp          yes
//! 43      8     producerId            yes
//! 51      2     producerEpoch         yes
//! 53      4     baseSequence          yes
//! 57      4     recordsCount          yes
//! 61      ...   records               yes
//! ```
//!
//! All integers are big-endian. Because the CRC does not cover `baseOffset` or
//! `partitionLeaderEpoch`, the log can stamp both without recomputing it, and a batch read back
//! from disk can always be checked against the checksum its producer computed.
//!
//! Records (used only by compaction) are: `length varint, attributes i8, timestampDelta varlong,
//! offsetDelta varint, keyLength varint, key, valueLength varint, value, headerCount varint,
//! headers`, with zig-zag varints as in protobuf. A null value (length -1) is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::{Offset, Term, TimestampMs};

/// Size of the fixed batch header that precedes the records.
pub const HEADER_SIZE_BYTES: usize = 61;
/// Bytes before the `batchLength` field ends: `baseOffset` plus `batchLength`.
pub const LOG_OVERHEAD_BYTES: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORDS_COUNT_OFFSET: usize = 57;
const EPOCH_OFFSET: usize = 12;
const COMPRESSION_MASK: i16 = 0x07;
const CONTROL_FLAG: i16 = 0x20;

/// Why bytes are not a valid RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the fixed header.
    #[error("batch of {0} bytes is shorter than the 61-byte header")]
    TooShort(usize),
    /// `batchLength` disagrees with the bytes present.
    #[error("batchLength {declared} does not match the {actual} bytes present")]
    LengthMismatch {
        /// 12 + batchLength.
        declared: i64,
        /// Bytes handed over.
        actual: usize,
    },
    /// Only magic 2 is stored; older formats are converted by clients, not by the log.
    #[error("unsupported magic {0} (only RecordBatch v2 is accepted)")]
    BadMagic(i8),
    /// The checksum does not match the bytes.
    #[error("crc mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    BadCrc {
        /// CRC in the header.
        expected: u32,
        /// CRC of the bytes.
        actual: u32,
    },
    /// A field is out of range (negative count, record count over the offset span, ...).
    #[error("invalid batch field: {0}")]
    BadField(&'static str),
}

/// A validated view of one RecordBatch v2. Cheap to clone (the bytes are reference-counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
}

impl Batch {
    /// Validates `bytes` as exactly one RecordBatch v2, checksum included.
    pub fn parse(bytes: Bytes) -> Result<Batch, BatchError> {
        check_whole(&bytes)?;
        Ok(Batch { bytes })
    }

    /// The batch bytes, header included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the view, returning the bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Total size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The header fields.
    pub fn header(&self) -> BatchHeader {
        BatchHeader::read(&self.bytes)
    }
}

/// One RecordBatch v2 whose framing, header and CRC32C were verified, in a buffer of its own
/// that the log stamps in place ([`crate::Log::append_checked`]). A batch checked on its way
/// in (a produce request) is therefore checked once, and not copied to be stamped.
#[derive(Debug)]
pub struct CheckedBatch {
    bytes: BytesMut,
}

impl CheckedBatch {
    /// Validates `bytes` as exactly one RecordBatch v2, checksum included.
    pub fn check(bytes: BytesMut) -> Result<CheckedBatch, BatchError> {
        check_whole(&bytes)?;
        Ok(CheckedBatch { bytes })
    }

    /// The batch bytes, header included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Total size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The header fields.
    pub fn header(&self) -> BatchHeader {
        BatchHeader::read(&self.bytes)
    }

    /// The buffer, for stamping and freezing.
    pub fn into_inner(self) -> BytesMut {
        self.bytes
    }
}

/// The header fields the log uses, read from the first 61 bytes of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// Total batch size (12 + batchLength).
    pub size_bytes: usize,
    /// The leader epoch (Raft term) stamped on append.
    pub term: Term,
    /// The stored checksum.
    pub crc: u32,
    /// Raw attributes.
    pub attributes: i16,
    /// lastOffset - baseOffset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: TimestampMs,
    /// Largest record timestamp in the batch.
    pub max_timestamp: TimestampMs,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record (idempotent producers), or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

impl BatchHeader {
    /// Reads the header; the caller guarantees at least [`HEADER_SIZE_BYTES`] bytes.
    pub fn read(b: &[u8]) -> BatchHeader {
        assert!(b.len() >= HEADER_SIZE_BYTES);
        BatchHeader {
            base_offset: Offset(be_i64(b, 0)),
            size_bytes: (be_i32(b, 8) as i64 + LOG_OVERHEAD_BYTES as i64) as usize,
            term: Term(be_i32(b, EPOCH_OFFSET)),
            crc: be_i32(b, CRC_OFFSET) as u32,
            attributes: be_i16(b, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(b, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: TimestampMs(be_i64(b, BASE_TIMESTAMP_OFFSET)),
            max_timestamp: TimestampMs(be_i64(b, MAX_TIMESTAMP_OFFSET)),
            producer_id: be_i64(b, PRODUCER_ID_OFFSET),
            producer_epoch: be_i16(b, PRODUCER_EPOCH_OFFSET),
            base_sequence: be_i32(b, BASE_SEQUENCE_OFFSET),
            records_count: be_i32(b, RECORDS_COUNT_OFFSET),
        }
    }

    /// True for a batch of the transactional producer protocol (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// Offset of the last record (compaction may have removed it, but the span stays).
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(self.last_offset_delta as i64)
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    /// A control batch (transaction marker): carries no user data.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }
}

/// `12 + batchLength` from the first 12 bytes, checked to be at least a header.
pub fn declared_size(b: &[u8]) -> Result<i64, BatchError> {
    if b.len() < LOG_OVERHEAD_BYTES {
        return Err(BatchError::TooShort(b.len()));
    }
    let declared = be_i32(b, 8) as i64 + LOG_OVERHEAD_BYTES as i64;
    if declared < HEADER_SIZE_BYTES as i64 {
        return Err(BatchError::BadField("batchLength below header size"));
    }
    Ok(declared)
}

/// Checks that `b` is exactly one RecordBatch v2: its declared length, header and CRC32C.
pub fn check_whole(b: &[u8]) -> Result<(), BatchError> {
    let declared = declared_size(b)?;
    if declared != b.len() as i64 {
        return Err(BatchError::LengthMismatch {
            declared,
            actual: b.len(),
        });
    }
    validate_header(b)?;
    verify_crc(b)
}

/// Checks the header fields of a complete batch (not the CRC).
pub fn validate_header(b: &[u8]) -> Result<(), BatchError> {
    if b.len() < HEADER_SIZE_BYTES {
        return Err(BatchError::TooShort(b.len()));
    }
    let magic = b[MAGIC_OFFSET] as i8;
    if magic != 2 {
        return Err(BatchError::BadMagic(magic));
    }
    let h = BatchHeader::read(b);
    if h.last_offset_delta < 0 {
        return Err(BatchError::BadField("negative lastOffsetDelta"));
    }
    if h.records_count < 0 || h.records_count as i64 > h.last_offset_delta as i64 + 1 {
        return Err(BatchError::BadField("recordsCount outside the offset span"));
    }
    Ok(())
}

/// The CRC32C the bytes actually have (over attributes..end).
pub fn compute_crc(b: &[u8]) -> u32 {
    crc32c::crc32c(&b[ATTRIBUTES_OFFSET..])
}

/// Checks the stored CRC against the bytes.
pub fn verify_crc(b: &[u8]) -> Result<(), BatchError> {
    let expected = be_i32(b, CRC_OFFSET) as u32;
    let actual = compute_crc(b);
    if expected != actual {
        return Err(BatchError::BadCrc { expected, actual });
    }
    Ok(())
}

/// Stamps the fields the log owns: `baseOffset` and `partitionLeaderEpoch`. Neither is covered
/// by the CRC, so the producer's checksum stays valid.
pub fn stamp(b: &mut [u8], base_offset: Offset, term: Term) {
    assert!(b.len() >= HEADER_SIZE_BYTES);
    b[0..8].copy_from_slice(&base_offset.0.to_be_bytes());
    b[EPOCH_OFFSET..EPOCH_OFFSET + 4].copy_from_slice(&term.0.to_be_bytes());
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// One record inside an uncompressed batch, as compaction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// The key, `None` for a null key.
    pub key: Option<Bytes>,
    /// True when the value is null: a tombstone.
    pub is_tombstone: bool,
    /// The value, `None` for a tombstone.
    pub value: Option<Bytes>,
    /// The whole record encoding, length prefix included, to copy unchanged.
    pub encoded: Bytes,
}

/// Splits the records of an uncompressed batch. Errors if the encoding is inconsistent.
pub fn records(batch: &Batch) -> Result<Vec<RecordView>, BatchError> {
    let h = batch.header();
    if h.compression() != 0 {
        return Err(BatchError::BadField("records of a compressed batch"));
    }
    let all = batch.bytes().slice(HEADER_SIZE_BYTES..);
    let mut rest = all.clone();
    let mut out = Vec::with_capacity(h.records_count.max(0) as usize);
    for _ in 0..h.records_count {
        let start = all.len() - rest.len();
        let len = read_varint(&mut rest)?;
        if len < 0 || len as usize > rest.len() {
            return Err(BatchError::BadField("record length"));
        }
        let header_len = all.len() - rest.len() - start;
        let mut body = rest.slice(..len as usize);
        rest.advance(len as usize);
        let encoded = all.slice(start..start + header_len + len as usize);
        if body.remaining() < 1 {
            return Err(BatchError::BadField("record attributes"));
        }
        body.advance(1);
        let timestamp_delta = read_varint(&mut body)?;
        let offset_delta = read_varint(&mut body)?;
        let key = read_nullable(&mut body)?;
        let value = read_nullable(&mut body)?;
        if offset_delta < 0 || offset_delta > h.last_offset_delta as i64 {
            return Err(BatchError::BadField("record offsetDelta"));
        }
        out.push(RecordView {
            offset_delta: offset_delta as i32,
            timestamp_delta,
            key,
            is_tombstone: value.is_none(),
            value,
            encoded,
        });
    }
    if !rest.is_empty() {
        return Err(BatchError::BadField("bytes after the last record"));
    }
    Ok(out)
}

/// Builds a batch holding a subset of `original`'s records: same base offset, producer fields,
/// timestamps and `lastOffsetDelta` (offsets never move), new count and CRC.
pub fn rebuild(original: &Batch, kept: &[RecordView]) -> Batch {
    let size: usize = HEADER_SIZE_BYTES + kept.iter().map(|r| r.encoded.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(&original.bytes()[..HEADER_SIZE_BYTES]);
    for r in kept {
        out.put_slice(&r.encoded);
    }
    out[8..12].copy_from_slice(&((size - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
    out[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4]
        .copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = compute_crc(&out);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Batch {
        bytes: out.freeze(),
    }
}

fn read_nullable(b: &mut Bytes) -> Result<Option<Bytes>, BatchError> {
    let len = read_varint(b)?;
    if len < 0 {
        return Ok(None);
    }
    if len as usize > b.len() {
        return Err(BatchError::BadField("field length"));
    }
    let v = b.slice(..len as usize);
    b.advance(len as usize);
    Ok(Some(v))
}

/// Reads a zig-zag varint (up to 64 bits).
fn read_varint(b: &mut Bytes) -> Result<i64, BatchError> {
    let mut raw: u64 = 0;
    for shift in (0..70).step_by(7) {
        if b.is_empty() || shift > 63 {
            return Err(BatchError::BadField("varint"));
        }
        let byte = b.get_u8();
        raw |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err(BatchError::BadField("varint"))
}

/// Builds valid uncompressed batches without a Kafka client: the broker's own internal records
/// (the metadata log), tests and benchmarks.
pub mod build {
    use super::*;

    /// One record to encode.
    #[derive(Clone, Debug)]
    pub struct NewRecord {
        /// Key bytes, or None.
        pub key: Option<Vec<u8>>,
        /// Value bytes, or None for a tombstone.
        pub value: Option<Vec<u8>>,
    }

    fn put_varint(out: &mut BytesMut, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.put_u8(z as u8);
                return;
            }
            out.put_u8((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    fn put_nullable(out: &mut BytesMut, v: &Option<Vec<u8>>) {
        match v {
            None => put_varint(out, -1),
            Some(v) => {
                put_varint(out, v.len() as i64);
                out.put_slice(v);
            }
        }
    }

    /// Encodes an uncompressed RecordBatch v2 with base offset 0, as a producer would send it.
    pub fn encode_batch(records: &[NewRecord], timestamp_ms: i64) -> BytesMut {
        encode_with_attributes(records, timestamp_ms, 0)
    }

    /// Encodes a control batch (attribute bit 5) of one record: clients skip control batches,
    /// so the broker can keep records of its own (Raft's no-op entries) in a topic's log
    /// without consumers seeing them. The key starts with Kafka's control-record header
    /// (version, type), as clients parse it.
    pub fn encode_control_batch(key: &[u8], timestamp_ms: i64) -> BytesMut {
        let record = NewRecord {
            key: Some(key.to_vec()),
            value: None,
        };
        encode_with_attributes(&[record], timestamp_ms, CONTROL_FLAG)
    }

    fn encode_with_attributes(
        records: &[NewRecord],
        timestamp_ms: i64,
        attributes: i16,
    ) -> BytesMut {
        let mut body = BytesMut::new();
        for (i, r) in records.iter().enumerate() {
            let mut rec = BytesMut::new();
            rec.put_i8(0);
            put_varint(&mut rec, 0);
            put_varint(&mut rec, i as i64);
            put_nullable(&mut rec, &r.key);
            put_nullable(&mut rec, &r.value);
            put_varint(&mut rec, 0);
            put_varint(&mut body, rec.len() as i64);
            body.put_slice(&rec);
        }
        let mut out = BytesMut::with_capacity(HEADER_SIZE_BYTES + body.len());
        out.put_i64(0);
        out.put_i32((HEADER_SIZE_BYTES - LOG_OVERHEAD_BYTES + body.len()) as i32);
        out.put_i32(-1);
        out.put_i8(2);
        out.put_u32(0);
        out.put_i16(attributes);
        out.put_i32(records.len().saturating_sub(1) as i32);
        out.put_i64(timestamp_ms);
        out.put_i64(timestamp_ms);
        out.put_i64(-1);
        out.put_i16(-1);
        out.put_i32(-1);
        out.put_i32(records.len() as i32);
        out.put_slice(&body);
        let crc = compute_crc(&out);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// A batch of `count` records whose values are `value_size_bytes` bytes each, filled with
    /// `fill`. Keys are none.
    pub fn filler_batch(count: usize, value_size_bytes: usize, fill: u8) -> BytesMut {
        let recs: Vec<NewRecord> = (0..count)
            .map(|_| NewRecord {
                key: None,
                value: Some(vec![fill; value_size_bytes]),
            })
            .collect();
        encode_batch(&recs, 1_700_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use proptest::prelude::*;

    fn rec(k: &[u8], v: Option<&[u8]>) -> NewRecord {
        NewRecord {
            key: Some(k.to_vec()),
            value: v.map(|v| v.to_vec()),
        }
    }

    #[test]
    fn parse_accepts_encoded_batch_and_stamp_keeps_crc() {
        let mut b = encode_batch(&[rec(b"a", Some(b"1")), rec(b"b", None)], 5);
        stamp(&mut b, Offset(42), Term(7));
        let batch = Batch::parse(b.freeze()).expect("valid");
        let h = batch.header();
        assert_eq!(h.base_offset, Offset(42));
        assert_eq!(h.term, Term(7));
        assert_eq!(h.last_offset(), Offset(43));
        assert_eq!(h.records_count, 2);
        let rs = records(&batch).expect("records");
        assert_eq!(rs[0].key.as_deref(), Some(&b"a"[..]));
        assert!(!rs[0].is_tombstone);
        assert!(rs[1].is_tombstone);
    }

    #[test]
    fn rebuild_keeps_offsets_and_valid_crc() {
        let b = encode_batch(&[rec(b"a", Some(b"1")), rec(b"b", Some(b"2"))], 5).freeze();
        let batch = Batch::parse(b).expect("valid");
        let rs = records(&batch).expect("records");
        let rebuilt = rebuild(&batch, &rs[1..]);
        let again = Batch::parse(rebuilt.bytes().clone()).expect("valid after rebuild");
        assert_eq!(again.header().last_offset_delta, 1);
        assert_eq!(again.header().records_count, 1);
        assert_eq!(records(&again).expect("records")[0].offset_delta, 1);
    }

    #[test]
    fn rejects_bad_magic_length_and_crc() {
        let good = encode_batch(&[rec(b"a", Some(b"1"))], 5);
        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        assert!(matches!(
            Batch::parse(bad_magic.freeze()),
            Err(BatchError::BadMagic(1))
        ));
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            Batch::parse(bad_crc.freeze()),
            Err(BatchError::BadCrc { .. })
        ));
        let short = good.clone().freeze().slice(..good.len() - 1);
        assert!(matches!(
            Batch::parse(short),
            Err(BatchError::LengthMismatch { .. })
        ));
    }

    proptest! {
        /// Any byte string either parses as a batch or is rejected: never a panic.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(b) = Batch::parse(Bytes::from(bytes)) {
                let _ = records(&b);
            }
        }

        /// Flipping any single covered byte of a valid batch is caught.
        #[test]
        fn single_byte_flip_is_detected(pos in 17usize..200, flip in 1u8..=255) {
            let good = encode_batch(&[rec(b"key", Some(&[7u8; 120]))], 5);
            prop_assume!(pos < good.len());
            let mut bad = good.clone();
            bad[pos] ^= flip;
            prop_assert!(Batch::parse(bad.freeze()).is_err());
        }

        /// Encoded records round-trip through the parser.
        #[test]
        fn records_roundtrip(keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..20)) {
            let recs: Vec<NewRecord> = keys.iter().map(|k| NewRecord { key: Some(k.clone()), value: Some(k.clone()) }).collect();
            let b = Batch::parse(encode_batch(&recs, 1).freeze()).expect("valid");
            let parsed = records(&b).expect("records");
            prop_assert_eq!(parsed.len(), keys.len());
            for (p, k) in parsed.iter().zip(keys.iter()) {
                prop_assert_eq!(p.key.as_deref(), Some(&k[..]));
            }
        }
    }
}
