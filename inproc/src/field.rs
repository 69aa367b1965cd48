//! Field types an event may carry, and their encoding in a record (docs/format.md,
//! "Records"): little-endian, byte-aligned; `bool` is one byte 0 or 1; a string is its UTF-8
//! bytes up to the first NUL, then one NUL; a byte slice is a `u32` length, then the bytes.
//!
//! The trait is sealed: the encoding is a contract with the consumer and the metadata, so only
//! the types listed in [`FieldType`] can be fields.

use drtrace_proto::event::FieldType;

/// Where an encoded field goes: a reserved ring-buffer slot, or a `Vec` in tests.
#[doc(hidden)]
pub trait Sink {
    /// Appends `bytes` to the record.
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A value that can be an event field: `u8`–`u64`, `i8`–`i64`, `f32`, `f64`, `bool`, `&str`
/// and `&[u8]`.
pub trait Field: sealed::Sealed {
    /// The field's type in the event description (and so in the trace metadata).
    const TYPE: FieldType;

    /// Bytes this value takes in a record.
    #[doc(hidden)]
    fn encoded_len(&self) -> usize;

    /// Writes this value; writes exactly [`encoded_len`](Self::encoded_len) bytes.
    #[doc(hidden)]
    fn encode<S: Sink>(&self, sink: &mut S);
}

macro_rules! fixed_field {
    ($($ty:ty => $ft:ident),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl Field for $ty {
            const TYPE: FieldType = FieldType::$ft;

            #[inline(always)]
            fn encoded_len(&self) -> usize {
                size_of::<$ty>()
            }

            #[inline(always)]
            fn encode<S: Sink>(&self, sink: &mut S) {
                sink.put(&self.to_le_bytes());
            }
        }
    )*};
}

fixed_field! {
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    f32 => F32, f64 => F64,
}

impl sealed::Sealed for bool {}
impl Field for bool {
    const TYPE: FieldType = FieldType::Bool;

    #[inline(always)]
    fn encoded_len(&self) -> usize {
        1
    }

    #[inline(always)]
    fn encode<S: Sink>(&self, sink: &mut S) {
        sink.put(&[u8::from(*self)]);
    }
}

/// The part of a string that is recorded: up to its first NUL, which would otherwise end it
/// early for a reader and shift every later field.
#[inline(always)]
fn string_body(s: &str) -> &[u8] {
    let bytes = s.as_bytes();
    // `contains` is core's word-at-a-time memchr; the position scan runs only in the rare
    // case of an embedded NUL.
    if bytes.contains(&0) {
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        &bytes[..end]
    } else {
        bytes
    }
}

impl sealed::Sealed for &str {}
impl Field for &str {
    const TYPE: FieldType = FieldType::String;

    #[inline(always)]
    fn encoded_len(&self) -> usize {
        string_body(self).len() + 1
    }

    #[inline(always)]
    fn encode<S: Sink>(&self, sink: &mut S) {
        sink.put(string_body(self));
        sink.put(&[0]);
    }
}

/// The part of a byte slice that is recorded: a length prefix is a `u32`, so at most
/// `u32::MAX` bytes (such a record is dropped as too large by the ring buffer anyway).
#[inline(always)]
fn bytes_body(b: &[u8]) -> (&[u8], u32) {
    match u32::try_from(b.len()) {
        Ok(len) => (b, len),
        Err(_) => (&b[..u32::MAX as usize], u32::MAX),
    }
}

impl sealed::Sealed for &[u8] {}
impl Field for &[u8] {
    const TYPE: FieldType = FieldType::Bytes;

    #[inline(always)]
    fn encoded_len(&self) -> usize {
        4 + bytes_body(self).0.len()
    }

    #[inline(always)]
    fn encode<S: Sink>(&self, sink: &mut S) {
        let (body, len) = bytes_body(self);
        sink.put(&len.to_le_bytes());
        sink.put(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T: Field>(v: T) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out.len(), v.encoded_len(), "encoded_len must match encode");
        out
    }

    #[test]
    fn integers_and_floats_are_little_endian() {
        assert_eq!(enc(0x12u8), [0x12]);
        assert_eq!(enc(0x1234u16), [0x34, 0x12]);
        assert_eq!(enc(0x1234_5678u32), [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(enc(1u64), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(-1i8), [0xff]);
        assert_eq!(enc(-2i16), [0xfe, 0xff]);
        assert_eq!(enc(-3i32), (-3i32).to_le_bytes());
        assert_eq!(enc(i64::MIN), i64::MIN.to_le_bytes());
        assert_eq!(enc(1.5f32), 1.5f32.to_le_bytes());
        assert_eq!(enc(-2.25f64), (-2.25f64).to_le_bytes());
    }

    #[test]
    fn bools_are_one_byte() {
        assert_eq!(enc(true), [1]);
        assert_eq!(enc(false), [0]);
    }

    #[test]
    fn strings_end_with_nul_and_stop_at_an_inner_nul() {
        assert_eq!(enc("hi"), b"hi\0");
        assert_eq!(enc(""), b"\0");
        assert_eq!(enc("a\0b"), b"a\0");
        assert_eq!(enc("é"), "é\0".as_bytes());
    }

    #[test]
    fn byte_slices_are_length_prefixed() {
        assert_eq!(enc(&b"xyz"[..]), [3, 0, 0, 0, b'x', b'y', b'z']);
        assert_eq!(enc(&b""[..]), [0, 0, 0, 0]);
        assert_eq!(enc(&b"\0\0"[..]), [2, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn types_map_to_the_protocol() {
        assert_eq!(<u8 as Field>::TYPE, FieldType::U8);
        assert_eq!(<i64 as Field>::TYPE, FieldType::I64);
        assert_eq!(<f32 as Field>::TYPE, FieldType::F32);
        assert_eq!(<bool as Field>::TYPE, FieldType::Bool);
        assert_eq!(<&str as Field>::TYPE, FieldType::String);
        assert_eq!(<&[u8] as Field>::TYPE, FieldType::Bytes);
    }
}
