//! Admin APIs: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, AlterConfigs,
//! IncrementalAlterConfigs, DescribeCluster.
//!
//! Changes go to the controller on core 0 (over the mesh from other cores); they are answered
//! once every core has applied the new metadata image. Config resources other than topics
//! (brokers) are described with the broker's settings and are read-only.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ringlog_storage::LogConfig;
use uuid::Uuid;

use crate::kafka::errors::KafkaError;
use crate::metadata::controller::NewTopic;
use crate::metadata::Controller;
use crate::shard::{Shard, ShardId};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

pub(crate) fn controller_gone() -> KafkaError {
    KafkaError::new(
        ResponseError::NotController,
        "the controller is not reachable",
    )
}

/// Runs topic creation on the controller core.
pub async fn create_topics_via_controller(
    shard: &Rc<Shard>,
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<(i32, Uuid), KafkaError>> {
    let n = topics.len();
    on_controller(
        shard,
        vec![Err(controller_gone()); n],
        move |c, s| async move { c.create_topics(&s, topics, validate_only).await },
    )
    .await
}

/// Runs `f` with the controller on core 0; `unreachable` is the answer when the controller is
/// not there (shutting down).
pub(crate) async fn on_controller<T, F, Fut>(shard: &Rc<Shard>, unreachable: T, f: F) -> T
where
    T: Clone + Send + 'static,
    F: FnOnce(Rc<Controller>, Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let fallback = unreachable.clone();
    shard
        .invoke_on(ShardId(0), move |s| async move {
            let c = s.controller.borrow().clone();
            match c {
                Some(c) => f(c, s).await,
                None => unreachable,
            }
        })
        .await
        .unwrap_or(fallback)
}

fn msg(e: &KafkaError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.message.clone()))
}

