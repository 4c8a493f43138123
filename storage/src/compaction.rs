//! Compaction (`cleanup.policy=compact`): keep the latest record per key in sealed segments.
//!
//! Runs on the partition's core from the housekeeping task queue (low priority), so appends
//! and fetches go first. It reads sealed segments, builds a key -> latest offset map (bounded by
//! `compaction_map_bytes_max`), and rewrites each segment that loses records:
//!
//! - a record is kept when it is the latest for its key among the segments the map covers;
//! - a tombstone (null value) that is the latest for its key is dropped once its batch's max
//!   timestamp is older than `delete.retention.ms`;
//! - records without a key, compressed batches and control batches are kept whole (the storage
//!   layer does not decompress; Kafka clients reject keyless records on compacted topics);
//! - offsets never move: a rewritten batch keeps its base offset and `lastOffsetDelta`, and
//!   batches left empty are dropped, leaving gaps that readers skip.
//!
//! The active segment is never compacted, as in Kafka. The rewritten segment is written to
//! `<base>.log.cleaned`, synced, then swapped in under the log's `sync_lock`: old index files are
//! removed, the file renamed over the `.log`, the new index written, the directory synced. A
//! crash at any point leaves either the old segment (a leftover `.cleaned` is deleted at open)
//! or the new one (its index is rebuilt at open if it was not yet written).

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};

use crate::batch::{self, Batch, BatchHeader};
use crate::error::{Result, StorageError};
use crate::file;
use crate::index::SegmentIndex;
use crate::log::{write_index_files, Log, Segment};
use crate::segment::{self, align_up, ReadRange};
use crate::types::Offset;

const COMPACTION_READ_BYTES: usize = 4 << 20;
const COMPACTION_WRITE_BYTES: usize = 1 << 20;
const MAP_ENTRY_OVERHEAD_BYTES: usize = 48;

/// What a compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten.
    pub segments_cleaned: usize,
    /// Records removed.
    pub records_removed: u64,
    /// Bytes of the rewritten segments before.
    pub bytes_before: u64,
    /// Bytes of the rewritten segments after.
    pub bytes_after: u64,
}

impl Log {
    /// One compaction pass over the sealed segments.
    pub async fn compact(&self) -> Result<CompactionReport> {
        let segs: Vec<Rc<Segment>> = self.state.borrow().sealed.values().cloned().collect();
        let mut report = CompactionReport::default();
        if segs.is_empty() {
            return Ok(report);
        }
        let map_bytes_max = self.limits.compaction_map_bytes_max;
        let mut latest: HashMap<Bytes, Offset> = HashMap::new();
        let mut map_bytes = 0;
        let mut covered = 0;
        for seg in &segs {
            for_each_batch(seg, |b| {
                let h = BatchHeader::read(b);
                if h.compression() != 0 || h.is_control() {
                    return Ok(());
                }
                let batch = Batch::parse(b.clone())?;
                for r in batch::records(&batch)? {
                    if let Some(k) = r.key {
                        let len = k.len();
                        if latest
                            .insert(k, h.base_offset.plus(r.offset_delta as i64))
                            .is_none()
                        {
                            map_bytes += len + MAP_ENTRY_OVERHEAD_BYTES;
                        }
                    }
                }
                Ok(())
            })
            .await?;
            covered += 1;
            if map_bytes >= map_bytes_max {
                break;
            }
        }
        let cfg = self.config();
        let tombstone_horizon = self.clock.now_ms().0 - cfg.delete_retention_ms;
        for seg in &segs[..covered] {
            let mut kept_batches: Vec<Bytes> = Vec::new();
            let mut removed = 0u64;
            for_each_batch(seg, |b| {
                let h = BatchHeader::read(b);
                if h.compression() != 0 || h.is_control() {
                    kept_batches.push(b.clone());
                    return Ok(());
                }
                let batch = Batch::parse(b.clone())?;
                let records = batch::records(&batch)?;
                let keep = |r: &batch::RecordView| match &r.key {
                    None => true,
                    Some(k) => {
                        let offset = h.base_offset.plus(r.offset_delta as i64);
                        let newest = latest.get(k) == Some(&offset);
                        newest && !(r.is_tombstone && h.max_timestamp.0 < tombstone_horizon)
                    }
                };
                let kept: Vec<batch::RecordView> =
                    records.iter().filter(|r| keep(r)).cloned().collect();
                removed += (records.len() - kept.len()) as u64;
                if kept.len() == records.len() {
                    kept_batches.push(b.clone());
                } else if !kept.is_empty() {
                    kept_batches.push(batch::rebuild(&batch, &kept).into_bytes());
                }
                Ok(())
            })
            .await?;
            if removed == 0 {
                continue;
            }
            let before = seg.index.size_bytes;
            let after = self.swap_in(seg, &kept_batches).await?;
            report.segments_cleaned += 1;
            report.records_removed += removed;
            report.bytes_before += before;
            report.bytes_after += after;
        }
        if report.segments_cleaned > 0 {
            tracing::info!(
                dir = %self.dir.display(),
                segments = report.segments_cleaned,
                records_removed = report.records_removed,
                bytes_before = report.bytes_before,
                bytes_after = report.bytes_after,
                "compacted"
            );
        }
        Ok(report)
    }

