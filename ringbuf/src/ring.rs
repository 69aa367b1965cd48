//! The lock-free reserve / commit / consume state machine.
//!
//! The algorithm follows the shape of LTTng's lockless ring buffer
//! (`libringbuffer/ring_buffer_frontend.c`: free-running write position, per-sub-buffer
//! commit counters, lap checks), with one change that makes a stuck writer harmless: a
//! sub-buffer whose previous lap still has pending commits is never reused, it is *skipped*
//! (see "Holes"). The code here is generic over [`Backend`], so the same functions run on a
//! real shared mapping (`mmap.rs`) and on the heap under loom (`model.rs`).
//!
//! # Positions
//!
//! `write_pos` is a free-running byte count. With S the sub-buffer size and N their number
//! (both powers of two), position `p` lies in global sub-buffer `g = p / S`, which uses slot
//! `g % N` in lap `g / N`, at offset `p % S`. Records never cross a sub-buffer boundary, and
//! every sub-buffer keeps at least one byte of padding at its end, so `p % S == 0` means
//! "sub-buffer `g` not entered yet".
//!
//! # Reserve (writers)
//!
//! Fast path, in a CAS loop: load `write_pos` (acquire), read the clock (ordered after that
//! load, see `clock.rs`), pick the header (compact when the id is <= 30 and the timestamp
//! shares its bits above bit 26 with `last_ts`), and if the record fits in the current
//! sub-buffer, CAS `write_pos` forward. Then write the header and hand out a slot; the payload
//! is written in place and [`SlotCore`]'s drop commits with one `fetch_add` on the commit
//! word, adding the record's bytes and one record.
//!
//! Slow path (the record does not fit, or the sub-buffer is not entered yet): look at the
//! commit word of the next sub-buffer `g`'s slot. It holds lap `g/N` already (another writer
//! prepared it: use it, or skip it if it is a hole) or the previous lap:
//!
//! - previous lap complete (and, in discard mode, CONSUMED by the reader): CAS it to a fresh
//!   word tagged with the new lap. In overwrite mode an unconsumed lap is overwritten here
//!   and its records are added to the lost counter: the CAS makes this exactly-once against
//!   the reader's claim, which is a CAS on the same word.
//! - previous lap incomplete (a writer is slow, or dead) and, in discard mode, already given
//!   up by the reader (CONSUMED): CAS it to a HOLE tagged with the new lap, keeping the old
//!   counts, and try the next sub-buffer.
//! - discard mode and not consumed: the buffer is full, drop the event and count it.
//!
//! Then CAS `write_pos` to the new sub-buffer's start plus the record. The winner closes the
//! old sub-buffer: it stores `content_end` and `ts_end`, then commits the padding (which may
//! be what completes it), and stores `ts_begin` of the new one before its record's commit.
//!
//! # Holes
//!
//! A sub-buffer with a pending commit is never handed to a new lap: its memory may still be
//! written by the writer that reserved in it. Writers skip it (a HOLE) lap after lap, until
//! the pending commit arrives and it completes. So a writer that is merely slow (stopped,
//! descheduled, or wrongly declared dead) only ever writes into memory no one else uses, and
//! its late commit lands on counts that belong to its own lap: it cannot corrupt a later lap.
//! A writer that really died leaves its slot a hole for the rest of the buffer's life (one
//! sub-buffer of capacity lost per killed writer).
//!
//! # Consume (reader)
//!
//! The reader reads global sub-buffers in order. A slot tagged with the expected lap that is
//! complete is copied out (`content_end` bytes, validated first), then *claimed* by a CAS
//! setting CONSUMED; that CAS is what releases the slot to writers. In overwrite mode the copy
//! may race with a writer of the next lap, but such a writer always CASes the same word
//! (resetting it) before it stores a byte, directly or through the write position: if the
//! reset wins, the claim fails and the copy is thrown away; if the claim wins, the reset
//! reads it (acquire), so every later store happens after the copy. Holes are skipped
//! silently, sub-buffers given up by [`Ring::check_stuck`] or overwritten leave a gap in the
//! packet sequence numbers.
//!
//! # Waking the reader
//!
//! Before sleeping on its eventfd the reader stores `waiting = 1`, issues a SeqCst fence and
//! looks for data once more. A writer whose commit completes a sub-buffer issues a SeqCst
//! fence, then loads `waiting`; if set, it swaps it to 0 and writes the eventfd. By the fence
//! rules either the writer sees the flag or the reader's re-check sees the completed commit,
//! so a wake-up is never lost, and writers make the syscall only on a completion the reader
//! is actually waiting for.
//!
//! # Accounting
//!
//! Every event is in exactly one place: a returned packet, or the lost counter (dropped by a
//! writer because the buffer was full, its payload too large, or its reservation contended
//! [`MAX_TRIES`] times; overwritten before the reader claimed it; or given up with a stuck
//! sub-buffer). A sub-buffer given up by `check_stuck` counts its committed records plus
//! one for the pending reservation: exact when one reservation was pending (the dead
//! writer's), a lower bound when several were.

