//! One handler per Kafka API. Each decodes nothing itself (the connection did), routes
//! partitions to their owner cores, and builds the typed response.

pub mod admin;
pub mod api_versions;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod producer_id;

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::Message;
use uuid::Uuid;

use crate::metadata::TopicMeta;
use crate::shard::Shard;

/// What a handler answers.
pub enum Reply {
    /// Send this response.
    Response(Box<ResponseKind>),
    /// Send nothing (acks=0 produce).
    None,
    /// Close the connection.
    Close(String),
}

/// Wraps a response.
pub fn respond(r: ResponseKind) -> Reply {
    Reply::Response(Box::new(r))
}

/// The versions this broker serves for an API, or `None` if it does not serve the API.
/// Ranges are what librdkafka 2.x, kafka-python and the Java client negotiate, clipped to what
/// the codec supports.
pub fn supported_versions(api: ApiKey) -> Option<(i16, i16)> {
    use kafka_protocol::messages::*;
    fn clip<M: Message>(min: i16, max: i16) -> Option<(i16, i16)> {
        Some((min.max(M::VERSIONS.min), max.min(M::VERSIONS.max)))
    }
    match api {
        ApiKey::Produce => clip::<ProduceRequest>(3, 13),
        ApiKey::Fetch => clip::<FetchRequest>(4, 16),
        ApiKey::ListOffsets => clip::<ListOffsetsRequest>(1, 9),
        ApiKey::Metadata => clip::<MetadataRequest>(0, 13),
        ApiKey::ApiVersions => clip::<ApiVersionsRequest>(0, 3),
        ApiKey::CreateTopics => clip::<CreateTopicsRequest>(2, 7),
        ApiKey::DeleteTopics => clip::<DeleteTopicsRequest>(1, 6),
        ApiKey::CreatePartitions => clip::<CreatePartitionsRequest>(0, 3),
        ApiKey::DescribeConfigs => clip::<DescribeConfigsRequest>(1, 4),
        ApiKey::AlterConfigs => clip::<AlterConfigsRequest>(0, 2),
        ApiKey::IncrementalAlterConfigs => clip::<IncrementalAlterConfigsRequest>(0, 1),
        ApiKey::DescribeCluster => clip::<DescribeClusterRequest>(0, 1),
        ApiKey::InitProducerId => clip::<InitProducerIdRequest>(0, 5),
        ApiKey::FindCoordinator => clip::<FindCoordinatorRequest>(0, 4),
        ApiKey::JoinGroup => clip::<JoinGroupRequest>(0, 9),
        ApiKey::SyncGroup => clip::<SyncGroupRequest>(0, 5),
        ApiKey::Heartbeat => clip::<HeartbeatRequest>(0, 4),
        ApiKey::LeaveGroup => clip::<LeaveGroupRequest>(0, 5),
        ApiKey::OffsetCommit => clip::<OffsetCommitRequest>(2, 8),
        ApiKey::OffsetFetch => clip::<OffsetFetchRequest>(1, 8),
        ApiKey::ListGroups => clip::<ListGroupsRequest>(0, 4),
        ApiKey::DescribeGroups => clip::<DescribeGroupsRequest>(0, 5),
        ApiKey::DeleteGroups => clip::<DeleteGroupsRequest>(0, 2),
        ApiKey::OffsetDelete => clip::<OffsetDeleteRequest>(0, 0),
        ApiKey::OffsetForLeaderEpoch => clip::<OffsetForLeaderEpochRequest>(2, 4),
        _ => None,
    }
}

/// Tells the connection that a request's order-sensitive part is done, so it may start the
/// next request. Produce fires it once every batch of the request has its offsets (phase one
/// of a two-phase produce); every other API fires it at once. Dropping it also fires it.
pub struct Dispatched(Option<futures::channel::oneshot::Sender<()>>);

impl Dispatched {
    /// A signal and the receiver the connection waits on.
    pub fn new() -> (Dispatched, futures::channel::oneshot::Receiver<()>) {
        let (tx, rx) = futures::channel::oneshot::channel();
        (Dispatched(Some(tx)), rx)
    }

