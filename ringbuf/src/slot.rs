//! A reserved record being filled: bounds-checked payload writes, then one commit.
//!
//! The record header is written when the slot is created, so a slot dropped half-written
//! (early return, panic in the caller) still leaves a well-formed record: its unwritten
//! payload bytes are zeroed and it is committed like any other. Nothing can wedge the
//! sub-buffer short of the process dying between reserve and commit (`ring.rs`, "Holes").

#![forbid(unsafe_code)]

use crate::primitive::AtomicU64;
use crate::ring::{Backend, Ring};

/// The backend-generic slot (the public [`Slot`] wraps the mapped one).
pub(crate) struct SlotCore<'a, B: Backend> {
    ring: &'a Ring<B>,
    word: &'a AtomicU64,
    /// Data offset of the next payload byte.
    at: usize,
    /// Data offset one past the payload.
    end: usize,
    /// Commit-word increment: one record and its full length.
    delta: u64,
    /// The record's timestamp.
    ts: u64,
}

impl<'a, B: Backend> SlotCore<'a, B> {
    /// Writes `header` at data offset `at` and returns a slot for the `payload_len` bytes
    /// after it. The caller reserved `header.len() + payload_len` bytes at `at`.
    #[inline(always)]
    pub(crate) fn begin(
        ring: &'a Ring<B>,
        word: &'a AtomicU64,
        at: usize,
        header: &[u8],
        payload_len: usize,
        ts: u64,
    ) -> Self {
        ring.be.write(at, header);
        let start = at + header.len();
        SlotCore {
            ring,
            word,
            at: start,
            end: start + payload_len,
            delta: ring.geo.record_delta((header.len() + payload_len) as u64),
            ts,
        }
    }

    /// Appends `src` if it fits in what is left of the payload; otherwise writes nothing.
    #[inline]
    pub(crate) fn put(&mut self, src: &[u8]) -> bool {
        if src.len() > self.end - self.at {
            return false;
        }
        self.ring.be.write(self.at, src);
        self.at += src.len();
        true
    }

    /// Payload bytes not written yet.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.end - self.at
    }

    /// The record's timestamp (the one in its header).
    #[inline]
    pub(crate) fn timestamp(&self) -> u64 {
        self.ts
    }
}

impl<B: Backend> Drop for SlotCore<'_, B> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.at < self.end {
            self.ring.be.zero(self.at, self.end - self.at);
        }
        self.ring.commit(self.word, self.delta);
    }
}

impl<B: Backend> std::fmt::Debug for SlotCore<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("remaining", &self.remaining())
            .field("timestamp", &self.ts)
            .finish_non_exhaustive()
    }
}

#[cfg(not(loom))]
pub use mapped::Slot;

#[cfg(not(loom))]
mod mapped {
    use super::SlotCore;
    use crate::writer::MapBackend;

    /// A record reserved by [`Writer::reserve`](crate::Writer::reserve), being filled.
    ///
    /// Payload values are appended little-endian, byte-aligned, as `docs/format.md` lays
    /// them out. A value that does not fit in what is left of the reserved length is not
    /// written at all (the bytes stay zero). Committing happens on [`Slot::commit`] or on
    /// drop, whichever comes first; unwritten payload bytes are zeroed, so an abandoned slot
    /// still commits a well-formed record. Only a slot that is never dropped (the process
    /// dies, or `mem::forget`) leaves its sub-buffer incomplete, until the reader's
    /// `check_stuck` gives it up.
    ///
    /// ```
    /// # use drtrace_ringbuf::{create_buffer, ClockSource, Layout, Mode, Reader, Writer};
    /// # let layout = Layout { subbuf_size: 4096, num_subbuf: 2, mode: Mode::Discard };
    /// # let fd = create_buffer(&layout, ClockSource::Monotonic, "doc").unwrap();
    /// # let writer = Writer::map(&fd, None).unwrap();
    /// let mut slot = writer.reserve(3, 8 + 4).expect("buffer full");
    /// slot.put_u64(42).put_f32(0.5);
    /// assert_eq!(slot.remaining(), 0);
    /// slot.commit();
    /// ```
    pub struct Slot<'a> {
        core: SlotCore<'a, MapBackend>,
    }

    macro_rules! put_le {
        ($($(#[$doc:meta])* $name:ident: $t:ty;)*) => {$(
            $(#[$doc])*
            #[inline]
            pub fn $name(&mut self, v: $t) -> &mut Self {
                self.core.put(&v.to_le_bytes());
                self
            }
        )*};
    }

    impl<'a> Slot<'a> {
        pub(crate) fn new(core: SlotCore<'a, MapBackend>) -> Self {
            Slot { core }
        }

        put_le! {
            /// Appends a `u8`.
            put_u8: u8;
            /// Appends a `u16`.
            put_u16: u16;
            /// Appends a `u32`.
            put_u32: u32;
            /// Appends a `u64`.
            put_u64: u64;
            /// Appends an `i8`.
            put_i8: i8;
            /// Appends an `i16`.
            put_i16: i16;
            /// Appends an `i32`.
            put_i32: i32;
            /// Appends an `i64`.
            put_i64: i64;
            /// Appends an `f32`.
            put_f32: f32;
            /// Appends an `f64`.
            put_f64: f64;
        }

        /// Appends a `bool` as one byte (0 or 1).
        #[inline]
        pub fn put_bool(&mut self, v: bool) -> &mut Self {
            self.core.put(&[u8::from(v)]);
            self
        }

        /// Appends raw bytes (all of them, or none if they do not fit).
        #[inline]
        pub fn put_bytes(&mut self, bytes: &[u8]) -> &mut Self {
            self.core.put(bytes);
            self
        }

        /// Appends a string field: its UTF-8 bytes up to the first NUL, then one NUL. Its
        /// size in the payload is [`string_len`](crate::string_len)`(s)`.
        #[inline]
        pub fn put_str(&mut self, s: &str) -> &mut Self {
            let bytes = s.as_bytes();
            let body = bytes.split(|&b| b == 0).next().unwrap_or(bytes);
            if body.len() < self.core.remaining() {
                self.core.put(body);
                self.core.put(&[0]);
            }
            self
        }

        /// Payload bytes not written yet.
        #[inline]
        pub fn remaining(&self) -> usize {
            self.core.remaining()
        }

        /// The record's timestamp, as written in its header (buffer clock units).
        #[inline]
        pub fn timestamp(&self) -> u64 {
            self.core.timestamp()
        }

        /// Commits the record (zeroing any unwritten payload bytes). Dropping the slot does
        /// the same.
        #[inline]
        pub fn commit(self) {}
    }

    impl std::fmt::Debug for Slot<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.core.fmt(f)
        }
    }
}

/// Payload size of a string field written by [`Slot::put_str`]: bytes before the first NUL,
/// plus the terminating NUL.
pub fn string_len(s: &str) -> usize {
    s.as_bytes().iter().position(|&b| b == 0).unwrap_or(s.len()) + 1
}
