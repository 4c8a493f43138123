//! Segment files: naming, validated scanning (recovery, index rebuild) and batch reads.
//!
//! Runs on the partition's core; every read is a DMA (O_DIRECT) read through the core's
//! io_uring ring.
//!
//! ## Files of a partition directory
//! ```text
//! <base offset, 20 digits>.log        batches, back to back, exactly as stored (see batch.rs)
//! <base offset, 20 digits>.index      sparse offset index + summary, sealed segments only
//! <base offset, 20 digits>.timeindex  sparse time index, sealed segments only
//! <base offset, 20 digits>.log.cleaned  compaction output before it replaces the .log
//! <base offset, 20 digits>.log.tmp     a segment being created by a roll (renamed to .log
//!                                      once the previous segment is sealed)
//! <base offset, 20 digits>.log.free    a segment retired by retention, kept for a roll to
//!                                      reuse (see recycle.rs); the base is the old segment's
//! start_offset                         log start offset checkpoint (truncate_prefix)
//! *.tmp                                half-written checked files, deleted at open
//! ```
//! The segment with the highest base offset is the active one. It is preallocated ahead of the
//! write position in steps (ext4 serializes direct writes that extend a file), so its file size
//! says nothing; its logical end is found by scanning. A sealed segment's file is truncated to its
//! logical size.
//!
//! ## Validity of a batch on disk
//! A scan accepts a batch when its length is sane, it lies inside the scanned range, its magic
//! is 2, its CRC32C matches, its base offset follows the previous batch's last offset (exactly in
//! the active segment, which only appends write; with gaps allowed in sealed segments, where
//! compaction removes whole batches) and its term does not go backwards. `baseOffset` and
//! `partitionLeaderEpoch` are outside the batch CRC: density catches damage to the first, the
//! term order catches a term that shrinks. Zeros (preallocated space)
//! fail the length check, which is how the scan finds the end. Stale bytes past the end can not
//! be resurrected: truncation cuts the file and preallocates again, which reads back as zeros.
//! A recycled active segment holds its previous life's batches past the end; their offsets are
//! all below the log start, so the density check ends the scan at the first of them.
//!
//! ## Write-through flushes
//! The active segment is open twice: a plain O_DIRECT descriptor for the writes of full buffers
//! during appends, and an `O_DIRECT | O_DSYNC` one ([`open_write_through`]) for the writes a
//! flush submits. A write through the second is durable when it completes (its data, and the
//! extent and size metadata needed to read it back), so a flush round that only wrote through it
//! needs no fdatasync: one device operation instead of two. A round that follows plain writes
//! not yet made durable still ends with an fdatasync (see `Appender::needs_sync`). On ext4 every
//! write into preallocated space and every fdatasync runs on an io_uring io-wq worker; halving
//! those hand-offs halved the broker's median produce latency at a constant rate (perf/README.md,
//! session 6). Bulk writes stay plain because an `O_DSYNC` write per 256 KiB buffer cost the
//! log's append throughput about a third.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};

use crate::batch::{self, BatchHeader, HEADER_SIZE_BYTES, LOG_OVERHEAD_BYTES};
use crate::error::{Result, StorageError};
use crate::index::SegmentIndex;
use crate::types::{Offset, Term};

/// Disk alignment assumed for O_DIRECT (glommio reports the device's; 4 KiB covers both 512-byte
/// and 4 KiB sector devices).
pub const PAGE_BYTES: u64 = 4096;

/// Opens a second, write-through (`O_DSYNC`) descriptor of an active segment's file, for the
/// writes of a flush (see the module documentation).
pub(crate) async fn open_write_through(path: &Path) -> Result<std::rc::Rc<DmaFile>> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::glommio("opening segment write-through", path, e))?;
    Ok(std::rc::Rc::new(f))
}

/// Path of a segment's log file.
pub fn log_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.log", base.0))
}

/// Path of a segment's offset index.
pub fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.index", base.0))
}

/// Path of a segment's time index.
pub fn timeindex_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.timeindex", base.0))
}

/// Path of a segment file while it is being created by a roll (deleted at open).
pub fn creating_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.log.tmp", base.0))
}

/// Path of a segment's compaction output.
pub fn cleaned_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.log.cleaned", base.0))
}

/// The base offset named by a `.log` file name.
pub fn parse_log_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// Rounds down to the page.
pub fn align_down(v: u64) -> u64 {
    v & !(PAGE_BYTES - 1)
}

/// Rounds up to the page.
pub fn align_up(v: u64) -> u64 {
    align_down(v + PAGE_BYTES - 1)
}

