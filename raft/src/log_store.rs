//! The partition log as the Raft log: raft-rs's `Storage` and the replica's [`Durable`] over a
//! `ringlog_storage::Log`. There is no second write-ahead log: what Raft persists is the
//! partition's segments, and what consumers fetch is what Raft replicated.
//!
//! Runs on the core that owns the group (the log's core); `LogStore` is `!Send`. The replica
//! (through raft-rs) calls the synchronous `Storage` methods and [`Durable::write`]; the
//! owner runs [`LogStore::work`] in a task of its own, which does the asynchronous part
//! (appends, truncation, fdatasync, the state file, cold reads) and reports progress.
//!
//! ## Raft index and Kafka offset
//! Raft index `i` holds Kafka offset `i - 1`, always ([`offset_of`], [`index_of`]). A record
//! batch of `n` records is one *run* of `n` Raft entries: the first carries the batch bytes
//! (with its `baseOffset` and `partitionLeaderEpoch` already stamped by the leader), the other
//! `n - 1` are empty *placeholders* with the same term, implied by the batch and stored
//! nowhere. Raft's own entries (the empty entry of a new leader) become a control batch of one
//! record (key [`NOOP_CONTROL_KEY`]), so they take one offset and consumers skip them as they
//! skip transaction markers. The batch's leader epoch is the Raft term.
//!
//! Why this mapping: there is no index-to-offset table to persist, rebuild or keep in memory;
//! a fetch offset *is* a Raft index; the log's terms are Raft's terms, so OffsetForLeaderEpoch
//! and Raft agree by construction. The cost: raft-rs holds one `Entry` per record while it is
//! in flight, and an append message carries about 10 bytes per record for the placeholders.
//!
//! ## Visibility
//! [`Durable::write`] must make entries readable at once, but appending to the log is
//! asynchronous. Entries at or above `view_from` are therefore served from `view` (the runs
//! written but maybe not yet in the log), entries below it from the log. The worker moves
//! `view_from` up only over runs the log holds and no queued truncation will remove.
//!
//! ## Invariants
//! - Runs are whole in the log: a batch is appended with all its records, so the log always
//!   ends at a run boundary; truncation points are run boundaries (asserted).
//! - Writes reach the log in the order of their Ready numbers, and a number is reported
//!   durable only after the log's fdatasync (and the state file, when term or vote changed)
//!   covers it and every earlier one.
//! - The offsets the log assigns equal the offsets the leader stamped (asserted: a mismatch
//!   would mean two replicas disagree about a committed offset).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use ringlog_storage::batch::{self, BatchHeader};
use ringlog_storage::{Log, Offset, StorageError, Term};

use crate::replica::{Durable, ReplicaError};
use crate::state_file::{self, StateFileError};
use crate::types::{NodeId, RaftIndex, RaftTerm};

/// Key of the control record that stands for a Raft no-op entry: Kafka's control-record key
/// header (version 0, then a type no Kafka client acts on: 0x5246, "RF").
pub const NOOP_CONTROL_KEY: [u8; 4] = [0, 0, 0x52, 0x46];

/// Fetched cold ranges kept for raft-rs to pick up (one per lagging peer, at most).
const FETCHED_RANGES_MAX: usize = 8;

/// Bytes read for one lagging peer at a time.
const FETCH_BYTES_MAX: usize = 1 << 20;

/// The Kafka offset held by Raft index `i` (`i >= 1`).
pub fn offset_of(i: RaftIndex) -> Offset {
    Offset(i.0 as i64 - 1)
}

/// The Raft index holding Kafka offset `o`.
pub fn index_of(o: Offset) -> RaftIndex {
    RaftIndex((o.0 + 1) as u64)
}

