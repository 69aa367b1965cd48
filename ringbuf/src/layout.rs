//! Buffer geometry: the validated [`Layout`] a session daemon asks for, and the derived
//! constants ([`Geometry`]) the reserve/commit/consume code works with.
//!
//! # The commit word
//!
//! Each sub-buffer has one 64-bit *commit word* (see `header.rs`). With `s = log2(subbuf_size)`
//! it packs, from the least significant bit:
//!
//! ```text
//!  bits [0, s+1)        committed bytes of the current lap, padding included (0..=S)
//!  bits [s+1, 2s)       committed records of the current lap (0..=S/4: a record is >= 4 bytes)
//!  bit  2s              CONSUMED: the reader released this lap (read it, or gave it up)
//!  bit  2s+1            HOLE: writers skipped this lap, the counts belong to an older lap
//!  bits [2s+2, 64)      TAG: the lap number (sub-buffer sequence / num_subbuf) modulo 2^(62-2s)
//! ```
//!
//! A commit is one `fetch_add(1 << (s+1) | record_len)`: bytes and records move together, so
//! counting records costs no extra atomic. Neither field can carry into the next: a lap holds
//! at most S bytes and S/4 records. With the 16 MiB cap the tag keeps 14 bits; it only has to
//! tell the current lap from the previous one (see `ring.rs`).

use thiserror::Error;

/// Smallest sub-buffer size (one page).
pub const MIN_SUBBUF_SIZE: u32 = 4096;
/// Largest sub-buffer size (16 MiB): keeps 14 bits of lap tag in the commit word.
pub const MAX_SUBBUF_SIZE: u32 = 1 << 24;
/// Smallest number of sub-buffers: writers fill one while the reader reads another.
pub const MIN_NUM_SUBBUF: u32 = 2;
/// Largest number of sub-buffers per buffer.
pub const MAX_NUM_SUBBUF: u32 = 1024;
/// Largest data area (`subbuf_size * num_subbuf`) of one buffer: 4 GiB.
pub const MAX_DATA_SIZE: u64 = 1 << 32;

/// What writers do when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Drop new events (and count them) until the reader frees a sub-buffer.
    Discard,
    /// Flight recorder: overwrite the oldest sub-buffer (and count what it held) instead.
    Overwrite,
}

impl Mode {
    /// The value stored in the buffer header (0 is never valid, so zeroed memory is caught).
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            Mode::Discard => 1,
            Mode::Overwrite => 2,
        }
    }

    /// Parses the header value written by [`Mode::to_raw`].
    pub(crate) fn from_raw(raw: u32) -> Option<Mode> {
        match raw {
            1 => Some(Mode::Discard),
            2 => Some(Mode::Overwrite),
            _ => None,
        }
    }
}

/// Why a [`Layout`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// The sub-buffer size is not a power of two.
    #[error("sub-buffer size {0} is not a power of two")]
    SubbufNotPowerOfTwo(u32),
    /// The sub-buffer size is outside the supported range.
    #[error("sub-buffer size {size} is outside {MIN_SUBBUF_SIZE}..={MAX_SUBBUF_SIZE}")]
    SubbufSizeOutOfRange {
        /// The requested size.
        size: u32,
    },
    /// The number of sub-buffers is not a power of two.
    #[error("number of sub-buffers {0} is not a power of two")]
    NumSubbufNotPowerOfTwo(u32),
    /// The number of sub-buffers is outside the supported range.
    #[error("number of sub-buffers {count} is outside {MIN_NUM_SUBBUF}..={MAX_NUM_SUBBUF}")]
    NumSubbufOutOfRange {
        /// The requested count.
        count: u32,
    },
    /// The data area would exceed [`MAX_DATA_SIZE`].
    #[error("buffer of {size} bytes exceeds the {MAX_DATA_SIZE}-byte cap")]
    TooLarge {
        /// `subbuf_size * num_subbuf`.
        size: u64,
    },
}

