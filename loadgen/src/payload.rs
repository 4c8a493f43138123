//! Message contents: the send-time stamp that end-to-end latency is read from, filler bytes,
//! keys, and Kafka's key partitioner.
//!
//! Value layout (when the value has at least 12 bytes):
//!
//! | bytes | content                                                              |
//! |-------|----------------------------------------------------------------------|
//! | 0..4  | `RLG1` (so consumers skip messages that are not the load generator's) |
//! | 4..12 | intended send time, microseconds since the Unix epoch, big-endian     |
//! | 12..  | filler: random bytes (incompressible, like OpenMessaging's payloads)  |
//!
//! The stamp is the *intended* send time, not the time the producer got round to the message,
//! so end-to-end latency is corrected for coordinated omission just like publish latency.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::workload::MessageSize;

/// The first bytes of every stamped value.
pub const MAGIC: [u8; 4] = *b"RLG1";

const FILLER_BYTES: usize = 1 << 16;

/// Values are cut from chunks of this size (one allocation per chunk instead of one per
/// message; a chunk is freed when the last batch holding one of its values is dropped).
const ARENA_CHUNK_BYTES: usize = 1 << 20;

/// Maps monotonic instants to wall-clock microseconds. Every core of one run shares one
/// mapping, so stamps and readings in this process are consistent and monotonic; another
/// process on the same host reads them against its own mapping of the same wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_wall_us: u64,
}

impl Clock {
    /// A mapping taken now.
    pub fn new() -> Clock {
        let base = Instant::now();
        let base_wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock { base, base_wall_us }
    }

    /// Wall-clock microseconds of `t`.
    pub fn wall_us(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.base) {
            Some(d) => self.base_wall_us + d.as_micros() as u64,
            None => self
                .base_wall_us
                .saturating_sub(self.base.duration_since(t).as_micros() as u64),
        }
    }

    /// Wall-clock microseconds now.
    pub fn now_us(&self) -> u64 {
        self.wall_us(Instant::now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Makes message values and keys for one producer.
pub struct Payloads {
    filler: Bytes,
    rng: SmallRng,
    size: MessageSize,
    keys: Option<Vec<Bytes>>,
    arena: BytesMut,
}

impl Payloads {
    /// A generator with its own seed.
    pub fn new(seed: u64, size: MessageSize, key_count: Option<u32>) -> Payloads {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut filler = BytesMut::with_capacity(FILLER_BYTES);
        while filler.len() < FILLER_BYTES {
            filler.put_u64(rng.gen());
        }
        let keys = key_count.map(|n| (0..n).map(|k| Bytes::from(format!("key-{k:08}"))).collect());
        Payloads {
            filler: filler.freeze(),
            rng,
            size,
            keys,
            arena: BytesMut::new(),
        }
    }

    /// The size of the next value.
    pub fn next_size(&mut self) -> u32 {
        match self.size {
            MessageSize::Fixed { bytes } => bytes,
            MessageSize::Uniform { min, max } => {
                min + self.rng.gen_range(0..(max - min + 1) as u64) as u32
            }
        }
    }

    /// A value of `size` bytes stamped with `intended_us` (unstamped if shorter than 12).
    pub fn value(&mut self, size: u32, intended_us: u64) -> Bytes {
        let size = size as usize;
        if self.arena.capacity() < size {
            self.arena = BytesMut::with_capacity(ARENA_CHUNK_BYTES.max(size));
        }
        let mut arena = std::mem::take(&mut self.arena);
        self.write_value(&mut arena, size, intended_us);
        let v = arena.split().freeze();
        self.arena = arena;
        v
    }

    /// Appends a value of `size` bytes stamped with `intended_us` to `b` (what [`Self::value`]
    /// returns, written where the caller wants it).
    pub fn write_value(&mut self, b: &mut BytesMut, size: usize, intended_us: u64) {
        let end = b.len() + size;
        if size >= 12 {
            b.put_slice(&MAGIC);
            b.put_u64(intended_us);
        }
        while b.len() < end {
            let start = self.rng.gen_range(0..FILLER_BYTES as u64) as usize;
            let n = (end - b.len()).min(FILLER_BYTES - start);
            b.put_slice(&self.filler[start..start + n]);
        }
    }

    /// The next key, if the workload is keyed.
    pub fn next_key(&mut self) -> Option<Bytes> {
        let keys = self.keys.as_ref()?;
        let i = self.rng.gen_range(0..keys.len() as u64) as usize;
        Some(keys[i].clone())
    }

    /// Random bits for callers (sticky partition choice).
    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }
}

/// The intended send time stamped in `value`, if it is one of ours.
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    if value.len() < 12 || value[..4] != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(value[4..12].try_into().ok()?))
}

/// Kafka's key hash (murmur2, seed 0x9747b28c), as the Java client's default partitioner uses.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions` (Kafka's `toPositive(murmur2(key)) % n`).
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_sizes_hold() {
        let mut p = Payloads::new(7, MessageSize::Uniform { min: 12, max: 300 }, Some(5));
        for _ in 0..1000 {
            let n = p.next_size();
            assert!((12..=300).contains(&n));
            let v = p.value(n, 1_234_567);
            assert_eq!(v.len(), n as usize);
            assert_eq!(read_stamp(&v), Some(1_234_567));
        }
        assert_eq!(read_stamp(b"short"), None);
        assert_eq!(read_stamp(b"XXXX12345678"), None);
        let small = p.value(5, 9);
        assert_eq!(small.len(), 5);
        assert_eq!(read_stamp(&small), None);
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from the Java client's Utils.murmur2 (UtilsTest#testMurmur2).
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input), want, "{:?}", std::str::from_utf8(input));
        }
    }

    #[test]
    fn keys_spread_over_partitions() {
        let mut counts = [0usize; 12];
        for k in 0..12_000 {
            counts[partition_for_key(format!("key-{k:08}").as_bytes(), 12)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn clock_maps_monotonically() {
        let c = Clock::new();
        let a = c.now_us();
        let b = c.wall_us(Instant::now() + std::time::Duration::from_millis(5));
        assert!(b >= a + 5_000);
    }
}
