//! A partition on its owner core: the log, the leader epoch, the high watermark and the fetch
//! waiters.
//!
//! Runs only on the core that owns the partition (see `shard`). Invariants:
//! - the high watermark is the durable end of the log (with `fsync` on), so consumers never
//!   read data a crash could take back; with `fsync` off it is the log end;
//! - a produce is acknowledged (acks=1/all) only once the high watermark passes its batches;
//! - every fetch waiter is woken when the high watermark moves.
//!
//! On a single node the leader epoch is 0 and the high watermark is the durable end. In a
//! cluster the partition is a Raft group (`cluster::group`): the leader proposes each batch,
//! the high watermark is the commit point, the epoch is the Raft term, and a follower refuses
//! produce and fetch with NOT_LEADER_OR_FOLLOWER.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use ringlog_storage::batch::{BatchHeader, CheckedBatch};
use ringlog_storage::sync::LocalSemaphore;
use ringlog_storage::{batch, Log, LogConfig, Offset, Term, TimestampMs};

use crate::kafka::errors::KafkaError;
use crate::notify::Notify;
use crate::producer_state::{ProducerStates, Verdict};
use crate::shard::{Shard, TopicPartition};

/// One partition, owned by this core.
pub struct Partition {
    /// Topic and index.
    pub tp: TopicPartition,
    /// The log.
    pub log: Rc<Log>,
    /// The Raft group, when the partition is replicated (cluster mode).
    pub raft: Option<Rc<crate::cluster::group::RaftGroup>>,
    /// The Raft term in which `producers` was last rebuilt from the log: a replica that
    /// becomes leader rebuilds it before its first idempotent check (what it received as a
    /// follower is in the log, not in `producers`).
    producers_term: Cell<u64>,
    /// How long a replicated write waits for its commit.
    replication_timeout: Duration,
    /// Leader epoch stamped into appended batches.
    pub leader_epoch: Cell<i32>,
    fsync: bool,
    changed: Rc<Notify>,
    /// A background flush (acks=0, or fsync off) is running for this partition.
    background_flush: Cell<bool>,
    /// Idempotent producers' sequences (see `producer_state`).
    producers: RefCell<ProducerStates>,
    /// Held from the sequence check of an idempotent batch until it is appended and recorded,
    /// so two requests carrying the same retry can not both pass the check.
    idempotent_append: Rc<LocalSemaphore>,
    /// The producer state changed since its last snapshot.
    producers_dirty: Cell<bool>,
    /// The partition's directory (for the producer-state snapshot).
    dir: PathBuf,
}

/// Name of the idempotent producers' snapshot in a partition directory.
const PRODUCER_SNAPSHOT: &str = "producer_state";

/// Name of the Raft group's state file (hard state, configuration) in a partition directory.
const RAFT_STATE: &str = "raft_state";

/// Data read for a fetch.
pub struct FetchedData {
    /// High watermark at the time of the read.
    pub high_watermark: Offset,
    /// Log start offset.
    pub log_start_offset: Offset,
    /// Whole batches, in order.
    pub batches: Vec<Bytes>,
}

/// Where a partition's files live.
pub fn partition_dir(shard: &Shard, tp: &TopicPartition) -> PathBuf {
    shard
        .config
        .data_dir
        .join(format!("{}-{}", tp.topic, tp.partition))
}

