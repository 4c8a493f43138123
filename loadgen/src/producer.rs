//! One producer: an open-loop (or closed-loop, at `rate = max`) message source with Kafka
//! producer batching, on one core.
//!
//! Constant rate: message `i` of producer `k` (of `P`, at total rate `R`) is *intended* at
//! `t0 + (k / P + i) * P / R`. The producer generates every message whose intended time has
//! passed, appends it to its partition's batch, and sends batches as Kafka clients do (a batch
//! goes when it reaches `batch_size_bytes` or has lingered `linger_ms`, at most `max_in_flight`
//! requests per connection, ready batches for one broker in one request). Publish latency is
//! ack time minus intended time, so when the broker stalls, every message that should have
//! been sent during the stall carries the stall in its latency (coordinated-omission
//! correction) instead of the stall silently lowering the send rate.
//!
//! Max rate: messages are generated as long as the producer's buffer has room (twice what its
//! in-flight requests can carry), stamped when generated; the broker's ack rate sets the pace.
//!
//! Bounded: at most `producer_buffer_bytes_max` generated but unsent bytes; when full,
//! generation waits and the schedule lag grows (reported every second).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::future::{Either, LocalBoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};
use rand::Rng as _;

use crate::batch::BatchBuilder;
use crate::client::{Connection, PRODUCE_VERSION_MAX};
use crate::cluster::{self, ClusterView};
use crate::core::{bump, CoreStats, RunShared};
use crate::error::{needs_metadata_refresh, LoadgenError};
use crate::limits::Limits;
use crate::payload::{partition_for_key, Payloads};
use crate::workload::{Acks, Rate, Workload};

/// Everything a producer task needs.
pub struct ProducerCtx {
    pub id: usize,
    pub workload: Rc<Workload>,
    pub limits: Rc<Limits>,
    pub view: Rc<std::cell::RefCell<ClusterView>>,
    pub stats: Rc<CoreStats>,
    pub shared: Arc<RunShared>,
}

/// A partition's open batch.
struct Batch {
    body: Body,
    bytes: usize,
    value_bytes: u64,
    intended: Vec<Instant>,
    created: Instant,
}

/// A batch's records: built in place when uncompressed (see [`crate::batch`]), else kept for
/// the `kafka-protocol` encoder to compress.
enum Body {
    Built(BatchBuilder),
    Records(Vec<Record>),
}

impl Body {
    fn is_empty(&self) -> bool {
        match self {
            Body::Built(b) => b.count() == 0,
            Body::Records(r) => r.is_empty(),
        }
    }
}

/// A sent request's messages.
struct Sent {
    node: i32,
    at: Instant,
    /// (partition, intended times, value bytes).
    parts: Vec<(usize, Vec<Instant>, u64)>,
}

enum Reply {
    Acked(ProduceResponse),
    Written,
    Failed(LoadgenError),
}

struct Producer {
    ctx: ProducerCtx,
    payloads: Payloads,
    /// Per partition, its batches in order: only the last one takes new messages; a full one
    /// is closed and a new one started (as Kafka's record accumulator does), so no batch grows
    /// past `batch_size_bytes` while requests are in flight.
    batches: Vec<VecDeque<Batch>>,
    /// Partitions with an open batch (so a turn looks at those, not at every partition).
    open: Vec<usize>,
    buffered_bytes: usize,
    sticky: usize,
    conns: HashMap<i32, Rc<Connection>>,
    retry_at: HashMap<i32, Instant>,
    in_flight: FuturesUnordered<LocalBoxFuture<'static, (Sent, Reply)>>,
    topic: TopicName,
    refresh: bool,
    /// Messages in `in_flight`, and how many of them are measured (for the drain's give-up).
    in_flight_msgs: u64,
    in_flight_measured: u64,
}

