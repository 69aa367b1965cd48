//! Kernel streams for the tests and the benchmark: ftrace's captured fixtures, the
//! expected events decoded straight from their pages, kernel metadata, babeltrace2's
//! rendering of an event, and guards for a real tracefs instance (root only).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drtrace_ctf::metadata::{ClockInfo, Domain, StreamInfo, TraceInfo};
use drtrace_ftrace::ctf::{self, EventCatalog, KernelChannel};
use drtrace_ftrace::format::{EventFormat, HeaderPage};
use drtrace_ftrace::tracefs::{RealSystem, Tracefs};
use drtrace_proto::consumer::{
    ConsumerCommand, ConsumerReply, KernelEventFormat, KernelStreamSetup, StreamKey,
};
use uuid::Uuid;

use super::Consumerd;

/// The events of ftrace's captures, in the order its tests give them CTF ids.
pub(crate) const CAPTURED_EVENTS: [(&str, &str); 5] = [
    ("sched", "sched_switch"),
    ("sched", "sched_wakeup"),
    ("sched", "sched_process_exec"),
    ("syscalls", "sys_enter_openat"),
    ("syscalls", "sys_exit_write"),
];

/// The channel name of every kernel stream here.
pub(crate) const CHANNEL: &str = "channel0";

/// A capture of ftrace's fixtures (`ftrace/tests/data/<name>`): pages read from a real
/// kernel on this kind of machine, with the formats of their events.
pub(crate) fn capture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ftrace/tests/data")
        .join(name)
}

/// The formats of `events` in a capture, as the broker sends them.
pub(crate) fn captured_formats(dir: &Path, events: &[(&str, &str)]) -> Vec<KernelEventFormat> {
    events
        .iter()
        .map(|(sys, ev)| KernelEventFormat {
            system: (*sys).to_owned(),
            format: std::fs::read_to_string(dir.join(format!("formats/{sys}/{ev}/format")))
                .unwrap(),
        })
        .collect()
}

/// The catalog the consumer builds from `formats`.
pub(crate) fn catalog(formats: &[KernelEventFormat]) -> EventCatalog {
    EventCatalog::new(
        formats
            .iter()
            .map(|f| EventFormat::parse(&f.system, &f.format).unwrap()),
    )
    .unwrap()
}

/// A `stats` file's text.
pub(crate) fn stats_text(entries: u64, overrun: u64, dropped: u64) -> String {
    format!(
        "entries: {entries}\noverrun: {overrun}\ncommit overrun: 0\nbytes: 0\n\
         oldest event ts:  100.000001\nnow ts:  200.000002\ndropped events: {dropped}\n\
         read events: 0\n"
    )
}

// Each test binary (and the bench) uses a different part.
#[allow(unused_imports)]
pub(crate) use drtrace_ftrace::testing::{
    DecodedEvent as Expected, InstanceGuard, bt2_line, have_root, run_babeltrace2_cycles,
    without_delta,
};

/// Every event of `pages` (whole pages back to back), decoded directly with the catalog.
pub(crate) fn expected_events(
    catalog: &EventCatalog,
    header_page: &str,
    cpu: u32,
    pages: &[u8],
) -> Vec<Expected> {
    let layout = HeaderPage::parse(header_page).unwrap().layout().unwrap();
    drtrace_ftrace::testing::decode_pages(catalog, &layout, cpu, pages.chunks(layout.page_size)).0
}

/// The session's kernel trace: `<session>/kernel`, with its metadata written for one
/// channel (stream id 0) of `catalog`'s events. Returns the trace UUID.
pub(crate) fn write_kernel_metadata(
    session: &Path,
    session_uuid: Uuid,
    catalog: &EventCatalog,
) -> Uuid {
    let dir = session.join(ctf::KERNEL_TRACE_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let uuid = ctf::kernel_trace_uuid(session_uuid);
    let info = TraceInfo {
        uuid,
        domain: Domain::Kernel,
        tracer_major: 0,
        tracer_minor: 1,
        tracer_patchlevel: 0,
        hostname: "testhost".into(),
        trace_name: "kernel-test".into(),
        creation_datetime: "20250102T030405+0000".into(),
        extra_env: vec![],
        clock: ClockInfo::monotonic_ns(Uuid::from_u128(0xb007), 0),
    };
    let stream = StreamInfo {
        id: 0,
        channel: CHANNEL.into(),
    };
    let text = ctf::kernel_metadata(
        &info,
        &[KernelChannel {
            stream: &stream,
            catalog,
        }],
    )
    .unwrap();
    std::fs::write(dir.join("metadata"), text).unwrap();
    uuid
}

/// The setup of the kernel stream of `cpu` in `session`'s kernel trace.
pub(crate) fn kernel_setup(
    session_dir: &Path,
    session: u64,
    trace_uuid: Uuid,
    cpu: u32,
    header_page: &str,
    formats: &[KernelEventFormat],
) -> KernelStreamSetup {
    KernelStreamSetup {
        key: StreamKey(session * 1000 + 500 + u64::from(cpu)),
        session,
        trace_uuid,
        stream_id: 0,
        cpu,
        header_page: header_page.to_owned(),
        formats: formats.to_vec(),
        path: session_dir
            .join(ctf::KERNEL_TRACE_DIR)
            .join(ctf::stream_file_name(CHANNEL, cpu)),
    }
}

/// Sends `add_kernel_stream` with the buffer, stats and a stream file opened as the broker
/// does.
pub(crate) fn add_kernel_stream(
    c: &mut Consumerd,
    setup: &KernelStreamSetup,
    buffer: &OwnedFd,
    stats: &OwnedFd,
) -> ConsumerReply {
    let file = super::open_stream_file(&setup.path);
    c.request(
        ConsumerCommand::AddKernelStream(setup.clone()),
        &[buffer.as_fd(), stats.as_fd(), file.as_fd()],
    )
}

/// Opens a file read-only (a fixture standing in for `trace_pipe_raw` or `stats`).
pub(crate) fn open_read(path: &Path) -> OwnedFd {
    File::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into()
}

/// Opens a real `trace_pipe_raw` as the broker does: read-only, non-blocking.
pub(crate) fn open_trace_pipe_raw(path: &Path) -> OwnedFd {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into()
}

/// The system's tracefs, mounted for the test if it was not; unmounted on drop only then.
pub(crate) struct TracefsGuard {
    pub(crate) fs: Option<Tracefs>,
}

impl TracefsGuard {
    pub(crate) fn find_or_mount(test: &str) -> TracefsGuard {
        match Tracefs::find_or_mount(Arc::new(RealSystem)) {
            Ok(fs) => TracefsGuard { fs: Some(fs) },
            Err(e) => panic!("{test}: no tracefs and cannot mount one: {e}"),
        }
    }

    pub(crate) fn fs(&self) -> &Tracefs {
        self.fs.as_ref().unwrap()
    }
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take() {
            let root = fs.root().to_owned();
            if let Err(e) = fs.unmount() {
                eprintln!("unmount {}: {e}", root.display());
            }
        }
    }
}

/// A process's CPU time: (`utime + stime` of `/proc/PID/stat`, in seconds at clock-tick
/// resolution; `schedstat`'s time on a CPU, in seconds).
pub(crate) fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    let ticks = (utime + stime) as f64 / tick as f64;
    let sched = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let ns: u64 = sched.split(' ').next().unwrap().parse().unwrap();
    (ticks, ns as f64 / 1e9)
}
