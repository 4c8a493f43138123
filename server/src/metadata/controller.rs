//! The controller: sole writer of the metadata log, on core 0.
//!
//! Every change (create or delete a topic, add partitions, set configs) is validated against
//! the current image, appended to the metadata log and flushed, applied to a new image, and
//! then broadcast to every core; the request is answered only after every core has the new
//! image and has opened (or closed) its partitions. Changes run one at a time.
//!
//! Placement: each new partition goes to the core that owns the fewest partitions, ties to the
//! lowest core, so placement is balanced; it is recorded in the log, so it is stable across
//! restarts and visible (Metadata, and the `opened partition` log line of each core).
//!
//! ## In a cluster (`--peers`)
//! The metadata log is a Raft group ([`crate::cluster::METADATA_GROUP`]) over the controller
//! voters (the others follow as learners). Every broker's core 0 runs a `Controller`; the one
//! whose replica leads is the active controller. A change is proposed (one record per batch)
//! and answered once committed and applied. Every broker applies committed records in order
//! in an apply task and broadcasts each new image to its cores, so every broker's image
//! follows the log. A broker that is not the active controller forwards changes to it over
//! the RPC transport (as Kafka brokers forward since KIP-590), then waits until its own image
//! has caught up with the answer, so a client that created a topic here sees it here.
//! Placement also picks the replicas: the brokers with the fewest replicas, ties to the lowest
//! id, so replicas (and, as Raft elections spread, leaders) are balanced.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use std::cell::Cell;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use ringlog_raft::types::NodeId;
use ringlog_storage::batch::build::{encode_batch, NewRecord};
use ringlog_storage::sync::LocalSemaphore;
use ringlog_storage::{batch, Log, LogConfig, Offset, Term};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::image::{MetadataImage, PartitionMeta};
use super::records::MetadataRecord;
use crate::cluster::group::RaftGroup;
use crate::cluster::ClusterConfig;
use crate::kafka::errors::KafkaError;
use crate::notify::Notify;
use crate::shard::{Shard, ShardId};

/// Directory of the metadata log under the data dir.
pub const METADATA_DIR: &str = "__cluster_metadata-0";

/// A topic to create.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions (-1: the broker default).
    pub partitions: i32,
    /// Replication factor (-1: default; only 1 is possible on a single node).
    pub replication_factor: i16,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// The controller state.
pub struct Controller {
    log: Rc<Log>,
    image: std::cell::RefCell<Arc<MetadataImage>>,
    one_change: Rc<LocalSemaphore>,
    raft: Option<MetaRaft>,
}

/// The metadata group of a cluster broker.
struct MetaRaft {
    group: Rc<RaftGroup>,
    /// Offsets of the metadata log below this are in the image (and broadcast).
    applied: Cell<Offset>,
    applied_changed: Rc<Notify>,
    cluster: ClusterConfig,
    timeout: Duration,
    /// When the active controller last heard from each broker (its own term only).
    heard: std::cell::RefCell<std::collections::HashMap<i32, Instant>>,
    /// The term `heard` belongs to: a new active controller starts everyone's clock afresh.
    heard_term: Cell<u64>,
    session_timeout: Duration,
}

/// A change forwarded to the active controller.
#[derive(Serialize, Deserialize)]
enum ControllerOp {
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        name: String,
        count: i32,
        validate_only: bool,
    },
    SetConfigs {
        name: String,
        changes: Vec<(String, Option<String>)>,
        incremental: bool,
        validate_only: bool,
    },
    AllocateProducerIds {
        count: i64,
    },
    RegisterBroker {
        node_id: i32,
        host: String,
        port: u16,
        rpc: String,
        cores: u16,
        dedicated: bool,
    },
    BrokerHeartbeat {
        node_id: i32,
    },
    LeaderChanged {
        group: u64,
        leader: i32,
        epoch: i32,
    },
}

/// A Kafka error on the wire between brokers.
#[derive(Serialize, Deserialize)]
struct WireError {
    code: i16,
    message: String,
}

impl From<KafkaError> for WireError {
    fn from(e: KafkaError) -> WireError {
        WireError {
            code: e.code(),
            message: e.message,
        }
    }
}

impl From<WireError> for KafkaError {
    fn from(e: WireError) -> KafkaError {
        let error =
            ResponseError::try_from_code(e.code).unwrap_or(ResponseError::UnknownServerError);
        KafkaError::new(error, e.message)
    }
}

type Wire<T> = Result<T, WireError>;

/// The active controller's answer: the result and how far its metadata log was applied.
#[derive(Serialize, Deserialize)]
struct ForwardReply {
    applied: i64,
    body: Wire<ReplyBody>,
}