/// Runs one producer until its schedule ends and its messages are acknowledged (or failed).
pub async fn run(ctx: ProducerCtx) {
    let w = ctx.workload.clone();
    let seed = 0x5EED_0000 + ctx.id as u64 * 7919;
    let mut payloads = Payloads::new(seed, w.message_size, w.key_count);
    let sticky = payloads.rng().gen_range(0..w.partitions);
    let mut p = Producer {
        payloads,
        batches: (0..w.partitions).map(|_| VecDeque::new()).collect(),
        open: Vec::new(),
        buffered_bytes: 0,
        sticky,
        conns: HashMap::new(),
        retry_at: HashMap::new(),
        in_flight: FuturesUnordered::new(),
        topic: TopicName(StrBytes::from_string(w.topic.clone())),
        refresh: false,
        in_flight_msgs: 0,
        in_flight_measured: 0,
        ctx,
    };
    p.main_loop().await;
    p.ctx.shared.producers_done.fetch_add(1, Ordering::Relaxed);
}

impl Producer {
    async fn main_loop(&mut self) {
        let w = self.ctx.workload.clone();
        let window = self.ctx.stats.window();
        let producers = w.producers as f64;
        // Constant rate: the schedule.
        // Constant rate: the schedule, in nanoseconds (f64 keeps fractional steps exact enough:
        // 2^53 ns is 104 days).
        let (step, phase_ns) = match w.rate {
            Rate::Constant(r) => {
                let step_ns = 1e9 * producers / r;
                (Some(step_ns), step_ns * self.ctx.id as f64 / producers)
            }
            Rate::Max => (None, 0.0),
        };
        let mut next_i: u64 = 0;
        let intended_of = |i: u64| -> Instant {
            let s = step.unwrap_or_default();
            window.t0 + Duration::from_nanos((phase_ns + s * i as f64) as u64)
        };
        // Waking for every message at high rates costs more than the messages: a producer
        // sleeps at least `producer_tick_us` (the messages that fall due meanwhile keep their
        // intended times, so the wait is in their latency, not hidden).
        let tick = Duration::from_micros(self.ctx.limits.producer_tick_us);
        let max_fill = match w.rate {
            Rate::Max => (2 * w.batch_size_bytes * w.max_in_flight)
                .min(self.ctx.limits.producer_buffer_bytes_max),
            Rate::Constant(_) => self.ctx.limits.producer_buffer_bytes_max,
        };
        let drain_deadline = window.end + Duration::from_millis(self.ctx.limits.drain_timeout_ms);
        let mut generating = true;
        let mut lag_recorded = false;
        loop {
            if self.ctx.shared.aborted() {
                break;
            }
            let now = Instant::now();
            // 1. Generate what is due.
            if generating {
                let mut made = 0;
                while made < self.ctx.limits.messages_per_turn_max && self.buffered_bytes < max_fill
                {
                    let intended = match step {
                        Some(_) => {
                            let t = intended_of(next_i);
                            if t >= window.end {
                                generating = false;
                                break;
                            }
                            if t > now {
                                break;
                            }
                            t
                        }
                        None => {
                            if now >= window.end {
                                generating = false;
                                break;
                            }
                            now
                        }
                    };
                    if step.is_some() && window.measures(intended) {
                        self.ctx.stats.totals.borrow_mut().intended_msgs += 1;
                    }
                    self.add_message(intended, now);
                    next_i += 1;
                    made += 1;
                }
                if step.is_some() && generating {
                    let due = intended_of(next_i);
                    let lag = now.saturating_duration_since(due).as_micros() as u64;
                    self.ctx.stats.lag(lag);
                }
            }
            if !lag_recorded && now >= window.end {
                lag_recorded = true;
                let lag = if generating && step.is_some() {
                    now.saturating_duration_since(intended_of(next_i))
                        .as_micros() as u64
                } else {
                    0
                };
                self.ctx
                    .shared
                    .lag_at_end_us
                    .fetch_max(lag, Ordering::Relaxed);
            }
            // 2. Send ready batches.
            if self.refresh {
                self.refresh_metadata().await;
            }
            self.send_ready(now, !generating).await;
            // 3. Done?
            if !generating && self.buffered_bytes == 0 && self.in_flight.is_empty() {
                break;
            }
            if !generating && now >= drain_deadline {
                self.give_up();
                break;
            }
            // 4. Wait for the next due message, linger deadline or ack.
            let mut wake = now + Duration::from_micros(self.ctx.limits.producer_idle_sleep_us);
            if generating && self.buffered_bytes < max_fill {
                // At max rate too a producer sleeps a tick between turns (each turn makes up
                // to `messages_per_turn_max` messages): the load queue then goes idle often,
                // and glommio polls the sockets (reads the acks) only when it does.
                match step {
                    Some(_) => wake = wake.min(intended_of(next_i).max(now + tick)),
                    None => wake = wake.min(now + tick),
                }
            }
            if let Some(l) = self.next_linger_deadline() {
                wake = wake.min(l);
            }
            if !generating {
                wake = wake.min(drain_deadline);
            }
            let sleep_for = wake.saturating_duration_since(Instant::now());
            if self.in_flight.is_empty() {
                if sleep_for.is_zero() {
                    glommio::yield_if_needed().await;
                } else {
                    glommio::timer::sleep(sleep_for).await;
                }
            } else if sleep_for.is_zero() {
                // Take whatever already completed without waiting.
                while let Some(Some((sent, reply))) = self.in_flight.next().now_or_never() {
                    self.complete(sent, reply);
                }
                glommio::yield_if_needed().await;
            } else {
                let sleep = Box::pin(glommio::timer::sleep(sleep_for));
                if let Either::Left((Some((sent, reply)), _)) =
                    futures::future::select(self.in_flight.next(), sleep).await
                {
                    self.complete(sent, reply);
                    while let Some(Some((sent, reply))) = self.in_flight.next().now_or_never() {
                        self.complete(sent, reply);
                    }
                }
            }
        }
    }

