//! ringlog-server: the Kafka-compatible broker (binary `ringlog`).
//!
//! Rooms:
//! - [`config`], [`limits`]: settings and every bound, in one place each;
//! - [`shard`]: one executor per core, the cross-core mesh, startup and shutdown;
//! - [`kafka`]: listener, connections (framing, pipelining), one handler per API, error codes;
//! - [`partition`]: a partition on its owner core (log, high watermark, fetch waiters);
//! - [`metadata`]: the metadata log's records, the image every core reads, the controller;
//! - [`cluster`]: Raft groups, the broker-to-broker transport and peers (with `--peers`).

pub mod alloc;
pub mod cluster;
pub mod config;
pub mod groups;
pub mod kafka;
pub mod limits;
pub mod metadata;
pub mod notify;
pub mod partition;
pub mod producer_state;
pub mod shard;

/// The unit tests run the decoder on hostile input too, so they use the broker's allocator.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: alloc::BrokerAlloc = alloc::BrokerAlloc;