/// Errors of the store's worker; the group must stop (fail-stop) on any of them.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("partition log: {0}")]
    Log(#[from] StorageError),
    #[error("group state: {0}")]
    State(#[from] StateFileError),
    #[error("raft log invariant: {0}")]
    Invariant(String),
}

/// What the worker did in one round.
#[derive(Debug, Default)]
pub struct Progress {
    /// The highest Ready number now durable (with every earlier one).
    pub persisted: Option<u64>,
    /// Cold reads that completed: call `RawNode::on_entries_fetched` with each.
    pub fetched: Vec<GetEntriesContext>,
}

#[derive(Clone)]
enum RunKind {
    /// A record batch, stamped.
    Batch(Bytes),
    /// A Raft no-op (stored as a control batch).
    Noop,
}

#[derive(Clone)]
struct Run {
    first: u64,
    last: u64,
    term: u64,
    kind: RunKind,
}

struct Write {
    number: u64,
    /// A snapshot to install first: (index, term). The log then starts after `index`.
    snapshot: Option<(u64, u64)>,
    truncate_from: Option<u64>,
    runs: Vec<Run>,
    hs: Option<HardState>,
}

struct Fetch {
    low: u64,
    high: u64,
    context: GetEntriesContext,
}

struct State {
    hs: HardState,
    conf: ConfState,
    /// Term and vote in the state file.
    saved_term_vote: (u64, u64),
    view_from: u64,
    view: VecDeque<Run>,
    queue: VecDeque<Write>,
    fetches: Vec<Fetch>,
    /// Cold batches read for lagging peers, by the Raft index they were read from.
    fetched: BTreeMap<u64, Vec<Bytes>>,
    waker: Option<Waker>,
    stats: StoreStats,
    /// The worker is between taking work and reporting it (I/O may be in flight).
    busy: bool,
}

/// Counters of a store (metrics and tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    /// Ranges read from disk for lagging peers.
    pub cold_reads: u64,
    /// Suffix truncations of the log (a new leader overwrote an uncommitted tail).
    pub truncations: u64,
    /// Snapshots sent to followers behind this log's start.
    pub snapshots_sent: u64,
    /// Snapshots installed (this replica was behind the leader's log start).
    pub snapshots_installed: u64,
}

struct Inner {
    log: Rc<Log>,
    state_path: PathBuf,
    st: RefCell<State>,
}

/// A partition log seen as a Raft log. Cheap to clone (shared on the core).
#[derive(Clone)]
pub struct LogStore {
    inner: Rc<Inner>,
}

impl LogStore {
    /// Opens the group's state over `log`. A group that never saved state starts with
    /// `voters` (the placement's replicas) and `learners` as its configuration, at term 0.
    pub async fn open(
        log: Rc<Log>,
        state_path: PathBuf,
        voters: &[NodeId],
        learners: &[NodeId],
    ) -> Result<LogStore, LogStoreError> {
        let (mut hs, conf) = match state_file::load(&state_path).await? {
            Some(s) => s,
            None => {
                let conf = ConfState {
                    voters: voters.iter().map(|v| v.0).collect(),
                    learners: learners.iter().map(|v| v.0).collect(),
                    ..ConfState::default()
                };
                let hs = HardState::default();
                state_file::save(&state_path, &hs, &conf).await?;
                (hs, conf)
            }
        };
        let first = index_of(log.start_offset()).0;
        let last = log.end_offset().0 as u64;
        // The file's commit may be stale (it is saved with term changes only) or, after
        // retention, below the log: either way raft-rs needs it inside the log.
        hs.commit = hs.commit.clamp(first - 1, last);
        let saved = (hs.term, hs.vote);
        Ok(LogStore {
            inner: Rc::new(Inner {
                log,
                state_path,
                st: RefCell::new(State {
                    hs,
                    conf,
                    saved_term_vote: saved,
                    view_from: last + 1,
                    view: VecDeque::new(),
                    queue: VecDeque::new(),
                    fetches: Vec::new(),
                    fetched: BTreeMap::new(),
                    waker: None,
                    stats: StoreStats::default(),
                    busy: false,
                }),
            }),
        })
    }

    /// The partition log.
    pub fn log(&self) -> &Rc<Log> {
        &self.inner.log
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        self.inner.st.borrow().stats
    }

    /// The commit index the replica should start from (Raft's `applied`).
    pub fn initial_commit(&self) -> RaftIndex {
        RaftIndex(self.inner.st.borrow().hs.commit)
    }

    /// The last index (of the log and the queued runs).
    pub fn last(&self) -> RaftIndex {
        RaftIndex(self.inner.st.borrow().last_index())
    }

    /// The largest index at or below `i` that ends a run (a batch boundary), when known from
    /// memory: a high watermark must not cut a batch in two.
    pub fn run_end_at_or_below(&self, i: RaftIndex) -> Option<RaftIndex> {
        let st = self.inner.st.borrow();
        if i.0 >= st.view_from {
            let run = st.view.iter().find(|r| r.first <= i.0 && i.0 <= r.last)?;
            return Some(RaftIndex(if run.last == i.0 { i.0 } else { run.first - 1 }));
        }
        if i.0 == 0 {
            return Some(i);
        }
        let o = offset_of(i);
        let end = self.inner.log.end_offset();
        let b = self.inner.log.read_in_memory(o, 1, end)?;
        let h = BatchHeader::read(b.first()?);
        Some(if h.last_offset() == o {
            i
        } else {
            index_of(h.base_offset.plus(-1))
        })
    }

