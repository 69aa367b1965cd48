//! A heap-backed buffer for the loom models (built only with `--cfg loom`).
//!
//! loom cannot model `mmap`, so this backend keeps the same [`Header`] and [`SlotCtl`]
//! structures (with loom's atomics) in boxes and the data area in loom cells, and runs the
//! very same `ring.rs` code on them. Two data variants:
//!
//! - [`DataKind::Exclusive`]: each byte is a `loom::cell::UnsafeCell`, so loom reports any
//!   access to record bytes that is not ordered by the protocol (a reader copying bytes a
//!   writer may still be writing, or two writers sharing bytes). Used for discard mode,
//!   where no race on record bytes is allowed at all.
//! - [`DataKind::Racy`]: each byte is a relaxed `AtomicU8`, for overwrite mode, whose reader
//!   copies optimistically and validates afterwards (see `ring.rs`); the models then check
//!   that every packet it accepts is intact.
//!
//! The clock is a shared counter incremented by every read, so timestamps are unique and
//! ordered whenever the reads are.

use crate::header::{Header, SlotCtl};
use crate::layout::{Geometry, Mode};
use crate::primitive::{AtomicU8, AtomicU64, AtomicUsize, Ordering, UnsafeCell};
use crate::ring::{Backend, PacketInfo, ReadError, ReaderState, Ring, StuckReport};
use crate::slot::SlotCore;
use std::time::{Duration, Instant};

/// How record bytes are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Plain cells: loom flags every unordered access.
    Exclusive,
    /// Relaxed atomics: racy reads allowed, contents checked by the model.
    Racy,
}

enum Data {
    Cells(Box<[UnsafeCell<u8>]>),
    Atomics(Box<[AtomicU8]>),
}

/// The loom backend.
struct HeapBackend {
    hdr: Box<Header>,
    slots: Box<[SlotCtl]>,
    data: Data,
    clock: AtomicU64,
    wakes: AtomicUsize,
}

impl Backend for HeapBackend {
    fn header(&self) -> &Header {
        &self.hdr
    }

    fn slot(&self, j: usize) -> &SlotCtl {
        &self.slots[j & (self.slots.len() - 1)]
    }

    fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn write(&self, off: usize, src: &[u8]) {
        if off
            .checked_add(src.len())
            .is_none_or(|end| end > self.data_len())
        {
            return;
        }
        for (i, &b) in src.iter().enumerate() {
            match &self.data {
                Data::Cells(c) => c[off + i].with_mut(|p| {
                    // SAFETY: loom checks that no other thread accesses this cell
                    // concurrently (it panics otherwise); the pointer is valid for the cell.
                    unsafe { *p = b }
                }),
                Data::Atomics(a) => a[off + i].store(b, Ordering::Relaxed),
            }
        }
    }

    fn zero(&self, off: usize, len: usize) {
        for i in off..off + len {
            self.write(i, &[0]);
        }
    }

    fn copy_out(&self, off: usize, len: usize, out: &mut Vec<u8>) -> bool {
        if off.checked_add(len).is_none_or(|end| end > self.data_len()) {
            return false;
        }
        for i in off..off + len {
            out.push(match &self.data {
                Data::Cells(c) => c[i].with(|p| {
                    // SAFETY: as in `write`, loom checks the access is ordered.
                    unsafe { *p }
                }),
                Data::Atomics(a) => a[i].load(Ordering::Relaxed),
            });
        }
        true
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

impl HeapBackend {
    fn data_len(&self) -> usize {
        match &self.data {
            Data::Cells(c) => c.len(),
            Data::Atomics(a) => a.len(),
        }
    }
}

// SAFETY: the only non-Sync parts are the loom cells of the data area; loom tracks every
// access to them and fails the model on any access not ordered by happens-before, which is
// exactly the guarantee Sync asks for.
unsafe impl Sync for HeapBackend {}

/// A buffer on the heap, shared by the model's threads (wrap it in `loom::sync::Arc`).
pub struct ModelRing {
    ring: Ring<HeapBackend>,
}

impl std::fmt::Debug for ModelRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRing")
            .field("geo", &self.ring.geo)
            .finish()
    }
}

