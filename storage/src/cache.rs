//! The per-core cache of recent batches: serves tail reads (consumers keeping up, followers
//! catching up) without touching the disk.
//!
//! One `BatchCache` per core, shared by every log on that core through an `Rc`; never crosses
//! threads. Bounded by [`crate::StorageLimits::cache_bytes_max`]: inserting past the bound evicts
//! the oldest inserted batches first (tail reads want the newest). Entries are exactly the bytes
//! the log wrote (header stamped, CRC valid), so a hit returns what a disk read would.
//!
//! Invariant: a cached batch for `(log, base)` is the batch the log holds at `base`. The log
//! removes entries before it removes or rewrites data (truncation, compaction, deletion).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

use crate::types::Offset;

/// Identifies a log within its core's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheLogId(u64);

#[derive(Debug)]
struct Entry {
    last_offset: Offset,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct Inner {
    bytes_max: usize,
    bytes: usize,
    next_id: u64,
    logs: HashMap<CacheLogId, BTreeMap<Offset, Entry>>,
    order: VecDeque<(CacheLogId, Offset)>,
}

/// A bounded cache of recent batches for all logs of one core.
#[derive(Debug)]
pub struct BatchCache {
    inner: RefCell<Inner>,
}

impl BatchCache {
    /// A cache holding at most `bytes_max` bytes of batches.
    pub fn new(bytes_max: usize) -> Rc<BatchCache> {
        Rc::new(BatchCache {
            inner: RefCell::new(Inner {
                bytes_max,
                ..Inner::default()
            }),
        })
    }

    /// A fresh id for a log opened on this core.
    pub fn register(&self) -> CacheLogId {
        let mut i = self.inner.borrow_mut();
        i.next_id += 1;
        let id = CacheLogId(i.next_id);
        i.logs.insert(id, BTreeMap::new());
        id
    }

    /// Forgets a closed log.
    pub fn unregister(&self, log: CacheLogId) {
        let mut i = self.inner.borrow_mut();
        if let Some(m) = i.logs.remove(&log) {
            i.bytes -= m.values().map(|e| e.bytes.len()).sum::<usize>();
        }
    }

    /// Bytes currently held.
    pub fn size_bytes(&self) -> usize {
        self.inner.borrow().bytes
    }

    /// Caches a batch just appended (or read) at `base..=last`.
    pub fn insert(&self, log: CacheLogId, base: Offset, last_offset: Offset, bytes: Bytes) {
        let mut i = self.inner.borrow_mut();
        let len = bytes.len();
        if len > i.bytes_max {
            return;
        }
        while i.bytes + len > i.bytes_max {
            let Some((l, o)) = i.order.pop_front() else {
                break;
            };
            let removed = i.logs.get_mut(&l).and_then(|m| m.remove(&o));
            if let Some(e) = removed {
                i.bytes -= e.bytes.len();
            }
        }
        let Some(m) = i.logs.get_mut(&log) else {
            return;
        };
        let old = m.insert(base, Entry { last_offset, bytes });
        let old_len = old.map_or(0, |e| e.bytes.len());
        i.bytes = i.bytes + len - old_len;
        i.order.push_back((log, base));
        if i.order.len() > 4 * (1 + i.logs.values().map(BTreeMap::len).sum::<usize>()) {
            let logs = &i.logs;
            let live: VecDeque<_> = i
                .order
                .iter()
                .copied()
                .filter(|(l, o)| logs.get(l).is_some_and(|m| m.contains_key(o)))
                .collect();
            i.order = live;
        }
    }

    /// Cached batches starting with the one that holds `from`, contiguous in offsets, stopping
    /// before `end` and once `max_bytes` is reached (at least one batch). `None` on a miss.
    pub fn read(
        &self,
        log: CacheLogId,
        from: Offset,
        end: Offset,
        max_bytes: usize,
    ) -> Option<Vec<Bytes>> {
        let i = self.inner.borrow();
        let m = i.logs.get(&log)?;
        let (first_base, first) = m.range(..=from).next_back()?;
        if first.last_offset < from {
            return None;
        }
        let mut out = Vec::new();
        let mut size = 0;
        let mut expect: Option<Offset> = None;
        for (base, e) in m.range(*first_base..) {
            if *base >= end || expect.is_some_and(|x| x != *base) {
                break;
            }
            if !out.is_empty() && size + e.bytes.len() > max_bytes {
                break;
            }
            size += e.bytes.len();
            out.push(e.bytes.clone());
            expect = Some(e.last_offset.plus(1));
            if size >= max_bytes {
                break;
            }
        }
        Some(out)
    }

    /// Drops every cached batch of `log` whose last offset is at or after `from`.
    pub fn remove_from(&self, log: CacheLogId, from: Offset) {
        let mut i = self.inner.borrow_mut();
        let Some(m) = i.logs.get_mut(&log) else {
            return;
        };
        let first = m
            .range(..from)
            .next_back()
            .filter(|(_, e)| e.last_offset >= from)
            .map(|(b, _)| *b)
            .unwrap_or(from);
        let tail = m.split_off(&first);
        let freed: usize = tail.values().map(|e| e.bytes.len()).sum();
        i.bytes -= freed;
    }

    /// Drops every cached batch of `log` in `[from, to)` by base offset.
    pub fn remove_range(&self, log: CacheLogId, from: Offset, to: Offset) {
        let mut i = self.inner.borrow_mut();
        let Some(m) = i.logs.get_mut(&log) else {
            return;
        };
        let keys: Vec<Offset> = m.range(from..to).map(|(b, _)| *b).collect();
        let mut freed = 0;
        for k in keys {
            if let Some(e) = m.remove(&k) {
                freed += e.bytes.len();
            }
        }
        i.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_contiguous() {
        let c = BatchCache::new(300);
        let a = c.register();
        for i in 0..5 {
            c.insert(
                a,
                Offset(i * 10),
                Offset(i * 10 + 9),
                Bytes::from(vec![0u8; 100]),
            );
        }
        assert!(c.size_bytes() <= 300);
        assert!(
            c.read(a, Offset(5), Offset(100), 1000).is_none(),
            "oldest evicted"
        );
        let got = c.read(a, Offset(25), Offset(100), 1000).expect("hit");
        assert_eq!(got.len(), 3);
        let got = c.read(a, Offset(25), Offset(40), 1000).expect("hit");
        assert_eq!(got.len(), 2, "stops at end");
        let got = c.read(a, Offset(25), Offset(100), 10).expect("hit");
        assert_eq!(got.len(), 1, "at least one batch");
        c.remove_from(a, Offset(35));
        assert_eq!(
            c.read(a, Offset(20), Offset(100), 1000).expect("hit").len(),
            1
        );
        assert_eq!(c.size_bytes(), 100);
    }
}
