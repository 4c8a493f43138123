//! Cluster mode: several brokers, each partition a Raft group over its replicas, and the
//! metadata log a Raft group over the controller voters.
//!
//! Rooms:
//! - [`group`]: one Raft group on its core: the replica over the partition log
//!   (`ringlog_raft::log_store`), its store worker, ticks, and the high watermark it implies;
//! - [`rpc`]: the broker-to-broker TCP transport (Raft envelopes, forwarded controller
//!   requests, hellos that carry each broker's Kafka address);
//! - partition leaders report their elections to the controller, which records them in the
//!   metadata log (brokers name leaders of partitions they do not host from it);
//! - brokers register with the active controller and heartbeat to it
//!   ([`register_and_heartbeat`]); the controller fences the silent ones in the metadata log.
//!
//! Who runs where: every core has its own outbound connections and its own groups; core 0
//! accepts inbound RPC connections and hands each group's messages to the core that owns the
//! group (over the mesh). The metadata group lives on core 0. Without `--peers` none of this
//! runs and the broker is the single node of the earlier issues, data intact.

pub mod group;
pub mod rpc;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};

use ringlog_raft::types::{GroupId, NodeId};

/// The Raft group of the metadata log (partition groups are numbered from 1).
pub const METADATA_GROUP: GroupId = GroupId(0);

/// Election timeout in ticks (raft-rs draws it in `[election, 2 * election)`; the driver pins
/// it per replica to a value drawn here).
pub const ELECTION_TICKS: usize = 10;

/// Heartbeat interval in ticks.
pub const HEARTBEAT_TICKS: usize = 2;

