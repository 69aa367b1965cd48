//! A bounded bit cursor over one packet's bytes. CTF positions are in bits: little-endian
//! bit fields fill each byte from its least significant bit, big-endian ones from its most
//! significant bit.

use super::DecodeError;
use crate::tsdl::ByteOrder;

#[derive(Debug)]
pub(crate) struct Bits<'a> {
    data: &'a [u8],
    /// Current position in bits from the start of `data`.
    pub(crate) pos: u64,
    /// Bits past this position are not readable (the packet's content size).
    end: u64,
}

impl<'a> Bits<'a> {
    /// A cursor at `pos` that may read up to bit `end`, clamped to the data's length.
    pub(crate) fn new(data: &'a [u8], pos: u64, end: u64) -> Self {
        let len_bits = u64::try_from(data.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(8);
        Self {
            data,
            pos,
            end: end.min(len_bits),
        }
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    fn truncated(&self, needed: u64) -> DecodeError {
        DecodeError::Truncated {
            at_bit: self.pos,
            needed_bits: needed,
            available_bits: self.remaining(),
        }
    }

    /// Moves forward to the next multiple of `align` bits.
    pub(crate) fn align(&mut self, align: u32) -> Result<(), DecodeError> {
        let align = u64::from(align.max(1));
        let to = self
            .pos
            .checked_next_multiple_of(align)
            .ok_or_else(|| self.truncated(align))?;
        if to > self.end {
            return Err(self.truncated(to - self.pos));
        }
        self.pos = to;
        Ok(())
    }

    /// Reads an unsigned field of `size` bits (at most 64) in `order`.
    pub(crate) fn read(&mut self, size: u32, order: ByteOrder) -> Result<u64, DecodeError> {
        if size == 0 {
            return Ok(0);
        }
        let size = size.min(64);
        if self.remaining() < u64::from(size) {
            return Err(self.truncated(u64::from(size)));
        }
        let first = usize::try_from(self.pos / 8).map_err(|_| self.truncated(u64::from(size)))?;
        let shift = u32::try_from(self.pos % 8).unwrap_or(0);
        // At most 9 bytes: 7 bits of offset plus 64 bits of value.
        let nbytes = (shift + size).div_ceil(8) as usize;
        let bytes = self
            .data
            .get(first..first + nbytes)
            .ok_or_else(|| self.truncated(u64::from(size)))?;
        let mask: u128 = (1u128 << size) - 1;
        let value = match order {
            ByteOrder::Little => {
                let acc = bytes
                    .iter()
                    .rev()
                    .fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
                (acc >> shift) & mask
            }
            ByteOrder::Big => {
                let acc = bytes
                    .iter()
                    .fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
                let total = u32::try_from(nbytes * 8).unwrap_or(72);
                (acc >> (total - shift - size)) & mask
            }
        };
        self.pos += u64::from(size);
        // The mask keeps at most 64 bits.
        Ok(u64::try_from(value).unwrap_or(u64::MAX))
    }

    /// Reads `n` whole bytes; the position must be byte-aligned.
    pub(crate) fn bytes(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let needed = n.saturating_mul(8);
        if self.pos % 8 != 0 || self.remaining() < needed {
            return Err(self.truncated(needed));
        }
        let start = usize::try_from(self.pos / 8).map_err(|_| self.truncated(needed))?;
        let len = usize::try_from(n).map_err(|_| self.truncated(needed))?;
        let out = self
            .data
            .get(start..start + len)
            .ok_or_else(|| self.truncated(needed))?;
        self.pos += needed;
        Ok(out)
    }

    /// Reads a NUL-terminated byte string (without its NUL); the position must be
    /// byte-aligned.
    pub(crate) fn cstring(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = usize::try_from(self.pos / 8).unwrap_or(usize::MAX);
        let end = usize::try_from(self.end / 8).unwrap_or(usize::MAX);
        let window = self.data.get(start..end).unwrap_or(&[]);
        let Some(len) = window.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString { at_bit: self.pos });
        };
        self.pos += (len as u64 + 1) * 8;
        Ok(&window[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_endian_bit_fields() {
        // compact header: id 5 in the low 5 bits, 27-bit timestamp above
        let word: u32 = 5 | (0x123_4567 << 5);
        let data = word.to_le_bytes();
        let mut b = Bits::new(&data, 0, 32);
        assert_eq!(b.read(5, ByteOrder::Little).unwrap(), 5);
        assert_eq!(b.read(27, ByteOrder::Little).unwrap(), 0x123_4567);
        assert_eq!(b.remaining(), 0);
        assert!(b.read(1, ByteOrder::Little).is_err());
    }

    #[test]
    fn big_endian_bit_fields() {
        // 0b101_10011 then 0x01: fields of 3 bits and 13 bits, MSB first
        let data = [0b1011_0011, 0x01];
        let mut b = Bits::new(&data, 0, 16);
        assert_eq!(b.read(3, ByteOrder::Big).unwrap(), 0b101);
        assert_eq!(b.read(13, ByteOrder::Big).unwrap(), 0b1_0011_0000_0001);
        let data = 0x0102_0304_0506_0708u64.to_be_bytes();
        assert_eq!(
            Bits::new(&data, 0, 64).read(64, ByteOrder::Big).unwrap(),
            0x0102_0304_0506_0708
        );
    }

    #[test]
    fn unaligned_64_bit_read() {
        let mut data = vec![0u8; 9];
        let v: u128 = 0xfedc_ba98_7654_3210u128 << 3;
        data.copy_from_slice(&v.to_le_bytes()[..9]);
        let mut b = Bits::new(&data, 3, 72);
        assert_eq!(
            b.read(64, ByteOrder::Little).unwrap(),
            0xfedc_ba98_7654_3210
        );
    }

    #[test]
    fn align_strings_and_bounds() {
        let data = [1, b'h', b'i', 0, 7, 8];
        let mut b = Bits::new(&data, 1, 48);
        b.align(8).unwrap();
        assert_eq!(b.pos, 8);
        assert_eq!(b.cstring().unwrap(), b"hi");
        assert_eq!(b.bytes(2).unwrap(), &[7, 8]);
        assert!(b.align(64).is_err());
        let mut b = Bits::new(&data, 8, 24); // the NUL is past the end
        assert!(matches!(
            b.cstring(),
            Err(DecodeError::UnterminatedString { at_bit: 8 })
        ));
        let mut b = Bits::new(&data, 0, 1000); // end clamps to the data
        assert_eq!(b.remaining(), 48);
        assert!(b.bytes(7).is_err());
        let mut b = Bits::new(&data, u64::MAX - 3, u64::MAX);
        assert!(b.align(8).is_err());
    }
}
