//! Aligned O_DIRECT appends to the active segment, with bounded in-flight writes.
//!
//! Runs on the partition's core, inside the log's state (never shared across cores). Appended
//! bytes are copied into a page-aligned DMA buffer of `write_buffer_bytes`; a full buffer becomes
//! a [`ReadyWrite`] and is submitted as one io_uring write. A flush submits the partly filled
//! buffer, padded with zeros to the next page, and carries its last partial page over to the next
//! buffer, which rewrites that page with the old bytes plus new ones (the tail-page rewrite).
//!
//! Invariants:
//! - writes are submitted in file order, and a buffer that rewrites the previous write's last
//!   page is submitted only after every earlier write completed (two in-flight writes never
//!   touch the same page);
//! - `written_pos` only advances over writes that completed, in order;
//! - the padding beyond the logical end is zeros, so a scan finds the end of data there.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile};
use glommio::task::JoinHandle;

use crate::segment::{align_down, align_up};
use crate::types::Offset;

/// A buffer ready to be written.
pub struct ReadyWrite {
    buf: DmaBuffer,
    pos: u64,
    /// Logical end of data in this write (file position).
    end_pos: u64,
    /// Last offset of the last batch that ends inside this write.
    last_offset: Option<Offset>,
    /// The first page was written before (tail-page rewrite): earlier writes must complete first.
    rewrites_previous_page: bool,
}

impl ReadyWrite {
    /// True when every earlier write must complete before this one is submitted.
    pub fn rewrites_previous_page(&self) -> bool {
        self.rewrites_previous_page
    }
}

/// A write submitted to the ring.
pub struct PendingWrite {
    handle: JoinHandle<std::io::Result<usize>>,
    expected_bytes: usize,
    end_pos: u64,
    last_offset: Option<Offset>,
}

impl PendingWrite {
    /// Waits for the write. Returns the logical end and last complete offset it made durable
    /// in order.
    pub async fn wait(self) -> std::io::Result<(u64, Option<Offset>)> {
        match self.handle.await {
            Some(Ok(n)) if n == self.expected_bytes => Ok((self.end_pos, self.last_offset)),
            Some(Ok(n)) => Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "short write: {n} of {} bytes (disk full or file size limit)",
                    self.expected_bytes
                ),
            )),
            Some(Err(e)) => Err(e),
            None => Err(std::io::Error::other("write task cancelled")),
        }
    }
}

/// The write side of the active segment.
pub struct Appender {
    file: Rc<DmaFile>,
    path: PathBuf,
    buffer_bytes: usize,
    buf: DmaBuffer,
    /// File position of `buf[0]`, page-aligned.
    buf_pos: u64,
    /// Valid bytes in `buf`.
    buf_len: usize,
    /// Bytes at the start of `buf` already submitted by an earlier write (the carried page).
    carried: usize,
    /// Last offset of the last batch completed inside `buf` since it was started.
    buf_last_offset: Option<Offset>,
    ready: VecDeque<ReadyWrite>,
    pending: VecDeque<PendingWrite>,
    /// Logical end of the data that is written (completed writes, in order).
    written_pos: u64,
}

impl Appender {
    /// An appender whose data ends at `end_pos`. `tail_page` holds the bytes of the partial page
    /// at `align_down(end_pos)..end_pos` (empty when `end_pos` is aligned).
    pub fn new(
        file: Rc<DmaFile>,
        path: PathBuf,
        buffer_bytes: usize,
        end_pos: u64,
        tail_page: &[u8],
    ) -> Appender {
        assert!(buffer_bytes > 0 && buffer_bytes as u64 % crate::segment::PAGE_BYTES == 0);
        let page = align_down(end_pos);
        assert_eq!(tail_page.len() as u64, end_pos - page);
        let mut buf = file.alloc_dma_buffer(buffer_bytes);
        buf.as_bytes_mut()[..tail_page.len()].copy_from_slice(tail_page);
        Appender {
            file,
            path,
            buffer_bytes,
            buf,
            buf_pos: page,
            buf_len: tail_page.len(),
            carried: tail_page.len(),
            buf_last_offset: None,
            ready: VecDeque::new(),
            pending: VecDeque::new(),
            written_pos: end_pos,
        }
    }