/// Reads byte ranges of a file through aligned DMA reads of at least `chunk_bytes`, keeping the
/// last chunk so consecutive batches cost one read per chunk.
pub struct ChunkReader<'a> {
    file: &'a DmaFile,
    path: &'a Path,
    chunk_bytes: usize,
    buf: Bytes,
    buf_pos: u64,
}

impl<'a> ChunkReader<'a> {
    /// A reader over `file`.
    pub fn new(file: &'a DmaFile, path: &'a Path, chunk_bytes: usize) -> ChunkReader<'a> {
        ChunkReader {
            file,
            path,
            chunk_bytes,
            buf: Bytes::new(),
            buf_pos: 0,
        }
    }

    /// Exactly `len` bytes at `pos`, or `None` when the file ends first.
    pub async fn get(&mut self, pos: u64, len: usize) -> Result<Option<Bytes>> {
        let end = pos + len as u64;
        if pos < self.buf_pos || end > self.buf_pos + self.buf.len() as u64 {
            let start = align_down(pos);
            let size = align_up((end - start).max(self.chunk_bytes as u64)) as usize;
            let r = self
                .file
                .read_at_aligned(start, size)
                .await
                .map_err(|e| StorageError::glommio("reading segment", self.path, e))?;
            self.buf = Bytes::copy_from_slice(&r);
            self.buf_pos = start;
            if end > start + self.buf.len() as u64 {
                return Ok(None);
            }
        }
        let at = (pos - self.buf_pos) as usize;
        Ok(Some(self.buf.slice(at..at + len)))
    }
}

/// Where and why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEnd {
    /// Byte position just past the last valid batch.
    pub end_pos: u64,
    /// Why the next bytes were not accepted; `None` when the scan reached `limit_pos` exactly.
    pub stopped_because: Option<String>,
}

/// Checks one batch found at a position against what the scan expects next.
fn check_next(
    bytes: &[u8],
    expect: Option<Offset>,
    last_term: Option<Term>,
    dense: bool,
) -> std::result::Result<BatchHeader, String> {
    batch::validate_header(bytes).map_err(|e| e.to_string())?;
    batch::verify_crc(bytes).map_err(|e| e.to_string())?;
    let h = BatchHeader::read(bytes);
    if let Some(x) = expect.filter(|x| h.base_offset < *x || (dense && h.base_offset != *x)) {
        return Err(format!(
            "base offset {} where {x} was expected",
            h.base_offset
        ));
    }
    if last_term.is_some_and(|t| h.term < t) {
        return Err(format!("term {} goes backwards", h.term));
    }
    Ok(h)
}

/// How far a scan goes and how it indexes.
#[derive(Clone, Copy, Debug)]
pub struct ScanLimits<'a> {
    /// Do not read at or past this byte position.
    pub limit_pos: u64,
    /// Stop (cleanly) before the first batch whose last offset is at or past this.
    pub stop_before: Option<Offset>,
    /// Bytes per DMA read.
    pub chunk_bytes: usize,
    /// `index.interval.bytes`.
    pub interval_bytes: usize,
    /// Offsets must be dense (each batch starts right after the previous one, the first at the
    /// segment's base): true for the active segment, which only appends write. Sealed segments
    /// may have gaps from compaction.
    pub dense: bool,
    /// When known, the terms the log has appended in: a batch with any other term is invalid.
    pub allowed_terms: Option<&'a [Term]>,
}

