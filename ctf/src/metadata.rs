//! TSDL metadata generation.
//!
//! The session registry writes a metadata file in two steps: [`preamble`] when the trace
//! starts (type aliases, `trace`, `env`, `clock`, the event header and one `stream` block per
//! channel), then one [`event_declaration`] appended each time it assigns an event id. Each
//! function returns text to append; nothing here touches files.
//!
//! Field names are written with a leading `_` (as LTTng does) so that a field named after a
//! TSDL keyword (`align`, `struct`, `event` ...) still parses; babeltrace2 and
//! [`crate::reader`] strip one leading underscore when they show a name. A `bytes` field is
//! a `u32` length member followed by a `u8` sequence; the length member's name is chosen so
//! that it clashes with no field of the event.

use std::collections::HashSet;
use std::fmt::Write as _;

use drtrace_proto::event::{EventDescription, FieldType, LogLevel};
use thiserror::Error;
use uuid::Uuid;

/// The tracer name written in `env.tracer_name`.
pub const TRACER_NAME: &str = "drtrace";
/// The name of the single clock class.
pub const CLOCK_NAME: &str = "monotonic";

const NS_PER_S: i128 = 1_000_000_000;

/// Metadata cannot be generated from what was given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    /// The event description failed validation.
    #[error("invalid event description: {0}")]
    InvalidEvent(#[from] drtrace_proto::names::NameError),
    /// The clock frequency is zero.
    #[error("clock frequency must not be zero")]
    ZeroFrequency,
    /// An extra `env` key is not an identifier.
    #[error("env key '{0}' is not an identifier")]
    BadEnvKey(String),
    /// An extra `env` key repeats a key drtrace writes itself or another extra key.
    #[error("env key '{0}' is given twice")]
    DuplicateEnvKey(String),
    /// The clock offset is outside what `offset_s` can hold.
    #[error("clock offset of {0} ns is out of range")]
    OffsetOutOfRange(i128),
}

/// Which tracer domain a trace belongs to (`env.domain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    /// Userspace applications.
    Ust,
    /// The kernel, through the broker.
    Kernel,
}

impl Domain {
    /// The `env.domain` string: `ust` or `kernel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Ust => "ust",
            Domain::Kernel => "kernel",
        }
    }
}

/// A value in the `env` block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EnvValue {
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
}

/// How clock cycles map to time, as the caller measured it.
///
/// `mono_ns = offset_ns + cycles * 1e9 / freq` gives CLOCK_MONOTONIC, and adding
/// `mono_to_realtime_ns` (CLOCK_REALTIME minus CLOCK_MONOTONIC, sampled together) gives
/// nanoseconds since the Unix epoch, which is where the metadata puts cycle 0 so that
/// viewers print wall-clock times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClockInfo {
    /// The boot id (`/proc/sys/kernel/random/boot_id`): the clock's uuid, identical in
    /// userspace and kernel metadata.
    pub boot_id: Uuid,
    /// Frequency in Hz: 1e9 for `clock_gettime` nanoseconds, the TSC's otherwise.
    pub freq: u64,
    /// CLOCK_MONOTONIC nanoseconds at cycle 0.
    pub offset_ns: i64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    pub mono_to_realtime_ns: i64,
    /// Uncertainty of a clock value, in cycles.
    pub precision: u64,
}

impl ClockInfo {
    /// A nanosecond clock (`freq` 1e9) whose cycles are CLOCK_MONOTONIC nanoseconds.
    pub fn monotonic_ns(boot_id: Uuid, mono_to_realtime_ns: i64) -> Self {
        Self {
            boot_id,
            freq: 1_000_000_000,
            offset_ns: 0,
            mono_to_realtime_ns,
            precision: 1,
        }
    }

