//! Converting ftrace events to CTF 1.8 (`docs/format.md`): the kernel trace's metadata and
//! the packets of its stream files.
//!
//! # Event names and fields
//!
//! - A CTF event is named after the ftrace event **without its subsystem**
//!   (`sched_switch`, `sys_enter_openat`), as LTTng names kernel events. When two enabled
//!   events of one channel share a name (in different subsystems), both are named
//!   `system:event` instead, so no name is ambiguous.
//! - Every field of the `format` file becomes a payload field of the same name, in file
//!   order, with the common fields first: `common_flags`, `common_preempt_count` and
//!   `common_pid` are kept (the pid of the task that hit the event is how a user finds their
//!   application in kernel events). `common_type` is dropped: it is the ftrace id, which the
//!   CTF event id already stands for; the metadata keeps it in a comment per event.
//! - Field names become TSDL identifiers with a leading `_` (as `drtrace_ctf` writes them,
//!   so keywords parse); characters other than letters, digits and `_` become `_`.
//!
//! | ftrace field | CTF field | payload |
//! |---|---|---|
//! | integer of 1, 2, 4, 8 bytes | `integer { size; signed }` (pointers: base 16) | its bytes |
//! | `char name[N]` | `string` | up to the first NUL, then NUL |
//! | `T name[N]` | `integer {..} _name[N]` | its bytes |
//! | `__data_loc char[]`, `__rel_loc char[]` | `string` | the referenced bytes up to NUL, then NUL |
//! | `__data_loc T[]` (other `__data_loc`: `u8`) | `uint32 _name_length; integer {..} _name[_name_length]` | count, then elements |
//! | `char name[]` (size 0) | `string` | rest of the event up to NUL |
//! | `T name[]` (size 0) | sequence, as `__data_loc` | rest of the event |
//! | anything else | `integer { size = 8; } _name[size]` | its raw bytes |
//!
//! A field that points outside its event (a corrupt descriptor, a short event) is written
//! as zeros or an empty string and counted in [`StreamCounters::malformed_events`]: one bad
//! field never loses the event or desynchronizes the stream.
//!
//! # Packets and lost events
//!
//! [`KernelStream`] turns the pages of one CPU buffer into packets of at most
//! [`StreamConfig::max_packet_bytes`] of records. `events_discarded` is a running total of
//! what the kernel reported lost: the counts of pages flagged as following a loss, and
//! (through [`KernelStream::update_stats`]) the buffer's `stats` counters. Page counts and
//! `overrun` count the same overwritten events, so the larger of the two is taken, plus
//! `commit overrun` and `dropped events`. A page that follows a loss starts a new packet, so
//! the loss shows between the packets where it happened; if the stream starts with a loss,
//! an empty packet comes first, because readers cannot count losses before a stream's
//! first packet.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use drtrace_ctf::metadata::{self, MetadataError, StreamInfo, TraceInfo};
use drtrace_ctf::packet::{PacketContext, PacketError, PacketHeader, write_packet};
use drtrace_ctf::reader::Value;
use drtrace_ctf::record::write_header;
use thiserror::Error;
use uuid::Uuid;

use crate::format::{EventFormat, EventName, Field, FieldKind, IntType};
use crate::page::{LostEvents, Page, PageError, PageLayout};
use crate::tracefs::CpuStats;

/// The kernel trace's directory in a session directory, and the path its trace UUID is
/// derived from.
pub const KERNEL_TRACE_DIR: &str = "kernel";

/// The trace UUID of a session's kernel trace: [`metadata::trace_uuid`] of `kernel`.
pub fn kernel_trace_uuid(session: Uuid) -> Uuid {
    metadata::trace_uuid(session, KERNEL_TRACE_DIR)
}

/// The stream file of `channel` on `cpu`: `<channel>_<cpu>`.
pub fn stream_file_name(channel: &str, cpu: u32) -> String {
    format!("{channel}_{cpu}")
}

/// Conversion failed.
#[derive(Debug, Error)]
pub enum ConvertError {
    /// Two formats share an ftrace id.
    #[error("events {first} and {second} share ftrace id {id}")]
    DuplicateId {
        /// The id.
        id: u32,
        /// The first event with it.
        first: EventName,
        /// The second.
        second: EventName,
    },
    /// A format's `common_type` is missing, not an unsigned integer, or placed differently
    /// from the other formats'.
    #[error("event {event}: common_type is missing or not where the other events have it")]
    CommonType {
        /// The event.
        event: EventName,
    },
    /// The metadata could not be generated.
    #[error("cannot generate kernel metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// A packet could not be written.
    #[error("cannot write a packet: {0}")]
    Packet(#[from] PacketError),
    /// A page is malformed; the events before the problem were converted.
    #[error("malformed page: {0}")]
    Page(#[from] PageError),
}

/// Ftrace ids below this are looked up in a table (ids are `unsigned short` in practice).
const SMALL_IDS: u32 = 1 << 16;
/// An empty slot of that table.
const NO_EVENT: u32 = u32::MAX;

/// One field of a converted event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OutField {
    /// The CTF name, without the leading `_`.
    name: String,
    /// For sequences: the name of the length member.
    length_name: Option<String>,
    offset: usize,
    size: usize,
    kind: FieldKind,
}

/// An event of a [`EventCatalog`]: its CTF id and name and how its fields are converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    /// The CTF event id within its stream class.
    pub ctf_id: u32,
    /// The CTF event name (see the module docs).
    pub name: String,
    /// The ftrace format it converts.
    pub format: EventFormat,
    fields: Vec<OutField>,
    /// The payload as copy steps, taken when the data reaches `fixed_end`.
    steps: Vec<Step>,
    /// Where the last fixed-position field (or dynamic field's descriptor) ends.
    fixed_end: usize,
}

