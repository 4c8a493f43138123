//! Truncation: cutting the suffix (a new Raft leader overwriting a follower's divergent tail)
//! and the prefix (retention, snapshots).
//!
//! Runs on the partition's core, under the log's `sync_lock` with appends frozen, after every
//! buffered write has completed, so the files are the whole truth while they change.
//!
//! Crash safety:
//! - Suffix: newer segments are deleted and the directory synced first; then the segment holding
//!   the cut is cut. An active segment is preallocated again (the cut-off bytes read back as
//!   zeros) and synced; a sealed one keeps being sealed, gets a fresh index, and a new empty
//!   active segment starts at the new end, so active segments only ever hold dense offsets
//!   written by appends. A crash in between leaves a valid log that still ends at or after the
//!   cut, which the next truncation (Raft repeats it) finishes.
//! - Prefix: the new start offset is checkpointed first, then whole segments below it are
//!   deleted. Opening after a crash finishes the deletion.

use std::rc::Rc;

use crate::appender::Appender;
use crate::error::{Result, StorageError};
use crate::file;
use crate::index::SegmentIndex;
use crate::log::{read_tail_page, write_index_files, Active, Log, Segment};
use crate::recovery::START_OFFSET_FILE;
use crate::segment::{self, ScanLimits};
use crate::types::{Offset, Term};