    /// Fires the signal.
    pub fn fire(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Runs the handler for a decoded request.
pub async fn handle(
    shard: &Rc<Shard>,
    header: &RequestHeader,
    request: RequestKind,
    produce_records: Vec<Option<bytes::BytesMut>>,
    mut dispatched: Dispatched,
) -> Reply {
    let version = header.request_api_version;
    if !matches!(request, RequestKind::Produce(_)) {
        dispatched.fire();
    }
    match request {
        RequestKind::ApiVersions(_) => respond(ResponseKind::ApiVersions(api_versions::handle())),
        RequestKind::Metadata(r) => respond(ResponseKind::Metadata(
            metadata::handle(shard, r, version).await,
        )),
        RequestKind::Produce(r) => {
            produce::handle(shard, r, produce_records, version, dispatched).await
        }
        RequestKind::Fetch(r) => fetch::handle(shard, r, version).await,
        RequestKind::ListOffsets(r) => respond(ResponseKind::ListOffsets(
            list_offsets::handle(shard, r, version).await,
        )),
        RequestKind::CreateTopics(r) => respond(ResponseKind::CreateTopics(
            admin::create_topics(shard, r).await,
        )),
        RequestKind::DeleteTopics(r) => respond(ResponseKind::DeleteTopics(
            admin::delete_topics(shard, r).await,
        )),
        RequestKind::CreatePartitions(r) => respond(ResponseKind::CreatePartitions(
            admin::create_partitions(shard, r).await,
        )),
        RequestKind::DescribeConfigs(r) => respond(ResponseKind::DescribeConfigs(
            admin::describe_configs(shard, r),
        )),
        RequestKind::AlterConfigs(r) => respond(ResponseKind::AlterConfigs(
            admin::alter_configs(shard, r).await,
        )),
        RequestKind::IncrementalAlterConfigs(r) => respond(ResponseKind::IncrementalAlterConfigs(
            admin::incremental_alter_configs(shard, r).await,
        )),
        RequestKind::DescribeCluster(r) => respond(ResponseKind::DescribeCluster(
            admin::describe_cluster(shard, r),
        )),
        RequestKind::InitProducerId(r) => respond(ResponseKind::InitProducerId(
            producer_id::handle(shard, r).await,
        )),
        RequestKind::FindCoordinator(r) => respond(ResponseKind::FindCoordinator(
            groups::find_coordinator(shard, r, version).await,
        )),
        RequestKind::JoinGroup(r) => {
            let client = header
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            respond(ResponseKind::JoinGroup(
                groups::join_group(shard, r, version, client).await,
            ))
        }
        RequestKind::SyncGroup(r) => {
            respond(ResponseKind::SyncGroup(groups::sync_group(shard, r).await))
        }
        RequestKind::Heartbeat(r) => {
            respond(ResponseKind::Heartbeat(groups::heartbeat(shard, r).await))
        }
        RequestKind::LeaveGroup(r) => respond(ResponseKind::LeaveGroup(
            groups::leave_group(shard, r, version).await,
        )),
        RequestKind::OffsetCommit(r) => respond(ResponseKind::OffsetCommit(
            groups::offset_commit(shard, r).await,
        )),
        RequestKind::OffsetFetch(r) => respond(ResponseKind::OffsetFetch(
            groups::offset_fetch(shard, r, version).await,
        )),
        RequestKind::ListGroups(r) => respond(ResponseKind::ListGroups(
            groups::list_groups(shard, r).await,
        )),
        RequestKind::DescribeGroups(r) => respond(ResponseKind::DescribeGroups(
            groups::describe_groups(shard, r).await,
        )),
        RequestKind::DeleteGroups(r) => respond(ResponseKind::DeleteGroups(
            groups::delete_groups(shard, r).await,
        )),
        RequestKind::OffsetDelete(r) => respond(ResponseKind::OffsetDelete(
            groups::offset_delete(shard, r).await,
        )),
        RequestKind::OffsetForLeaderEpoch(r) => respond(ResponseKind::OffsetForLeaderEpoch(
            offset_for_leader_epoch::handle(shard, r).await,
        )),
        other => Reply::Close(format!("no handler for {other:?}")),
    }
}

/// Looks a topic up by name, or by id when the name is empty (Produce/Fetch v13+).
pub fn find_topic(shard: &Shard, name: &str, id: Uuid) -> Option<Arc<TopicMeta>> {
    let img = shard.image();
    if !name.is_empty() {
        return img.topics.get(name).cloned();
    }
    let name = img.ids.get(&id)?;
    img.topics.get(name).cloned()
}

/// Runs `f` with the partition on the core that owns it; UNKNOWN_TOPIC_OR_PARTITION when the
/// topic or partition does not exist, NOT_LEADER_OR_FOLLOWER when this broker does not hold
/// it (or the owner core is gone).
pub async fn on_partition<T, F, Fut>(
    shard: &Rc<Shard>,
    meta: Option<Arc<TopicMeta>>,
    name: &str,
    partition: i32,
    f: F,
) -> Result<T, crate::kafka::errors::KafkaError>
where
    T: Send + 'static,
    F: FnOnce(Rc<crate::partition::Partition>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, crate::kafka::errors::KafkaError>> + 'static,
{
    use crate::kafka::errors::KafkaError;
    use kafka_protocol::error::ResponseError;
    let meta = meta.ok_or_else(|| KafkaError::unknown_partition(name, partition))?;
    let owner = usize::try_from(partition)
        .ok()
        .and_then(|i| meta.partitions.get(i))
        .map(|p| shard.owner_core(p))
        .ok_or_else(|| KafkaError::unknown_partition(name, partition))?;
    let topic = meta.name.clone();
    shard
        .invoke_on(owner, move |s| async move {
            let p = s.partition(&topic, partition).ok_or_else(|| {
                KafkaError::new(
                    ResponseError::NotLeaderOrFollower,
                    format!("{topic}-{partition} is not on this broker"),
                )
            })?;
            f(p).await
        })
        .await
        .map_err(|e| KafkaError::new(ResponseError::NotLeaderOrFollower, e.to_string()))?
}
