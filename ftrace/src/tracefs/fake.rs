//! An in-memory tracefs for tests: the [`System`] test double.
//!
//! It mimics what the code above it relies on: instances appear with their files on
//! `mkdir instances/NAME` and disappear on `rmdir` (EBUSY while marked busy), `trace_clock`
//! takes only offered clocks and shows the selected one in brackets, `enable` files of the
//! whole tree, of a system and of an event cascade like the kernel's, `set_event` and
//! `available_events` are computed, and bad values get EINVAL. The function-tracer files
//! exist but fail with EPERM, like on the machines drtrace targets, and every access to
//! them is recorded so tests can assert there was none.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{DEBUGFS_MOUNT, DEFAULT_MOUNT, System};
use crate::format::EventName;

/// Clocks the fake `trace_clock` offers, as this machine's kernel does.
pub const CLOCKS: [&str; 9] = [
    "local", "global", "counter", "uptime", "perf", "mono", "mono_raw", "boot", "tai",
];

/// `events/header_page` of a 64-bit kernel with 4 KiB pages.
pub const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

/// `events/header_event`.
pub const HEADER_EVENT: &str = "# compressed entry header
\ttype_len    :    5 bits
\ttime_delta  :   27 bits
\tarray       :   32 bits

\tpadding     : type == 29
\ttime_extend : type == 30
\ttime_stamp : type == 31
\tdata max type_len  == 28
";

const COMMON: &str = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
";

/// Sample events (system, name, id, fields), with this machine's layouts.
const SAMPLES: [(&str, &str, u32, &str); 6] = [
    (
        "sched",
        "sched_switch",
        372,
        "\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;
",
    ),
    (
        "sched",
        "sched_wakeup",
        374,
        "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:int target_cpu;\toffset:32;\tsize:4;\tsigned:1;
",
    ),
    (
        "sched",
        "sched_process_exec",
        365,
        "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;
",
    ),
    (
        "syscalls",
        "sys_enter_openat",
        782,
        "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;
",
    ),
    (
        "syscalls",
        "sys_enter_write",
        836,
        "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;
",
    ),
    (
        "syscalls",
        "sys_exit_write",
        839,
        "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;
",
    ),
];

/// A format file's text for an event with `fields` (format lines, after the common ones).
pub fn format_text(name: &str, id: u32, fields: &str) -> String {
    format!("name: {name}\nID: {id}\nformat:\n{COMMON}\n{fields}\nprint fmt: \"\"\n")
}

/// Names whose access the fake refuses with EPERM and records: the function tracer's.
fn is_forbidden(name: &str) -> bool {
    name.starts_with("set_ftrace")
        || name == "ftrace_enabled"
        || name == "available_filter_functions"
        || name == "function_profile_enabled"
}

#[derive(Debug, Default)]
struct State {
    mounted: bool,
    mount_errno: Option<i32>,
    files: BTreeMap<PathBuf, String>,
    dirs: BTreeSet<PathBuf>,
    events: Vec<(EventName, String)>,
    ncpus: u32,
    busy: BTreeSet<PathBuf>,
    writes: Vec<PathBuf>,
    forbidden: Vec<PathBuf>,
}

