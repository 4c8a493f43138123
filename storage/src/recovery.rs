//! Opening a partition directory: recovery of the log after a clean stop or a crash.
//!
//! Runs on the partition's core when the log is opened.
//!
//! - Leftovers of interrupted writes (`*.tmp`, `*.log.cleaned`) are deleted: the file they
//!   would have replaced is still whole. Pooled segment files (`*.log.free`, see `recycle.rs`)
//!   go back into the pool, up to its bound.
//! - Each sealed segment loads its `.index`/`.timeindex`; a missing or damaged index (bad
//!   checksum, size not matching the segment, unsorted entries) is rebuilt by a validating scan
//!   and written again. A sealed segment whose scan stops early (a crash while it was being
//!   sealed, or corruption) is cut where the valid data ends, with a log line.
//! - The active segment is always scanned from its start: every batch is checked (length, magic,
//!   CRC32C, offsets increasing, terms not going back); the first invalid byte ends the log. The
//!   file is then cut there and preallocated again, so stale bytes can not come back later.
//!
//! Guarantees: a batch that was flushed is intact, so the scan passes it and it is kept; bytes
//! past the last valid batch are never served.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use crate::appender::Appender;
use crate::cache::BatchCache;
use crate::config::{LogConfig, StorageLimits};
use crate::error::{Result, StorageError};
use crate::file;
use crate::index::SegmentIndex;
use crate::log::{read_tail_page, write_index_files, Active, Log, Segment, State};
use crate::segment::{self, ScanLimits};
use crate::types::{Clock, Offset, Term};

/// Name of the log start offset checkpoint in the partition directory.
pub(crate) const START_OFFSET_FILE: &str = "start_offset";
/// Name of the checkpoint of the terms the log has appended in (Kafka's leader epoch
/// checkpoint, without offsets): big-endian i32s, sorted.
pub(crate) const TERMS_FILE: &str = "terms";

pub(crate) async fn open(
    dir: &Path,
    config: LogConfig,
    limits: StorageLimits,
    cache: Rc<BatchCache>,
    clock: Rc<dyn Clock>,
) -> Result<Log> {
    // Opening is rare and off the hot path: the directory listing uses std::fs.
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("creating log directory", dir, e))?;
    let mut bases = Vec::new();
    let mut pooled = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.ends_with(".log.cleaned") {
            file::remove_if_exists(&entry.path()).await?;
        } else if let Some(base) = segment::parse_log_name(&name) {
            bases.push(base);
        } else if name.ends_with(crate::recycle::FREE_SUFFIX) {
            pooled.push(name);
        }
    }
    bases.sort();
    let pool = crate::recycle::SegmentPool::open(dir, pooled, limits.recycled_segments_per_log_max)
        .await?;
    probe_device(dir).await?;
    // The start offset checkpoint: `i64 BE start offset`, then (since Raft) `i32 BE term of
    // the entry before it` (-1: unknown). An 8-byte checkpoint predates the term.
    let (checkpoint, prev_term) = match file::read_checked(&dir.join(START_OFFSET_FILE)).await? {
        Some(b) if b.len() == 8 || b.len() == 12 => match b.split_first_chunk::<8>() {
            Some((o, rest)) => {
                let t = rest
                    .first_chunk::<4>()
                    .map(|t| i32::from_be_bytes(*t))
                    .filter(|t| *t >= 0)
                    .map(Term);
                (Some(Offset(i64::from_be_bytes(*o))), t)
            }
            None => (None, None),
        },
        _ => (None, None),
    };
    let known_terms: Option<Vec<Term>> = file::read_checked(&dir.join(TERMS_FILE))
        .await?
        .filter(|b| b.len() % 4 == 0)
        .map(|b| {
            b.chunks_exact(4)
                .filter_map(|c| c.first_chunk::<4>())
                .map(|c| Term(i32::from_be_bytes(*c)))
                .collect()
        });
    let allowed = known_terms.as_deref();
    let scan_limits = |limit_pos, dense| ScanLimits {
        limit_pos,
        stop_before: None,
        chunk_bytes: 1 << 20,
        interval_bytes: config.index_interval_bytes,
        dense,
        allowed_terms: allowed,
    };

    let mut sealed = BTreeMap::new();
    let active_base = match bases.pop() {
        Some(b) => b,
        None => checkpoint.unwrap_or_default(),
    };
    for base in bases {
        let seg = open_sealed(dir, base, &scan_limits).await?;
        if let Some((_, prev)) = sealed.iter().next_back() {
            let prev: &Rc<Segment> = prev;
            if prev.index.end_offset() > base {
                return Err(StorageError::BadDirectory {
                    path: dir.to_path_buf(),
                    reason: format!("segment {base} overlaps the previous one"),
                });
            }
        }
        sealed.insert(base, Rc::new(seg));
    }

    let path = segment::log_path(dir, active_base);
    let active_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&path)
        .await
        .map_err(|e| StorageError::glommio("opening active segment", &path, e))?;
    let file_size = active_file
        .file_size()
        .await
        .map_err(|e| StorageError::glommio("sizing segment", &path, e))?;
    let mut index = SegmentIndex::new(active_base);
    let end = segment::scan(
        &active_file,
        &path,
        &mut index,
        scan_limits(file_size, true),
    )
    .await?;
    if let Some(why) = end.stopped_because.as_deref().filter(|_| end.end_pos > 0) {
        tracing::info!(path = %path.display(), end_pos = end.end_pos, reason = why, "recovered active segment");
    }
    let prealloc =
        (end.end_pos + limits.preallocate_step_bytes).min(config.segment_bytes.max(end.end_pos));
    let cut = async {
        active_file.truncate(end.end_pos).await?;
        active_file.pre_allocate(prealloc, false).await?;
        active_file.fdatasync().await
    }
    .await;
    cut.map_err(|e| StorageError::glommio("cutting the active segment", &path, e))?;
    file::remove_if_exists(&segment::index_path(dir, active_base)).await?;
    file::remove_if_exists(&segment::timeindex_path(dir, active_base)).await?;
    file::sync_dir(dir).await?;
    let tail = read_tail_page(&active_file, &path, end.end_pos).await?;
    let through = segment::open_write_through(&path).await?;
    let appender = Appender::new(
        Rc::new(active_file),
        through,
        path,
        limits.write_buffer_bytes,
        end.end_pos,
        &tail,
        prealloc,
    );

    let mut terms: Vec<(Term, Offset)> = Vec::new();
    for idx in sealed
        .values()
        .map(|s| &s.index)
        .chain(std::iter::once(&index))
    {
        for t in &idx.terms {
            if terms.last().map(|l| l.0) != Some(t.0) {
                terms.push(*t);
            }
        }
    }
    let first_base = sealed.keys().next().copied().unwrap_or(active_base);
    let next_offset = index.end_offset();
    let start_offset = checkpoint.map_or(first_base, |c| c.max(first_base));
    let cache_id = cache.register();
    let now = clock.now_ms();
    let log = Log {
        dir: dir.to_path_buf(),
        config: RefCell::new(config),
        limits,
        clock,
        cache,
        cache_id,
        state: RefCell::new(State {
            sealed,
            active: Active {
                index,
                appender,
                opened_ms: now,
            },
            start_offset: first_base.min(start_offset),
            next_offset,
            written_end: next_offset,
            flushed_end: next_offset,
            unwritten: VecDeque::new(),
            terms,
            prev_term,
            known_terms: known_terms.clone().unwrap_or_default(),
            frozen: false,
            failed: false,
        }),
        io_lock: crate::sync::LocalSemaphore::new(1),
        sync_lock: crate::sync::LocalSemaphore::new(1),
        sync_slots: std::cell::RefCell::new(None),
        flush_stats: std::cell::Cell::new(Default::default()),
        pool: RefCell::new(pool),
    };
    if start_offset > first_base {
        // Finishes a prefix truncation that was interrupted after its checkpoint was written.
        log.truncate_prefix_to(start_offset, prev_term).await?;
    }
    tracing::debug!(dir = %dir.display(), start = %log.start_offset(), end = %next_offset, "opened log");
    Ok(log)
}