#![forbid(unsafe_code)]

use crate::header::{Header, SlotCtl};
use crate::layout::{Geometry, Mode, to_usize};
use crate::primitive::{AtomicU64, Ordering, fence};
use crate::slot::SlotCore;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Highest event id a compact header can carry.
pub(crate) const MAX_COMPACT_ID: u32 = 30;
/// First byte of an extended header.
pub(crate) const EXTENDED_MARK: u8 = 31;
/// Size of a compact header.
pub(crate) const COMPACT_HEADER: u64 = 4;
/// Size of an extended header.
pub(crate) const EXTENDED_HEADER: u64 = 13;
/// Timestamp bits a compact header carries.
pub(crate) const COMPACT_TS_BITS: u32 = 27;
/// Attempts of one reservation before the event is dropped (and counted): a writer never
/// spins without bound, even against a hostile process rewriting the header. High enough
/// that honest contention (two CPUs hammering one buffer) practically never reaches it.
pub(crate) const MAX_TRIES: u32 = 1024;

/// Access to one buffer's memory: the real mapping, or the loom model's heap copy.
pub(crate) trait Backend {
    /// The fixed header.
    fn header(&self) -> &Header;
    /// Control line of slot `j` (callers pass `j < N`; implementations mask it anyway).
    fn slot(&self, j: usize) -> &SlotCtl;
    /// The buffer's clock, ordered after earlier loads.
    fn now(&self) -> u64;
    /// Copies `src` to data offset `off` (ignored if out of range).
    fn write(&self, off: usize, src: &[u8]);
    /// Zeroes `len` bytes at data offset `off` (ignored if out of range).
    fn zero(&self, off: usize, len: usize);
    /// Appends `len` bytes from data offset `off` to `out`; false (nothing appended) if the
    /// range is out of bounds.
    fn copy_out(&self, off: usize, len: usize, out: &mut Vec<u8>) -> bool;
    /// Signals the reader (eventfd write); errors are ignored.
    fn wake(&self);
}

/// One buffer: its geometry (private copy) and its memory.
#[derive(Debug)]
pub(crate) struct Ring<B> {
    pub(crate) geo: Geometry,
    pub(crate) be: B,
}

/// Outcome of one in-place reservation attempt.
enum Attempt<'a, B: Backend> {
    /// Reserved.
    Done(SlotCore<'a, B>),
    /// Another writer moved the position first; it is now this.
    Lost(u64),
    /// The record does not fit in the open sub-buffer (or none is open): switch, with the
    /// timestamp already read.
    Switch(u64),
}

/// Outcome of the slow reservation path.
enum Slow<'a, B: Backend> {
    Done(SlotCore<'a, B>),
    Full,
    Retry(u64),
}

