//! Helpers shared by the integration tests: the captured fixtures, an independent reading
//! of the kernel's own text output (`trace`), babeltrace2, and root/tracefs guards.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drtrace_ctf::reader::Value;
use drtrace_ftrace::ctf::EventCatalog;
use drtrace_ftrace::format::{EventFormat, HeaderPage, check_header_event};
use drtrace_ftrace::page::PageLayout;

/// Where the captured fixtures live.
pub(crate) fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The events the capture enables, in CTF id order.
pub(crate) const CAPTURED_EVENTS: [(&str, &str); 5] = [
    ("sched", "sched_switch"),
    ("sched", "sched_wakeup"),
    ("sched", "sched_process_exec"),
    ("syscalls", "sys_enter_openat"),
    ("syscalls", "sys_exit_write"),
];

/// A capture: formats, pages per CPU and the kernel's text rendering of the same buffer.
pub(crate) struct Capture {
    pub(crate) layout: PageLayout,
    pub(crate) formats: Vec<EventFormat>,
    /// CPU → pages, each as `read()` returned it.
    pub(crate) pages: BTreeMap<u32, Vec<Vec<u8>>>,
    /// The instance's `trace` file, read with recording off before the pages were drained.
    pub(crate) trace_text: String,
}

impl Capture {
    /// Loads the committed capture from `dir`.
    pub(crate) fn load(dir: &Path) -> Capture {
        let read = |rel: &str| {
            std::fs::read_to_string(dir.join(rel))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(rel).display()))
        };
        check_header_event(&read("header_event")).unwrap();
        let layout = HeaderPage::parse(&read("header_page"))
            .unwrap()
            .layout()
            .unwrap();
        let formats = CAPTURED_EVENTS
            .iter()
            .map(|(sys, ev)| {
                EventFormat::parse(sys, &read(&format!("formats/{sys}/{ev}/format"))).unwrap()
            })
            .collect();
        let mut pages = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(cpu) = name
                .strip_prefix("cpu")
                .and_then(|n| n.strip_suffix(".pages"))
            else {
                continue;
            };
            let bytes = std::fs::read(entry.path()).unwrap();
            pages.insert(cpu.parse().unwrap(), split_pages(&bytes, layout.page_size));
        }
        Capture {
            layout,
            formats,
            pages,
            trace_text: read("trace.txt"),
        }
    }

    pub(crate) fn catalog(&self) -> EventCatalog {
        EventCatalog::new(self.formats.clone()).unwrap()
    }

    /// Writes the capture to `dir` in the layout [`Capture::load`] reads.
    pub(crate) fn save(&self, dir: &Path, header_page: &str, header_event: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("header_page"), header_page).unwrap();
        std::fs::write(dir.join("header_event"), header_event).unwrap();
        std::fs::write(dir.join("trace.txt"), &self.trace_text).unwrap();
        for (cpu, pages) in &self.pages {
            std::fs::write(dir.join(format!("cpu{cpu}.pages")), pages.concat()).unwrap();
        }
    }
}

/// Pages stored back to back, each `page_size` bytes (the last may be shorter).
pub(crate) fn split_pages(bytes: &[u8], page_size: usize) -> Vec<Vec<u8>> {
    bytes.chunks(page_size).map(<[u8]>::to_vec).collect()
}

// Each test binary uses a different part.
#[allow(unused_imports)]
pub(crate) use drtrace_ctf::testing::babeltrace2;
#[allow(unused_imports)]
pub(crate) use drtrace_ftrace::testing::{
    DecodedEvent as Decoded, InstanceGuard, bt2_line, decode_pages, have_root,
    run_babeltrace2_cycles, without_delta,
};

/// One line of the kernel's `trace` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextEvent {
    pub(crate) cpu: u32,
    pub(crate) pid: i64,
    /// Microseconds, as the kernel prints them (rounded).
    pub(crate) micros: u64,
    pub(crate) name: String,
    /// `key=value` pairs of the rest of the line (values without spaces).
    pub(crate) args: BTreeMap<String, String>,
    pub(crate) rest: String,
}

