//! ringlog-raft: per-partition Raft replication (issue #6), built on tikv's raft-rs.
//!
//! What exists so far:
//! - [`types`]: the newtypes that keep Raft indexes, Raft terms and node ids apart from each
//!   other and from Kafka offsets.
//! - [`replica`]: the driver of one Raft group member: tick, step, propose, and the Ready
//!   cycle (persist, send, apply, advance) over any log that implements raft-rs's `Storage`
//!   plus [`replica::Durable`]. It runs on one core and is `!Send` by design: the partition's
//!   owner core drives it.
//! - [`transport`]: the flatbuffers envelopes that carry many groups' messages between two
//!   brokers.
//! - [`state_file`]: a group's hard state and configuration in a checked, atomically replaced
//!   file (a damaged one is an error: a vote can not be rebuilt).
//! - [`sim`]: a deterministic, seeded simulator: several groups over a simulated network
//!   (delays, drops, partitions), simulated crashes and a simulated clock, checking that a
//!   committed entry is never lost or reordered and that replicas converge.
//!
//! Still to come (see the issue): the partition log as the Raft log (no second write-ahead
//! log) with persistence through the storage crate's group commit, the TCP transport between
//! brokers, the controller group and placement.

pub mod log_store;
pub mod replica;
pub mod sim;
pub mod state_file;
pub mod transport;
pub mod types;