/// Metadata of a sub-buffer returned by the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Timestamp of the sub-buffer's first record.
    pub timestamp_begin: u64,
    /// Timestamp at which it was closed (by the writer that switched, or by a flush).
    pub timestamp_end: u64,
    /// Bytes of records copied out (no padding).
    pub content_size: u64,
    /// Records in the packet.
    pub records: u64,
    /// Events lost in this buffer so far, as of this packet (running total, never
    /// decreases).
    pub events_discarded_total: u64,
    /// Packet sequence number: 0, 1, 2 ...; a gap means sub-buffers were lost (overwritten
    /// or given up as stuck).
    pub seq_num: u64,
}

/// What `Reader::check_stuck` gave up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StuckReport {
    /// Sub-buffers released without being read.
    pub released: u32,
    /// Events counted as lost with them (committed records + 1 each).
    pub events_lost: u64,
}

/// A sub-buffer failed validation when the reader copied it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The sub-buffer's control fields were inconsistent (a writer scribbled on shared
    /// memory). It was released and its records counted as lost; the next call goes on
    /// with the next sub-buffer.
    #[error("corrupt sub-buffer (packet {seq_num}): {reason}")]
    Corrupt {
        /// Sequence number the packet would have had.
        seq_num: u64,
        /// What was wrong.
        reason: &'static str,
    },
}

/// The reader's private position and bookkeeping (never in shared memory).
#[derive(Debug)]
pub(crate) struct ReaderState {
    /// Next global sub-buffer to read.
    next_g: u64,
    /// Next packet sequence number.
    seq: u64,
    /// Lost total reported in the last packet.
    reported_lost: u64,
    /// End timestamp of the last packet.
    last_ts_end: u64,
    /// Per slot: commit word seen without change since when (stuck detection).
    stuck: Vec<Option<(u64, Instant)>>,
}

/// What the reader finds at its position.
enum Peek {
    /// Nothing to do yet.
    NotReady,
    /// Writers skipped this sub-buffer: no packet, no gap.
    Hole,
    /// Given up earlier (stuck): a lost packet.
    Released,
    /// Overwrite mode: a later lap took the slot; the word is returned for reaping.
    Lapped(u64),
    /// Complete and unclaimed.
    Complete(u64),
}

impl<B: Backend> Ring<B> {
    /// Wraps a geometry and a backend.
    pub(crate) fn new(geo: Geometry, be: B) -> Ring<B> {
        Ring { geo, be }
    }

