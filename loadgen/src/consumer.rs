//! One consumer: reads its share of the partitions from their end, and measures end-to-end
//! latency from the intended send time stamped in each value (see `payload`).
//!
//! Partitions are assigned statically (partition `p` to consumer `p % consumers`), so the load
//! generator needs no consumer-group support from the broker and every broker is measured the
//! same way. Each consumer keeps one fetch outstanding per leader broker (`min_bytes` 1,
//! `max_wait_ms` from the workload), positioned by ListOffsets(latest) before the producers
//! start, and stops when the reporting thread says every acknowledged message was read (or the
//! drain timed out).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use crate::client::{Connection, FETCH_VERSION_MAX, LIST_OFFSETS_VERSION_MAX};
use crate::cluster::{self, ClusterView};
use crate::core::{bump, CoreStats, RunShared};
use crate::error::{needs_metadata_refresh, LoadgenError};
use crate::limits::Limits;
use crate::payload::read_stamp;
use crate::workload::Workload;

/// Everything a consumer task needs.
pub struct ConsumerCtx {
    pub id: usize,
    pub partitions: Vec<usize>,
    pub workload: Rc<Workload>,
    pub limits: Rc<Limits>,
    pub view: Rc<RefCell<ClusterView>>,
    pub stats: Rc<CoreStats>,
    pub shared: Arc<RunShared>,
}

