//! The consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups and OffsetDelete.
//!
//! Runs on the core that took the request; each group's work runs on its coordinator core
//! (`groups::with_group`), and the typed response is built back here for the request's
//! version. The protocol itself is in `groups::state`.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::groups::state::{code, Committed, Group, JoinRequest, JoinResult, State, SyncResult};
use crate::groups::{self, with_group};
use crate::shard::{Shard, ShardId};

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn osb(s: &Option<String>) -> Option<StrBytes> {
    s.as_deref().map(sb)
}

/// Persists the group's membership when the protocol changed it (a failure is logged: the
/// group goes on in memory and members rejoin after a coordinator restart).
async fn persist_if_changed(s: &Rc<Shard>, p: i32, group: &str, changed: bool) {
    if changed {
        if let Err(e) = groups::persist_group(s, p, group).await {
            tracing::warn!(group = %group, error = %e.message, "persisting group");
        }
    }
}

/// Persists if needed, then answers at once or when the group protocol answers.
async fn settle<R>(
    s: &Rc<Shard>,
    p: i32,
    group: &str,
    changed: bool,
    outcome: Result<R, futures::channel::oneshot::Receiver<R>>,
    unavailable: R,
) -> R {
    persist_if_changed(s, p, group, changed).await;
    match outcome {
        Ok(r) => r,
        Err(rx) => rx.await.unwrap_or(unavailable),
    }
}

/// Largest committed-offset metadata string (Kafka's `offset.metadata.max.bytes`).
const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// FindCoordinator: this broker coordinates every group (single node).
pub async fn find_coordinator(
    shard: &Rc<Shard>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys: Vec<String> = if version >= 4 {
        req.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![req.key.to_string()]
    };
    let ready = if req.key_type == 0 {
        groups::ensure_offsets_topic(shard).await
    } else {
        Err(crate::kafka::errors::KafkaError::new(
            kafka_protocol::error::ResponseError::CoordinatorNotAvailable,
            "transactions are not supported yet",
        ))
    };
    // In a cluster a group's coordinator is the leader of its `__consumer_offsets` partition.
    let leaders = match (&shard.config.cluster, &ready) {
        (Some(_), Ok(_)) => Some(crate::cluster::partition_leaders(shard).await),
        _ => None,
    };
    let (host, port) = shard.advertised.clone();
    let one = |key: &str| -> Coordinator {
        let located = match (&ready, &leaders, &shard.config.cluster) {
            (Ok(_), None, _) => Ok((shard.config.node_id, host.clone(), port)),
            (Ok(n), Some(leaders), Some(_)) => {
                let p = groups::partition_for(key, *n);
                match leaders.get(&(groups::OFFSETS_TOPIC.to_string(), p)) {
                    Some((l, _)) if *l as i32 == shard.config.node_id => {
                        Ok((shard.config.node_id, host.clone(), port))
                    }
                    Some((l, _)) if *l != 0 => {
                        let img = shard.image();
                        match img.brokers.get(&(*l as i32)).filter(|b| !b.fenced) {
                            Some(b) => Ok((*l as i32, b.host.clone(), b.port)),
                            None => Err(crate::kafka::errors::KafkaError::new(
                                kafka_protocol::error::ResponseError::CoordinatorNotAvailable,
                                format!("coordinator {l} is not a live registered broker"),
                            )),
                        }
                    }
                    _ => Err(crate::kafka::errors::KafkaError::new(
                        kafka_protocol::error::ResponseError::CoordinatorNotAvailable,
                        format!("{}-{p} has no leader here", groups::OFFSETS_TOPIC),
                    )),
                }
            }
            (Ok(_), Some(_), None) => Ok((shard.config.node_id, host.clone(), port)),
            // FindCoordinator's clients retry COORDINATOR_NOT_AVAILABLE quietly; whatever kept
            // the offsets topic from being ready (a controller election, a timeout) is that,
            // not an error code FindCoordinator does not have (librdkafka hands those to the
            // application as consumer errors).
            (Err(e), _, _) => Err(crate::kafka::errors::KafkaError::new(
                kafka_protocol::error::ResponseError::CoordinatorNotAvailable,
                e.message.clone(),
            )),
        };
        match located {
            Ok((node, h, pt)) => Coordinator::default()
                .with_key(sb(key))
                .with_node_id(BrokerId(node))
                .with_host(sb(&h))
                .with_port(pt as i32),
            Err(e) => Coordinator::default()
                .with_key(sb(key))
                .with_node_id(BrokerId(-1))
                .with_host(sb(""))
                .with_port(-1)
                .with_error_code(e.code())
                .with_error_message(Some(sb(&e.message))),
        }
    };
    let coordinators: Vec<Coordinator> = keys.iter().map(|k| one(k)).collect();
    if version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let c = coordinators.into_iter().next().unwrap_or_default();
        FindCoordinatorResponse::default()
            .with_error_code(c.error_code)
            .with_error_message(c.error_message)
            .with_node_id(c.node_id)
            .with_host(c.host)
            .with_port(c.port)
    }
}

