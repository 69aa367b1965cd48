//! Channels: the per-CPU ring buffers of one session channel, as this process writes them,
//! and the emit path that writes a record into each channel interested in an event.
//!
//! # Slots
//!
//! A live channel sits in one of [`MAX_SLOTS`] global slots; bit `i` of a callsite's interest
//! word stands for slot `i`. The emit path ([`record`]) walks the set bits and, for each,
//! loads the slot (`Acquire`), checks that the channel is active and not retired, looks the
//! event's trace id up in the channel's own id table, picks the buffer of the current CPU,
//! and reserves, writes and commits a record. None of it allocates, locks or calls the
//! kernel (the ring buffer may write an eventfd to wake its reader at a sub-buffer switch).
//!
//! # Retiring without unmapping under a writer
//!
//! A writer can be preempted anywhere in [`record`] for as long as the scheduler likes, so a
//! channel that goes away (session destroyed, daemon dead, fork child) is *retired*, never
//! freed:
//!
//! 1. its slot is emptied and its `retired` flag set, and every interest word is rebuilt
//!    without its bit: new emits no longer find it;
//! 2. each buffer's shared mapping is replaced, at the same address, by private anonymous
//!    memory (`mmap(MAP_FIXED)`, see [`crate::sys::mem`]): a late writer that already holds
//!    the channel writes into memory of its own that nobody reads, never into the daemon's
//!    buffer and never into an unmapped page. The writer keeps its geometry in its own
//!    struct, so zeroed memory cannot make it misbehave (it reserves into zeroes, or finds
//!    the buffer "full" and drops);
//! 3. the [`Channel`] struct itself is leaked (it is small: the writers' bookkeeping, the id
//!    table); its buffers' memory is returned to the kernel when the mapping is replaced
//!    (only the address range stays reserved);
//! 4. the wake-up eventfd numbers of its buffers stay open: a late writer may still
//!    `write()` to the number it holds. They are *parked*, and the next channel's eventfds
//!    are `dup3`'ed onto parked numbers (see [`crate::sys::fd`]), so the number of open
//!    descriptors is bounded by the most buffers ever live at once. A late write then wakes
//!    a later channel's reader spuriously, which is harmless; it can never reach a
//!    descriptor of the host program, because a parked number is never closed.
//!
//! A slot can be reused at once: a late writer that finds the new channel in it looks its
//! event up in the *new* channel's id table and the new channel's active flag, so it writes
//! only a record that the new channel records anyway.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use drtrace_proto::app::{ChannelKey, ChannelSetup, MAX_APP_CHANNELS, MAX_APP_EVENTS};
use drtrace_proto::control::BufferMode;
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_ringbuf::{Layout, Mode, Slot, Writer};

use crate::callsite::{Callsite, NO_INDEX};
use crate::endpoint::Endpoint;
use crate::field::Sink;
use crate::sys::mem::{self, Mapping};
use crate::sys::static_ref::StaticRef;

/// Number of channel slots: the width of an interest word.
pub(crate) const MAX_SLOTS: usize = MAX_APP_CHANNELS;
const _: () = assert!(MAX_SLOTS == u64::BITS as usize);

/// The live channels, by slot.
static SLOTS: [StaticRef<Channel>; MAX_SLOTS] = [const { StaticRef::new() }; MAX_SLOTS];

/// Events per chunk of an id table.
const CHUNK: usize = 256;
/// Chunks per id table: enough for every event an app may register.
const CHUNKS: usize = MAX_APP_EVENTS.div_ceil(CHUNK);

type Chunk = [AtomicU32; CHUNK];

/// App event index → trace event id, for one channel. Entries hold `id + 1`, 0 meaning "not
/// recorded", so a fresh chunk is all-off. Chunks are allocated on first use and live as long
/// as the channel (forever), so a writer can read an entry while the listener updates it
/// without any reclamation scheme.
#[derive(Debug)]
pub(crate) struct IdTable {
    chunks: Box<[StaticRef<Chunk>]>,
}

