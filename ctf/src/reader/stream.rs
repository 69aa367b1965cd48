//! One stream file: its packets, read one at a time, and the records in them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bits::Bits;
use super::decode::{Decoder, Root, Roots, find_event_id};
use super::value::loglevel_from_tsdl;
use super::{
    DecodeError, DiscardedEvents, Event, PacketGap, ReadError, StreamStats, TraceSource, Value,
};
use crate::packet::MAGIC;
use crate::tsdl::{FieldClass, StreamClass};

/// Bytes read first to decode a packet's header and context.
const PROBE: u64 = 64 * 1024;
/// Largest packet the reader loads (packets are sub-buffers: far smaller in practice).
pub(crate) const MAX_PACKET: u64 = 1 << 30;

#[derive(Debug)]
struct Packet {
    /// File offset of the packet's first byte.
    offset: u64,
    stream_id: u64,
    /// Next record, in bits from the packet's start.
    pos: u64,
    /// End of the records, in bits from the packet's start.
    content_end: u64,
    cpu: Option<u32>,
    roots: Roots,
}

/// Reads the events of one stream file in order, one packet in memory at a time.
#[derive(Debug)]
pub(crate) struct StreamReader {
    path: PathBuf,
    /// The file's length when the current packet was loaded.
    file_len: u64,
    next_offset: u64,
    source: Arc<TraceSource>,
    channel: String,
    buf: Vec<u8>,
    packet: Option<Packet>,
    clock: u64,
    done: bool,
    last_seq: Option<u64>,
    last_discarded: Option<u64>,
    pub(crate) stats: StreamStats,
}

impl StreamReader {
    pub(crate) fn new(source: Arc<TraceSource>, path: &Path) -> Self {
        let channel = channel_name(path);
        Self {
            path: path.to_owned(),
            file_len: 0,
            next_offset: 0,
            source,
            channel: channel.clone(),
            buf: Vec::new(),
            packet: None,
            clock: 0,
            done: false,
            last_seq: None,
            last_discarded: None,
            stats: StreamStats {
                path: path.to_owned(),
                channel,
                stream_id: None,
                cpu: None,
                packets: 0,
                events: 0,
                events_discarded: 0,
                discarded: Vec::new(),
                lost_packets: Vec::new(),
            },
        }
    }

    fn decode_err(&self, offset: u64, source: DecodeError) -> ReadError {
        ReadError::Decode {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    /// The next event; `Ok(None)` at the end. After an error the stream yields nothing more
    /// (its position can no longer be trusted).
    pub(crate) fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let result = self.next_event_inner();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
            self.packet = None;
        }
        result
    }