    /// Reserves a record of `payload_len` bytes for `id`; `None` means dropped (and
    /// counted).
    ///
    /// The common case, a record that fits in the open sub-buffer and wins its one
    /// compare-and-swap, is inlined into the caller; anything else (a lost race, a
    /// sub-buffer switch, a full buffer) goes to the out-of-line loop.
    #[inline(always)]
    pub(crate) fn reserve(&self, id: u32, payload_len: usize) -> Option<SlotCore<'_, B>> {
        if payload_len <= self.geo.max_payload {
            let pos = self.be.header().write.write_pos.load(Ordering::Acquire);
            if let Attempt::Done(slot) = self.attempt(pos, id, payload_len) {
                return Some(slot);
            }
        }
        self.reserve_loop(id, payload_len)
    }

    /// One reservation attempt at the position `pos` last seen: reads the clock (after the
    /// load of `pos`, see `clock`), and if the record fits in the open sub-buffer, tries
    /// the compare-and-swap once.
    #[inline(always)]
    fn attempt(&self, pos: u64, id: u32, payload_len: usize) -> Attempt<'_, B> {
        let geo = &self.geo;
        let wl = &self.be.header().write;
        let ts = self.be.now();
        let off = pos & geo.sub_mask;
        let compact = id <= MAX_COMPACT_ID
            && (ts ^ wl.last_ts.load(Ordering::Relaxed)) >> COMPACT_TS_BITS == 0;
        let len = payload_len as u64
            + if compact {
                COMPACT_HEADER
            } else {
                EXTENDED_HEADER
            };
        if off == 0 || off + len >= geo.sub_size {
            return Attempt::Switch(ts);
        }
        // AcqRel: acquire the previous reserver's position (and with it the slot reset it
        // did before entering this sub-buffer); release ours the same way.
        match wl.write_pos.compare_exchange(
            pos,
            pos.wrapping_add(len),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                if !compact {
                    wl.last_ts.store(ts, Ordering::Relaxed);
                }
                let j = geo.slot_of(geo.subbuf_of(pos));
                Attempt::Done(self.start_record(pos, j, id, ts, compact, payload_len))
            }
            Err(cur) => Attempt::Lost(cur),
        }
    }

    /// The retry loop behind [`Ring::reserve`].
    #[inline(never)]
    fn reserve_loop(&self, id: u32, payload_len: usize) -> Option<SlotCore<'_, B>> {
        if payload_len > self.geo.max_payload {
            return self.drop_event();
        }
        let mut pos = self.be.header().write.write_pos.load(Ordering::Acquire);
        for _ in 0..MAX_TRIES {
            match self.attempt(pos, id, payload_len) {
                Attempt::Done(slot) => return Some(slot),
                Attempt::Lost(cur) => pos = cur,
                Attempt::Switch(ts) => match self.reserve_slow(pos, ts, id, payload_len) {
                    Slow::Done(slot) => return Some(slot),
                    Slow::Full => return self.drop_event(),
                    Slow::Retry(cur) => pos = cur,
                },
            }
        }
        self.drop_event()
    }

    /// Enters a new sub-buffer (see the module docs, "Reserve").
    #[cold]
    #[inline(never)]
    fn reserve_slow(&self, pos: u64, ts: u64, id: u32, payload_len: usize) -> Slow<'_, B> {
        let geo = &self.geo;
        let wl = &self.be.header().write;
        let off = pos & geo.sub_mask;
        let cur = geo.subbuf_of(pos);
        let first = if off == 0 { cur } else { cur.wrapping_add(1) };
        // The first record of a packet can always be compact: the reader decodes it against
        // the packet's timestamp_begin, which is this very timestamp.
        let compact = id <= MAX_COMPACT_ID;
        let len = payload_len as u64
            + if compact {
                COMPACT_HEADER
            } else {
                EXTENDED_HEADER
            };
        // When closing `cur`, its own slot cannot be a candidate (it is still being written).
        let candidates = if off == 0 { geo.num } else { geo.num - 1 };
        let stale = || Slow::Retry(wl.write_pos.load(Ordering::Acquire));
        let mut target = None;
        for k in 0..candidates {
            let g = first.wrapping_add(k);
            let lap = geo.lap_of(g);
            let slot = self.be.slot(geo.slot_of(g));
            // Acquire: pairs with the release CAS of whoever prepared, claimed or completed
            // this slot, so the decision below sees the lap it describes.
            let w = slot.word.load(Ordering::Acquire);
            if geo.tag_is(w, lap) {
                if w & geo.hole != 0 {
                    continue;
                }
                target = Some(g);
                break;
            }
            if geo.tag_diff(w, lap) != geo.tag_field_mask() {
                // Neither this lap nor the previous one: our position is out of date.
                return stale();
            }
            let consumed = w & geo.consumed != 0;
            if geo.mode == Mode::Discard && !consumed {
                return Slow::Full;
            }
            if geo.complete(w) {
                if slot
                    .word
                    .compare_exchange(w, geo.tag_bits(lap), Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    return stale();
                }
                if !consumed {
                    // Overwrite mode: the reader never claimed that lap.
                    self.count_lost(geo.records(w));
                }
                target = Some(g);
                break;
            }
            // Pending commits from the previous lap: skip this sub-buffer for this lap.
            let holed = geo.retag(w, lap) | geo.hole;
            if slot
                .word
                .compare_exchange(w, holed, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return stale();
            }
        }
        let Some(g) = target else {
            return Slow::Full;
        };
        let start = g << geo.sub_shift;
        if let Err(now) = wl.write_pos.compare_exchange(
            pos,
            start.wrapping_add(len),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            return Slow::Retry(now);
        }
        wl.last_ts.store(ts, Ordering::Relaxed);
        if off != 0 {
            self.close(geo.slot_of(cur), off, ts);
        }
        let j = geo.slot_of(g);
        self.be.slot(j).ts_begin.store(ts, Ordering::Relaxed);
        Slow::Done(self.start_record(start, j, id, ts, compact, payload_len))
    }

    /// Writes the record header at `pos` and returns the payload slot.
    #[inline(always)]
    fn start_record(
        &self,
        pos: u64,
        j: usize,
        id: u32,
        ts: u64,
        compact: bool,
        payload_len: usize,
    ) -> SlotCore<'_, B> {
        let at = self.geo.data_offset(pos);
        let word = &self.be.slot(j).word;
        if compact {
            let low = u32::try_from(ts & ((1 << COMPACT_TS_BITS) - 1)).unwrap_or(0);
            let h = (id | low << 5).to_le_bytes();
            SlotCore::begin(self, word, at, &h, payload_len, ts)
        } else {
            let mut h = [0u8; to_usize(EXTENDED_HEADER)];
            h[0] = EXTENDED_MARK;
            h[1..5].copy_from_slice(&id.to_le_bytes());
            h[5..13].copy_from_slice(&ts.to_le_bytes());
            SlotCore::begin(self, word, at, &h, payload_len, ts)
        }
    }

    /// Closes the sub-buffer in slot `j` at offset `off`: records its end, then commits
    /// the padding.
    fn close(&self, j: usize, off: u64, ts: u64) {
        let slot = self.be.slot(j);
        slot.content_end.store(off, Ordering::Relaxed);
        slot.ts_end.store(ts, Ordering::Relaxed);
        self.commit(&slot.word, self.geo.sub_size - off);
    }

    /// Adds `delta` to a commit word; wakes the reader if that completed the sub-buffer.
    #[inline(always)]
    pub(crate) fn commit(&self, word: &AtomicU64, delta: u64) {
        // Release: the record's bytes (and for the closer, content_end and ts_end) are
        // visible to the reader's acquire load that sees the sub-buffer complete. All
        // commits are RMWs, so they form one release sequence.
        let prev = word.fetch_add(delta, Ordering::Release);
        if self.geo.complete(prev.wrapping_add(delta)) {
            self.completed();
        }
    }

    /// A sub-buffer just completed: wake the reader if it said it is waiting.
    #[cold]
    #[inline(never)]
    fn completed(&self) {
        // Dekker with `arm_wakeup`: our completing add, fence, load of `waiting` against
        // its store of `waiting`, fence, load of the commit word.
        fence(Ordering::SeqCst);
        let waiting = &self.be.header().reader.waiting;
        if waiting.load(Ordering::Relaxed) != 0 && waiting.swap(0, Ordering::Relaxed) != 0 {
            self.be.wake();
        }
    }

    /// Counts `n` lost events.
    fn count_lost(&self, n: u64) {
        if n != 0 {
            self.be.header().lost.lost.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Drops one event (counted).
    #[cold]
    fn drop_event(&self) -> Option<SlotCore<'_, B>> {
        self.count_lost(1);
        None
    }

    /// Closes the current partial sub-buffer so the reader can read it; true if there was
    /// one. A concurrent switch: it reserves the rest of the sub-buffer as padding with the
    /// same CAS writers use.
    pub(crate) fn flush(&self) -> bool {
        let wl = &self.be.header().write;
        let mut pos = wl.write_pos.load(Ordering::Acquire);
        for _ in 0..MAX_TRIES {
            let off = pos & self.geo.sub_mask;
            if off == 0 {
                return false;
            }
            let ts = self.be.now();
            let next = (pos - off).wrapping_add(self.geo.sub_size);
            match wl
                .write_pos
                .compare_exchange(pos, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.close(self.geo.slot_of(self.geo.subbuf_of(pos)), off, ts);
                    return true;
                }
                Err(now) => pos = now,
            }
        }
        false
    }

    /// A fresh reader state, resuming from the position a previous reader published.
    pub(crate) fn reader_state(&self) -> ReaderState {
        let hdr = self.be.header();
        let cur = self
            .geo
            .subbuf_of(hdr.write.write_pos.load(Ordering::Acquire));
        ReaderState {
            next_g: hdr.reader.read_pos.load(Ordering::Relaxed).min(cur),
            seq: hdr.reader.read_seq.load(Ordering::Relaxed),
            reported_lost: 0,
            last_ts_end: 0,
            stuck: vec![None; self.geo.num_usize()],
        }
    }

    /// The global sub-buffer the writers are in (or about to enter).
    fn current(&self) -> u64 {
        let wp = self.be.header().write.write_pos.load(Ordering::Acquire);
        self.geo.subbuf_of(wp)
    }

    /// In overwrite mode, the oldest sub-buffer that may still be in memory.
    fn floor(&self, cur: u64) -> u64 {
        cur.saturating_sub(self.geo.num)
    }

    /// Classifies global sub-buffer `g`, `cur` being the writers' current one.
    fn peek(&self, g: u64, cur: u64) -> Peek {
        let geo = &self.geo;
        let overwrite = geo.mode == Mode::Overwrite;
        if overwrite && g >= cur {
            return Peek::NotReady;
        }
        // Acquire: pairs with the commits' release (the data and the closer's fields).
        let w = self.be.slot(geo.slot_of(g)).word.load(Ordering::Acquire);
        let lap = geo.lap_of(g);
        if !geo.tag_is(w, lap) {
            return if overwrite {
                Peek::Lapped(w)
            } else if geo.tag_diff(w, lap) == geo.tag_field_mask() {
                // Still the previous lap: writers have not reached `g` yet.
                Peek::NotReady
            } else {
                // Writers moved this slot past `g` without us reading it: in discard mode
                // only a sub-buffer released by `check_stuck` lets them.
                Peek::Released
            };
        }
        if w & geo.hole != 0 {
            Peek::Hole
        } else if w & geo.consumed != 0 {
            Peek::Released
        } else if geo.complete(w) {
            Peek::Complete(w)
        } else {
            Peek::NotReady
        }
    }

    /// Moves past the current sub-buffer; `lost_packet` leaves a gap in the sequence.
    fn advance(&self, st: &mut ReaderState, lost_packet: bool) {
        st.next_g = st.next_g.wrapping_add(1);
        if lost_packet {
            st.seq = st.seq.wrapping_add(1);
        }
        self.publish(st);
    }

    /// Mirrors the reader's position into the header (for a re-attaching reader only).
    fn publish(&self, st: &ReaderState) {
        let r = &self.be.header().reader;
        r.read_pos.store(st.next_g, Ordering::Relaxed);
        r.read_seq.store(st.seq, Ordering::Relaxed);
    }

    /// Copies the next complete sub-buffer into `out` (cleared first).
    pub(crate) fn read_packet(
        &self,
        st: &mut ReaderState,
        out: &mut Vec<u8>,
    ) -> Result<Option<PacketInfo>, ReadError> {
        out.clear();
        let cur = self.current();
        if self.geo.mode == Mode::Overwrite {
            let floor = self.floor(cur);
            if st.next_g < floor {
                // Overwritten before we got to them (their records were counted by the
                // writers that reset their slots).
                st.seq = st.seq.wrapping_add(floor - st.next_g);
                st.next_g = floor;
                self.publish(st);
            }
        }
        // Bounded: at most every slot can be skipped once per call, so a hostile writer
        // cannot keep the reader spinning.
        for _ in 0..=2 * self.geo.num {
            let g = st.next_g;
            match self.peek(g, cur) {
                Peek::NotReady => return Ok(None),
                Peek::Hole => self.advance(st, false),
                Peek::Released => self.advance(st, true),
                Peek::Lapped(w) => {
                    self.reap_stale(self.geo.slot_of(g), w);
                    self.advance(st, true);
                }
                Peek::Complete(w) => {
                    if let Some(packet) = self.take(st, g, w, out)? {
                        return Ok(Some(packet));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Copies out and claims complete sub-buffer `g` whose word was `w`. `Ok(None)`: it was
    /// overwritten during the copy (counted by the overwriting writer).
    fn take(
        &self,
        st: &mut ReaderState,
        g: u64,
        w: u64,
        out: &mut Vec<u8>,
    ) -> Result<Option<PacketInfo>, ReadError> {
        let geo = &self.geo;
        let j = geo.slot_of(g);
        let slot = self.be.slot(j);
        let records = geo.records(w);
        let content = slot.content_end.load(Ordering::Relaxed);
        let ts_begin = slot.ts_begin.load(Ordering::Relaxed);
        let ts_end = slot.ts_end.load(Ordering::Relaxed);
        let mut problem = check_packet(geo, content, records, ts_begin, ts_end);
        if problem.is_none() && !self.be.copy_out(geo.slot_start(j), to_usize(content), out) {
            problem = Some("content outside the data area");
        }
        // AcqRel: the release half orders the copy before the claim. A writer can reuse the
        // slot only through its own CAS on this word: if that comes first, this CAS fails
        // and the copy (possibly torn) is dropped; if it comes after, it reads our claim and
        // everything it and later writers store happens after the copy.
        let claimed = slot
            .word
            .compare_exchange(w, w | geo.consumed, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if !claimed {
            out.clear();
            self.advance(st, true);
            return Ok(None);
        }
        let seq_num = st.seq;
        self.advance(st, true);
        if let Some(reason) = problem {
            out.clear();
            self.count_lost(records);
            return Err(ReadError::Corrupt { seq_num, reason });
        }
        let total = self.lost_total(st);
        st.reported_lost = total;
        st.last_ts_end = ts_end;
        Ok(Some(PacketInfo {
            timestamp_begin: ts_begin,
            timestamp_end: ts_end,
            content_size: content,
            records,
            events_discarded_total: total,
            seq_num,
        }))
    }

    /// The lost counter, never below what was already reported.
    fn lost_total(&self, st: &ReaderState) -> u64 {
        let lost = self.be.header().lost.lost.load(Ordering::Relaxed);
        lost.max(st.reported_lost)
    }

    /// Overwrite mode: a hole whose old lap has completed but was never read holds records
    /// no one will deliver; claim it and count them (the CAS makes this exactly-once
    /// against the writer that would otherwise count them when it resets the slot).
    fn reap_stale(&self, j: usize, w: u64) {
        let geo = &self.geo;
        if geo.mode != Mode::Overwrite
            || w & geo.hole == 0
            || w & geo.consumed != 0
            || !geo.complete(w)
        {
            return;
        }
        let word = &self.be.slot(j).word;
        if word
            .compare_exchange(w, w | geo.consumed, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.count_lost(geo.records(w));
        }
    }

    /// True when [`Ring::read_packet`] would return a packet now.
    pub(crate) fn has_data(&self, st: &ReaderState) -> bool {
        let cur = self.current();
        let mut g = st.next_g;
        if self.geo.mode == Mode::Overwrite {
            g = g.max(self.floor(cur));
        }
        for _ in 0..=2 * self.geo.num {
            match self.peek(g, cur) {
                Peek::NotReady => return false,
                Peek::Complete(_) => return true,
                Peek::Hole | Peek::Released | Peek::Lapped(_) => g = g.wrapping_add(1),
            }
        }
        false
    }

    /// True when everything written so far has been read or accounted for and no
    /// sub-buffer is open.
    pub(crate) fn drained(&self, st: &ReaderState) -> bool {
        let wp = self.be.header().write.write_pos.load(Ordering::Acquire);
        // `>=`: the reader may already have skipped a hole right at the write position.
        wp & self.geo.sub_mask == 0 && st.next_g >= self.geo.subbuf_of(wp)
    }

    /// Arms the wake-up: returns true if data is already there (do not sleep; call
    /// [`Ring::disarm_wakeup`]).
    pub(crate) fn arm_wakeup(&self, st: &ReaderState) -> bool {
        self.be.header().reader.waiting.store(1, Ordering::Relaxed);
        // Dekker with `completed`, see the module docs.
        fence(Ordering::SeqCst);
        self.has_data(st)
    }

    /// Clears the waiting flag.
    pub(crate) fn disarm_wakeup(&self) {
        self.be.header().reader.waiting.store(0, Ordering::Relaxed);
    }

    /// Looks for sub-buffers whose writers stopped committing; see [`StuckReport`].
    ///
    /// A slot is stuck when it is *closed* (the write position moved past it: it is not the
    /// sub-buffer being filled, nor one prepared for the next lap), has uncommitted bytes,
    /// was not released, and its commit word has not changed for `timeout` (measured across
    /// calls). It is released only if `writer_died`: then it is marked CONSUMED, delivered
    /// to no one, and its committed records plus one are counted as lost. Writers keep
    /// skipping its memory until its pending commits arrive, so a writer that was alive
    /// after all cannot corrupt anything.
    pub(crate) fn check_stuck(
        &self,
        st: &mut ReaderState,
        now: Instant,
        timeout: Duration,
        writer_died: bool,
    ) -> StuckReport {
        let geo = &self.geo;
        let cur = self.current();
        let cur_slot = geo.slot_of(cur);
        let cur_lap = geo.lap_of(cur);
        let mut report = StuckReport::default();
        for (j, track) in st.stuck.iter_mut().enumerate() {
            let word = &self.be.slot(j).word;
            let w = word.load(Ordering::Acquire);
            if geo.complete(w) {
                self.reap_stale(j, w);
                *track = None;
                continue;
            }
            if w & geo.consumed != 0 {
                *track = None;
                continue;
            }
            let closed = w & geo.hole != 0
                || match geo.tag_diff(w, cur_lap) {
                    0 => j < cur_slot,
                    d => d == geo.tag_field_mask(),
                };
            if !closed {
                *track = None;
                continue;
            }
            match *track {
                Some((seen, since)) if seen == w => {
                    if writer_died && now.saturating_duration_since(since) >= timeout {
                        if word
                            .compare_exchange(
                                w,
                                w | geo.consumed,
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            )
                            .is_ok()
                        {
                            let lost = geo.records(w) + 1;
                            self.count_lost(lost);
                            report.released += 1;
                            report.events_lost += lost;
                        }
                        *track = None;
                    }
                }
                _ => *track = Some((w, now)),
            }
        }
        report
    }

    /// Lost events so far (the counter in shared memory).
    pub(crate) fn events_discarded_total(&self, st: &ReaderState) -> u64 {
        self.lost_total(st)
    }

    /// An empty packet carrying the lost total, if it grew since the last packet.
    pub(crate) fn final_packet(&self, st: &mut ReaderState) -> Option<PacketInfo> {
        if self.geo.mode == Mode::Overwrite {
            for j in 0..self.geo.num_usize() {
                let w = self.be.slot(j).word.load(Ordering::Acquire);
                self.reap_stale(j, w);
            }
        }
        let total = self.lost_total(st);
        if total == st.reported_lost {
            return None;
        }
        let ts = self.be.now().max(st.last_ts_end);
        let seq_num = st.seq;
        st.seq = st.seq.wrapping_add(1);
        st.reported_lost = total;
        st.last_ts_end = ts;
        self.publish(st);
        Some(PacketInfo {
            timestamp_begin: ts,
            timestamp_end: ts,
            content_size: 0,
            records: 0,
            events_discarded_total: total,
            seq_num,
        })
    }
}

/// Sanity checks on a complete sub-buffer's fields before anything is copied.
fn check_packet(
    geo: &Geometry,
    content: u64,
    records: u64,
    ts_begin: u64,
    ts_end: u64,
) -> Option<&'static str> {
    if content >= geo.sub_size {
        Some("content size beyond the sub-buffer")
    } else if records.saturating_mul(COMPACT_HEADER) > content {
        Some("more records than the content can hold")
    } else if ts_begin > ts_end {
        Some("timestamp_begin after timestamp_end")
    } else {
        None
    }
}
