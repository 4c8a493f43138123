//! glibc allocator settings for a process that runs logs.
//!
//! glommio serves DMA buffers past its small registered pool (`io_memory`) with
//! `posix_memalign`, and a log takes a fresh write buffer (`write_buffer_bytes`, 256 KiB) for
//! every full buffer and every flush round. Left to glibc's dynamic mmap threshold, each of
//! those was observed to be a new `mmap`, then a `munmap` when its write completed, with a page
//! fault for each of its pages: in the broker at 20k msg/s (8 partitions, one core) 5.6k mmap
//! and munmap calls and 13k page faults per second, about 6% of its samples. With the thresholds
//! fixed, the buffers come from the heap and are reused. The broker and the storage benchmark
//! both call [`tune_system_allocator`] first thing, so the benchmark allocates as the broker
//! does.

/// Allocations below this are served from glibc's heap, never by a fresh `mmap` (the largest
/// threshold glibc accepts on 64-bit). Larger ones are rare: requests of up to
/// `request_bytes_max` in the broker.
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// glibc returns free memory at the top of a heap to the kernel only past this much, so a
/// core's buffers are not unmapped and faulted in again between bursts.
const TRIM_THRESHOLD_BYTES: i32 = 128 << 20;

/// Sets glibc's mmap and trim thresholds (see the module documentation). Call once, at
/// startup, before other threads exist. A failure only costs speed, so it is logged, not fatal.
pub fn tune_system_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    };
    if !ok {
        tracing::warn!("mallopt refused the allocator thresholds; large buffers will be mapped");
    }
}