/// Parses the `trace` file's event lines:
/// `<comm>-<pid> [<cpu>] <flags> <sec>.<usec>: <event>: <rest>`.
pub(crate) fn parse_trace_text(text: &str) -> Vec<TextEvent> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((task, after)) = line.split_once(" [") else {
            continue;
        };
        let Some((cpu, after)) = after.split_once("] ") else {
            continue;
        };
        let Some(pid) = task.trim().rsplit_once('-').map(|(_, p)| p) else {
            continue;
        };
        // `<flags> <sec>.<usec>: <event>: <rest>`, with runs of spaces between the first two.
        let Some((_flags, after)) = after.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, after)) = after.trim_start().split_once(": ") else {
            continue;
        };
        let (name, rest) = text_event_name(after);
        let (secs, micros) = ts.trim().split_once('.').unwrap_or((ts, "0"));
        let (Ok(cpu), Ok(pid), Ok(secs), Ok(us)) = (
            cpu.trim().parse::<u32>(),
            pid.parse::<i64>(),
            secs.trim().parse::<u64>(),
            micros.parse::<u64>(),
        ) else {
            continue;
        };
        // Tracepoints print `key=value ...`, syscall entries `key: value, ...`.
        let args = if name.starts_with("sys_enter_") {
            rest.split(", ")
                .filter_map(|kv| kv.split_once(": "))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        } else {
            key_values(rest)
        };
        out.push(TextEvent {
            cpu,
            pid,
            micros: secs * 1_000_000 + us,
            name,
            args,
            rest: rest.to_owned(),
        });
    }
    out
}

/// The event name and the rest of a line after its timestamp. Tracepoints print
/// `name: args`; syscall events print `sys_openat(dfd: 0x.., ...)` and `sys_write -> 0x7`
/// (named here like their tracefs events, `sys_enter_openat` and `sys_exit_write`).
fn text_event_name(after: &str) -> (String, &str) {
    if let Some((call, args)) = after.split_once('(') {
        if let Some(sys) = call
            .strip_prefix("sys_")
            .filter(|c| !c.contains([' ', ':']))
        {
            return (
                format!("sys_enter_{sys}"),
                args.trim_end().trim_end_matches(')'),
            );
        }
    }
    if let Some((call, ret)) = after.split_once(" -> ") {
        if let Some(sys) = call
            .strip_prefix("sys_")
            .filter(|c| !c.contains([' ', ':']))
        {
            return (format!("sys_exit_{sys}"), ret);
        }
    }
    match after.split_once(": ") {
        Some((n, r)) => (n.to_owned(), r),
        None => (after.trim_end_matches(':').to_owned(), ""),
    }
}

/// `a=1 comm=lto cgu.02 b=2`: a value runs until the next ` key=` (comms have spaces).
fn key_values(rest: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for token in rest.split(' ') {
        let key = token
            .split_once('=')
            .map(|(k, _)| k)
            .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        match (key, &current) {
            (Some(k), _) => {
                out.insert(k.to_owned(), token[k.len() + 1..].to_owned());
                current = Some(k.to_owned());
            }
            (None, Some(k)) => {
                let v = out.entry(k.clone()).or_default();
                v.push(' ');
                v.push_str(token);
            }
            (None, None) => {}
        }
    }
    out
}

