//! The shared-memory layout of one buffer (ABI version 1).
//!
//! ```text
//! offset                                   written by        read by
//! 0      +---------------------------+
//!        | ident line (128 B)        |  creator, once     everyone, once at map time
//!        |  0 magic  u64 "DRTRRING"  |
//!        |  8 version u32 = 1        |
//!        | 12 data_offset u32        |
//!        | 16 subbuf_size u32        |
//!        | 20 num_subbuf u32         |
//!        | 24 mode u32 (1 discard, 2 overwrite)
//!        | 28 clock u32 (1 tsc, 2 monotonic)
//!        | 32 total_size u64         |
//! 128    +---------------------------+
//!        | write line (128 B)        |
//!        |  0 write_pos u64          |  writers (CAS), reader flush (CAS)
//!        |  8 last_ts  u64           |  writers: a recent record timestamp (compact headers)
//! 256    +---------------------------+
//!        | lost line (128 B)         |
//!        |  0 lost u64               |  writers and reader (fetch_add): events discarded
//! 384    +---------------------------+
//!        | reader line (128 B)       |
//!        |  0 waiting u32            |  reader sets, the writer that wakes it clears
//!        |  8 read_pos u64           |  reader: next sub-buffer number (for a re-attach)
//!        | 16 read_seq u64           |  reader: next packet sequence number
//! 512    +---------------------------+
//!        | slot 0 control (128 B)    |
//!        |  0 commit word u64        |  see layout.rs: bytes | records | flags | lap tag
//!        |  8 ts_begin u64           |  writer of the sub-buffer's first record
//!        | 16 ts_end u64             |  closer (writer that switched, or reader flush)
//!        | 24 content_end u64        |  closer: bytes of records, padding excluded
//!        +---------------------------+
//!        | slot 1 .. N-1 control     |
//!        +---------------------------+  data_offset = 512 + N*128 rounded up to 4096
//!        | sub-buffer 0 (S bytes)    |  records, byte-aligned, see docs/format.md
//!        | sub-buffer 1 ...          |
//!        +---------------------------+  total_size = data_offset + N*S
//! ```
//!
//! Every field is an atomic (`repr(C)`, fixed width, little-endian on the only supported
//! targets), so a `&Header` into memory that other processes write is sound: any bit
//! pattern is a valid value and every access is an atomic load or store. The counters each
//! sit on their own 128-byte line so writers on one CPU and the reader on another do not
//! false-share. The const assertions below pin every offset; a change to any of them is an
//! ABI change and must bump [`VERSION`].

use crate::clock::ClockSource;
use crate::layout::{Layout, LayoutError, Mode, to_usize};
use crate::primitive::{AtomicU32, AtomicU64, Ordering};
use thiserror::Error;

/// The first 8 bytes of every buffer.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"DRTRRING");
/// The layout version this crate reads and writes.
pub(crate) const VERSION: u32 = 1;
/// Size of the fixed header (the four lines above the slot control lines).
pub(crate) const HEADER_SIZE: u64 = 512;
/// Size of one sub-buffer control line.
pub(crate) const SLOT_CTL_SIZE: u64 = 128;
/// The data area starts on a page boundary.
const DATA_ALIGN: u64 = 4096;

/// Offset of the data area for `num_subbuf` sub-buffers.
pub(crate) const fn data_offset(num_subbuf: u32) -> u64 {
    let end = HEADER_SIZE + num_subbuf as u64 * SLOT_CTL_SIZE;
    end.div_ceil(DATA_ALIGN) * DATA_ALIGN
}

/// Identity and geometry, written once by the creator.
#[repr(C, align(128))]
pub(crate) struct IdentLine {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) data_offset: AtomicU32,
    pub(crate) subbuf_size: AtomicU32,
    pub(crate) num_subbuf: AtomicU32,
    pub(crate) mode: AtomicU32,
    pub(crate) clock: AtomicU32,
    pub(crate) total_size: AtomicU64,
}

/// The writers' hot line.
#[repr(C, align(128))]
pub(crate) struct WriteLine {
    /// Free-running byte position of the next reservation. Invariant: a record never spans
    /// two sub-buffers and every sub-buffer ends with at least one byte of padding, so
    /// `write_pos % S == 0` only before the first record of a sub-buffer is reserved.
    pub(crate) write_pos: AtomicU64,
    /// Timestamp of some reserved record (not necessarily the latest: stored after the CAS,
    /// possibly late). Timestamps in reserve order never decrease, so it is always <= the
    /// timestamp of the record before any new one; that makes it a safe reference for the
    /// compact header's 27-bit timestamps.
    pub(crate) last_ts: AtomicU64,
}

