#![recursion_limit = "256"]
//! ringlog-loadgen: a Kafka-protocol load generator whose numbers a performance engineer can
//! trust, for Ringlog and for any other Kafka-compatible broker.
//!
//! - [`workload`]: what to run (command line or TOML file), validated once.
//! - [`run`]: setup on an unpinned executor, then one pinned glommio executor per load core with
//!   its share of [`producer`]s and [`consumer`]s, and a reporting thread merging per-second
//!   statistics ([`stats`]).
//! - [`client`] and [`cluster`]: the Kafka protocol (the `kafka-protocol` crate's codec), one
//!   pipelined connection per broker per producer or consumer, leaders followed via metadata;
//!   [`frame`] keeps record batches out of a second copy into the request frame.
//! - [`batch`]: uncompressed record batches written in place, one copy per value.
//! - [`payload`]: the intended-send-time stamp end-to-end latency is measured from.
//! - [`report`]: the OpenMessaging-compatible JSON result, HdrHistogram logs, the summary table
//!   and the HTML report.
//! - [`limits`]: every bound, in one place.
//!
//! Measurement rules (why the numbers can be trusted): latency runs from each message's
//! *intended* send time (coordinated-omission correction), aggregates include every message
//! intended inside the measured window however late its ack came, a run that cannot keep the
//! asked rate says so (exit code 6), and the load generator's own lag is reported every second.

pub mod batch;
pub mod client;
pub mod cluster;
pub mod consumer;
pub mod core;
pub mod cpu;
pub mod error;
pub mod frame;
pub mod limits;
pub mod payload;
pub mod producer;
pub mod report;
pub mod run;
pub mod stats;
pub mod workload;
