//! Packet header and packet context: the fixed 84 bytes the consumer writes in front of the
//! records of every sub-buffer (`docs/format.md`, "Packets").
//!
//! ```text
//! offset  size  packet header (32 bytes)
//!      0     4  u32 magic = 0xC1FC1FC1
//!      4    16  u8  uuid[16]            the trace UUID of the metadata file
//!     20     4  u32 stream_id           the channel's index in the session
//!     24     8  u64 stream_instance_id  the CPU number
//! offset  size  packet context (52 bytes)
//!     32     8  u64 timestamp_begin
//!     40     8  u64 timestamp_end
//!     48     8  u64 content_size        in bits: header + context + records
//!     56     8  u64 packet_size         in bits: equal to content_size
//!     64     8  u64 packet_seq_num
//!     72     8  u64 events_discarded    running total for the stream
//!     80     4  u32 cpu_id
//!     84        records
//! ```
//!
//! Everything is little-endian. The reader in [`crate::reader`] does not use these fixed
//! decoders: it decodes packets through the metadata, so it also reads other layouts. The
//! decoders here exist for the consumer's own checks and for tests.

use thiserror::Error;
use uuid::Uuid;

/// The CTF magic number that opens every packet.
pub const MAGIC: u32 = 0xC1FC_1FC1;
/// Size in bytes of the encoded [`PacketHeader`].
pub const PACKET_HEADER_SIZE: usize = 32;
/// Size in bytes of the encoded [`PacketContext`].
pub const PACKET_CONTEXT_SIZE: usize = 52;
/// Bytes in front of the first record of a packet: header plus context.
pub const PACKET_PREAMBLE_SIZE: usize = PACKET_HEADER_SIZE + PACKET_CONTEXT_SIZE;

const _: () = assert!(PACKET_HEADER_SIZE == 4 + 16 + 4 + 8);
const _: () = assert!(PACKET_CONTEXT_SIZE == 6 * 8 + 4);
const _: () = assert!(PACKET_PREAMBLE_SIZE == 84);

/// A fixed-layout decode failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// Fewer bytes than the structure needs.
    #[error("packet is truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were given.
        available: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("bad packet magic {found:#010x}, expected {MAGIC:#010x}")]
    BadMagic {
        /// What was read instead.
        found: u32,
    },
    /// A packet's records do not fit the 64-bit size fields (only with absurd inputs).
    #[error("packet of {bytes} bytes is too large")]
    TooLarge {
        /// The packet's size in bytes.
        bytes: usize,
    },
}

/// The packet header, identical for every packet of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketHeader {
    /// The trace UUID of the stream's metadata file (its `trace.uuid`, see
    /// [`crate::metadata::trace_uuid`]).
    pub uuid: Uuid,
    /// The channel's index in the session (the metadata's `stream.id`).
    pub stream_id: u32,
    /// The CPU number of the buffer this stream comes from.
    pub stream_instance_id: u64,
}

impl PacketHeader {
    /// Appends the 32 encoded bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(self.uuid.as_bytes());
        out.extend_from_slice(&self.stream_id.to_le_bytes());
        out.extend_from_slice(&self.stream_instance_id.to_le_bytes());
    }

    /// Decodes the header from the first [`PACKET_HEADER_SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, PacketError> {
        let b = prefix::<PACKET_HEADER_SIZE>(bytes)?;
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(PacketError::BadMagic { found: magic });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[4..20]);
        Ok(Self {
            uuid: Uuid::from_bytes(uuid),
            stream_id: u32_at(b, 20),
            stream_instance_id: u64_at(b, 24),
        })
    }
}

/// The packet context: what changes from one packet to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PacketContext {
    /// Clock value at the sub-buffer's first byte.
    pub timestamp_begin: u64,
    /// Clock value when the sub-buffer was closed.
    pub timestamp_end: u64,
    /// Header, context and records, in bits.
    pub content_size: u64,
    /// The packet's size in bits; equal to `content_size` (no padding is written).
    pub packet_size: u64,
    /// 0, 1, 2 ... per stream; a gap means packets were lost.
    pub packet_seq_num: u64,
    /// Running total of the events this stream lost so far.
    pub events_discarded: u64,
    /// The CPU the buffer belongs to.
    pub cpu_id: u32,
}

impl PacketContext {
    /// Appends the 52 encoded bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.timestamp_begin,
            self.timestamp_end,
            self.content_size,
            self.packet_size,
            self.packet_seq_num,
            self.events_discarded,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.cpu_id.to_le_bytes());
    }

    /// Decodes the context from the first [`PACKET_CONTEXT_SIZE`] bytes of `bytes` (the
    /// bytes right after the header).
    pub fn decode(bytes: &[u8]) -> Result<Self, PacketError> {
        let b = prefix::<PACKET_CONTEXT_SIZE>(bytes)?;
        Ok(Self {
            timestamp_begin: u64_at(b, 0),
            timestamp_end: u64_at(b, 8),
            content_size: u64_at(b, 16),
            packet_size: u64_at(b, 24),
            packet_seq_num: u64_at(b, 32),
            events_discarded: u64_at(b, 40),
            cpu_id: u32_at(b, 48),
        })
    }
}