    fn next_event_inner(&mut self) -> Result<Option<Event>, ReadError> {
        loop {
            match &self.packet {
                Some(p) if p.pos < p.content_end => return self.decode_event().map(Some),
                _ => {
                    if !self.load_packet()? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Opens the file for one packet. Files are not kept open between packets: a merge
    /// over every CPU's stream of every channel must not run out of file descriptors.
    fn open(&mut self) -> Result<File, ReadError> {
        let io = |source| ReadError::Io {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(io)?;
        self.file_len = file.metadata().map_err(io)?.len();
        Ok(file)
    }

    fn read_at(&mut self, file: &File, offset: u64, len: u64) -> Result<(), ReadError> {
        let len_usize = usize::try_from(len)
            .map_err(|_| self.decode_err(offset, DecodeError::PacketTooLarge { bytes: len }))?;
        self.buf.clear();
        self.buf.resize(len_usize, 0);
        file.read_exact_at(&mut self.buf, offset)
            .map_err(|source| ReadError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Loads the next packet into `buf`; false at the end of the file.
    fn load_packet(&mut self) -> Result<bool, ReadError> {
        self.packet = None;
        let file = self.open()?;
        let offset = self.next_offset;
        if offset >= self.file_len {
            return Ok(false);
        }
        let remaining = self.file_len - offset;
        self.read_at(&file, offset, remaining.min(PROBE))?;
        let source = Arc::clone(&self.source);
        let md = &source.metadata;

        // Header and context, from the probe.
        let mut roots = Roots::default();
        let mut bits = Bits::new(&self.buf, 0, remaining.min(PROBE) * 8);
        let at = |bits: &Bits<'_>| offset + bits.pos / 8;
        if let Some(class) = &md.packet_header {
            let header = Decoder::new(&roots, self.clock, false)
                .decode(class, &mut bits)
                .map_err(|e| self.decode_err(at(&bits), e))?;
            roots.set(Root::PacketHeader, Some(header));
        }
        let header = roots.get(Root::PacketHeader);
        let field = |name: &str| header.and_then(|h| h.member(name)).and_then(Value::as_u64);
        if let Some(magic) = field("magic") {
            if magic != u64::from(MAGIC) {
                return Err(self.decode_err(offset, DecodeError::BadMagic { found: magic }));
            }
        }
        if let (Some(expected), Some(found)) = (
            md.uuid,
            header.and_then(|h| h.member("uuid")).and_then(uuid_of),
        ) {
            if expected.as_bytes() != &found {
                return Err(self.decode_err(
                    offset,
                    DecodeError::UuidMismatch {
                        found: uuid::Uuid::from_bytes(found),
                        expected,
                    },
                ));
            }
        }
        let stream_id = match field("stream_id") {
            Some(id) => id,
            None if md.streams.len() == 1 => md.streams.keys().next().copied().unwrap_or(0),
            None => return Err(self.decode_err(offset, DecodeError::NoStreamId)),
        };
        let Some(stream) = md.streams.get(&stream_id) else {
            return Err(self.decode_err(offset, DecodeError::UnknownStream { id: stream_id }));
        };
        let instance = field("stream_instance_id");

        let context = match &stream.packet_context {
            Some(class) => {
                let mut d = Decoder::new(&roots, self.clock, false);
                let v = d
                    .decode(class, &mut bits)
                    .map_err(|e| self.decode_err(at(&bits), e))?;
                Some(v)
            }
            None => None,
        };
        let ctx = |name: &str| {
            context
                .as_ref()
                .and_then(|c| c.member(name))
                .and_then(Value::as_u64)
        };
        let remaining_bits = remaining.saturating_mul(8);
        let packet_size = ctx("packet_size").unwrap_or(remaining_bits);
        let content_size = ctx("content_size").unwrap_or(packet_size);
        let preamble_bits = bits.pos;
        let bad = |reason: String| DecodeError::BadPacketSize {
            packet_size,
            content_size,
            reason,
        };
        if packet_size == 0 || packet_size % 8 != 0 {
            return Err(self.decode_err(
                offset,
                bad("packet size is not a positive number of bytes".into()),
            ));
        }
        if packet_size > remaining_bits {
            return Err(self.decode_err(
                offset,
                bad(format!("only {remaining} bytes are left in the file")),
            ));
        }
        if content_size > packet_size {
            return Err(self.decode_err(offset, bad("content is larger than the packet".into())));
        }
        if content_size < preamble_bits {
            return Err(self.decode_err(
                offset,
                bad(format!(
                    "content ends before the {preamble_bits}-bit packet header and context"
                )),
            ));
        }
        let packet_bytes = packet_size / 8;
        if packet_bytes > MAX_PACKET {
            return Err(self.decode_err(
                offset,
                DecodeError::PacketTooLarge {
                    bytes: packet_bytes,
                },
            ));
        }
        let cpu = ctx("cpu_id")
            .or(instance)
            .and_then(|c| u32::try_from(c).ok());
        if let Some(begin) = ctx("timestamp_begin") {
            self.clock = begin;
        }
        self.account(stream, context.as_ref(), stream_id, cpu, offset);
        roots.set(Root::PacketContext, context);

        if packet_bytes > PROBE.min(remaining) {
            self.read_at(&file, offset, packet_bytes)?;
        }
        self.next_offset = offset + packet_bytes;
        self.packet = Some(Packet {
            offset,
            stream_id,
            pos: preamble_bits,
            content_end: content_size,
            cpu,
            roots,
        });
        Ok(true)
    }

    /// Updates the statistics with a packet's sequence number and discarded-event count.
    fn account(
        &mut self,
        stream: &StreamClass,
        context: Option<&Value>,
        stream_id: u64,
        cpu: Option<u32>,
        offset: u64,
    ) {
        let ctx = |name: &str| context.and_then(|c| c.member(name)).and_then(Value::as_u64);
        let s = &mut self.stats;
        s.packets += 1;
        s.stream_id.get_or_insert(stream_id);
        if s.cpu.is_none() {
            s.cpu = cpu;
        }
        if let Some(seq) = ctx("packet_seq_num") {
            if let Some(last) = self.last_seq {
                let expected = last.wrapping_add(1);
                if seq != expected {
                    s.lost_packets.push(PacketGap {
                        expected,
                        found: seq,
                        offset,
                    });
                }
            }
            self.last_seq = Some(seq);
        }
        if let Some(total) = ctx("events_discarded") {
            // A narrower counter (LTTng's is an unsigned long) wraps at its own width.
            let mask = match field_class(stream.packet_context.as_ref(), "events_discarded") {
                Some(FieldClass::Int(i)) if i.size < 64 => (1u64 << i.size) - 1,
                _ => u64::MAX,
            };
            let count = total.wrapping_sub(self.last_discarded.unwrap_or(0)) & mask;
            if count > 0 {
                s.discarded.push(DiscardedEvents {
                    count,
                    packet_seq_num: ctx("packet_seq_num"),
                    offset,
                });
            }
            s.events_discarded = total;
            self.last_discarded = Some(total);
        }
    }

    fn decode_event(&mut self) -> Result<Event, ReadError> {
        let source = Arc::clone(&self.source);
        let md = &source.metadata;
        let Some(packet) = self.packet.as_mut() else {
            return Err(self.decode_err(self.next_offset, DecodeError::Internal));
        };
        let Some(stream) = md.streams.get(&packet.stream_id) else {
            let (offset, id) = (packet.offset, packet.stream_id);
            return Err(self.decode_err(offset, DecodeError::UnknownStream { id }));
        };
        let start = packet.pos;
        let mut bits = Bits::new(&self.buf, start, packet.content_end);
        let mut clock = self.clock;
        let result = decode_record(stream, &mut packet.roots, &mut bits, &mut clock);
        let offset = packet.offset + bits.pos / 8;
        let (id, cycles, context, fields) = match result {
            Ok(r) => r,
            Err(e) => return Err(self.decode_err(offset, e)),
        };
        if bits.pos == start {
            return Err(self.decode_err(offset, DecodeError::EmptyRecord));
        }
        packet.pos = bits.pos;
        let cpu = packet.cpu;
        let stream_id = packet.stream_id;
        self.clock = clock;
        self.stats.events += 1;
        let class = stream.events.get(&id).ok_or(DecodeError::Internal);
        let class = class.map_err(|e| self.decode_err(offset, e))?;
        Ok(Event {
            timestamp_ns: source.ns_from_origin(stream_id, cycles),
            clock_cycles: cycles,
            name: class.name.clone(),
            loglevel: class.loglevel.and_then(loglevel_from_tsdl),
            stream_id,
            channel: self.channel.clone(),
            cpu,
            trace: Arc::clone(&self.source),
            context,
            fields,
        })
    }
}

type Record = (u64, u64, Vec<(String, Value)>, Vec<(String, Value)>);

/// Decodes one record: header, contexts and payload. Returns the event id, the clock
/// value after the header, the context fields and the payload fields.
fn decode_record(
    stream: &StreamClass,
    roots: &mut Roots,
    bits: &mut Bits<'_>,
    clock: &mut u64,
) -> Result<Record, DecodeError> {
    let scope = |class: Option<&FieldClass>,
                 roots: &Roots,
                 clock: &mut u64,
                 bits: &mut Bits<'_>,
                 in_fields: bool|
     -> Result<Option<Value>, DecodeError> {
        let Some(class) = class else { return Ok(None) };
        let mut d = Decoder::new(roots, *clock, in_fields);
        let v = d.decode(class, bits)?;
        *clock = d.clock;
        Ok(Some(v))
    };
    let header = scope(stream.event_header.as_ref(), roots, clock, bits, false)?;
    let id = match header.as_ref().and_then(find_event_id) {
        Some(id) => id,
        None if stream.events.len() == 1 => stream.events.keys().next().copied().unwrap_or(0),
        None => {
            return Err(DecodeError::NoEventId {
                stream: stream.id,
                classes: stream.events.len(),
            });
        }
    };
    let cycles = *clock;
    roots.set(Root::EventHeader, header);
    let stream_ctx = scope(stream.event_context.as_ref(), roots, clock, bits, false)?;
    roots.set(Root::StreamEventContext, stream_ctx);
    let class = stream.events.get(&id).ok_or(DecodeError::UnknownEvent {
        stream: stream.id,
        id,
    })?;
    let event_ctx = scope(class.context.as_ref(), roots, clock, bits, false)?;
    roots.set(Root::EventContext, event_ctx);
    let fields = scope(class.fields.as_ref(), roots, clock, bits, true)?;
    let mut context = members(roots.take(Root::StreamEventContext));
    context.extend(members(roots.take(Root::EventContext)));
    roots.set(Root::EventHeader, None);
    Ok((id, cycles, context, members(fields)))
}

fn members(v: Option<Value>) -> Vec<(String, Value)> {
    match v {
        None => Vec::new(),
        Some(Value::Struct(m)) => m,
        Some(other) => vec![(String::new(), other)],
    }
}

fn field_class<'a>(class: Option<&'a FieldClass>, name: &str) -> Option<&'a FieldClass> {
    match class? {
        FieldClass::Struct(s) => s
            .members
            .iter()
            .find(|m| super::decode::display_name(&m.name) == name)
            .map(|m| &m.class),
        _ => None,
    }
}

/// A 16-byte uuid from a decoded `uint8_t uuid[16]`.
fn uuid_of(v: &Value) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    match v {
        Value::Bytes(b) if b.len() == 16 => out.copy_from_slice(b),
        Value::Array(items) if items.len() == 16 => {
            for (o, i) in out.iter_mut().zip(items) {
                *o = u8::try_from(i.as_u64()?).ok()?;
            }
        }
        _ => return None,
    }
    Some(out)
}

/// The channel a stream file belongs to: its name without the `_<cpu>` suffix.
pub(crate) fn channel_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('_') {
        Some((channel, cpu)) if !cpu.is_empty() && cpu.bytes().all(|b| b.is_ascii_digit()) => {
            channel.to_owned()
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert_eq!(channel_name(Path::new("/t/channel0_3")), "channel0");
        assert_eq!(channel_name(Path::new("my_chan_12")), "my_chan");
        assert_eq!(channel_name(Path::new("odd_")), "odd_");
        assert_eq!(channel_name(Path::new("plain")), "plain");
    }

    #[test]
    fn uuid_from_array_or_bytes() {
        let arr = Value::Array((0..16).map(Value::U64).collect());
        let expected: [u8; 16] = std::array::from_fn(|i| u8::try_from(i).unwrap());
        assert_eq!(uuid_of(&arr), Some(expected));
        assert_eq!(uuid_of(&Value::Bytes(expected.to_vec())), Some(expected));
        assert_eq!(uuid_of(&Value::Array(vec![Value::U64(256); 16])), None);
        assert_eq!(uuid_of(&Value::U64(1)), None);
    }
}
