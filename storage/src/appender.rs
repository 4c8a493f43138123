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
//! - the padding beyond the logical end is zeros, so a scan finds the end of data there;
//! - data up to `durable_pos` is durable; a write submitted through the plain descriptor is
//!   not durable until an fdatasync that starts after it completed, and `plain_end_pos` keeps
//!   the end of the last such write so a flush knows whether it needs one (writes through the
//!   write-through descriptor are durable on completion; see `segment.rs`).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::io::{DmaBuffer, DmaFile};

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

/// Completion state of the writes of one appender, shared with the write tasks, which record
/// their own completion (so waiting for writes needs no lock and no reaper).
#[derive(Default)]
pub struct Completions {
    /// Writes submitted so far (the next write's sequence number).
    submitted: u64,
    /// Every write with a sequence number below this completed.
    completed: u64,
    /// Completions that arrived out of order: sequence -> (end position, last offset).
    early: BTreeMap<u64, (u64, Option<Offset>)>,
    /// Logical end of the data whose writes completed, in order.
    written_pos: u64,
    /// Last offset of the last batch whose writes completed, in order.
    written_last: Option<Offset>,
    /// The first failed write's error.
    error: Option<Rc<std::io::Error>>,
    waiters: Vec<Waker>,
}

impl Completions {
    fn record(&mut self, seq: u64, r: std::io::Result<(u64, Option<Offset>)>) {
        match r {
            Ok(done) => {
                self.early.insert(seq, done);
                while let Some((end_pos, last)) = self.early.remove(&self.completed) {
                    assert!(end_pos >= self.written_pos, "writes complete in file order");
                    self.written_pos = end_pos;
                    if last.is_some() {
                        self.written_last = last;
                    }
                    self.completed += 1;
                }
            }
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(Rc::new(e));
                }
            }
        }
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    /// Writes submitted and not yet completed.
    pub fn in_flight(&self) -> u64 {
        self.submitted - self.completed
    }
}

/// A boxed completion wait, to await outside the log's borrow.
pub type BoxedWait = Pin<Box<dyn Future<Output = Result<(), Rc<std::io::Error>>>>>;

impl<F: Fn(&Completions) -> bool + Unpin + 'static> WaitCompletions<F> {
    /// Boxes the wait so it can outlive the borrow it was made under.
    pub fn await_boxed(self) -> BoxedWait {
        Box::pin(self)
    }
}

/// Waits until `ready(completions)` holds or a write failed.
pub struct WaitCompletions<F> {
    completions: Rc<RefCell<Completions>>,
    ready: F,
}