    /// Writes the cleaned segment and replaces `seg` with it. Returns the new size.
    async fn swap_in(&self, seg: &Rc<Segment>, batches: &[Bytes]) -> Result<u64> {
        let base = seg.index.base_offset;
        let cleaned = segment::cleaned_path(&self.dir, base);
        let interval = self.config().index_interval_bytes;
        let (new_file, index) = write_segment(&cleaned, base, batches, interval).await?;
        let _sync = self.sync_lock.acquire(1).await;
        let still_there = self
            .state
            .borrow()
            .sealed
            .get(&base)
            .is_some_and(|s| Rc::ptr_eq(s, seg));
        if !still_there {
            // Deleted or truncated meanwhile: drop the output.
            let _ = new_file.close().await;
            file::remove_if_exists(&cleaned).await?;
            return Ok(seg.index.size_bytes);
        }
        let path = segment::log_path(&self.dir, base);
        let swap = async {
            file::remove_if_exists(&segment::index_path(&self.dir, base)).await?;
            file::remove_if_exists(&segment::timeindex_path(&self.dir, base)).await?;
            new_file
                .rename(&path)
                .await
                .map_err(|e| StorageError::glommio("renaming cleaned segment", &path, e))?;
            write_index_files(&self.dir, &index).await?;
            file::sync_dir(&self.dir).await
        }
        .await;
        if let Err(e) = swap {
            return Err(self.fail(e));
        }
        let size = index.size_bytes;
        let next_base = {
            let st = self.state.borrow();
            st.sealed
                .range(base.plus(1)..)
                .next()
                .map_or(st.active.index.base_offset, |(b, _)| *b)
        };
        self.cache.remove_range(self.cache_id, base, next_base);
        self.state.borrow_mut().sealed.insert(
            base,
            Rc::new(Segment {
                path,
                file: Rc::new(new_file),
                index,
            }),
        );
        Ok(size)
    }
}

/// Calls `f` on every batch of a sealed segment, reading it in bounded chunks.
async fn for_each_batch(seg: &Segment, mut f: impl FnMut(&Bytes) -> Result<()>) -> Result<()> {
    let mut pos = 0;
    while pos < seg.index.size_bytes {
        let range = ReadRange {
            from: Offset(i64::MIN),
            end: Offset(i64::MAX),
            start_pos: pos,
            first_base_min: Offset(i64::MIN),
            last_offset_max: seg.index.last_offset.unwrap_or(Offset(i64::MIN)),
            limit_pos: seg.index.size_bytes,
            max_bytes: COMPACTION_READ_BYTES,
            partial_tail: false,
        };
        let batches =
            segment::read_batches(&seg.file, &seg.path, range, COMPACTION_READ_BYTES).await?;
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            pos += b.len() as u64;
            f(b)?;
        }
    }
    Ok(())
}

/// Writes batches to a new file with aligned DMA writes, truncated to the exact size and
/// synced; returns the open file and its index.
async fn write_segment(
    path: &Path,
    base: Offset,
    batches: &[Bytes],
    interval_bytes: usize,
) -> Result<(DmaFile, SegmentIndex)> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::glommio("creating cleaned segment", path, e))?;
    let mut index = SegmentIndex::new(base);
    let mut buf = f.alloc_dma_buffer(COMPACTION_WRITE_BYTES);
    let mut buf_len = 0;
    let mut buf_pos = 0u64;
    let io = |e| StorageError::glommio("writing cleaned segment", path, e);
    for b in batches {
        index.add(&BatchHeader::read(b), index.size_bytes, interval_bytes);
        let mut rest = &b[..];
        while !rest.is_empty() {
            let n = (COMPACTION_WRITE_BYTES - buf_len).min(rest.len());
            buf.as_bytes_mut()[buf_len..buf_len + n].copy_from_slice(&rest[..n]);
            buf_len += n;
            rest = &rest[n..];
            if buf_len == COMPACTION_WRITE_BYTES {
                let full = std::mem::replace(&mut buf, f.alloc_dma_buffer(COMPACTION_WRITE_BYTES));
                f.write_at(full, buf_pos).await.map_err(io)?;
                buf_pos += COMPACTION_WRITE_BYTES as u64;
                buf_len = 0;
            }
        }
    }
    if buf_len > 0 {
        let padded = align_up(buf_len as u64) as usize;
        buf.as_bytes_mut()[buf_len..padded].fill(0);
        buf.trim_to_size(padded);
        f.write_at(buf, buf_pos).await.map_err(io)?;
    }
    f.truncate(index.size_bytes).await.map_err(io)?;
    f.fdatasync().await.map_err(io)?;
    Ok((f, index))
}