    /// Does the next round of asynchronous work: applies every queued write to the log in
    /// order, flushes once for all of them (group commit), saves the state file when term,
    /// vote or configuration changed, and serves queued cold reads. Waits while there is
    /// nothing to do.
    pub async fn work(&self) -> Result<Progress, LogStoreError> {
        WaitWork { store: self }.await;
        self.inner.st.borrow_mut().busy = true;
        let r = self.work_now().await;
        self.inner.st.borrow_mut().busy = false;
        r
    }

    /// True while [`LogStore::work`] has I/O in flight (shutdown waits for it to end before
    /// it stops the worker, so no write is cut off halfway).
    pub fn is_busy(&self) -> bool {
        self.inner.st.borrow().busy
    }

    async fn work_now(&self) -> Result<Progress, LogStoreError> {
        let log = self.inner.log.clone();
        let n = self.inner.st.borrow().queue.len();
        let mut progress = Progress::default();
        if n > 0 {
            let mut hs_to_save = None;
            for k in 0..n {
                let (snapshot, truncate_from, runs, hs, number) = {
                    let st = self.inner.st.borrow();
                    let w = &st.queue[k];
                    (
                        w.snapshot,
                        w.truncate_from,
                        w.runs.clone(),
                        w.hs.clone(),
                        w.number,
                    )
                };
                if let Some((index, term)) = snapshot {
                    // Raft keeps nothing of this log but what follows the snapshot: the log
                    // restarts after `index` (a follower behind the leader's retention).
                    let start = offset_of(RaftIndex(index + 1));
                    if log.end_offset() > start && log.start_offset() <= start {
                        log.truncate_suffix(start).await?;
                    }
                    let t = i32::try_from(term).map_err(|_| {
                        LogStoreError::Invariant(format!("snapshot term {term} out of range"))
                    })?;
                    log.truncate_prefix_to(start, Some(Term(t))).await?;
                    hs_to_save.get_or_insert_with(|| self.inner.st.borrow().hs.clone());
                    self.inner.st.borrow_mut().saved_term_vote = (u64::MAX, u64::MAX);
                    self.inner.st.borrow_mut().stats.snapshots_installed += 1;
                }
                if let Some(f) = truncate_from {
                    if log.end_offset() > offset_of(RaftIndex(f)) {
                        let end = log.truncate_suffix(offset_of(RaftIndex(f))).await?;
                        self.inner.st.borrow_mut().stats.truncations += 1;
                        if end != offset_of(RaftIndex(f)) {
                            return Err(LogStoreError::Invariant(format!(
                                "truncating at index {f} left the log ending at offset {end}"
                            )));
                        }
                    }
                }
                for run in runs {
                    let term = Term(i32::try_from(run.term).map_err(|_| {
                        LogStoreError::Invariant(format!("term {} out of range", run.term))
                    })?);
                    // A batch was stamped with its offset and term when it was proposed and
                    // is shared with raft-rs, so it goes in without a copy.
                    let info = match &run.kind {
                        RunKind::Batch(b) => log.append_stamped(b.clone(), term).await?,
                        RunKind::Noop => {
                            let noop = batch::build::encode_control_batch(&NOOP_CONTROL_KEY, 0);
                            log.append(noop, term).await?
                        }
                    };
                    if info.base_offset != offset_of(RaftIndex(run.first))
                        || info.last_offset != offset_of(RaftIndex(run.last))
                    {
                        return Err(LogStoreError::Invariant(format!(
                            "run {}..={} landed at offsets {}..={}",
                            run.first, run.last, info.base_offset, info.last_offset
                        )));
                    }
                }
                if let Some(hs) = hs {
                    hs_to_save = Some(hs);
                }
                progress.persisted = Some(number);
            }
            log.flush().await?;
            if let Some(hs) = hs_to_save {
                let (saved, conf) = {
                    let st = self.inner.st.borrow();
                    (st.saved_term_vote, st.conf.clone())
                };
                if (hs.term, hs.vote) != saved {
                    state_file::save(&self.inner.state_path, &hs, &conf).await?;
                    self.inner.st.borrow_mut().saved_term_vote = (hs.term, hs.vote);
                }
            }
            let mut st = self.inner.st.borrow_mut();
            st.queue.drain(..n);
            // Entries the log now holds leave the view, up to the first queued truncation.
            let mut cap = log.end_offset().0 as u64 + 1;
            for w in &st.queue {
                if let Some(f) = w.truncate_from {
                    cap = cap.min(f);
                }
            }
            if cap > st.view_from {
                while st.view.front().is_some_and(|r| r.last < cap) {
                    st.view.pop_front();
                }
                assert!(
                    st.view.front().is_none_or(|r| r.first >= cap),
                    "a run straddles the log end"
                );
                st.view_from = cap;
            }
        }
        let fetches = std::mem::take(&mut self.inner.st.borrow_mut().fetches);
        for f in fetches {
            let end = offset_of(RaftIndex(f.high));
            match log
                .read(offset_of(RaftIndex(f.low)), FETCH_BYTES_MAX, end)
                .await
            {
                Ok(batches) if !batches.is_empty() => {
                    let mut st = self.inner.st.borrow_mut();
                    while st.fetched.len() >= FETCHED_RANGES_MAX {
                        st.fetched.pop_first();
                    }
                    st.fetched.insert(f.low, batches);
                    st.stats.cold_reads += 1;
                }
                // Truncated or compacted meanwhile: raft-rs asks again and gets an answer.
                Ok(_) | Err(StorageError::OffsetOutOfRange { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            progress.fetched.push(f.context);
        }
        Ok(progress)
    }

    fn entry(index: u64, term: u64, data: Option<&Bytes>) -> Entry {
        let mut e = Entry {
            index,
            term,
            ..Entry::default()
        };
        if let Some(d) = data {
            e.data = d.clone();
        }
        e
    }

    /// Entries of the batches `batches` within `[low, high)`, whole runs, about `max` bytes.
    /// Offsets no batch holds (a compacted log's gaps) become empty entries with the log's
    /// term there, so the entries stay contiguous (a follower stores each as a no-op).
    fn push_batches(
        out: &mut Vec<Entry>,
        batches: &[Bytes],
        low: u64,
        high: u64,
        max: u64,
        term_at: impl Fn(u64) -> Option<u64>,
    ) {
        let mut size = 0u64;
        let mut next = low;
        for b in batches {
            if !out.is_empty() && size >= max {
                return;
            }
            let h = BatchHeader::read(b);
            let first = index_of(h.base_offset).0;
            let last = index_of(h.last_offset()).0;
            while next < first.min(high) {
                let Some(t) = term_at(next) else { return };
                out.push(Self::entry(next, t, None));
                next += 1;
            }
            let term = h.term.0 as u64;
            for i in first.max(low)..=last.min(high.saturating_sub(1)) {
                let data = (i == first && !h.is_control()).then_some(b);
                out.push(Self::entry(i, term, data));
            }
            next = next.max(last + 1);
            size += b.len() as u64 + 16;
            if last + 1 >= high {
                return;
            }
        }
    }
}

impl State {
    fn last_index(&self) -> u64 {
        self.view.back().map_or(self.view_from - 1, |r| r.last)
    }

    fn view_run(&self, i: u64) -> Option<&Run> {
        if i < self.view_from {
            return None;
        }
        let k = self.view.partition_point(|r| r.last < i);
        self.view.get(k).filter(|r| r.first <= i)
    }
}

impl LogStore {
    fn term_of(&self, st: &State, i: u64) -> raft::Result<u64> {
        if i == 0 {
            return Ok(0);
        }
        if i >= st.view_from {
            return st
                .view_run(i)
                .map(|r| r.term)
                .ok_or(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let log = &self.inner.log;
        let first = index_of(log.start_offset()).0;
        if i < first {
            // The entry just before the first is the snapshot's: its term is recorded with
            // the log start.
            if i + 1 == first {
                if let Some(t) = log.term_before_start() {
                    return Ok(t.0 as u64);
                }
            }
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        log.term_at(offset_of(RaftIndex(i)))
            .map(|t| t.0 as u64)
            .ok_or(raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn truncate_view(st: &mut State, from: u64) {
        if from < st.view_from {
            st.view.clear();
            st.view_from = from;
        } else {
            while st.view.back().is_some_and(|r| r.first >= from) {
                st.view.pop_back();
            }
            assert!(
                st.view.back().is_none_or(|r| r.last < from),
                "raft truncation at {from} inside a run"
            );
        }
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = self.inner.st.borrow();
        Ok(RaftState::new(st.hs.clone(), st.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut st = self.inner.st.borrow_mut();
        let first = self.first_index()?;
        if low < first {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > st.last_index() + 1 || low >= high {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let mut out = Vec::new();
        let log_high = high.min(st.view_from);
        if low < log_high {
            if context.can_async() {
                let from = offset_of(RaftIndex(low));
                let end = offset_of(RaftIndex(log_high));
                let memory = self.inner.log.read_in_memory(from, max as usize, end);
                let batches = match memory {
                    Some(b) if !b.is_empty() => b,
                    _ => match st.fetched.remove(&low) {
                        Some(b) => b,
                        None => {
                            if !st.fetches.iter().any(|f| f.low == low) {
                                st.fetches.push(Fetch {
                                    low,
                                    high: log_high,
                                    context,
                                });
                                if let Some(w) = st.waker.take() {
                                    w.wake();
                                }
                            }
                            return Err(raft::Error::Store(
                                RaftStorageError::LogTemporarilyUnavailable,
                            ));
                        }
                    },
                };
                let log = &self.inner.log;
                let term_at = |i: u64| log.term_at(offset_of(RaftIndex(i))).map(|t| t.0 as u64);
                Self::push_batches(&mut out, &batches, low, log_high, max, term_at);
                if out.is_empty() {
                    return Err(raft::Error::Store(RaftStorageError::Unavailable));
                }
                if out.last().map(|e| e.index + 1) != Some(log_high) {
                    return Ok(out);
                }
            } else {
                // Raft needs only indexes and terms here (committed entries, pending
                // configuration checks); partitions apply nothing from entry data.
                for i in low..log_high {
                    let t = self.term_of(&st, i)?;
                    out.push(Self::entry(i, t, None));
                }
            }
        }
        let mut size = out.iter().map(|e| e.data.len() as u64 + 16).sum::<u64>();
        let mut i = low.max(st.view_from);
        while i < high {
            let Some(run) = st.view_run(i).cloned() else {
                return Err(raft::Error::Store(RaftStorageError::Unavailable));
            };
            if !out.is_empty() && size >= max && i == run.first {
                break;
            }
            for j in i..=run.last.min(high - 1) {
                let data = match (&run.kind, j == run.first) {
                    (RunKind::Batch(b), true) => Some(b),
                    _ => None,
                };
                size += data.map_or(0, |d| d.len() as u64) + 16;
                out.push(Self::entry(j, run.term, data));
            }
            i = run.last + 1;
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let st = self.inner.st.borrow();
        self.term_of(&st, idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(index_of(self.inner.log.start_offset()).0)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.inner.st.borrow().last_index())
    }

    /// A follower behind this log's start (retention deleted what it needs) gets a snapshot
    /// at the log start: it carries no data, because what precedes the start is gone on every
    /// replica by the same retention; the follower's log restarts there and catches up by
    /// normal appends. (Kafka followers do the same: they truncate to the leader's log start.)
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let log = &self.inner.log;
        let start = log.start_offset();
        let term = match log.term_before_start() {
            Some(t) if start.0 > 0 => t.0 as u64,
            _ => {
                return Err(raft::Error::Store(
                    RaftStorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        };
        let index = index_of(start).0 - 1;
        if index < request_index {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut st = self.inner.st.borrow_mut();
        st.stats.snapshots_sent += 1;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(st.conf.clone());
        Ok(snap)
    }
}

impl Durable for LogStore {
    fn write(
        &mut self,
        number: u64,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), ReplicaError> {
        let mut w = Write {
            number,
            snapshot: None,
            truncate_from: None,
            runs: Vec::new(),
            hs: hs.cloned(),
        };
        let mut st = self.inner.st.borrow_mut();
        if let Some(s) = snapshot {
            let m = s.get_metadata();
            w.snapshot = Some((m.index, m.term));
            st.view.clear();
            st.view_from = m.index + 1;
            st.conf = m.get_conf_state().clone();
        }
        for e in entries {
            let last = st.last_index();
            if e.index <= last {
                if self.term_of(&st, e.index).ok() == Some(e.term) {
                    // Already here: a placeholder of a stored batch, or a resent entry.
                    continue;
                }
                Self::truncate_view(&mut st, e.index);
                w.truncate_from = Some(w.truncate_from.map_or(e.index, |t| t.min(e.index)));
            } else if e.index != last + 1 {
                return Err(ReplicaError::Persist(format!(
                    "entry {} after last index {last}",
                    e.index
                )));
            }
            let run = if e.data.is_empty() {
                Run {
                    first: e.index,
                    last: e.index,
                    term: e.term,
                    kind: RunKind::Noop,
                }
            } else {
                let b: Bytes = e.data.clone();
                let header_ok = b.len() >= batch::HEADER_SIZE_BYTES
                    && batch::declared_size(&b).ok() == Some(b.len() as i64);
                if !header_ok {
                    return Err(ReplicaError::Persist(format!(
                        "entry {} is not a record batch",
                        e.index
                    )));
                }
                let h = BatchHeader::read(&b);
                if h.base_offset != offset_of(RaftIndex(e.index))
                    || h.last_offset_delta < 0
                    || h.term.0 as u64 != e.term
                {
                    return Err(ReplicaError::Persist(format!(
                        "entry {} (term {}) holds a batch stamped at offset {} epoch {}",
                        e.index, e.term, h.base_offset, h.term.0
                    )));
                }
                Run {
                    first: e.index,
                    last: index_of(h.last_offset()).0,
                    term: e.term,
                    kind: RunKind::Batch(b),
                }
            };
            st.view.push_back(run.clone());
            w.runs.push(run);
        }
        if let Some(hs) = hs {
            st.hs = hs.clone();
        }
        st.queue.push_back(w);
        if let Some(waker) = st.waker.take() {
            waker.wake();
        }
        Ok(())
    }
}

/// Resolves when the store has queued writes or cold reads.
struct WaitWork<'a> {
    store: &'a LogStore,
}

impl Future for WaitWork<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.store.inner.st.borrow_mut();
        if !st.queue.is_empty() || !st.fetches.is_empty() {
            return Poll::Ready(());
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Stamps a producer's batch for proposal at Raft index `at` in `term`: its base offset is the
/// index's offset and its leader epoch the term (neither is covered by the batch CRC).
pub fn stamp_for_proposal(batch: &mut [u8], at: RaftIndex, term: RaftTerm) -> Result<(), String> {
    let t = i32::try_from(term.0).map_err(|_| format!("term {} out of range", term.0))?;
    batch::stamp(batch, offset_of(at), Term(t));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_storage::batch::build::{encode_batch, NewRecord};

    fn batch_at(base: i64, records: usize, term: i32) -> Bytes {
        let recs: Vec<NewRecord> = (0..records)
            .map(|i| NewRecord {
                key: None,
                value: Some(vec![i as u8; 10]),
            })
            .collect();
        let mut b = encode_batch(&recs, 0);
        batch::stamp(&mut b, Offset(base), Term(term));
        b.freeze()
    }

    #[test]
    fn entries_of_batches_are_contiguous_runs_across_compaction_gaps() {
        // Offsets 0..=2 in one batch, 3..=4 compacted away, 5..=6 in another.
        let batches = vec![batch_at(0, 3, 1), batch_at(5, 2, 2)];
        let mut out = Vec::new();
        LogStore::push_batches(&mut out, &batches, 2, 8, u64::MAX, |i| {
            Some(if i <= 5 { 1 } else { 2 })
        });
        let idx: Vec<u64> = out.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![2, 3, 4, 5, 6, 7]);
        // Index 2 and 3 are placeholders of the first batch, 4 and 5 fill the gap, 6 heads
        // the second batch (its bytes), 7 is its placeholder.
        let with_data: Vec<u64> = out
            .iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| e.index)
            .collect();
        assert_eq!(with_data, vec![6]);
        assert_eq!(
            out.iter().map(|e| e.term).collect::<Vec<_>>(),
            vec![1, 1, 1, 1, 2, 2]
        );
        // A range starting inside a gap starts with the gap.
        let mut out = Vec::new();
        LogStore::push_batches(&mut out, &batches[1..], 4, 7, u64::MAX, |_| Some(1));
        assert_eq!(
            out.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        assert!(!out[2].data.is_empty());
    }

    #[test]
    fn index_and_offset_map_one_to_one() {
        for o in [0i64, 1, 41, 1 << 40] {
            assert_eq!(offset_of(index_of(Offset(o))), Offset(o));
        }
        assert_eq!(index_of(Offset(0)), RaftIndex(1));
    }
}