/// One step of a precompiled payload encoding. Every CTF field here is byte-aligned, so
/// fixed fields adjacent in the ftrace event are adjacent in the payload: a run of them
/// becomes one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `data[offset..offset + len]` as it is.
    Copy { offset: usize, len: usize },
    /// A `char[N]` string: up to the first NUL of `data[offset..offset + len]`, then NUL.
    CStr { offset: usize, len: usize },
    /// A field placed by the data (`__data_loc`, trailing): the general path.
    Field(usize),
}

/// The steps encoding `fields`, and where their fixed parts end.
fn steps(fields: &[OutField]) -> (Vec<Step>, usize) {
    let mut steps: Vec<Step> = Vec::with_capacity(fields.len());
    let mut fixed_end = 0usize;
    for (i, f) in fields.iter().enumerate() {
        let offset = f.offset;
        let step = match f.kind {
            FieldKind::Int(t) => Step::Copy {
                offset,
                len: t.bytes(),
            },
            FieldKind::Array { elem, len } => Step::Copy {
                offset,
                len: elem.bytes().saturating_mul(len),
            },
            FieldKind::Bytes { len } => Step::Copy { offset, len },
            FieldKind::CharArray { len } => Step::CStr { offset, len },
            FieldKind::DynString { .. }
            | FieldKind::DynArray { .. }
            | FieldKind::TrailingString
            | FieldKind::TrailingArray { .. } => Step::Field(i),
        };
        let len = match step {
            Step::Copy { len, .. } | Step::CStr { len, .. } => len,
            // The descriptor, or nothing for a trailing field.
            Step::Field(_) => f.size,
        };
        // Saturating: an absurd format only makes every event take the general path.
        fixed_end = fixed_end.max(offset.saturating_add(len));
        match (steps.last_mut(), step) {
            (
                Some(Step::Copy { offset, len }),
                Step::Copy {
                    offset: next,
                    len: more,
                },
            ) if offset.saturating_add(*len) == next => {
                *len = len.saturating_add(more);
            }
            _ => steps.push(step),
        }
    }
    (steps, fixed_end)
}

impl KernelEvent {
    /// The CTF field names, in payload order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }
}

/// The events of one channel, with CTF ids assigned in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCatalog {
    events: Vec<KernelEvent>,
    by_ftrace_id: HashMap<u32, usize>,
    /// `by_ftrace_id` as a table indexed by the id, [`NO_EVENT`] where there is none: ftrace
    /// ids are small, and this lookup runs for every event.
    by_small_id: Vec<u32>,
    /// Offset and size of `common_type`, the same in every format.
    common_type: Option<(usize, usize)>,
}