/// CreateTopics.
pub async fn create_topics(shard: &Rc<Shard>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let names: Vec<TopicName> = req.topics.iter().map(|t| t.name.clone()).collect();
    let mut pre: Vec<Option<KafkaError>> = Vec::new();
    let mut asks = Vec::new();
    for t in req.topics {
        let mut configs = BTreeMap::new();
        let mut bad = None;
        for c in t.configs {
            match c.value {
                Some(v) => {
                    configs.insert(c.name.to_string(), v.to_string());
                }
                None => {
                    bad = Some(KafkaError::new(
                        ResponseError::InvalidConfig,
                        format!("config {} has no value", &*c.name),
                    ))
                }
            }
        }
        if !t.assignments.is_empty() {
            bad = Some(KafkaError::new(
                ResponseError::InvalidRequest,
                "manual replica assignment is not supported",
            ));
        }
        pre.push(bad.clone());
        if bad.is_none() {
            asks.push(NewTopic {
                name: t.name.0.to_string(),
                partitions: t.num_partitions,
                replication_factor: t.replication_factor,
                configs,
            });
        }
    }
    let mut results = create_topics_via_controller(shard, asks, req.validate_only)
        .await
        .into_iter();
    let topics = names
        .into_iter()
        .zip(pre)
        .map(|(name, pre)| {
            let r = match pre {
                Some(e) => Err(e),
                None => results.next().unwrap_or_else(|| Err(controller_gone())),
            };
            let out = CreatableTopicResult::default().with_name(name);
            match r {
                Ok((count, id)) => out
                    .with_topic_id(id)
                    .with_num_partitions(count)
                    .with_replication_factor(1),
                Err(e) => out
                    .with_error_code(e.code())
                    .with_error_message(msg(&e))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// DeleteTopics (by name; by id from v6).
pub async fn delete_topics(shard: &Rc<Shard>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let img = shard.image();
    let mut names: Vec<(Option<String>, Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), Uuid::nil()))
        .collect();
    for t in &req.topics {
        let name = t
            .name
            .as_ref()
            .map(|n| n.0.to_string())
            .or_else(|| img.ids.get(&t.topic_id).cloned());
        names.push((name, t.topic_id));
    }
    let asks: Vec<String> = names
        .iter()
        .map(|(n, _)| n.clone().unwrap_or_default())
        .collect();
    let n = asks.len();
    let results = on_controller(
        shard,
        vec![Err(controller_gone()); n],
        move |c, s| async move { c.delete_topics(&s, asks).await },
    )
    .await;
    let responses = names
        .into_iter()
        .zip(results)
        .map(|((name, id), r)| {
            let out = DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(StrBytes::from_string(n))));
            match r {
                Ok(id) => out.with_topic_id(id),
                Err(e) => out
                    .with_topic_id(id)
                    .with_error_code(e.code())
                    .with_error_message(msg(&e)),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

/// CreatePartitions.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let count = t.count;
        let validate_only = req.validate_only;
        let r = if t.assignments.is_some() {
            Err(KafkaError::new(
                ResponseError::InvalidRequest,
                "manual replica assignment is not supported",
            ))
        } else {
            on_controller(shard, Err(controller_gone()), move |c, s| async move {
                c.create_partitions(&s, &name, count, validate_only).await
            })
            .await
        };
        let out = CreatePartitionsTopicResult::default().with_name(t.name);
        results.push(match r {
            Ok(()) => out,
            Err(e) => out.with_error_code(e.code()).with_error_message(msg(&e)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// DescribeConfigs: topic configs (overrides and defaults) and the broker's (read-only).
pub fn describe_configs(shard: &Rc<Shard>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let img = shard.image();
    let defaults = &shard.config.log_defaults;
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let out = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let keys: Option<Vec<String>> = r
                .configuration_keys
                .map(|k| k.iter().map(|s| s.to_string()).collect());
            let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|x| x == name));
            match r.resource_type {
                RESOURCE_TOPIC => match img.topics.get(&*r.resource_name) {
                    Some(t) => {
                        let c = t.log_config(defaults);
                        let mut configs =
                            entries(&c, |n| t.configs.contains_key(n), &wanted, false);
                        if wanted(PLACEMENT_CONFIG) {
                            configs.push(placement_entry(t));
                        }
                        out.with_configs(configs)
                    }
                    None => out
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "topic {} does not exist",
                            &*r.resource_name
                        )))),
                },
                RESOURCE_BROKER => out.with_configs(entries(defaults, |_| false, &wanted, true)),
                other => out
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "resource type {other} is not supported"
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// A read-only topic config that shows which core owns each partition, as
/// `partition:core,...` (placement is visible through any Kafka admin tool).
pub const PLACEMENT_CONFIG: &str = "ringlog.partition.cores";

fn placement_entry(t: &crate::metadata::TopicMeta) -> DescribeConfigsResourceResult {
    let value = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{i}:{}", p.shard.0))
        .collect::<Vec<_>>()
        .join(",");
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(PLACEMENT_CONFIG))
        .with_value(Some(StrBytes::from_string(value)))
        .with_read_only(true)
        .with_config_source(SOURCE_DEFAULT)
}

fn entries(
    c: &LogConfig,
    is_override: impl Fn(&str) -> bool,
    wanted: &impl Fn(&str) -> bool,
    read_only: bool,
) -> Vec<DescribeConfigsResourceResult> {
    LogConfig::NAMES
        .iter()
        .filter(|n| wanted(n))
        .map(|n| {
            DescribeConfigsResourceResult::default()
                .with_name(StrBytes::from_static_str(n))
                .with_value(c.get(n).map(StrBytes::from_string))
                .with_read_only(read_only)
                .with_config_source(if is_override(n) {
                    SOURCE_TOPIC
                } else {
                    SOURCE_DEFAULT
                })
        })
        .collect()
}

async fn set_topic_configs(
    shard: &Rc<Shard>,
    resource_type: i8,
    name: String,
    changes: Vec<(String, Option<String>)>,
    incremental: bool,
    validate_only: bool,
) -> Result<(), KafkaError> {
    if resource_type != RESOURCE_TOPIC {
        return Err(KafkaError::new(
            ResponseError::InvalidRequest,
            format!("only topic configs can be altered (resource type {resource_type})"),
        ));
    }
    on_controller(shard, Err(controller_gone()), move |c, s| async move {
        c.set_configs(&s, &name, changes, incremental, validate_only)
            .await
    })
    .await
}

/// AlterConfigs (replaces a topic's overrides).
pub async fn alter_configs(shard: &Rc<Shard>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::new();
    for r in req.resources {
        let changes = r
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let res = set_topic_configs(
            shard,
            r.resource_type,
            r.resource_name.to_string(),
            changes,
            false,
            req.validate_only,
        )
        .await;
        let out = alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name);
        responses.push(match res {
            Ok(()) => out,
            Err(e) => out.with_error_code(e.code()).with_error_message(msg(&e)),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs (SET 0, DELETE 1; APPEND/SUBTRACT apply to list configs, of which
/// topics here have none).
pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::new();
    for r in req.resources {
        let mut changes = Vec::new();
        let mut bad = None;
        for c in &r.configs {
            match c.config_operation {
                0 => changes.push((
                    c.name.to_string(),
                    Some(c.value.as_ref().map(|v| v.to_string()).unwrap_or_default()),
                )),
                1 => changes.push((c.name.to_string(), None)),
                op => {
                    bad = Some(KafkaError::new(
                        ResponseError::InvalidConfig,
                        format!("operation {op} is not supported for {}", &*c.name),
                    ))
                }
            }
        }
        let res = match bad {
            Some(e) => Err(e),
            None => {
                set_topic_configs(
                    shard,
                    r.resource_type,
                    r.resource_name.to_string(),
                    changes,
                    true,
                    req.validate_only,
                )
                .await
            }
        };
        let out = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name);
        responses.push(match res {
            Ok(()) => out,
            Err(e) => out.with_error_code(e.code()).with_error_message(msg(&e)),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// DescribeCluster.
pub fn describe_cluster(
    shard: &Rc<Shard>,
    _req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let node = BrokerId(shard.config.node_id);
    let (host, port) = &shard.advertised;
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(shard.image().cluster_id.clone()))
        .with_controller_id(node)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(node)
            .with_host(StrBytes::from_string(host.clone()))
            .with_port(*port as i32)])
}
