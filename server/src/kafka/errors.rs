//! Kafka error codes, mapped in one place.
//!
//! Handlers return [`KafkaError`] values; this module is the only one that decides which Kafka
//! code an operating error becomes. Errors are logged where they are handled: here only when
//! the cause is the broker's own (storage failure), not the client's input.

use kafka_protocol::error::ResponseError;
use ringlog_storage::{BatchError, StorageError};

/// A Kafka error code with a message for the client and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaError {
    /// The Kafka error.
    pub error: ResponseError,
    /// Detail, sent as `error_message` where the API has one.
    pub message: String,
}

impl KafkaError {
    /// An error with a message.
    pub fn new(error: ResponseError, message: impl Into<String>) -> KafkaError {
        KafkaError {
            error,
            message: message.into(),
        }
    }

    /// The wire code.
    pub fn code(&self) -> i16 {
        self.error.code()
    }

    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub fn unknown_partition(topic: &str, partition: i32) -> KafkaError {
        KafkaError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("{topic}-{partition} does not exist"),
        )
    }
}

impl From<StorageError> for KafkaError {
    fn from(e: StorageError) -> KafkaError {
        match &e {
            StorageError::InvalidBatch(BatchError::BadMagic(_)) => {
                KafkaError::new(ResponseError::UnsupportedForMessageFormat, e.to_string())
            }
            StorageError::InvalidBatch(_) => {
                KafkaError::new(ResponseError::CorruptMessage, e.to_string())
            }
            StorageError::BatchTooLarge { .. } => {
                KafkaError::new(ResponseError::MessageTooLarge, e.to_string())
            }
            StorageError::OffsetOutOfRange { .. } => {
                KafkaError::new(ResponseError::OffsetOutOfRange, e.to_string())
            }
            StorageError::Io { .. }
            | StorageError::Corrupt { .. }
            | StorageError::Failed
            | StorageError::BadDirectory { .. } => {
                tracing::error!(error = %e, "storage error");
                KafkaError::new(ResponseError::KafkaStorageError, e.to_string())
            }
        }
    }
}

/// The code for an optional error (0 for none).
pub fn code_of(e: &Option<KafkaError>) -> i16 {
    e.as_ref().map_or(0, KafkaError::code)
}
