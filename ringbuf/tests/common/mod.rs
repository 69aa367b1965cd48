//! Helpers shared by the integration tests: a record decoder that follows docs/format.md
//! and a checker for sequence-numbered records.
#![allow(dead_code, unreachable_pub, reason = "each test binary uses a subset")]

use drtrace_ringbuf::PacketInfo;
use std::collections::HashMap;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub id: u32,
    pub ts: u64,
    pub payload: Vec<u8>,
}

/// Decodes a packet's records per docs/format.md; `payload_len(id)` gives each event's
/// payload size. Rebuilds compact timestamps from the previous one (timestamp_begin first).
pub fn decode(
    info: &PacketInfo,
    bytes: &[u8],
    payload_len: impl Fn(u32) -> usize,
) -> Result<Vec<Rec>, String> {
    let mut recs = Vec::new();
    let mut prev = info.timestamp_begin;
    let mut i = 0;
    while i < bytes.len() {
        let (id, ts, hdr) = if bytes[i] & 31 == 31 {
            if bytes[i] != 31 {
                return Err(format!("extended header with top bits set at {i}"));
            }
            let h = bytes.get(i..i + 13).ok_or("truncated extended header")?;
            let id = u32::from_le_bytes(h[1..5].try_into().unwrap());
            let ts = u64::from_le_bytes(h[5..13].try_into().unwrap());
            (id, ts, 13)
        } else {
            let h = bytes.get(i..i + 4).ok_or("truncated compact header")?;
            let w = u32::from_le_bytes(h.try_into().unwrap());
            let low = u64::from(w >> 5);
            let mut ts = (prev & !((1 << 27) - 1)) | low;
            if ts < prev {
                ts += 1 << 27;
            }
            (w & 31, ts, 4)
        };
        if ts < prev {
            return Err(format!("timestamp went back: {ts} < {prev} at {i}"));
        }
        prev = ts;
        let len = payload_len(id);
        let payload = bytes
            .get(i + hdr..i + hdr + len)
            .ok_or_else(|| format!("truncated payload at {i}"))?
            .to_vec();
        recs.push(Rec { id, ts, payload });
        i += hdr + len;
    }
    if recs.len() as u64 != info.records {
        return Err(format!(
            "packet says {} records, decoded {}",
            info.records,
            recs.len()
        ));
    }
    if prev > info.timestamp_end {
        return Err(format!(
            "record timestamp {prev} after timestamp_end {}",
            info.timestamp_end
        ));
    }
    Ok(recs)
}

/// Payload of the sequence-numbered test records: writer id, sequence, the slot's
/// timestamp.
pub const SEQ_PAYLOAD: usize = 4 + 8 + 8;

/// Parses a sequence-numbered payload.
pub fn parse_seq(p: &[u8]) -> (u32, u64, u64) {
    (
        u32::from_le_bytes(p[0..4].try_into().unwrap()),
        u64::from_le_bytes(p[4..12].try_into().unwrap()),
        u64::from_le_bytes(p[12..20].try_into().unwrap()),
    )
}

/// Checks one stream of sequence-numbered records: per writer strictly increasing, each
/// record's header timestamp equal to the one the writer saw, packets in order.
#[derive(Debug, Default)]
pub struct StreamCheck {
    pub last_seq: HashMap<u32, u64>,
    pub per_writer: HashMap<u32, u64>,
    pub records: u64,
    pub last_discarded: u64,
    pub last_seq_num: Option<u64>,
    pub last_end: u64,
}

impl StreamCheck {
    pub fn packet(&mut self, info: &PacketInfo, bytes: &[u8]) -> Vec<(u32, u64)> {
        assert_eq!(info.content_size, bytes.len() as u64);
        assert!(info.events_discarded_total >= self.last_discarded);
        self.last_discarded = info.events_discarded_total;
        if let Some(prev) = self.last_seq_num {
            assert!(info.seq_num > prev, "{} after {prev}", info.seq_num);
        }
        self.last_seq_num = Some(info.seq_num);
        assert!(
            info.timestamp_begin >= self.last_end,
            "packet begins at {} before the previous end {}",
            info.timestamp_begin,
            self.last_end
        );
        self.last_end = info.timestamp_end;
        let recs = decode(info, bytes, |_| SEQ_PAYLOAD).unwrap();
        let mut out = Vec::new();
        for r in recs {
            let (writer, seq, ts) = parse_seq(&r.payload);
            assert_eq!(r.ts, ts, "header timestamp differs from the slot's");
            if let Some(&last) = self.last_seq.get(&writer) {
                assert!(seq > last, "writer {writer}: seq {seq} after {last}");
            }
            self.last_seq.insert(writer, seq);
            *self.per_writer.entry(writer).or_default() += 1;
            self.records += 1;
            out.push((writer, seq));
        }
        out
    }
}

/// Writes one sequence-numbered record; true if it was not dropped.
pub fn write_seq(w: &drtrace_ringbuf::Writer, id: u32, writer: u32, seq: u64) -> bool {
    match w.reserve(id, SEQ_PAYLOAD) {
        Some(mut slot) => {
            let ts = slot.timestamp();
            slot.put_u32(writer).put_u64(seq).put_u64(ts);
            slot.commit();
            true
        }
        None => false,
    }
}
