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
///
/// Emitting first *prepares* each argument (a string is scanned for a NUL once, there), then
/// sums the prepared lengths to reserve the record, then encodes into it.
pub trait Field: sealed::Sealed {
    /// The field's type in the event description (and so in the trace metadata).
    const TYPE: FieldType;

    /// The value ready to encode.
    #[doc(hidden)]
    type Prepared: Encode;

    /// Prepares the value for encoding.
    #[doc(hidden)]
    fn prepare(&self) -> Self::Prepared;
}

/// A prepared field value.
#[doc(hidden)]
pub trait Encode {
    /// Bytes this value takes in a record.
    fn encoded_len(&self) -> usize;

    /// Writes this value; writes exactly [`encoded_len`](Self::encoded_len) bytes.
    fn encode<S: Sink>(&self, sink: &mut S);
}

macro_rules! fixed_field {
    ($($ty:ty => $ft:ident),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl Field for $ty {
            const TYPE: FieldType = FieldType::$ft;
            type Prepared = $ty;

            #[inline(always)]
            fn prepare(&self) -> $ty {
                *self
            }
        }
        impl Encode for $ty {
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
    type Prepared = bool;

    #[inline(always)]
    fn prepare(&self) -> bool {
        *self
    }
}

impl Encode for bool {
    #[inline(always)]
    fn encoded_len(&self) -> usize {
        1
    }

    #[inline(always)]
    fn encode<S: Sink>(&self, sink: &mut S) {
        sink.put(&[u8::from(*self)]);
    }
}

/// Position of the first NUL in `bytes`, eight bytes at a time (inlined, unlike core's
/// memchr, which matters for the short strings events usually carry).
#[inline(always)]
fn find_nul(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        // Nonzero exactly when some byte of `v` is zero (the classic "has zero byte" test).
        if v.wrapping_sub(LO) & !v & HI != 0 {
            return chunk.iter().position(|b| *b == 0).map(|i| base + i);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|b| *b == 0)
        .map(|i| base + i)
}

/// A string ready to encode: its bytes up to the first NUL (which would otherwise end it
/// early for a reader and shift every later field).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct StrBody<'a>(&'a [u8]);

impl sealed::Sealed for &str {}
impl<'a> Field for &'a str {
    const TYPE: FieldType = FieldType::String;
    type Prepared = StrBody<'a>;

    #[inline(always)]
    fn prepare(&self) -> StrBody<'a> {
        let bytes = self.as_bytes();
        StrBody(match find_nul(bytes) {
            Some(end) => &bytes[..end],
            None => bytes,
        })
    }
}

impl Encode for StrBody<'_> {
    #[inline(always)]
    fn encoded_len(&self) -> usize {
        self.0.len() + 1
    }

    #[inline(always)]
    fn encode<S: Sink>(&self, sink: &mut S) {
        sink.put(self.0);
        sink.put(&[0]);
    }
}

/// A byte slice ready to encode: a `u32` length prefix holds at most `u32::MAX` bytes (such
/// a record is dropped as too large by the ring buffer anyway).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct BytesBody<'a>(&'a [u8]);

impl sealed::Sealed for &[u8] {}
impl<'a> Field for &'a [u8] {
    const TYPE: FieldType = FieldType::Bytes;
    type Prepared = BytesBody<'a>;

    #[inline(always)]
    fn prepare(&self) -> BytesBody<'a> {
        let b: &'a [u8] = self;
        BytesBody(&b[..b.len().min(u32::MAX as usize)])
    }
}

impl Encode for BytesBody<'_> {
    #[inline(always)]
    fn encoded_len(&self) -> usize {
        4 + self.0.len()
    }

    #[inline(always)]
    fn encode<S: Sink>(&self, sink: &mut S) {
        let len = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        sink.put(&len.to_le_bytes());
        sink.put(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T: Field>(v: T) -> Vec<u8> {
        let p = v.prepare();
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out.len(), p.encoded_len(), "encoded_len must match encode");
        out
    }

    #[test]
    fn the_nul_scan_finds_the_first_nul_anywhere() {
        for len in 0..40 {
            let clean = vec![b'x'; len];
            assert_eq!(find_nul(&clean), None);
            for at in 0..len {
                let mut v = clean.clone();
                v[at] = 0;
                if at + 1 < len {
                    v[len - 1] = 0;
                }
                assert_eq!(find_nul(&v), Some(at), "len {len} at {at}");
            }
        }
        // Bytes >= 0x80 next to a zero byte are not mistaken for it, nor it for them.
        assert_eq!(find_nul(&[0x80, 0x81, 1, 0xff, 0, 2, 3, 4, 5]), Some(4));
        assert_eq!(find_nul("ééééé".as_bytes()), None);
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
