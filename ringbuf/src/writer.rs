//! The writer side, used by the in-process library inside traced applications.

#![forbid(unsafe_code)]

use crate::clock::{self, ClockSource};
use crate::header::{Header, SlotCtl};
use crate::layout::{Geometry, Layout};
use crate::mmap::{MapError, RingMap};
use crate::primitive::Ordering;
use crate::ring::{Backend, Ring};
use crate::slot::Slot;
use std::os::fd::{AsFd, OwnedFd};

/// The real backend: a validated mapping, the buffer's clock and an optional eventfd.
#[derive(Debug)]
pub(crate) struct MapBackend {
    pub(crate) map: RingMap,
    pub(crate) clock: ClockSource,
    /// Eventfd written when a completed sub-buffer should wake the reader.
    pub(crate) wake: Option<OwnedFd>,
}

impl Backend for MapBackend {
    #[inline]
    fn header(&self) -> &Header {
        self.map.header()
    }

    #[inline]
    fn slot(&self, j: usize) -> &SlotCtl {
        self.map.slot(j)
    }

    #[inline]
    fn now(&self) -> u64 {
        clock::read(self.clock)
    }

    #[inline]
    fn write(&self, off: usize, src: &[u8]) {
        self.map.write(off, src);
    }

    #[inline]
    fn zero(&self, off: usize, len: usize) {
        self.map.zero(off, len);
    }

    fn copy_out(&self, off: usize, len: usize, out: &mut Vec<u8>) -> bool {
        self.map.copy_out(off, len, out)
    }

    fn wake(&self) {
        if let Some(fd) = &self.wake {
            // A full eventfd counter (EAGAIN) already means "wake up"; any other error
            // leaves the reader to its poll timeout. Never block or fail the writer.
            let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
        }
    }
}

/// Maps a buffer for a writer or reader: validates it and builds its ring.
pub(crate) fn open_ring(
    memfd: impl AsFd,
    wake: Option<OwnedFd>,
) -> Result<(Ring<MapBackend>, Layout, ClockSource), MapError> {
    let (map, layout, clock) = RingMap::open(memfd.as_fd())?;
    let be = MapBackend { map, clock, wake };
    Ok((Ring::new(Geometry::new(&layout), be), layout, clock))
}

/// The write side of one buffer, shared by every thread of a traced process.
///
/// Lock-free and multi-process: [`Writer::reserve`] is a clock read and a compare-and-swap,
/// the payload is stored in place and the commit is one atomic add. It never blocks, never
/// allocates and never panics; when the buffer is full (discard mode) the event is dropped
/// and counted in the buffer's lost counter, which the consumer reports as
/// `events_discarded`.
///
/// ```
/// use drtrace_ringbuf::{create_buffer, ClockSource, Layout, Mode, Reader, Writer};
///
/// let layout = Layout { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard };
/// let memfd = create_buffer(&layout, ClockSource::Monotonic, "chan0_cpu0")?;
/// let writer = Writer::map(&memfd, None)?;
/// if let Some(mut slot) = writer.reserve(7, 8) {
///     slot.put_u64(0xdead_beef);
///     slot.commit();
/// }
///
/// let mut reader = Reader::map(&memfd, None)?;
/// reader.flush();
/// let mut records = Vec::new();
/// let packet = reader.read_packet(&mut records)?.expect("one packet");
/// assert_eq!(packet.records, 1);
/// assert_eq!(records.len(), 4 + 8); // compact header + payload
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Writer {
    ring: Ring<MapBackend>,
    layout: Layout,
}

impl Writer {
    /// Maps a buffer memfd created by [`create_buffer`](crate::create_buffer).
    ///
    /// The fd's size and seals are checked, then the header's magic, version and geometry
    /// are validated against that size before anything else is read; the writer keeps its
    /// own copy of the geometry. `wake` is the consumer's eventfd (create it with
    /// `EFD_NONBLOCK`): it is written only when a sub-buffer completes while the reader is
    /// waiting. The fd itself may be closed after this returns.
    pub fn map(memfd: impl AsFd, wake: Option<OwnedFd>) -> Result<Writer, MapError> {
        let (ring, layout, _) = open_ring(memfd, wake)?;
        Ok(Writer { ring, layout })
    }

    /// Reserves a record of event `event_id` with `payload_len` payload bytes.
    ///
    /// `None` means the event was dropped and counted: the buffer is full (discard mode),
    /// the payload exceeds [`Writer::max_payload`], or the reservation lost its
    /// compare-and-swap too many times in a row. Write the payload through the returned
    /// [`Slot`]; it commits on [`Slot::commit`] or drop.
    #[inline(always)]
    pub fn reserve(&self, event_id: u32, payload_len: usize) -> Option<Slot<'_>> {
        self.ring.reserve(event_id, payload_len).map(Slot::new)
    }

    /// The buffer's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The clock the buffer's timestamps use.
    pub fn clock_source(&self) -> ClockSource {
        self.ring.be.clock
    }

    /// Largest payload one record can carry.
    pub fn max_payload(&self) -> usize {
        self.ring.geo.max_payload
    }

    /// Events lost in this buffer so far (all writers and causes).
    pub fn events_discarded(&self) -> u64 {
        self.ring.be.header().lost.lost.load(Ordering::Relaxed)
    }
}
