//! `drtrace view [TRACE]`: a trace's events as text or JSON lines, read with `drtrace-ctf`.
//!
//! Events are streamed from [`Trace::events`] (one packet per stream in memory) through a
//! buffered writer. Lost events and packets are reported on stderr once the events are
//! printed, from the reader's per-stream counts. A reader error ends the listing: what was
//! printed stays printed (the buffer is flushed first) and the error is the command's.
//!
//! `--json` prints one object per event and line (JSON Lines):
//!
//! ```json
//! {"timestamp_ns": 1700000000000000000, "name": "demo:tick", "channel": "channel0", "cpu": 0,
//!  "fields": {"count": 7, "msg": "hi", "raw": [1, 2], "ok": true}}
//! ```
//!
//! Field values: integers and floats are numbers (a float that is not finite is `null`),
//! booleans are booleans, strings are strings, byte sequences and arrays are arrays,
//! structures are objects, enumerations are `{"label": "name" | null, "value": n}` and
//! variants `{"<option>": value}`.

use std::ffi::OsStr;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use drtrace_ctf::reader::{Event, ReadError, StreamStats, Trace, Value};
use drtrace_ctf::text::TextFormatter;
use drtrace_proto::ErrorCode;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use super::{AppError, Outcome, Target, friendly};
use crate::cli::ViewArgs;
use crate::client::{Client, ClientError, DaemonKind};

/// Bytes buffered before a write to stdout.
const BUFFER: usize = 64 << 10;

/// One event as a JSON object.
struct JsonEvent<'a>(&'a Event);

impl Serialize for JsonEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut st = s.serialize_struct("event", 5)?;
        st.serialize_field("timestamp_ns", &e.timestamp_ns)?;
        st.serialize_field("name", &e.name)?;
        st.serialize_field("channel", &e.channel)?;
        st.serialize_field("cpu", &e.cpu)?;
        st.serialize_field("fields", &Members(&e.fields))?;
        st.end()
    }
}

/// Named values as a JSON object, in their order.
struct Members<'a>(&'a [(String, Value)]);

impl Serialize for Members<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &JsonValue(value))?;
        }
        map.end()
    }
}

/// One field value as JSON (see the module docs).
struct JsonValue<'a>(&'a Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::U64(v) => s.serialize_u64(*v),
            Value::I64(v) => s.serialize_i64(*v),
            Value::F64(v) if v.is_finite() => s.serialize_f64(*v),
            Value::F64(_) => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) => s.collect_seq(b.iter()),
            Value::Array(items) => s.collect_seq(items.iter().map(JsonValue)),
            Value::Enum { label, value } => {
                let mut st = s.serialize_struct("enum", 2)?;
                st.serialize_field("label", label)?;
                st.serialize_field("value", value)?;
                st.end()
            }
            Value::Struct(members) => Members(members).serialize(s),
            Value::Variant { option, value } => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(option, &JsonValue(value))?;
                map.end()
            }
        }
    }
}

/// True if `arg` can only be meant as a path (session names hold no `/` and no leading `.`).
fn looks_like_path(arg: &OsStr) -> bool {
    arg.to_str()
        .is_none_or(|s| s.contains('/') || s.starts_with('.'))
}

/// Where the trace of a session of the user's daemon (or with `--system` the broker) is
/// (`None` = the current session). Never starts a daemon: with none running there is no
/// session to view.
fn session_trace(target: Target, name: Option<&str>) -> Result<PathBuf, AppError> {
    let opts = target.options()?;
    let who = match target.kind() {
        DaemonKind::Sessiond => "session daemon",
        DaemonKind::Broker => "broker",
    };
    let client = match Client::connect(&opts) {
        Ok(client) => client,
        Err(e) if e.is_no_daemon() => {
            return Err(AppError::View(match name {
                Some(n) => {
                    format!("{n} is neither a trace directory nor a session: no {who} is running")
                }
                None => format!(
                    "no current session (no {who} is running); name a trace directory: drtrace view DIR"
                ),
            }));
        }
        Err(e) => return Err(e.into()),
    };
    match client.show_session(name) {
        Ok(info) => Ok(info.output),
        Err(ClientError::Daemon(w)) if w.code == ErrorCode::SessionNotFound && name.is_some() => {
            Err(AppError::View(format!(
                "{} is neither a trace directory nor a session of your daemon",
                name.unwrap_or_default()
            )))
        }
        Err(ClientError::Daemon(w)) if w.code == ErrorCode::NoCurrentSession => {
            Err(AppError::View(
                "no current session; name a trace directory or a session: drtrace view TRACE"
                    .to_owned(),
            ))
        }
        Err(e) => Err(friendly(e)),
    }
}

/// Opens the trace `target` names: an existing path as it is, else a session's trace
/// (`None` = the current session's).
fn open(daemon: Target, target: Option<&OsStr>) -> Result<Trace, AppError> {
    let (path, session) = match target {
        Some(arg) if Path::new(arg).symlink_metadata().is_ok() || looks_like_path(arg) => {
            (PathBuf::from(arg), None)
        }
        Some(arg) => {
            let name = arg.to_string_lossy().into_owned();
            let path = session_trace(daemon, Some(&name))?;
            (path, Some(format!("session {name}")))
        }
        None => (
            session_trace(daemon, None)?,
            Some("the current session".to_owned()),
        ),
    };
    match (Trace::open(&path), session) {
        (Ok(trace), _) => Ok(trace),
        // A session's directory exists from its creation on; metadata comes with the first
        // traced application.
        (Err(ReadError::NoMetadata { .. }), Some(session)) => Err(AppError::View(format!(
            "{session} has no trace yet: {} holds no metadata (no application has been traced in it)",
            path.display()
        ))),
        (Err(e), _) => Err(e.into()),
    }
}