#[derive(Serialize, Deserialize)]
enum ReplyBody {
    Topics(Vec<Wire<(i32, Uuid)>>),
    Deleted(Vec<Wire<Uuid>>),
    Unit(Wire<()>),
    Ids(Wire<(i64, i64)>),
}

fn wire<T>(r: Result<T, KafkaError>) -> Wire<T> {
    r.map_err(WireError::from)
}

fn unwire<T>(r: Wire<T>) -> Result<T, KafkaError> {
    r.map_err(KafkaError::from)
}

fn not_controller(why: impl Into<String>) -> KafkaError {
    KafkaError::new(ResponseError::NotController, why)
}

impl Controller {
    /// Opens the metadata log and replays it into an image. In a cluster the log is the
    /// metadata Raft group's, and only its committed part is replayed; the apply task
    /// ([`Controller::run_apply`]) takes the rest as it commits.
    pub async fn open(shard: &Shard) -> Result<Controller, String> {
        let dir = shard.config.data_dir.join(METADATA_DIR);
        let log = Rc::new(
            Log::open(
                &dir,
                LogConfig::default(),
                shard.config.storage.clone(),
                shard.cache.clone(),
                Rc::new(ringlog_storage::SystemClock),
            )
            .await
            .map_err(|e| format!("opening metadata log: {e}"))?,
        );
        let raft = match (&shard.config.cluster, &shard.transport) {
            (Some(cluster), Some(transport)) => {
                let group = RaftGroup::open(
                    crate::cluster::METADATA_GROUP,
                    METADATA_DIR.to_string(),
                    log.clone(),
                    dir.join("raft_state"),
                    &cluster.controller_voters,
                    &cluster.controller_learners(),
                    transport.clone(),
                    Rc::new(Notify::default()),
                )
                .await?;
                shard
                    .raft_groups
                    .borrow_mut()
                    .insert(crate::cluster::METADATA_GROUP, group.clone());
                Some(MetaRaft {
                    group,
                    applied: Cell::new(Offset(0)),
                    applied_changed: Rc::new(Notify::default()),
                    cluster: cluster.clone(),
                    timeout: Duration::from_millis(
                        shard.config.limits.controller_request_timeout_ms,
                    ),
                    heard: Default::default(),
                    heard_term: Cell::new(0),
                    session_timeout: Duration::from_millis(
                        shard.config.limits.broker_session_timeout_ms,
                    ),
                })
            }
            _ => None,
        };
        let end = match &raft {
            Some(r) => r.group.high_watermark(),
            None => log.end_offset(),
        };
        let (image, at) = replay(&log, MetadataImage::default(), log.start_offset(), end)
            .await
            .map_err(|e| e.message)?;
        if let Some(r) = &raft {
            r.applied.set(at);
        }
        let c = Controller {
            log,
            image: std::cell::RefCell::new(Arc::new(image)),
            one_change: LocalSemaphore::new(1),
            raft,
        };
        if c.raft.is_none() && c.image().cluster_id.is_empty() {
            c.append(&[MetadataRecord::ClusterIdSet {
                cluster_id: new_cluster_id(),
            }])
            .await
            .map_err(|e| e.message)?;
        }
        tracing::info!(topics = c.image().topics.len(), records = %at, "metadata log replayed");
        Ok(c)
    }

    /// The apply task of a cluster broker (core 0): applies every committed record of the
    /// metadata log in order and broadcasts the new image to every core. The active
    /// controller also writes the cluster id once. Returns at shutdown.
    pub async fn run_apply(self: Rc<Self>, shard: Rc<Shard>) {
        let Some(r) = &self.raft else { return };
        let mut cluster_id_term = 0;
        let mut fenced_check = Instant::now();
        while !crate::shard::runtime::stopping() {
            if fenced_check.elapsed() >= Duration::from_millis(crate::cluster::BROKER_HEARTBEAT_MS)
            {
                fenced_check = Instant::now();
                let (c, s) = (self.clone(), shard.clone());
                // Fencing commits through this task's own apply: run it beside the loop.
                glommio::spawn_local(async move { c.fence_silent_brokers(&s).await }).detach();
            }
            let seen = r.group.changed.generation();
            let hw = r.group.high_watermark();
            let at = r.applied.get();
            if hw > at {
                match replay(&self.log, (*self.image()).clone(), at, hw).await {
                    Ok((image, next)) => {
                        let image = Arc::new(image);
                        *self.image.borrow_mut() = image.clone();
                        broadcast(&shard, image).await;
                        r.applied.set(next.max(at));
                        r.applied_changed.notify();
                    }
                    Err(e) => crate::cluster::fail_stop(&format!(
                        "applying the metadata log: {}",
                        e.message
                    )),
                }
                continue;
            }
            let term = r.group.term().0;
            if r.group.is_leader() && self.image().cluster_id.is_empty() && cluster_id_term != term
            {
                cluster_id_term = term;
                let b = encode_batch(
                    &[NewRecord {
                        key: None,
                        value: Some(
                            MetadataRecord::ClusterIdSet {
                                cluster_id: new_cluster_id(),
                            }
                            .encode(),
                        ),
                    }],
                    now_ms(),
                );
                if let Err(e) = r.group.propose_built(b) {
                    tracing::warn!(error = %e.message, "proposing the cluster id");
                }
            }
            let timer = glommio::timer::sleep(Duration::from_millis(100));
            futures::pin_mut!(timer);
            let changed = r.group.changed.wait(seen);
            futures::pin_mut!(changed);
            futures::future::select(timer, changed).await;
        }
    }