/// The event loss counter.
#[repr(C, align(128))]
pub(crate) struct LostLine {
    /// Events discarded so far: dropped by writers, overwritten, or lost with a stuck
    /// sub-buffer. Only ever incremented.
    pub(crate) lost: AtomicU64,
}

/// State the reader publishes.
#[repr(C, align(128))]
pub(crate) struct ReaderLine {
    /// 1 while the reader is about to sleep on its eventfd (see `ring.rs`, "Waking the
    /// reader").
    pub(crate) waiting: AtomicU32,
    pub(crate) reserved: AtomicU32,
    /// Next sub-buffer number the reader will read (a mirror for a re-attaching reader).
    pub(crate) read_pos: AtomicU64,
    /// Next packet sequence number (a mirror for a re-attaching reader).
    pub(crate) read_seq: AtomicU64,
}

/// The fixed header at offset 0.
#[repr(C)]
pub(crate) struct Header {
    pub(crate) ident: IdentLine,
    pub(crate) write: WriteLine,
    pub(crate) lost: LostLine,
    pub(crate) reader: ReaderLine,
}

/// Per-sub-buffer control line.
#[repr(C, align(128))]
pub(crate) struct SlotCtl {
    /// The commit word (layout in `layout.rs`). Every commit is one `fetch_add` with
    /// release ordering; lap changes (reset, hole, consumed) are CASes.
    pub(crate) word: AtomicU64,
    /// Timestamp of the sub-buffer's first record; stored before that record's commit.
    pub(crate) ts_begin: AtomicU64,
    /// Timestamp at which the sub-buffer was closed; stored before the padding commit.
    pub(crate) ts_end: AtomicU64,
    /// Bytes of records (padding excluded); stored before the padding commit.
    pub(crate) content_end: AtomicU64,
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<IdentLine>() == 128);
    assert!(offset_of!(IdentLine, magic) == 0);
    assert!(offset_of!(IdentLine, version) == 8);
    assert!(offset_of!(IdentLine, data_offset) == 12);
    assert!(offset_of!(IdentLine, subbuf_size) == 16);
    assert!(offset_of!(IdentLine, num_subbuf) == 20);
    assert!(offset_of!(IdentLine, mode) == 24);
    assert!(offset_of!(IdentLine, clock) == 28);
    assert!(offset_of!(IdentLine, total_size) == 32);
    assert!(size_of::<WriteLine>() == 128);
    assert!(offset_of!(WriteLine, write_pos) == 0);
    assert!(offset_of!(WriteLine, last_ts) == 8);
    assert!(size_of::<LostLine>() == 128);
    assert!(size_of::<ReaderLine>() == 128);
    assert!(offset_of!(ReaderLine, waiting) == 0);
    assert!(offset_of!(ReaderLine, read_pos) == 8);
    assert!(offset_of!(ReaderLine, read_seq) == 16);
    assert!(size_of::<Header>() == to_usize(HEADER_SIZE));
    assert!(align_of::<Header>() == 128);
    assert!(offset_of!(Header, ident) == 0);
    assert!(offset_of!(Header, write) == 128);
    assert!(offset_of!(Header, lost) == 256);
    assert!(offset_of!(Header, reader) == 384);
    assert!(size_of::<SlotCtl>() == to_usize(SLOT_CTL_SIZE));
    assert!(align_of::<SlotCtl>() == 128);
    assert!(offset_of!(SlotCtl, word) == 0);
    assert!(offset_of!(SlotCtl, ts_begin) == 8);
    assert!(offset_of!(SlotCtl, ts_end) == 16);
    assert!(offset_of!(SlotCtl, content_end) == 24);
    assert!(data_offset(2) == 4096);
    assert!(data_offset(32) == 8192);
};

/// Why a mapped buffer's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The magic number is wrong: not a drtrace ring buffer.
    #[error("bad magic {found:#018x}: not a drtrace ring buffer")]
    BadMagic {
        /// What the first 8 bytes hold.
        found: u64,
    },
    /// The layout version is not the one this crate speaks.
    #[error("ring buffer layout version {found}, this build reads version {expected}")]
    Version {
        /// Version in the buffer.
        found: u32,
        /// Version of this crate.
        expected: u32,
    },
    /// The mode field is not a known mode.
    #[error("unknown buffer mode {0}")]
    BadMode(u32),
    /// The clock field is not a known clock.
    #[error("unknown clock kind {0}")]
    BadClock(u32),
    /// The recorded geometry is not a valid layout.
    #[error("invalid layout in header")]
    Layout(#[source] LayoutError),
    /// A size recorded in the header disagrees with the one computed from the layout.
    #[error("header {field} is {found}, the layout needs {expected}")]
    Size {
        /// Which field.
        field: &'static str,
        /// Value in the header.
        found: u64,
        /// Value computed from the layout.
        expected: u64,
    },
}