    fn add_message(&mut self, intended: Instant, now: Instant) {
        let w = &self.ctx.workload;
        let size = self.payloads.next_size();
        let stamp = self.ctx.stats.clock.wall_us(intended);
        let key = self.payloads.next_key();
        let partition = match &key {
            Some(k) => partition_for_key(k, w.partitions),
            None => self.sticky,
        };
        let timestamp_ms = (stamp / 1000) as i64;
        let bytes = size as usize + key.as_ref().map_or(0, |k| k.len()) + 16;
        let q = &mut self.batches[partition];
        if q.is_empty() {
            self.open.push(partition);
        }
        let full = q
            .back()
            .is_none_or(|b| !b.body.is_empty() && b.bytes + bytes > w.batch_size_bytes);
        if full {
            let body = if w.compression == Compression::None {
                // Room for a full batch (a record's framing is about the 16 bytes counted
                // for it in `bytes`), so the buffer does not grow by copying.
                let cap = w.batch_size_bytes.max(bytes);
                Body::Built(BatchBuilder::new(cap + cap / 16 + 256))
            } else {
                Body::Records(Vec::new())
            };
            q.push_back(Batch {
                body,
                bytes: 0,
                value_bytes: 0,
                intended: Vec::new(),
                created: now,
            });
        }
        let b = q.back_mut().expect("a batch was just ensured");
        match &mut b.body {
            Body::Built(builder) => {
                let payloads = &mut self.payloads;
                builder.push(timestamp_ms, key.as_deref(), size as usize, |buf| {
                    payloads.write_value(buf, size as usize, stamp)
                });
            }
            Body::Records(records) => {
                let value = self.payloads.value(size, stamp);
                let i = records.len() as i64;
                records.push(Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                    producer_id: NO_PRODUCER_ID,
                    producer_epoch: NO_PRODUCER_EPOCH,
                    timestamp_type: TimestampType::Creation,
                    offset: i,
                    // The encoder groups records whose offset - sequence is constant; -1 on
                    // the first record makes the batch's base sequence NO_SEQUENCE (not
                    // idempotent).
                    sequence: i as i32 - 1,
                    timestamp: timestamp_ms,
                    key,
                    value: Some(value),
                    headers: Default::default(),
                });
            }
        }
        b.bytes += bytes;
        b.value_bytes += size as u64;
        b.intended.push(intended);
        self.buffered_bytes += bytes;
        if b.bytes >= w.batch_size_bytes && self.ctx.workload.key_count.is_none() {
            self.next_sticky();
        }
    }

    fn next_sticky(&mut self) {
        let n = self.ctx.workload.partitions;
        if n > 1 {
            let r = self.payloads.rng().gen_range(0..n - 1);
            self.sticky = (self.sticky + 1 + r) % n;
        }
    }

    fn ready(&self, b: &Batch, now: Instant, flush_all: bool) -> bool {
        let w = &self.ctx.workload;
        flush_all
            || w.linger_ms == 0
            || b.bytes >= w.batch_size_bytes
            || now >= b.created + Duration::from_millis(w.linger_ms)
    }

    fn next_linger_deadline(&self) -> Option<Instant> {
        if self.ctx.workload.linger_ms == 0 {
            return None;
        }
        let linger = Duration::from_millis(self.ctx.workload.linger_ms);
        self.open
            .iter()
            .filter_map(|p| self.batches[*p].front())
            .map(|b| b.created + linger)
            .min()
    }

    async fn connection(&mut self, node: i32) -> Option<Rc<Connection>> {
        if let Some(c) = self.conns.get(&node) {
            if c.failure().is_none() {
                return Some(c.clone());
            }
            self.conns.remove(&node);
        }
        if let Some(t) = self.retry_at.get(&node) {
            if Instant::now() < *t {
                return None;
            }
        }
        let addr = *self.ctx.view.borrow().brokers.get(&node)?;
        let client_id = format!("ringlog-loadgen-producer-{}", self.ctx.id);
        match Connection::connect(addr, &self.ctx.limits, &client_id).await {
            Ok(c) => {
                self.retry_at.remove(&node);
                self.conns.insert(node, c.clone());
                Some(c)
            }
            Err(e) => {
                eprintln!("producer {}: {e}; retrying in 100 ms", self.ctx.id);
                self.retry_at
                    .insert(node, Instant::now() + Duration::from_millis(100));
                None
            }
        }
    }

    async fn send_ready(&mut self, now: Instant, flush_all: bool) {
        let w = self.ctx.workload.clone();
        // Ready partitions by leader (a short list: one entry per broker).
        let mut by_node: Vec<(i32, Vec<usize>)> = Vec::new();
        for &p in &self.open {
            let q = &self.batches[p];
            let Some(b) = q.front() else { continue };
            if q.len() < 2 && !self.ready(b, now, flush_all) {
                continue;
            }
            let leader = self.ctx.view.borrow().leaders.get(p).copied().unwrap_or(-1);
            match by_node.iter_mut().find(|(n, _)| *n == leader) {
                Some((_, v)) => v.push(p),
                None => by_node.push((leader, vec![p])),
            }
        }
        if by_node.is_empty() {
            return;
        }
        for (node, parts) in by_node {
            if node < 0 {
                self.refresh = true;
                continue;
            }
            let Some(conn) = self.connection(node).await else {
                continue;
            };
            let mut parts = parts.into_iter().peekable();
            while parts.peek().is_some() && conn.outstanding() < w.max_in_flight {
                let mut data = Vec::new();
                let mut splice = Vec::new();
                let mut sent = Sent {
                    node,
                    at: Instant::now(),
                    parts: Vec::new(),
                };
                let mut req_bytes = 0usize;
                while let Some(&p) = parts.peek() {
                    let est = self.batches[p].front().map_or(0, |b| b.bytes);
                    if !data.is_empty() && req_bytes + est > self.ctx.limits.request_bytes_max {
                        break;
                    }
                    parts.next();
                    // One batch per partition per request, as Kafka clients send.
                    let Some(b) = self.batches[p].pop_front() else {
                        continue;
                    };
                    if self.batches[p].is_empty() {
                        if let Some(i) = self.open.iter().position(|q| *q == p) {
                            self.open.swap_remove(i);
                        }
                    }
                    if self.ctx.workload.key_count.is_none() && p == self.sticky {
                        self.next_sticky();
                    }
                    self.buffered_bytes -= b.bytes;
                    req_bytes += b.bytes;
                    let value_bytes = b.value_bytes;
                    let buf = match b.body {
                        Body::Built(builder) => builder.finish(),
                        Body::Records(records) => {
                            let mut buf = BytesMut::with_capacity(b.bytes + 128);
                            let opts = RecordEncodeOptions {
                                version: 2,
                                compression: w.compression,
                            };
                            if let Err(e) =
                                RecordBatchEncoder::encode(&mut buf, records.iter(), &opts)
                            {
                                eprintln!("producer {}: encoding a batch failed: {e}", self.ctx.id);
                                let in_w = self.in_window(&b.intended);
                                self.ctx.stats.failed(b.intended.len() as u64, in_w);
                                continue;
                            }
                            buf.freeze()
                        }
                    };
                    let records = buf;
                    splice.push(records.clone());
                    data.push(
                        PartitionProduceData::default()
                            .with_index(p as i32)
                            .with_records(Some(records)),
                    );
                    sent.parts.push((p, b.intended, value_bytes));
                }
                if data.is_empty() {
                    break;
                }
                let req = ProduceRequest::default()
                    .with_acks(w.acks.wire())
                    .with_timeout_ms(self.ctx.limits.request_timeout_ms as i32)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(self.topic.clone())
                        .with_partition_data(data)]);
                sent.at = Instant::now();
                self.ctx.stats.request_sent(
                    sent.parts.len() as u64,
                    sent.parts.first().and_then(|(_, t, _)| t.first().copied()),
                );
                let fut = match conn.version::<ProduceRequest>(PRODUCE_VERSION_MAX) {
                    Ok(v) if w.acks == Acks::None => conn
                        .send_without_response(&req, v, &splice)
                        .map(|f| f.map(|r| r.map(|()| Reply::Written)).boxed_local()),
                    Ok(v) => conn
                        .send_spliced(&req, v, &splice)
                        .map(|f| f.map(|r| r.map(Reply::Acked)).boxed_local()),
                    Err(e) => Err(e),
                };
                let msgs: u64 = sent.parts.iter().map(|(_, t, _)| t.len() as u64).sum();
                let measured: u64 = sent.parts.iter().map(|(_, t, _)| self.in_window(t)).sum();
                match fut {
                    Ok(f) => {
                        self.in_flight_msgs += msgs;
                        self.in_flight_measured += measured;
                        self.in_flight.push(
                            async move {
                                let reply = match f.await {
                                    Ok(r) => r,
                                    Err(e) => Reply::Failed(e),
                                };
                                (sent, reply)
                            }
                            .boxed_local(),
                        )
                    }
                    Err(e) => {
                        self.in_flight_msgs += msgs;
                        self.in_flight_measured += measured;
                        self.complete(sent, Reply::Failed(e))
                    }
                }
            }
        }
    }

    fn in_window(&self, intended: &[Instant]) -> u64 {
        self.ctx.stats.window().measures_count(intended)
    }

    fn complete(&mut self, sent: Sent, reply: Reply) {
        let now = Instant::now();
        let msgs: u64 = sent.parts.iter().map(|(_, t, _)| t.len() as u64).sum();
        let measured: u64 = sent.parts.iter().map(|(_, t, _)| self.in_window(t)).sum();
        self.in_flight_msgs -= msgs;
        self.in_flight_measured -= measured;
        let stats = self.ctx.stats.clone();
        let mut acked = 0u64;
        let ok = |parts: &[(usize, Vec<Instant>, u64)], p: usize| -> Option<usize> {
            parts.iter().position(|(q, _, _)| *q == p)
        };
        match reply {
            Reply::Written => {
                for (_, intended, bytes) in &sent.parts {
                    let per = bytes / intended.len().max(1) as u64;
                    for t in intended {
                        stats.acked(*t, sent.at, now, per);
                    }
                    acked += intended.len() as u64;
                }
            }
            Reply::Acked(resp) => {
                let mut answered = vec![false; sent.parts.len()];
                for t in &resp.responses {
                    for pr in &t.partition_responses {
                        let Some(i) = ok(&sent.parts, pr.index as usize) else {
                            continue;
                        };
                        if answered[i] {
                            continue;
                        }
                        answered[i] = true;
                        let (_, intended, bytes) = &sent.parts[i];
                        if pr.error_code == 0 {
                            let per = bytes / intended.len().max(1) as u64;
                            for t in intended {
                                stats.acked(*t, sent.at, now, per);
                            }
                            acked += intended.len() as u64;
                        } else {
                            if needs_metadata_refresh(pr.error_code) {
                                self.refresh = true;
                            }
                            stats.failed(intended.len() as u64, self.in_window(intended));
                            self.note_error(pr.error_code);
                        }
                    }
                }
                for (i, done) in answered.iter().enumerate() {
                    if !done {
                        let intended = &sent.parts[i].1;
                        stats.failed(intended.len() as u64, self.in_window(intended));
                    }
                }
            }
            Reply::Failed(e) => {
                eprintln!("producer {}: {e}", self.ctx.id);
                if let Some(c) = self.conns.get(&sent.node) {
                    if c.failure().is_some() {
                        self.conns.remove(&sent.node);
                    }
                }
                self.refresh = true;
                for (_, intended, _) in &sent.parts {
                    stats.failed(intended.len() as u64, self.in_window(intended));
                }
            }
        }
        bump(&self.ctx.shared.run_acked, acked);
    }

    fn note_error(&self, code: i16) {
        // One line per distinct code per producer would be ideal; one per failed batch is
        // bounded by the request rate and keeps the code simple.
        eprintln!(
            "producer {}: produce error {code} ({})",
            self.ctx.id,
            crate::error::kafka_error_name(code)
        );
    }

    async fn refresh_metadata(&mut self) {
        self.refresh = false;
        let nodes: Vec<i32> = self.ctx.view.borrow().brokers.keys().copied().collect();
        for node in nodes {
            let Some(conn) = self.connection(node).await else {
                continue;
            };
            if let Ok(Some(view)) = cluster::describe(&conn, &self.ctx.workload.topic).await {
                if view.leaders.len() == self.ctx.workload.partitions {
                    *self.ctx.view.borrow_mut() = view;
                    return;
                }
            }
        }
    }

    /// The drain timed out: whatever is still buffered or in flight failed.
    fn give_up(&mut self) {
        let mut n = 0u64;
        let mut in_w = 0u64;
        self.open.clear();
        for q in self.batches.iter_mut() {
            for b in q.drain(..) {
                n += b.intended.len() as u64;
                in_w += self.ctx.stats.window().measures_count(&b.intended);
            }
        }
        self.buffered_bytes = 0;
        // Dropping the futures abandons their responses; their messages are failures.
        drop(std::mem::take(&mut self.in_flight));
        n += std::mem::take(&mut self.in_flight_msgs);
        in_w += std::mem::take(&mut self.in_flight_measured);
        self.ctx.stats.failed(n, in_w);
        eprintln!(
            "producer {}: {n} messages not acknowledged within the {} ms drain; counted as errors",
            self.ctx.id, self.ctx.limits.drain_timeout_ms
        );
    }
}