impl Partition {
    /// Opens (or creates) the partition's log on this core.
    pub async fn open(
        shard: &Shard,
        tp: TopicPartition,
        config: LogConfig,
        meta: &crate::metadata::PartitionMeta,
    ) -> Result<Rc<Partition>, KafkaError> {
        let leader_epoch = meta.leader_epoch;
        let dir = partition_dir(shard, &tp);
        let log = Log::open(
            &dir,
            config,
            shard.config.storage.clone(),
            shard.cache.clone(),
            Rc::new(ringlog_storage::SystemClock),
        )
        .await?;
        log.share_sync_slots(shard.sync_slots.clone());
        let log = Rc::new(log);
        let producers = rebuild_producer_states(&log, &dir).await?;
        let changed = Rc::new(Notify::default());
        let raft = match (&shard.transport, meta.is_replicated()) {
            (Some(transport), true) => {
                let voters: Vec<ringlog_raft::types::NodeId> = meta
                    .replicas
                    .iter()
                    .map(|n| ringlog_raft::types::NodeId(*n))
                    .collect();
                let g = crate::cluster::group::RaftGroup::open(
                    ringlog_raft::types::GroupId(meta.group),
                    format!("{}-{}", tp.topic, tp.partition),
                    log.clone(),
                    dir.join(RAFT_STATE),
                    &voters,
                    &[],
                    transport.clone(),
                    changed.clone(),
                )
                .await
                .map_err(|e| KafkaError::new(ResponseError::KafkaStorageError, e))?;
                shard.raft_groups.borrow_mut().insert(g.id, g.clone());
                Some(g)
            }
            _ => None,
        };
        tracing::info!(partition = %format!("{}-{}", tp.topic, tp.partition), shard = shard.id.0, start = %log.start_offset(), end = %log.end_offset(), "opened partition");
        Ok(Rc::new(Partition {
            tp,
            log,
            leader_epoch: Cell::new(leader_epoch),
            fsync: shard.config.fsync,
            changed,
            raft,
            producers_term: Cell::new(0),
            replication_timeout: Duration::from_millis(shard.config.limits.replication_timeout_ms),
            background_flush: Cell::new(false),
            producers: RefCell::new(producers),
            idempotent_append: LocalSemaphore::new(1),
            producers_dirty: Cell::new(false),
            dir,
        }))
    }

    /// The offset below which consumers may read.
    pub fn high_watermark(&self) -> Offset {
        if let Some(g) = &self.raft {
            return g.high_watermark();
        }
        if self.fsync {
            self.log.flushed_end_offset()
        } else {
            self.log.end_offset()
        }
    }

    /// Validates and appends the batches of a produce request; for acks != 0 waits until they
    /// are below the high watermark. Returns the base offset of the first batch. Every batch
    /// is validated before any is appended, so bad input appends nothing.
    ///
    /// `appended` is signalled once every batch has its offsets (before the wait for
    /// durability), so the connection can start its next request without reordering appends.
    pub async fn produce(
        self: &Rc<Self>,
        records: BytesMut,
        acks: i16,
        appended: futures::channel::oneshot::Sender<()>,
    ) -> Result<Offset, KafkaError> {
        if let Some(g) = &self.raft {
            return self.produce_replicated(g, records, acks, appended).await;
        }
        let batches = split_batches(records)?;
        let term = Term(self.leader_epoch.get());
        let mut base = None;
        let mut last = Offset(-1);
        let headers: Vec<BatchHeader> = batches.iter().map(|b| b.header()).collect();
        let idempotent = headers.iter().any(|h| h.producer_id >= 0);
        let _guard = match idempotent {
            true => Some(self.idempotent_append.acquire(1).await),
            false => None,
        };
        // Every batch is checked before any is appended: a rejected batch rejects the whole
        // partition's records, as in Kafka.
        let verdicts = self.producers.borrow().check_all(&headers);
        for v in &verdicts {
            if let Verdict::Reject(code, msg) = v {
                return Err(KafkaError::new(*code, msg.clone()));
            }
        }
        for ((b, h), v) in batches.into_iter().zip(&headers).zip(verdicts) {
            match v {
                Verdict::Duplicate(orig) => {
                    base.get_or_insert(orig.base_offset);
                    last = last.max(orig.last_offset);
                }
                _ => {
                    let info = self.log.append_checked(b, term).await?;
                    if h.producer_id >= 0 {
                        self.producers.borrow_mut().record(h, info.base_offset);
                        self.producers_dirty.set(true);
                    }
                    base.get_or_insert(info.base_offset);
                    last = info.last_offset;
                }
            }
        }
        drop(_guard);
        let _ = appended.send(());
        let base =
            base.ok_or_else(|| KafkaError::new(ResponseError::InvalidRecord, "no record batch"))?;
        if acks == 0 || !self.fsync {
            // One background flush at a time per partition: it writes out everything appended
            // before it starts, so later appends wait for the next one, not one each.
            if !self.background_flush.replace(true) {
                let me = self.clone();
                glommio::spawn_local(async move {
                    while me.log.end_offset() > me.log.flushed_end_offset() {
                        if me.log.flush().await.is_err() {
                            break;
                        }
                        me.changed.notify();
                    }
                    me.background_flush.set(false);
                })
                .detach();
            }
            if !self.fsync {
                self.changed.notify();
            }
            return Ok(base);
        }
        self.log.flush().await?;
        self.changed.notify();
        assert!(
            self.high_watermark() > last,
            "acknowledged data is below the high watermark"
        );
        Ok(base)
    }

