//! The classic consumer-group protocol of one group, as a state machine with no I/O.
//!
//! Runs inside the coordinator core's group table (`groups::Coordinator`); every method is
//! called with the current time and returns what to answer, so the protocol is testable
//! without sockets or disks. Waiting requests (a JoinGroup until the rebalance completes, a
//! follower's SyncGroup until the leader's arrives) are one-shot channels kept in the member.
//!
//! States, as in Kafka: `Empty` (no members; committed offsets may remain), `PreparingRebalance`
//! (collecting JoinGroups until every member rejoined or the rebalance timeout),
//! `CompletingRebalance` (generation chosen, waiting for the leader's SyncGroup), `Stable`, and
//! `Dead` (deleted). Invariants: every member in `members` has joined the current generation
//! or is being waited for; `generation` only grows; a member's assignment is from the current
//! generation or empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use serde::{Deserialize, Serialize};

/// Kafka error codes the protocol answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const INVALID_GROUP_ID: i16 = 24;
}

/// Group states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl State {
    /// Kafka's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

/// What a JoinGroup gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(error: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..JoinResult::default()
        }
    }
}

/// What a SyncGroup gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: i16) -> SyncResult {
        SyncResult {
            error,
            ..SyncResult::default()
        }
    }
}

/// A JoinGroup, decoded.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED with its id.
    pub require_known_member_id: bool,
}

/// A member.
#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

/// Timing rules of the coordinator.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub session_timeout_ms_min: i32,
    pub session_timeout_ms_max: i32,
    /// A group leaving Empty waits this long for more members before its first generation
    /// (Kafka's `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
}

/// One group.
#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: State,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending_ids: HashSet<String>,
    /// Static members: instance id -> member id.
    pub instances: HashMap<String, String>,
    /// While PreparingRebalance: when to complete the join with whoever rejoined.
    rebalance_deadline: Option<Instant>,
    /// While PreparingRebalance out of Empty: do not complete before this.
    initial_delay_until: Option<Instant>,
    pub offsets: BTreeMap<(String, i32), Committed>,
    /// When the group last became Empty (for offsets retention), Unix ms.
    pub empty_since_ms: Option<i64>,
    next_member: u64,
}

/// Persisted form of the group's membership (the offsets are separate records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: Vec<MemberRecord>,
    pub empty_since_ms: Option<i64>,
}

/// Persisted form of a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
}