    /// Registers this broker (its Kafka and RPC addresses) in the metadata log, through the
    /// active controller; a registration also ends a fence. Nothing is written when the log
    /// already says the same.
    #[allow(clippy::too_many_arguments)]
    pub async fn register_broker(
        &self,
        shard: &Rc<Shard>,
        node_id: i32,
        host: String,
        port: u16,
        rpc: String,
        cores: u16,
        dedicated: bool,
    ) -> Result<(), KafkaError> {
        if let Some(to) = self.route()? {
            let op = ControllerOp::RegisterBroker {
                node_id,
                host,
                port,
                rpc,
                cores,
                dedicated,
            };
            return self.forward_unit(shard, to, op).await;
        }
        let _one = self.one_change.acquire(1).await;
        self.heard_now(node_id);
        let known = self.image().brokers.get(&node_id).cloned();
        if known.is_some_and(|b| {
            b.host == host
                && b.port == port
                && b.rpc == rpc
                && b.cores == cores
                && b.dedicated == dedicated
                && !b.fenced
        }) {
            return Ok(());
        }
        let rec = MetadataRecord::BrokerRegistered {
            node_id,
            host,
            port,
            rpc,
            cores,
            dedicated,
        };
        self.commit(shard, vec![rec]).await
    }

    /// A broker's liveness heartbeat (every `BROKER_HEARTBEAT_MS`), answered by the active
    /// controller; a fenced broker that is heard again is unfenced.
    pub async fn broker_heartbeat(
        &self,
        shard: &Rc<Shard>,
        node_id: i32,
    ) -> Result<(), KafkaError> {
        if let Some(to) = self.route()? {
            let op = ControllerOp::BrokerHeartbeat { node_id };
            return self.forward_unit(shard, to, op).await;
        }
        self.heard_now(node_id);
        if self.image().brokers.get(&node_id).is_some_and(|b| b.fenced) {
            let _one = self.one_change.acquire(1).await;
            if self.image().brokers.get(&node_id).is_some_and(|b| b.fenced) {
                self.commit(shard, vec![MetadataRecord::BrokerUnfenced { node_id }])
                    .await?;
            }
        }
        Ok(())
    }

    /// A partition leader reports its election (once per term). Written unless the log
    /// already has this or a later epoch for the group.
    pub async fn report_leader(
        &self,
        shard: &Rc<Shard>,
        group: u64,
        leader: i32,
        epoch: i32,
    ) -> Result<(), KafkaError> {
        if let Some(to) = self.route()? {
            let op = ControllerOp::LeaderChanged {
                group,
                leader,
                epoch,
            };
            return self.forward_unit(shard, to, op).await;
        }
        let stale = |img: &MetadataImage| {
            !img.groups.contains_key(&group)
                || img.leaders.get(&group).is_some_and(|(_, e)| *e >= epoch)
        };
        if stale(&self.image()) {
            return Ok(());
        }
        let _one = self.one_change.acquire(1).await;
        if stale(&self.image()) {
            return Ok(());
        }
        let rec = MetadataRecord::PartitionLeaderChanged {
            group,
            leader,
            epoch,
        };
        self.commit(shard, vec![rec]).await
    }

    fn heard_now(&self, node_id: i32) {
        if let Some(r) = &self.raft {
            self.reset_heard_on_new_term(r);
            r.heard.borrow_mut().insert(node_id, Instant::now());
        }
    }

    fn reset_heard_on_new_term(&self, r: &MetaRaft) {
        let term = r.group.term().0;
        if r.heard_term.replace(term) != term {
            // A new active controller knows nothing of the others' heartbeats yet: give
            // every broker a full session from now.
            let now = Instant::now();
            let mut heard = r.heard.borrow_mut();
            heard.clear();
            for id in self.image().brokers.keys() {
                heard.insert(*id, now);
            }
        }
    }