impl EventCatalog {
    /// Builds the catalog of `formats` (usually the enabled events of one instance): CTF
    /// ids 0, 1, 2 ... in order, so put the most frequent events first (ids up to 30 get
    /// 4-byte headers).
    ///
    /// ```
    /// use drtrace_ftrace::ctf::EventCatalog;
    /// use drtrace_ftrace::format::EventFormat;
    /// let text = "name: sched_wakeup\nID: 374\nformat:\n\
    ///     \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
    ///     \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
    ///     \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n";
    /// let catalog = EventCatalog::new(vec![EventFormat::parse("sched", text)?])?;
    /// let event = catalog.by_ftrace_id(374).unwrap();
    /// assert_eq!((event.ctf_id, event.name.as_str()), (0, "sched_wakeup"));
    /// assert_eq!(event.field_names().collect::<Vec<_>>(), ["common_pid", "comm"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(formats: impl IntoIterator<Item = EventFormat>) -> Result<Self, ConvertError> {
        let formats: Vec<EventFormat> = formats.into_iter().collect();
        let mut name_count: HashMap<&str, usize> = HashMap::new();
        for f in &formats {
            *name_count.entry(f.name.as_str()).or_default() += 1;
        }
        let mut by_ftrace_id = HashMap::new();
        let mut events: Vec<KernelEvent> = Vec::with_capacity(formats.len());
        let mut common_type = None;
        for format in &formats {
            let ct = format
                .common_field("common_type")
                .filter(|f| matches!(f.kind, FieldKind::Int(t) if !t.signed && t.size <= 4))
                .map(|f| (f.offset, f.size))
                .ok_or_else(|| ConvertError::CommonType {
                    event: format.full_name(),
                })?;
            if *common_type.get_or_insert(ct) != ct {
                return Err(ConvertError::CommonType {
                    event: format.full_name(),
                });
            }
            if let Some(&i) = by_ftrace_id.get(&format.id) {
                let first: &KernelEvent = &events[i];
                return Err(ConvertError::DuplicateId {
                    id: format.id,
                    first: first.format.full_name(),
                    second: format.full_name(),
                });
            }
            let name = if name_count.get(format.name.as_str()).copied().unwrap_or(0) > 1 {
                format!("{}:{}", format.system, format.name)
            } else {
                format.name.clone()
            };
            let ctf_id = u32::try_from(events.len()).unwrap_or(u32::MAX);
            by_ftrace_id.insert(format.id, events.len());
            let fields = out_fields(format);
            let (steps, fixed_end) = steps(&fields);
            events.push(KernelEvent {
                ctf_id,
                name,
                fields,
                steps,
                fixed_end,
                format: format.clone(),
            });
        }
        let table_len = by_ftrace_id
            .keys()
            .filter(|&&id| id < SMALL_IDS)
            .max()
            .map_or(0, |&id| id as usize + 1);
        let mut by_small_id = vec![NO_EVENT; table_len];
        for (&id, &i) in &by_ftrace_id {
            if let Some(slot) = by_small_id.get_mut(id as usize) {
                *slot = u32::try_from(i).unwrap_or(NO_EVENT);
            }
        }
        Ok(Self {
            events,
            by_ftrace_id,
            by_small_id,
            common_type,
        })
    }

    /// The events, in CTF id order.
    pub fn events(&self) -> &[KernelEvent] {
        &self.events
    }

    /// The event with ftrace id `id`.
    #[inline]
    pub fn by_ftrace_id(&self, id: u32) -> Option<&KernelEvent> {
        if id < SMALL_IDS {
            let i = *self.by_small_id.get(id as usize)?;
            return self.events.get(i as usize);
        }
        self.by_ftrace_id.get(&id).map(|&i| &self.events[i])
    }

    /// The event a raw event's data belongs to, from its `common_type`.
    #[inline]
    pub fn lookup(&self, data: &[u8]) -> Option<&KernelEvent> {
        let (offset, size) = self.common_type?;
        let bytes = data.get(offset..offset.checked_add(size)?)?;
        // Fixed-size reads: a variable-length copy here costs a `memcpy` call per event.
        let id = match *bytes {
            [a, b] => u32::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            [a] => u32::from(a),
            _ => {
                let mut id = [0u8; 4];
                id[..size].copy_from_slice(bytes);
                u32::from_le_bytes(id)
            }
        };
        self.by_ftrace_id(id)
    }

    /// The `event` blocks of the catalog's events in stream class `stream_id`.
    pub fn event_declarations(&self, stream_id: u32) -> String {
        let mut out = String::new();
        for e in &self.events {
            let _ = write!(
                out,
                "/* {}, ftrace id {} */\n\
                 event {{\n\
                 \tname = \"{}\";\n\
                 \tid = {};\n\
                 \tstream_id = {stream_id};\n\
                 \tfields := struct {{\n",
                e.format.full_name().to_string().replace("*/", "*_/"),
                e.format.id,
                e.name.replace('\\', "\\\\").replace('"', "\\\""),
                e.ctf_id
            );
            for f in &e.fields {
                let name = &f.name;
                match f.kind {
                    FieldKind::Int(t) => {
                        let _ = writeln!(out, "\t\t{} _{name};", int_decl(t));
                    }
                    FieldKind::CharArray { .. }
                    | FieldKind::DynString { .. }
                    | FieldKind::TrailingString => {
                        let _ = writeln!(out, "\t\tstring _{name};");
                    }
                    FieldKind::Array { elem, len } => {
                        let _ = writeln!(out, "\t\t{} _{name}[{len}];", int_decl(elem));
                    }
                    FieldKind::DynArray { elem, .. } | FieldKind::TrailingArray { elem } => {
                        let length = f.length_name.as_deref().unwrap_or_default();
                        let _ = writeln!(out, "\t\t{} _{length};", int_decl(LENGTH));
                        let _ = writeln!(out, "\t\t{} _{name}[_{length}];", int_decl(elem));
                    }
                    FieldKind::Bytes { len } => {
                        let _ = writeln!(out, "\t\t{} _{name}[{len}];", int_decl(BYTE));
                    }
                }
            }
            out.push_str("\t};\n};\n\n");
        }
        out
    }

    /// Appends the CTF payload of a raw event `data` of event `event` to `out`. Returns
    /// false when a field lay outside the data (it was written as zeros or empty).
    pub fn encode_payload(&self, event: &KernelEvent, data: &[u8], out: &mut Vec<u8>) -> bool {
        if data.len() < event.fixed_end {
            return event
                .fields
                .iter()
                .fold(true, |complete, f| encode_field(f, data, out) & complete);
        }
        // The payload is at most the data plus a NUL per string and a length per sequence;
        // `push_bytes` appends up to 16 bytes before cutting back.
        out.reserve(data.len() + 4 * event.steps.len() + 16);
        let mut complete = true;
        for step in &event.steps {
            match *step {
                // In bounds: offset + len <= fixed_end <= data.len().
                Step::Copy { offset, len } => push_bytes(&data[offset..offset + len], out),
                Step::CStr { offset, len } => push_cstr(&data[offset..offset + len], out),
                Step::Field(i) => complete &= encode_field(&event.fields[i], data, out),
            }
        }
        complete
    }

    /// Decodes a raw event's fields directly, as a CTF reader would show the converted
    /// event: for tests and inspection. `None` when the event is not in the catalog.
    pub fn decode(&self, data: &[u8]) -> Option<(&KernelEvent, Vec<(String, Value)>)> {
        let event = self.lookup(data)?;
        let mut fields = Vec::with_capacity(event.fields.len());
        for f in &event.fields {
            let value = match f.kind {
                FieldKind::Int(t) => int_value(slice(data, f.offset, t.bytes()).0, t),
                FieldKind::Array { elem, len } => {
                    let n = elem.bytes() * len;
                    elements_value(&padded(slice(data, f.offset, n).0, n), elem)
                }
                FieldKind::Bytes { len } => Value::Bytes(padded(slice(data, f.offset, len).0, len)),
                FieldKind::CharArray { len } => str_value(slice(data, f.offset, len).0),
                FieldKind::DynString { relative } => str_value(dynamic(data, f, relative).0),
                FieldKind::TrailingString => {
                    str_value(slice(data, f.offset, data.len().saturating_sub(f.offset)).0)
                }
                FieldKind::DynArray { elem, relative } => {
                    elements_value(dynamic(data, f, relative).0, elem)
                }
                FieldKind::TrailingArray { elem } => elements_value(
                    slice(data, f.offset, data.len().saturating_sub(f.offset)).0,
                    elem,
                ),
            };
            // Sequence lengths are not shown: the CTF reader hides them too.
            fields.push((f.name.clone(), value));
        }
        Some((event, fields))
    }
}

const BYTE: IntType = IntType {
    size: 1,
    signed: false,
    hex: false,
};
const LENGTH: IntType = IntType {
    size: 4,
    signed: false,
    hex: false,
};

fn int_decl(t: IntType) -> String {
    format!(
        "integer {{ size = {}; align = 8; signed = {}; base = {}; }}",
        u32::from(t.size) * 8,
        t.signed,
        if t.hex { 16 } else { 10 }
    )
}