impl IdTable {
    fn new() -> Self {
        Self {
            chunks: (0..CHUNKS).map(|_| StaticRef::new()).collect(),
        }
    }

    /// The trace id of app event `index`, if the channel records it.
    #[inline(always)]
    pub(crate) fn get(&self, index: u32) -> Option<u32> {
        let i = index as usize;
        let chunk = self.chunks.get(i / CHUNK)?.load(Ordering::Acquire)?;
        chunk[i % CHUNK].load(Ordering::Relaxed).checked_sub(1)
    }

    /// Records app event `index` as `id`, or stops recording it (`None`). Listener side only
    /// (under the state lock); allocates a chunk on first use.
    pub(crate) fn set(&self, index: u32, id: Option<u32>) {
        let i = index as usize;
        let Some(slot) = self.chunks.get(i / CHUNK) else {
            return;
        };
        let chunk = match slot.load(Ordering::Acquire) {
            Some(chunk) => chunk,
            None if id.is_none() => return,
            None => {
                let chunk: &'static Chunk =
                    Box::leak(Box::new([const { AtomicU32::new(0) }; CHUNK]));
                // Release: pairs with the Acquire in `get`, which must see the zeroed chunk.
                slot.store(Some(chunk), Ordering::Release);
                chunk
            }
        };
        let raw = id.map_or(0, |id| id.saturating_add(1));
        chunk[i % CHUNK].store(raw, Ordering::Relaxed);
    }

    /// Every recorded `(index, id)` pair.
    pub(crate) fn entries(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (base, slot) in (0u32..).step_by(CHUNK).zip(self.chunks.iter()) {
            if let Some(chunk) = slot.load(Ordering::Acquire) {
                for (k, e) in (0u32..).zip(chunk.iter()) {
                    if let Some(id) = e.load(Ordering::Relaxed).checked_sub(1) {
                        out.push((base + k, id));
                    }
                }
            }
        }
        out
    }
}

/// One channel of one session, as this process writes it.
#[derive(Debug)]
pub(crate) struct Channel {
    /// Which daemon sent it.
    pub(crate) endpoint: Endpoint,
    /// Which session and channel.
    pub(crate) key: ChannelKey,
    /// Its name (for messages).
    pub(crate) name: String,
    /// One buffer per CPU (never empty).
    buffers: Box<[Buffer]>,
    /// Trace ids of the events this channel records.
    pub(crate) ids: IdTable,
    /// The session is recording.
    active: AtomicBool,
    /// The channel is gone; its buffers are private memory now.
    retired: AtomicBool,
}