impl Group {
    /// A new, empty group.
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending_ids: HashSet::new(),
            instances: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            offsets: BTreeMap::new(),
            empty_since_ms: None,
            next_member: 0,
        }
    }

    /// The persisted membership.
    pub fn record(&self) -> GroupRecord {
        GroupRecord {
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            generation: self.generation,
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| MemberRecord {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m
                        .protocols
                        .iter()
                        .map(|(n, b)| (n.clone(), b.to_vec()))
                        .collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
            empty_since_ms: self.empty_since_ms,
        }
    }

    /// Restores membership from its record (on coordinator load). Members restart their
    /// session clock now; those that do not heartbeat expire as usual.
    pub fn restore(&mut self, r: GroupRecord, now: Instant) {
        self.protocol_type = r.protocol_type;
        self.protocol = r.protocol;
        self.generation = r.generation;
        self.leader = r.leader;
        self.empty_since_ms = r.empty_since_ms;
        self.members.clear();
        self.instances.clear();
        for m in r.members {
            if let Some(i) = &m.instance_id {
                self.instances.insert(i.clone(), m.id.clone());
            }
            self.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m
                        .protocols
                        .into_iter()
                        .map(|(n, b)| (n, Bytes::from(b)))
                        .collect(),
                    assignment: Bytes::from(m.assignment),
                    last_seen: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        self.state = if self.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        format!(
            "{}-{}-{}",
            if client_id.is_empty() {
                "member"
            } else {
                client_id
            },
            uuid::Uuid::new_v4().simple(),
            self.next_member
        )
    }

    /// Handles a JoinGroup. Returns an immediate answer, or a receiver for the answer that
    /// comes when the rebalance completes. `changed` is set when membership must be persisted.
    pub fn join(
        &mut self,
        req: JoinRequest,
        timing: &Timing,
        now: Instant,
        changed: &mut bool,
    ) -> Result<JoinResult, oneshot::Receiver<JoinResult>> {
        if self.state == State::Dead {
            return Ok(JoinResult::error(
                code::COORDINATOR_NOT_AVAILABLE,
                &req.member_id,
            ));
        }
        if req.session_timeout_ms < timing.session_timeout_ms_min
            || req.session_timeout_ms > timing.session_timeout_ms_max
        {
            return Ok(JoinResult::error(
                code::INVALID_SESSION_TIMEOUT,
                &req.member_id,
            ));
        }
        if req.protocols.is_empty()
            || req.protocol_type.is_empty()
            || self
                .protocol_type
                .as_ref()
                .is_some_and(|t| *t != req.protocol_type && !self.members.is_empty())
        {
            return Ok(JoinResult::error(
                code::INCONSISTENT_GROUP_PROTOCOL,
                &req.member_id,
            ));
        }
        if !self.members.is_empty() {
            // Every member must share at least one protocol with the group.
            let supported: HashSet<&str> = req.protocols.iter().map(|(n, _)| n.as_str()).collect();
            let common = self.members.values().all(|m| {
                m.id == req.member_id
                    || m.protocols
                        .iter()
                        .any(|(n, _)| supported.contains(n.as_str()))
            });
            if !common {
                return Ok(JoinResult::error(
                    code::INCONSISTENT_GROUP_PROTOCOL,
                    &req.member_id,
                ));
            }
        }
        let mut member_id = req.member_id.clone();
        if let Some(instance) = &req.instance_id {
            match self.instances.get(instance).cloned() {
                Some(existing) if member_id.is_empty() || member_id != existing => {
                    if !member_id.is_empty() && self.members.contains_key(&member_id) {
                        return Ok(JoinResult::error(code::FENCED_INSTANCE_ID, &member_id));
                    }
                    // A static member restarted: it takes over its old identity under a new
                    // member id; the old id is fenced.
                    let new_id = self.new_member_id(&req.client_id);
                    if let Some(mut m) = self.members.remove(&existing) {
                        m.id = new_id.clone();
                        if let Some(w) = m.join_waiter.take() {
                            let _ = w.send(JoinResult::error(code::FENCED_INSTANCE_ID, &existing));
                        }
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncResult::error(code::FENCED_INSTANCE_ID));
                        }
                        m.last_seen = now;
                        m.client_id = req.client_id.clone();
                        m.client_host = req.client_host.clone();
                        m.session_timeout_ms = req.session_timeout_ms;
                        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
                        m.protocols = req.protocols.clone();
                        let was_leader = self.leader.as_deref() == Some(existing.as_str());
                        self.members.insert(new_id.clone(), m);
                        self.instances.insert(instance.clone(), new_id.clone());
                        *changed = true;
                        if was_leader {
                            self.leader = Some(new_id.clone());
                        }
                        // As Kafka: a Stable group whose chosen protocol would stay the same
                        // does not rebalance; the member (leader or not) gets the current
                        // generation, and SyncGroup gives back its assignment.
                        if self.state == State::Stable
                            && self.protocol.as_deref() == Some(self.select_protocol().as_str())
                        {
                            return Ok(self.join_result_for(&new_id, was_leader));
                        }
                        member_id = new_id;
                    } else {
                        self.instances.remove(instance);
                        member_id = String::new();
                    }
                }
                Some(_) => {}
                None => {
                    if !member_id.is_empty() && !self.members.contains_key(&member_id) {
                        return Ok(JoinResult::error(code::UNKNOWN_MEMBER_ID, &member_id));
                    }
                }
            }
        }
        if member_id.is_empty() {
            let id = self.new_member_id(&req.client_id);
            if req.require_known_member_id && req.instance_id.is_none() {
                self.pending_ids.insert(id.clone());
                return Ok(JoinResult::error(code::MEMBER_ID_REQUIRED, &id));
            }
            member_id = id;
        } else if !self.members.contains_key(&member_id) && !self.pending_ids.remove(&member_id) {
            return Ok(JoinResult::error(code::UNKNOWN_MEMBER_ID, &member_id));
        }
        let (tx, rx) = oneshot::channel();
        let m = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocols: req.protocols.clone(),
                assignment: Bytes::new(),
                last_seen: now,
                join_waiter: None,
                sync_waiter: None,
            });
        m.protocols = req.protocols.clone();
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.last_seen = now;
        if let Some(old) = m.join_waiter.replace(tx) {
            let _ = old.send(JoinResult::error(code::REBALANCE_IN_PROGRESS, &member_id));
        }
        if let Some(i) = &req.instance_id {
            self.instances.insert(i.clone(), member_id.clone());
        }
        if self.protocol_type.is_none() || self.members.len() == 1 {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        match self.state {
            State::PreparingRebalance => {}
            State::Empty => {
                self.prepare_rebalance(now);
                self.initial_delay_until =
                    Some(now + Duration::from_millis(timing.initial_rebalance_delay_ms));
            }
            _ => self.prepare_rebalance(now),
        }
        self.try_complete_join(now, changed);
        Err(rx)
    }

    fn join_result_for(&self, member_id: &str, with_members: bool) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinResult {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if with_members {
                self.members
                    .values()
                    .map(|m| {
                        (
                            m.id.clone(),
                            m.instance_id.clone(),
                            m.metadata_for(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncResult::error(code::REBALANCE_IN_PROGRESS));
                }
            }
        }
        let timeout_ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(m.session_timeout_ms))
            .max()
            .unwrap_or(0)
            .max(0) as u64;
        self.state = State::PreparingRebalance;
        self.rebalance_deadline = Some(now + Duration::from_millis(timeout_ms));
        self.initial_delay_until = None;
    }

    /// Completes the join phase if every member rejoined (and the initial delay passed), or
    /// if the rebalance deadline passed (dropping members that did not rejoin).
    pub fn try_complete_join(&mut self, now: Instant, changed: &mut bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        if self.initial_delay_until.is_some_and(|t| now < t) {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let expired = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !all_joined && !expired {
            return;
        }
        if !all_joined {
            let gone: Vec<String> = self
                .members
                .values()
                .filter(|m| m.join_waiter.is_none())
                .map(|m| m.id.clone())
                .collect();
            for id in gone {
                self.remove_member(&id);
            }
        }
        *changed = true;
        self.generation += 1;
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
        if self.members.is_empty() {
            self.become_empty(now);
            return;
        }
        self.protocol = Some(self.select_protocol());
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = State::CompletingRebalance;
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let answers: Vec<(String, JoinResult)> = self
            .members
            .keys()
            .map(|id| (id.clone(), self.join_result_for(id, *id == leader)))
            .collect();
        for (id, r) in answers {
            if let Some(m) = self.members.get_mut(&id) {
                m.last_seen = now;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(r);
                }
            }
        }
    }

    fn become_empty(&mut self, _now: Instant) {
        self.state = State::Empty;
        self.leader = None;
        self.protocol = None;
        self.empty_since_ms = Some(now_ms());
    }

    /// The protocol every member supports with the most first-choice votes (Kafka's rule).
    fn select_protocol(&self) -> String {
        let mut candidates: Option<Vec<String>> = None;
        for m in self.members.values() {
            let names: Vec<String> = m.protocols.iter().map(|(n, _)| n.clone()).collect();
            candidates = Some(match candidates {
                None => names,
                Some(c) => c.into_iter().filter(|n| names.contains(n)).collect(),
            });
        }
        let candidates = candidates.unwrap_or_default();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, v)| *v)
            .map(|(n, _)| n.to_string())
            .unwrap_or_default()
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(i) = &m.instance_id {
                if self.instances.get(i).map(String::as_str) == Some(id) {
                    self.instances.remove(i);
                }
            }
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult::error(code::UNKNOWN_MEMBER_ID, id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult::error(code::UNKNOWN_MEMBER_ID));
            }
        }
    }

    /// Checks a member's identity for Heartbeat, SyncGroup and OffsetCommit.
    fn check_member(&self, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        if let Some(i) = instance_id {
            if let Some(current) = self.instances.get(i) {
                if current != member_id {
                    return code::FENCED_INSTANCE_ID;
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return code::UNKNOWN_MEMBER_ID;
        }
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        code::NONE
    }

    /// Handles a SyncGroup; the leader's carries every assignment. `changed`: persist.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        changed: &mut bool,
    ) -> Result<SyncResult, oneshot::Receiver<SyncResult>> {
        let e = self.check_member(member_id, instance_id, generation);
        if e != code::NONE {
            return Ok(SyncResult::error(e));
        }
        match self.state {
            State::PreparingRebalance => Ok(SyncResult::error(code::REBALANCE_IN_PROGRESS)),
            State::Stable => Ok(self.sync_result(member_id)),
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.last_seen = now;
                    m.sync_waiter = Some(tx);
                }
                if self.leader.as_deref() == Some(member_id) {
                    let given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.get(&m.id).cloned().unwrap_or_default();
                    }
                    self.state = State::Stable;
                    *changed = true;
                    let answers: Vec<(String, SyncResult)> = self
                        .members
                        .keys()
                        .map(|id| (id.clone(), self.sync_result(id)))
                        .collect();
                    for (id, r) in answers {
                        if let Some(m) = self.members.get_mut(&id) {
                            if let Some(w) = m.sync_waiter.take() {
                                let _ = w.send(r);
                            }
                        }
                    }
                }
                Err(rx)
            }
            State::Empty | State::Dead => Ok(SyncResult::error(code::UNKNOWN_MEMBER_ID)),
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// Handles a Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        let e = self.check_member(member_id, instance_id, generation);
        if e != code::NONE {
            return e;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
        match self.state {
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// Handles a LeaveGroup of one member (by id, or by instance id).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        changed: &mut bool,
    ) -> i16 {
        let id = match instance_id {
            Some(i) => match self.instances.get(i) {
                Some(current) if member_id.is_empty() || current == member_id => current.clone(),
                Some(_) => return code::FENCED_INSTANCE_ID,
                None => return code::UNKNOWN_MEMBER_ID,
            },
            None => member_id.to_string(),
        };
        if !self.members.contains_key(&id) {
            return code::UNKNOWN_MEMBER_ID;
        }
        self.remove_member(&id);
        *changed = true;
        self.after_departure(now, changed);
        code::NONE
    }

    fn after_departure(&mut self, now: Instant, changed: &mut bool) {
        match self.state {
            State::Stable | State::CompletingRebalance => {
                if self.members.is_empty() {
                    self.become_empty(now);
                } else {
                    self.prepare_rebalance(now);
                }
            }
            State::PreparingRebalance => self.try_complete_join(now, changed),
            State::Empty | State::Dead => {}
        }
        if self.members.is_empty() && self.state != State::Empty && self.state != State::Dead {
            self.become_empty(now);
        }
    }

    /// Expires members whose session ran out (in any state: a dead member must not hold a
    /// rebalance until its much longer rebalance timeout; members waiting in a JoinGroup or
    /// SyncGroup are alive) and completes overdue rebalances.
    pub fn tick(&mut self, now: Instant, changed: &mut bool) {
        if matches!(
            self.state,
            State::Stable | State::CompletingRebalance | State::PreparingRebalance
        ) {
            let expired: Vec<String> = self
                .members
                .values()
                .filter(|m| {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now.saturating_duration_since(m.last_seen)
                            > Duration::from_millis(m.session_timeout_ms.max(0) as u64)
                })
                .map(|m| m.id.clone())
                .collect();
            if !expired.is_empty() {
                for id in expired {
                    tracing::info!(group = %self.id, member = %id, "member session expired");
                    self.remove_member(&id);
                }
                *changed = true;
                self.after_departure(now, changed);
            }
        }
        self.try_complete_join(now, changed);
    }

    /// Checks an OffsetCommit's identity: `None` to accept.
    pub fn check_commit(&self, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        if generation < 0 && member_id.is_empty() {
            // A commit from outside the group protocol (admin tools, manual assignment).
            return if self.members.is_empty() {
                code::NONE
            } else {
                code::ILLEGAL_GENERATION
            };
        }
        let e = self.check_member(member_id, instance_id, generation);
        if e != code::NONE {
            return e;
        }
        if self.state == State::CompletingRebalance {
            return code::REBALANCE_IN_PROGRESS;
        }
        code::NONE
    }

    /// Topics the members subscribe to (consumer protocol metadata), for OffsetDelete.
    pub fn subscribed_topics(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        if self.protocol_type.as_deref() != Some("consumer") {
            return out;
        }
        for m in self.members.values() {
            for (_, meta) in &m.protocols {
                out.extend(consumer_subscription(meta));
            }
        }
        out
    }
}

