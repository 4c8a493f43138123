//! Newtypes of the Raft layer.
//!
//! A Raft index counts Raft entries (including Raft's own empty and configuration entries);
//! a Kafka offset counts records. They are different number lines and never mix: the mapping
//! between them lives with the partition log when it becomes the Raft log.

use std::fmt;

/// A Raft node id (raft-rs ids are non-zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// A position in a Raft log (1-based; 0 means "none").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RaftIndex(pub u64);

/// A Raft term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RaftTerm(pub u64);

/// A Raft group (one per partition, plus the controller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for RaftIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