impl Log {
    /// Removes every batch that holds an offset at or after `from` (whole batches: a batch
    /// that straddles `from` goes too). The new end offset is returned. The truncation is
    /// durable when this returns.
    pub async fn truncate_suffix(&self, from: Offset) -> Result<Offset> {
        let _sync = self.sync_lock.acquire(1).await;
        {
            let st = self.state.borrow();
            if st.failed {
                return Err(StorageError::Failed);
            }
            if from < st.start_offset {
                return Err(StorageError::OffsetOutOfRange {
                    requested: from,
                    start: st.start_offset,
                    end: st.next_offset,
                });
            }
            if from >= st.next_offset {
                return Ok(st.next_offset);
            }
        }
        self.state.borrow_mut().frozen = true;
        let r = self.truncate_suffix_locked(from).await;
        self.state.borrow_mut().frozen = false;
        match r {
            Ok(end) => Ok(end),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn truncate_suffix_locked(&self, from: Offset) -> Result<Offset> {
        {
            let _io = self.io_lock.acquire(1).await;
            self.drain_all_locked().await?;
        }
        self.cache.remove_from(self.cache_id, from);
        let (active_base, start_offset) = {
            let st = self.state.borrow();
            (st.active.index.base_offset, st.start_offset)
        };
        if from >= active_base {
            let file = self.state.borrow().active.appender.file().clone();
            let (index, appender) = self.cut_active(file, active_base, from).await?;
            if index.end_offset() < start_offset {
                // Everything left is below the log start: continue in a fresh segment at the
                // start, so the active segment's offsets stay dense.
                drop(appender);
                self.reset_to(start_offset).await?;
                return Ok(start_offset);
            }
            let new_end = index.end_offset();
            self.install_active(index, appender, new_end);
            tracing::info!(dir = %self.dir.display(), from = %from, end = %new_end, "truncated suffix");
            return Ok(new_end);
        }
        // The cut lies in a sealed segment: newer segments go, the segment is cut and stays
        // sealed (with a fresh index), and a new empty active segment starts at the new end.
        // Active segments are thus only ever written by appends, so their offsets are dense.
        let (target, doomed) = {
            let st = self.state.borrow();
            let target = st.sealed.range(..=from).next_back().map(|(_, s)| s.clone());
            let target = target.or_else(|| st.sealed.values().next().cloned());
            let target = target.expect("a sealed segment below the active one");
            let base = target.index.base_offset;
            let mut doomed: Vec<Offset> =
                st.sealed.range(base.plus(1)..).map(|(b, _)| *b).collect();
            doomed.push(active_base);
            (target, doomed)
        };
        let base = target.index.base_offset;
        for b in &doomed {
            remove_segment_files(self, *b).await?;
        }
        file::remove_if_exists(&segment::index_path(&self.dir, base)).await?;
        file::remove_if_exists(&segment::timeindex_path(&self.dir, base)).await?;
        file::sync_dir(&self.dir).await?;
        let mut index = SegmentIndex::new(base);
        let limits = ScanLimits {
            limit_pos: target.index.size_bytes,
            stop_before: Some(from),
            chunk_bytes: self.limits.read_chunk_bytes,
            interval_bytes: self.config.borrow().index_interval_bytes,
            dense: false,
            allowed_terms: None,
        };
        let end = segment::scan(&target.file, &target.path, &mut index, limits).await?;
        let keep_target = end.end_pos > 0;
        if keep_target {
            target
                .file
                .truncate(end.end_pos)
                .await
                .map_err(|e| StorageError::glommio("cutting segment", &target.path, e))?;
            write_index_files(&self.dir, &index).await?;
        } else {
            file::remove_if_exists(&target.path).await?;
        }
        let new_end = if keep_target {
            index.end_offset()
        } else {
            base
        }
        .max(start_offset);
        let (new_file, new_through) = self.create_segment_file(new_end).await?;
        file::sync_dir(&self.dir).await?;
        {
            let mut st = self.state.borrow_mut();
            st.sealed.retain(|b, _| *b < base);
            if keep_target {
                st.sealed.insert(
                    base,
                    Rc::new(Segment {
                        path: target.path.clone(),
                        file: target.file.clone(),
                        index,
                    }),
                );
            }
        }
        let path = segment::log_path(&self.dir, new_end);
        let appender = Appender::new(
            new_file,
            new_through,
            path,
            self.limits.write_buffer_bytes,
            0,
            &[],
            self.initial_preallocation(0),
        );
        self.install_active(SegmentIndex::new(new_end), appender, new_end);
        tracing::info!(dir = %self.dir.display(), from = %from, end = %new_end, "truncated suffix");
        Ok(new_end)
    }

    /// Cuts the active segment before the batch that holds `from`; returns its new index and
    /// appender.
    async fn cut_active(
        &self,
        file: Rc<glommio::io::DmaFile>,
        base: Offset,
        from: Offset,
    ) -> Result<(SegmentIndex, Appender)> {
        let path = segment::log_path(&self.dir, base);
        let mut index = SegmentIndex::new(base);
        let limits = ScanLimits {
            limit_pos: self.state.borrow().active.appender.written_pos(),
            stop_before: Some(from),
            chunk_bytes: self.limits.read_chunk_bytes,
            interval_bytes: self.config.borrow().index_interval_bytes,
            dense: true,
            allowed_terms: None,
        };
        let end = segment::scan(&file, &path, &mut index, limits).await?;
        let prealloc = self.initial_preallocation(end.end_pos);
        let cut = async {
            file.truncate(end.end_pos).await?;
            file.pre_allocate(prealloc, false).await?;
            file.fdatasync().await
        }
        .await;
        cut.map_err(|e| StorageError::glommio("cutting segment", &path, e))?;
        let tail = read_tail_page(&file, &path, end.end_pos).await?;
        let through = segment::open_write_through(&path).await?;
        let appender = Appender::new(
            file,
            through,
            path,
            self.limits.write_buffer_bytes,
            end.end_pos,
            &tail,
            prealloc,
        );
        Ok((index, appender))
    }

    /// Makes `index`/`appender` the active segment with the log ending at `new_end`.
    fn install_active(&self, index: SegmentIndex, appender: Appender, new_end: Offset) {
        let now = self.clock.now_ms();
        let mut st = self.state.borrow_mut();
        st.active = Active {
            index,
            appender,
            opened_ms: now,
        };
        st.next_offset = new_end;
        st.written_end = new_end;
        st.flushed_end = new_end;
        st.terms.retain(|(_, start)| *start < new_end);
    }

    /// Waits for every buffered write. Caller holds `io_lock`.
    async fn drain_all_locked(&self) -> Result<()> {
        self.state.borrow_mut().active.appender.seal_partial();
        self.submit_locked(false).await?;
        self.wait_all_written().await?;
        self.refresh_written();
        Ok(())
    }

    /// Makes `new_start` the first offset of the log, deleting every segment that lies wholly
    /// below it. Offsets below it are no longer readable. A `new_start` past the end empties
    /// the log and continues it at `new_start` (a Raft snapshot that is ahead of this log).
    pub async fn truncate_prefix(&self, new_start: Offset) -> Result<()> {
        let prev = {
            let st = self.state.borrow();
            let before = new_start.plus(-1);
            if before >= st.start_offset && before < st.next_offset {
                let i = st.terms.partition_point(|(_, s)| *s <= before);
                (i > 0).then(|| st.terms[i - 1].0)
            } else {
                None
            }
        };
        self.truncate_prefix_to(new_start, prev).await
    }

    /// [`Log::truncate_prefix`] with the term of the entry before `new_start` given (a Raft
    /// snapshot installed past the end of this log knows it; the log does not).
    pub async fn truncate_prefix_to(
        &self,
        new_start: Offset,
        prev_term: Option<Term>,
    ) -> Result<()> {
        let _sync = self.sync_lock.acquire(1).await;
        {
            let st = self.state.borrow();
            if st.failed {
                return Err(StorageError::Failed);
            }
            if new_start <= st.start_offset {
                return Ok(());
            }
        }
        self.state.borrow_mut().frozen = true;
        let r = self.truncate_prefix_locked(new_start, prev_term).await;
        self.state.borrow_mut().frozen = false;
        r.map_err(|e| self.fail(e))
    }

    async fn truncate_prefix_locked(
        &self,
        new_start: Offset,
        prev_term: Option<Term>,
    ) -> Result<()> {
        let mut checkpoint = new_start.0.to_be_bytes().to_vec();
        checkpoint.extend_from_slice(&prev_term.map_or(-1, |t| t.0).to_be_bytes());
        file::write_checked(&self.dir.join(START_OFFSET_FILE), &checkpoint).await?;
        file::sync_dir(&self.dir).await?;
        let past_end = new_start > self.state.borrow().next_offset;
        if past_end {
            self.reset_to(new_start).await?;
        }
        let doomed: Vec<Offset> = {
            let st = self.state.borrow();
            st.sealed
                .iter()
                .filter(|(_, s)| s.index.end_offset() <= new_start)
                .map(|(b, _)| *b)
                .collect()
        };
        for base in &doomed {
            retire_segment(self, *base, new_start).await?;
            self.state.borrow_mut().sealed.remove(base);
        }
        if !doomed.is_empty() {
            file::sync_dir(&self.dir).await?;
        }
        self.cache
            .remove_range(self.cache_id, Offset(i64::MIN), new_start);
        let mut st = self.state.borrow_mut();
        st.start_offset = new_start;
        st.prev_term = prev_term;
        let i = st.terms.partition_point(|(_, s)| *s <= new_start);
        if i > 0 {
            let t: Term = st.terms[i - 1].0;
            st.terms.drain(..i);
            st.terms.insert(0, (t, new_start));
        }
        tracing::info!(dir = %self.dir.display(), start = %new_start, deleted = doomed.len(), "truncated prefix");
        Ok(())
    }

    /// Replaces the whole log with one empty active segment starting at `base`.
    pub(crate) async fn reset_to(&self, base: Offset) -> Result<()> {
        {
            let _io = self.io_lock.acquire(1).await;
            self.drain_all_locked().await?;
        }
        let (file, through) = self.create_segment_file(base).await?;
        let doomed: Vec<Offset> = {
            let st = self.state.borrow();
            let mut v: Vec<Offset> = st.sealed.keys().copied().collect();
            v.push(st.active.index.base_offset);
            v.retain(|b| *b != base);
            v
        };
        for b in &doomed {
            remove_segment_files(self, *b).await?;
        }
        file::sync_dir(&self.dir).await?;
        self.cache.remove_from(self.cache_id, Offset(i64::MIN));
        let now = self.clock.now_ms();
        let appender = Appender::new(
            file,
            through,
            segment::log_path(&self.dir, base),
            self.limits.write_buffer_bytes,
            0,
            &[],
            self.initial_preallocation(0),
        );
        let mut st = self.state.borrow_mut();
        st.sealed.clear();
        st.active = Active {
            index: SegmentIndex::new(base),
            appender,
            opened_ms: now,
        };
        st.next_offset = base;
        st.written_end = base;
        st.flushed_end = base;
        st.terms.clear();
        Ok(())
    }
}

/// Retires a segment wholly below `new_start`, the log start already checkpointed: its file goes into the pool if there is room
/// (see `recycle.rs`: only segments below the start may be recycled, never those cut off by a
/// suffix truncation, whose offsets will be assigned again), else it is deleted.
async fn retire_segment(log: &Log, base: Offset, new_start: Offset) -> Result<()> {
    let seg: Option<Rc<Segment>> = log.state.borrow().sealed.get(&base).cloned();
    let room = log.pool.borrow().len() < log.limits.recycled_segments_per_log_max;
    let Some(seg) = seg.filter(|_| room) else {
        return remove_segment_files(log, base).await;
    };
    assert!(
        seg.index.end_offset() <= new_start,
        "only segments below the (checkpointed) log start are recycled"
    );
    let path = crate::recycle::pool_file(&log.dir, base)?;
    log.pool.borrow_mut().push(path, seg.file.clone());
    file::remove_if_exists(&segment::index_path(&log.dir, base)).await?;
    file::remove_if_exists(&segment::timeindex_path(&log.dir, base)).await
}

/// Deletes a segment's files (the open handle, if any, stays readable until dropped).
async fn remove_segment_files(log: &Log, base: Offset) -> Result<()> {
    let seg: Option<Rc<Segment>> = log.state.borrow().sealed.get(&base).cloned();
    drop(seg);
    file::remove_if_exists(&segment::log_path(&log.dir, base)).await?;
    file::remove_if_exists(&segment::index_path(&log.dir, base)).await?;
    file::remove_if_exists(&segment::timeindex_path(&log.dir, base)).await
}