/// JoinGroup.
pub async fn join_group(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let jr = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id,
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member = jr.member_id.clone();
    let r = if group.is_empty() {
        JoinResult {
            error: code::INVALID_GROUP_ID,
            generation: -1,
            member_id: member,
            ..JoinResult::default()
        }
    } else {
        let unavailable = JoinResult {
            error: code::COORDINATOR_NOT_AVAILABLE,
            generation: -1,
            member_id: member,
            ..JoinResult::default()
        };
        with_group(
            shard,
            group.clone(),
            unavailable.clone(),
            move |s, p| async move {
                let timing = groups::timing(&s);
                let mut changed = false;
                let outcome = {
                    let mut gs = s.groups.groups.borrow_mut();
                    let g = gs
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group));
                    g.join(jr, &timing, Instant::now(), &mut changed)
                };
                settle(&s, p, &group, changed, outcome, unavailable).await
            },
        )
        .await
    };
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(osb(&r.protocol_type))
        .with_protocol_name(if version >= 7 {
            osb(&r.protocol)
        } else {
            Some(sb(r.protocol.as_deref().unwrap_or("")))
        })
        .with_leader(sb(&r.leader))
        .with_member_id(sb(&r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|(id, instance, meta)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(sb(&id))
                        .with_group_instance_id(osb(&instance))
                        .with_metadata(meta)
                })
                .collect(),
        )
}

/// SyncGroup.
pub async fn sync_group(shard: &Rc<Shard>, req: SyncGroupRequest) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    let member = req.member_id.to_string();
    let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = req.generation_id;
    let assignments: Vec<(String, Bytes)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let err = |c: i16| SyncResult {
        error: c,
        ..SyncResult::default()
    };
    let r = if group.is_empty() {
        err(code::INVALID_GROUP_ID)
    } else {
        let unavailable = err(code::COORDINATOR_NOT_AVAILABLE);
        with_group(
            shard,
            group.clone(),
            unavailable.clone(),
            move |s, p| async move {
                let mut changed = false;
                let outcome = {
                    let mut gs = s.groups.groups.borrow_mut();
                    match gs.get_mut(&group) {
                        Some(g) => g.sync(
                            &member,
                            instance.as_deref(),
                            generation,
                            assignments,
                            Instant::now(),
                            &mut changed,
                        ),
                        None => Ok(err(code::UNKNOWN_MEMBER_ID)),
                    }
                };
                settle(&s, p, &group, changed, outcome, unavailable).await
            },
        )
        .await
    };
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(osb(&r.protocol_type))
        .with_protocol_name(osb(&r.protocol))
        .with_assignment(r.assignment)
}

/// Heartbeat.
pub async fn heartbeat(shard: &Rc<Shard>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    let member = req.member_id.to_string();
    let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = req.generation_id;
    let c = if group.is_empty() {
        code::INVALID_GROUP_ID
    } else {
        with_group(
            shard,
            group.clone(),
            code::COORDINATOR_NOT_AVAILABLE,
            move |s, _p| async move {
                let mut gs = s.groups.groups.borrow_mut();
                match gs.get_mut(&group) {
                    Some(g) => {
                        g.heartbeat(&member, instance.as_deref(), generation, Instant::now())
                    }
                    None => code::UNKNOWN_MEMBER_ID,
                }
            },
        )
        .await
    };
    HeartbeatResponse::default().with_error_code(c)
}

