//! ringlog-raft: per-partition Raft replication over `ringlog-storage` (issue #6).
//!
//! Not built yet. The storage crate already offers what raft-rs's `Storage` trait and driver
//! need: term of an offset, last offset and term, first offset, suffix and prefix truncation.
