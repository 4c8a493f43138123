//! A Raft group's durable state outside its log: the hard state (term, vote, commit) and the
//! configuration (voters, learners), in one small checked file per group.
//!
//! Runs on the group's core. The file is `ringlog-storage`'s checked file (magic, length,
//! CRC32C, written to a temporary name, fdatasynced, renamed), so a reader sees the previous
//! state or the new one, never a torn one, and a damaged file is an error, never a guess. The
//! payload is the protobuf encoding of raft-rs's `HardState` and `ConfState`, so no field of
//! raft-rs's own types is lost in translation.
//!
//! Format of the payload: `u32 BE length of HardState`, `HardState`, `ConfState` (the rest).

use std::path::Path;

use protobuf::Message as _;
use raft::prelude::{ConfState, HardState};

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("storage: {0}")]
    Storage(#[from] ringlog_storage::StorageError),
    #[error("group state file {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Saves the state durably (replacing the previous one atomically).
pub async fn save(path: &Path, hs: &HardState, conf: &ConfState) -> Result<(), StateFileError> {
    let hs_bytes = hs.write_to_bytes().map_err(|e| StateFileError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let conf_bytes = conf.write_to_bytes().map_err(|e| StateFileError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut payload = Vec::with_capacity(4 + hs_bytes.len() + conf_bytes.len());
    payload.extend_from_slice(&(hs_bytes.len() as u32).to_be_bytes());
    payload.extend_from_slice(&hs_bytes);
    payload.extend_from_slice(&conf_bytes);
    ringlog_storage::file::write_checked(path, &payload).await?;
    Ok(())
}

/// Loads the state; `None` when the group has never saved one.
pub async fn load(path: &Path) -> Result<Option<(HardState, ConfState)>, StateFileError> {
    let Some(payload) = ringlog_storage::file::read_checked_strict(path).await? else {
        return Ok(None);
    };
    let corrupt = |reason: String| StateFileError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    if payload.len() < 4 {
        return Err(corrupt(format!("{} bytes", payload.len())));
    }
    let n = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    if 4 + n > payload.len() {
        return Err(corrupt(format!(
            "hard state of {n} bytes in {} bytes",
            payload.len()
        )));
    }
    let hs = HardState::parse_from_bytes(&payload[4..4 + n]).map_err(|e| corrupt(e.to_string()))?;
    let conf =
        ConfState::parse_from_bytes(&payload[4 + n..]).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some((hs, conf)))
}