    /// The replicated produce path: the leader checks, proposes each batch, and waits for
    /// the commit (acks=all) or its own flush (acks=1).
    async fn produce_replicated(
        self: &Rc<Self>,
        g: &Rc<crate::cluster::group::RaftGroup>,
        records: BytesMut,
        acks: i16,
        appended: futures::channel::oneshot::Sender<()>,
    ) -> Result<Offset, KafkaError> {
        let batches = split_batches(records)?;
        let size_max = self.log.config().max_message_bytes;
        if let Some(b) = batches.iter().find(|b| b.size_bytes() > size_max) {
            return Err(KafkaError::new(
                ResponseError::MessageTooLarge,
                format!(
                    "record batch of {} bytes is over max.message.bytes {size_max}",
                    b.size_bytes()
                ),
            ));
        }
        if !g.is_leader() {
            return Err(g.not_leader());
        }
        let headers: Vec<BatchHeader> = batches.iter().map(|b| b.header()).collect();
        let idempotent = headers.iter().any(|h| h.producer_id >= 0);
        let _guard = match idempotent {
            true => Some(self.idempotent_append.acquire(1).await),
            false => None,
        };
        let deadline = Instant::now() + self.replication_timeout;
        if idempotent {
            self.refresh_producers_for_leader(g, deadline).await?;
        }
        let term = g.term();
        let verdicts = self.producers.borrow().check_all(&headers);
        for v in &verdicts {
            if let Verdict::Reject(code, msg) = v {
                return Err(KafkaError::new(*code, msg.clone()));
            }
        }
        let (mut base, mut proposed, mut last) = (None, None::<(Offset, Offset)>, Offset(-1));
        for ((b, h), v) in batches.into_iter().zip(&headers).zip(verdicts) {
            match v {
                Verdict::Duplicate(orig) => {
                    base.get_or_insert(orig.base_offset);
                    last = last.max(orig.last_offset);
                }
                _ => {
                    let (b0, l0) = g.propose_batch(b)?;
                    if h.producer_id >= 0 {
                        self.producers.borrow_mut().record(h, b0);
                        self.producers_dirty.set(true);
                    }
                    base.get_or_insert(b0);
                    proposed = Some((proposed.map_or(b0, |p| p.0), l0));
                    last = last.max(l0);
                }
            }
        }
        drop(_guard);
        let _ = appended.send(());
        let base =
            base.ok_or_else(|| KafkaError::new(ResponseError::InvalidRecord, "no record batch"))?;
        match acks {
            0 => Ok(base),
            1 => {
                let log = self.log.clone();
                let ok = g
                    .changed
                    .wait_until(deadline, || log.flushed_end_offset() > last)
                    .await;
                if ok {
                    Ok(base)
                } else {
                    Err(KafkaError::new(
                        ResponseError::RequestTimedOut,
                        "not flushed in time",
                    ))
                }
            }
            _ => {
                // What this request proposed must commit in this term (else it may have been
                // overwritten); a retry answered with its original offsets was written in an
                // earlier term and is acknowledged once it is below the high watermark
                // (committed entries are never overwritten).
                if let Some((first, proposed_last)) = proposed {
                    g.wait_committed(term, first, proposed_last, deadline)
                        .await?;
                }
                let committed = g
                    .changed
                    .wait_until(deadline, || g.high_watermark() > last)
                    .await;
                if !committed {
                    return Err(KafkaError::new(
                        ResponseError::RequestTimedOut,
                        format!("{}: not committed in time", g.name),
                    ));
                }
                Ok(base)
            }
        }
    }

