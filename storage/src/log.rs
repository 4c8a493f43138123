//! `Log`: one partition's segmented log, owned by one core.
//!
//! Runs inside the glommio executor of the core that owns the partition; `Log` is `!Send` and
//! is shared between that core's tasks by `Rc`. All disk I/O goes through the core's io_uring
//! ring with O_DIRECT.
//!
//! ## Written vs durable
//! - [`Log::append`] validates a batch, assigns its offsets, stamps `baseOffset` and the term, and
//!   copies it into the write buffers. The offsets are *assigned*; the data is readable at once
//!   (from memory), but not durable.
//! - Writes complete in the background; `written_end_offset` advances over them in order.
//! - [`Log::flush`] makes everything appended before the call durable and advances
//!   `flushed_end_offset`: it writes out the partial buffer through the segment's write-through
//!   descriptor, waits for every write, and fdatasyncs only if plain writes (full buffers
//!   written during appends) are not yet durable (see "Write-through flushes" in
//!   [`crate::segment`]). Concurrent callers share one flush round (group commit): while one
//!   round runs, appends keep filling buffers, and the next round covers all of them.
//!
//! Acknowledge a producer only once `flushed_end_offset` passes its batch.
//!
//! ## Concurrency on the core
//! Borrows of the state are never held across an `.await`. Two semaphores order the async parts:
//! `io_lock` serializes submitting and reaping writes (so writes are submitted in file order
//! and reaped in order), and `sync_lock` serializes flush rounds and structural changes (roll,
//! truncation, retention, compaction swaps). While a structural change runs, `frozen` makes
//! appends wait.
//!
//! ## Failure
//! A failed write or sync marks the log failed: the unwritten tail is dropped, the log end moves
//! back to the written end, and every later append or flush returns [`StorageError::Failed`]
//! until the log is reopened (which runs recovery). A flush never reports data durable that
//! might not be.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaFile, OpenOptions};

use crate::appender::Appender;
use crate::batch::{self, BatchError, BatchHeader};
use crate::cache::{BatchCache, CacheLogId};
use crate::config::{LogConfig, StorageLimits};
use crate::error::{Result, StorageError};
use crate::file;
use crate::index::SegmentIndex;
use crate::segment::{self, align_down, ReadRange};
use crate::types::{Clock, Offset, Term, TimestampMs};

/// Counts of this log's flush rounds since it was opened (see [`Log::flush_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Rounds made durable by their write-through write alone, without an fdatasync.
    pub write_through_rounds: u64,
    /// Rounds that ended with an fdatasync (plain writes were not yet durable).
    pub fdatasyncs: u64,
}

impl FlushStats {
    /// Rounds that wrote and waited (a flush that found everything durable is not a round).
    pub fn rounds(&self) -> u64 {
        self.write_through_rounds + self.fdatasyncs
    }
}

/// A freshly created segment file and its write-through (`O_DSYNC`) descriptor.
pub(crate) type NewSegmentFile = (Rc<DmaFile>, Rc<DmaFile>);

/// The segment pool of a log (see [`Log::pool_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Retired segment files waiting to be reused.
    pub pooled: usize,
    /// Rolls that reused a pooled file instead of creating one, since the log was opened.
    pub reused: u64,
}

/// What `append` assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// Offset of the last record.
    pub last_offset: Offset,
}

/// A sealed segment: immutable until deleted or replaced by compaction.
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    pub(crate) file: Rc<DmaFile>,
    pub(crate) index: SegmentIndex,
}

pub(crate) struct Active {
    pub(crate) index: SegmentIndex,
    pub(crate) appender: Appender,
    pub(crate) opened_ms: TimestampMs,
}

pub(crate) struct State {
    pub(crate) sealed: BTreeMap<Offset, Rc<Segment>>,
    pub(crate) active: Active,
    pub(crate) start_offset: Offset,
    pub(crate) next_offset: Offset,
    pub(crate) written_end: Offset,
    pub(crate) flushed_end: Offset,
    /// Appended batches whose writes have not completed: reads of them are served from here.
    pub(crate) unwritten: VecDeque<(Offset, Offset, Bytes)>,
    /// (term, first offset) for each term in the log, in order.
    pub(crate) terms: Vec<(Term, Offset)>,
    /// The term of the entry just before `start_offset` (what a Raft snapshot at the log start
    /// needs), when known: recorded by prefix truncation.
    pub(crate) prev_term: Option<Term>,
    /// Terms recorded in the `terms` checkpoint before their first batch was appended.
    pub(crate) known_terms: Vec<Term>,
    pub(crate) frozen: bool,
    pub(crate) failed: bool,
}