/// The in-memory tracefs; see the module docs.
#[derive(Debug)]
pub struct FakeSystem {
    root: PathBuf,
    state: Mutex<State>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FakeSystem {
    /// A mounted tracefs at [`DEFAULT_MOUNT`] with `ncpus` CPUs and no events.
    pub fn new(ncpus: u32) -> Self {
        let fake = Self {
            root: PathBuf::from(DEFAULT_MOUNT),
            state: Mutex::new(State {
                mounted: true,
                ncpus,
                ..State::default()
            }),
        };
        {
            let mut s = fake.lock();
            let root = fake.root.clone();
            s.dirs.insert(root.clone());
            s.dirs.insert(root.join("instances"));
            s.files.insert(root.join("available_events"), String::new());
            populate(&mut s, &root);
        }
        fake
    }

    /// [`FakeSystem::new`] with sample events: `sched:sched_switch`, `sched:sched_wakeup`,
    /// `sched:sched_process_exec`, `syscalls:sys_enter_openat`, `syscalls:sys_enter_write`,
    /// `syscalls:sys_exit_write`, with this machine's formats and ids.
    pub fn with_sample_events(ncpus: u32) -> Self {
        let fake = Self::new(ncpus);
        for (system, name, id, fields) in SAMPLES {
            fake.add_event(system, name, &format_text(name, id, fields));
        }
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent enough state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an event to the top level and every instance.
    pub fn add_event(&self, system: &str, name: &str, format: &str) {
        let mut s = self.lock();
        s.events
            .push((EventName::new(system, name), format.to_owned()));
        let mut bases = vec![self.root.clone()];
        bases.extend(self.instance_dirs(&s));
        for base in bases {
            add_event_files(&mut s, &base, system, name, format);
        }
    }

    fn instance_dirs(&self, s: &State) -> Vec<PathBuf> {
        let instances = self.root.join("instances");
        s.dirs
            .iter()
            .filter(|d| d.parent() == Some(&instances))
            .cloned()
            .collect()
    }

    /// Mounts or unmounts the fake tracefs (its content stays, as the kernel's does).
    pub fn set_mounted(&self, mounted: bool) {
        self.lock().mounted = mounted;
    }

    /// Whether the fake tracefs is mounted.
    pub fn is_mounted(&self) -> bool {
        self.lock().mounted
    }

    /// Makes the next mounts fail with `code`.
    pub fn fail_mount(&self, code: i32) {
        self.lock().mount_errno = Some(code);
    }

    /// Marks an instance busy (a file of it open): rmdir fails with EBUSY.
    pub fn set_busy(&self, instance: &Path, busy: bool) {
        let mut s = self.lock();
        if busy {
            s.busy.insert(instance.to_owned());
        } else {
            s.busy.remove(instance);
        }
    }

    /// A file's content, trimmed (empty if absent).
    pub fn file(&self, path: &Path) -> String {
        self.lock()
            .files
            .get(path)
            .map(|c| c.trim().to_owned())
            .unwrap_or_default()
    }

    /// Replaces a file's content (e.g. a CPU's `stats`), creating it if needed.
    pub fn set_file(&self, path: &Path, content: &str) {
        self.lock()
            .files
            .insert(path.to_owned(), content.to_owned());
    }

    /// The path of the last successful write.
    pub fn last_write(&self) -> Option<PathBuf> {
        self.lock().writes.last().cloned()
    }

    /// Every successful write, in order.
    pub fn writes(&self) -> Vec<PathBuf> {
        self.lock().writes.clone()
    }

    /// Panics if any function-tracer file was accessed.
    pub fn assert_no_forbidden_access(&self) {
        let s = self.lock();
        assert!(
            s.forbidden.is_empty(),
            "function-tracer files were accessed: {:?}",
            s.forbidden
        );
    }

    /// Checks `path` is visible: under the mounted root, not forbidden.
    fn visible(&self, s: &mut State, path: &Path) -> io::Result<()> {
        if !path.starts_with(&self.root) || !s.mounted {
            return Err(errno(libc::ENOENT));
        }
        if path
            .file_name()
            .is_some_and(|n| is_forbidden(&n.to_string_lossy()))
        {
            s.forbidden.push(path.to_owned());
            return Err(errno(libc::EPERM));
        }
        Ok(())
    }

    /// The directory `path` belongs to: the root or an instance's.
    fn base_of(&self, path: &Path) -> PathBuf {
        let instances = self.root.join("instances");
        if let Ok(rel) = path.strip_prefix(&instances) {
            if let Some(first) = rel.components().next() {
                return instances.join(first);
            }
        }
        self.root.clone()
    }

    fn enabled_events(&self, s: &State, base: &Path) -> String {
        let mut out = String::new();
        for (name, _) in &s.events {
            let enable = base
                .join("events")
                .join(&name.system)
                .join(&name.event)
                .join("enable");
            if s.files.get(&enable).is_some_and(|v| v.trim() == "1") {
                out.push_str(&format!("{name}\n"));
            }
        }
        out
    }
}

fn populate(s: &mut State, base: &Path) {
    let files: [(&str, String); 9] = [
        ("trace_clock", clock_text("local")),
        ("buffer_size_kb", "1408".into()),
        ("buffer_percent", "50".into()),
        ("tracing_on", "1".into()),
        ("options/overwrite", "1".into()),
        ("events/enable", "0".into()),
        ("events/header_page", HEADER_PAGE.into()),
        ("events/header_event", HEADER_EVENT.into()),
        ("set_ftrace_filter", String::new()),
    ];
    for dir in ["options", "events", "per_cpu"] {
        s.dirs.insert(base.join(dir));
    }
    for (rel, content) in files {
        s.files.insert(base.join(rel), content);
    }
    s.files.insert(base.join("set_ftrace_pid"), String::new());
    s.files.insert(base.join("set_event"), String::new());
    for cpu in 0..s.ncpus {
        let dir = base.join(format!("per_cpu/cpu{cpu}"));
        s.dirs.insert(dir.clone());
        s.files.insert(
            dir.join("stats"),
            "entries: 0\noverrun: 0\ncommit overrun: 0\nbytes: 0\n\
             oldest event ts:     0.000000\nnow ts:  100.000000\n\
             dropped events: 0\nread events: 0\n"
                .into(),
        );
        s.files.insert(dir.join("trace_pipe_raw"), String::new());
    }
    let events: Vec<(EventName, String)> = s.events.clone();
    for (name, format) in events {
        add_event_files(s, base, &name.system, &name.event, &format);
    }
}

fn add_event_files(s: &mut State, base: &Path, system: &str, name: &str, format: &str) {
    let sys_dir = base.join("events").join(system);
    let dir = sys_dir.join(name);
    s.dirs.insert(sys_dir.clone());
    s.dirs.insert(dir.clone());
    s.files
        .entry(sys_dir.join("enable"))
        .or_insert_with(|| "0".into());
    s.files.insert(dir.join("enable"), "0".into());
    s.files.insert(dir.join("format"), format.to_owned());
}

fn clock_text(selected: &str) -> String {
    let mut out: Vec<String> = CLOCKS
        .iter()
        .map(|c| {
            if *c == selected {
                format!("[{c}]")
            } else {
                (*c).to_owned()
            }
        })
        .collect();
    out.push("x86-tsc".into());
    out.join(" ") + "\n"
}

fn parse_flag(value: &str) -> io::Result<&'static str> {
    match value.trim() {
        "0" => Ok("0"),
        "1" => Ok("1"),
        _ => Err(errno(libc::EINVAL)),
    }
}

impl System for FakeSystem {
    fn is_tracefs(&self, path: &Path) -> io::Result<bool> {
        let s = self.lock();
        Ok(s.mounted && path == self.root)
    }

