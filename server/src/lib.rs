//! ringlog-server: the Kafka-compatible broker (binary `ringlog`).
//!
//! Not built yet: the single-node thread-per-core broker is issue #3. This crate exists so the
//! workspace has its final shape; it holds no code that pretends to work.