/// `0x1f` or `31`.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn as_str(v: Option<&Value>) -> String {
    match v {
        Some(Value::Str(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

fn as_i64(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("not an integer: {v:?}"))
}

/// Checks events decoded from the pages against the kernel's own text rendering of the same
/// buffer, CPU by CPU: same count, times (to the microsecond), names, pids and key fields.
/// Returns the number of events compared.
pub(crate) fn assert_matches_text(decoded: &[Decoded], text: &[TextEvent]) -> usize {
    let cpus: std::collections::BTreeSet<u32> = decoded
        .iter()
        .map(|d| d.cpu)
        .chain(text.iter().map(|t| t.cpu))
        .collect();
    let mut compared = 0;
    for cpu in cpus {
        let ours: Vec<&Decoded> = decoded.iter().filter(|d| d.cpu == cpu).collect();
        let theirs: Vec<&TextEvent> = text.iter().filter(|t| t.cpu == cpu).collect();
        assert_eq!(
            ours.len(),
            theirs.len(),
            "cpu {cpu}: {} events decoded, {} in the kernel's text",
            ours.len(),
            theirs.len()
        );
        for (d, t) in ours.iter().zip(&theirs) {
            let ctx = format!("cpu {cpu}: decoded {d:?}\nkernel text {t:?}");
            // The kernel rounds nanoseconds to the nearest microsecond.
            assert_eq!((d.timestamp + 500) / 1000, t.micros, "{ctx}");
            assert_eq!(d.name, t.name, "{ctx}");
            assert_eq!(as_i64(d.field("common_pid")), t.pid, "{ctx}");
            match d.name.as_str() {
                "sched_switch" => {
                    for key in ["prev_comm", "next_comm"] {
                        assert_eq!(&as_str(d.field(key)), &t.args[key], "{ctx}");
                    }
                    for key in ["prev_pid", "next_pid", "prev_prio", "next_prio"] {
                        assert_eq!(as_i64(d.field(key)).to_string(), t.args[key], "{ctx}");
                    }
                }
                "sched_wakeup" => {
                    assert_eq!(as_str(d.field("comm")), t.args["comm"], "{ctx}");
                    assert_eq!(as_i64(d.field("pid")).to_string(), t.args["pid"], "{ctx}");
                }
                "sched_process_exec" => {
                    assert_eq!(as_str(d.field("filename")), t.args["filename"], "{ctx}");
                    assert_eq!(as_i64(d.field("pid")).to_string(), t.args["pid"], "{ctx}");
                }
                "sys_enter_openat" => {
                    for key in ["dfd", "filename", "flags", "mode"] {
                        let v = d.field(key).and_then(Value::as_u64);
                        assert_eq!(v, parse_number(&t.args[key]), "{key}: {ctx}");
                    }
                }
                "sys_exit_write" => {
                    let ret = as_i64(d.field("ret"));
                    assert_eq!(
                        parse_number(t.rest.trim()),
                        Some(u64::from_ne_bytes(ret.to_ne_bytes())),
                        "{ctx}"
                    );
                }
                other => panic!("unexpected event {other}"),
            }
            compared += 1;
        }
    }
    compared
}

/// A private tracefs mount for one test: mounted on a temporary directory and unmounted
/// on drop, so tests never unmount a tracefs someone else relies on.
pub(crate) struct PrivateTracefs {
    pub(crate) fs: drtrace_ftrace::tracefs::Tracefs,
    dir: tempfile::TempDir,
}

impl PrivateTracefs {
    pub(crate) fn mount(test: &str) -> PrivateTracefs {
        use drtrace_ftrace::tracefs::{RealSystem, System, Tracefs};
        use std::sync::Arc;
        let dir = tempfile::Builder::new()
            .prefix("drtrace-tracefs-")
            .tempdir()
            .unwrap();
        if let Err(e) = RealSystem.mount_tracefs(dir.path()) {
            panic!(
                "{test}: cannot mount tracefs on {}: {e} (tracefs missing from the kernel?)",
                dir.path().display()
            );
        }
        let fs = Tracefs::open(Arc::new(RealSystem), dir.path()).unwrap();
        PrivateTracefs { fs, dir }
    }
}

impl Drop for PrivateTracefs {
    fn drop(&mut self) {
        use drtrace_ftrace::tracefs::{RealSystem, System};
        if let Err(e) = RealSystem.unmount(self.dir.path()) {
            // A lazy unmount still detaches it if a file is open.
            let lazy = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
            eprintln!(
                "unmount {}: {e}; lazy unmount: {lazy:?}",
                self.dir.path().display()
            );
        }
    }
}

/// `babeltrace2 --clock-cycles <dir>` lines; panics with stdout and stderr on failure.
pub(crate) fn run_babeltrace2(bt: &Path, dir: &Path) -> Vec<String> {
    run_babeltrace2_cycles(bt, dir).0
}