/// The converted fields of a format: common fields but `common_type`, then the event's,
/// with unique identifier names.
fn out_fields(format: &EventFormat) -> Vec<OutField> {
    let sources: Vec<&Field> = format
        .common_fields
        .iter()
        .filter(|f| f.name != "common_type")
        .chain(format.fields.iter())
        .collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut names = Vec::with_capacity(sources.len());
    for f in &sources {
        names.push(unique(&mut used, &identifier(&f.name)));
    }
    sources
        .iter()
        .zip(names)
        .map(|(f, name)| {
            let length_name = matches!(
                f.kind,
                FieldKind::DynArray { .. } | FieldKind::TrailingArray { .. }
            )
            .then(|| unique(&mut used, &format!("{name}_length")));
            OutField {
                name,
                length_name,
                offset: f.offset,
                size: f.size,
                kind: f.kind,
            }
        })
        .collect()
}

fn identifier(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    s
}

fn unique(used: &mut HashSet<String>, base: &str) -> String {
    let name = std::iter::once(base.to_owned())
        .chain((1u32..).map(|n| format!("{base}{n}")))
        .find(|c| !used.contains(c))
        .unwrap_or_else(|| base.to_owned());
    used.insert(name.clone());
    name
}

/// Appends field `f` of raw event `data` to `out`, zero-filled or empty where it lies
/// outside the data (then returns false).
fn encode_field(f: &OutField, data: &[u8], out: &mut Vec<u8>) -> bool {
    match f.kind {
        FieldKind::Int(t) => copy_or_zero(data, f.offset, t.bytes(), out),
        FieldKind::Array { elem, len } => copy_or_zero(data, f.offset, elem.bytes() * len, out),
        FieldKind::Bytes { len } => copy_or_zero(data, f.offset, len, out),
        FieldKind::CharArray { len } => {
            let (bytes, ok) = slice(data, f.offset, len);
            push_cstr(bytes, out);
            ok
        }
        FieldKind::DynString { relative } => {
            let (bytes, ok) = dynamic(data, f, relative);
            push_cstr(bytes, out);
            ok
        }
        FieldKind::TrailingString => {
            let (bytes, ok) = slice(data, f.offset, data.len().saturating_sub(f.offset));
            push_cstr(bytes, out);
            ok
        }
        FieldKind::DynArray { elem, relative } => {
            let (bytes, ok) = dynamic(data, f, relative);
            push_elements(bytes, elem, out);
            ok
        }
        FieldKind::TrailingArray { elem } => {
            let (bytes, ok) = slice(data, f.offset, data.len().saturating_sub(f.offset));
            push_elements(bytes, elem, out);
            ok
        }
    }
}

/// The bytes of `data[offset..offset + len]` that exist, and whether all of them did.
fn slice(data: &[u8], offset: usize, len: usize) -> (&[u8], bool) {
    let start = offset.min(data.len());
    let end = offset.saturating_add(len).min(data.len());
    (&data[start..end], end - start == len)
}

/// Copies `len` bytes at `offset`, zero-filling what is missing.
fn copy_or_zero(data: &[u8], offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
    let (bytes, ok) = slice(data, offset, len);
    out.extend_from_slice(bytes);
    out.resize(out.len() + (len - bytes.len()), 0);
    ok
}

/// The bytes a `__data_loc`/`__rel_loc` descriptor points to, clamped to the event.
fn dynamic<'a>(data: &'a [u8], f: &OutField, relative: bool) -> (&'a [u8], bool) {
    let (desc, ok) = slice(data, f.offset, 4);
    if !ok {
        return (&[], false);
    }
    let loc = u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]);
    let base = if relative { f.offset + f.size } else { 0 };
    let start = base + (loc & 0xffff) as usize;
    slice(data, start, (loc >> 16) as usize)
}

/// `out.extend_from_slice(bytes)` without a `memcpy` call for the few bytes most runs
/// have: a fixed-size zeroed append, two overlapping fixed-size copies straight into it,
/// and a cut back to length. (Assembling them in a local first and appending that costs a
/// store-forwarding stall.) Reserve 16 bytes more than needed to keep this in place.
#[inline]
fn push_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    let n = bytes.len();
    let at = out.len();
    match n {
        8..=16 => {
            out.extend_from_slice(&[0; 16]);
            out[at..at + 8].copy_from_slice(&bytes[..8]);
            out[at + n - 8..at + n].copy_from_slice(&bytes[n - 8..]);
        }
        4..=7 => {
            out.extend_from_slice(&[0; 8]);
            out[at..at + 4].copy_from_slice(&bytes[..4]);
            out[at + n - 4..at + n].copy_from_slice(&bytes[n - 4..]);
        }
        _ => return out.extend_from_slice(bytes),
    }
    out.truncate(at + n);
}

fn push_cstr(bytes: &[u8], out: &mut Vec<u8>) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.extend_from_slice(&bytes[..end]);
    out.push(0);
}

fn push_elements(bytes: &[u8], elem: IntType, out: &mut Vec<u8>) {
    let count = bytes.len() / elem.bytes();
    let count32 = u32::try_from(count).unwrap_or(u32::MAX);
    out.extend_from_slice(&count32.to_le_bytes());
    out.extend_from_slice(&bytes[..count32 as usize * elem.bytes()]);
}

fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(len, 0);
    v
}