/// LeaveGroup (v0-2: one member; v3+: a batch of members, possibly by instance id).
pub async fn leave_group(
    shard: &Rc<Shard>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    if group.is_empty() {
        return LeaveGroupResponse::default().with_error_code(code::INVALID_GROUP_ID);
    }
    let n = members.len();
    let asked = members.clone();
    let codes = with_group(
        shard,
        group.clone(),
        vec![code::COORDINATOR_NOT_AVAILABLE; n],
        move |s, p| async move {
            let mut changed = false;
            let codes: Vec<i16> = {
                let mut gs = s.groups.groups.borrow_mut();
                match gs.get_mut(&group) {
                    Some(g) => members
                        .iter()
                        .map(|(m, i)| g.leave(m, i.as_deref(), Instant::now(), &mut changed))
                        .collect(),
                    None => vec![code::UNKNOWN_MEMBER_ID; members.len()],
                }
            };
            persist_if_changed(&s, p, &group, changed).await;
            codes
        },
    )
    .await;
    if version >= 3 {
        LeaveGroupResponse::default().with_members(
            asked
                .iter()
                .zip(&codes)
                .map(|((m, i), c)| {
                    MemberResponse::default()
                        .with_member_id(sb(m))
                        .with_group_instance_id(osb(i))
                        .with_error_code(*c)
                })
                .collect(),
        )
    } else {
        LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
    }
}

/// OffsetCommit.
pub async fn offset_commit(shard: &Rc<Shard>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let member = req.member_id.to_string();
    let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = req.generation_id_or_member_epoch;
    let image = shard.image();
    // (topic, partition, committed, pre-check error)
    let mut items: Vec<(String, i32, Committed, i16)> = Vec::new();
    let now_ms = crate::groups::state::now_ms();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let meta = image.topics.get(&name);
        for p in &t.partitions {
            let md = p.committed_metadata.as_ref().map(|m| m.to_string());
            let pre = if meta.is_none_or(|m| {
                p.partition_index < 0 || p.partition_index as usize >= m.partitions.len()
            }) {
                3 // UNKNOWN_TOPIC_OR_PARTITION
            } else if md
                .as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
            {
                12 // OFFSET_METADATA_TOO_LARGE
            } else {
                code::NONE
            };
            items.push((
                name.clone(),
                p.partition_index,
                Committed {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: md,
                    commit_timestamp_ms: now_ms,
                },
                pre,
            ));
        }
    }
    let n = items.len();
    let codes: Vec<i16> = if group.is_empty() {
        vec![code::INVALID_GROUP_ID; n]
    } else {
        let work = items.clone();
        with_group(
            shard,
            group.clone(),
            vec![code::COORDINATOR_NOT_AVAILABLE; n],
            move |s, p| async move {
                let check = {
                    let gs = s.groups.groups.borrow();
                    match gs.get(&group) {
                        Some(g) => g.check_commit(&member, instance.as_deref(), generation),
                        None if member.is_empty() && generation < 0 => code::NONE,
                        None if !member.is_empty() => code::UNKNOWN_MEMBER_ID,
                        None => code::ILLEGAL_GENERATION,
                    }
                };
                if check != code::NONE {
                    return vec![check; work.len()];
                }
                let records: Vec<_> = work
                    .iter()
                    .filter(|w| w.3 == code::NONE)
                    .map(|(t, part, c, _)| groups::offset_record(&group, t, *part, Some(c)))
                    .collect();
                if let Err(e) = groups::persist(&s, p, records).await {
                    tracing::warn!(group = %group, error = %e.message, "persisting offsets");
                    return vec![code::COORDINATOR_NOT_AVAILABLE; work.len()];
                }
                let mut gs = s.groups.groups.borrow_mut();
                let g = gs.entry(group.clone()).or_insert_with(|| {
                    let mut g = Group::new(&group);
                    g.empty_since_ms = Some(crate::groups::state::now_ms());
                    g
                });
                for (t, part, c, pre) in &work {
                    if *pre == code::NONE {
                        g.offsets.insert((t.clone(), *part), c.clone());
                    }
                }
                work.iter().map(|w| w.3).collect()
            },
        )
        .await
    };
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for ((t, part, _, _), c) in items.iter().zip(codes) {
        let resp = OffsetCommitResponsePartition::default()
            .with_partition_index(*part)
            .with_error_code(c);
        match topics.iter_mut().find(|x| x.name.0.as_str() == t.as_str()) {
            Some(x) => x.partitions.push(resp),
            None => topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(sb(t)))
                    .with_partitions(vec![resp]),
            ),
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// Offset, leader epoch and metadata of a committed offset, or Kafka's "nothing committed"
/// (-1, -1, empty metadata).
fn committed_fields(c: Option<Committed>) -> (i64, i32, Option<StrBytes>) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, osb(&c.metadata)),
        None => (-1, -1, Some(sb(""))),
    }
}