/// Scans and validates batches from `index.size_bytes`, adding each valid batch to `index`.
/// Stops at the first invalid batch, at `limit_pos`, or before `stop_before`.
pub async fn scan(
    file: &DmaFile,
    path: &Path,
    index: &mut SegmentIndex,
    limits: ScanLimits<'_>,
) -> Result<ScanEnd> {
    let ScanLimits {
        limit_pos,
        stop_before,
        chunk_bytes,
        interval_bytes,
        dense,
        allowed_terms,
    } = limits;
    let mut reader = ChunkReader::new(file, path, chunk_bytes);
    let mut pos = index.size_bytes;
    let mut expect = Some(index.end_offset());
    let mut last_term = index.terms.last().map(|t| t.0);
    loop {
        if pos + HEADER_SIZE_BYTES as u64 > limit_pos {
            let why = (pos < limit_pos).then(|| "partial header before the end".to_string());
            return Ok(ScanEnd {
                end_pos: pos,
                stopped_because: why,
            });
        }
        let Some(head) = reader.get(pos, LOG_OVERHEAD_BYTES).await? else {
            return Ok(ScanEnd {
                end_pos: pos,
                stopped_because: Some("end of file".into()),
            });
        };
        let size = match batch::declared_size(&head) {
            Ok(s) if pos + s as u64 <= limit_pos => s as usize,
            Ok(s) => {
                let why = format!("batch of {s} bytes runs past the end");
                return Ok(ScanEnd {
                    end_pos: pos,
                    stopped_because: Some(why),
                });
            }
            Err(e) => {
                return Ok(ScanEnd {
                    end_pos: pos,
                    stopped_because: Some(e.to_string()),
                })
            }
        };
        let Some(bytes) = reader.get(pos, size).await? else {
            return Ok(ScanEnd {
                end_pos: pos,
                stopped_because: Some("end of file".into()),
            });
        };
        let h = match check_next(&bytes, expect, last_term, dense) {
            Ok(h) => h,
            Err(why) => {
                return Ok(ScanEnd {
                    end_pos: pos,
                    stopped_because: Some(why),
                })
            }
        };
        if allowed_terms.is_some_and(|t| !t.contains(&h.term)) {
            let why = format!("term {} is not one the log appended in", h.term);
            return Ok(ScanEnd {
                end_pos: pos,
                stopped_because: Some(why),
            });
        }
        if stop_before.is_some_and(|s| h.last_offset() >= s) {
            return Ok(ScanEnd {
                end_pos: pos,
                stopped_because: None,
            });
        }
        index.add(&h, pos, interval_bytes);
        expect = Some(h.last_offset().plus(1));
        last_term = Some(h.term);
        pos += size as u64;
    }
}

/// What a read of one segment asks for.
#[derive(Clone, Copy, Debug)]
pub struct ReadRange {
    /// First offset wanted: the batch holding it is the first returned.
    pub from: Offset,
    /// Stop before batches whose base offset is at or past this.
    pub end: Offset,
    /// Byte position to start walking from (from the index).
    pub start_pos: u64,
    /// The base offset the index names for `start_pos`: the first batch starts at or after it.
    pub first_base_min: Offset,
    /// The last offset the segment holds: no batch may go past it.
    pub last_offset_max: Offset,
    /// Bytes of the segment that may be read (written data only).
    pub limit_pos: u64,
    /// Stop once this many bytes are collected (at least one batch is returned).
    pub max_bytes: usize,
    /// The segment is the active one: its written data may end inside a batch whose write is
    /// still in flight, which ends the read instead of being corruption.
    pub partial_tail: bool,
}

/// Reads whole batches from one segment, verifying each batch's CRC. Invalid bytes inside
/// `limit_pos` are corruption: an error, never returned as data.
pub async fn read_batches(
    file: &DmaFile,
    path: &Path,
    range: ReadRange,
    chunk_bytes: usize,
) -> Result<Vec<Bytes>> {
    let mut reader = ChunkReader::new(
        file,
        path,
        chunk_bytes.min(range.max_bytes.max(1) + PAGE_BYTES as usize),
    );
    let mut out = Vec::new();
    let mut size_total = 0;
    let mut pos = range.start_pos;
    let mut expect = range.first_base_min;
    let corrupt = |position: u64, reason: String| {
        tracing::error!(path = %path.display(), position, %reason, "corrupt batch in segment");
        StorageError::Corrupt {
            path: path.to_path_buf(),
            position,
            reason,
        }
    };
    while pos + HEADER_SIZE_BYTES as u64 <= range.limit_pos {
        let head = reader
            .get(pos, LOG_OVERHEAD_BYTES)
            .await?
            .ok_or_else(|| corrupt(pos, "segment file shorter than its index".into()))?;
        let size = batch::declared_size(&head).map_err(|e| corrupt(pos, e.to_string()))? as usize;
        if pos + size as u64 > range.limit_pos {
            if range.partial_tail {
                break;
            }
            return Err(corrupt(
                pos,
                format!("batch of {size} bytes runs past the end"),
            ));
        }
        let bytes = reader
            .get(pos, size)
            .await?
            .ok_or_else(|| corrupt(pos, "segment file shorter than its index".into()))?;
        let h = check_next(&bytes, Some(expect), None, false).map_err(|why| corrupt(pos, why))?;
        if h.last_offset() > range.last_offset_max {
            let why = format!(
                "batch ends at {} past the segment's last offset",
                h.last_offset()
            );
            return Err(corrupt(pos, why));
        }
        expect = h.last_offset().plus(1);
        pos += size as u64;
        if h.last_offset() < range.from {
            continue;
        }
        if h.base_offset >= range.end || (!out.is_empty() && size_total + size > range.max_bytes) {
            break;
        }
        size_total += size;
        out.push(bytes);
        if size_total >= range.max_bytes {
            break;
        }
    }
    Ok(out)
}