/// The warnings for events and packets the streams lost.
fn loss_warnings(stats: &[StreamStats]) -> Vec<String> {
    let mut lines = Vec::new();
    for s in stats {
        if s.events_discarded > 0 {
            lines.push(format!(
                "warning: the tracer discarded {} {} in stream {} (its buffers were full)",
                s.events_discarded,
                if s.events_discarded == 1 {
                    "event"
                } else {
                    "events"
                },
                s.path.display()
            ));
        }
        let lost: u64 = s.lost_packets.iter().map(|g| g.lost()).sum();
        if lost > 0 {
            lines.push(format!(
                "warning: {lost} {} missing from stream {} (gaps in packet sequence numbers)",
                if lost == 1 {
                    "packet is"
                } else {
                    "packets are"
                },
                s.path.display()
            ));
        }
    }
    lines
}

/// Prints events from `events` to `out` (at most `limit`); returns the first reader
/// error, if any, after flushing what was printed.
fn print_events(
    events: &mut impl Iterator<Item = Result<Event, ReadError>>,
    limit: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AppError> {
    let mut w = BufWriter::with_capacity(BUFFER, out);
    let mut fmt = TextFormatter::new();
    let mut failure = None;
    let mut printed = 0;
    while printed < limit {
        let event = match events.next() {
            None => break,
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
        };
        if json {
            serde_json::to_writer(&mut w, &JsonEvent(&event))
                .map_err(|e| AppError::Output(io::Error::from(e)))?;
            w.write_all(b"\n").map_err(AppError::Output)?;
        } else {
            writeln!(w, "{}", fmt.format(&event)).map_err(AppError::Output)?;
        }
        printed += 1;
    }
    w.flush().map_err(AppError::Output)?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Runs `drtrace view`.
pub(super) fn run(
    args: &ViewArgs,
    target: Target,
    json: bool,
    out: &mut dyn Write,
) -> Result<Outcome, AppError> {
    let trace = open(target, args.target.as_deref())?;
    let mut events = trace.events();
    print_events(&mut events, args.limit.unwrap_or(u64::MAX), json, out)?;
    let mut err = io::stderr().lock();
    for line in loss_warnings(&events.stats()) {
        // Nothing better to do if stderr is gone.
        let _ = writeln!(err, "{line}");
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_ctf::reader::PacketGap;

    #[test]
    fn values_become_json() {
        let v = Value::Struct(vec![
            ("u".into(), Value::U64(u64::MAX)),
            ("i".into(), Value::I64(-3)),
            ("f".into(), Value::F64(0.5)),
            ("nan".into(), Value::F64(f64::NAN)),
            ("b".into(), Value::Bool(true)),
            ("s".into(), Value::Str("a\"b".into())),
            ("raw".into(), Value::Bytes(vec![1, 255])),
            ("arr".into(), Value::Array(vec![Value::I64(1)])),
            (
                "e".into(),
                Value::Enum {
                    label: Some("x".into()),
                    value: -1,
                },
            ),
            (
                "v".into(),
                Value::Variant {
                    option: "o".into(),
                    value: Box::new(Value::U64(2)),
                },
            ),
        ]);
        let text = serde_json::to_string(&JsonValue(&v)).unwrap();
        assert_eq!(
            text,
            r#"{"u":18446744073709551615,"i":-3,"f":0.5,"nan":null,"b":true,"s":"a\"b","raw":[1,255],"arr":[1],"e":{"label":"x","value":-1},"v":{"o":2}}"#
        );
    }

    #[test]
    fn paths_and_session_names_are_told_apart() {
        assert!(looks_like_path(OsStr::new("./x")));
        assert!(looks_like_path(OsStr::new("a/b")));
        assert!(looks_like_path(OsStr::new("..")));
        assert!(!looks_like_path(OsStr::new("demo")));
        assert!(!looks_like_path(OsStr::new("alice.9a7b5cd2-0000")));
    }

    #[test]
    fn losses_are_warned_about_per_stream() {
        let mut s = StreamStats {
            path: "/t/channel0_1".into(),
            channel: "channel0".into(),
            stream_id: Some(0),
            cpu: Some(1),
            packets: 3,
            events: 10,
            events_discarded: 0,
            discarded: vec![],
            lost_packets: vec![],
        };
        assert!(loss_warnings(std::slice::from_ref(&s)).is_empty());
        s.events_discarded = 5;
        s.lost_packets = vec![
            PacketGap {
                expected: 1,
                found: 3,
                offset: 0,
            },
            PacketGap {
                expected: 4,
                found: 5,
                offset: 0,
            },
        ];
        assert_eq!(
            loss_warnings(&[s]),
            [
                "warning: the tracer discarded 5 events in stream /t/channel0_1 (its buffers were full)",
                "warning: 3 packets are missing from stream /t/channel0_1 (gaps in packet sequence numbers)",
            ]
        );
    }

    #[test]
    fn reading_stops_at_the_first_error_after_flushing() {
        let mut out = Vec::new();
        let mut events = vec![Err(ReadError::NoMetadata {
            path: "/nowhere".into(),
        })]
        .into_iter();
        let err = print_events(&mut events, u64::MAX, false, &mut out).unwrap_err();
        assert_eq!(err.to_string(), "no metadata file under /nowhere");
        assert!(out.is_empty());
    }
}
