//! One handler per Kafka API. Each decodes nothing itself (the connection did), routes
//! partitions to their owner cores, and builds the typed response.

pub mod admin;
pub mod api_versions;
pub mod fetch;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

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
        RequestKind::Produce(r) => produce::handle(shard, r, version, dispatched).await,
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