    /// The clock's `(offset_s, offset)`: seconds and cycles from the Unix epoch to cycle
    /// 0, with `0 <= offset < freq`.
    ///
    /// The cycle part is rounded up, so that a viewer converting it back with a floor
    /// division lands on the exact nanosecond whenever `freq >= 1e9`.
    pub fn epoch_offset(&self) -> Result<(i64, u64), MetadataError> {
        if self.freq == 0 {
            return Err(MetadataError::ZeroFrequency);
        }
        let total = i128::from(self.offset_ns) + i128::from(self.mono_to_realtime_ns);
        let mut secs = total.div_euclid(NS_PER_S);
        let rem_ns = total.rem_euclid(NS_PER_S);
        let freq = i128::from(self.freq);
        let mut cycles = (rem_ns * freq + NS_PER_S - 1) / NS_PER_S;
        if cycles >= freq {
            cycles -= freq;
            secs += 1;
        }
        let secs = i64::try_from(secs).map_err(|_| MetadataError::OffsetOutOfRange(total))?;
        let cycles = u64::try_from(cycles).map_err(|_| MetadataError::OffsetOutOfRange(total))?;
        Ok((secs, cycles))
    }
}

/// What the trace, env and clock blocks say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceInfo {
    /// This metadata file's trace UUID, also in every packet header: [`trace_uuid`] of the
    /// session's UUID and the metadata directory (each metadata file needs its own).
    pub uuid: Uuid,
    /// `ust` or `kernel`.
    pub domain: Domain,
    /// `env.tracer_major`.
    pub tracer_major: u32,
    /// `env.tracer_minor`.
    pub tracer_minor: u32,
    /// `env.tracer_patchlevel`.
    pub tracer_patchlevel: u32,
    /// `env.hostname`.
    pub hostname: String,
    /// `env.trace_name`: the session's name.
    pub trace_name: String,
    /// `env.trace_creation_datetime`, e.g. `20250102T030405+0000`.
    pub creation_datetime: String,
    /// More `env` entries, e.g. `procname` and `vpid` for per-PID traces.
    pub extra_env: Vec<(String, EnvValue)>,
    /// The clock.
    pub clock: ClockInfo,
}

/// One channel: one `stream` block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamInfo {
    /// The channel's index in the session: `stream.id` and the packet header's `stream_id`.
    pub id: u32,
    /// The channel's name; CTF 1.8 streams have no name, so it is written as a comment
    /// (readers take it from the stream file names, `<channel>_<cpu>`).
    pub channel: String,
}

/// The trace UUID of one metadata file of a session: a version-8 UUID hashed from the
/// session's UUID and `trace_dir`, the metadata file's directory relative to the session
/// directory with `/` separators (`ust/uid/1000/64-bit`, `ust/pid/app-42-20250102-030405`,
/// `kernel`).
///
/// Each metadata file needs its own: babeltrace2 treats traces with equal UUIDs as parts of
/// one trace and decodes all of them with one of their metadata files. The sessiond (which
/// writes `trace.uuid`) and the consumer (which writes it in every packet header) compute it
/// independently from what they both know.
///
/// ```
/// use drtrace_ctf::metadata::trace_uuid;
/// use uuid::Uuid;
///
/// let session = Uuid::from_u128(42);
/// let ust = trace_uuid(session, "ust/uid/1000/64-bit");
/// assert_ne!(ust, trace_uuid(session, "kernel"));
/// assert_eq!(ust, trace_uuid(session, "ust/uid/1000/64-bit"));
/// assert_eq!(ust.get_version_num(), 8);
/// ```
pub fn trace_uuid(session: Uuid, trace_dir: &str) -> Uuid {
    // FNV-1a, 128-bit: stable, dependency-free, and enough to keep a session's few metadata
    // files apart (this is no security boundary).
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = session
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(trace_dir.trim_matches('/').as_bytes())
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid()
}