    /// The active controller fences every unfenced broker it has not heard from within the
    /// session timeout (run every heartbeat interval by the apply task).
    async fn fence_silent_brokers(&self, shard: &Rc<Shard>) {
        let Some(r) = &self.raft else { return };
        if !r.group.is_leader() {
            return;
        }
        self.reset_heard_on_new_term(r);
        let me = r.cluster.node_id.0 as i32;
        r.heard.borrow_mut().insert(me, Instant::now());
        let silent: Vec<i32> = {
            let heard = r.heard.borrow();
            self.image()
                .brokers
                .iter()
                .filter(|(id, b)| {
                    !b.fenced
                        && heard
                            .get(*id)
                            .is_none_or(|t| t.elapsed() > r.session_timeout)
                })
                .map(|(id, _)| *id)
                .collect()
        };
        if silent.is_empty() {
            return;
        }
        let _one = self.one_change.acquire(1).await;
        let records: Vec<MetadataRecord> = silent
            .iter()
            .map(|n| MetadataRecord::BrokerFenced { node_id: *n })
            .collect();
        match self.commit(shard, records).await {
            Ok(()) => tracing::info!(brokers = ?silent, "fenced brokers not heard from"),
            Err(e) => tracing::debug!(error = %e.message, "fencing brokers"),
        }
    }

    /// The active controller's node id in a cluster (None: none known now), or this node on
    /// a single broker.
    pub fn active_controller(&self) -> Option<i32> {
        match &self.raft {
            Some(r) => match r.group.leader() {
                0 => None,
                n => i32::try_from(n).ok(),
            },
            None => None,
        }
    }

    /// Where a change must go: `Ok(None)` to run it here, `Ok(Some(node))` to forward it.
    fn route(&self) -> Result<Option<NodeId>, KafkaError> {
        let Some(r) = &self.raft else { return Ok(None) };
        if r.group.is_leader() {
            return Ok(None);
        }
        match r.group.leader() {
            0 => Err(not_controller(
                "no active controller (election in progress)",
            )),
            n if n == r.cluster.node_id.0 => Ok(None),
            n => Ok(Some(NodeId(n))),
        }
    }

    /// [`Controller::forward`] of a change whose answer is only success or an error.
    async fn forward_unit(
        &self,
        shard: &Rc<Shard>,
        to: NodeId,
        op: ControllerOp,
    ) -> Result<(), KafkaError> {
        match self.forward(shard, to, op).await? {
            ReplyBody::Unit(r) => unwire(r),
            _ => Err(unexpected_reply()),
        }
    }

    /// Sends `op` to the active controller `to`, then waits until this broker's image has
    /// applied everything the answer depends on.
    async fn forward(
        &self,
        shard: &Rc<Shard>,
        to: NodeId,
        op: ControllerOp,
    ) -> Result<ReplyBody, KafkaError> {
        let (Some(r), Some(t)) = (&self.raft, &shard.transport) else {
            return Err(not_controller("not in a cluster"));
        };
        let payload = serde_json::to_vec(&op)
            .map_err(|e| KafkaError::new(ResponseError::UnknownServerError, e.to_string()))?;
        let timeout_ms = r.timeout.as_millis() as u64;
        let answer = t
            .request(to, payload, timeout_ms)
            .await
            .map_err(|e| KafkaError::new(ResponseError::RequestTimedOut, e.to_string()))?;
        let reply: ForwardReply = serde_json::from_slice(&answer).map_err(|e| {
            KafkaError::new(
                ResponseError::UnknownServerError,
                format!("bad answer from controller {}: {e}", to.0),
            )
        })?;
        let want = Offset(reply.applied);
        let deadline = Instant::now() + r.timeout;
        if !r
            .applied_changed
            .wait_until(deadline, || r.applied.get() >= want)
            .await
        {
            return Err(KafkaError::new(
                ResponseError::RequestTimedOut,
                "this broker's metadata did not catch up in time",
            ));
        }
        unwire(reply.body)
    }

    /// The current image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Appends and flushes records, then applies them. In a cluster: proposes them and waits
    /// until they are committed and applied (and so broadcast).
    async fn append(&self, records: &[MetadataRecord]) -> Result<Arc<MetadataImage>, KafkaError> {
        if let Some(r) = &self.raft {
            return self.append_replicated(r, records).await;
        }
        let mut next = (*self.image()).clone();
        for r in records {
            let value = r.encode();
            let b = encode_batch(
                &[NewRecord {
                    key: None,
                    value: Some(value),
                }],
                now_ms(),
            );
            self.log.append(b, Term(0)).await?;
            next = next.apply(r);
        }
        self.log.flush().await?;
        let next = Arc::new(next);
        *self.image.borrow_mut() = next.clone();
        Ok(next)
    }

