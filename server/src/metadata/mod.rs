//! Cluster metadata: the records of the metadata log, the image every core reads, and the
//! controller that owns the log.
//!
//! The controller runs on core 0 (a dedicated core once the Raft controller of issue #6
//! replicates this log). It is the only writer: every change is a record appended and flushed
//! to the metadata log before it is applied. Each core holds an immutable `Arc<MetadataImage>`
//! read copy, replaced whole when the controller broadcasts a new one; nothing in it is ever
//! mutated in place.

pub mod controller;
pub mod image;
pub mod records;

pub use controller::Controller;
pub use image::{MetadataImage, PartitionMeta, TopicMeta};
pub use records::MetadataRecord;