/// The shape of one per-CPU buffer: `num_subbuf` sub-buffers of `subbuf_size` bytes.
///
/// Both counts must be powers of two (so positions split into lap, sub-buffer and offset
/// with shifts and masks on the writers' fast path).
///
/// ```
/// use drtrace_ringbuf::{Layout, Mode};
/// let layout = Layout { subbuf_size: 64 * 1024, num_subbuf: 4, mode: Mode::Discard };
/// layout.validate().unwrap();
/// assert!(Layout { subbuf_size: 1000, ..layout }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Bytes per sub-buffer (one CTF packet's records at most).
    pub subbuf_size: u32,
    /// Sub-buffers per buffer.
    pub num_subbuf: u32,
    /// Discard or overwrite when full.
    pub mode: Mode,
}

impl Layout {
    /// Checks the sizes against the documented bounds.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if !self.subbuf_size.is_power_of_two() {
            return Err(LayoutError::SubbufNotPowerOfTwo(self.subbuf_size));
        }
        if !(MIN_SUBBUF_SIZE..=MAX_SUBBUF_SIZE).contains(&self.subbuf_size) {
            return Err(LayoutError::SubbufSizeOutOfRange {
                size: self.subbuf_size,
            });
        }
        if !self.num_subbuf.is_power_of_two() {
            return Err(LayoutError::NumSubbufNotPowerOfTwo(self.num_subbuf));
        }
        if !(MIN_NUM_SUBBUF..=MAX_NUM_SUBBUF).contains(&self.num_subbuf) {
            return Err(LayoutError::NumSubbufOutOfRange {
                count: self.num_subbuf,
            });
        }
        let size = self.data_size();
        if size > MAX_DATA_SIZE {
            return Err(LayoutError::TooLarge { size });
        }
        Ok(())
    }

    /// Bytes of record data the buffer holds (`subbuf_size * num_subbuf`).
    pub fn data_size(&self) -> u64 {
        u64::from(self.subbuf_size) * u64::from(self.num_subbuf)
    }

    /// Size of the memfd holding this layout: header, sub-buffer control lines and data.
    pub fn buffer_size(&self) -> u64 {
        crate::header::data_offset(self.num_subbuf) + self.data_size()
    }

    /// Largest payload a single record can carry: it must fit an empty sub-buffer with an
    /// extended header and one byte to spare (every sub-buffer ends with at least one byte
    /// of padding, see `ring.rs`).
    pub fn max_payload(&self) -> usize {
        max_payload(u64::from(self.subbuf_size))
    }
}

/// See [`Layout::max_payload`].
fn max_payload(sub_size: u64) -> usize {
    to_usize(sub_size.saturating_sub(1 + crate::ring::EXTENDED_HEADER))
}

/// Converts a value known to be a memory size or offset within a mapping.
///
/// The crate only builds for 64-bit targets (see `lib.rs`), where this never truncates.
#[allow(
    clippy::cast_possible_truncation,
    reason = "64-bit targets only: usize and u64 have the same width"
)]
pub(crate) const fn to_usize(v: u64) -> usize {
    v as usize
}

/// Constants derived from a layout, precomputed for the reserve and commit paths.
///
/// The writer keeps its own copy taken when it mapped the buffer: nothing here is re-read
/// from shared memory, so another process cannot change the geometry under it.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    /// log2 of the sub-buffer size.
    pub(crate) sub_shift: u32,
    /// Sub-buffer size S in bytes.
    pub(crate) sub_size: u64,
    /// `S - 1`: offset within a sub-buffer.
    pub(crate) sub_mask: u64,
    /// log2 of the number of sub-buffers.
    pub(crate) num_shift: u32,
    /// Number of sub-buffers N.
    pub(crate) num: u64,
    /// Discard or overwrite.
    pub(crate) mode: Mode,
    /// Shift of the record count in the commit word (`s + 1`).
    pub(crate) rec_shift: u32,
    /// Mask of the byte count in the commit word.
    pub(crate) bytes_mask: u64,
    /// Mask of the record count once shifted down.
    pub(crate) rec_mask: u64,
    /// The CONSUMED flag.
    pub(crate) consumed: u64,
    /// The HOLE flag.
    pub(crate) hole: u64,
    /// Shift of the lap tag.
    pub(crate) tag_shift: u32,
    /// Largest payload of one record.
    pub(crate) max_payload: usize,
}