    async fn append_replicated(
        &self,
        r: &MetaRaft,
        records: &[MetadataRecord],
    ) -> Result<Arc<MetadataImage>, KafkaError> {
        let as_not_controller = |e: KafkaError| match e.error {
            ResponseError::NotLeaderOrFollower => not_controller(e.message),
            _ => e,
        };
        let term = r.group.term();
        let mut span = None;
        for rec in records {
            let b = encode_batch(
                &[NewRecord {
                    key: None,
                    value: Some(rec.encode()),
                }],
                now_ms(),
            );
            let (f, l) = r.group.propose_built(b).map_err(as_not_controller)?;
            span = Some((span.map_or(f, |(f0, _)| f0), l));
        }
        let Some((first, last)) = span else {
            return Ok(self.image());
        };
        let deadline = Instant::now() + r.timeout;
        r.group
            .wait_committed(term, first, last, deadline)
            .await
            .map_err(as_not_controller)?;
        if !r
            .applied_changed
            .wait_until(deadline, || r.applied.get() > last)
            .await
        {
            return Err(KafkaError::new(
                ResponseError::RequestTimedOut,
                "metadata change committed but not applied in time",
            ));
        }
        Ok(self.image())
    }

    /// Appends records and makes every core apply the new image before returning.
    async fn commit(
        &self,
        shard: &Rc<Shard>,
        records: Vec<MetadataRecord>,
    ) -> Result<(), KafkaError> {
        if records.is_empty() {
            return Ok(());
        }
        let image = self.append(&records).await?;
        if self.raft.is_none() {
            // In a cluster the apply task has broadcast it already.
            broadcast(shard, image).await;
        }
        Ok(())
    }

