//! The storage crate's one error type.
//!
//! Errors are values, logged where they are handled (the server maps them to Kafka error codes in
//! one place), not where they are passed up. I/O errors carry the operation and file so the one
//! log line that reports them is enough to act on.

use std::path::PathBuf;
use std::rc::Rc;

use crate::batch::BatchError;
use crate::types::Offset;

/// Everything that can go wrong in the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// A system call failed. The log stays consistent: data that was not written is not in the
    /// log, and no offset is ever acknowledged for it.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the log was doing, as a verb phrase ("writing segment").
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error (shared, so the error stays cheap to clone).
        source: Rc<std::io::Error>,
    },
    /// Bytes on disk failed validation when read back: a checksum or structure mismatch inside
    /// data the log had flushed. The read fails; nothing unverified is returned.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The segment or index file.
        path: PathBuf,
        /// Byte position in that file.
        position: u64,
        /// What did not match.
        reason: String,
    },
    /// The batch handed to `append` is not a valid RecordBatch v2.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch is larger than the topic's `max.message.bytes`.
    #[error("record batch of {size_bytes} bytes exceeds the limit of {size_bytes_max}")]
    BatchTooLarge {
        /// Size of the batch.
        size_bytes: usize,
        /// The configured limit.
        size_bytes_max: usize,
    },
    /// A read or truncation named an offset outside `[start, end]`.
    #[error("offset {requested} is outside the log [{start}, {end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: Offset,
        /// The log start offset.
        start: Offset,
        /// The log end offset (next offset to be assigned).
        end: Offset,
    },
    /// An earlier write or sync failed, so the log stopped accepting writes. Reopening the log
    /// runs recovery and restores service.
    #[error("log is failed after an earlier I/O error; reopen it to recover")]
    Failed,
    /// The directory does not hold a log this version understands.
    #[error("bad log directory {path}: {reason}")]
    BadDirectory {
        /// The partition directory.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, StorageError>;

impl StorageError {
    /// Wraps an I/O error with the operation and path it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source: Rc::new(e),
        }
    }

    /// Wraps a glommio error (which converts to `std::io::Error`).
    pub(crate) fn glommio<T: std::fmt::Debug>(
        op: &'static str,
        path: impl Into<PathBuf>,
        e: glommio::GlommioError<T>,
    ) -> Self {
        StorageError::io(op, path, e.into())
    }
}