/// Appends one complete packet to `out`: `header`, `context` with `content_size` and
/// `packet_size` set from the length of `records`, then `records`.
///
/// Returns the packet's size in bytes. The sizes in `context` are ignored: they are always
/// computed, so a caller cannot write a packet that lies about its length.
pub fn write_packet(
    out: &mut Vec<u8>,
    header: &PacketHeader,
    context: &PacketContext,
    records: &[u8],
) -> Result<usize, PacketError> {
    let bytes = PACKET_PREAMBLE_SIZE + records.len();
    let bits = u64::try_from(bytes)
        .ok()
        .and_then(|b| b.checked_mul(8))
        .ok_or(PacketError::TooLarge { bytes })?;
    let context = PacketContext {
        content_size: bits,
        packet_size: bits,
        ..*context
    };
    out.reserve(bytes);
    header.encode(out);
    context.encode(out);
    out.extend_from_slice(records);
    Ok(bytes)
}

fn prefix<const N: usize>(bytes: &[u8]) -> Result<&[u8; N], PacketError> {
    bytes
        .get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or(PacketError::Truncated {
            needed: N,
            available: bytes.len(),
        })
}

fn u32_at<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at<const N: usize>(b: &[u8; N], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid() -> Uuid {
        Uuid::from_bytes([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ])
    }

    #[test]
    fn header_golden_bytes() {
        let mut out = Vec::new();
        PacketHeader {
            uuid: uuid(),
            stream_id: 0x0102_0304,
            stream_instance_id: 0x1112_1314_1516_1718,
        }
        .encode(&mut out);
        let expected: [u8; PACKET_HEADER_SIZE] = [
            0xc1, 0x1f, 0xfc, 0xc1, // magic, little-endian
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff, // uuid, in RFC byte order
            0x04, 0x03, 0x02, 0x01, // stream_id
            0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, // stream_instance_id
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn context_golden_bytes() {
        let mut out = vec![0xee]; // encode appends, it does not overwrite
        PacketContext {
            timestamp_begin: 1,
            timestamp_end: 0x0200,
            content_size: 0x03_0000,
            packet_size: 0x0400_0000,
            packet_seq_num: 0x05_0000_0000,
            events_discarded: 0x0600_0000_0000,
            cpu_id: 0x0708_090a,
        }
        .encode(&mut out);
        #[rustfmt::skip]
        let expected: [u8; 1 + PACKET_CONTEXT_SIZE] = [
            0xee,
            1, 0, 0, 0, 0, 0, 0, 0,
            0, 2, 0, 0, 0, 0, 0, 0,
            0, 0, 3, 0, 0, 0, 0, 0,
            0, 0, 0, 4, 0, 0, 0, 0,
            0, 0, 0, 0, 5, 0, 0, 0,
            0, 0, 0, 0, 0, 6, 0, 0,
            0x0a, 0x09, 0x08, 0x07,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn write_packet_computes_sizes() {
        let header = PacketHeader {
            uuid: uuid(),
            stream_id: 2,
            stream_instance_id: 3,
        };
        let context = PacketContext {
            timestamp_begin: 10,
            timestamp_end: 20,
            content_size: 999, // ignored
            packet_size: 1,    // ignored
            packet_seq_num: 4,
            events_discarded: 5,
            cpu_id: 3,
        };
        let mut out = Vec::new();
        let n = write_packet(&mut out, &header, &context, &[1, 2, 3]).unwrap();
        assert_eq!(n, 87);
        assert_eq!(out.len(), 87);
        assert_eq!(&out[84..], &[1, 2, 3]);
        assert_eq!(PacketHeader::decode(&out).unwrap(), header);
        let back = PacketContext::decode(&out[PACKET_HEADER_SIZE..]).unwrap();
        assert_eq!(back.content_size, 87 * 8);
        assert_eq!(back.packet_size, 87 * 8);
        assert_eq!(back.packet_seq_num, 4);
        assert_eq!(back.events_discarded, 5);
        assert_eq!(back.timestamp_begin, 10);
        assert_eq!(back.timestamp_end, 20);
        assert_eq!(back.cpu_id, 3);
    }

    #[test]
    fn decode_rejects_short_input_and_bad_magic() {
        assert_eq!(
            PacketHeader::decode(&[0; 31]),
            Err(PacketError::Truncated {
                needed: 32,
                available: 31
            })
        );
        assert_eq!(
            PacketHeader::decode(&[0; 32]),
            Err(PacketError::BadMagic { found: 0 })
        );
        assert!(matches!(
            PacketContext::decode(&[0; 51]),
            Err(PacketError::Truncated { needed: 52, .. })
        ));
        assert_eq!(
            PacketError::BadMagic { found: 1 }.to_string(),
            "bad packet magic 0x00000001, expected 0xc1fc1fc1"
        );
    }
}
