//! Metadata: brokers, topics, partitions and their leaders; auto topic creation.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::admin::create_topics_via_controller;
use crate::metadata::controller::NewTopic;
use crate::metadata::TopicMeta;
use crate::shard::Shard;

/// Handles a Metadata request.
pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let auto_create =
        shard.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    // Without ACLs every operation is allowed; report that when asked (v8+), else Kafka's
    // "not requested" value.
    let topic_ops = if version >= 8 && req.include_topic_authorized_operations {
        TOPIC_OPERATIONS
    } else {
        i32::MIN
    };
    let cluster_ops = if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        i32::MIN
    };
    let node = BrokerId(shard.config.node_id);
    // Which topics: all (None), or those named (by name or id).
    let wanted: Option<Vec<(Option<String>, uuid::Uuid)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    });
    if auto_create {
        if let Some(w) = &wanted {
            let img = shard.image();
            let missing: Vec<NewTopic> = w
                .iter()
                .filter_map(|(n, _)| n.clone())
                .filter(|n| !img.topics.contains_key(n) && !n.is_empty())
                .filter(|n| crate::metadata::controller::validate_topic_name(n).is_ok())
                .map(|name| NewTopic {
                    name,
                    partitions: -1,
                    replication_factor: -1,
                    configs: Default::default(),
                })
                .collect();
            if !missing.is_empty() {
                for r in create_topics_via_controller(shard, missing, false).await {
                    if let Err(e) = r {
                        if e.error != ResponseError::TopicAlreadyExists {
                            tracing::warn!(error = %e.message, "auto topic creation");
                        }
                    }
                }
            }
        }
    }
    let img = shard.image();
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => img
            .topics
            .values()
            .map(|t| topic_entry(t, node, topic_ops))
            .collect(),
        Some(w) => w
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(n) => img.topics.get(n).cloned(),
                    None => img.ids.get(&id).and_then(|n| img.topics.get(n).cloned()),
                };
                match found {
                    Some(t) => topic_entry(&t, node, topic_ops),
                    None => {
                        let code = match &name {
                            Some(n)
                                if crate::metadata::controller::validate_topic_name(n).is_err() =>
                            {
                                ResponseError::InvalidTopicException
                            }
                            Some(_) => ResponseError::UnknownTopicOrPartition,
                            None => ResponseError::UnknownTopicId,
                        };
                        MetadataResponseTopic::default()
                            .with_error_code(code.code())
                            .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                            .with_topic_id(id)
                    }
                }
            })
            .collect(),
    };
    let (host, port) = &shard.advertised;
    let mut brokers = vec![MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(StrBytes::from_string(host.clone()))
        .with_port(*port as i32)];
    let mut controller = node;
    let mut topics = topics;
    if shard.config.cluster.is_some() {
        // The live brokers are the registered ones the active controller has not fenced.
        let mut up: Vec<i32> = vec![node.0];
        for (id, b) in &img.brokers {
            if b.fenced || *id == node.0 {
                continue;
            }
            up.push(*id);
            brokers.push(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(*id))
                    .with_host(StrBytes::from_string(b.host.clone()))
                    .with_port(b.port as i32),
            );
        }
        controller = BrokerId(
            shard
                .invoke_on(crate::shard::ShardId(0), |s| async move {
                    s.controller
                        .borrow()
                        .as_ref()
                        .and_then(|c| c.active_controller())
                        .unwrap_or(-1)
                })
                .await
                .unwrap_or(-1),
        );
        let leaders = crate::cluster::partition_leaders(shard).await;
        fill_cluster_leaders(&mut topics, &img, &leaders, &up);
    }
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(img.cluster_id.clone())))
        .with_controller_id(controller)
        .with_topics(topics)
        .with_cluster_authorized_operations(cluster_ops)
}

/// Replicated partitions: the Raft leader as the partition leader (LEADER_NOT_AVAILABLE when
/// this broker knows none that is up), the replicas, and as in-sync the replicas that are up.
fn fill_cluster_leaders(
    topics: &mut [MetadataResponseTopic],
    img: &crate::metadata::MetadataImage,
    leaders: &std::collections::HashMap<(String, i32), (u64, i32)>,
    up: &[i32],
) {
    for t in topics.iter_mut() {
        let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        let Some(meta) = img.topics.get(&name) else {
            continue;
        };
        for p in t.partitions.iter_mut() {
            let Some(pm) = usize::try_from(p.partition_index)
                .ok()
                .and_then(|i| meta.partitions.get(i))
            else {
                continue;
            };
            if !pm.is_replicated() {
                continue;
            }
            let replicas: Vec<BrokerId> = pm.replicas.iter().map(|r| BrokerId(*r as i32)).collect();
            let isr: Vec<BrokerId> = replicas
                .iter()
                .copied()
                .filter(|r| up.contains(&r.0))
                .collect();
            p.replica_nodes = replicas;
            p.isr_nodes = isr;
            match leaders.get(&(name.clone(), p.partition_index)) {
                Some((leader, epoch)) if *leader != 0 && up.contains(&(*leader as i32)) => {
                    p.leader_id = BrokerId(*leader as i32);
                    p.leader_epoch = *epoch;
                    p.error_code = 0;
                }
                _ => {
                    p.leader_id = BrokerId(-1);
                    p.error_code = ResponseError::LeaderNotAvailable.code();
                }
            }
        }
    }
}

/// Bits of Kafka's AclOperation codes allowed on a topic: READ 3, WRITE 4, CREATE 5, DELETE 6,
/// ALTER 7, DESCRIBE 8, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// On the cluster: CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10,
/// ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

fn topic_entry(t: &TopicMeta, node: BrokerId, ops: i32) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            MetadataResponsePartition::default()
                .with_partition_index(i as i32)
                .with_leader_id(node)
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_topic_id(t.id)
        .with_is_internal(t.is_internal())
        .with_partitions(partitions)
        .with_topic_authorized_operations(ops)
}