fn int_value(bytes: &[u8], t: IntType) -> Value {
    let mut raw = [0u8; 8];
    raw[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    let v = u64::from_le_bytes(raw);
    if t.signed {
        let shift = 64 - 8 * u32::from(t.size);
        Value::I64(((v << shift) as i64) >> shift)
    } else {
        Value::U64(v)
    }
}

fn str_value(bytes: &[u8]) -> Value {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Value::Str(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Elements as the CTF reader shows them: unsigned bytes as [`Value::Bytes`], anything
/// else as an array (a partial trailing element is dropped, as the encoder does).
fn elements_value(bytes: &[u8], elem: IntType) -> Value {
    if elem.size == 1 && !elem.signed {
        return Value::Bytes(bytes.to_vec());
    }
    Value::Array(
        bytes
            .chunks_exact(elem.bytes())
            .map(|c| int_value(c, elem))
            .collect(),
    )
}

/// One channel of the kernel trace: its stream class and its events.
#[derive(Debug, Clone, Copy)]
pub struct KernelChannel<'a> {
    /// The stream class (id and channel name).
    pub stream: &'a StreamInfo,
    /// Its events.
    pub catalog: &'a EventCatalog,
}

/// The complete metadata of a kernel trace: [`metadata::preamble`] with every channel's
/// stream, then every channel's event declarations. The `env.domain` is `kernel` whatever
/// `trace.domain` says.
pub fn kernel_metadata(
    trace: &TraceInfo,
    channels: &[KernelChannel<'_>],
) -> Result<String, ConvertError> {
    let trace = TraceInfo {
        domain: metadata::Domain::Kernel,
        ..trace.clone()
    };
    let streams: Vec<StreamInfo> = channels.iter().map(|c| c.stream.clone()).collect();
    let mut text = metadata::preamble(&trace, &streams)?;
    for c in channels {
        text.push_str(&c.catalog.event_declarations(c.stream.id));
    }
    Ok(text)
}

/// How a [`KernelStream`] groups records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// A packet is closed once its records reach this many bytes.
    pub max_packet_bytes: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_packet_bytes: 256 << 10,
        }
    }
}

/// What a [`KernelStream`] has seen and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamCounters {
    /// Pages fed.
    pub pages: u64,
    /// Pages that failed to parse, wholly or partly.
    pub malformed_pages: u64,
    /// Events written as CTF records.
    pub events: u64,
    /// Events whose `common_type` is not in the catalog (not written).
    pub unknown_events: u64,
    /// Events written with a field that lay outside their data.
    pub malformed_events: u64,
    /// Events written with a timestamp raised to the previous one's (never expected from
    /// one CPU's buffer; counted so it would show).
    pub clamped_timestamps: u64,
    /// Packets written.
    pub packets: u64,
    /// Events lost according to page flags.
    pub page_lost: u64,
    /// The `events_discarded` of the last packet written.
    pub discarded: u64,
}

/// What one page held; see [`KernelStream::push_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageReport {
    /// The page's base timestamp.
    pub timestamp: u64,
    /// Events written from it.
    pub events: u64,
    /// Losses the page reported.
    pub lost: LostEvents,
}

/// Converts the pages of one CPU buffer of one channel into the CTF packets of its stream
/// file (`kernel/<channel>_<cpu>`).
///
/// ```
/// use std::sync::Arc;
/// use drtrace_ctf::packet::PacketHeader;
/// use drtrace_ftrace::ctf::{EventCatalog, KernelStream, StreamConfig};
/// use drtrace_ftrace::format::EventFormat;
/// use drtrace_ftrace::page::{LostEvents, PageBuilder, PageLayout};
///
/// let text = "name: tick\nID: 7\nformat:\n\
///     \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
///     \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n";
/// let catalog = Arc::new(EventCatalog::new(vec![EventFormat::parse("demo", text)?])?);
/// let header = PacketHeader { uuid: uuid::Uuid::nil(), stream_id: 0, stream_instance_id: 1 };
/// let mut stream = KernelStream::new(catalog, PageLayout::DEFAULT_64, header, 1,
///     StreamConfig::default());
///
/// let mut event = vec![7, 0, 0, 0];
/// event.extend_from_slice(&42i32.to_le_bytes());
/// let page = PageBuilder::new(PageLayout::DEFAULT_64, 1_000)
///     .event(5, &event, false)
///     .finish(LostEvents::None, false);
/// let mut file = Vec::new();
/// stream.push_page(&page, &mut file)?;
/// let counters = stream.finish(&mut file)?;
/// assert_eq!((counters.events, counters.packets), (1, 1));
/// assert_eq!(file.len(), 84 + 4 + 4); // packet header and context, record header, pid
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct KernelStream {
    catalog: Arc<EventCatalog>,
    layout: PageLayout,
    header: PacketHeader,
    cpu: u32,
    config: StreamConfig,
    records: Vec<u8>,
    /// `timestamp_begin` of the open packet, once it has a record.
    packet_begin: Option<u64>,
    /// Timestamp of the last record written in the open packet (or its begin).
    previous: u64,
    /// Timestamp of the last record written in the stream.
    last_ts: u64,
    /// `timestamp_end` of the last packet.
    last_end: u64,
    seq: u64,
    stats: Option<CpuStats>,
    counters: StreamCounters,
}