impl<F: Fn(&Completions) -> bool + Unpin> Future for WaitCompletions<F> {
    type Output = Result<(), Rc<std::io::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut c = self.completions.borrow_mut();
        if let Some(e) = &c.error {
            return Poll::Ready(Err(e.clone()));
        }
        if (self.ready)(&c) {
            return Poll::Ready(Ok(()));
        }
        if !c.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            c.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The write side of the active segment.
pub struct Appender {
    file: Rc<DmaFile>,
    /// The same file opened `O_DSYNC`, for the writes of a flush.
    through: Rc<DmaFile>,
    /// End position of the last write submitted through `file` (plain).
    plain_end_pos: u64,
    /// Data below this position is durable.
    durable_pos: u64,
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
    completions: Rc<RefCell<Completions>>,
    /// File size reserved by fallocate so far (a background extension may be running).
    preallocated: Rc<std::cell::Cell<u64>>,
    extending: Rc<std::cell::Cell<bool>>,
}

impl Appender {
    /// An appender whose data ends at `end_pos`. `tail_page` holds the bytes of the partial page
    /// at `align_down(end_pos)..end_pos` (empty when `end_pos` is aligned). Data up to `end_pos`
    /// must already be durable. `through` is the write-through descriptor of the same file.
    pub fn new(
        file: Rc<DmaFile>,
        through: Rc<DmaFile>,
        path: PathBuf,
        buffer_bytes: usize,
        end_pos: u64,
        tail_page: &[u8],
        preallocated: u64,
    ) -> Appender {
        assert!(buffer_bytes > 0 && buffer_bytes as u64 % crate::segment::PAGE_BYTES == 0);
        let page = align_down(end_pos);
        assert_eq!(tail_page.len() as u64, end_pos - page);
        let mut buf = file.alloc_dma_buffer(buffer_bytes);
        buf.as_bytes_mut()[..tail_page.len()].copy_from_slice(tail_page);
        Appender {
            file,
            through,
            plain_end_pos: 0,
            durable_pos: end_pos,
            path,
            buffer_bytes,
            buf,
            buf_pos: page,
            buf_len: tail_page.len(),
            carried: tail_page.len(),
            buf_last_offset: None,
            ready: VecDeque::new(),
            completions: Rc::new(RefCell::new(Completions {
                written_pos: end_pos,
                ..Completions::default()
            })),
            preallocated: Rc::new(std::cell::Cell::new(preallocated)),
            extending: Rc::new(std::cell::Cell::new(false)),
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

    /// Preallocates the next `step` in the background when the data is within half a step of
    /// the preallocated end (at most `limit` bytes in all). A failure is only logged: writes past
    /// the preallocated end still work (more slowly) and report their own errors.
    pub fn extend_preallocation(&self, step: u64, limit: u64) {
        let have = self.preallocated.get();
        if self.extending.get() || self.end_pos() + step / 2 < have || have >= limit {
            return;
        }
        let target = (have + step).min(limit);
        self.extending.set(true);
        let (file, cell, flag, path) = (
            self.file.clone(),
            self.preallocated.clone(),
            self.extending.clone(),
            self.path.clone(),
        );
        glommio::spawn_local(async move {
            match file.pre_allocate(target, false).await {
                Ok(()) => cell.set(cell.get().max(target)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "preallocating segment")
                }
            }
            flag.set(false);
        })
        .detach();
    }

    /// Logical end of data whose writes completed.
    pub fn written_pos(&self) -> u64 {
        self.completions.borrow().written_pos
    }

    /// Last offset of the last batch whose writes completed, in order.
    pub fn written_last(&self) -> Option<Offset> {
        self.completions.borrow().written_last
    }

    /// Writes submitted and not yet completed.
    pub fn in_flight(&self) -> u64 {
        self.completions.borrow().in_flight()
    }

    /// True when data written so far is not known durable without an fdatasync: a plain write
    /// ended past the durable position.
    pub fn needs_sync(&self) -> bool {
        self.plain_end_pos > self.durable_pos
    }

    /// Records that data below `pos` is durable (every write below it completed, through the
    /// write-through descriptor or followed by an fdatasync).
    pub fn mark_durable(&mut self, pos: u64) {
        assert!(pos <= self.written_pos(), "durable data was written");
        self.durable_pos = self.durable_pos.max(pos);
    }

    /// Writes submitted so far.
    pub fn submitted(&self) -> u64 {
        self.completions.borrow().submitted
    }

    /// True when nothing is buffered, ready or in flight past `written_pos`.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.in_flight() == 0 && self.end_pos() == self.written_pos()
    }

    /// Waits until fewer than `max` writes are in flight.
    pub fn wait_in_flight_below(
        &self,
        max: u64,
    ) -> WaitCompletions<impl Fn(&Completions) -> bool + Unpin> {
        WaitCompletions {
            completions: self.completions.clone(),
            ready: move |c: &Completions| c.in_flight() < max,
        }
    }

    /// Waits until every write submitted before sequence `target` completed.
    pub fn wait_completed(
        &self,
        target: u64,
    ) -> WaitCompletions<impl Fn(&Completions) -> bool + Unpin> {
        WaitCompletions {
            completions: self.completions.clone(),
            ready: move |c: &Completions| c.completed >= target,
        }
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

    /// Writes ready and not yet submitted.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The next write to submit, if any.
    pub fn peek_ready(&self) -> Option<&ReadyWrite> {
        self.ready.front()
    }

    /// Submits the next ready write to the ring, through the write-through descriptor when
    /// `write_through`. The caller has checked the ordering rule
    /// ([`ReadyWrite::rewrites_previous_page`]) and the in-flight bound.
    pub fn submit_next(&mut self, write_through: bool) {
        let Some(w) = self.ready.pop_front() else {
            return;
        };
        assert!(!w.rewrites_previous_page || self.in_flight() == 0);
        let file = if write_through {
            self.through.clone()
        } else {
            self.plain_end_pos = self.plain_end_pos.max(w.end_pos);
            self.file.clone()
        };
        let expected_bytes = w.buf.len();
        let (pos, end_pos, last_offset) = (w.pos, w.end_pos, w.last_offset);
        let buf = w.buf;
        let completions = self.completions.clone();
        let seq = {
            let mut c = completions.borrow_mut();
            c.submitted += 1;
            c.submitted - 1
        };
        glommio::spawn_local(async move {
            let r = match file.write_at(buf, pos).await {
                Ok(n) if n == expected_bytes => Ok((end_pos, last_offset)),
                Ok(n) => Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "short write: {n} of {expected_bytes} bytes (disk full or file size limit)"
                    ),
                )),
                Err(e) => Err(std::io::Error::from(e)),
            };
            completions.borrow_mut().record(seq, r);
        })
        .detach();
    }
}