/// Leader and epoch of every replicated partition: from each core's groups for the partitions
/// this broker holds, from the metadata log's leader records for the others:
/// `(topic, partition) -> (leader node id or 0, leader epoch)`.
pub async fn partition_leaders(
    shard: &std::rc::Rc<crate::shard::Shard>,
) -> std::collections::HashMap<(String, i32), (u64, i32)> {
    let mut out = std::collections::HashMap::new();
    for core in 0..shard.shard_count {
        let r = shard
            .invoke_on(crate::shard::ShardId(core as u16), |s| async move {
                s.partitions
                    .borrow()
                    .iter()
                    .filter_map(|(tp, p)| {
                        let g = p.raft.as_ref()?;
                        Some((
                            (tp.topic.to_string(), tp.partition),
                            (g.leader(), g.leader_epoch()),
                        ))
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        if let Ok(v) = r {
            out.extend(v);
        }
    }
    // Partitions this broker does not host: the leaders recorded in the metadata log.
    let img = shard.image();
    for t in img.topics.values() {
        for (i, p) in t.partitions.iter().enumerate() {
            let key = (t.name.clone(), i as i32);
            if p.is_replicated() && !out.contains_key(&key) {
                if let Some((l, epoch)) = img.leaders.get(&p.group) {
                    out.insert(key, (*l as u64, *epoch));
                }
            }
        }
    }
    out
}

/// How often a broker heartbeats to the active controller (and the controller checks for
/// brokers to fence).
pub const BROKER_HEARTBEAT_MS: u64 = 1000;

/// Registers this broker with the active controller, then heartbeats every
/// [`BROKER_HEARTBEAT_MS`] until shutdown (core 0 of every cluster broker).
pub async fn register_and_heartbeat(shard: std::rc::Rc<crate::shard::Shard>) {
    let Some(cluster) = shard.config.cluster.clone() else {
        return;
    };
    let node = cluster.node_id.0 as i32;
    let (host, port) = shard.advertised.clone();
    let rpc = cluster.rpc_addr.to_string();
    let mut registered = false;
    while !crate::shard::runtime::stopping() {
        let c = shard.controller.borrow().clone();
        if let Some(c) = c {
            let r = if registered {
                c.broker_heartbeat(&shard, node).await
            } else {
                let cores = u16::try_from(shard.shard_count).unwrap_or(u16::MAX);
                let dedicated = shard.config.controller_core_dedicated();
                c.register_broker(
                    &shard,
                    node,
                    host.clone(),
                    port,
                    rpc.clone(),
                    cores,
                    dedicated,
                )
                .await
            };
            match r {
                Ok(()) if !registered => {
                    tracing::info!(node, "registered with the controller");
                    registered = true;
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e.message, "controller heartbeat"),
            }
        }
        // Until registered, retry soon: the broker does not serve clients before that.
        let pause_ms = if registered { BROKER_HEARTBEAT_MS } else { 100 };
        glommio::timer::sleep(std::time::Duration::from_millis(pause_ms)).await;
    }
}

/// Stops the broker at once after a failure that makes this replica unsafe to keep running
/// (it can no longer persist what it acknowledges). Exit code 70 (EX_SOFTWARE).
pub fn fail_stop(why: &str) -> ! {
    tracing::error!(error = why, "fail-stop");
    std::process::exit(70)
}

/// The cluster as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This broker.
    pub node_id: NodeId,
    /// Where this broker's RPC listener of core 0 binds; core k binds its port + k.
    pub rpc_addr: SocketAddr,
    /// Every broker's RPC address, this one included.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Brokers that vote in the metadata group (the lowest ids).
    pub controller_voters: Vec<NodeId>,
    /// Length of a Raft tick.
    pub tick_ms: u64,
}

impl ClusterConfig {
    /// Parses `--peers` (`1@127.0.0.1:9093,2@...`) and checks it against this node.
    pub fn resolve(
        node_id: i32,
        peers: &str,
        rpc_addr: Option<SocketAddr>,
        controller_voters: usize,
        tick_ms: u64,
    ) -> Result<ClusterConfig, String> {
        if node_id < 1 {
            return Err(format!("--node-id {node_id}: cluster node ids start at 1"));
        }
        let mut map = BTreeMap::new();
        for item in peers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, addr) = item
                .split_once('@')
                .ok_or_else(|| format!("peer {item:?} needs ID@HOST:PORT"))?;
            let id: u64 = id
                .parse()
                .map_err(|_| format!("peer {item:?}: bad node id"))?;
            if id == 0 {
                return Err(format!("peer {item:?}: node ids start at 1"));
            }
            let addr = addr
                .to_socket_addrs()
                .map_err(|e| format!("peer {item:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("peer {item:?}: no address"))?;
            if map.insert(NodeId(id), addr).is_some() {
                return Err(format!("peer {id} is listed twice"));
            }
        }
        let me = NodeId(node_id as u64);
        let listed = *map
            .get(&me)
            .ok_or_else(|| format!("--peers does not list this node ({node_id})"))?;
        let rpc_addr = rpc_addr.unwrap_or(listed);
        if rpc_addr.port() != listed.port() {
            return Err(format!(
                "--rpc-addr {rpc_addr} differs from this node's entry in --peers ({listed})"
            ));
        }
        if controller_voters == 0 {
            return Err("--controller-voters must be at least 1".into());
        }
        if !(10..=10_000).contains(&tick_ms) {
            return Err(format!("--raft-tick-ms {tick_ms} is outside 10..=10000"));
        }
        let voters = map.keys().take(controller_voters).copied().collect();
        Ok(ClusterConfig {
            node_id: me,
            rpc_addr,
            peers: map,
            controller_voters: voters,
            tick_ms,
        })
    }

    /// Brokers that follow the metadata group without voting.
    pub fn controller_learners(&self) -> Vec<NodeId> {
        self.peers
            .keys()
            .filter(|n| !self.controller_voters.contains(n))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_check() {
        let c = ClusterConfig::resolve(
            2,
            "1@127.0.0.1:7001, 2@127.0.0.1:7002,3@127.0.0.1:7003,4@127.0.0.1:7004",
            None,
            3,
            100,
        )
        .expect("valid");
        assert_eq!(c.node_id, NodeId(2));
        assert_eq!(c.rpc_addr.port(), 7002);
        assert_eq!(c.controller_voters, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(c.controller_learners(), vec![NodeId(4)]);
        for bad in [
            "1@127.0.0.1:7001",
            "2@127.0.0.1:7002,2@127.0.0.1:7003",
            "x@127.0.0.1:1",
            "2-127.0.0.1:7002",
        ] {
            assert!(
                ClusterConfig::resolve(2, bad, None, 3, 100).is_err(),
                "{bad}"
            );
        }
        assert!(ClusterConfig::resolve(0, "1@127.0.0.1:1", None, 3, 100).is_err());
    }
}
