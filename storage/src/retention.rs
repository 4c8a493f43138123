//! Retention: deleting whole sealed segments by age and by total size, and rolling an idle
//! active segment by age.
//!
//! Runs on the partition's core from the housekeeping task queue (low priority), never on the
//! append path. Retention never deletes the active segment, so recent data stays even when it
//! is older than `retention.ms` (as in Kafka).

use crate::error::Result;
use crate::log::Log;
use crate::types::Offset;

/// What a housekeeping pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HousekeepingReport {
    /// The active segment was rolled by age.
    pub rolled: bool,
    /// Segments deleted by retention.
    pub segments_deleted: usize,
    /// Records removed by compaction.
    pub records_compacted: u64,
}

impl Log {
    /// Deletes the oldest sealed segments past `retention.ms` or beyond `retention.bytes`
    /// (when `cleanup.policy` includes delete). Returns how many were deleted.
    pub async fn enforce_retention(&self) -> Result<usize> {
        let cfg = self.config();
        if !cfg.cleanup_policy.deletes() {
            return Ok(0);
        }
        let now = self.clock.now_ms().0;
        let (new_start, count) = {
            let st = self.state.borrow();
            let mut total = st.sealed.values().map(|s| s.index.size_bytes).sum::<u64>()
                + st.active.index.size_bytes;
            let mut new_start: Option<Offset> = None;
            let mut count = 0;
            for seg in st.sealed.values() {
                let idx = &seg.index;
                let expired = cfg.retention_ms >= 0 && idx.max_timestamp.0 < now - cfg.retention_ms;
                let oversize = cfg.retention_bytes >= 0
                    && total - idx.size_bytes >= cfg.retention_bytes as u64;
                if !(expired || oversize) {
                    break;
                }
                total -= idx.size_bytes;
                let next = st
                    .sealed
                    .range(idx.base_offset.plus(1)..)
                    .next()
                    .map_or(st.active.index.base_offset, |(b, _)| *b);
                new_start = Some(next);
                count += 1;
            }
            (new_start, count)
        };
        match new_start {
            Some(s) if s > self.start_offset() => {
                self.truncate_prefix(s).await?;
                Ok(count)
            }
            _ => Ok(0),
        }
    }

    /// One housekeeping pass: roll by `segment.ms`, retention, then compaction. Run it from a
    /// low-priority task queue (see [`crate::housekeeping_queue`]).
    pub async fn housekeeping(&self) -> Result<HousekeepingReport> {
        let before = self.segment_count();
        self.roll_if_needed(0, false).await?;
        let rolled = self.segment_count() > before;
        let segments_deleted = self.enforce_retention().await?;
        let records_compacted = if self.config().cleanup_policy.compacts() {
            self.compact().await?.records_removed
        } else {
            0
        };
        Ok(HousekeepingReport {
            rolled,
            segments_deleted,
            records_compacted,
        })
    }
}