impl Channel {
    /// The wake-up descriptor numbers of its buffers.
    #[cfg(test)]
    #[allow(
        dead_code,
        reason = "for the registry tests, which need the default level features"
    )]
    pub(crate) fn wake_numbers(&self) -> Vec<RawFd> {
        self.buffers.iter().filter_map(|b| b.wake).collect()
    }

    /// Writes a record the way a writer preempted inside [`record`] would, whatever the
    /// channel's state.
    #[cfg(test)]
    #[allow(
        dead_code,
        reason = "for the registry tests, which need the default level features"
    )]
    pub(crate) fn late_write_for_test(&self, id: u32, payload: &[u8]) {
        for b in self.buffers.iter() {
            if let Some(mut slot) = b.writer.reserve(id, payload.len()) {
                slot.put_bytes(payload);
                slot.commit();
            }
        }
    }

    /// A channel over mapped `buffers` (see [`map_buffers`]).
    pub(crate) fn new(
        endpoint: Endpoint,
        key: ChannelKey,
        name: String,
        buffers: Box<[Buffer]>,
        active: bool,
    ) -> Self {
        Self {
            endpoint,
            key,
            name,
            buffers,
            ids: IdTable::new(),
            active: AtomicBool::new(active),
            retired: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// True when the channel records right now.
    #[inline(always)]
    pub(crate) fn is_live(&self) -> bool {
        self.active.load(Ordering::Relaxed) && !self.retired.load(Ordering::Relaxed)
    }

    /// True when the channel records event `index` right now.
    pub(crate) fn records(&self, index: u32) -> bool {
        index != NO_INDEX && self.is_live() && self.ids.get(index).is_some()
    }

    /// The writer of the buffer for the current CPU.
    #[inline(always)]
    fn writer(&self) -> &Writer {
        let cpu = crate::sys::cpu::current();
        let n = self.buffers.len();
        // The common case (as many buffers as CPUs) needs no division.
        let i = if cpu < n { cpu } else { cpu % n.max(1) };
        &self.buffers[i].writer
    }

    /// Retires the channel (see the module docs): the caller has already removed it from its
    /// slot and rebuilt the interest words. Calls `park` with each wake-up descriptor number.
    ///
    /// Async-signal-safe as long as `park` is: a forked child calls it.
    pub(crate) fn retire(&self, mut park: impl FnMut(RawFd)) {
        self.retired.store(true, Ordering::Relaxed);
        for b in self.buffers.iter() {
            mem::retire(b.mapping);
            if let Some(fd) = b.wake {
                park(fd);
            }
        }
    }
}

/// One per-CPU buffer of a channel.
#[derive(Debug)]
pub(crate) struct Buffer {
    writer: Writer,
    /// Where the writer mapped it (to retire it in place).
    mapping: Mapping,
    /// The number of its wake-up eventfd, which the writer owns and never closes.
    wake: Option<RawFd>,
}

/// Most CPUs a channel may have buffers for.
const MAX_CPUS: u32 = 4096;

fn invalid(message: String) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message)
}

/// Maps the buffers of an `AddChannel` command: `fds` holds, for CPU `i`, the memfd at `2*i`
/// and the eventfd at `2*i + 1`. Wake-up eventfds are moved onto `parked` numbers first
/// (bounding the descriptors a long-lived process holds, see the module docs).
///
/// Every memfd is validated by a trial mapping (no eventfd attached) before any eventfd is
/// handed to a writer, because a writer that fails to map closes its eventfd: that must
/// never be a parked number a retired writer still holds.
pub(crate) fn map_buffers(
    setup: &ChannelSetup,
    fds: Vec<OwnedFd>,
    parked: &mut Vec<RawFd>,
) -> Result<Box<[Buffer]>, WireError> {
    let cpus = setup.cpus;
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(invalid(format!(
            "channel {} has {cpus} CPU buffers, expected 1..={MAX_CPUS}",
            setup.name
        )));
    }
    if fds.len() != 2 * cpus as usize {
        return Err(invalid(format!(
            "channel {} needs {} descriptors (memfd and eventfd per CPU), {} came",
            setup.name,
            2 * cpus,
            fds.len()
        )));
    }
    let layout = Layout {
        subbuf_size: setup.subbuf_size,
        num_subbuf: setup.num_subbuf,
        mode: match setup.mode {
            BufferMode::Discard => Mode::Discard,
            BufferMode::Overwrite => Mode::Overwrite,
        },
    };
    let mut pairs = Vec::with_capacity(cpus as usize);
    let mut it = fds.into_iter();
    while let (Some(memfd), Some(wake)) = (it.next(), it.next()) {
        match Writer::map(memfd.as_fd(), None) {
            Ok(trial) if trial.layout() == layout => {}
            Ok(trial) => {
                return Err(invalid(format!(
                    "buffer {} of channel {} has layout {:?}, the command says {layout:?}",
                    pairs.len(),
                    setup.name,
                    trial.layout()
                )));
            }
            Err(e) => {
                return Err(invalid(format!(
                    "buffer {} of channel {} cannot be mapped: {e}",
                    pairs.len(),
                    setup.name
                )));
            }
        }
        pairs.push((memfd, wake));
    }
    let mut buffers: Vec<Buffer> = Vec::with_capacity(pairs.len());
    for (memfd, wake) in pairs {
        let wake = match parked.pop() {
            // SAFETY: numbers in `parked` come from retired or abandoned writers (`State`,
            // `abandon`), which are leaked and never close them.
            #[allow(unsafe_code)]
            Some(number) => match unsafe { crate::sys::fd::reuse_number(wake, number) } {
                Ok(fd) => fd,
                Err(e) => {
                    parked.push(number);
                    abandon(buffers, parked);
                    return Err(WireError::new(
                        ErrorCode::Io,
                        format!("cannot install a wake-up eventfd: {e}"),
                    ));
                }
            },
            None => wake,
        };
        let number = wake.as_raw_fd();
        let writer = match Writer::map(memfd.as_fd(), Some(wake)) {
            Ok(w) => w,
            Err(e) => {
                // The writer closed `number`: it must not be parked again. The trial
                // mapping above makes this a resource failure only (see the module docs).
                abandon(buffers, parked);
                return Err(WireError::new(
                    ErrorCode::Io,
                    format!("cannot map a buffer of channel {}: {e}", setup.name),
                ));
            }
        };
        match mem::find_mapping(memfd.as_fd(), layout.buffer_size()) {
            Ok(mapping) => buffers.push(Buffer {
                writer,
                mapping,
                wake: Some(number),
            }),
            Err(e) => {
                // A buffer we could not retire in place must never be published; this
                // writer was never reachable by any thread, so its mapping is simply leaked
                // (still mapped, never written) and its eventfd number parked.
                std::mem::forget(writer);
                parked.push(number);
                abandon(buffers, parked);
                return Err(WireError::new(
                    ErrorCode::Io,
                    format!("cannot locate the mapping of channel {}: {e}", setup.name),
                ));
            }
        }
    }
    Ok(buffers.into_boxed_slice())
}