    /// A new leader rebuilds the idempotent producers' state from its log once per term,
    /// after its log holds everything it received as a follower.
    async fn refresh_producers_for_leader(
        &self,
        g: &crate::cluster::group::RaftGroup,
        deadline: Instant,
    ) -> Result<(), KafkaError> {
        let term = g.term().0;
        if self.producers_term.get() == term {
            return Ok(());
        }
        if !g.wait_log_caught_up(deadline).await {
            return Err(KafkaError::new(
                ResponseError::NotEnoughReplicas,
                "the new leader's log is still being written",
            ));
        }
        let states = rebuild_producer_states(&self.log, &self.dir).await?;
        *self.producers.borrow_mut() = states;
        self.producers_term.set(term);
        Ok(())
    }

    /// Appends one batch of broker-written records (internal topics: group state, offsets)
    /// and waits until it is durable (committed, when replicated).
    pub async fn append_internal(
        &self,
        records: &[batch::build::NewRecord],
    ) -> Result<(), KafkaError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let b = batch::build::encode_batch(records, now_ms);
        if let Some(g) = &self.raft {
            let term = g.term();
            let (first, last) = g.propose_built(b)?;
            let deadline = Instant::now() + self.replication_timeout;
            return g.wait_committed(term, first, last, deadline).await;
        }
        self.log.append(b, Term(self.leader_epoch.get())).await?;
        self.log.flush().await?;
        self.changed.notify();
        Ok(())
    }

    /// NOT_LEADER_OR_FOLLOWER unless this replica may serve reads (it leads, or the
    /// partition is not replicated).
    pub fn check_leader(&self) -> Result<(), KafkaError> {
        match &self.raft {
            Some(g) if !g.is_leader() => Err(g.not_leader()),
            _ => Ok(()),
        }
    }

    /// The leader epoch clients see: the Raft term when replicated.
    pub fn epoch(&self) -> i32 {
        match &self.raft {
            Some(g) => g.leader_epoch(),
            None => self.leader_epoch.get(),
        }
    }

    /// Reads whole batches from `offset`, up to the high watermark.
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<FetchedData, KafkaError> {
        self.check_leader()?;
        let hw = self.high_watermark();
        let batches = if offset >= hw && offset <= self.log.end_offset() {
            Vec::new()
        } else {
            self.log.read(offset, max_bytes, hw).await?
        };
        Ok(FetchedData {
            high_watermark: hw,
            log_start_offset: self.log.start_offset(),
            batches,
        })
    }

    /// Waits until the high watermark passes `offset`, or the deadline.
    pub async fn wait_for_data(&self, offset: Offset, deadline: Instant) {
        loop {
            if self.high_watermark() > offset {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let seen = self.changed.generation();
            let timer = glommio::timer::sleep(deadline - now);
            futures::pin_mut!(timer);
            let changed = self.changed.wait(seen);
            futures::pin_mut!(changed);
            futures::future::select(timer, changed).await;
        }
    }

    /// The offset for a ListOffsets timestamp (-2 earliest, -1 latest, else by time).
    pub async fn offset_for(&self, timestamp: i64) -> Result<(Offset, i64), KafkaError> {
        self.check_leader()?;
        match timestamp {
            -2 => Ok((self.log.start_offset(), -1)),
            -1 => Ok((self.high_watermark(), -1)),
            ts if ts >= 0 => match self.log.offset_for_timestamp(TimestampMs(ts)).await? {
                Some((o, t)) if o < self.high_watermark() => Ok((o, t.0)),
                _ => Ok((Offset(-1), -1)),
            },
            other => Err(KafkaError::new(
                ResponseError::InvalidRequest,
                format!("unsupported ListOffsets timestamp {other}"),
            )),
        }
    }

    /// Wakes fetch waiters (used after changes made outside `produce`).
    pub fn notify(&self) {
        self.changed.notify();
    }

    /// Writes the producer-state snapshot if the state changed since the last one (clean
    /// shutdown, housekeeping). A failure is logged: the log stays the source of truth.
    pub async fn snapshot_producers(&self) {
        if !self.producers_dirty.replace(false) {
            return;
        }
        let payload = self.producers.borrow().to_snapshot(self.log.end_offset());
        let path = self.dir.join(PRODUCER_SNAPSHOT);
        if let Err(e) = ringlog_storage::file::write_checked(&path, &payload).await {
            self.producers_dirty.set(true);
            tracing::warn!(path = %path.display(), error = %e, "writing the producer snapshot");
        }
    }

    /// Closes the log (flushing it) for shutdown or deletion.
    pub async fn close(self: Rc<Self>) {
        if let Some(g) = &self.raft {
            g.close_gracefully().await;
        }
        self.snapshot_producers().await;
        let name = format!("{}-{}", self.tp.topic, self.tp.partition);
        let log = match Rc::try_unwrap(self) {
            Ok(p) => Rc::try_unwrap(p.log).map_err(|log| log.clone()),
            Err(p) => Err(p.log.clone()),
        };
        match log {
            Ok(log) => {
                if let Err(e) = log.close().await {
                    tracing::error!(partition = %name, error = %e, "closing partition");
                }
            }
            Err(log) => {
                // Still referenced (an in-flight request, the Raft store): flush; the log
                // closes when dropped.
                let _ = log.flush().await;
            }
        }
    }
}

