//! drtrace's kernel tracing through tracefs (ftrace): instances, format files, ring-buffer
//! pages, and their conversion to CTF 1.8.
//!
//! Who links it:
//! - the root broker manages one ftrace instance per session with [`tracefs`] (create,
//!   configure, enable events, list and remove stale `drtrace-*` instances) and lists the
//!   events the kernel offers;
//! - the root consumer reads each CPU buffer with [`reader::CpuReader`] and converts its
//!   pages with [`ctf::KernelStream`] into the session's `kernel/<channel>_<cpu>` stream
//!   files, next to the `kernel/metadata` from [`ctf::kernel_metadata`].
//!
//! Modules:
//! - [`tracefs`]: [`tracefs::Tracefs`] and [`tracefs::Instance`], over the
//!   [`tracefs::System`] trait ([`tracefs::RealSystem`] for the kernel,
//!   [`tracefs::fake::FakeSystem`] for tests without root).
//! - [`format`](mod@format): `events/<sys>/<event>/format`, `header_page`, `header_event` parsing.
//! - [`page`]: the ring-buffer page parser ([`page::Page`]), which never panics.
//! - [`ctf`]: [`ctf::EventCatalog`] (CTF names, ids and field layouts of the enabled
//!   events), [`ctf::kernel_metadata`], [`ctf::KernelStream`] (pages to packets).
//! - [`reader`]: [`reader::CpuReader`], a non-blocking, poll-driven `trace_pipe_raw` reader.
//!
//! CTF event names are the ftrace names without their subsystem (`sched_switch`), as in
//! LTTng kernel traces; the common fields `common_pid`, `common_flags` and
//! `common_preempt_count` are kept as payload fields (see [`ctf`] for the whole mapping).
//!
//! Kernels are assumed little-endian (x86-64, arm64): pages are decoded as such.
//!
//! # Example
//!
//! Convert one page of `sched_wakeup` events into a kernel trace and read it back (a real
//! consumer gets its formats from [`tracefs::Instance::enabled_formats`] and its pages from
//! [`reader::CpuReader`]):
//!
//! ```
//! use std::sync::Arc;
//! use drtrace_ctf::metadata::{ClockInfo, Domain, StreamInfo, TraceInfo};
//! use drtrace_ctf::packet::PacketHeader;
//! use drtrace_ctf::reader::{Trace, Value};
//! use drtrace_ftrace::ctf::{self, EventCatalog, KernelChannel, KernelStream, StreamConfig};
//! use drtrace_ftrace::format::EventFormat;
//! use drtrace_ftrace::page::{LostEvents, PageBuilder, PageLayout};
//! use uuid::Uuid;
//!
//! let format = EventFormat::parse("sched", "name: sched_wakeup\nID: 374\nformat:\n\
//!     \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
//!     \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
//!     \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
//!     \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
//!     \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
//!     \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n")?;
//! let catalog = Arc::new(EventCatalog::new(vec![format])?);
//!
//! let session = tempfile::tempdir()?;
//! let dir = session.path().join(ctf::KERNEL_TRACE_DIR);
//! std::fs::create_dir(&dir)?;
//! let uuid = ctf::kernel_trace_uuid(Uuid::from_u128(7));
//! let stream = StreamInfo { id: 0, channel: "channel0".into() };
//! let info = TraceInfo {
//!     uuid,
//!     domain: Domain::Kernel,
//!     tracer_major: 0,
//!     tracer_minor: 1,
//!     tracer_patchlevel: 0,
//!     hostname: "box".into(),
//!     trace_name: "demo".into(),
//!     creation_datetime: "20250102T030405+0000".into(),
//!     extra_env: vec![],
//!     clock: ClockInfo::monotonic_ns(Uuid::from_u128(9), 0),
//! };
//! let metadata = ctf::kernel_metadata(&info, &[KernelChannel { stream: &stream, catalog: &catalog }])?;
//! std::fs::write(dir.join("metadata"), metadata)?;
//!
//! // A raw sched_wakeup: common_type 374, flags, preempt count, common_pid, comm, pid.
//! let mut raw = Vec::new();
//! raw.extend_from_slice(&374u16.to_le_bytes());
//! raw.extend_from_slice(&[0, 0]);
//! raw.extend_from_slice(&10i32.to_le_bytes());
//! raw.extend_from_slice(b"worker\0\0\0\0\0\0\0\0\0\0");
//! raw.extend_from_slice(&11i32.to_le_bytes());
//! let page = PageBuilder::new(PageLayout::DEFAULT_64, 5_000)
//!     .event(20, &raw, false)
//!     .finish(LostEvents::None, false);
//!
//! let header = PacketHeader { uuid, stream_id: 0, stream_instance_id: 1 };
//! let mut kernel = KernelStream::new(catalog, PageLayout::DEFAULT_64, header, 1,
//!     StreamConfig::default());
//! let mut file = Vec::new();
//! kernel.push_page(&page, &mut file)?;
//! kernel.finish(&mut file)?;
//! std::fs::write(dir.join(ctf::stream_file_name("channel0", 1)), file)?;
//!
//! let events = Trace::open(session.path())?.read_all()?;
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].name, "sched_wakeup");
//! assert_eq!(events[0].clock_cycles, 5_020);
//! assert_eq!(events[0].field("comm"), Some(&Value::Str("worker".into())));
//! assert_eq!(events[0].field("common_pid"), Some(&Value::I64(10)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ctf;
pub mod format;
pub mod page;
pub mod reader;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tracefs;