impl Header {
    /// Writes the identity line and resets every counter of a new buffer. The magic number
    /// goes last, with release ordering, so a header with the right magic is complete.
    pub(crate) fn init(&self, slots: &[SlotCtl], layout: &Layout, clock: ClockSource) {
        let o = Ordering::Relaxed;
        let id = &self.ident;
        id.version.store(VERSION, o);
        let data_off = data_offset(layout.num_subbuf);
        id.data_offset
            .store(u32::try_from(data_off).unwrap_or(u32::MAX), o);
        id.subbuf_size.store(layout.subbuf_size, o);
        id.num_subbuf.store(layout.num_subbuf, o);
        id.mode.store(layout.mode.to_raw(), o);
        id.clock.store(clock.to_raw(), o);
        id.total_size.store(layout.buffer_size(), o);
        self.write.write_pos.store(0, o);
        self.write.last_ts.store(0, o);
        self.lost.lost.store(0, o);
        self.reader.waiting.store(0, o);
        self.reader.read_pos.store(0, o);
        self.reader.read_seq.store(0, o);
        for s in slots {
            // Tag 0, no bytes: every slot starts ready for lap 0.
            s.word.store(0, o);
            s.ts_begin.store(0, o);
            s.ts_end.store(0, o);
            s.content_end.store(0, o);
        }
        id.magic.store(MAGIC, Ordering::Release);
    }

    /// Reads and validates the identity line against the mapped size.
    ///
    /// The values are copied out once; callers keep the returned copy and never re-read
    /// these fields, so a writer that later scribbles over them changes nothing.
    pub(crate) fn validate(&self, mapped_size: u64) -> Result<(Layout, ClockSource), HeaderError> {
        let id = &self.ident;
        let magic = id.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let o = Ordering::Relaxed;
        let version = id.version.load(o);
        if version != VERSION {
            return Err(HeaderError::Version {
                found: version,
                expected: VERSION,
            });
        }
        let raw_mode = id.mode.load(o);
        let mode = Mode::from_raw(raw_mode).ok_or(HeaderError::BadMode(raw_mode))?;
        let raw_clock = id.clock.load(o);
        let clock = ClockSource::from_raw(raw_clock).ok_or(HeaderError::BadClock(raw_clock))?;
        let layout = Layout {
            subbuf_size: id.subbuf_size.load(o),
            num_subbuf: id.num_subbuf.load(o),
            mode,
        };
        layout.validate().map_err(HeaderError::Layout)?;
        let checks = [
            (
                "data_offset",
                u64::from(id.data_offset.load(o)),
                data_offset(layout.num_subbuf),
            ),
            ("total_size", id.total_size.load(o), layout.buffer_size()),
            ("file size", mapped_size, layout.buffer_size()),
        ];
        for (field, found, expected) in checks {
            if found != expected {
                return Err(HeaderError::Size {
                    field,
                    found,
                    expected,
                });
            }
        }
        Ok((layout, clock))
    }
}

#[cfg(loom)]
impl Header {
    /// A zeroed header on the heap, for the loom models.
    pub(crate) fn new_zeroed() -> Header {
        Header {
            ident: IdentLine {
                magic: AtomicU64::new(0),
                version: AtomicU32::new(0),
                data_offset: AtomicU32::new(0),
                subbuf_size: AtomicU32::new(0),
                num_subbuf: AtomicU32::new(0),
                mode: AtomicU32::new(0),
                clock: AtomicU32::new(0),
                total_size: AtomicU64::new(0),
            },
            write: WriteLine {
                write_pos: AtomicU64::new(0),
                last_ts: AtomicU64::new(0),
            },
            lost: LostLine {
                lost: AtomicU64::new(0),
            },
            reader: ReaderLine {
                waiting: AtomicU32::new(0),
                reserved: AtomicU32::new(0),
                read_pos: AtomicU64::new(0),
                read_seq: AtomicU64::new(0),
            },
        }
    }
}

#[cfg(loom)]
impl SlotCtl {
    /// A zeroed control line (lap 0, nothing committed), for the loom models.
    pub(crate) fn new_zeroed() -> SlotCtl {
        SlotCtl {
            word: AtomicU64::new(0),
            ts_begin: AtomicU64::new(0),
            ts_end: AtomicU64::new(0),
            content_end: AtomicU64::new(0),
        }
    }
}