/// One partition's log. See the module documentation for the contract.
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: RefCell<LogConfig>,
    pub(crate) limits: StorageLimits,
    pub(crate) clock: Rc<dyn Clock>,
    pub(crate) cache: Rc<BatchCache>,
    pub(crate) cache_id: CacheLogId,
    pub(crate) state: RefCell<State>,
    pub(crate) io_lock: Rc<crate::sync::LocalSemaphore>,
    pub(crate) sync_lock: Rc<crate::sync::LocalSemaphore>,
    /// Optional core-wide bound on flush rounds in flight, shared by the logs of one core (see
    /// [`Log::share_sync_slots`]).
    pub(crate) sync_slots: RefCell<Option<Rc<crate::sync::LocalSemaphore>>>,
    pub(crate) flush_stats: std::cell::Cell<FlushStats>,
    /// Retired segment files kept for reuse by the next roll (see `recycle.rs`).
    pub(crate) pool: RefCell<crate::recycle::SegmentPool>,
}

/// A batch on its way into [`Log::append_inner`].
enum Incoming {
    /// To be stamped in place with the offset the log assigns.
    Stamp(BytesMut),
    /// Already stamped (checked against the offset the log assigns).
    Stamped(Bytes),
}

impl Incoming {
    fn len(&self) -> usize {
        match self {
            Incoming::Stamp(b) => b.len(),
            Incoming::Stamped(b) => b.len(),
        }
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, running recovery: sealed segments load their
    /// indexes (rebuilt if missing or damaged), the active segment is scanned and any torn or
    /// invalid tail is cut off.
    pub async fn open(
        dir: &Path,
        config: LogConfig,
        limits: StorageLimits,
        cache: Rc<BatchCache>,
        clock: Rc<dyn Clock>,
    ) -> Result<Log> {
        crate::recovery::open(dir, config, limits, cache, clock).await
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current topic config.
    pub fn config(&self) -> LogConfig {
        self.config.borrow().clone()
    }

    /// Replaces the topic config (AlterConfigs). Takes effect for the next append and the next
    /// housekeeping pass; existing segments are not rewritten.
    pub fn set_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = config;
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> Offset {
        self.state.borrow().start_offset
    }

    /// The next offset to be assigned (Kafka's log end offset).
    pub fn end_offset(&self) -> Offset {
        self.state.borrow().next_offset
    }

    /// Every offset below this is written to the file (not necessarily durable).
    pub fn written_end_offset(&self) -> Offset {
        self.refresh_written()
    }

    /// Takes in the writes that completed since the last look: advances `written_end` and
    /// drops their batches from the unwritten queue. Returns the written end.
    pub(crate) fn refresh_written(&self) -> Offset {
        let mut st = self.state.borrow_mut();
        if let Some(last) = st.active.appender.written_last() {
            if last.plus(1) > st.written_end && !st.failed {
                st.written_end = last.plus(1);
            }
        }
        let w = st.written_end;
        while st.unwritten.front().is_some_and(|b| b.1 < w) {
            st.unwritten.pop_front();
        }
        w
    }

    /// Every offset below this is durable.
    pub fn flushed_end_offset(&self) -> Offset {
        self.state.borrow().flushed_end
    }

    /// True after an I/O error; reopen to recover.
    pub fn is_failed(&self) -> bool {
        self.state.borrow().failed
    }

    /// Number of segments, active included.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().sealed.len() + 1
    }

    /// Bytes of batches in the log.
    pub fn size_bytes(&self) -> u64 {
        let st = self.state.borrow();
        st.sealed.values().map(|s| s.index.size_bytes).sum::<u64>() + st.active.index.size_bytes
    }

    /// The term of the batch holding `offset`, if the offset is in the log.
    pub fn term_at(&self, offset: Offset) -> Option<Term> {
        let st = self.state.borrow();
        if offset < st.start_offset || offset >= st.next_offset {
            return None;
        }
        let i = st.terms.partition_point(|(_, start)| *start <= offset);
        (i > 0).then(|| st.terms[i - 1].0)
    }

    /// The last offset and its term, or `None` for an empty log.
    pub fn last_offset_and_term(&self) -> Option<(Offset, Term)> {
        let st = self.state.borrow();
        if st.next_offset <= st.start_offset {
            return None;
        }
        let last = st.next_offset.plus(-1);
        st.terms.last().map(|(t, _)| (last, *t))
    }

    /// The term of the batch just before the start offset (gone from the log), when a prefix
    /// truncation recorded it; `None` for a log that starts at 0 or whose start predates it.
    pub fn term_before_start(&self) -> Option<Term> {
        self.state.borrow().prev_term
    }

    /// The terms of the log: (term, first offset), in order (Kafka's leader epoch cache).
    pub fn terms(&self) -> Vec<(Term, Offset)> {
        self.state.borrow().terms.clone()
    }

    /// Validates a batch as a producer sent it, assigns its offsets, stamps them and `term` into
    /// the header, and queues it for writing. Waits when the in-flight write bound is reached.
    /// The batch is readable at once and durable after the next [`Log::flush`].
    pub async fn append(&self, batch: BytesMut, term: Term) -> Result<AppendInfo> {
        self.check_size(batch.len())?;
        let batch = batch::CheckedBatch::check(batch)?;
        self.append_inner(Incoming::Stamp(batch.into_inner()), term)
            .await
    }

    fn check_size(&self, size_bytes: usize) -> Result<()> {
        let size_bytes_max = self.config.borrow().max_message_bytes;
        if size_bytes > size_bytes_max {
            return Err(StorageError::BatchTooLarge {
                size_bytes,
                size_bytes_max,
            });
        }
        Ok(())
    }

    /// [`Log::append`] for a batch whose CRC and header the caller already checked (through
    /// [`batch::CheckedBatch::check`]), so they are not checked twice.
    pub async fn append_checked(
        &self,
        batch: batch::CheckedBatch,
        term: Term,
    ) -> Result<AppendInfo> {
        self.check_size(batch.size_bytes())?;
        self.append_inner(Incoming::Stamp(batch.into_inner()), term)
            .await
    }

    /// Appends a batch that already carries its stamp: its `baseOffset` must be the log's next
    /// offset and its `partitionLeaderEpoch` `term` (a Raft entry, stamped when it was
    /// proposed and shared with the Raft layer, so it is not copied here). Checked like
    /// [`Log::append`], CRC included.
    pub async fn append_stamped(&self, batch: Bytes, term: Term) -> Result<AppendInfo> {
        self.check_size(batch.len())?;
        batch::check_whole(&batch)?;
        if BatchHeader::read(&batch).term != term {
            return Err(BatchError::BadField("stamped epoch is not the append's term").into());
        }
        self.append_inner(Incoming::Stamped(batch), term).await
    }

    async fn append_inner(&self, batch: Incoming, term: Term) -> Result<AppendInfo> {
        let len = batch.len();
        loop {
            let roll = {
                let st = self.state.borrow();
                if st.failed {
                    return Err(StorageError::Failed);
                }
                if st.terms.last().is_some_and(|(t, _)| term < *t) {
                    return Err(BatchError::BadField("term older than the log's last term").into());
                }
                st.frozen || self.needs_roll(&st, len)
            };
            if !roll {
                if self.state.borrow().known_terms.contains(&term) {
                    break;
                }
                self.record_term(term).await?;
                continue;
            }
            self.roll_if_needed(len, false).await?;
        }
        let info = {
            let mut st = self.state.borrow_mut();
            let base = st.next_offset;
            let bytes = match batch {
                Incoming::Stamp(mut b) => {
                    batch::stamp(&mut b, base, term);
                    b.freeze()
                }
                Incoming::Stamped(b) => {
                    if BatchHeader::read(&b).base_offset != base {
                        return Err(BatchError::BadField(
                            "stamped base offset is not the next offset",
                        )
                        .into());
                    }
                    b
                }
            };
            let h = BatchHeader::read(&bytes);
            let last = h.last_offset();
            let pos = st.active.appender.end_pos();
            let interval = self.config.borrow().index_interval_bytes;
            st.active.index.add(&h, pos, interval);
            st.active.appender.copy_in(&bytes, last);
            st.active.appender.extend_preallocation(
                self.limits.preallocate_step_bytes,
                self.config.borrow().segment_bytes,
            );
            if st.terms.last().map(|t| t.0) != Some(term) {
                st.terms.push((term, base));
            }
            st.next_offset = last.plus(1);
            st.unwritten.push_back((base, last, bytes.clone()));
            self.cache.insert(self.cache_id, base, last, bytes);
            AppendInfo {
                base_offset: base,
                last_offset: last,
            }
        };
        self.submit_ready().await?;
        Ok(info)
    }

    /// Adds `term` to the durable `terms` checkpoint before its first batch is appended, so
    /// that recovery can reject a batch whose (CRC-uncovered) term field was damaged into a
    /// term the log never had. Runs once per leader change.
    async fn record_term(&self, term: Term) -> Result<()> {
        let _sync = self.sync_lock.acquire(1).await;
        let mut terms = self.state.borrow().known_terms.clone();
        if terms.contains(&term) {
            return Ok(());
        }
        terms.push(term);
        terms.sort();
        let payload: Vec<u8> = terms.iter().flat_map(|t| t.0.to_be_bytes()).collect();
        let path = self.dir.join(crate::recovery::TERMS_FILE);
        file::write_checked(&path, &payload).await?;
        file::sync_dir(&self.dir).await?;
        self.state.borrow_mut().known_terms = terms;
        Ok(())
    }

    /// Makes every batch appended before this call durable, sharing one flush round with
    /// concurrent callers. Returns the flushed end offset.
    pub async fn flush(&self) -> Result<Offset> {
        let target = {
            let st = self.state.borrow();
            if st.failed {
                return Err(StorageError::Failed);
            }
            if st.flushed_end >= st.next_offset {
                return Ok(st.flushed_end);
            }
            st.next_offset
        };
        let _sync = self.sync_lock.acquire(1).await;
        {
            let st = self.state.borrow();
            if st.failed {
                return Err(StorageError::Failed);
            }
            if st.flushed_end >= target {
                return Ok(st.flushed_end);
            }
        }
        // Wait for a core-wide sync slot, if shared: appends that arrive meanwhile join this
        // flush (sync_active writes out everything appended up to when it starts).
        let slots = self.sync_slots.borrow().clone();
        let _slot = match &slots {
            Some(s) => Some(s.acquire(1).await),
            None => None,
        };
        self.sync_active().await
    }

    /// Counts of flush rounds since the log was opened: how many needed an fdatasync and how
    /// many were durable through their write-through write alone.
    pub fn flush_stats(&self) -> FlushStats {
        self.flush_stats.get()
    }

    /// Shares a core-wide bound on concurrent flush rounds with the other logs of this core.
    /// Each round's write-through write (or fdatasync) runs on a kernel io-wq worker of the
    /// calling core; with many partitions flushing at once, a bound trades a short wait for
    /// fewer, larger rounds and fewer worker context switches. Without it (the default), every
    /// log flushes on demand.
    pub fn share_sync_slots(&self, slots: Rc<crate::sync::LocalSemaphore>) {
        *self.sync_slots.borrow_mut() = Some(slots);
    }

    /// Writes out everything buffered (write-through) and makes the active segment durable
    /// up to what was written: fdatasync only when plain writes are not yet durable. Caller
    /// holds `sync_lock`. Appends go on while this waits for the writes and the sync.
    async fn sync_active(&self) -> Result<Offset> {
        {
            let _io = self.io_lock.acquire(1).await;
            // Write through only when that makes the round durable on its own: one write and
            // no plain write pending. Otherwise the round ends with an fdatasync anyway, and
            // each write-through write would add a device flush of its own.
            let through = {
                let mut st = self.state.borrow_mut();
                let a = &mut st.active.appender;
                a.seal_partial();
                a.ready_len() == 1 && !a.needs_sync()
            };
            self.submit_locked(through).await?;
        }
        self.wait_all_written().await?;
        // Read together with the end offset, with no await between: these bytes are what the
        // round makes durable.
        let end = self.refresh_written();
        let (file, path, written_pos, needs_sync) = {
            let st = self.state.borrow();
            let a = &st.active.appender;
            (
                a.file().clone(),
                a.path().clone(),
                a.written_pos(),
                a.needs_sync(),
            )
        };
        if needs_sync {
            if let Err(e) = file.fdatasync().await {
                return Err(self.fail(StorageError::glommio("syncing segment", path, e)));
            }
        }
        let mut stats = self.flush_stats.get();
        if needs_sync {
            stats.fdatasyncs += 1;
        } else {
            stats.write_through_rounds += 1;
        }
        self.flush_stats.set(stats);
        let mut st = self.state.borrow_mut();
        st.active.appender.mark_durable(written_pos);
        if end > st.flushed_end {
            st.flushed_end = end;
        }
        Ok(st.flushed_end)
    }

    /// Submits ready writes in order, respecting the in-flight bound and the tail-page rule.
    async fn submit_ready(&self) -> Result<()> {
        if self.state.borrow().active.appender.peek_ready().is_none() {
            return Ok(());
        }
        let _io = self.io_lock.acquire(1).await;
        self.submit_locked(false).await
    }

    /// [`Log::submit_ready`] for a caller that holds `io_lock` (which keeps submissions in
    /// file order). Waits, still holding it, when the in-flight bound is reached or a buffer
    /// rewrites the page of a write still in flight. `write_through` sends the writes through
    /// the segment's `O_DSYNC` descriptor (a flush's writes).
    pub(crate) async fn submit_locked(&self, write_through: bool) -> Result<()> {
        let max = self.limits.write_buffers_in_flight_max.max(1) as u64;
        loop {
            let wait = {
                let mut st = self.state.borrow_mut();
                if st.failed {
                    return Err(StorageError::Failed);
                }
                let a = &mut st.active.appender;
                let Some(w) = a.peek_ready() else {
                    return Ok(());
                };
                if w.rewrites_previous_page() && a.in_flight() > 0 {
                    Some(a.wait_completed(a.submitted()).await_boxed())
                } else if a.in_flight() >= max {
                    Some(a.wait_in_flight_below(max).await_boxed())
                } else {
                    a.submit_next(write_through);
                    None
                }
            };
            if let Some(wait) = wait {
                if let Err(e) = wait.await {
                    return Err(self.fail_write(e));
                }
            }
        }
    }

    /// Waits until every write submitted so far completed (no lock needed).
    pub(crate) async fn wait_all_written(&self) -> Result<()> {
        let wait = {
            let st = self.state.borrow();
            let a = &st.active.appender;
            a.wait_completed(a.submitted()).await_boxed()
        };
        wait.await.map_err(|e| self.fail_write(e))
    }

    fn fail_write(&self, e: Rc<std::io::Error>) -> StorageError {
        let path = self.state.borrow().active.appender.path().clone();
        self.fail(StorageError::Io {
            op: "writing segment",
            path,
            source: e,
        })
    }

    /// Marks the log failed after an I/O error and drops what was never written.
    pub(crate) fn fail(&self, e: StorageError) -> StorageError {
        if self.state.borrow().failed {
            return e;
        }
        self.refresh_written();
        tracing::error!(dir = %self.dir.display(), error = %e, "log failed; reopen to recover");
        let mut st = self.state.borrow_mut();
        st.failed = true;
        st.unwritten.clear();
        let written = st.written_end;
        st.next_offset = written;
        self.cache.remove_from(self.cache_id, written);
        e
    }

    fn needs_roll(&self, st: &State, incoming_bytes: usize) -> bool {
        let cfg = self.config.borrow();
        let idx = &st.active.index;
        if idx.size_bytes == 0 {
            return false;
        }
        let full = idx.size_bytes + incoming_bytes as u64 > cfg.segment_bytes;
        let old = self.clock.now_ms().0 - st.active.opened_ms.0 >= cfg.segment_ms;
        full || old
    }

    /// Rolls to a new segment if the active one is full or old (or `force`, if non-empty).
    pub(crate) async fn roll_if_needed(&self, incoming_bytes: usize, force: bool) -> Result<()> {
        let _sync = self.sync_lock.acquire(1).await;
        {
            let st = self.state.borrow();
            if st.failed {
                return Err(StorageError::Failed);
            }
            let wanted = if force {
                st.active.index.size_bytes > 0
            } else {
                self.needs_roll(&st, incoming_bytes)
            };
            if !wanted {
                return Ok(());
            }
        }
        self.state.borrow_mut().frozen = true;
        let r = self.roll_locked().await;
        self.state.borrow_mut().frozen = false;
        r
    }

    /// Forces a roll of a non-empty active segment.
    pub async fn roll(&self) -> Result<()> {
        self.roll_if_needed(0, true).await
    }

    async fn roll_locked(&self) -> Result<()> {
        let new_base = self.state.borrow().next_offset;
        let new_path = segment::log_path(&self.dir, new_base);
        // The new file first, under a temporary name: if the disk is full nothing has changed
        // yet, and if the process dies before the old segment is sealed, recovery deletes the
        // temporary file and the old segment is still the active one (no gap at the end).
        let tmp_path = segment::creating_path(&self.dir, new_base);
        let (new_file, new_through, prealloc) = self.next_segment_file(&tmp_path).await?;
        let old_end = self.sync_active().await;
        if let Err(e) = old_end {
            let _ = new_file.close_rc().await;
            let _ = file::remove_if_exists(&tmp_path).await;
            return Err(e);
        }
        let (old_file, old_path, old_index) = {
            let st = self.state.borrow();
            let a = &st.active.appender;
            (a.file().clone(), a.path().clone(), st.active.index.clone())
        };
        assert!(self.state.borrow().active.appender.is_idle());
        let sealed = async {
            old_file
                .truncate(old_index.size_bytes)
                .await
                .map_err(|e| StorageError::glommio("truncating sealed segment", &old_path, e))?;
            write_index_files(&self.dir, &old_index).await?;
            new_file
                .rename(&new_path)
                .await
                .map_err(|e| StorageError::glommio("naming new segment", &new_path, e))?;
            file::sync_dir(&self.dir).await
        }
        .await;
        if let Err(e) = sealed {
            return Err(self.fail(e));
        }
        let now = self.clock.now_ms();
        let mut st = self.state.borrow_mut();
        let appender = Appender::new(
            new_file,
            new_through,
            new_path,
            self.limits.write_buffer_bytes,
            0,
            &[],
            prealloc,
        );
        let old = std::mem::replace(
            &mut st.active,
            Active {
                index: SegmentIndex::new(new_base),
                appender,
                opened_ms: now,
            },
        );
        let base = old.index.base_offset;
        st.sealed.insert(
            base,
            Rc::new(Segment {
                path: old_path,
                file: old_file,
                index: old.index,
            }),
        );
        tracing::info!(dir = %self.dir.display(), sealed = %base, new = %new_base, "rolled segment");
        Ok(())
    }

    /// The file of the next segment, at `path`: a pooled one if a retired segment is waiting
    /// (see `recycle.rs`), else a fresh one. Returns it with its write-through descriptor and
    /// the size reserved so far.
    async fn next_segment_file(&self, path: &Path) -> Result<(Rc<DmaFile>, Rc<DmaFile>, u64)> {
        let want = self.initial_preallocation(0);
        let pooled = self.pool.borrow_mut().pop_unused();
        let reused = match pooled {
            Some(p) => crate::recycle::reuse(p, path).await,
            None => None,
        };
        if let Some((f, size)) = reused {
            match ready_segment_file(f, path, size, want).await {
                Ok((f, through)) => {
                    self.pool.borrow_mut().reused += 1;
                    return Ok((f, through, size.max(want)));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reused segment unusable; creating a fresh one")
                }
            }
        }
        let (f, through) = self.create_segment_file_at(path).await?;
        Ok((f, through, want))
    }

    /// The segment pool: retired files waiting for a roll, and how many rolls reused one.
    pub fn pool_stats(&self) -> PoolStats {
        let p = self.pool.borrow();
        PoolStats {
            pooled: p.len(),
            reused: p.reused,
        }
    }

    /// How much of a segment whose data ends at `end_pos` to preallocate up front.
    pub(crate) fn initial_preallocation(&self, end_pos: u64) -> u64 {
        let segment_bytes = self.config.borrow().segment_bytes;
        (end_pos + self.limits.preallocate_step_bytes).min(segment_bytes.max(end_pos))
    }

    /// Creates and preallocates a segment file at its final name; returns it with its
    /// write-through descriptor.
    pub(crate) async fn create_segment_file(&self, base: Offset) -> Result<NewSegmentFile> {
        self.create_segment_file_at(&segment::log_path(&self.dir, base))
            .await
    }

    /// Creates and preallocates a segment file at `path`; returns it with its write-through
    /// descriptor.
    async fn create_segment_file_at(&self, path: &Path) -> Result<NewSegmentFile> {
        let path = path.to_path_buf();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await
            .map_err(|e| StorageError::glommio("creating segment", &path, e))?;
        ready_segment_file(f, &path, 0, self.initial_preallocation(0)).await
    }

    /// Reads whole batches starting with the one that holds `from`, stopping before offset
    /// `end` (pass the high watermark, or `end_offset()`), and once `max_bytes` is reached. At
    /// least one batch is returned when any is available, even if larger than `max_bytes`
    /// (Kafka fetch semantics). Reading at the end returns no batch.
    pub async fn read(&self, from: Offset, max_bytes: usize, end: Offset) -> Result<Vec<Bytes>> {
        let mut from = from;
        let written_end = self.refresh_written();
        let end = {
            let st = self.state.borrow();
            if from < st.start_offset || from > st.next_offset {
                return Err(StorageError::OffsetOutOfRange {
                    requested: from,
                    start: st.start_offset,
                    end: st.next_offset,
                });
            }
            end.min(st.next_offset)
        };
        loop {
            if from >= end {
                return Ok(Vec::new());
            }
            if let Some(hit) = self.cache.read(self.cache_id, from, end, max_bytes) {
                return Ok(hit);
            }
            if from >= written_end {
                return Ok(self.read_unwritten(from, end, max_bytes));
            }
            let (file, path, range, seg_end) = self.plan_disk_read(from, end, max_bytes);
            let got =
                segment::read_batches(&file, &path, range, self.limits.read_chunk_bytes).await?;
            if !got.is_empty() || seg_end >= end {
                return Ok(got);
            }
            // A compacted segment may end in a gap: go on with the next segment.
            from = seg_end;
        }
    }

    /// What [`Log::read`] would return, if it can be served from memory (the batch cache or
    /// the not yet written tail) without waiting; `None` when the disk would be needed. Raft's
    /// synchronous `Storage::entries` uses it and falls back to an asynchronous read.
    pub fn read_in_memory(
        &self,
        from: Offset,
        max_bytes: usize,
        end: Offset,
    ) -> Option<Vec<Bytes>> {
        let written_end = self.refresh_written();
        let end = {
            let st = self.state.borrow();
            if from < st.start_offset || from > st.next_offset {
                return None;
            }
            end.min(st.next_offset)
        };
        if from >= end {
            return Some(Vec::new());
        }
        if let Some(hit) = self.cache.read(self.cache_id, from, end, max_bytes) {
            return Some(hit);
        }
        (from >= written_end).then(|| self.read_unwritten(from, end, max_bytes))
    }

    fn read_unwritten(&self, from: Offset, end: Offset, max_bytes: usize) -> Vec<Bytes> {
        let st = self.state.borrow();
        let mut out = Vec::new();
        let mut size = 0;
        for (base, last, bytes) in st.unwritten.iter() {
            if *last < from {
                continue;
            }
            if *base >= end || (!out.is_empty() && size + bytes.len() > max_bytes) {
                break;
            }
            size += bytes.len();
            out.push(bytes.clone());
            if size >= max_bytes {
                break;
            }
        }
        out
    }

    /// Picks the segment and byte range for a disk read; returns the segment's end offset too.
    fn plan_disk_read(
        &self,
        from: Offset,
        end: Offset,
        max_bytes: usize,
    ) -> (Rc<DmaFile>, PathBuf, ReadRange, Offset) {
        let st = self.state.borrow();
        let active_base = st.active.index.base_offset;
        let sealed = st.sealed.range(..=from).next_back().map(|(_, s)| s.clone());
        match sealed {
            Some(seg) if from < active_base => {
                let next_base = st
                    .sealed
                    .range(seg.index.base_offset.plus(1)..)
                    .next()
                    .map_or(active_base, |(b, _)| *b);
                let (first_base_min, start_pos) = seg.index.entry_for(from);
                let range = ReadRange {
                    from,
                    end,
                    start_pos,
                    first_base_min,
                    last_offset_max: seg.index.last_offset.unwrap_or(Offset(i64::MIN)),
                    limit_pos: seg.index.size_bytes,
                    max_bytes,
                    partial_tail: false,
                };
                (seg.file.clone(), seg.path.clone(), range, next_base)
            }
            _ => {
                let a = &st.active.appender;
                let (first_base_min, start_pos) = st.active.index.entry_for(from);
                let range = ReadRange {
                    from,
                    end,
                    start_pos,
                    first_base_min,
                    last_offset_max: st.next_offset.plus(-1),
                    limit_pos: a.written_pos(),
                    max_bytes,
                    partial_tail: true,
                };
                (a.file().clone(), a.path().clone(), range, end)
            }
        }
    }

    /// The first offset whose record timestamp is at or after `ts` (ListOffsets by time), with
    /// that timestamp. For a compressed batch the batch's base offset is returned.
    pub async fn offset_for_timestamp(
        &self,
        ts: TimestampMs,
    ) -> Result<Option<(Offset, TimestampMs)>> {
        let (start, end) = {
            let st = self.state.borrow();
            let seg_start = st
                .sealed
                .values()
                .find(|s| s.index.max_timestamp >= ts)
                .map(|s| s.index.offset_for_time(ts));
            let start = match seg_start {
                Some(o) => o,
                None if st.active.index.max_timestamp >= ts => st.active.index.offset_for_time(ts),
                None => return Ok(None),
            };
            (start.max(st.start_offset), st.next_offset)
        };
        let mut from = start;
        while from < end {
            let batches = self.read(from, 1 << 20, end).await?;
            let Some(last) = batches.last() else { break };
            from = BatchHeader::read(last).last_offset().plus(1);
            for b in batches {
                let h = BatchHeader::read(&b);
                if h.max_timestamp < ts {
                    continue;
                }
                if h.compression() != 0 || h.is_control() {
                    return Ok(Some((h.base_offset, h.max_timestamp)));
                }
                let batch = batch::Batch::parse(b)?;
                for r in batch::records(&batch)? {
                    let t = TimestampMs(h.base_timestamp.0 + r.timestamp_delta);
                    if t >= ts {
                        return Ok(Some((h.base_offset.plus(r.offset_delta as i64), t)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Flushes and closes the log's files (clean shutdown).
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        self.cache.unregister(self.cache_id);
        Ok(())
    }
}

/// Makes a new active segment's file ready: preallocated to `want` bytes when it holds fewer
/// (`size`), with its write-through descriptor opened. On an error the file is closed and
/// deleted.
async fn ready_segment_file(
    f: DmaFile,
    path: &Path,
    size: u64,
    want: u64,
) -> Result<NewSegmentFile> {
    let ready = async {
        if size < want {
            f.pre_allocate(want, false)
                .await
                .map_err(|e| StorageError::glommio("preallocating segment", path, e))?;
        }
        segment::open_write_through(path).await
    }
    .await;
    match ready {
        Ok(through) => Ok((Rc::new(f), through)),
        Err(e) => {
            let _ = f.close().await;
            let _ = file::remove_if_exists(path).await;
            Err(e)
        }
    }
}

/// Writes a sealed segment's `.index` and `.timeindex`.
pub(crate) async fn write_index_files(dir: &Path, index: &SegmentIndex) -> Result<()> {
    let base = index.base_offset;
    file::write_checked(&segment::index_path(dir, base), &index.encode_offsets()).await?;
    file::write_checked(&segment::timeindex_path(dir, base), &index.encode_times()).await
}

/// Reads the partial page at the end of a segment's data, for a new appender.
pub(crate) async fn read_tail_page(file: &DmaFile, path: &Path, end_pos: u64) -> Result<Vec<u8>> {
    let page = align_down(end_pos);
    let len = (end_pos - page) as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let r = file
        .read_at_aligned(page, segment::PAGE_BYTES as usize)
        .await
        .map_err(|e| StorageError::glommio("reading tail page", path, e))?;
    if r.len() < len {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: page,
            reason: "tail page shorter than the data".into(),
        });
    }
    Ok(r[..len].to_vec())
}
