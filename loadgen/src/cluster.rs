//! What the load generator knows about the cluster: brokers, and the leader of each partition.
//!
//! Built once before the run (on a setup executor) and copied to every core; a core refreshes
//! its own copy from any broker when a produce or fetch answers that leadership moved
//! (`NOT_LEADER_OR_FOLLOWER` and friends), so the load follows partition leaders.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::client::{self, Connection, CREATE_TOPICS_VERSION_MAX, METADATA_VERSION_MAX};
use crate::error::{kafka_error_name, LoadgenError};
use crate::limits::Limits;
use crate::workload::Workload;

/// Brokers and partition leaders of the workload's topic.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Node id -> address.
    pub brokers: HashMap<i32, SocketAddr>,
    /// Leader node of each partition (-1: none right now).
    pub leaders: Vec<i32>,
    /// The cluster id the broker reports.
    pub cluster_id: Option<String>,
}

impl ClusterView {
    /// The address of the leader of `partition`, if known.
    pub fn leader_addr(&self, partition: usize) -> Option<(i32, SocketAddr)> {
        let node = *self.leaders.get(partition)?;
        self.brokers.get(&node).map(|a| (node, *a))
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Fetches the metadata of `topic`. `Ok(None)`: the topic does not exist.
pub async fn describe(conn: &Connection, topic: &str) -> Result<Option<ClusterView>, LoadgenError> {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    let resp = conn.call(&req, METADATA_VERSION_MAX).await?;
    let mut view = ClusterView {
        cluster_id: resp.cluster_id.as_ref().map(|s| s.to_string()),
        ..ClusterView::default()
    };
    for b in &resp.brokers {
        let addr = client::resolve(&format!("{}:{}", b.host, b.port))?;
        view.brokers.insert(b.node_id.0, addr);
    }
    let Some(t) = resp
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
    else {
        return Ok(None);
    };
    match t.error_code {
        0 => {}
        3 => return Ok(None),
        code => {
            return Err(LoadgenError::Kafka {
                what: format!("metadata of topic '{topic}'"),
                code,
                name: kafka_error_name(code),
            })
        }
    }
    let mut leaders = vec![-1; t.partitions.len()];
    for p in &t.partitions {
        let i = p.partition_index as usize;
        if i < leaders.len() && p.error_code == 0 {
            leaders[i] = p.leader_id.0;
        }
    }
    view.leaders = leaders;
    Ok(Some(view))
}

/// Connects to a bootstrap broker (the first of a comma-separated list that answers), creates
/// the topic if asked and needed, and waits until every partition has a leader.
pub async fn prepare(
    bootstrap: &str,
    workload: &Workload,
    limits: &Limits,
) -> Result<ClusterView, LoadgenError> {
    let mut last_err = None;
    let mut found = None;
    for one in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let addr = match client::resolve(one) {
            Ok(a) => a,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        match Connection::connect(addr, limits, "ringlog-loadgen-setup").await {
            Ok(c) => {
                found = Some((addr, c));
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some((addr, conn)) = found else {
        return Err(last_err.unwrap_or_else(|| LoadgenError::Unreachable {
            addr: bootstrap.to_string(),
            reason: "no bootstrap address given".into(),
        }));
    };
    let deadline = Instant::now() + Duration::from_millis(limits.request_timeout_ms);
    let mut created = false;
    loop {
        match describe(&conn, &workload.topic).await? {
            None if !workload.create_topic => {
                return Err(LoadgenError::TopicMissing(workload.topic.clone()))
            }
            None if !created => {
                create_topic(&conn, workload).await?;
                created = true;
            }
            None => {}
            Some(view) => {
                if view.leaders.len() != workload.partitions {
                    return Err(LoadgenError::PartitionMismatch {
                        topic: workload.topic.clone(),
                        actual: view.leaders.len(),
                        wanted: workload.partitions,
                    });
                }
                if (0..view.leaders.len()).all(|p| view.leader_addr(p).is_some()) {
                    return Ok(view);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(LoadgenError::Protocol {
                addr,
                reason: format!(
                    "topic '{}' has partitions without a leader after {} ms",
                    workload.topic, limits.request_timeout_ms
                ),
            });
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_topic(conn: &Rc<Connection>, workload: &Workload) -> Result<(), LoadgenError> {
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(&workload.topic))
            .with_num_partitions(workload.partitions as i32)
            .with_replication_factor(workload.replication_factor)])
        .with_timeout_ms(30_000);
    let resp = conn.call(&req, CREATE_TOPICS_VERSION_MAX).await?;
    for t in &resp.topics {
        // TOPIC_ALREADY_EXISTS: another loadgen created it first; the caller checks its shape.
        if t.error_code != 0 && t.error_code != 36 {
            return Err(LoadgenError::Kafka {
                what: format!(
                    "creating topic '{}'{}",
                    workload.topic,
                    t.error_message
                        .as_ref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
                code: t.error_code,
                name: kafka_error_name(t.error_code),
            });
        }
    }
    Ok(())
}
