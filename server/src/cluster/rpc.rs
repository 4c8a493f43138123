//! The broker-to-broker transport: TCP connections carrying Raft envelopes, forwarded
//! controller requests and their responses.
//!
//! Connections go core to core: core k of a broker listens on the RPC port + k, and each core
//! keeps one outbound connection ([`Link`]) per (peer, peer core) it has sent to, opened on
//! first use and reopened after a failure. A group's messages go to the peer core that owns
//! the group there (known from the peer's registration: its core count and whether core 0 is
//! the controller's); the metadata group and controller requests go to core 0. What arrives
//! on a core for a group another core owns (a peer with a stale view) is handed over the mesh
//! ([`serve`]); a controller request is answered on the same connection. Raft messages queued for a peer within one turn of the core travel in one
//! envelope, so the heartbeats of every group two brokers share go together.
//!
//! Frame: `u32 BE length` (of what follows), `u8 kind`, body. Bodies: a hello is JSON
//! (`node_id`, Kafka host and port); a Raft envelope is `ringlog_raft::transport`'s
//! flatbuffers; a request or response is `u64 BE id` then a JSON payload; a ping is empty.
//!
//! Fault injection (tests): when `RINGLOG_FAULT_ISOLATE_FILE` names a file, each core re-reads
//! it every 100 ms; the node ids it lists (comma-separated) are cut off: nothing is sent to
//! them and nothing they send is taken in, as if the network between the two were down.
//!
//! Bounds: queued Raft messages per peer ([`crate::limits::Limits::raft_messages_queued_per_peer_max`]:
//! past it new messages are dropped, which Raft tolerates, and counted), queued requests per
//! peer (`rpc_requests_queued_per_peer_max`: past it a request fails at once), frame size
//! (`rpc_frame_bytes_max`: a larger frame closes the connection). A peer that does not answer
//! a request within its timeout gets the caller an error, never a hang.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use raft::prelude::Message;
use ringlog_raft::transport::{self, TransportLimits};
use ringlog_raft::types::{GroupId, NodeId};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::notify::Notify;
use crate::shard::{Shard, ShardId};

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;
const KIND_REQUEST: u8 = 3;
const KIND_RESPONSE: u8 = 4;
const KIND_PING: u8 = 5;

/// Raft messages per envelope (an envelope also stays under the transport's byte limit because
/// raft-rs bounds each message at 1 MiB).
const MESSAGES_PER_ENVELOPE_MAX: usize = 4096;

/// Idle time after which a link sends a ping (liveness for Metadata's broker list).
const PING_INTERVAL_MS: u64 = 500;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT_MS: u64 = 1000;

/// Pause between connection attempts to a peer that is down.
const RECONNECT_BACKOFF_MS: u64 = 200;

/// The first frame on every connection: who is calling and where its Kafka clients go.
#[derive(Serialize, Deserialize)]
struct Hello {
    node_id: u64,
    kafka_host: String,
    kafka_port: u16,
}

/// Why a request to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("broker {0} is not a peer")]
    UnknownPeer(u64),
    #[error("broker {0} is unreachable")]
    Unreachable(u64),
    #[error("broker {0} did not answer within {1} ms")]
    Timeout(u64, u64),
    #[error("too many requests queued for broker {0}")]
    QueueFull(u64),
}

/// One outbound connection's queues.
pub struct Link {
    peer: NodeId,
    addr: SocketAddr,
    raft: RefCell<Vec<(GroupId, Message)>>,
    requests: RefCell<VecDeque<Vec<u8>>>,
    waiting: RefCell<HashMap<u64, futures::channel::oneshot::Sender<Vec<u8>>>>,
    work: Notify,
    dropped: Cell<u64>,
}

/// The resolver of [`Transport::set_resolver`].
type Resolver = Box<dyn Fn(GroupId, NodeId) -> u16>;

/// This core's outbound connections: one per (peer, peer core), opened on first use.
pub struct Transport {
    me: NodeId,
    /// Every broker's base RPC address (its core 0; core k listens on port + k).
    peers: BTreeMap<NodeId, SocketAddr>,
    hello: Vec<u8>,
    frame_max: usize,
    links: RefCell<BTreeMap<(NodeId, u16), Rc<Link>>>,
    resolver: RefCell<Option<Resolver>>,
    next_id: Cell<u64>,
    raft_queue_max: usize,
    requests_queue_max: usize,
    isolated: RefCell<std::collections::BTreeSet<NodeId>>,
}

