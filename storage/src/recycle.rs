//! Segment recycling: sealed segment files that retention retires are kept in a small
//! per-log pool and reused by the next roll, instead of being deleted and created again.
//!
//! Runs on the partition's core, under the log's `sync_lock` (retention and roll hold it).
//!
//! ## Why
//! A new segment is preallocated, so its blocks are allocated but *unwritten* (ext4 reads them
//! back as zeros). The first write into an unwritten block converts the extent to written, and
//! a flush must make that conversion durable: on this machine's ext4 a flush's `O_DSYNC`
//! write into fresh space is a data write, an inode/extent block write and a cache flush in
//! series, about 1.3-1.7x fio's fdatasync alone. Into blocks that are already written it is
//! the data write and the cache flush only (perf/README.md, sessions 8 and 9). A recycled
//! file's blocks were written by its previous life, so appends overwrite them. Zeroing fresh
//! segments ahead of the writer would give the same, but costs a second full write of every
//! segment and measured harmful under load (sessions 5 and 7); recycling costs nothing but
//! the disk space of the pool.
//!
//! ## Files
//! A retired segment's `.log` is renamed `<base>.log.free` (its indexes are deleted); a roll
//! renames a pooled file to the new segment's `<base>.log.tmp` and then follows the normal roll
//! protocol (seal the old segment, rename `.log.tmp` to `.log`, sync the directory). At open
//! the pool is rebuilt from the `.log.free` files (beyond
//! [`crate::StorageLimits::recycled_segments_per_log_max`] they are deleted).
//!
//! ## Why old bytes are never served
//! A recycled active segment holds its previous life's batches past the current data. They
//! are never taken for data:
//! - Every offset in a retired segment is below the log start when it is retired, the log
//!   start never goes back, and every later batch gets an offset at or above it. The active
//!   segment's scan requires each batch to start exactly at the next offset (dense), so the
//!   first old batch (or any torn mix of old and new bytes, which fails its CRC) ends the log.
//! - Reads of the active segment stop at the written position; sealing cuts a file to its
//!   data; recovery cuts the active segment at its last valid batch and preallocates again
//!   (the cut-off blocks become unwritten), exactly as for a fresh file. A crash thus costs the
//!   active segment the rest of its written blocks, never correctness.
//! - A sealed segment whose cut was lost in a crash is rescanned without a density check, but
//!   it still rejects a batch whose base offset is below the previous batch's end, which every
//!   old batch is.
//!
//! A pooled file is reused only when no reader still holds the retired segment's descriptor
//! (a fetch that planned its read before retention ran): overwriting under it would make that
//! read fail with a corruption error instead of simply ending.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Result, StorageError};
use crate::file;
use crate::segment;
use crate::types::Offset;

/// Suffix of a pooled segment file.
pub(crate) const FREE_SUFFIX: &str = ".log.free";

/// Path of a pooled segment file, named after the base offset of the segment it was.
pub(crate) fn free_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}{FREE_SUFFIX}", base.0))
}

/// One pooled file.
pub(crate) struct Pooled {
    path: PathBuf,
    /// The retired segment's descriptor, when it was retired by this process: a reader that
    /// cloned it may still be reading, and the file is not reused until it is the only holder.
    file: Option<Rc<DmaFile>>,
}

/// The pool of one log. Only bookkeeping: the file operations are the free functions below,
/// so no borrow of the pool is held across an `.await`.
#[derive(Default)]
pub(crate) struct SegmentPool {
    files: Vec<Pooled>,
    /// Rolls that reused a pooled file since the log was opened.
    pub(crate) reused: u64,
}

impl SegmentPool {
    /// The pool found in `dir` at open: the `.log.free` files among `names`, the newest `max`
    /// kept, the rest deleted.
    pub(crate) async fn open(dir: &Path, names: Vec<String>, max: usize) -> Result<SegmentPool> {
        let mut names = names;
        names.sort();
        let keep_from = names.len().saturating_sub(max);
        let mut files = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            let path = dir.join(&name);
            if i < keep_from {
                file::remove_if_exists(&path).await?;
            } else {
                files.push(Pooled { path, file: None });
            }
        }
        Ok(SegmentPool { files, reused: 0 })
    }

    /// Files in the pool.
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// Adds a file that [`pool_file`] renamed.
    pub(crate) fn push(&mut self, path: PathBuf, file: Rc<DmaFile>) {
        self.files.push(Pooled {
            path,
            file: Some(file),
        });
    }

    /// Removes and returns a pooled file that no reader holds.
    pub(crate) fn pop_unused(&mut self) -> Option<Pooled> {
        let i = self
            .files
            .iter()
            .position(|p| p.file.as_ref().is_none_or(|f| Rc::strong_count(f) == 1))?;
        Some(self.files.swap_remove(i))
    }
}

/// Renames a retired segment's `.log` to `<base>.log.free`; returns the new path. The caller
/// syncs the directory.
pub(crate) fn pool_file(dir: &Path, base: Offset) -> Result<PathBuf> {
    let from = segment::log_path(dir, base);
    let to = free_path(dir, base);
    // A rename is a metadata operation that glommio offers only on an owned descriptor;
    // retention runs on the housekeeping queue, rarely, so the short blocking call is
    // accepted (as for unlink in `file::remove_if_exists`).
    std::fs::rename(&from, &to).map_err(|e| StorageError::io("pooling segment", &from, e))?;
    Ok(to)
}

/// Renames a pooled file to `to` and opens it for reading and writing; returns it with its
/// size. On an error the file is deleted (with a log line) and `None` returned: the caller
/// creates a fresh file instead.
pub(crate) async fn reuse(pooled: Pooled, to: &Path) -> Option<(DmaFile, u64)> {
    if let Some(f) = pooled.file {
        let _ = f.close_rc().await;
    }
    let from = pooled.path;
    let r = async {
        std::fs::rename(&from, to).map_err(|e| StorageError::io("reusing segment", &from, e))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(to)
            .await
            .map_err(|e| StorageError::glommio("opening reused segment", to, e))?;
        match f.file_size().await {
            Ok(size) => Ok((f, size)),
            Err(e) => {
                let _ = f.close().await;
                Err(StorageError::glommio("sizing reused segment", to, e))
            }
        }
    }
    .await;
    match r {
        Ok(got) => Some(got),
        Err(e) => {
            tracing::warn!(path = %from.display(), error = %e, "pooled segment unusable; deleting it");
            let _ = file::remove_if_exists(&from).await;
            let _ = file::remove_if_exists(to).await;
            None
        }
    }
}