    fn mount_tracefs(&self, target: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if let Some(code) = s.mount_errno {
            return Err(errno(code));
        }
        if target != self.root && target != Path::new(DEBUGFS_MOUNT) {
            return Err(errno(libc::ENOENT));
        }
        if s.mounted {
            return Err(errno(libc::EBUSY));
        }
        s.mounted = true;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if target != self.root || !s.mounted {
            return Err(errno(libc::EINVAL));
        }
        s.mounted = false;
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        self.visible(&mut s, path)?;
        if s.dirs.contains(path) {
            return Err(errno(libc::EISDIR));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some("available_events") if path.parent() == Some(&self.root) => Ok(s
                .events
                .iter()
                .map(|(n, _)| format!("{n}\n"))
                .collect::<String>()
                .into_bytes()),
            Some("set_event") => Ok(self.enabled_events(&s, &self.base_of(path)).into_bytes()),
            _ => s
                .files
                .get(path)
                .map(|c| c.clone().into_bytes())
                .ok_or_else(|| errno(libc::ENOENT)),
        }
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        self.visible(&mut s, path)?;
        if s.dirs.contains(path) {
            return Err(errno(libc::EISDIR));
        }
        if !s.files.contains_key(path) {
            return Err(errno(libc::ENOENT));
        }
        let value = std::str::from_utf8(data).map_err(|_| errno(libc::EINVAL))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stored = match name.as_str() {
            "trace_clock" => {
                let clock = value.trim();
                if !CLOCKS.contains(&clock) {
                    return Err(errno(libc::EINVAL));
                }
                clock_text(clock)
            }
            "buffer_size_kb" => match value.trim().parse::<u64>() {
                Ok(v) if v > 0 => v.to_string(),
                _ => return Err(errno(libc::EINVAL)),
            },
            "buffer_percent" => match value.trim().parse::<u32>() {
                Ok(v) if v <= 100 => v.to_string(),
                _ => return Err(errno(libc::EINVAL)),
            },
            "tracing_on" | "overwrite" => parse_flag(value)?.to_owned(),
            "enable" => {
                let flag = parse_flag(value)?;
                let events = self.base_of(path).join("events");
                let scope = path
                    .parent()
                    .and_then(|p| p.strip_prefix(&events).ok())
                    .map(|rel| rel.components().count())
                    .unwrap_or(0);
                let prefix = path.parent().map(Path::to_path_buf).unwrap_or_default();
                // Cascade like the kernel: the whole tree's or a system's enable file sets
                // every event under it.
                if scope < 2 {
                    let keys: Vec<PathBuf> = s
                        .files
                        .keys()
                        .filter(|k| {
                            k.starts_with(&prefix) && k.file_name().is_some_and(|n| n == "enable")
                        })
                        .cloned()
                        .collect();
                    for k in keys {
                        s.files.insert(k, flag.to_owned());
                    }
                }
                flag.to_owned()
            }
            _ => return Err(errno(libc::EINVAL)),
        };
        s.files.insert(path.to_owned(), stored);
        s.writes.push(path.to_owned());
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.visible(&mut s, path)?;
        if path.parent() != Some(&self.root.join("instances")) {
            return Err(errno(libc::EPERM));
        }
        if s.dirs.contains(path) {
            return Err(errno(libc::EEXIST));
        }
        s.dirs.insert(path.to_owned());
        populate(&mut s, path);
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        self.visible(&mut s, path)?;
        if path.parent() != Some(&self.root.join("instances")) {
            return Err(errno(libc::EPERM));
        }
        if !s.dirs.contains(path) {
            return Err(errno(libc::ENOENT));
        }
        if s.busy.contains(path) {
            return Err(errno(libc::EBUSY));
        }
        s.dirs.retain(|d| !d.starts_with(path));
        s.files.retain(|f, _| !f.starts_with(path));
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        self.visible(&mut s, path)?;
        if !s.dirs.contains(path) {
            return Err(errno(libc::ENOENT));
        }
        let mut names: Vec<String> = s
            .dirs
            .iter()
            .chain(s.files.keys())
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_files_fail_and_are_recorded() {
        let fake = FakeSystem::new(1);
        let err = fake
            .read(Path::new("/sys/kernel/tracing/set_ftrace_filter"))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let caught = std::panic::catch_unwind(|| fake.assert_no_forbidden_access());
        assert!(caught.is_err());
    }

    #[test]
    fn enable_files_cascade() {
        let fake = FakeSystem::with_sample_events(1);
        let root = Path::new(DEFAULT_MOUNT);
        fake.write(&root.join("events/sched/enable"), b"1").unwrap();
        let set = String::from_utf8(fake.read(&root.join("set_event")).unwrap()).unwrap();
        assert_eq!(
            set,
            "sched:sched_switch\nsched:sched_wakeup\nsched:sched_process_exec\n"
        );
        fake.write(&root.join("events/enable"), b"0\n").unwrap();
        assert!(fake.read(&root.join("set_event")).unwrap().is_empty());
        assert_eq!(
            fake.write(&root.join("events/enable"), b"2")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            fake.write(&root.join("no_such_file"), b"1")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn unmounted_hides_everything() {
        let fake = FakeSystem::new(1);
        fake.set_mounted(false);
        assert_eq!(
            fake.read(Path::new("/sys/kernel/tracing/trace_clock"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        assert!(!fake.is_tracefs(Path::new(DEFAULT_MOUNT)).unwrap());
    }
}