/// Gives up buffers mapped for a channel that will not be published: their mappings are
/// retired and their eventfd numbers parked; the writers are leaked, never dropped, since
/// dropping one would close a number that may be shared with a retired writer.
fn abandon(buffers: Vec<Buffer>, parked: &mut Vec<RawFd>) {
    for b in buffers {
        mem::retire(b.mapping);
        parked.extend(b.wake);
        std::mem::forget(b.writer);
    }
}

impl Sink for Slot<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.put_bytes(bytes);
    }
}

/// Puts `channel` in slot `slot` (which must be empty) for writers to find.
pub(crate) fn publish(slot: usize, channel: &'static Channel) {
    // Release: pairs with the Acquire in `get`, which must see the channel fully built.
    SLOTS[slot].store(Some(channel), Ordering::Release);
}

/// Empties slot `slot`, returning the channel that was in it.
pub(crate) fn take(slot: usize) -> Option<&'static Channel> {
    SLOTS[slot].swap(None, Ordering::AcqRel)
}

/// The channel in slot `slot`.
#[inline(always)]
pub(crate) fn get(slot: usize) -> Option<&'static Channel> {
    // Acquire: pairs with the Release in `publish`.
    SLOTS[slot].load(Ordering::Acquire)
}

/// Writes one record of `len` payload bytes, filled by `write`, into every channel of `mask`
/// that records `cs`. The out-of-line slow path of every event.
#[inline(always)]
pub fn record<F: Fn(&mut Slot<'_>)>(cs: &Callsite, mut mask: u64, len: usize, write: F) {
    let index = cs.index();
    while mask != 0 {
        let slot = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let Some(ch) = get(slot) else {
            continue;
        };
        if !ch.is_live() {
            continue;
        }
        let Some(id) = ch.ids.get(index) else {
            continue;
        };
        if let Some(mut slot) = ch.writer().reserve(id, len) {
            write(&mut slot);
            slot.commit();
        }
    }
}