/// Topics of a consumer-protocol subscription (`version i16, topics [string]...`); empty when
/// it does not parse.
pub fn consumer_subscription(meta: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if meta.len() < 6 {
        return out;
    }
    let n = i32::from_be_bytes([meta[2], meta[3], meta[4], meta[5]]);
    let mut at = 6usize;
    for _ in 0..n.clamp(0, 100_000) {
        if at + 2 > meta.len() {
            break;
        }
        let len = i16::from_be_bytes([meta[at], meta[at + 1]]);
        at += 2;
        if len < 0 || at + len as usize > meta.len() {
            break;
        }
        out.push(String::from_utf8_lossy(&meta[at..at + len as usize]).into_owned());
        at += len as usize;
    }
    out
}

/// Unix time in ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        session_timeout_ms_min: 1000,
        session_timeout_ms_max: 300_000,
        initial_rebalance_delay_ms: 0,
    };

    fn req(id: &str, instance: Option<&str>) -> JoinRequest {
        JoinRequest {
            member_id: id.into(),
            instance_id: instance.map(Into::into),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    fn join_ok(g: &mut Group, r: JoinRequest, now: Instant) -> oneshot::Receiver<JoinResult> {
        let mut ch = false;
        match g.join(r, &T, now, &mut ch) {
            Err(rx) => rx,
            Ok(res) => panic!("answered at once: {res:?}"),
        }
    }

    fn new_member(g: &mut Group, now: Instant) -> String {
        let mut ch = false;
        let r = g
            .join(req("", None), &T, now, &mut ch)
            .expect("member id required");
        assert_eq!(r.error, code::MEMBER_ID_REQUIRED);
        r.member_id
    }

    #[test]
    fn two_members_rebalance_and_sync() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = new_member(&mut g, now);
        let mut ra = join_ok(&mut g, req(&a, None), now);
        // A single member completes at once (initial delay 0).
        let ja = ra.try_recv().unwrap().expect("joined");
        assert_eq!(
            (ja.error, ja.generation, ja.leader.as_str()),
            (0, 1, a.as_str())
        );
        assert_eq!(ja.members.len(), 1);
        let mut ch = false;
        let s = g
            .sync(
                &a,
                None,
                1,
                vec![(a.clone(), Bytes::from_static(b"A"))],
                now,
                &mut ch,
            )
            .expect_err("waits")
            .try_recv()
            .unwrap()
            .unwrap();
        assert_eq!(&s.assignment[..], b"A");
        assert_eq!(g.state, State::Stable);
        // A second member triggers a rebalance; heartbeats of the first say so.
        let b = new_member(&mut g, now);
        let mut rb = join_ok(&mut g, req(&b, None), now);
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(g.heartbeat(&a, None, 1, now), code::REBALANCE_IN_PROGRESS);
        assert!(rb.try_recv().unwrap().is_none());
        let mut ra = join_ok(&mut g, req(&a, None), now);
        let ja = ra.try_recv().unwrap().unwrap();
        let jb = rb.try_recv().unwrap().unwrap();
        assert_eq!(ja.generation, 2);
        assert_eq!(ja.leader, a);
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty());
        // The follower's sync waits for the leader's.
        let mut sb = g.sync(&b, None, 2, vec![], now, &mut ch).err().unwrap();
        assert!(sb.try_recv().unwrap().is_none());
        assert_eq!(
            g.sync(&b, None, 1, vec![], now, &mut ch).unwrap().error,
            code::ILLEGAL_GENERATION
        );
        let _sa = g
            .sync(
                &a,
                None,
                2,
                vec![
                    (a.clone(), Bytes::from_static(b"A2")),
                    (b.clone(), Bytes::from_static(b"B2")),
                ],
                now,
                &mut ch,
            )
            .err()
            .unwrap();
        assert_eq!(&sb.try_recv().unwrap().unwrap().assignment[..], b"B2");
        assert_eq!(g.heartbeat("nobody", None, 2, now), code::UNKNOWN_MEMBER_ID);
        assert_eq!(g.check_commit(&a, None, 1), code::ILLEGAL_GENERATION);
        assert_eq!(g.check_commit(&a, None, 2), code::NONE);
        assert_eq!(g.check_commit("", None, -1), code::ILLEGAL_GENERATION);
    }

    #[test]
    fn expired_member_is_evicted_and_others_rebalance() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = new_member(&mut g, now);
        let b = new_member(&mut g, now);
        // a alone forms generation 1; b's join starts a rebalance that a rejoins.
        let _ra = join_ok(&mut g, req(&a, None), now);
        let _rb = join_ok(&mut g, req(&b, None), now);
        let _ra = join_ok(&mut g, req(&a, None), now);
        assert_eq!(g.state, State::CompletingRebalance);
        assert_eq!(g.members.len(), 2);
        let mut ch = false;
        let l = g.leader.clone().unwrap();
        let _ = g.sync(&l, None, g.generation, vec![], now, &mut ch);
        assert_eq!(g.state, State::Stable);
        // Only a heartbeats; b's session (10 s) runs out.
        let later = now + Duration::from_secs(11);
        g.heartbeat(&a, None, g.generation, later - Duration::from_secs(1));
        g.tick(later, &mut ch);
        assert!(!g.members.contains_key(&b));
        assert_eq!(g.state, State::PreparingRebalance);
        let mut ra = join_ok(&mut g, req(&a, None), later);
        assert_eq!(ra.try_recv().unwrap().unwrap().members.len(), 1);
    }

    #[test]
    fn dead_member_does_not_hold_a_rebalance_until_its_rebalance_timeout() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let long = |id: &str| JoinRequest {
            rebalance_timeout_ms: 300_000,
            ..req(id, None)
        };
        let a = new_member(&mut g, now);
        let b = new_member(&mut g, now);
        drop(join_ok(&mut g, long(&a), now));
        drop(join_ok(&mut g, long(&b), now));
        drop(join_ok(&mut g, long(&a), now));
        let mut ch = false;
        let l = g.leader.clone().unwrap();
        let _ = g.sync(&l, None, g.generation, vec![], now, &mut ch);
        assert_eq!(g.state, State::Stable);
        // c joins; a rejoins; b is dead (no heartbeat, no rejoin).
        let c = new_member(&mut g, now);
        let mut rc = join_ok(&mut g, long(&c), now);
        let mut ra = join_ok(&mut g, long(&a), now);
        assert_eq!(g.state, State::PreparingRebalance);
        g.tick(now + Duration::from_secs(5), &mut ch);
        assert_eq!(g.state, State::PreparingRebalance);
        // After b's 10 s session, not after the 300 s rebalance timeout.
        g.tick(now + Duration::from_secs(11), &mut ch);
        assert!(!g.members.contains_key(&b));
        assert_eq!(g.state, State::CompletingRebalance);
        assert!(ra.try_recv().unwrap().is_some() && rc.try_recv().unwrap().is_some());
    }

    #[test]
    fn static_member_restart_keeps_assignment_without_rebalance() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut ra = join_ok(&mut g, req("", Some("i-a")), now);
        let a = ra.try_recv().unwrap().unwrap().member_id;
        let b = new_member(&mut g, now);
        let mut rb = join_ok(&mut g, req(&b, None), now);
        let mut ra = join_ok(&mut g, req(&a, Some("i-a")), now);
        let _ = (ra.try_recv(), rb.try_recv());
        let mut ch = false;
        let leader = g.leader.clone().unwrap();
        let asg: Vec<(String, Bytes)> = g
            .members
            .keys()
            .map(|k| (k.clone(), Bytes::from(k.clone())))
            .collect();
        let _ = g.sync(&leader, None, g.generation, asg, now, &mut ch);
        assert_eq!(g.state, State::Stable);
        let gen = g.generation;
        // Restart the static member that is not the leader.
        let (restarting, instance) = if leader == a {
            (b.clone(), None)
        } else {
            (a.clone(), Some("i-a"))
        };
        if instance.is_none() {
            return; // the static member happens to be the leader: covered by the rebalance path
        }
        let r = g
            .join(req("", instance), &T, now, &mut ch)
            .expect("answered at once");
        assert_eq!(r.error, code::NONE);
        assert_eq!(r.generation, gen);
        assert_eq!(g.state, State::Stable);
        assert_ne!(r.member_id, restarting);
        // The old id is fenced; the new one gets the old assignment.
        assert_eq!(
            g.heartbeat(&restarting, Some("i-a"), gen, now),
            code::FENCED_INSTANCE_ID
        );
        let s = g
            .sync(&r.member_id, Some("i-a"), gen, vec![], now, &mut ch)
            .unwrap();
        assert_eq!(s.assignment, Bytes::from(restarting.clone()));
    }

    #[test]
    fn subscription_parses() {
        let mut m = vec![0u8, 1];
        m.extend_from_slice(&2i32.to_be_bytes());
        for t in ["a", "bc"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        assert_eq!(
            consumer_subscription(&m),
            vec!["a".to_string(), "bc".to_string()]
        );
        assert!(consumer_subscription(&[1]).is_empty());
    }
}