/// The environment variable naming the fault-injection file (see the module doc).
pub const FAULT_ISOLATE_ENV: &str = "RINGLOG_FAULT_ISOLATE_FILE";

impl Transport {
    /// Starts a link to every peer but this node.
    pub fn start(config: &Config, advertised: &(String, u16)) -> Option<Rc<Transport>> {
        let cluster = config.cluster.as_ref()?;
        let hello = serde_json::to_vec(&Hello {
            node_id: cluster.node_id.0,
            kafka_host: advertised.0.clone(),
            kafka_port: advertised.1,
        })
        .ok()?;
        let t = Rc::new(Transport {
            me: cluster.node_id,
            peers: cluster.peers.clone(),
            hello,
            frame_max: config.limits.rpc_frame_bytes_max,
            links: RefCell::new(BTreeMap::new()),
            resolver: RefCell::new(None),
            next_id: Cell::new(1),
            raft_queue_max: config.limits.raft_messages_queued_per_peer_max,
            requests_queue_max: config.limits.rpc_requests_queued_per_peer_max,
            isolated: RefCell::new(Default::default()),
        });
        if let Ok(path) = std::env::var(FAULT_ISOLATE_ENV) {
            let weak = Rc::downgrade(&t);
            glommio::spawn_local(async move {
                while let Some(t) = weak.upgrade() {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let set = text
                        .split(',')
                        .filter_map(|x| x.trim().parse::<u64>().ok())
                        .map(NodeId)
                        .collect();
                    if *t.isolated.borrow() != set {
                        tracing::info!(isolated = ?set, "fault injection: cut off from brokers");
                        *t.isolated.borrow_mut() = set;
                    }
                    drop(t);
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            })
            .detach();
        }
        // Core 0 of every peer from the start: the metadata group and controller requests go
        // there, and the hellos and pings let each side see the other.
        for node in cluster.peers.keys() {
            if *node != cluster.node_id {
                t.link(*node, 0);
            }
        }
        Some(t)
    }

    /// Sets how a group's messages find the core that owns the group on a peer
    /// (`(group, peer) -> core`; core 0 routes over the mesh when it is not the owner).
    pub fn set_resolver(&self, f: Box<dyn Fn(GroupId, NodeId) -> u16>) {
        *self.resolver.borrow_mut() = Some(f);
    }

    /// The link to `core` of `node`, opened on first use.
    fn link(&self, node: NodeId, core: u16) -> Option<Rc<Link>> {
        if let Some(l) = self.links.borrow().get(&(node, core)) {
            return Some(l.clone());
        }
        let base = *self.peers.get(&node)?;
        if node == self.me {
            return None;
        }
        let port = base.port().checked_add(core)?;
        let link = Rc::new(Link {
            peer: node,
            addr: SocketAddr::new(base.ip(), port),
            raft: RefCell::new(Vec::new()),
            requests: RefCell::new(VecDeque::new()),
            waiting: RefCell::new(HashMap::new()),
            work: Notify::default(),
            dropped: Cell::new(0),
        });
        glommio::spawn_local(run_link(
            link.clone(),
            self.hello.clone(),
            self.frame_max,
            self.me,
        ))
        .detach();
        self.links.borrow_mut().insert((node, core), link.clone());
        Some(link)
    }

    /// True while fault injection cuts this broker off from `node`.
    pub fn is_isolated(&self, node: NodeId) -> bool {
        self.isolated.borrow().contains(&node)
    }

    /// This broker.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Queues a Raft message of `group` for its destination (dropped when the queue is full
    /// or the destination is unknown: Raft retransmits).
    pub fn send(&self, group: GroupId, m: Message) {
        let node = NodeId(m.to);
        let core = self
            .resolver
            .borrow()
            .as_ref()
            .map_or(0, |resolve| resolve(group, node));
        let Some(link) = self.link(node, core) else {
            return;
        };
        if self.is_isolated(link.peer) {
            return;
        }
        let mut q = link.raft.borrow_mut();
        if q.len() >= self.raft_queue_max {
            link.dropped.set(link.dropped.get() + 1);
            return;
        }
        let first = q.is_empty();
        q.push((group, m));
        drop(q);
        if first {
            link.work.notify();
        }
    }

    /// Sends a request to `to` and waits for its response payload.
    pub async fn request(
        &self,
        to: NodeId,
        payload: Vec<u8>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, RpcError> {
        let link = self.link(to, 0).ok_or(RpcError::UnknownPeer(to.0))?;
        if self.is_isolated(to) {
            return Err(RpcError::Unreachable(to.0));
        }
        if link.requests.borrow().len() >= self.requests_queue_max {
            return Err(RpcError::QueueFull(to.0));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = futures::channel::oneshot::channel();
        link.waiting.borrow_mut().insert(id, tx);
        link.requests
            .borrow_mut()
            .push_back(frame(KIND_REQUEST, &[&id.to_be_bytes(), &payload]));
        link.work.notify();
        let timer = glommio::timer::sleep(Duration::from_millis(timeout_ms));
        futures::pin_mut!(timer);
        let r = match futures::future::select(rx, timer).await {
            futures::future::Either::Left((Ok(p), _)) => Ok(p),
            futures::future::Either::Left((Err(_), _)) => Err(RpcError::Unreachable(to.0)),
            futures::future::Either::Right(_) => Err(RpcError::Timeout(to.0, timeout_ms)),
        };
        link.waiting.borrow_mut().remove(&id);
        r
    }

    /// Raft messages dropped on full queues, per peer core.
    pub fn dropped(&self) -> Vec<((NodeId, u16), u64)> {
        self.links
            .borrow()
            .iter()
            .map(|(k, l)| (*k, l.dropped.get()))
            .collect()
    }
}

fn frame(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Reads one frame: its kind and body. `None` on a closed or broken connection, or a frame
/// over `max` (logged).
async fn read_frame<R: futures::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        tracing::warn!(len, max, "rpc frame of bad size; closing the connection");
        return None;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.ok()?;
    let kind = body[0];
    body.remove(0);
    Some((kind, body))
}

fn fail_waiting(link: &Link) {
    // Dropping the senders wakes every waiter with an error.
    link.waiting.borrow_mut().clear();
    link.requests.borrow_mut().clear();
}

async fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let attempt = TcpStream::connect(addr);
    futures::pin_mut!(attempt);
    let timer = glommio::timer::sleep(Duration::from_millis(CONNECT_TIMEOUT_MS));
    futures::pin_mut!(timer);
    match futures::future::select(attempt, timer).await {
        futures::future::Either::Left((Ok(s), _)) => Some(s),
        _ => None,
    }
}

/// Keeps the connection to one peer open and writes what is queued for it.
async fn run_link(link: Rc<Link>, hello: Vec<u8>, frame_max: usize, from: NodeId) {
    let mut logged_down = false;
    while !crate::shard::runtime::stopping() {
        let Some(stream) = connect(link.addr).await else {
            if !logged_down {
                tracing::info!(peer = link.peer.0, addr = %link.addr, "peer unreachable; retrying");
                logged_down = true;
            }
            link.raft.borrow_mut().clear();
            fail_waiting(&link);
            glommio::timer::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
            continue;
        };
        logged_down = false;
        tracing::info!(peer = link.peer.0, addr = %link.addr, "connected to peer");
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.split();
        if writer
            .write_all(&frame(KIND_HELLO, &[&hello]))
            .await
            .is_err()
        {
            continue;
        }
        let alive = Rc::new(Cell::new(true));
        let reader_task = {
            let (link, alive) = (link.clone(), alive.clone());
            glommio::spawn_local(async move {
                while let Some((kind, body)) = read_frame(&mut reader, frame_max).await {
                    if kind == KIND_RESPONSE && body.len() >= 8 {
                        let mut id = [0u8; 8];
                        id.copy_from_slice(&body[..8]);
                        let id = u64::from_be_bytes(id);
                        if let Some(tx) = link.waiting.borrow_mut().remove(&id) {
                            let _ = tx.send(body[8..].to_vec());
                        }
                    }
                }
                alive.set(false);
                link.work.notify();
            })
        };
        'connected: while alive.get() && !crate::shard::runtime::stopping() {
            let seen = link.work.generation();
            let msgs = std::mem::take(&mut *link.raft.borrow_mut());
            let reqs: Vec<Vec<u8>> = link.requests.borrow_mut().drain(..).collect();
            let mut wrote = false;
            for chunk in msgs.chunks(MESSAGES_PER_ENVELOPE_MAX) {
                let env = transport::encode(from, link.peer, chunk);
                if writer.write_all(&frame(KIND_RAFT, &[&env])).await.is_err() {
                    break 'connected;
                }
                wrote = true;
            }
            for r in reqs {
                if writer.write_all(&r).await.is_err() {
                    break 'connected;
                }
                wrote = true;
            }
            if wrote {
                continue;
            }
            let timer = glommio::timer::sleep(Duration::from_millis(PING_INTERVAL_MS));
            futures::pin_mut!(timer);
            let changed = link.work.wait(seen);
            futures::pin_mut!(changed);
            if let futures::future::Either::Right(_) = futures::future::select(changed, timer).await
            {
                if writer.write_all(&frame(KIND_PING, &[])).await.is_err() {
                    break;
                }
            }
        }
        drop(reader_task);
        fail_waiting(&link);
        tracing::info!(peer = link.peer.0, "connection to peer lost");
    }
}

/// Accepts inbound RPC connections (core 0) until the task is dropped.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "rpc accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve_conn(shard.clone(), stream)).detach();
    }
}