async fn open_rw(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::glommio("opening segment", path, e))
}

async fn open_sealed<'a>(
    dir: &Path,
    base: Offset,
    scan_limits: &impl Fn(u64, bool) -> ScanLimits<'a>,
) -> Result<Segment> {
    let path = segment::log_path(dir, base);
    let f = open_rw(&path).await?;
    let size = f
        .file_size()
        .await
        .map_err(|e| StorageError::glommio("sizing segment", &path, e))?;
    let offsets = file::read_checked(&segment::index_path(dir, base)).await?;
    let times = file::read_checked(&segment::timeindex_path(dir, base)).await?;
    let loaded = match (offsets, times) {
        (Some(o), Some(t)) => {
            SegmentIndex::decode(base, &o, &t, size).filter(|i| i.size_bytes == size)
        }
        _ => None,
    };
    let index = match loaded {
        Some(i) => i,
        None => {
            let mut index = SegmentIndex::new(base);
            let end = segment::scan(&f, &path, &mut index, scan_limits(size, false)).await?;
            if end.end_pos < size {
                tracing::warn!(
                    path = %path.display(),
                    end_pos = end.end_pos,
                    file_size = size,
                    reason = end.stopped_because.as_deref().unwrap_or(""),
                    "sealed segment ends before its file; cutting it"
                );
                f.truncate(end.end_pos)
                    .await
                    .map_err(|e| StorageError::glommio("cutting sealed segment", &path, e))?;
            }
            tracing::info!(path = %path.display(), "rebuilt segment index");
            write_index_files(dir, &index).await?;
            index
        }
    };
    Ok(Segment {
        path,
        file: Rc::new(f),
        index,
    })
}

/// Makes glommio's per-device io_uring poll probe run on a file that has data.
///
/// glommio decides once per block device, on the first DMA file opened, whether the device
/// supports polled I/O, by reading that file. When the file is empty the read returns at once
/// without reaching the device, the probe wrongly concludes "pollable", and every later read on
/// that device fails with EOPNOTSUPP. Opening a one-page scratch file first settles the probe
/// correctly; once settled, this costs one small file per log open.
async fn probe_device(dir: &Path) -> Result<()> {
    let path = dir.join(".ringlog-io-probe");
    std::fs::write(&path, vec![0u8; crate::segment::PAGE_BYTES as usize])
        .map_err(|e| StorageError::io("writing io probe", &path, e))?;
    let f = DmaFile::open(&path)
        .await
        .map_err(|e| StorageError::glommio("opening io probe", &path, e))?;
    let _ = f.close().await;
    file::remove_if_exists(&path).await
}