impl KernelStream {
    /// A stream for CPU `cpu`; `header` is every packet's header (trace UUID, the
    /// channel's stream id, the CPU as instance id).
    pub fn new(
        catalog: Arc<EventCatalog>,
        layout: PageLayout,
        header: PacketHeader,
        cpu: u32,
        config: StreamConfig,
    ) -> Self {
        Self {
            catalog,
            layout,
            header,
            cpu,
            config,
            records: Vec::with_capacity(config.max_packet_bytes.min(1 << 20) + 4096),
            packet_begin: None,
            previous: 0,
            last_ts: 0,
            last_end: 0,
            seq: 0,
            stats: None,
            counters: StreamCounters::default(),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> StreamCounters {
        self.counters
    }

    /// Records the buffer's latest `stats`, whose loss counters feed `events_discarded`.
    pub fn update_stats(&mut self, stats: CpuStats) {
        self.stats = Some(stats);
    }

    /// The running total of lost events (see the module docs); never decreases.
    pub fn discarded(&self) -> u64 {
        let kernel = match self.stats {
            Some(s) => self
                .counters
                .page_lost
                .max(s.overrun)
                .saturating_add(s.commit_overrun)
                .saturating_add(s.dropped_events),
            None => self.counters.page_lost,
        };
        kernel.max(self.counters.discarded)
    }

    /// Converts one page (as read from `trace_pipe_raw`; only its used bytes are needed)
    /// and appends any packet it completes to `out`.
    ///
    /// A malformed page returns [`ConvertError::Page`] after the events before the problem
    /// were converted; the stream stays usable.
    pub fn push_page(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<PageReport, ConvertError> {
        self.counters.pages += 1;
        let page = Page::parse(&self.layout, bytes).inspect_err(|_| {
            self.counters.malformed_pages += 1;
        })?;
        if page.lost != LostEvents::None {
            // The loss happened before this page: close the packet of what came before,
            // so the discarded count grows between the two. When nothing came before,
            // write an empty packet: a reader treats a first packet's count as losses of
            // unknown number (babeltrace2 says "may have discarded"), a later one's as an
            // exact number between two packets.
            if !self.records.is_empty() {
                self.emit(out)?;
            } else if self.seq == 0 {
                self.packet_begin = Some(page.timestamp.max(self.last_end));
                self.emit(out)?;
            }
            self.counters.page_lost = self.counters.page_lost.saturating_add(page.lost.at_least());
        }
        let mut report = PageReport {
            timestamp: page.timestamp,
            events: 0,
            lost: page.lost,
        };
        let mut error = None;
        for event in page.events() {
            match event {
                Ok(e) => {
                    if self.write_event(page.timestamp, e.timestamp, e.data) {
                        report.events += 1;
                    }
                }
                Err(e) => {
                    self.counters.malformed_pages += 1;
                    error = Some(e);
                }
            }
        }
        if self.records.len() >= self.config.max_packet_bytes {
            self.emit(out)?;
        }
        match error {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }

    fn write_event(&mut self, page_ts: u64, ts: u64, data: &[u8]) -> bool {
        // Field borrows, not `&mut self` methods: the catalog is read while the records
        // grow, without an Arc clone per event.
        let Some(event) = self.catalog.lookup(data) else {
            self.counters.unknown_events += 1;
            return false;
        };
        let ts = if ts < self.last_ts {
            self.counters.clamped_timestamps += 1;
            self.last_ts
        } else {
            ts
        };
        if self.packet_begin.is_none() {
            let begin = page_ts.min(ts).max(self.last_end);
            self.packet_begin = Some(begin);
            self.previous = begin;
        }
        write_header(&mut self.records, event.ctf_id, ts, self.previous);
        if !self.catalog.encode_payload(event, data, &mut self.records) {
            self.counters.malformed_events += 1;
        }
        self.previous = ts;
        self.last_ts = ts;
        self.counters.events += 1;
        true
    }

    fn emit(&mut self, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        let begin = self.packet_begin.unwrap_or(self.last_end.max(self.last_ts));
        let end = self.last_ts.max(begin);
        let discarded = self.discarded();
        let context = PacketContext {
            timestamp_begin: begin,
            timestamp_end: end,
            packet_seq_num: self.seq,
            events_discarded: discarded,
            cpu_id: self.cpu,
            ..PacketContext::default()
        };
        write_packet(out, &self.header, &context, &self.records)?;
        self.seq += 1;
        self.records.clear();
        self.packet_begin = None;
        self.last_end = end;
        self.counters.packets += 1;
        self.counters.discarded = discarded;
        Ok(())
    }

    /// Closes the open packet, if it has records, appending it to `out` (so a reader sees
    /// recent events without waiting for a full packet).
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        if !self.records.is_empty() {
            self.emit(out)?;
        }
        Ok(())
    }

    /// Writes the final packet, with the final discarded count: the open packet, or an
    /// empty one when the count changed since the last packet or no packet was written
    /// (so every stream file holds at least one packet). Returns the final counters.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<StreamCounters, ConvertError> {
        if !self.records.is_empty() || self.seq == 0 || self.discarded() != self.counters.discarded
        {
            self.emit(out)?;
        }
        Ok(self.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::PageBuilder;

    const L: PageLayout = PageLayout::DEFAULT_64;

    fn format(system: &str, name: &str, id: u32, fields: &str) -> EventFormat {
        let text = crate::tracefs::fake::format_text(name, id, fields);
        EventFormat::parse(system, &text).unwrap()
    }

    fn exec_format() -> EventFormat {
        format(
            "sched",
            "sched_process_exec",
            365,
            "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
",
        )
    }

    fn exec_event(filename: &[u8], pid: i32) -> Vec<u8> {
        let mut d = vec![0u8; 16];
        d[0..2].copy_from_slice(&365u16.to_le_bytes());
        d[4..8].copy_from_slice(&pid.to_le_bytes());
        let len = u32::try_from(filename.len()).unwrap();
        d[8..12].copy_from_slice(&(16 | len << 16).to_le_bytes());
        d[12..16].copy_from_slice(&pid.to_le_bytes());
        d.extend_from_slice(filename);
        d
    }

    fn header() -> PacketHeader {
        PacketHeader {
            uuid: Uuid::from_u128(1),
            stream_id: 0,
            stream_instance_id: 0,
        }
    }

    #[test]
    fn names_and_collisions() {
        let a = format("sched", "dup", 1, "");
        let b = format("other", "dup", 2, "");
        let c = format(
            "x",
            "solo",
            3,
            "\tfield:int value;\toffset:8;\tsize:4;\tsigned:1;\n",
        );
        let cat = EventCatalog::new(vec![a, b, c]).unwrap();
        let names: Vec<_> = cat.events().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["sched:dup", "other:dup", "solo"]);
        assert_eq!(cat.by_ftrace_id(3).unwrap().ctf_id, 2);
        let fields: Vec<_> = cat.by_ftrace_id(3).unwrap().field_names().collect();
        assert_eq!(
            fields,
            [
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "value"
            ]
        );
        assert_eq!(identifier("a-b.c"), "a_b_c");
        assert_eq!(identifier(""), "_");
        let err =
            EventCatalog::new(vec![format("a", "x", 1, ""), format("b", "y", 1, "")]).unwrap_err();
        assert_eq!(err.to_string(), "events a:x and b:y share ftrace id 1");
    }

    #[test]
    fn declarations_cover_every_kind() {
        let f = format(
            "t",
            "kinds",
            9,
            "\tfield:const char * p;\toffset:8;\tsize:8;\tsigned:0;
\tfield:char c[4];\toffset:16;\tsize:4;\tsigned:0;
\tfield:u16 a[2];\toffset:20;\tsize:4;\tsigned:0;
\tfield:__data_loc u32[] d;\toffset:24;\tsize:4;\tsigned:0;
\tfield:int d_length;\toffset:28;\tsize:4;\tsigned:1;
\tfield:struct x raw;\toffset:32;\tsize:3;\tsigned:0;
",
        );
        let cat = EventCatalog::new(vec![f]).unwrap();
        let text = cat.event_declarations(4);
        for needle in [
            "/* t:kinds, ftrace id 9 */",
            "\tname = \"kinds\";\n\tid = 0;\n\tstream_id = 4;",
            "integer { size = 8; align = 8; signed = false; base = 10; } _common_flags;",
            "integer { size = 32; align = 8; signed = true; base = 10; } _common_pid;",
            "integer { size = 64; align = 8; signed = false; base = 16; } _p;",
            "string _c;",
            "integer { size = 16; align = 8; signed = false; base = 10; } _a[2];",
            "integer { size = 32; align = 8; signed = false; base = 10; } _d_length1;",
            "_d[_d_length1];",
            "integer { size = 32; align = 8; signed = true; base = 10; } _d_length;",
            "integer { size = 8; align = 8; signed = false; base = 10; } _raw[3];",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("common_type;"));
        // The whole thing parses with the workspace's TSDL parser.
        let info = drtrace_ctf::metadata::TraceInfo {
            uuid: Uuid::nil(),
            domain: metadata::Domain::Kernel,
            tracer_major: 0,
            tracer_minor: 1,
            tracer_patchlevel: 0,
            hostname: "h".into(),
            trace_name: "t".into(),
            creation_datetime: "20250102T030405+0000".into(),
            extra_env: vec![],
            clock: metadata::ClockInfo::monotonic_ns(Uuid::nil(), 0),
        };
        let stream = StreamInfo {
            id: 4,
            channel: "channel0".into(),
        };
        let md = kernel_metadata(
            &info,
            &[KernelChannel {
                stream: &stream,
                catalog: &cat,
            }],
        )
        .unwrap();
        drtrace_ctf::tsdl::parse(&md).unwrap();
    }

    #[test]
    fn odd_event_names_stay_inside_their_quotes_and_comments() {
        let cat = EventCatalog::new(vec![format("s*/x", "q\"u\\ote", 5, "")]).unwrap();
        let text = cat.event_declarations(0);
        assert!(text.contains("name = \"q\\\"u\\\\ote\";"), "{text}");
        assert!(text.starts_with("/* s*_/x:q"), "{text}");
        let parsed = drtrace_ctf::tsdl::parse(&format!(
            "/* CTF 1.8 */ trace {{ major = 1; minor = 8; byte_order = le; }};\n{text}"
        ))
        .unwrap();
        let events: Vec<&str> = parsed
            .streams
            .values()
            .flat_map(|st| st.events.values().map(|e| e.name.as_str()))
            .collect();
        assert_eq!(events, ["q\"u\\ote"]);
    }

    #[test]
    fn payload_encoding_and_direct_decoding() {
        let cat = EventCatalog::new(vec![exec_format()]).unwrap();
        let data = exec_event(b"/bin/true\0", 42);
        let event = cat.lookup(&data).unwrap();
        let mut out = Vec::new();
        assert!(cat.encode_payload(event, &data, &mut out));
        let mut expected = vec![0u8, 0];
        expected.extend_from_slice(&42i32.to_le_bytes());
        expected.extend_from_slice(b"/bin/true\0");
        expected.extend_from_slice(&42i32.to_le_bytes());
        assert_eq!(out, expected);
        let (_, fields) = cat.decode(&data).unwrap();
        assert_eq!(
            fields[3],
            ("filename".into(), Value::Str("/bin/true".into()))
        );
        assert_eq!(fields[2], ("common_pid".into(), Value::I64(42)));
    }

    fn switch_format() -> EventFormat {
        format(
            "sched",
            "sched_switch",
            316,
            "\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;
",
        )
    }

    #[test]
    fn adjacent_fixed_fields_are_copied_as_one_run() {
        let cat = EventCatalog::new(vec![switch_format(), exec_format()]).unwrap();
        let switch = cat.by_ftrace_id(316).unwrap();
        assert_eq!(
            switch.steps,
            [
                Step::Copy { offset: 2, len: 6 },
                Step::CStr { offset: 8, len: 16 },
                Step::Copy {
                    offset: 24,
                    len: 16
                },
                Step::CStr {
                    offset: 40,
                    len: 16
                },
                Step::Copy { offset: 56, len: 8 },
            ]
        );
        assert_eq!(switch.fixed_end, 64);
        let exec = cat.by_ftrace_id(365).unwrap();
        assert_eq!(
            exec.fixed_end, 16,
            "the __data_loc descriptor counts as fixed"
        );
    }

    proptest::proptest! {
        /// The precompiled steps write exactly what the field-by-field path writes, for
        /// data of any length (short data takes the field-by-field path itself).
        #[test]
        fn steps_encode_as_fields_do(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
            which in 0usize..2,
        ) {
            let cat = EventCatalog::new(vec![switch_format(), exec_format()]).unwrap();
            let event = &cat.events()[which];
            let mut fast = vec![7u8];
            let fast_complete = cat.encode_payload(event, &data, &mut fast);
            let mut slow = vec![7u8];
            let slow_complete = event
                .fields
                .iter()
                .fold(true, |ok, f| encode_field(f, &data, &mut slow) & ok);
            proptest::prop_assert_eq!(fast, slow);
            proptest::prop_assert_eq!(fast_complete, slow_complete);
        }
    }

    #[test]
    fn bad_descriptors_write_defaults() {
        let cat = EventCatalog::new(vec![exec_format()]).unwrap();
        let mut data = exec_event(b"abc\0", 1);
        // Point the filename past the end of the event.
        data[8..12].copy_from_slice(&(200u32 | 4 << 16).to_le_bytes());
        let mut out = Vec::new();
        assert!(!cat.encode_payload(cat.lookup(&data).unwrap(), &data, &mut out));
        assert_eq!(&out[6..7], b"\0");
        // A truncated event: the pid is zero-filled, the layout stays whole.
        let short = &exec_event(b"abc\0", 1)[..14];
        out.clear();
        assert!(!cat.encode_payload(cat.lookup(short).unwrap(), short, &mut out));
        assert_eq!(out.len(), 1 + 1 + 4 + 1 + 4);
        assert!(cat.lookup(&[1]).is_none());
    }

    #[test]
    fn lost_pages_split_packets_and_count() {
        let cat = Arc::new(EventCatalog::new(vec![exec_format()]).unwrap());
        let mut s = KernelStream::new(cat, L, header(), 0, StreamConfig::default());
        let mut out = Vec::new();
        let mut b = PageBuilder::new(L, 1_000);
        b.event(1, &exec_event(b"a\0", 1), false);
        s.push_page(&b.finish(LostEvents::None, false), &mut out)
            .unwrap();
        assert!(out.is_empty(), "the packet stays open");
        let mut b = PageBuilder::new(L, 2_000);
        b.event(1, &exec_event(b"b\0", 2), false);
        let report = s
            .push_page(&b.finish(LostEvents::Count(5), false), &mut out)
            .unwrap();
        assert_eq!(report.lost, LostEvents::Count(5));
        assert_eq!(s.counters().packets, 1);
        let first = drtrace_ctf::packet::PacketContext::decode(&out[32..]).unwrap();
        assert_eq!(
            (
                first.events_discarded,
                first.timestamp_begin,
                first.timestamp_end
            ),
            (0, 1_000, 1_001)
        );
        // Stats saying more were overwritten than the pages told, plus dropped ones.
        s.update_stats(CpuStats {
            overrun: 7,
            dropped_events: 2,
            ..CpuStats::default()
        });
        assert_eq!(s.discarded(), 9);
        let start = out.len();
        let counters = s.finish(&mut out).unwrap();
        assert_eq!(counters.events, 2);
        assert_eq!(counters.packets, 2);
        assert_eq!(counters.page_lost, 5);
        let last = drtrace_ctf::packet::PacketContext::decode(&out[start + 32..]).unwrap();
        assert_eq!((last.packet_seq_num, last.events_discarded), (1, 9));
        // The page's base timestamp, which is before its first event.
        assert_eq!(last.timestamp_begin, 2_000);
    }

    #[test]
    fn a_loss_before_the_first_page_gets_an_empty_packet_first() {
        let cat = Arc::new(EventCatalog::new(vec![exec_format()]).unwrap());
        let mut s = KernelStream::new(cat, L, header(), 0, StreamConfig::default());
        let mut out = Vec::new();
        let mut b = PageBuilder::new(L, 5_000);
        b.event(1, &exec_event(b"a\0", 1), false);
        s.push_page(&b.finish(LostEvents::Count(9), false), &mut out)
            .unwrap();
        assert_eq!(out.len(), 84, "an empty packet with nothing discarded yet");
        let first = drtrace_ctf::packet::PacketContext::decode(&out[32..]).unwrap();
        assert_eq!(
            (
                first.timestamp_begin,
                first.timestamp_end,
                first.events_discarded
            ),
            (5_000, 5_000, 0)
        );
        s.finish(&mut out).unwrap();
        let second = drtrace_ctf::packet::PacketContext::decode(&out[84 + 32..]).unwrap();
        assert_eq!((second.packet_seq_num, second.events_discarded), (1, 9));
        assert_eq!(
            (second.timestamp_begin, second.timestamp_end),
            (5_000, 5_001)
        );
    }

    #[test]
    fn empty_stream_still_gets_a_packet() {
        let cat = Arc::new(EventCatalog::new(vec![exec_format()]).unwrap());
        let s = KernelStream::new(cat, L, header(), 3, StreamConfig::default());
        let mut out = Vec::new();
        let c = s.finish(&mut out).unwrap();
        assert_eq!((c.packets, out.len()), (1, 84));
    }

    #[test]
    fn unknown_events_and_bad_pages_are_counted() {
        let cat = Arc::new(EventCatalog::new(vec![exec_format()]).unwrap());
        let mut s = KernelStream::new(
            cat,
            L,
            header(),
            0,
            StreamConfig {
                max_packet_bytes: 1,
            },
        );
        let mut out = Vec::new();
        let mut b = PageBuilder::new(L, 10);
        b.event(1, &[9, 9, 0, 0, 0, 0, 0, 0], false)
            .event(1, &exec_event(b"x\0", 3), false);
        let mut page = b.finish(LostEvents::None, false);
        // Make commit claim 4 more bytes than there are events: a truncated tail.
        let used = u64::from_le_bytes(page[8..16].try_into().unwrap());
        page[8..16].copy_from_slice(&(used + 4).to_le_bytes());
        let err = s.push_page(&page, &mut out).unwrap_err();
        assert!(
            matches!(err, ConvertError::Page(PageError::Truncated { .. })),
            "{err}"
        );
        let c = s.counters();
        assert_eq!((c.unknown_events, c.events, c.malformed_pages), (1, 1, 1));
        assert_eq!(c.packets, 1, "a full packet is still written");
        assert!(matches!(
            s.push_page(&[0; 3], &mut out),
            Err(ConvertError::Page(PageError::ShortHeader { .. }))
        ));
    }
}