async fn serve_conn(shard: Rc<Shard>, stream: TcpStream) {
    let max = shard.config.limits.rpc_frame_bytes_max;
    let limits = TransportLimits {
        envelope_bytes_max: max,
        ..TransportLimits::default()
    };
    let (mut reader, mut writer) = stream.split();
    let (tx, mut rx) = futures::channel::mpsc::channel::<Vec<u8>>(
        shard.config.limits.rpc_requests_queued_per_peer_max,
    );
    let writer_task = glommio::spawn_local(async move {
        use futures::StreamExt;
        while let Some(f) = rx.next().await {
            if writer.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    let mut peer = None;
    while let Some((kind, body)) = read_frame(&mut reader, max).await {
        if let Some(p) = peer {
            if shard.transport.as_ref().is_some_and(|t| t.is_isolated(p)) {
                continue;
            }
        }
        match kind {
            KIND_HELLO => match serde_json::from_slice::<Hello>(&body) {
                Ok(h) => {
                    tracing::debug!(node = h.node_id, kafka = %format!("{}:{}", h.kafka_host, h.kafka_port), "rpc hello");
                    peer = Some(NodeId(h.node_id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bad rpc hello; closing");
                    break;
                }
            },
            KIND_RAFT => match transport::decode(&body, &limits) {
                Ok((_, _, msgs)) => route(&shard, msgs).await,
                Err(e) => {
                    tracing::warn!(error = %e, "bad raft envelope; closing");
                    break;
                }
            },
            KIND_REQUEST if body.len() >= 8 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&body[..8]);
                let payload = body[8..].to_vec();
                let (s, mut tx) = (shard.clone(), tx.clone());
                glommio::spawn_local(async move {
                    // The controller lives on core 0 (requests are sent there; stay safe anyway).
                    let reply = s
                        .invoke_on(ShardId(0), move |s0| async move {
                            crate::metadata::controller::serve_forwarded(&s0, &payload).await
                        })
                        .await
                        .unwrap_or_default();
                    let f = frame(KIND_RESPONSE, &[&id, &reply]);
                    let _ = futures::SinkExt::send(&mut tx, f).await;
                })
                .detach();
            }
            KIND_PING => {}
            other => {
                tracing::warn!(kind = other, "unknown rpc frame kind; closing");
                break;
            }
        }
    }
    drop(tx);
    drop(writer_task);
}

/// Hands each group's messages to the core that owns the group.
async fn route(shard: &Rc<Shard>, msgs: Vec<(GroupId, Message)>) {
    let image = shard.image();
    let mut by_core: BTreeMap<ShardId, Vec<(GroupId, Message)>> = BTreeMap::new();
    for (g, m) in msgs {
        let core = if g == super::METADATA_GROUP {
            Some(ShardId(0))
        } else {
            image.groups.get(&g.0).and_then(|(topic, p)| {
                let t = image.topics.get(topic)?;
                let meta = t.partitions.get(usize::try_from(*p).ok()?)?;
                Some(shard.owner_core(meta))
            })
        };
        // A group this broker does not know yet (its image lags): Raft retransmits.
        if let Some(core) = core {
            by_core.entry(core).or_default().push((g, m));
        }
    }
    for (core, msgs) in by_core {
        let r = shard
            .invoke_on(core, move |s| async move {
                for (g, m) in msgs {
                    let group = s.raft_groups.borrow().get(&g).cloned();
                    if let Some(group) = group {
                        group.step(m);
                    }
                }
            })
            .await;
        if r.is_err() {
            return;
        }
    }
}
