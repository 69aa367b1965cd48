//! tracefs access: finding or mounting it, ftrace instances, events, per-CPU statistics.
//!
//! Every file operation goes through the [`System`] trait, so the logic here (and the
//! broker's above it) is tested without root against [`fake::FakeSystem`], an in-memory
//! tracefs; [`RealSystem`] is the kernel's. Paths are absolute and errors name them along
//! with the OS error.
//!
//! One ftrace instance per session, `instances/drtrace-<id>`, gives the session its own
//! buffers, clock and enabled events. The function-tracer files (`set_ftrace_filter`,
//! `set_ftrace_pid`, `/proc/sys/kernel/ftrace_enabled`) are never opened: event tracing does
//! not need them and opening them fails with EPERM on the machines drtrace targets.
//!
//! Event patterns (for [`Instance::enable_events`]) are `system:event` where either part
//! may use the `*` and `?` wildcards (`sched:*`, `syscalls:sys_enter_*`), a bare `event`
//! pattern matched in every system, or `*` for everything. They are matched against
//! `available_events` and each matching event's `enable` file is written (a whole system's
//! or all events' `enable` file when the pattern covers exactly that).

pub mod fake;

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::format::{EventFormat, EventName, FormatError, HeaderPage, check_header_event};
use crate::page::PageLayout;

/// Where tracefs is normally mounted, and where [`Tracefs::find_or_mount`] mounts it.
pub const DEFAULT_MOUNT: &str = "/sys/kernel/tracing";
/// Where older systems reach tracefs, through debugfs' automount.
pub const DEBUGFS_MOUNT: &str = "/sys/kernel/debug/tracing";
/// The prefix of every instance drtrace creates; others are never touched.
pub const INSTANCE_PREFIX: &str = "drtrace-";
/// The clock drtrace sets on its instances: CLOCK_MONOTONIC, shared with userspace.
pub const MONO_CLOCK: &str = "mono";
/// The size of the first read of a tracefs file (see [`RealSystem`]'s `read`).
const READ_CHUNK: usize = 64 << 10;