/// The first part of a metadata file: everything but the event declarations.
///
/// ```
/// use drtrace_ctf::metadata::{preamble, ClockInfo, Domain, StreamInfo, TraceInfo};
/// use uuid::Uuid;
///
/// let info = TraceInfo {
///     uuid: Uuid::nil(),
///     domain: Domain::Ust,
///     tracer_major: 0,
///     tracer_minor: 1,
///     tracer_patchlevel: 0,
///     hostname: "box".into(),
///     trace_name: "demo".into(),
///     creation_datetime: "20250102T030405+0000".into(),
///     extra_env: vec![],
///     clock: ClockInfo::monotonic_ns(Uuid::nil(), 0),
/// };
/// let text = preamble(&info, &[StreamInfo { id: 0, channel: "channel0".into() }]).unwrap();
/// assert!(text.starts_with("/* CTF 1.8 */"));
/// assert!(text.contains("tracer_name = \"drtrace\";"));
/// ```
pub fn preamble(trace: &TraceInfo, streams: &[StreamInfo]) -> Result<String, MetadataError> {
    let mut env: Vec<(&str, EnvValue)> = vec![
        ("hostname", EnvValue::Str(trace.hostname.clone())),
        ("domain", EnvValue::Str(trace.domain.as_str().into())),
        ("tracer_name", EnvValue::Str(TRACER_NAME.into())),
        ("tracer_major", EnvValue::Int(trace.tracer_major.into())),
        ("tracer_minor", EnvValue::Int(trace.tracer_minor.into())),
        (
            "tracer_patchlevel",
            EnvValue::Int(trace.tracer_patchlevel.into()),
        ),
        ("trace_name", EnvValue::Str(trace.trace_name.clone())),
        (
            "trace_creation_datetime",
            EnvValue::Str(trace.creation_datetime.clone()),
        ),
    ];
    for (key, value) in &trace.extra_env {
        if !is_identifier(key) {
            return Err(MetadataError::BadEnvKey(key.clone()));
        }
        if env.iter().any(|(k, _)| k == key) {
            return Err(MetadataError::DuplicateEnvKey(key.clone()));
        }
        env.push((key, value.clone()));
    }
    let (offset_s, offset) = trace.clock.epoch_offset()?;

    let mut out = String::with_capacity(4096);
    out.push_str("/* CTF 1.8 */\n\n");
    for (bits, signed) in [8u32, 16, 32, 64]
        .into_iter()
        .flat_map(|b| [(b, false), (b, true)])
    {
        let _ = writeln!(
            out,
            "typealias integer {{ size = {bits}; align = 8; signed = {signed}; }} := {}int{bits}_t;",
            if signed { "" } else { "u" }
        );
    }
    out.push_str("typealias integer { size = 5; align = 1; signed = false; } := uint5_t;\n");
    out.push_str(
        "typealias floating_point { exp_dig = 8; mant_dig = 24; align = 8; } := float32_t;\n",
    );
    out.push_str(
        "typealias floating_point { exp_dig = 11; mant_dig = 53; align = 8; } := float64_t;\n",
    );
    out.push_str("typealias enum : uint8_t { \"false\" = 0, \"true\" = 1 } := bool8_t;\n\n");

    let _ = write!(
        out,
        "trace {{\n\
         \tmajor = 1;\n\
         \tminor = 8;\n\
         \tuuid = \"{}\";\n\
         \tbyte_order = le;\n\
         \tpacket.header := struct {{\n\
         \t\tuint32_t magic;\n\
         \t\tuint8_t  uuid[16];\n\
         \t\tuint32_t stream_id;\n\
         \t\tuint64_t stream_instance_id;\n\
         \t}} align(8);\n\
         }};\n\n",
        trace.uuid.hyphenated()
    );

    out.push_str("env {\n");
    for (key, value) in &env {
        match value {
            EnvValue::Int(v) => {
                let _ = writeln!(out, "\t{key} = {v};");
            }
            EnvValue::Str(s) => {
                let _ = writeln!(out, "\t{key} = {};", quote(s));
            }
        }
    }
    out.push_str("};\n\n");

    let c = &trace.clock;
    let _ = write!(
        out,
        "clock {{\n\
         \tname = \"{CLOCK_NAME}\";\n\
         \tuuid = \"{}\";\n\
         \tdescription = \"Monotonic Clock\";\n\
         \tfreq = {}; /* Frequency, in Hz */\n\
         \t/* clock value offset from Epoch is: offset_s + offset * (1/freq) */\n\
         \toffset_s = {offset_s};\n\
         \toffset = {offset};\n\
         \tprecision = {};\n\
         \tabsolute = false;\n\
         }};\n\n",
        c.boot_id.hyphenated(),
        c.freq,
        c.precision
    );

    out.push_str(
        "typealias integer { size = 27; align = 1; signed = false; map = clock.monotonic.value; } := uint27_clock_monotonic_t;\n\
         typealias integer { size = 64; align = 8; signed = false; map = clock.monotonic.value; } := uint64_clock_monotonic_t;\n\n\
         struct packet_context {\n\
         \tuint64_clock_monotonic_t timestamp_begin;\n\
         \tuint64_clock_monotonic_t timestamp_end;\n\
         \tuint64_t content_size;\n\
         \tuint64_t packet_size;\n\
         \tuint64_t packet_seq_num;\n\
         \tuint64_t events_discarded;\n\
         \tuint32_t cpu_id;\n\
         } align(8);\n\n\
         struct event_header_compact {\n\
         \tenum : uint5_t { compact = 0 ... 30, extended = 31 } id;\n\
         \tvariant <id> {\n\
         \t\tstruct {\n\
         \t\t\tuint27_clock_monotonic_t timestamp;\n\
         \t\t} compact;\n\
         \t\tstruct {\n\
         \t\t\tuint32_t id;\n\
         \t\t\tuint64_clock_monotonic_t timestamp;\n\
         \t\t} extended;\n\
         \t} v;\n\
         } align(8);\n\n",
    );
    for s in streams {
        out.push_str(&stream_declaration(s));
    }
    Ok(out)
}