/// Runs one consumer. Returns an error only when it could not position itself before the run.
pub async fn run(ctx: ConsumerCtx) -> Result<(), LoadgenError> {
    let topic = TopicName(StrBytes::from_string(ctx.workload.topic.clone()));
    let mut conns: HashMap<i32, Rc<Connection>> = HashMap::new();
    let mut offsets: HashMap<usize, i64> = HashMap::new();
    for &p in &ctx.partitions {
        let off = latest_offset(&ctx, &mut conns, &topic, p).await?;
        offsets.insert(p, off);
    }
    ctx.shared.consumers_ready.fetch_add(1, Ordering::Relaxed);
    // Wait for the start signal (or an abort).
    while ctx.shared.t0.get().is_none() && !ctx.shared.aborted() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    type Fetching = LocalBoxFuture<'static, (i32, Vec<usize>, Result<FetchResponse, LoadgenError>)>;
    let mut fetching: FuturesUnordered<Fetching> = FuturesUnordered::new();
    let mut busy: HashMap<i32, bool> = HashMap::new();
    let mut refresh = false;
    loop {
        if ctx.shared.stop_consumers.load(Ordering::Relaxed) || ctx.shared.aborted() {
            break;
        }
        if refresh {
            refresh = false;
            refresh_view(&ctx, &mut conns).await;
        }
        // One fetch per idle leader.
        let mut by_node: HashMap<i32, Vec<usize>> = HashMap::new();
        for &p in &ctx.partitions {
            let leader = ctx.view.borrow().leaders.get(p).copied().unwrap_or(-1);
            by_node.entry(leader).or_default().push(p);
        }
        for (node, parts) in by_node {
            if node < 0 {
                refresh = true;
                continue;
            }
            if busy.get(&node).copied().unwrap_or(false) {
                continue;
            }
            let Some(conn) = connection(&ctx, &mut conns, node).await else {
                continue;
            };
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(ctx.workload.fetch_max_wait_ms)
                .with_min_bytes(1)
                .with_max_bytes(ctx.limits.fetch_bytes_max)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic.clone())
                    .with_partitions(
                        parts
                            .iter()
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(*p as i32)
                                    .with_current_leader_epoch(-1)
                                    .with_fetch_offset(offsets[p])
                                    .with_last_fetched_epoch(-1)
                                    .with_log_start_offset(-1)
                                    .with_partition_max_bytes(ctx.limits.fetch_partition_bytes_max)
                            })
                            .collect(),
                    )]);
            let fut = conn
                .version::<FetchRequest>(FETCH_VERSION_MAX)
                .and_then(|v| conn.send(&req, v));
            match fut {
                Ok(f) => {
                    busy.insert(node, true);
                    fetching.push(async move { (node, parts, f.await) }.boxed_local());
                }
                Err(e) => {
                    eprintln!("consumer {}: {e}", ctx.id);
                    conns.remove(&node);
                }
            }
        }
        if fetching.is_empty() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        }
        // Wait for a response, but look at the stop flag at least every 100 ms.
        let tick = Box::pin(glommio::timer::sleep(Duration::from_millis(100)));
        let Some((node, _parts, result)) =
            (match futures::future::select(fetching.next(), tick).await {
                futures::future::Either::Left((r, _)) => r,
                futures::future::Either::Right(_) => continue,
            })
        else {
            continue;
        };
        busy.insert(node, false);
        match result {
            Ok(resp) => {
                for t in &resp.responses {
                    for pd in &t.partitions {
                        let p = pd.partition_index as usize;
                        let Some(off) = offsets.get_mut(&p) else {
                            continue;
                        };
                        match pd.error_code {
                            0 => {
                                if let Some(records) = &pd.records {
                                    *off = consume_records(&ctx, records.clone(), *off);
                                }
                            }
                            1 => {
                                // OFFSET_OUT_OF_RANGE: start again from the end.
                                if let Ok(o) = latest_offset(&ctx, &mut conns, &topic, p).await {
                                    *off = o;
                                }
                            }
                            code => {
                                if needs_metadata_refresh(code) {
                                    refresh = true;
                                }
                                eprintln!(
                                    "consumer {}: fetch error {code} ({}) on partition {p}",
                                    ctx.id,
                                    crate::error::kafka_error_name(code)
                                );
                                glommio::timer::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("consumer {}: {e}", ctx.id);
                conns.remove(&node);
                refresh = true;
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// Reads the record batches in `records` from `offset`; returns the next offset to fetch.
/// A truncated last batch (a fetch may end mid-batch) is left for the next fetch.
fn consume_records(ctx: &ConsumerCtx, records: Bytes, offset: i64) -> i64 {
    let mut next = offset;
    let mut pos = 0usize;
    let mut consumed = 0u64;
    while records.len() - pos >= 61 {
        let b = &records[pos..];
        let base = i64::from_be_bytes(b[0..8].try_into().unwrap_or_default());
        let len = i32::from_be_bytes(b[8..12].try_into().unwrap_or_default());
        if len < 49 {
            break;
        }
        let total = 12 + len as usize;
        if b.len() < total {
            break;
        }
        let last_delta = i32::from_be_bytes(b[23..27].try_into().unwrap_or_default());
        let attributes = i16::from_be_bytes(b[21..23].try_into().unwrap_or_default());
        let batch_next = base + last_delta as i64 + 1;
        let mut batch = records.slice(pos..pos + total);
        pos += total;
        if batch_next <= next {
            continue;
        }
        if attributes & 0x20 != 0 || b[16] != 2 {
            // Control batch or an old format: nothing for us to read.
            next = batch_next;
            continue;
        }
        let now_us = ctx.stats.clock.now_us();
        match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => {
                for r in &set.records {
                    if r.offset < next {
                        continue;
                    }
                    let v = r.value.as_deref().unwrap_or(&[]);
                    ctx.stats.consumed(read_stamp(v), now_us, v.len() as u64);
                    consumed += 1;
                }
            }
            Err(e) => {
                eprintln!(
                    "consumer {}: undecodable batch at offset {base}: {e}; skipping it",
                    ctx.id
                );
            }
        }
        next = batch_next;
    }
    bump(&ctx.shared.run_consumed, consumed);
    next
}

async fn connection(
    ctx: &ConsumerCtx,
    conns: &mut HashMap<i32, Rc<Connection>>,
    node: i32,
) -> Option<Rc<Connection>> {
    if let Some(c) = conns.get(&node) {
        if c.failure().is_none() {
            return Some(c.clone());
        }
    }
    let addr = *ctx.view.borrow().brokers.get(&node)?;
    let id = format!("ringlog-loadgen-consumer-{}", ctx.id);
    match Connection::connect(addr, &ctx.limits, &id).await {
        Ok(c) => {
            conns.insert(node, c.clone());
            Some(c)
        }
        Err(e) => {
            eprintln!("consumer {}: {e}", ctx.id);
            None
        }
    }
}

async fn refresh_view(ctx: &ConsumerCtx, conns: &mut HashMap<i32, Rc<Connection>>) {
    let nodes: Vec<i32> = ctx.view.borrow().brokers.keys().copied().collect();
    for node in nodes {
        let Some(conn) = connection(ctx, conns, node).await else {
            continue;
        };
        if let Ok(Some(view)) = cluster::describe(&conn, &ctx.workload.topic).await {
            if view.leaders.len() == ctx.workload.partitions {
                *ctx.view.borrow_mut() = view;
                return;
            }
        }
    }
}

async fn latest_offset(
    ctx: &ConsumerCtx,
    conns: &mut HashMap<i32, Rc<Connection>>,
    topic: &TopicName,
    p: usize,
) -> Result<i64, LoadgenError> {
    let (node, addr) = ctx
        .view
        .borrow()
        .leader_addr(p)
        .ok_or_else(|| LoadgenError::Workload(format!("partition {p} has no leader")))?;
    let conn = match connection(ctx, conns, node).await {
        Some(c) => c,
        None => {
            return Err(LoadgenError::Unreachable {
                addr: addr.to_string(),
                reason: "consumer could not connect".into(),
            })
        }
    };
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(0)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic.clone())
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(p as i32)
                .with_current_leader_epoch(-1)
                .with_timestamp(-1)])]);
    let resp = conn.call(&req, LIST_OFFSETS_VERSION_MAX).await?;
    let part = resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|x| x.partition_index == p as i32)
        .ok_or_else(|| LoadgenError::Protocol {
            addr,
            reason: format!("ListOffsets answer lacks partition {p}"),
        })?;
    if part.error_code != 0 {
        return Err(LoadgenError::Kafka {
            what: format!("ListOffsets of partition {p}"),
            code: part.error_code,
            name: crate::error::kafka_error_name(part.error_code),
        });
    }
    Ok(part.offset)
}