/// The privileged file operations tracefs access needs.
///
/// [`RealSystem`] performs them; [`fake::FakeSystem`] emulates a tracefs in memory for
/// tests. Paths are absolute.
pub trait System: fmt::Debug + Send + Sync {
    /// Whether `path` is the root of a mounted tracefs (`Ok(false)` when it does not exist).
    fn is_tracefs(&self, path: &Path) -> io::Result<bool>;
    /// Mounts tracefs on `target`.
    fn mount_tracefs(&self, target: &Path) -> io::Result<()>;
    /// Unmounts whatever is mounted on `target`.
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Writes `data` to an existing file, without truncating it first (truncating some
    /// tracefs files, like `set_event`, clears them).
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Creates a directory (for tracefs, an instance).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory (for tracefs, an instance and everything in it).
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// The names of a directory's entries.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
}

/// The kernel's tracefs, through system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSystem;

impl System for RealSystem {
    fn is_tracefs(&self, path: &Path) -> io::Result<bool> {
        match nix::sys::statfs::statfs(path) {
            Ok(fs) => Ok(fs.filesystem_type() == nix::sys::statfs::TRACEFS_MAGIC),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn mount_tracefs(&self, target: &Path) -> io::Result<()> {
        use nix::mount::{MsFlags, mount};
        mount(
            Some("nodev"),
            target,
            Some("tracefs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(io::Error::from)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        // Some tracefs files (`events/header_page`, `events/header_event`) answer only a
        // read at offset 0 and return end of file after it, so the first read must take
        // the whole content: `std::fs::read` starts with a 32-byte probe and would get a
        // truncated file. Larger files (`available_events`) are seq_files that continue.
        let mut f = std::fs::File::open(path)?;
        let mut out = vec![0u8; READ_CHUNK];
        let mut len = 0;
        loop {
            if out.len() - len < READ_CHUNK / 2 {
                out.resize(out.len() * 2, 0);
            }
            match f.read(&mut out[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out.truncate(len);
        Ok(out)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
}

/// A tracefs operation failed.
#[derive(Debug, Error)]
pub enum TracefsError {
    /// A system call on a path failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted: `read`, `write`, `create`, `remove`, `list`, `mount`, ...
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error (its errno is in the message).
        #[source]
        source: io::Error,
    },
    /// No tracefs is mounted where it was looked for.
    #[error("tracefs is not mounted at {}", display_paths(tried))]
    NotMounted {
        /// The places looked at.
        tried: Vec<PathBuf>,
    },
    /// An instance id has characters other than ASCII letters, digits, `-` and `_`, or is
    /// empty or longer than 64 bytes.
    #[error("invalid instance id {0:?}: use 1 to 64 ASCII letters, digits, '-' or '_'")]
    BadInstanceId(String),
    /// An event pattern is malformed.
    #[error("invalid event pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No available event matches a pattern.
    #[error("no event matches {pattern:?}")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// A format file does not parse.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: FormatError,
    },
    /// A file holds something unexpected.
    #[error("{}: unexpected content {content:?}", path.display())]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// What was read (cut to 200 bytes).
        content: String,
    },
    /// The clock is not among those `trace_clock` offers.
    #[error("{}: clock {clock:?} is not available (offered: {offered})", path.display())]
    ClockUnavailable {
        /// The `trace_clock` file.
        path: PathBuf,
        /// The clock asked for.
        clock: String,
        /// What the file offers.
        offered: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TracefsError + 'a {
    move |source| TracefsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
    sys: Arc<dyn System>,
    mounted_here: bool,
}

impl Tracefs {
    /// Uses the tracefs mounted at `root`.
    pub fn open(sys: Arc<dyn System>, root: impl Into<PathBuf>) -> Result<Self, TracefsError> {
        let root = root.into();
        let is = sys.is_tracefs(&root).map_err(io_err("inspect", &root))?;
        if !is {
            return Err(TracefsError::NotMounted { tried: vec![root] });
        }
        Ok(Self {
            root,
            sys,
            mounted_here: false,
        })
    }

    /// Finds a mounted tracefs at [`DEFAULT_MOUNT`] or [`DEBUGFS_MOUNT`].
    pub fn find(sys: Arc<dyn System>) -> Result<Self, TracefsError> {
        let tried: Vec<PathBuf> = [DEFAULT_MOUNT, DEBUGFS_MOUNT]
            .into_iter()
            .map(PathBuf::from)
            .collect();
        for root in &tried {
            // An error here (EACCES on debugfs, say) just means "not there".
            if sys.is_tracefs(root).unwrap_or(false) {
                return Ok(Self {
                    root: root.clone(),
                    sys,
                    mounted_here: false,
                });
            }
        }
        Err(TracefsError::NotMounted { tried })
    }

    /// Finds a mounted tracefs, or mounts one at [`DEFAULT_MOUNT`] (root only).
    /// [`Tracefs::mounted_here`] then says so, and [`Tracefs::unmount`] undoes it.
    pub fn find_or_mount(sys: Arc<dyn System>) -> Result<Self, TracefsError> {
        match Self::find(Arc::clone(&sys)) {
            Ok(fs) => Ok(fs),
            Err(TracefsError::NotMounted { .. }) => {
                let root = PathBuf::from(DEFAULT_MOUNT);
                sys.mount_tracefs(&root)
                    .map_err(io_err("mount tracefs on", &root))?;
                Ok(Self {
                    root,
                    sys,
                    mounted_here: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether this value mounted the tracefs it uses.
    pub fn mounted_here(&self) -> bool {
        self.mounted_here
    }

    /// Unmounts tracefs if [`Tracefs::find_or_mount`] mounted it; does nothing otherwise.
    pub fn unmount(self) -> Result<(), TracefsError> {
        if self.mounted_here {
            self.sys
                .unmount(&self.root)
                .map_err(io_err("unmount", &self.root))?;
        }
        Ok(())
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The system operations in use.
    pub fn system(&self) -> &Arc<dyn System> {
        &self.sys
    }

    fn read_string(&self, path: &Path) -> Result<String, TracefsError> {
        read_string(&*self.sys, path)
    }

    /// Every event the kernel offers, from `available_events`.
    pub fn available_events(&self) -> Result<Vec<EventName>, TracefsError> {
        let path = self.root.join("available_events");
        let text = self.read_string(&path)?;
        Ok(text.lines().filter_map(EventName::parse).collect())
    }

    /// The page layout, from `events/header_page`, after checking `events/header_event`
    /// describes the event header the page parser decodes.
    pub fn page_layout(&self) -> Result<PageLayout, TracefsError> {
        page_layout(&*self.sys, &self.root.join("events"))
    }

    /// The format of one event, from `events/<system>/<event>/format`.
    pub fn event_format(&self, name: &EventName) -> Result<EventFormat, TracefsError> {
        event_format(&*self.sys, &self.root.join("events"), name)
    }

    /// Creates the instance `drtrace-<id>`.
    ///
    /// The new instance records nothing until events are enabled; configure it with
    /// [`Instance::configure`].
    pub fn create_instance(&self, id: &str) -> Result<Instance, TracefsError> {
        let instance = self.instance(id)?;
        self.sys
            .create_dir(&instance.path)
            .map_err(io_err("create instance", &instance.path))?;
        Ok(instance)
    }

    /// The (existing or not) instance `drtrace-<id>`, without touching the file system.
    pub fn instance(&self, id: &str) -> Result<Instance, TracefsError> {
        validate_instance_id(id)?;
        let name = format!("{INSTANCE_PREFIX}{id}");
        Ok(Instance {
            path: self.root.join("instances").join(&name),
            name,
            root: self.root.clone(),
            sys: Arc::clone(&self.sys),
        })
    }

    /// The ids of the existing `drtrace-*` instances (the part after the prefix), sorted.
    pub fn list_instances(&self) -> Result<Vec<String>, TracefsError> {
        let dir = self.root.join("instances");
        let names = self.sys.list_dir(&dir).map_err(io_err("list", &dir))?;
        let mut ids: Vec<String> = names
            .into_iter()
            .filter_map(|n| n.strip_prefix(INSTANCE_PREFIX).map(str::to_owned))
            .filter(|id| validate_instance_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes every `drtrace-*` instance whose id `keep` rejects (stale ones, left by a
    /// broker that died). Returns the ids removed and the failures.
    pub fn remove_stale_instances(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(Vec<String>, Vec<TracefsError>), TracefsError> {
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for id in self.list_instances()? {
            if keep(&id) {
                continue;
            }
            match self.instance(&id).and_then(|i| i.remove()) {
                Ok(()) => removed.push(id),
                Err(e) => failed.push(e),
            }
        }
        Ok((removed, failed))
    }
}

fn read_string(sys: &dyn System, path: &Path) -> Result<String, TracefsError> {
    let bytes = sys.read(path).map_err(io_err("read", path))?;
    String::from_utf8(bytes).map_err(|e| TracefsError::Unexpected {
        path: path.to_owned(),
        content: String::from_utf8_lossy(&e.into_bytes()[..])
            .chars()
            .take(200)
            .collect(),
    })
}

fn page_layout(sys: &dyn System, events: &Path) -> Result<PageLayout, TracefsError> {
    let event_path = events.join("header_event");
    let text = read_string(sys, &event_path)?;
    check_header_event(&text).map_err(|source| TracefsError::Format {
        path: event_path,
        source,
    })?;
    let path = events.join("header_page");
    let text = read_string(sys, &path)?;
    HeaderPage::parse(&text)
        .and_then(|h| h.layout())
        .map_err(|source| TracefsError::Format { path, source })
}

fn event_format(
    sys: &dyn System,
    events: &Path,
    name: &EventName,
) -> Result<EventFormat, TracefsError> {
    for part in [&name.system, &name.event] {
        if !is_name(part) {
            return Err(TracefsError::BadPattern {
                pattern: name.to_string(),
                reason: "an event name part is not a plain name",
            });
        }
    }
    let path = events.join(&name.system).join(&name.event).join("format");
    let text = read_string(sys, &path)?;
    EventFormat::parse(&name.system, &text).map_err(|source| TracefsError::Format { path, source })
}

/// A plain tracefs name: no path separators, not `.` or `..`, no wildcard.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn validate_instance_id(id: &str) -> Result<(), TracefsError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(TracefsError::BadInstanceId(id.to_owned()));
    }
    Ok(())
}

/// How to set an instance up; see [`Instance::configure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// `trace_clock`; [`MONO_CLOCK`] so timestamps share CLOCK_MONOTONIC with userspace.
    pub clock: String,
    /// `buffer_size_kb`: the size of each CPU's buffer, if it should change.
    pub buffer_size_kb: Option<u64>,
    /// `buffer_percent`: how full a CPU buffer gets before readers are woken (50 wakes
    /// them at half full; 0 on any data).
    pub buffer_percent: Option<u32>,
    /// `options/overwrite`: overwrite the oldest events when full (flight recorder) instead
    /// of dropping new ones (the default here, like LTTng's discard mode).
    pub overwrite: bool,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            clock: MONO_CLOCK.into(),
            buffer_size_kb: None,
            buffer_percent: Some(50),
            overwrite: false,
        }
    }
}

/// The per-CPU counters of `per_cpu/cpuN/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStats {
    /// Events in the buffer, not read yet.
    pub entries: u64,
    /// Events overwritten (overwrite mode).
    pub overrun: u64,
    /// Events lost because the writer wrapped onto a page still being committed.
    pub commit_overrun: u64,
    /// Bytes in the buffer.
    pub bytes: u64,
    /// Timestamp of the oldest event in the buffer, in nanoseconds (microsecond precision).
    pub oldest_event_ts: Option<u64>,
    /// The clock's current value, in nanoseconds (microsecond precision).
    pub now_ts: Option<u64>,
    /// Events dropped because the buffer was full (discard mode).
    pub dropped_events: u64,
    /// Events read so far.
    pub read_events: u64,
}

impl CpuStats {
    /// Parses a `stats` file.
    ///
    /// ```
    /// use drtrace_ftrace::tracefs::CpuStats;
    /// let s = CpuStats::parse("entries: 3\noverrun: 1\ncommit overrun: 0\nbytes: 96\n\
    ///     oldest event ts:  2250.907915\nnow ts:  2251.000001\ndropped events: 2\n\
    ///     read events: 10\n").unwrap();
    /// assert_eq!((s.entries, s.overrun, s.dropped_events, s.read_events), (3, 1, 2, 10));
    /// assert_eq!(s.oldest_event_ts, Some(2_250_907_915_000));
    /// ```
    pub fn parse(text: &str) -> Option<Self> {
        let mut s = Self::default();
        let mut seen = false;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let slot = match key.trim() {
                "entries" => &mut s.entries,
                "overrun" => &mut s.overrun,
                "commit overrun" => &mut s.commit_overrun,
                "bytes" => &mut s.bytes,
                "dropped events" => &mut s.dropped_events,
                "read events" => &mut s.read_events,
                "oldest event ts" => {
                    s.oldest_event_ts = parse_seconds(value);
                    continue;
                }
                "now ts" => {
                    s.now_ts = parse_seconds(value);
                    continue;
                }
                _ => continue,
            };
            *slot = value.parse().ok()?;
            seen = true;
        }
        seen.then_some(s)
    }

    /// Events the kernel lost in this buffer: overwritten, lost to commit overruns, and
    /// dropped when full.
    pub fn lost(&self) -> u64 {
        self.overrun
            .saturating_add(self.commit_overrun)
            .saturating_add(self.dropped_events)
    }
}

/// `12.345678` seconds → nanoseconds.
fn parse_seconds(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.trim().parse().ok()?;
    let frac = frac.trim();
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ns: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..9 {
        ns *= 10;
    }
    secs.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// An event pattern: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPattern {
    /// Glob over the system name.
    pub system: String,
    /// Glob over the event name.
    pub event: String,
}

impl EventPattern {
    /// Parses `system:event`, `event` or `*`.
    ///
    /// ```
    /// use drtrace_ftrace::format::EventName;
    /// use drtrace_ftrace::tracefs::EventPattern;
    /// let p = EventPattern::parse("syscalls:sys_enter_*").unwrap();
    /// assert!(p.matches(&EventName::new("syscalls", "sys_enter_openat")));
    /// assert!(!p.matches(&EventName::new("syscalls", "sys_exit_openat")));
    /// assert!(EventPattern::parse("*").unwrap().matches(&EventName::new("a", "b")));
    /// ```
    pub fn parse(pattern: &str) -> Result<Self, TracefsError> {
        let bad = |reason| TracefsError::BadPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        let p = pattern.trim();
        let (system, event) = match p.split_once(':') {
            Some((s, e)) => (s, e),
            None => ("*", p),
        };
        for part in [system, event] {
            if part.is_empty() {
                return Err(bad("a part is empty"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*' | b'?'))
            {
                return Err(bad(
                    "only letters, digits, '_', '-', '.', '*' and '?' are allowed",
                ));
            }
        }
        Ok(Self {
            system: system.to_owned(),
            event: event.to_owned(),
        })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &EventName) -> bool {
        glob(self.system.as_bytes(), name.system.as_bytes())
            && glob(self.event.as_bytes(), name.event.as_bytes())
    }

    fn is_everything(&self) -> bool {
        self.system == "*" && self.event == "*"
    }

    fn whole_system(&self) -> Option<&str> {
        (self.event == "*" && is_name(&self.system)).then_some(self.system.as_str())
    }
}

/// `*` matches any run, `?` one byte. Iterative with one backtrack point: linear in
/// practice and never recursive.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// An ftrace instance, `instances/drtrace-<id>`.
#[derive(Debug, Clone)]
pub struct Instance {
    name: String,
    path: PathBuf,
    root: PathBuf,
    sys: Arc<dyn System>,
}

impl Instance {
    /// `drtrace-<id>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, rel: &str, value: &str) -> Result<(), TracefsError> {
        let path = self.path.join(rel);
        self.sys
            .write(&path, value.as_bytes())
            .map_err(io_err("write", &path))
    }

    fn read(&self, rel: &str) -> Result<String, TracefsError> {
        read_string(&*self.sys, &self.path.join(rel))
    }

    /// Applies `config`: clock, buffer size, wake-up threshold, overwrite mode.
    pub fn configure(&self, config: &InstanceConfig) -> Result<(), TracefsError> {
        self.set_clock(&config.clock)?;
        if let Some(kb) = config.buffer_size_kb {
            self.write("buffer_size_kb", &kb.to_string())?;
        }
        if let Some(pct) = config.buffer_percent {
            self.write("buffer_percent", &pct.min(100).to_string())?;
        }
        self.write(
            "options/overwrite",
            if config.overwrite { "1" } else { "0" },
        )
    }

    /// Sets `trace_clock`, checking first that the kernel offers `clock` and afterwards
    /// that it took.
    pub fn set_clock(&self, clock: &str) -> Result<(), TracefsError> {
        let path = self.path.join("trace_clock");
        let offered = self.read("trace_clock")?;
        let names: Vec<&str> = offered
            .split_whitespace()
            .map(|c| c.trim_matches(|ch| ch == '[' || ch == ']'))
            .collect();
        if !names.contains(&clock) {
            return Err(TracefsError::ClockUnavailable {
                path,
                clock: clock.to_owned(),
                offered: offered.trim().to_owned(),
            });
        }
        self.write("trace_clock", clock)?;
        let now = self.read("trace_clock")?;
        if !now.split_whitespace().any(|c| c == format!("[{clock}]")) {
            return Err(TracefsError::Unexpected {
                path,
                content: now.trim().to_owned(),
            });
        }
        Ok(())
    }

    /// The clock `trace_clock` has selected.
    pub fn clock(&self) -> Result<String, TracefsError> {
        let text = self.read("trace_clock")?;
        text.split_whitespace()
            .find_map(|c| c.strip_prefix('[').and_then(|c| c.strip_suffix(']')))
            .map(str::to_owned)
            .ok_or_else(|| TracefsError::Unexpected {
                path: self.path.join("trace_clock"),
                content: text.trim().to_owned(),
            })
    }

    /// `buffer_size_kb`: each CPU buffer's size.
    pub fn set_buffer_size_kb(&self, kb: u64) -> Result<(), TracefsError> {
        self.write("buffer_size_kb", &kb.to_string())
    }

    /// `buffer_percent`: how full a buffer gets before readers are woken.
    pub fn set_buffer_percent(&self, percent: u32) -> Result<(), TracefsError> {
        self.write("buffer_percent", &percent.min(100).to_string())
    }

    /// `tracing_on`: start or stop recording into the instance's buffers.
    pub fn set_tracing_on(&self, on: bool) -> Result<(), TracefsError> {
        self.write("tracing_on", if on { "1" } else { "0" })
    }

    /// Whether the instance is recording.
    pub fn tracing_on(&self) -> Result<bool, TracefsError> {
        Ok(self.read("tracing_on")?.trim() == "1")
    }

    /// Every event the kernel offers (the top-level `available_events`; instances share
    /// it).
    pub fn available_events(&self) -> Result<Vec<EventName>, TracefsError> {
        let path = self.root.join("available_events");
        Ok(read_string(&*self.sys, &path)?
            .lines()
            .filter_map(EventName::parse)
            .collect())
    }

    /// Enables the events matching `pattern` in this instance; returns them, sorted.
    pub fn enable_events(&self, pattern: &str) -> Result<Vec<EventName>, TracefsError> {
        self.set_events(pattern, true)
    }

    /// Disables the events matching `pattern` in this instance; returns them, sorted.
    pub fn disable_events(&self, pattern: &str) -> Result<Vec<EventName>, TracefsError> {
        self.set_events(pattern, false)
    }

    fn set_events(&self, pattern: &str, on: bool) -> Result<Vec<EventName>, TracefsError> {
        let pat = EventPattern::parse(pattern)?;
        let mut matched: Vec<EventName> = self
            .available_events()?
            .into_iter()
            .filter(|n| pat.matches(n))
            .collect();
        if matched.is_empty() {
            return Err(TracefsError::NoMatch {
                pattern: pattern.to_owned(),
            });
        }
        matched.sort();
        matched.dedup();
        let value = if on { "1" } else { "0" };
        if pat.is_everything() {
            self.write("events/enable", value)?;
        } else if let Some(system) = pat.whole_system() {
            self.write(&format!("events/{system}/enable"), value)?;
        } else {
            for n in &matched {
                if !is_name(&n.system) || !is_name(&n.event) {
                    continue;
                }
                self.write(&format!("events/{}/{}/enable", n.system, n.event), value)?;
            }
        }
        Ok(matched)
    }

    /// Disables every event of the instance.
    pub fn disable_all_events(&self) -> Result<(), TracefsError> {
        self.write("events/enable", "0")
    }

    /// The events enabled in this instance (its `set_event` file), sorted.
    pub fn enabled_events(&self) -> Result<Vec<EventName>, TracefsError> {
        let mut v: Vec<EventName> = self
            .read("set_event")?
            .lines()
            .filter_map(EventName::parse)
            .collect();
        v.sort();
        Ok(v)
    }

    /// The format of `name`, from this instance's `events` directory.
    pub fn event_format(&self, name: &EventName) -> Result<EventFormat, TracefsError> {
        event_format(&*self.sys, &self.path.join("events"), name)
    }

    /// The formats of every enabled event.
    pub fn enabled_formats(&self) -> Result<Vec<EventFormat>, TracefsError> {
        self.enabled_events()?
            .iter()
            .map(|n| self.event_format(n))
            .collect()
    }

    /// The page layout of this instance's buffers.
    pub fn page_layout(&self) -> Result<PageLayout, TracefsError> {
        page_layout(&*self.sys, &self.path.join("events"))
    }

    /// The CPUs that have a buffer (`per_cpu/cpuN`), sorted.
    pub fn cpus(&self) -> Result<Vec<u32>, TracefsError> {
        let dir = self.path.join("per_cpu");
        let mut cpus: Vec<u32> = self
            .sys
            .list_dir(&dir)
            .map_err(io_err("list", &dir))?
            .iter()
            .filter_map(|n| n.strip_prefix("cpu")?.parse().ok())
            .collect();
        cpus.sort_unstable();
        Ok(cpus)
    }

    /// The counters of CPU `cpu`'s buffer.
    pub fn cpu_stats(&self, cpu: u32) -> Result<CpuStats, TracefsError> {
        let path = self.path.join(format!("per_cpu/cpu{cpu}/stats"));
        let text = read_string(&*self.sys, &path)?;
        CpuStats::parse(&text).ok_or_else(|| TracefsError::Unexpected {
            path,
            content: text.chars().take(200).collect(),
        })
    }

    /// The path of CPU `cpu`'s `trace_pipe_raw`, for [`crate::reader::CpuReader::open`].
    pub fn trace_pipe_raw(&self, cpu: u32) -> PathBuf {
        self.path.join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"))
    }

    /// Stops recording, disables every event and removes the instance with its buffers.
    ///
    /// Fails with EBUSY while a file of the instance is open (a reader still running).
    pub fn remove(&self) -> Result<(), TracefsError> {
        // Best effort: an instance half created or half removed may lack these files, and
        // the rmdir below is what counts.
        let _ = self.set_tracing_on(false);
        let _ = self.disable_all_events();
        self.sys
            .remove_dir(&self.path)
            .map_err(io_err("remove instance", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSystem;
    use super::*;

    fn fs() -> (Arc<FakeSystem>, Tracefs) {
        let fake = Arc::new(FakeSystem::with_sample_events(2));
        let fs = Tracefs::find(fake.clone()).unwrap();
        (fake, fs)
    }

    #[test]
    fn find_and_mount() {
        let fake = Arc::new(FakeSystem::new(2));
        fake.set_mounted(false);
        let err = Tracefs::find(fake.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing"
        );
        let fs = Tracefs::find_or_mount(fake.clone()).unwrap();
        assert!(fs.mounted_here());
        assert!(fake.is_mounted());
        // Found, not mounted, the second time: unmounting it would pull it from others.
        let again = Tracefs::find_or_mount(fake.clone()).unwrap();
        assert!(!again.mounted_here());
        again.unmount().unwrap();
        assert!(fake.is_mounted());
        fs.unmount().unwrap();
        assert!(!fake.is_mounted());
        assert!(matches!(
            Tracefs::open(fake.clone(), "/sys/kernel/tracing"),
            Err(TracefsError::NotMounted { .. })
        ));
    }

    #[test]
    fn mount_failure_names_the_path() {
        let fake = Arc::new(FakeSystem::new(1));
        fake.set_mounted(false);
        fake.fail_mount(libc::EPERM);
        let err = Tracefs::find_or_mount(fake).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot mount tracefs on /sys/kernel/tracing: Operation not permitted"),
            "{err}"
        );
        assert!(err.contains("os error 1"), "{err}");
    }

    #[test]
    fn instance_lifecycle() {
        let (fake, fs) = fs();
        let inst = fs.create_instance("s1").unwrap();
        assert_eq!(inst.name(), "drtrace-s1");
        assert_eq!(
            inst.path(),
            Path::new("/sys/kernel/tracing/instances/drtrace-s1")
        );
        inst.configure(&InstanceConfig {
            buffer_size_kb: Some(2048),
            buffer_percent: Some(50),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(inst.clock().unwrap(), "mono");
        assert_eq!(fake.file(&inst.path().join("buffer_size_kb")), "2048");
        assert_eq!(fake.file(&inst.path().join("buffer_percent")), "50");
        assert_eq!(fake.file(&inst.path().join("options/overwrite")), "0");
        assert_eq!(inst.cpus().unwrap(), [0, 1]);
        assert_eq!(inst.cpu_stats(1).unwrap().now_ts, Some(100_000_000_000));
        assert_eq!(
            inst.trace_pipe_raw(1),
            Path::new("/sys/kernel/tracing/instances/drtrace-s1/per_cpu/cpu1/trace_pipe_raw")
        );
        assert_eq!(inst.page_layout().unwrap(), PageLayout::DEFAULT_64);
        assert_eq!(fs.list_instances().unwrap(), ["s1"]);
        // Existing again: the kernel's EEXIST, with the path.
        let err = fs.create_instance("s1").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "cannot create instance /sys/kernel/tracing/instances/drtrace-s1: File exists"
            ),
            "{err}"
        );
        inst.set_tracing_on(true).unwrap();
        inst.enable_events("sched:*").unwrap();
        inst.remove().unwrap();
        assert!(fs.list_instances().unwrap().is_empty());
        fake.assert_no_forbidden_access();
    }

    #[test]
    fn remove_while_busy_fails_with_ebusy() {
        let (fake, fs) = fs();
        let inst = fs.create_instance("busy").unwrap();
        fake.set_busy(inst.path(), true);
        let err = inst.remove().unwrap_err();
        assert!(
            matches!(&err, TracefsError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
            "{err}"
        );
        fake.set_busy(inst.path(), false);
        inst.remove().unwrap();
    }

    #[test]
    fn events_by_name_and_wildcard() {
        let (fake, fs) = fs();
        let inst = fs.create_instance("ev").unwrap();
        let got = inst.enable_events("sched:sched_switch").unwrap();
        assert_eq!(got, [EventName::new("sched", "sched_switch")]);
        assert_eq!(inst.enabled_events().unwrap(), got);
        let got = inst.enable_events("syscalls:sys_enter_*").unwrap();
        assert_eq!(
            got,
            [
                EventName::new("syscalls", "sys_enter_openat"),
                EventName::new("syscalls", "sys_enter_write")
            ]
        );
        assert_eq!(inst.enabled_events().unwrap().len(), 3);
        inst.disable_events("syscalls:*").unwrap();
        assert_eq!(
            fake.last_write().unwrap(),
            inst.path().join("events/syscalls/enable")
        );
        assert_eq!(inst.enabled_events().unwrap().len(), 1);
        // A bare event name is looked up in every system.
        inst.enable_events("sched_wakeup").unwrap();
        assert_eq!(inst.enabled_events().unwrap().len(), 2);
        let all = inst.enable_events("*").unwrap();
        assert_eq!(
            fake.last_write().unwrap(),
            inst.path().join("events/enable")
        );
        assert_eq!(inst.enabled_events().unwrap(), all);
        inst.disable_all_events().unwrap();
        assert!(inst.enabled_events().unwrap().is_empty());
        assert!(matches!(
            inst.enable_events("nope:*"),
            Err(TracefsError::NoMatch { .. })
        ));
        assert!(matches!(
            inst.enable_events("../x:y"),
            Err(TracefsError::BadPattern { .. })
        ));
        assert!(matches!(
            inst.enable_events("sched:"),
            Err(TracefsError::BadPattern { .. })
        ));
        let formats = {
            inst.enable_events("sched:*").unwrap();
            inst.enabled_formats().unwrap()
        };
        assert!(
            formats
                .iter()
                .any(|f| f.name == "sched_switch" && f.id == 372)
        );
        fake.assert_no_forbidden_access();
    }

    #[test]
    fn clock_must_be_offered() {
        let (_fake, fs) = fs();
        let inst = fs.create_instance("clk").unwrap();
        let err = inst.set_clock("sundial").unwrap_err().to_string();
        assert!(err.contains("clock \"sundial\" is not available"), "{err}");
        inst.set_clock("global").unwrap();
        assert_eq!(inst.clock().unwrap(), "global");
    }

    #[test]
    fn instance_ids_are_validated() {
        let (_fake, fs) = fs();
        for bad in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(
                matches!(fs.instance(bad), Err(TracefsError::BadInstanceId(_))),
                "{bad:?}"
            );
        }
        assert!(fs.instance("ok-1_2").is_ok());
    }

    #[test]
    fn stale_instances_are_removed_and_others_kept() {
        let (fake, fs) = fs();
        fs.create_instance("old").unwrap();
        fs.create_instance("live").unwrap();
        fake.create_dir(Path::new("/sys/kernel/tracing/instances/someone-else"))
            .unwrap();
        let (removed, failed) = fs.remove_stale_instances(|id| id == "live").unwrap();
        assert_eq!(removed, ["old"]);
        assert!(failed.is_empty());
        assert_eq!(fs.list_instances().unwrap(), ["live"]);
        assert!(
            fake.list_dir(Path::new("/sys/kernel/tracing/instances"))
                .unwrap()
                .contains(&"someone-else".to_owned())
        );
    }

    #[test]
    fn available_events_and_formats() {
        let (_fake, fs) = fs();
        let events = fs.available_events().unwrap();
        assert!(events.contains(&EventName::new("sched", "sched_switch")));
        let f = fs
            .event_format(&EventName::new("sched", "sched_process_exec"))
            .unwrap();
        assert_eq!(f.fields[0].name, "filename");
        let err = fs
            .event_format(&EventName::new("sched", "nope"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cannot read /sys/kernel/tracing/events/sched/nope/format: No such file or directory (os error 2)"
        );
        assert!(fs.event_format(&EventName::new("..", "x")).is_err());
        assert_eq!(fs.page_layout().unwrap(), PageLayout::DEFAULT_64);
    }

    #[test]
    fn stats_parsing() {
        let text = "entries: 5\noverrun: 7\ncommit overrun: 1\nbytes: 160\n\
                    oldest event ts:     0.000000\nnow ts:  2250.907915\n\
                    dropped events: 2\nread events: 9\n";
        let s = CpuStats::parse(text).unwrap();
        assert_eq!(
            s,
            CpuStats {
                entries: 5,
                overrun: 7,
                commit_overrun: 1,
                bytes: 160,
                oldest_event_ts: Some(0),
                now_ts: Some(2_250_907_915_000),
                dropped_events: 2,
                read_events: 9,
            }
        );
        assert_eq!(s.lost(), 10);
        assert_eq!(CpuStats::parse("garbage"), None);
        assert_eq!(CpuStats::parse("entries: x"), None);
        assert_eq!(parse_seconds("1.5"), Some(1_500_000_000));
        assert_eq!(parse_seconds("3"), Some(3_000_000_000));
        assert_eq!(parse_seconds("1.0000000001"), None);
    }

    #[test]
    fn globbing() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"*_enter_*", b"sys_enter_openat"));
        assert!(!glob(b"sys_enter_*", b"sys_exit_openat"));
        assert!(glob(b"**a", b"bba"));
        assert!(!glob(b"abc", b"abcd"));
        assert!(glob(b"a*b*c", b"aXbYbZc"));
    }
}