/// One `stream` block; [`preamble`] writes one per channel, and a channel added later can be
/// appended with this (before any event that names it).
pub fn stream_declaration(stream: &StreamInfo) -> String {
    // A comment cannot hold "*/"; the name is informative only.
    let channel = stream.channel.replace("*/", "*_/");
    format!(
        "/* channel {channel} */\n\
         stream {{\n\
         \tid = {};\n\
         \tevent.header := struct event_header_compact;\n\
         \tpacket.context := struct packet_context;\n\
         }};\n\n",
        stream.id
    )
}

/// The TSDL `loglevel` for a level: babeltrace2's scale, which matches syslog's from
/// emergency (0) to info (6) and calls plain debug 14.
pub fn tsdl_loglevel(level: LogLevel) -> u8 {
    match level {
        LogLevel::Debug => 14,
        other => other as u8,
    }
}

/// One `event` block, to append after the preamble when `event_id` is assigned.
///
/// ```
/// use drtrace_ctf::metadata::event_declaration;
/// use drtrace_proto::event::{EventDescription, FieldDescription, FieldType, LogLevel};
///
/// let desc = EventDescription {
///     provider: "demo".into(),
///     name: "tick".into(),
///     loglevel: LogLevel::Info,
///     fields: vec![FieldDescription { name: "count".into(), ty: FieldType::U32 }],
/// };
/// let text = event_declaration(0, 7, &desc).unwrap();
/// assert!(text.contains("name = \"demo:tick\";"));
/// assert!(text.contains("uint32_t _count;"));
/// ```
pub fn event_declaration(
    stream_id: u32,
    event_id: u32,
    desc: &EventDescription,
) -> Result<String, MetadataError> {
    desc.validate()?;
    let mut out = String::with_capacity(128 + 48 * desc.fields.len());
    let _ = write!(
        out,
        "event {{\n\
         \tname = {};\n\
         \tid = {event_id};\n\
         \tstream_id = {stream_id};\n\
         \tloglevel = {};\n\
         \tfields := struct {{\n",
        quote(&desc.full_name()),
        tsdl_loglevel(desc.loglevel)
    );
    for (field, length) in desc.fields.iter().zip(length_names(desc)) {
        let name = &field.name;
        let ty = match field.ty {
            FieldType::U8 => "uint8_t",
            FieldType::U16 => "uint16_t",
            FieldType::U32 => "uint32_t",
            FieldType::U64 => "uint64_t",
            FieldType::I8 => "int8_t",
            FieldType::I16 => "int16_t",
            FieldType::I32 => "int32_t",
            FieldType::I64 => "int64_t",
            FieldType::F32 => "float32_t",
            FieldType::F64 => "float64_t",
            FieldType::Bool => "bool8_t",
            FieldType::String => "string",
            FieldType::Bytes => {
                let length = length.unwrap_or_default();
                let _ = writeln!(out, "\t\tuint32_t _{length};");
                let _ = writeln!(out, "\t\tuint8_t _{name}[_{length}];");
                continue;
            }
        };
        let _ = writeln!(out, "\t\t{ty} _{name};");
    }
    out.push_str("\t};\n};\n\n");
    Ok(out)
}

