//! A partition on its owner core: the log, the leader epoch, the high watermark and the fetch
//! waiters.
//!
//! Runs only on the core that owns the partition (see `shard`). Invariants:
//! - the high watermark is the durable end of the log (with `fsync` on), so consumers never
//!   read data a crash could take back; with `fsync` off it is the log end;
//! - a produce is acknowledged (acks=1/all) only once the high watermark passes its batches;
//! - every fetch waiter is woken when the high watermark moves.
//!
//! The leader epoch is 0 on a single node; the Raft driver (issue #6) will own it and the
//! high watermark will become Raft's commit index.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use ringlog_storage::batch::BatchHeader;
use ringlog_storage::sync::LocalSemaphore;
use ringlog_storage::{batch, Log, LogConfig, Offset, Term, TimestampMs};

use crate::kafka::errors::KafkaError;
use crate::producer_state::{ProducerStates, Verdict};
use crate::shard::{Shard, TopicPartition};

/// One partition, owned by this core.
pub struct Partition {
    /// Topic and index.
    pub tp: TopicPartition,
    /// The log.
    pub log: Log,
    /// Leader epoch stamped into appended batches.
    pub leader_epoch: Cell<i32>,
    fsync: bool,
    changed: HighWatermarkChanged,
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
        leader_epoch: i32,
    ) -> Result<Rc<Partition>, KafkaError> {
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
        let producers = rebuild_producer_states(&log, &dir).await?;
        tracing::info!(partition = %format!("{}-{}", tp.topic, tp.partition), shard = shard.id.0, start = %log.start_offset(), end = %log.end_offset(), "opened partition");
        Ok(Rc::new(Partition {
            tp,
            log,
            leader_epoch: Cell::new(leader_epoch),
            fsync: shard.config.fsync,
            changed: HighWatermarkChanged::default(),
            background_flush: Cell::new(false),
            producers: RefCell::new(producers),
            idempotent_append: LocalSemaphore::new(1),
            producers_dirty: Cell::new(false),
            dir,
        }))
    }

    /// The offset below which consumers may read.
    pub fn high_watermark(&self) -> Offset {
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
        records: Bytes,
        acks: i16,
        appended: futures::channel::oneshot::Sender<()>,
    ) -> Result<Offset, KafkaError> {
        let batches = split_batches(&records)?;
        let term = Term(self.leader_epoch.get());
        let mut base = None;
        let mut last = Offset(-1);
        let headers: Vec<BatchHeader> = batches.iter().map(|b| BatchHeader::read(b)).collect();
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
        for ((b, h), v) in batches.iter().zip(&headers).zip(verdicts) {
            match v {
                Verdict::Duplicate(orig) => {
                    base.get_or_insert(orig.base_offset);
                    last = last.max(orig.last_offset);
                }
                _ => {
                    let info = self.log.append(BytesMut::from(&b[..]), term).await?;
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

    /// Appends one batch of broker-written records (internal topics: group state, offsets)
    /// and waits until it is durable. Returns the batch's base offset.
    pub async fn append_internal(
        &self,
        records: &[batch::build::NewRecord],
    ) -> Result<(), KafkaError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let b = batch::build::encode_batch(records, now_ms);
        self.log.append(b, Term(self.leader_epoch.get())).await?;
        self.log.flush().await?;
        self.changed.notify();
        Ok(())
    }

    /// Reads whole batches from `offset`, up to the high watermark.
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<FetchedData, KafkaError> {
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
        self.snapshot_producers().await;
        let name = format!("{}-{}", self.tp.topic, self.tp.partition);
        match Rc::try_unwrap(self) {
            Ok(p) => {
                if let Err(e) = p.log.close().await {
                    tracing::error!(partition = %name, error = %e, "closing partition");
                }
            }
            Err(p) => {
                // Still referenced by an in-flight request: flush; the log closes when dropped.
                let _ = p.log.flush().await;
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
pub fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, KafkaError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let size = batch::declared_size(rest)
            .map_err(|e| KafkaError::new(ResponseError::CorruptMessage, e.to_string()))?;
        if size as usize > rest.len() {
            return Err(KafkaError::new(
                ResponseError::CorruptMessage,
                format!(
                    "record batch of {size} bytes is truncated to {}",
                    rest.len()
                ),
            ));
        }
        let b = records.slice(at..at + size as usize);
        batch::Batch::parse(b.clone())
            .map_err(|e| KafkaError::from(ringlog_storage::StorageError::from(e)))?;
        out.push(b);
        at += size as usize;
    }
    if out.is_empty() {
        return Err(KafkaError::new(
            ResponseError::CorruptMessage,
            "empty records",
        ));
    }
    Ok(out)
}

/// A counter of high-watermark changes that tasks can wait on.
#[derive(Default)]
struct HighWatermarkChanged {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl HighWatermarkChanged {
    fn generation(&self) -> u64 {
        self.generation.get()
    }

    fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    fn wait(&self, seen: u64) -> WaitChange<'_> {
        WaitChange { notify: self, seen }
    }
}

struct WaitChange<'a> {
    notify: &'a HighWatermarkChanged,
    seen: u64,
}

impl Future for WaitChange<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.seen {
            return Poll::Ready(());
        }
        let mut w = self.notify.wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Caps a client's wait.
pub fn fetch_deadline(max_wait_ms: i32, cap_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis((max_wait_ms.max(0) as u64).min(cap_ms))
}
