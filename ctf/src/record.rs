//! Records as writers put them in a sub-buffer (`docs/format.md`, "Records"): the compact
//! and extended event headers, the payload encoding, and the rebuilding of compact
//! timestamps.
//!
//! ```text
//! compact header, event id 0..=30, 4 bytes:
//!   u32 word = id | (timestamp & 0x7ff_ffff) << 5
//! extended header, any event id, 13 bytes:
//!   u8 31, u32 id, u64 timestamp
//! payload: fields in declaration order, little-endian, unaligned
//! ```
//!
//! The real writers live in the ring buffer; this module is the reference encoding that the
//! tests (and anyone synthesizing a trace) use, and [`rebuild_timestamp`] is the rule every
//! reader applies.

use drtrace_proto::event::FieldType;

/// Size in bytes of a compact event header.
pub const COMPACT_HEADER_SIZE: usize = 4;
/// Size in bytes of an extended event header.
pub const EXTENDED_HEADER_SIZE: usize = 13;
/// Largest event id a compact header can carry.
pub const MAX_COMPACT_ID: u32 = 30;
/// The 5-bit id value that marks an extended header.
pub const EXTENDED_MARKER: u8 = 31;
/// Timestamp bits a compact header carries.
pub const COMPACT_TIMESTAMP_BITS: u32 = 27;
/// Mask of the timestamp bits a compact header carries.
pub const COMPACT_TIMESTAMP_MASK: u64 = (1 << COMPACT_TIMESTAMP_BITS) - 1;

const _: () = assert!(COMPACT_HEADER_SIZE * 8 == 5 + COMPACT_TIMESTAMP_BITS as usize);
const _: () = assert!(EXTENDED_HEADER_SIZE == 1 + 4 + 8);

/// Which event header a record got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// 4 bytes: 5-bit id, 27 low bits of the timestamp.
    Compact,
    /// 13 bytes: marker, 32-bit id, full 64-bit timestamp.
    Extended,
}

/// Whether a record with `id` and `timestamp` may use the compact header after a record
/// (or packet begin) at `previous`: the id fits in 5 bits (below the marker) and the
/// timestamp shares its bits above bit 26 with `previous`.
#[inline]
pub fn fits_compact(id: u32, timestamp: u64, previous: u64) -> bool {
    id <= MAX_COMPACT_ID
        && timestamp >> COMPACT_TIMESTAMP_BITS == previous >> COMPACT_TIMESTAMP_BITS
        && timestamp >= previous
}

/// Appends the event header for `id` at `timestamp` to `out`, compact when
/// [`fits_compact`] allows it and extended otherwise.
///
/// `previous` is the timestamp of the record written before in the same buffer, or the
/// packet's `timestamp_begin` for its first record.
#[inline]
pub fn write_header(out: &mut Vec<u8>, id: u32, timestamp: u64, previous: u64) -> HeaderKind {
    if fits_compact(id, timestamp, previous) {
        let word = id | ((timestamp & COMPACT_TIMESTAMP_MASK) as u32) << 5;
        out.extend_from_slice(&word.to_le_bytes());
        HeaderKind::Compact
    } else {
        write_extended_header(out, id, timestamp);
        HeaderKind::Extended
    }
}

/// Appends an extended event header (always valid, whatever the id and timestamp).
pub fn write_extended_header(out: &mut Vec<u8>, id: u32, timestamp: u64) {
    out.push(EXTENDED_MARKER);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
}

/// Rebuilds a full timestamp from its `bits` low bits and the previous full value of the
/// same stream: take `previous`'s high bits, put the low bits in, and add `2^bits` if the
/// result went backwards.
///
/// With `bits >= 64` the value is already complete and is returned unchanged.
///
/// ```
/// use drtrace_ctf::record::rebuild_timestamp;
/// assert_eq!(rebuild_timestamp(0x0800_0010, 0x20, 27), 0x0800_0020);
/// // The low bits went backwards, so the 27-bit counter wrapped once.
/// assert_eq!(rebuild_timestamp(0x0fff_fff0, 0x5, 27), 0x1000_0005);
/// ```
pub fn rebuild_timestamp(previous: u64, low: u64, bits: u32) -> u64 {
    if bits >= 64 {
        return low;
    }
    let mask = (1u64 << bits) - 1;
    let low = low & mask;
    let candidate = (previous & !mask) | low;
    if candidate < previous {
        candidate.wrapping_add(1u64 << bits)
    } else {
        candidate
    }
}

