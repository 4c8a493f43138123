//! ringlog-loadgen: the Kafka-protocol load generator (issue #4).
//!
//! Not built yet.