    /// Creates topics. Returns one result per request, in order.
    pub async fn create_topics(
        &self,
        shard: &Rc<Shard>,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<(i32, Uuid), KafkaError>> {
        let n = topics.len();
        let all = |e: KafkaError| (0..n).map(|_| Err(e.clone())).collect();
        match self.route() {
            Err(e) => return all(e),
            Ok(Some(to)) => {
                let op = ControllerOp::CreateTopics {
                    topics,
                    validate_only,
                };
                return match self.forward(shard, to, op).await {
                    Ok(ReplyBody::Topics(v)) => v.into_iter().map(unwire).collect(),
                    Ok(_) => all(unexpected_reply()),
                    Err(e) => all(e),
                };
            }
            Ok(None) => {}
        }
        let _one = self.one_change.acquire(1).await;
        let mut image = (*self.image()).clone();
        let mut records = Vec::new();
        let mut results = Vec::new();
        for t in topics {
            let r = self.plan_topic(shard, &image, t);
            if let Ok((rec, count, id)) = r {
                image = image.apply(&rec);
                records.push(rec);
                results.push(Ok((count, id)));
            } else if let Err(e) = r {
                results.push(Err(e));
            }
        }
        if validate_only {
            return results;
        }
        if let Err(e) = self.commit(shard, records).await {
            return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
        }
        results
    }

    fn plan_topic(
        &self,
        shard: &Shard,
        image: &MetadataImage,
        t: NewTopic,
    ) -> Result<(MetadataRecord, i32, Uuid), KafkaError> {
        validate_topic_name(&t.name)?;
        if image.topics.contains_key(&t.name) {
            return Err(KafkaError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {} already exists", t.name),
            ));
        }
        if image.topics.len() >= shard.config.limits.topics_max {
            return Err(KafkaError::new(
                ResponseError::PolicyViolation,
                "too many topics",
            ));
        }
        let count = if t.partitions == -1 {
            shard.config.default_partitions
        } else {
            t.partitions
        };
        if count < 1 || count > shard.config.limits.partitions_per_topic_max {
            return Err(KafkaError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "partition count {count} is outside 1..={}",
                    shard.config.limits.partitions_per_topic_max
                ),
            ));
        }
        let replication = self.replication(t.replication_factor)?;
        validate_configs(&shard.config.log_defaults, &t.configs)?;
        let partitions = place(
            image,
            shard.shard_count,
            count as usize,
            replication.as_ref(),
        );
        let id = Uuid::new_v4();
        Ok((
            MetadataRecord::TopicCreated {
                name: t.name,
                id,
                partitions,
                configs: t.configs,
            },
            count,
            id,
        ))
    }

    /// Deletes topics by name.
    pub async fn delete_topics(
        &self,
        shard: &Rc<Shard>,
        names: Vec<String>,
    ) -> Vec<Result<Uuid, KafkaError>> {
        let n = names.len();
        let all = |e: KafkaError| (0..n).map(|_| Err(e.clone())).collect();
        match self.route() {
            Err(e) => return all(e),
            Ok(Some(to)) => {
                return match self
                    .forward(shard, to, ControllerOp::DeleteTopics { names })
                    .await
                {
                    Ok(ReplyBody::Deleted(v)) => v.into_iter().map(unwire).collect(),
                    Ok(_) => all(unexpected_reply()),
                    Err(e) => all(e),
                };
            }
            Ok(None) => {}
        }
        let _one = self.one_change.acquire(1).await;
        let image = self.image();
        let mut records = Vec::new();
        let mut results = Vec::new();
        for name in names {
            match image.topics.get(&name) {
                Some(t)
                    if !records.contains(&MetadataRecord::TopicDeleted { name: name.clone() }) =>
                {
                    records.push(MetadataRecord::TopicDeleted { name });
                    results.push(Ok(t.id));
                }
                _ => results.push(Err(KafkaError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {name} does not exist"),
                ))),
            }
        }
        if let Err(e) = self.commit(shard, records).await {
            return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
        }
        results
    }

    /// Grows a topic to `count` partitions.
    pub async fn create_partitions(
        &self,
        shard: &Rc<Shard>,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), KafkaError> {
        if let Some(to) = self.route()? {
            let op = ControllerOp::CreatePartitions {
                name: name.to_string(),
                count,
                validate_only,
            };
            return self.forward_unit(shard, to, op).await;
        }
        let _one = self.one_change.acquire(1).await;
        let image = self.image();
        let t = topic_or_unknown(&image, name)?;
        let have = t.partitions.len() as i32;
        if count <= have || count > shard.config.limits.partitions_per_topic_max {
            return Err(KafkaError::new(
                ResponseError::InvalidPartitions,
                format!("topic {name} has {have} partitions; {count} is not a valid new count"),
            ));
        }
        let rf = t.partitions.first().map_or(1, |p| p.replicas.len().max(1)) as i16;
        let replication = self.replication(rf)?;
        let partitions = place(
            &image,
            shard.shard_count,
            (count - have) as usize,
            replication.as_ref(),
        );
        if validate_only {
            return Ok(());
        }
        self.commit(
            shard,
            vec![MetadataRecord::PartitionsAdded {
                name: name.to_string(),
                partitions,
            }],
        )
        .await
    }

    /// Replaces (`incremental` false) or edits a topic's config overrides. In `changes`, a
    /// `None` value deletes the override.
    pub async fn set_configs(
        &self,
        shard: &Rc<Shard>,
        name: &str,
        changes: Vec<(String, Option<String>)>,
        incremental: bool,
        validate_only: bool,
    ) -> Result<(), KafkaError> {
        if let Some(to) = self.route()? {
            let op = ControllerOp::SetConfigs {
                name: name.to_string(),
                changes,
                incremental,
                validate_only,
            };
            return self.forward_unit(shard, to, op).await;
        }
        let _one = self.one_change.acquire(1).await;
        let image = self.image();
        let t = topic_or_unknown(&image, name)?;
        let mut configs = if incremental {
            t.configs.clone()
        } else {
            BTreeMap::new()
        };
        for (k, v) in changes {
            match v {
                Some(v) => configs.insert(k, v),
                None => configs.remove(&k),
            };
        }
        validate_configs(&shard.config.log_defaults, &configs)?;
        if validate_only {
            return Ok(());
        }
        self.commit(
            shard,
            vec![MetadataRecord::ConfigsSet {
                name: name.to_string(),
                configs,
            }],
        )
        .await
    }

    /// Hands out `count` producer ids, durably: a restart continues after them.
    pub async fn allocate_producer_ids(
        &self,
        shard: &Rc<Shard>,
        count: i64,
    ) -> Result<std::ops::Range<i64>, KafkaError> {
        assert!(count > 0);
        if let Some(to) = self.route()? {
            let op = ControllerOp::AllocateProducerIds { count };
            return match self.forward(shard, to, op).await? {
                ReplyBody::Ids(r) => unwire(r).map(|(a, b)| a..b),
                _ => Err(unexpected_reply()),
            };
        }
        let _one = self.one_change.acquire(1).await;
        let start = self.image().next_producer_id;
        let end = start.checked_add(count).ok_or_else(|| {
            KafkaError::new(
                kafka_protocol::error::ResponseError::UnknownServerError,
                "producer ids exhausted",
            )
        })?;
        self.commit(shard, vec![MetadataRecord::ProducerIdsAllocated { end }])
            .await?;
        Ok(start..end)
    }

    /// The brokers and replication factor of new partitions (`None` on a single node, where
    /// partitions are not replicated). -1 asks for the default: 3, or every broker of a
    /// smaller cluster.
    fn replication(&self, asked: i16) -> Result<Option<(Vec<u64>, usize)>, KafkaError> {
        let Some(r) = &self.raft else {
            if asked != -1 && asked != 1 {
                return Err(KafkaError::new(
                    ResponseError::InvalidReplicationFactor,
                    format!("replication factor {asked} is impossible on a single broker"),
                ));
            }
            return Ok(None);
        };
        let brokers: Vec<u64> = r.cluster.peers.keys().map(|n| n.0).collect();
        let rf = if asked == -1 {
            brokers.len().min(3)
        } else {
            usize::try_from(asked).unwrap_or(0)
        };
        if rf == 0 || rf > brokers.len() {
            return Err(KafkaError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {asked} is impossible with {} brokers",
                    brokers.len()
                ),
            ));
        }
        Ok(Some((brokers, rf)))
    }

    /// The metadata log's end offset (the image's position in the log).
    pub fn log_end(&self) -> Offset {
        self.log.end_offset()
    }
}