/// One payload field value, to encode as `docs/format.md` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// `u8`.
    U8(u8),
    /// `u16`.
    U16(u16),
    /// `u32`.
    U32(u32),
    /// `u64`.
    U64(u64),
    /// `i8`.
    I8(i8),
    /// `i16`.
    I16(i16),
    /// `i32`.
    I32(i32),
    /// `i64`.
    I64(i64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// One byte, 0 or 1.
    Bool(bool),
    /// UTF-8 bytes up to the first NUL, then a NUL.
    Str(&'a str),
    /// A `u32` length, then the bytes.
    Bytes(&'a [u8]),
}

impl FieldValue<'_> {
    /// The field type this value encodes as.
    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValue::U8(_) => FieldType::U8,
            FieldValue::U16(_) => FieldType::U16,
            FieldValue::U32(_) => FieldType::U32,
            FieldValue::U64(_) => FieldType::U64,
            FieldValue::I8(_) => FieldType::I8,
            FieldValue::I16(_) => FieldType::I16,
            FieldValue::I32(_) => FieldType::I32,
            FieldValue::I64(_) => FieldType::I64,
            FieldValue::F32(_) => FieldType::F32,
            FieldValue::F64(_) => FieldType::F64,
            FieldValue::Bool(_) => FieldType::Bool,
            FieldValue::Str(_) => FieldType::String,
            FieldValue::Bytes(_) => FieldType::Bytes,
        }
    }

    /// Appends the encoded value to `out`.
    ///
    /// A string stops at its first NUL (the NUL would end it for every reader anyway). A
    /// byte sequence longer than `u32::MAX` is cut to `u32::MAX` bytes, which no sub-buffer
    /// could hold in the first place.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            FieldValue::U8(v) => out.push(v),
            FieldValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            FieldValue::Bool(v) => out.push(u8::from(v)),
            FieldValue::Str(s) => {
                let bytes = s.as_bytes();
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                out.extend_from_slice(&bytes[..end]);
                out.push(0);
            }
            FieldValue::Bytes(b) => {
                let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&b[..len as usize]);
            }
        }
    }
}

/// Appends a whole record: header (compact when possible) and payload. Returns the header
/// kind used; the caller's next `previous` is `timestamp`.
pub fn write_record(
    out: &mut Vec<u8>,
    id: u32,
    timestamp: u64,
    previous: u64,
    fields: &[FieldValue<'_>],
) -> HeaderKind {
    let kind = write_header(out, id, timestamp, previous);
    for f in fields {
        f.encode(out);
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_header_bytes() {
        let mut out = Vec::new();
        let kind = write_header(&mut out, 5, 0x0123_4567, 0x0100_0000);
        assert_eq!(kind, HeaderKind::Compact);
        let word = 5u32 | (0x0123_4567u32 & 0x7ff_ffff) << 5;
        assert_eq!(out, word.to_le_bytes());
        // Low 5 bits of the first byte are the id.
        assert_eq!(out[0] & 0x1f, 5);
    }

    #[test]
    fn extended_header_bytes() {
        let mut out = Vec::new();
        // id too large for compact
        assert_eq!(write_header(&mut out, 31, 7, 0), HeaderKind::Extended);
        assert_eq!(out, [31, 31, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        out.clear();
        // timestamp crosses a 2^27 boundary
        assert_eq!(
            write_header(&mut out, 1, 1 << 27, (1 << 27) - 1),
            HeaderKind::Extended
        );
        assert_eq!(out.len(), EXTENDED_HEADER_SIZE);
        assert_eq!(&out[5..], &(1u64 << 27).to_le_bytes());
        out.clear();
        // a timestamp before `previous` would be misread as a wrap, so it is extended
        assert_eq!(write_header(&mut out, 1, 10, 11), HeaderKind::Extended);
    }

    #[test]
    fn rebuild_follows_format_rule() {
        assert_eq!(rebuild_timestamp(100, 100, 27), 100);
        assert_eq!(rebuild_timestamp(100, 99, 27), 99 + (1 << 27));
        let prev = (7u64 << 27) | 0x7ff_fff0;
        assert_eq!(rebuild_timestamp(prev, 3, 27), (8u64 << 27) | 3);
        assert_eq!(
            rebuild_timestamp(prev, 0x7ff_ffff, 27),
            (7u64 << 27) | 0x7ff_ffff
        );
        assert_eq!(rebuild_timestamp(5, 3, 64), 3);
        // wraps the whole u64 space without panicking
        assert_eq!(rebuild_timestamp(u64::MAX, 0, 27), 0);
    }

    #[test]
    fn payload_encoding() {
        let mut out = Vec::new();
        for v in [
            FieldValue::U8(1),
            FieldValue::I16(-2),
            FieldValue::Bool(true),
            FieldValue::Str("a\0b"),
            FieldValue::Bytes(&[9, 8]),
            FieldValue::F32(1.5),
        ] {
            v.encode(&mut out);
        }
        let mut expected = vec![1, 0xfe, 0xff, 1, b'a', 0, 2, 0, 0, 0, 9, 8];
        expected.extend_from_slice(&1.5f32.to_le_bytes());
        assert_eq!(out, expected);
        assert_eq!(FieldValue::Bytes(&[]).field_type(), FieldType::Bytes);
    }
}