/// Committed offsets of one topic (None: nothing committed for that partition).
type TopicOffsets = (String, Vec<(i32, Option<Committed>)>);

/// What OffsetFetch asks of one group: None = every committed offset.
type Wanted = Option<Vec<(String, Vec<i32>)>>;

async fn fetch_offsets(
    shard: &Rc<Shard>,
    group: String,
    wanted: Wanted,
) -> (i16, Vec<TopicOffsets>) {
    if group.is_empty() {
        return (code::INVALID_GROUP_ID, Vec::new());
    }
    with_group(
        shard,
        group.clone(),
        (code::COORDINATOR_NOT_AVAILABLE, Vec::new()),
        move |s, _p| async move {
            let gs = s.groups.groups.borrow();
            let g = gs.get(&group);
            let out = match wanted {
                Some(list) => list
                    .into_iter()
                    .map(|(t, parts)| {
                        let got = parts
                            .into_iter()
                            .map(|p| (p, g.and_then(|g| g.offsets.get(&(t.clone(), p)).cloned())))
                            .collect();
                        (t, got)
                    })
                    .collect(),
                None => {
                    let mut by_topic: Vec<TopicOffsets> = Vec::new();
                    if let Some(g) = g {
                        for ((t, p), c) in &g.offsets {
                            match by_topic.iter_mut().find(|x| x.0 == *t) {
                                Some(x) => x.1.push((*p, Some(c.clone()))),
                                None => by_topic.push((t.clone(), vec![(*p, Some(c.clone()))])),
                            }
                        }
                    }
                    by_topic
                }
            };
            (code::NONE, out)
        },
    )
    .await
}