    /// The segment file.
    pub fn file(&self) -> &Rc<DmaFile> {
        &self.file
    }

    /// Path of the segment file.
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    /// Logical end of appended data (written or not).
    pub fn end_pos(&self) -> u64 {
        self.buf_pos + self.buf_len as u64
    }

    /// Logical end of data whose writes completed.
    pub fn written_pos(&self) -> u64 {
        self.written_pos
    }

    /// Writes submitted and not yet waited for.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing is buffered, ready or pending past `written_pos`.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.pending.is_empty() && self.end_pos() == self.written_pos
    }

    /// Copies one batch into the buffers. Full buffers become ready writes.
    pub fn copy_in(&mut self, mut bytes: &[u8], last_offset: Offset) {
        while !bytes.is_empty() {
            let room = self.buffer_bytes - self.buf_len;
            let n = room.min(bytes.len());
            self.buf.as_bytes_mut()[self.buf_len..self.buf_len + n].copy_from_slice(&bytes[..n]);
            self.buf_len += n;
            bytes = &bytes[n..];
            if bytes.is_empty() {
                self.buf_last_offset = Some(last_offset);
            }
            if self.buf_len == self.buffer_bytes {
                self.seal_buffer();
            }
        }
    }

    /// Moves the partly filled buffer to the ready queue (padded to a page) and carries its last
    /// partial page into a new buffer. No-op when the buffer holds no new bytes.
    pub fn seal_partial(&mut self) {
        if self.buf_len > self.carried {
            self.seal_buffer();
        }
    }

    fn seal_buffer(&mut self) {
        let len = self.buf_len;
        let write_len = align_up(len as u64) as usize;
        let tail = len % crate::segment::PAGE_BYTES as usize;
        let next_pos = self.buf_pos + align_down(len as u64);
        let mut next = self.file.alloc_dma_buffer(self.buffer_bytes);
        if tail > 0 {
            let from = len - tail;
            next.as_bytes_mut()[..tail].copy_from_slice(&self.buf.as_bytes()[from..len]);
        }
        let mut full = std::mem::replace(&mut self.buf, next);
        full.as_bytes_mut()[len..write_len].fill(0);
        full.trim_to_size(write_len);
        self.ready.push_back(ReadyWrite {
            buf: full,
            pos: self.buf_pos,
            end_pos: self.buf_pos + len as u64,
            last_offset: self.buf_last_offset.take(),
            rewrites_previous_page: self.carried > 0,
        });
        self.buf_pos = next_pos;
        self.buf_len = tail;
        self.carried = tail;
    }

    /// The next write to submit, if any.
    pub fn peek_ready(&self) -> Option<&ReadyWrite> {
        self.ready.front()
    }

    /// Submits the next ready write to the ring. The caller has checked the ordering rule
    /// ([`ReadyWrite::rewrites_previous_page`]) and the in-flight bound.
    pub fn submit_next(&mut self) {
        let Some(w) = self.ready.pop_front() else {
            return;
        };
        assert!(!w.rewrites_previous_page || self.pending.is_empty());
        let file = self.file.clone();
        let expected_bytes = w.buf.len();
        let pos = w.pos;
        let buf = w.buf;
        let handle = glommio::spawn_local(async move {
            file.write_at(buf, pos).await.map_err(std::io::Error::from)
        })
        .detach();
        self.pending.push_back(PendingWrite {
            handle,
            expected_bytes,
            end_pos: w.end_pos,
            last_offset: w.last_offset,
        });
    }

    /// Takes the oldest pending write, to wait for it outside the log's borrow.
    pub fn take_oldest(&mut self) -> Option<PendingWrite> {
        self.pending.pop_front()
    }

    /// Records that a write completed (in order).
    pub fn completed(&mut self, end_pos: u64) {
        assert!(end_pos >= self.written_pos, "writes complete in file order");
        self.written_pos = end_pos;
    }
}
