//! The broker's global allocator: the system allocator, except that very large requests are
//! served by `mmap(MAP_NORESERVE)`.
//!
//! Why: the Kafka codec (`kafka-protocol` 0.18) sizes arrays with `Vec::with_capacity(n)`
//! using the element count read off the wire before decoding any element, so a 20-byte request
//! that declares 2^31 elements asks for tens of GiB up front; the system allocator refuses, and
//! an allocation failure aborts the process (it is not a panic). Upstream fixes are open
//! (kafka-protocol-rs pull requests 152, 161, 200). Reserving such a request as untouched,
//! unreserved address space instead lets `with_capacity` succeed without using memory; the
//! decoder then fails on the short buffer and the connection is closed. Real data never reaches
//! this path: requests are bounded by `request_bytes_max`.
//!
//! [`tune_system_allocator`] also fixes glibc's mmap threshold at startup, so the logs' DMA
//! write buffers come from the heap instead of a fresh mapping each (see
//! `ringlog_storage::alloc`).

use std::alloc::{GlobalAlloc, Layout, System};

/// Requests at least this large are mapped, not malloc'ed.
const HUGE_BYTES: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

pub use ringlog_storage::alloc::tune_system_allocator;

/// See the module documentation.
pub struct BrokerAlloc;

fn huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE_BYTES
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

unsafe impl GlobalAlloc for BrokerAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if huge(&layout) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if huge(&layout) {
            // Fresh anonymous pages read as zeros.
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if huge(&layout) {
            // SAFETY: `ptr` came from `map` with this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` and `layout.align()` form a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !huge(&layout) && !huge(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the common prefix, free the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn huge_reservation_succeeds_without_memory() {
        // 64 GiB of capacity on a machine with less: reserved, never touched.
        let v: Vec<u64> = Vec::with_capacity(8 << 30);
        assert!(v.capacity() >= 8 << 30);
        let mut v = v;
        v.push(1);
        assert_eq!(v[0], 1);
    }
}