/// The names of the length members of the event's bytes fields, in field order (`None` for
/// other fields): `<field>_length`, with a numeric suffix when a field or an earlier length
/// member already has that name, so every member name of the struct is unique.
fn length_names(desc: &EventDescription) -> Vec<Option<String>> {
    let mut used: HashSet<String> = desc.fields.iter().map(|f| f.name.clone()).collect();
    desc.fields
        .iter()
        .map(|f| {
            if f.ty != FieldType::Bytes {
                return None;
            }
            let base = format!("{}_length", f.name);
            let name = std::iter::once(base.clone())
                .chain((1u32..).map(|n| format!("{base}{n}")))
                .find(|c| !used.contains(c))
                .unwrap_or(base);
            used.insert(name.clone());
            Some(name)
        })
        .collect()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A TSDL string literal for `s`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                // Octal escapes are what both the TSDL lexers understand.
                let _ = write!(out, "\\{:03o}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_proto::event::FieldDescription;

    fn info() -> TraceInfo {
        TraceInfo {
            uuid: Uuid::from_u128(0x1234),
            domain: Domain::Kernel,
            tracer_major: 1,
            tracer_minor: 2,
            tracer_patchlevel: 3,
            hostname: "h\"ost".into(),
            trace_name: "t".into(),
            creation_datetime: "20250102T030405+0000".into(),
            extra_env: vec![
                ("procname".into(), EnvValue::Str("app".into())),
                ("vpid".into(), EnvValue::Int(42)),
            ],
            clock: ClockInfo::monotonic_ns(Uuid::from_u128(0x99), 0),
        }
    }

    fn event(fields: &[(&str, FieldType)]) -> EventDescription {
        EventDescription {
            provider: "p".into(),
            name: "e".into(),
            loglevel: LogLevel::Debug,
            fields: fields
                .iter()
                .map(|(n, t)| FieldDescription {
                    name: (*n).into(),
                    ty: *t,
                })
                .collect(),
        }
    }

    #[test]
    fn trace_uuids_differ_per_directory_and_are_stable() {
        let s = Uuid::from_u128(7);
        let a = trace_uuid(s, "kernel");
        assert_eq!(a, trace_uuid(s, "/kernel/"));
        assert_ne!(a, trace_uuid(Uuid::from_u128(8), "kernel"));
        assert_ne!(
            trace_uuid(s, "ust/uid/1000/64-bit"),
            trace_uuid(s, "ust/uid/1001/64-bit")
        );
        assert_ne!(a, s);
        // pinned: the sessiond and the consumer must agree across builds and releases
        assert_eq!(
            trace_uuid(Uuid::nil(), "kernel").to_string(),
            "29ac0866-df58-83ca-83f4-e48a5229807e"
        );
        assert_eq!(
            trace_uuid(Uuid::from_u128(1), "ust/uid/1000/64-bit").to_string(),
            "03532a34-3b60-803e-9ab7-f0a4fb07fa22"
        );
    }

    #[test]
    fn epoch_offset_splits_seconds_and_cycles() {
        let mut c = ClockInfo::monotonic_ns(Uuid::nil(), 1_700_000_000_123_456_789);
        c.offset_ns = -1_000;
        assert_eq!(c.epoch_offset().unwrap(), (1_700_000_000, 123_455_789));
        // 3 GHz: 0.5 s is 1.5e9 cycles
        c.freq = 3_000_000_000;
        c.offset_ns = 0;
        c.mono_to_realtime_ns = 10_500_000_000;
        assert_eq!(c.epoch_offset().unwrap(), (10, 1_500_000_000));
        // rounded up: 1 ns at 3 GHz is 3 cycles, 2 ns is 6; 1/3 ns rounds to 1 cycle
        c.mono_to_realtime_ns = 1;
        assert_eq!(c.epoch_offset().unwrap(), (0, 3));
        // negative totals keep 0 <= offset < freq
        c.freq = 1_000_000_000;
        c.mono_to_realtime_ns = -1;
        assert_eq!(c.epoch_offset().unwrap(), (-1, 999_999_999));
        c.freq = 0;
        assert_eq!(c.epoch_offset(), Err(MetadataError::ZeroFrequency));
    }

    #[test]
    fn preamble_has_every_block() {
        let text = preamble(
            &info(),
            &[
                StreamInfo {
                    id: 0,
                    channel: "chan".into(),
                },
                StreamInfo {
                    id: 1,
                    channel: "x*/y".into(),
                },
            ],
        )
        .unwrap();
        assert!(text.starts_with("/* CTF 1.8 */\n"));
        for needle in [
            "uuid = \"00000000-0000-0000-0000-000000001234\";",
            "byte_order = le;",
            "domain = \"kernel\";",
            "tracer_name = \"drtrace\";",
            "tracer_patchlevel = 3;",
            "hostname = \"h\\\"ost\";",
            "procname = \"app\";",
            "vpid = 42;",
            "uuid = \"00000000-0000-0000-0000-000000000099\";",
            "absolute = false;",
            "\tid = 0;",
            "\tid = 1;",
            "/* channel x*_/y */",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(!text.contains("lttng"));
    }

    #[test]
    fn preamble_rejects_bad_env() {
        let mut i = info();
        i.extra_env.push(("bad key".into(), EnvValue::Int(1)));
        assert_eq!(
            preamble(&i, &[]),
            Err(MetadataError::BadEnvKey("bad key".into()))
        );
        let mut i = info();
        i.extra_env.push(("hostname".into(), EnvValue::Int(1)));
        assert_eq!(
            preamble(&i, &[]).unwrap_err().to_string(),
            "env key 'hostname' is given twice"
        );
    }

    #[test]
    fn event_declaration_types_and_names() {
        let text = event_declaration(
            3,
            40,
            &event(&[
                ("align", FieldType::U8),
                ("f", FieldType::F64),
                ("b", FieldType::Bool),
                ("s", FieldType::String),
                ("data", FieldType::Bytes),
                ("n", FieldType::I16),
            ]),
        )
        .unwrap();
        assert_eq!(
            text,
            "event {\n\tname = \"p:e\";\n\tid = 40;\n\tstream_id = 3;\n\tloglevel = 14;\n\
             \tfields := struct {\n\
             \t\tuint8_t _align;\n\
             \t\tfloat64_t _f;\n\
             \t\tbool8_t _b;\n\
             \t\tstring _s;\n\
             \t\tuint32_t _data_length;\n\
             \t\tuint8_t _data[_data_length];\n\
             \t\tint16_t _n;\n\
             \t};\n};\n\n"
        );
    }

    #[test]
    fn length_member_avoids_clashes() {
        let text = event_declaration(
            0,
            0,
            &event(&[
                ("a", FieldType::Bytes),
                ("a_length", FieldType::U32),
                ("a_length1", FieldType::Bytes),
            ]),
        )
        .unwrap();
        // a_length is a field, a_length1 is a field and a_length1_length is its length
        assert!(text.contains("uint32_t _a_length2;\n\t\tuint8_t _a[_a_length2];"));
        assert!(text.contains("uint32_t _a_length1_length;"));
    }

    #[test]
    fn invalid_descriptions_are_refused() {
        let e = event(&[("not ok", FieldType::U8)]);
        assert!(matches!(
            event_declaration(0, 0, &e),
            Err(MetadataError::InvalidEvent(_))
        ));
    }

    #[test]
    fn quoting_escapes_control_characters() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\001\"");
    }
}