/// The idempotent producers' state: the snapshot if it is still valid, then every batch header
/// after it (the whole log without one).
async fn rebuild_producer_states(
    log: &Log,
    dir: &std::path::Path,
) -> Result<ProducerStates, KafkaError> {
    let end = log.end_offset();
    let (mut states, mut at) = (ProducerStates::default(), log.start_offset());
    let path = dir.join(PRODUCER_SNAPSHOT);
    match ringlog_storage::file::read_checked(&path).await {
        Ok(Some(payload)) => match ProducerStates::from_snapshot(&payload) {
            Ok((s, covered)) if covered <= end && covered >= log.start_offset() => {
                states = s;
                at = covered;
            }
            Ok((_, covered)) => {
                tracing::info!(path = %path.display(), covered = %covered, end = %end, "producer snapshot does not match the log; reading the log")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable producer snapshot; reading the log")
            }
        },
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable producer snapshot; reading the log")
        }
    }
    while at < end {
        let batches = log.read(at, 4 << 20, end).await?;
        let Some(last) = batches.last() else { break };
        at = BatchHeader::read(last).last_offset().plus(1);
        for b in &batches {
            let h = BatchHeader::read(b);
            states.record(&h, h.base_offset);
        }
    }
    Ok(states)
}

/// Splits the `records` of a produce partition into record batches, validating each fully
/// (length, magic, CRC) before anything is appended.
pub fn split_batches(mut records: BytesMut) -> Result<Vec<CheckedBatch>, KafkaError> {
    let mut out = Vec::new();
    while !records.is_empty() {
        let size = batch::declared_size(&records)
            .map_err(|e| KafkaError::new(ResponseError::CorruptMessage, e.to_string()))?;
        if size as usize > records.len() {
            return Err(KafkaError::new(
                ResponseError::CorruptMessage,
                format!(
                    "record batch of {size} bytes is truncated to {}",
                    records.len()
                ),
            ));
        }
        let b = records.split_to(size as usize);
        let b = CheckedBatch::check(b)
            .map_err(|e| KafkaError::from(ringlog_storage::StorageError::from(e)))?;
        out.push(b);
    }
    if out.is_empty() {
        return Err(KafkaError::new(
            ResponseError::CorruptMessage,
            "empty records",
        ));
    }
    Ok(out)
}

/// Caps a client's wait.
pub fn fetch_deadline(max_wait_ms: i32, cap_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis((max_wait_ms.max(0) as u64).min(cap_ms))
}
