//! drtrace's CTF 1.8 support: metadata generation, packet encoding, and a trace reader.
//!
//! `docs/format.md` is the contract this crate implements: the on-disk layout of a session
//! directory, the record format writers put in sub-buffers, the packet header and context
//! the consumer puts in front of each sub-buffer, and the clock.
//!
//! Who links it:
//! - the session registries (`drtrace-sessiond`, the broker) generate each trace's
//!   `metadata` with [`metadata::preamble`] at start and append an
//!   [`metadata::event_declaration`] per event id they assign;
//! - `drtrace-consumerd` writes each sub-buffer as a packet with [`packet::write_packet`];
//! - `drtrace view` and the integration tests read traces back with [`reader::Trace`] and
//!   print them with [`text::TextFormatter`].
//!
//! Modules:
//! - [`metadata`]: TSDL text generation ([`metadata::TraceInfo`], [`metadata::StreamInfo`]).
//! - [`packet`]: [`packet::PacketHeader`] and [`packet::PacketContext`], 84 fixed bytes.
//! - [`record`]: compact and extended event headers, payload encoding, timestamp rebuilding.
//! - [`tsdl`]: a TSDL parser into resolved field classes ([`tsdl::Metadata`]).
//! - [`reader`]: [`reader::Trace`], yielding [`reader::Event`]s in time order.
//! - [`text`]: babeltrace2-like one-line rendering.
//!
//! # Example
//!
//! Write a one-event trace and read it back:
//!
//! ```
//! use drtrace_ctf::metadata::{self, ClockInfo, Domain, StreamInfo, TraceInfo};
//! use drtrace_ctf::packet::{self, PacketContext, PacketHeader};
//! use drtrace_ctf::reader::{Trace, Value};
//! use drtrace_ctf::record::{self, FieldValue};
//! use drtrace_proto::event::{EventDescription, FieldDescription, FieldType, LogLevel};
//! use uuid::Uuid;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let trace_dir = dir.path().join("ust/uid/1000/64-bit");
//! std::fs::create_dir_all(&trace_dir).unwrap();
//! let uuid = metadata::trace_uuid(Uuid::from_u128(1), "ust/uid/1000/64-bit");
//!
//! let info = TraceInfo {
//!     uuid,
//!     domain: Domain::Ust,
//!     tracer_major: 0,
//!     tracer_minor: 1,
//!     tracer_patchlevel: 0,
//!     hostname: "box".into(),
//!     trace_name: "demo".into(),
//!     creation_datetime: "20250102T030405+0000".into(),
//!     extra_env: vec![],
//!     clock: ClockInfo::monotonic_ns(Uuid::from_u128(2), 0),
//! };
//! let event = EventDescription {
//!     provider: "demo".into(),
//!     name: "tick".into(),
//!     loglevel: LogLevel::Info,
//!     fields: vec![FieldDescription { name: "count".into(), ty: FieldType::U32 }],
//! };
//! let mut text = metadata::preamble(&info, &[StreamInfo { id: 0, channel: "channel0".into() }])?;
//! text += &metadata::event_declaration(0, 0, &event)?;
//! std::fs::write(trace_dir.join("metadata"), text).unwrap();
//!
//! let mut records = Vec::new();
//! record::write_record(&mut records, 0, 1_500, 1_000, &[FieldValue::U32(7)]);
//! let mut file = Vec::new();
//! packet::write_packet(
//!     &mut file,
//!     &PacketHeader { uuid, stream_id: 0, stream_instance_id: 0 },
//!     &PacketContext { timestamp_begin: 1_000, timestamp_end: 2_000, ..Default::default() },
//!     &records,
//! )?;
//! std::fs::write(trace_dir.join("channel0_0"), file).unwrap();
//!
//! let events = Trace::open(dir.path())?.read_all()?;
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].name, "demo:tick");
//! assert_eq!(events[0].clock_cycles, 1_500);
//! assert_eq!(events[0].channel, "channel0");
//! assert_eq!(events[0].field("count"), Some(&Value::U64(7)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod metadata;
pub mod packet;
pub mod reader;
pub mod record;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod text;
pub mod tsdl;

pub use metadata::{
    ClockInfo, Domain, EnvValue, MetadataError, StreamInfo, TraceInfo, event_declaration, preamble,
    trace_uuid,
};
pub use packet::{PacketContext, PacketHeader, write_packet};
pub use reader::{Event, Events, ReadError, StreamStats, Trace, Value};
pub use text::TextFormatter;