impl Geometry {
    /// Geometry of a validated layout.
    pub(crate) fn new(layout: &Layout) -> Geometry {
        Geometry::from_shifts(
            layout.subbuf_size.trailing_zeros(),
            layout.num_subbuf.trailing_zeros(),
            layout.mode,
        )
    }

    /// Geometry from raw shifts; the loom models use tiny sub-buffers (`sub_shift` >= 4)
    /// that [`Layout::validate`] would refuse.
    pub(crate) fn from_shifts(sub_shift: u32, num_shift: u32, mode: Mode) -> Geometry {
        let sub_size = 1u64 << sub_shift;
        let rec_shift = sub_shift + 1;
        Geometry {
            sub_shift,
            sub_size,
            sub_mask: sub_size - 1,
            num_shift,
            num: 1 << num_shift,
            mode,
            rec_shift,
            bytes_mask: (1 << rec_shift) - 1,
            rec_mask: (1 << (sub_shift - 1)) - 1,
            consumed: 1 << (2 * sub_shift),
            hole: 1 << (2 * sub_shift + 1),
            tag_shift: 2 * sub_shift + 2,
            max_payload: max_payload(sub_size),
        }
    }

    /// Committed bytes in a commit word.
    #[inline]
    pub(crate) fn bytes(&self, w: u64) -> u64 {
        w & self.bytes_mask
    }

    /// Committed records in a commit word.
    #[inline]
    pub(crate) fn records(&self, w: u64) -> u64 {
        (w >> self.rec_shift) & self.rec_mask
    }

    /// True when every byte of the lap in `w` is committed.
    #[inline]
    pub(crate) fn complete(&self, w: u64) -> bool {
        self.bytes(w) == self.sub_size
    }

    /// The commit-word increment of one record of `len` bytes.
    #[inline]
    pub(crate) fn record_delta(&self, len: u64) -> u64 {
        (1 << self.rec_shift) | len
    }

    /// The lap tag of `lap`, as stored in the top bits (lower bits zero).
    #[inline]
    pub(crate) fn tag_bits(&self, lap: u64) -> u64 {
        lap << self.tag_shift
    }

    /// The tag field of `w`, shifted down.
    #[inline]
    pub(crate) fn tag_of(&self, w: u64) -> u64 {
        w >> self.tag_shift
    }

    /// `lap` reduced to the tag width.
    #[inline]
    pub(crate) fn lap_tag(&self, lap: u64) -> u64 {
        self.tag_bits(lap) >> self.tag_shift
    }

    /// True when `w` is tagged with `lap`.
    #[inline]
    pub(crate) fn tag_is(&self, w: u64, lap: u64) -> bool {
        self.tag_of(w) == self.lap_tag(lap)
    }

    /// `(tag(w) - lap) mod 2^tag_bits`: 0 for the same lap, 1 for the next one, all ones for
    /// the previous one.
    #[inline]
    pub(crate) fn tag_diff(&self, w: u64, lap: u64) -> u64 {
        self.tag_of(w).wrapping_sub(self.lap_tag(lap)) & self.tag_field_mask()
    }

    /// The tag field's mask once shifted down.
    #[inline]
    pub(crate) fn tag_field_mask(&self) -> u64 {
        u64::MAX >> self.tag_shift
    }

    /// `w` with its tag replaced by `lap` (counts and flags kept).
    #[inline]
    pub(crate) fn retag(&self, w: u64, lap: u64) -> u64 {
        (w & ((1 << self.tag_shift) - 1)) | self.tag_bits(lap)
    }

    /// Global sub-buffer number of a byte position.
    #[inline]
    pub(crate) fn subbuf_of(&self, pos: u64) -> u64 {
        pos >> self.sub_shift
    }

    /// Lap of a global sub-buffer number.
    #[inline]
    pub(crate) fn lap_of(&self, g: u64) -> u64 {
        g >> self.num_shift
    }