/// Runs a change forwarded by another broker (core 0 of the active controller) and encodes
/// the answer. A broker that is no longer the active controller answers NOT_CONTROLLER rather
/// than forwarding again (the caller retries with a fresh view).
pub async fn serve_forwarded(shard: &Rc<Shard>, payload: &[u8]) -> Vec<u8> {
    let controller = shard.controller.borrow().clone();
    let reply = match (controller, serde_json::from_slice::<ControllerOp>(payload)) {
        (None, _) => ForwardReply {
            applied: -1,
            body: Err(not_controller("no controller on this core").into()),
        },
        (Some(_), Err(e)) => ForwardReply {
            applied: -1,
            body: Err(KafkaError::new(ResponseError::InvalidRequest, e.to_string()).into()),
        },
        (Some(c), Ok(op)) => {
            let body = match c.route() {
                Ok(None) => Ok(match op {
                    ControllerOp::CreateTopics {
                        topics,
                        validate_only,
                    } => ReplyBody::Topics(
                        c.create_topics(shard, topics, validate_only)
                            .await
                            .into_iter()
                            .map(wire)
                            .collect(),
                    ),
                    ControllerOp::DeleteTopics { names } => ReplyBody::Deleted(
                        c.delete_topics(shard, names)
                            .await
                            .into_iter()
                            .map(wire)
                            .collect(),
                    ),
                    ControllerOp::CreatePartitions {
                        name,
                        count,
                        validate_only,
                    } => ReplyBody::Unit(wire(
                        c.create_partitions(shard, &name, count, validate_only)
                            .await,
                    )),
                    ControllerOp::SetConfigs {
                        name,
                        changes,
                        incremental,
                        validate_only,
                    } => ReplyBody::Unit(wire(
                        c.set_configs(shard, &name, changes, incremental, validate_only)
                            .await,
                    )),
                    ControllerOp::AllocateProducerIds { count } if count > 0 => {
                        ReplyBody::Ids(wire(
                            c.allocate_producer_ids(shard, count)
                                .await
                                .map(|r| (r.start, r.end)),
                        ))
                    }
                    ControllerOp::RegisterBroker {
                        node_id,
                        host,
                        port,
                        rpc,
                        cores,
                        dedicated,
                    } => ReplyBody::Unit(wire(
                        c.register_broker(shard, node_id, host, port, rpc, cores, dedicated)
                            .await,
                    )),
                    ControllerOp::BrokerHeartbeat { node_id } => {
                        ReplyBody::Unit(wire(c.broker_heartbeat(shard, node_id).await))
                    }
                    ControllerOp::LeaderChanged {
                        group,
                        leader,
                        epoch,
                    } => ReplyBody::Unit(wire(c.report_leader(shard, group, leader, epoch).await)),
                    ControllerOp::AllocateProducerIds { count } => ReplyBody::Ids(Err(
                        KafkaError::new(ResponseError::InvalidRequest, format!("count {count}"))
                            .into(),
                    )),
                }),
                Ok(Some(_)) => {
                    Err(not_controller("this broker is no longer the controller").into())
                }
                Err(e) => Err(e.into()),
            };
            let applied = c.raft.as_ref().map_or(-1, |r| r.applied.get().0);
            ForwardReply { applied, body }
        }
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}

fn unexpected_reply() -> KafkaError {
    KafkaError::new(
        ResponseError::UnknownServerError,
        "the controller answered a different request",
    )
}

fn new_cluster_id() -> String {
    let id = Uuid::new_v4().simple().to_string();
    id[..22].to_string()
}

/// Applies the records of `log` in `[from, end)` to `image`; returns the image and where
/// it stopped. Control batches (Raft's no-op entries) carry no record of ours.
async fn replay(
    log: &Log,
    mut image: MetadataImage,
    from: Offset,
    end: Offset,
) -> Result<(MetadataImage, Offset), KafkaError> {
    let mut at = from;
    while at < end {
        let batches = log.read(at, 1 << 20, end).await?;
        if batches.is_empty() {
            break;
        }
        for b in batches {
            let parsed = batch::Batch::parse(b).map_err(|e| {
                KafkaError::new(
                    ResponseError::KafkaStorageError,
                    format!("metadata log: {e}"),
                )
            })?;
            let h = parsed.header();
            at = h.last_offset().plus(1);
            if h.is_control() {
                continue;
            }
            let records = batch::records(&parsed).map_err(|e| {
                KafkaError::new(
                    ResponseError::KafkaStorageError,
                    format!("metadata log: {e}"),
                )
            })?;
            for r in records {
                let value = r.value.unwrap_or_default();
                let record = MetadataRecord::decode(&value).map_err(|e| {
                    KafkaError::new(
                        ResponseError::KafkaStorageError,
                        format!("metadata record at {at}: {e}"),
                    )
                })?;
                image = image.apply(&record);
            }
        }
    }
    Ok((image, at))
}

/// Sends `image` to every core and waits until each has applied it.
pub async fn broadcast(shard: &Rc<Shard>, image: Arc<MetadataImage>) {
    let mut waits = Vec::new();
    for i in 0..shard.shard_count {
        let img = image.clone();
        waits.push(shard.invoke_on(ShardId(i as u16), move |s| async move {
            crate::shard::runtime::apply_image(&s, img).await;
        }));
    }
    for w in futures::future::join_all(waits).await {
        if let Err(e) = w {
            tracing::warn!(error = %e, "metadata broadcast");
        }
    }
}

/// The topic, or UNKNOWN_TOPIC_OR_PARTITION.
fn topic_or_unknown<'a>(
    image: &'a MetadataImage,
    name: &str,
) -> Result<&'a Arc<super::TopicMeta>, KafkaError> {
    image.topics.get(name).ok_or_else(|| {
        KafkaError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )
    })
}