impl ModelRing {
    /// A buffer of `2^num_shift` sub-buffers of `2^sub_shift` bytes (`sub_shift >= 4`).
    pub fn new(sub_shift: u32, num_shift: u32, mode: Mode, kind: DataKind) -> ModelRing {
        let geo = Geometry::from_shifts(sub_shift, num_shift, mode);
        let size = (1usize << sub_shift) << num_shift;
        let data = match kind {
            DataKind::Exclusive => Data::Cells((0..size).map(|_| UnsafeCell::new(0)).collect()),
            DataKind::Racy => Data::Atomics((0..size).map(|_| AtomicU8::new(0)).collect()),
        };
        let be = HeapBackend {
            hdr: Box::new(Header::new_zeroed()),
            slots: (0..1usize << num_shift)
                .map(|_| SlotCtl::new_zeroed())
                .collect(),
            data,
            clock: AtomicU64::new(0),
            wakes: AtomicUsize::new(0),
        };
        ModelRing {
            ring: Ring::new(geo, be),
        }
    }

    /// Reserves a record (see `Writer::reserve`).
    pub fn reserve(&self, id: u32, payload_len: usize) -> Option<ModelSlot<'_>> {
        self.ring
            .reserve(id, payload_len)
            .map(|core| ModelSlot { core })
    }

    /// Closes the partial sub-buffer (see `Reader::flush`).
    pub fn flush(&self) -> bool {
        self.ring.flush()
    }

    /// Eventfd writes so far.
    pub fn wakes(&self) -> usize {
        self.ring.be.wakes.load(Ordering::SeqCst)
    }

    /// The lost counter.
    pub fn lost(&self) -> u64 {
        self.ring.be.hdr.lost.lost.load(Ordering::SeqCst)
    }

    /// A reader state starting at the beginning.
    pub fn reader(&self) -> ModelReader {
        ModelReader {
            st: self.ring.reader_state(),
        }
    }
}

/// A reserved record in the model.
#[derive(Debug)]
pub struct ModelSlot<'a> {
    core: SlotCore<'a, HeapBackend>,
}

impl ModelSlot<'_> {
    /// Appends payload bytes.
    pub fn put(&mut self, bytes: &[u8]) -> bool {
        self.core.put(bytes)
    }

    /// The record's timestamp.
    pub fn timestamp(&self) -> u64 {
        self.core.timestamp()
    }

    /// Commits (drop does the same).
    pub fn commit(self) {}
}

/// The reader's private state in the model (one per model).
#[derive(Debug)]
pub struct ModelReader {
    st: ReaderState,
}

impl ModelReader {
    /// See `Reader::read_packet`.
    pub fn read_packet(
        &mut self,
        ring: &ModelRing,
        out: &mut Vec<u8>,
    ) -> Result<Option<PacketInfo>, ReadError> {
        ring.ring.read_packet(&mut self.st, out)
    }

    /// See `Reader::has_data`.
    pub fn has_data(&self, ring: &ModelRing) -> bool {
        ring.ring.has_data(&self.st)
    }

    /// See `Reader::drained`.
    pub fn drained(&self, ring: &ModelRing) -> bool {
        ring.ring.drained(&self.st)
    }

    /// See `Reader::arm_wakeup`.
    pub fn arm_wakeup(&self, ring: &ModelRing) -> bool {
        ring.ring.arm_wakeup(&self.st)
    }

    /// See `Reader::disarm_wakeup`.
    pub fn disarm_wakeup(&self, ring: &ModelRing) {
        ring.ring.disarm_wakeup();
    }

    /// `Reader::check_stuck` with a zero timeout and a dead writer: releases what stayed
    /// unchanged since the previous call.
    pub fn release_stuck(&mut self, ring: &ModelRing) -> StuckReport {
        ring.ring
            .check_stuck(&mut self.st, Instant::now(), Duration::ZERO, true)
    }

    /// See `Reader::final_packet`.
    pub fn final_packet(&mut self, ring: &ModelRing) -> Option<PacketInfo> {
        ring.ring.final_packet(&mut self.st)
    }
}