    /// Slot (index into the sub-buffer array) of a global sub-buffer number.
    #[inline]
    pub(crate) fn slot_of(&self, g: u64) -> usize {
        to_usize(g & (self.num - 1))
    }

    /// Offset in the data area of a byte position.
    #[inline]
    pub(crate) fn data_offset(&self, pos: u64) -> usize {
        to_usize(pos & ((self.num << self.sub_shift) - 1))
    }

    /// Offset in the data area of the first byte of slot `j`.
    #[inline]
    pub(crate) fn slot_start(&self, j: usize) -> usize {
        j << self.sub_shift
    }

    /// Number of sub-buffers, as a usize.
    #[inline]
    pub(crate) fn num_usize(&self) -> usize {
        to_usize(self.num)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(subbuf_size: u32, num_subbuf: u32) -> Layout {
        Layout {
            subbuf_size,
            num_subbuf,
            mode: Mode::Discard,
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(
            layout(5000, 4).validate(),
            Err(LayoutError::SubbufNotPowerOfTwo(5000))
        );
        assert_eq!(
            layout(2048, 4).validate(),
            Err(LayoutError::SubbufSizeOutOfRange { size: 2048 })
        );
        assert_eq!(
            layout(1 << 25, 4).validate(),
            Err(LayoutError::SubbufSizeOutOfRange { size: 1 << 25 })
        );
        assert_eq!(
            layout(4096, 3).validate(),
            Err(LayoutError::NumSubbufNotPowerOfTwo(3))
        );
        assert_eq!(
            layout(4096, 1).validate(),
            Err(LayoutError::NumSubbufOutOfRange { count: 1 })
        );
        assert_eq!(
            layout(4096, 2048).validate(),
            Err(LayoutError::NumSubbufOutOfRange { count: 2048 })
        );
        assert_eq!(
            layout(1 << 24, 512).validate(),
            Err(LayoutError::TooLarge { size: 1 << 33 })
        );
        assert_eq!(
            layout(1 << 24, 2).validate().map_err(|e| e.to_string()),
            Ok(())
        );
        assert_eq!(
            LayoutError::SubbufNotPowerOfTwo(5000).to_string(),
            "sub-buffer size 5000 is not a power of two"
        );
    }

    #[test]
    fn commit_word_fields_do_not_overlap() {
        for shift in [4, 12, 16, 20, 24] {
            let g = Geometry::from_shifts(shift, 2, Mode::Discard);
            let max_records = g.sub_size / 4;
            let full = g.sub_size | (max_records << g.rec_shift);
            assert_eq!(g.bytes(full), g.sub_size, "shift {shift}");
            assert_eq!(g.records(full), max_records, "shift {shift}");
            assert_eq!(full & (g.consumed | g.hole), 0, "shift {shift}");
            assert!(g.hole < 1 << g.tag_shift, "shift {shift}");
            assert!(64 - g.tag_shift >= 14, "shift {shift}");
            // The tag survives a full commit and flags.
            let w = g.tag_bits(12345) | full | g.consumed | g.hole;
            assert!(g.tag_is(w, 12345));
            assert_eq!(g.tag_diff(w, 12344), 1);
            assert_eq!(g.tag_diff(w, 12346), g.tag_field_mask());
            assert_eq!(
                g.retag(w, 7) & !(u64::MAX << g.tag_shift),
                w & !(u64::MAX << g.tag_shift)
            );
            assert!(g.tag_is(g.retag(w, 7), 7));
        }
    }

    #[test]
    fn positions_split_into_lap_slot_and_offset() {
        let g = Geometry::from_shifts(12, 2, Mode::Discard);
        let pos = (9 << 12) + 100; // sub-buffer 9 = lap 2, slot 1
        assert_eq!(g.subbuf_of(pos), 9);
        assert_eq!(g.lap_of(9), 2);
        assert_eq!(g.slot_of(9), 1);
        assert_eq!(g.data_offset(pos), 4096 + 100);
        assert_eq!(g.slot_start(3), 3 * 4096);
        assert_eq!(g.max_payload, 4096 - 14);
    }
}