/// Places `count` new partitions: each on the least-loaded core and, when replicated, on the
/// `rf` brokers holding the fewest replicas (ties to the lowest id), each with a new Raft
/// group id.
fn place(
    image: &MetadataImage,
    shard_count: usize,
    count: usize,
    replication: Option<&(Vec<u64>, usize)>,
) -> Vec<PartitionMeta> {
    let mut load = image.load_per_shard(shard_count);
    let mut replicas_on: BTreeMap<u64, usize> = BTreeMap::new();
    if let Some((brokers, _)) = replication {
        for b in brokers {
            replicas_on.insert(*b, 0);
        }
        for t in image.topics.values() {
            for p in &t.partitions {
                for r in &p.replicas {
                    if let Some(n) = replicas_on.get_mut(r) {
                        *n += 1;
                    }
                }
            }
        }
    }
    let mut group = image.next_group.max(1);
    (0..count)
        .map(|_| {
            let (i, _) = load
                .iter()
                .enumerate()
                .min_by_key(|(i, l)| (**l, *i))
                .expect("at least one core");
            load[i] += 1;
            let (replicas, g) = match replication {
                Some((_, rf)) => {
                    let mut by_load: Vec<(usize, u64)> =
                        replicas_on.iter().map(|(b, n)| (*n, *b)).collect();
                    by_load.sort();
                    let chosen: Vec<u64> = by_load.iter().take(*rf).map(|(_, b)| *b).collect();
                    for b in &chosen {
                        if let Some(n) = replicas_on.get_mut(b) {
                            *n += 1;
                        }
                    }
                    group += 1;
                    (chosen, group - 1)
                }
                None => (Vec::new(), 0),
            };
            PartitionMeta {
                shard: ShardId(i as u16),
                leader_epoch: 0,
                replicas,
                group: g,
            }
        })
        .collect()
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), KafkaError> {
    let bad = |why: &str| {
        Err(KafkaError::new(
            ResponseError::InvalidTopicException,
            format!("topic name {name:?} {why}"),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("is not allowed");
    }
    if name.len() > 249 {
        return bad("is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("has characters outside [a-zA-Z0-9._-]");
    }
    if name == super::controller::METADATA_DIR.trim_end_matches("-0") {
        return bad("is reserved");
    }
    Ok(())
}

fn validate_configs(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<(), KafkaError> {
    let mut c = defaults.clone();
    for (k, v) in configs {
        c.set(k, v)
            .map_err(|e| KafkaError::new(ResponseError::InvalidConfig, e.to_string()))?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