/// OffsetFetch (v1-7: one group; v8+: several).
pub async fn offset_fetch(
    shard: &Rc<Shard>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups_out = Vec::new();
        for g in &req.groups {
            let wanted: Wanted = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let (err, topics) = fetch_offsets(shard, g.group_id.0.to_string(), wanted).await;
            groups_out.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_error_code(err)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(t, parts)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(sb(&t)))
                                    .with_partitions(
                                        parts
                                            .into_iter()
                                            .map(|(p, c)| {
                                                let (o, e, m) = committed_fields(c);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(o)
                                                    .with_committed_leader_epoch(e)
                                                    .with_metadata(m)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
            );
        }
        return OffsetFetchResponse::default().with_groups(groups_out);
    }
    let wanted: Wanted = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let (err, topics) = fetch_offsets(shard, req.group_id.0.to_string(), wanted).await;
    OffsetFetchResponse::default()
        .with_error_code(err)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(sb(&t)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, c)| {
                                    let (o, e, m) = committed_fields(c);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(o)
                                        .with_committed_leader_epoch(e)
                                        .with_metadata(m)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}

/// ListGroups: every core's groups.
pub async fn list_groups(shard: &Rc<Shard>, req: ListGroupsRequest) -> ListGroupsResponse {
    let filter: Vec<String> = req
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let mut all = Vec::new();
    for core in 0..shard.shard_count {
        let listed = shard
            .invoke_on(ShardId(core as u16), |s| async move {
                s.groups
                    .groups
                    .borrow()
                    .values()
                    .filter(|g| g.state != State::Dead)
                    .map(|g| {
                        (
                            g.id.clone(),
                            g.protocol_type.clone().unwrap_or_default(),
                            g.state.name().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        all.extend(listed);
    }
    ListGroupsResponse::default().with_groups(
        all.into_iter()
            .filter(|(_, _, st)| filter.is_empty() || filter.contains(&st.to_ascii_lowercase()))
            .map(|(id, pt, st)| {
                ListedGroup::default()
                    .with_group_id(GroupId(sb(&id)))
                    .with_protocol_type(sb(&pt))
                    .with_group_state(sb(&st))
                    .with_group_type(sb("classic"))
            })
            .collect(),
    )
}

type MemberDesc = (String, Option<String>, String, String, Bytes, Bytes);

/// DescribeGroups.
pub async fn describe_groups(
    shard: &Rc<Shard>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut out = Vec::new();
    for gid in &req.groups {
        let group = gid.0.to_string();
        let desc = with_group(shard, group.clone(), None, move |s, _p| async move {
            let gs = s.groups.groups.borrow();
            let g = gs.get(&group)?;
            let protocol = g.protocol.clone().unwrap_or_default();
            let members: Vec<MemberDesc> = g
                .members
                .values()
                .map(|m| {
                    let meta = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default();
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        meta,
                        m.assignment.clone(),
                    )
                })
                .collect();
            Some((
                g.state.name().to_string(),
                g.protocol_type.clone().unwrap_or_default(),
                protocol,
                members,
            ))
        })
        .await;
        let d = match desc {
            Some((state, pt, proto, members)) => DescribedGroup::default()
                .with_group_id(gid.clone())
                .with_group_state(sb(&state))
                .with_protocol_type(sb(&pt))
                .with_protocol_data(sb(&proto))
                .with_members(
                    members
                        .into_iter()
                        .map(|(id, inst, cid, host, meta, asg)| {
                            DescribedGroupMember::default()
                                .with_member_id(sb(&id))
                                .with_group_instance_id(osb(&inst))
                                .with_client_id(sb(&cid))
                                .with_client_host(sb(&host))
                                .with_member_metadata(meta)
                                .with_member_assignment(asg)
                        })
                        .collect(),
                ),
            // Kafka describes an unknown group as Dead with no error.
            None => DescribedGroup::default()
                .with_group_id(gid.clone())
                .with_group_state(sb("Dead")),
        };
        out.push(d);
    }
    DescribeGroupsResponse::default().with_groups(out)
}

/// DeleteGroups: only empty groups; their offsets go with them.
pub async fn delete_groups(shard: &Rc<Shard>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for gid in &req.groups_names {
        let group = gid.0.to_string();
        let c = with_group(
            shard,
            group.clone(),
            code::COORDINATOR_NOT_AVAILABLE,
            move |s, p| async move {
                let records = {
                    let gs = s.groups.groups.borrow();
                    match gs.get(&group) {
                        None => return code::GROUP_ID_NOT_FOUND,
                        Some(g) if !g.members.is_empty() => return code::NON_EMPTY_GROUP,
                        Some(g) => groups::deletion_records(g),
                    }
                };
                if groups::persist(&s, p, records).await.is_err() {
                    return code::COORDINATOR_NOT_AVAILABLE;
                }
                s.groups.groups.borrow_mut().remove(&group);
                code::NONE
            },
        )
        .await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(gid.clone())
                .with_error_code(c),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// OffsetDelete: committed offsets of topics the group does not subscribe to.
pub async fn offset_delete(shard: &Rc<Shard>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let asked: Vec<(String, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let work = asked.clone();
    let (err, codes) = with_group(
        shard,
        group.clone(),
        (code::COORDINATOR_NOT_AVAILABLE, Vec::new()),
        move |s, p| async move {
            let (records, codes) = {
                let gs = s.groups.groups.borrow();
                let Some(g) = gs.get(&group) else {
                    return (code::GROUP_ID_NOT_FOUND, Vec::new());
                };
                let subscribed = g.subscribed_topics();
                let mut records = Vec::new();
                let mut codes = Vec::new();
                for (t, parts) in &work {
                    let busy = subscribed.contains(t);
                    codes.push(
                        parts
                            .iter()
                            .map(|part| {
                                if busy {
                                    code::GROUP_SUBSCRIBED_TO_TOPIC
                                } else {
                                    records.push(groups::offset_record(&group, t, *part, None));
                                    code::NONE
                                }
                            })
                            .collect::<Vec<i16>>(),
                    );
                }
                (records, codes)
            };
            if groups::persist(&s, p, records).await.is_err() {
                return (code::COORDINATOR_NOT_AVAILABLE, Vec::new());
            }
            if let Some(g) = s.groups.groups.borrow_mut().get_mut(&group) {
                for ((t, parts), cs) in work.iter().zip(&codes) {
                    for (part, c) in parts.iter().zip(cs) {
                        if *c == code::NONE {
                            g.offsets.remove(&(t.clone(), *part));
                        }
                    }
                }
            }
            (code::NONE, codes)
        },
    )
    .await;
    if err != code::NONE {
        return OffsetDeleteResponse::default().with_error_code(err);
    }
    OffsetDeleteResponse::default().with_topics(
        asked
            .into_iter()
            .zip(codes)
            .map(|((t, parts), cs)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(TopicName(sb(&t)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .zip(cs)
                            .map(|(p, c)| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(c)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
