//! The shared harness: real binaries, one numbered temp dir per test, bounded waits, and
//! cleanup of every process and user a test made.
//!
//! - [`TestEnv`]: a temp dir with its own socket (`DRTRACE_SESSIOND_SOCKET`), broker
//!   directory (`DRTRACE_BROKER_DIR`: no test ever touches `/run/drtrace`), traces
//!   (`DRTRACE_HOME`), `HOME` and `XDG_STATE_HOME` (so daemon logs land inside it). On drop
//!   it stops every daemon the test started (by pid, only processes that are our children
//!   or adopted by us), removes the tracefs instances its brokers left, deletes the users
//!   and groups it created and removes the dir. If the test panicked, it prints the daemon
//!   logs first.
//! - [`TestCommand`]: one run of a binary with the test's environment, bounded by a
//!   timeout; a run that ends unexpectedly panics with the command, cwd, environment,
//!   stdout, stderr and daemon logs.
//! - [`TestUser`]: a throwaway Unix user (`useradd`), removed with `userdel -r` on drop.
//! - [`Running`]: a command started with [`TestCommand::spawn`], for tests that act on it
//!   while it runs (signal it, watch it register); killed on drop.
//! - [`babeltrace2`]: the reference CTF reader, required under CI.
//! - [`demo`]: what `drtrace-demo` emits, and checks of its traces read back as text.
//! - [`kernel`]: the root broker in tests (started with its own traces dir, log and group),
//!   throwaway groups ([`kernel::TestGroup`]), tracefs instances, and [`kernel::require_kernel`].
//!
//! Daemons started with `--detach` are reparented to the test process, which is made a
//! child subreaper: so the harness can reap them and knows exactly when they have exited,
//! and a pid it signals can only be a process it started.

pub(crate) mod demo;
pub(crate) mod kernel;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

// Not every test binary checks with babeltrace2.
#[allow(unused_imports)]
pub(crate) use drtrace_ctf::testing::babeltrace2;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// How long one command may run before the test fails (nothing should come near it).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to report start-up.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The binaries under test.
#[derive(Debug)]
pub(crate) struct Bins {
    /// The CLI.
    pub(crate) drtrace: PathBuf,
    /// The per-user session daemon.
    pub(crate) sessiond: PathBuf,
    /// The root broker.
    pub(crate) broker: PathBuf,
    /// A raw protocol peer that skips every client-side check.
    pub(crate) peer: PathBuf,
    /// The demo program: known events in known numbers (see `demo/src/main.rs`).
    pub(crate) demo: PathBuf,
}

/// Finds the binaries: beside this test's `deps/` directory (the workspace's target dir),
/// because Cargo sets `CARGO_BIN_EXE_*` only for binaries of the test's own package.
pub(crate) fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let deps = exe.parent().expect("test binary has a directory");
        let dir = if deps.file_name() == Some(OsStr::new("deps")) {
            deps.parent().expect("deps has a parent")
        } else {
            deps
        };
        let find = |name: &str| {
            let p = dir.join(name);
            assert!(
                p.is_file(),
                "{} not found: build the binaries first with `cargo build --workspace --bins`",
                p.display()
            );
            p
        };
        Bins {
            drtrace: find("drtrace"),
            sessiond: find("drtrace-sessiond"),
            broker: find("drtrace-broker"),
            peer: PathBuf::from(env!("CARGO_BIN_EXE_drtrace-test-peer")),
            demo: find("drtrace-demo"),
        }
    })
}

/// True if this process runs as root.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For tests that need root (and `useradd`): true if they can run. When they cannot, fails
/// the test if `CI` is set (CI runs as root, so this is a broken runner), else prints why
/// the test is skipped and returns false.
pub(crate) fn require_root(test: &str) -> bool {
    let missing = if !is_root() {
        Some("root (to create users and run processes as them)".to_owned())
    } else if !Path::new("/usr/sbin/useradd").exists() && which("useradd").is_none() {
        Some("the useradd command".to_owned())
    } else {
        None
    };
    match missing {
        None => true,
        Some(what) if std::env::var_os("CI").is_some() => {
            panic!("{test} needs {what}, which this CI runner does not provide")
        }
        Some(what) => {
            eprintln!("skipping {test}: it needs {what}");
            false
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

fn make_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// The process state letter of `pid` (`R`, `S`, `T` stopped, `Z` zombie...).
pub(crate) fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// True if `pid` is our child (started by this test process, or adopted by it).
pub(crate) fn is_our_child(pid: i32) -> bool {
    parent_of(pid) == Some(i32::try_from(std::process::id()).unwrap())
}

/// True if `pid` is a live (not zombie) process.
pub(crate) fn is_alive(pid: i32) -> bool {
    matches!(state_of(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Waits for our child `pid` to exit, at most `timeout`; returns its status if it did.
/// The wait runs on a helper thread, so nothing sleeps and nothing blocks past the timeout.
/// A child that another test (sharing this process) already reaped counts as exited, with
/// status -1.
pub(crate) fn reap(pid: i32, timeout: Duration) -> Option<nix::sys::wait::WaitStatus> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(waitpid(Pid::from_raw(pid), None));
    });
    match rx.recv_timeout(timeout).ok()? {
        Ok(status) => Some(status),
        Err(nix::errno::Errno::ECHILD) if parent_of(pid).is_none() => {
            Some(nix::sys::wait::WaitStatus::Exited(Pid::from_raw(pid), -1))
        }
        Err(_) => None,
    }
}

/// Pids that some live test environment of this process tracks (and will reap itself).
static TRACKED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Reaps our zombie children that are drtrace processes nobody tracks: starters that lost a
/// race or failed, which exit on their own and which this process adopted as subreaper
/// (left alone, they would outlive the test as zombies of an init that may not reap).
fn reap_untracked_zombies() {
    let me = i32::try_from(std::process::id()).unwrap();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let tracked = TRACKED.lock().unwrap().clone();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if parent_of(pid) == Some(me)
            && state_of(pid) == Some('Z')
            && comm.starts_with("drtrace")
            && !tracked.contains(&pid)
        {
            let _ = waitpid(
                Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// Sends `signal` to `pid`, which must be our child (never a stranger with a reused pid).
pub(crate) fn signal_child(pid: i32, signal: Signal) {
    assert!(
        is_our_child(pid),
        "pid {pid} is not a process this test started"
    );
    kill(Pid::from_raw(pid), signal).expect("kill");
}

/// Our live children whose executable name passes `name_ok` and whose environment names
/// `socket` (`DRTRACE_SESSIOND_SOCKET`): the processes one test started, told apart from
/// other tests' when tests share a process (as under `cargo test`).
fn our_children_for(socket: &Path, name_ok: impl Fn(&str) -> bool) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap();
    let wanted = format!("DRTRACE_SESSIOND_SOCKET={}", socket.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me) && is_alive(pid))
        .filter(|&pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.file_name().and_then(OsStr::to_str).is_some_and(&name_ok))
        })
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == wanted.as_bytes()))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The result of one command.
#[derive(Debug)]
pub(crate) struct Out {
    /// Exit status.
    pub(crate) status: ExitStatus,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
    /// How long it ran.
    pub(crate) elapsed: Duration,
    report: String,
}

impl Out {
    /// Exit code (-1 if killed by a signal).
    pub(crate) fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Stdout as JSON (one document).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n{}", self.report))
    }

    /// Stdout as a `{"type", "data"}` document of type `kind`; returns `data`.
    pub(crate) fn json_data(&self, kind: &str) -> serde_json::Value {
        let doc = self.json();
        assert_eq!(doc["type"], kind, "wrong document type\n{}", self.report);
        doc["data"].clone()
    }

    /// Asserts the failure contract: exactly one line on stderr, `error: ...`, with no
    /// Rust Debug output; returns the message after `error: `.
    pub(crate) fn error_line(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr is not one line\n{}", self.report);
        let line = lines[0];
        assert!(
            line.starts_with("error: "),
            "no 'error: ' prefix\n{}",
            self.report
        );
        for debugish in [
            "Os {",
            "kind:",
            "Error {",
            "Some(",
            "panicked",
            "RUST_BACKTRACE",
        ] {
            assert!(
                !line.contains(debugish),
                "stderr looks like Debug output ({debugish})\n{}",
                self.report
            );
        }
        line["error: ".len()..].to_owned()
    }

    /// The failure report (command, cwd, environment, outputs, daemon logs).
    pub(crate) fn report(&self) -> &str {
        &self.report
    }
}

/// Who a command runs as: a test user, with its supplementary groups.
#[derive(Debug, Clone)]
struct RunAs {
    uid: u32,
    gid: u32,
    name: String,
    groups: Vec<u32>,
}

/// One command to run in a test's environment.
#[derive(Debug)]
pub(crate) struct TestCommand<'a> {
    env: &'a TestEnv,
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    vars: Vec<(OsString, Option<OsString>)>,
    user: Option<RunAs>,
    timeout: Duration,
}

impl<'a> TestCommand<'a> {
    fn new(env: &'a TestEnv, program: &Path) -> Self {
        let mut this = Self {
            env,
            program: program.to_owned(),
            args: Vec::new(),
            cwd: env.root.clone(),
            vars: Vec::new(),
            user: None,
            timeout: COMMAND_TIMEOUT,
        };
        for (k, v) in env.base_vars() {
            this = this.env(k, v);
        }
        this
    }

    /// Adds arguments.
    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable (the environment starts empty but for the test's own
    /// variables and `PATH`).
    pub(crate) fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.vars.retain(|(k, _)| k.as_os_str() != key.as_ref());
        self.vars
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable.
    pub(crate) fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.vars.retain(|(k, _)| k.as_os_str() != key.as_ref());
        self.vars.push((key.as_ref().to_owned(), None));
        self
    }

    /// Sets the working directory.
    pub(crate) fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = dir.as_ref().to_owned();
        self
    }

    /// Runs as `user`, with that user's environment (its home, state dir, trace dir and
    /// socket), its supplementary groups (as after a login) and the copies of the binaries
    /// that every user can run.
    pub(crate) fn run_as(mut self, user: &TestUser) -> Self {
        self.user = Some(RunAs {
            uid: user.uid,
            gid: user.gid,
            name: user.name.clone(),
            groups: user.groups.clone(),
        });
        self.program = self.env.shared_copy(&self.program);
        self.cwd = user.home.clone();
        for (k, v) in user.vars() {
            self = self.env(k, v);
        }
        self
    }

    /// Bounds the run (the test fails if the command outlives it).
    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn build(&self) -> Command {
        let mut cmd = match &self.user {
            // std drops every supplementary group when root switches uid (and cannot set
            // them on stable): a user with groups is switched to by setpriv, which then
            // execs the program in the same process.
            Some(user) if !user.groups.is_empty() => {
                let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
                let mut cmd = Command::new(kernel::setpriv());
                cmd.arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .arg(format!("--groups={}", groups.join(",")))
                    .arg("--")
                    .arg(&self.program);
                cmd
            }
            _ => Command::new(&self.program),
        };
        cmd.args(&self.args)
            .env_clear()
            .current_dir(&self.cwd)
            .stdin(Stdio::null());
        for (k, v) in &self.vars {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        if let Some(user) = &self.user {
            if user.groups.is_empty() {
                // std drops the supplementary groups too when root switches uid.
                cmd.uid(user.uid).gid(user.gid);
            }
        }
        cmd
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "command: {}", self.program.display());
        for a in &self.args {
            let _ = write!(s, " {}", a.to_string_lossy());
        }
        let _ = write!(s, "\ncwd: {}", self.cwd.display());
        if let Some(user) = &self.user {
            let _ = write!(s, "\nuser: {} (uid {})", user.name, user.uid);
            if !user.groups.is_empty() {
                let _ = write!(s, ", supplementary groups {:?}", user.groups);
            }
        }
        s.push_str("\nenvironment:");
        for (k, v) in &self.vars {
            match v {
                Some(v) => {
                    let _ = write!(s, "\n  {}={}", k.to_string_lossy(), v.to_string_lossy());
                }
                None => {
                    let _ = write!(s, "\n  (unset {})", k.to_string_lossy());
                }
            }
        }
        s
    }

    /// Starts the command with its output captured, without waiting for it; see
    /// [`Running`]. The timeout bounds the whole run, from now.
    pub(crate) fn spawn(self) -> Running<'a> {
        let desc = self.describe();
        let mut cmd = self.build();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn: {e}\n{desc}"));
        let pid = i32::try_from(child.id()).unwrap();
        let drain = |mut r: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            });
            rx
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let (tx, status) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Running {
            env: self.env,
            desc,
            pid,
            start,
            deadline: start + self.timeout,
            stdout,
            stderr,
            status,
            done: false,
        }
    }

    /// Runs the command to completion (bounded by the timeout) and returns what it did,
    /// whatever its status.
    pub(crate) fn run(self) -> Out {
        self.spawn().finish()
    }

    /// Runs and asserts success; returns the result.
    pub(crate) fn success(self) -> Out {
        let out = self.run();
        assert!(out.status.success(), "command failed\n{}", out.report);
        out
    }

    /// Runs and asserts failure with exit code `code` and the one-line error contract;
    /// returns the error message (after `error: `).
    pub(crate) fn fails_with(self, code: i32) -> String {
        let out = self.run();
        assert_eq!(out.code(), code, "unexpected exit status\n{}", out.report);
        out.error_line()
    }

    /// Runs and asserts an ordinary failure (exit code 1); returns the error message.
    pub(crate) fn fails(self) -> String {
        self.fails_with(1)
    }
}

/// A command started with [`TestCommand::spawn`]: its pid is known while it runs. Dropping
/// it before [`Running::finish`] kills it.
#[derive(Debug)]
pub(crate) struct Running<'a> {
    env: &'a TestEnv,
    desc: String,
    pid: i32,
    start: Instant,
    deadline: Instant,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    status: mpsc::Receiver<std::io::Result<ExitStatus>>,
    done: bool,
}

impl Running<'_> {
    /// The process id.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the command to end (the test fails if it outlives its timeout) and returns
    /// what it did, whatever its status.
    pub(crate) fn finish(mut self) -> Out {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let status = match self.status.recv_timeout(left) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
                let status = self.status.recv().ok().and_then(Result::ok);
                self.done = true;
                let report = self.env.failure_report(&self.desc, None, "", "");
                panic!(
                    "command did not finish within {:?} (killed; {status:?})\n{report}",
                    self.deadline - self.start
                );
            }
        };
        self.done = true;
        let elapsed = self.start.elapsed();
        // The pipes end when the command and every process that inherited them are done (a
        // detached daemon lets go of them once it has reported); a descendant that keeps
        // them open is a bug worth a failure, not a hang.
        let deadline = self.deadline;
        let collect = |rx: &mpsc::Receiver<String>| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| "(still open: a descendant kept this pipe)\n".to_owned())
        };
        let stdout = collect(&self.stdout);
        let stderr = collect(&self.stderr);
        self.env.observe();
        let report = self
            .env
            .failure_report(&self.desc, Some(&status), &stdout, &stderr);
        Out {
            status,
            stdout,
            stderr,
            elapsed,
            report,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Still our child until its status is collected, so the pid is its own.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = self.status.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// Evaluates `check` until it returns `Some`, at most `timeout`, pausing briefly between
/// tries; panics with `what` if it never does. For states only observable by asking (a
/// daemon's list of applications), where there is nothing to block on.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a detached daemon start reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Started {
    /// `ready PID`
    Ready(i32),
    /// `running PID`
    Running(i32),
    /// `error MESSAGE`, or anything else.
    Failed(String),
}

/// A test's private world: dirs, socket, environment, and the processes it started.
#[derive(Debug)]
pub(crate) struct TestEnv {
    /// Name of the test (for messages).
    pub(crate) name: String,
    /// The temp dir (removed on drop).
    pub(crate) root: PathBuf,
    /// `HOME`.
    pub(crate) home: PathBuf,
    /// `DRTRACE_HOME`.
    pub(crate) traces: PathBuf,
    /// `XDG_STATE_HOME`.
    pub(crate) state: PathBuf,
    /// `DRTRACE_SESSIOND_SOCKET`.
    pub(crate) socket: PathBuf,
    /// `DRTRACE_BROKER_DIR` (made by the broker that first starts there).
    pub(crate) broker_dir: PathBuf,
    pids: Mutex<BTreeSet<i32>>,
    /// The pids of brokers this test started (whose tracefs instances drop removes).
    broker_pids: Mutex<BTreeSet<i32>>,
    users: Mutex<Vec<TestUser>>,
    groups: Mutex<Vec<kernel::TestGroup>>,
    copy_lock: Mutex<()>,
    extra_sockets: Mutex<Vec<PathBuf>>,
}

impl TestEnv {
    /// A fresh environment under the system temp dir, named after the test.
    pub(crate) fn new(name: &str) -> Self {
        make_subreaper();
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Short: a socket path must fit in 108 bytes.
        let root = std::env::temp_dir().join(format!("drtrace-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create test dir");
        let home = root.join("home");
        let traces = root.join("traces");
        let state = root.join("state");
        for d in [&home, &traces, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        Self {
            name: name.to_owned(),
            socket: root.join("sessiond.sock"),
            broker_dir: root.join("broker"),
            root,
            home,
            traces,
            state,
            pids: Mutex::new(BTreeSet::new()),
            broker_pids: Mutex::new(BTreeSet::new()),
            users: Mutex::new(Vec::new()),
            groups: Mutex::new(Vec::new()),
            copy_lock: Mutex::new(()),
            extra_sockets: Mutex::new(Vec::new()),
        }
    }

    /// The variables every command of this test gets.
    pub(crate) fn base_vars(&self) -> Vec<(OsString, OsString)> {
        let mut vars = vec![
            ("HOME".into(), self.home.clone().into_os_string()),
            ("DRTRACE_HOME".into(), self.traces.clone().into_os_string()),
            ("XDG_STATE_HOME".into(), self.state.clone().into_os_string()),
            (
                "DRTRACE_SESSIOND_SOCKET".into(),
                self.socket.clone().into_os_string(),
            ),
            (
                "DRTRACE_BROKER_DIR".into(),
                self.broker_dir.clone().into_os_string(),
            ),
            // Tests count events exactly, so an app must register before it emits. The
            // production bound on a daemon's greeting (10 ms, which keeps a hung daemon from
            // delaying start-up) is shorter than a busy test machine sometimes needs.
            ("DRTRACE_PING_TIMEOUT_MS".into(), "3000".into()),
        ];
        if let Some(path) = std::env::var_os("PATH") {
            vars.push(("PATH".into(), path));
        }
        vars
    }

    /// `drtrace ARGS`.
    pub(crate) fn drtrace<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        args: I,
    ) -> TestCommand<'_> {
        TestCommand::new(self, &bins().drtrace).args(args)
    }

    /// `drtrace-sessiond ARGS`.
    pub(crate) fn sessiond<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        args: I,
    ) -> TestCommand<'_> {
        TestCommand::new(self, &bins().sessiond).args(args)
    }

    /// `drtrace-demo ARGS`, with this environment (so it registers with this test's daemon).
    pub(crate) fn demo<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        args: I,
    ) -> TestCommand<'_> {
        TestCommand::new(self, &bins().demo).args(args)
    }

    /// Any program, with this environment.
    pub(crate) fn command(&self, program: &Path) -> TestCommand<'_> {
        TestCommand::new(self, program)
    }

    /// Runs a `drtrace-sessiond --detach` command and parses its one-line report; a
    /// `Ready` or `Running` pid is tracked for cleanup.
    pub(crate) fn launch(&self, cmd: TestCommand<'_>) -> (Started, Out) {
        // The report is the first line of stdout; the first process exits at once, and the
        // daemon points its stdout and stderr at /dev/null right after reporting.
        let out = cmd.timeout(READY_TIMEOUT).run();
        let line = out.stdout.lines().next().unwrap_or_default().to_owned();
        let parsed = match line.split_once(' ') {
            Some(("ready", pid)) => pid.parse().map(Started::Ready).ok(),
            Some(("running", pid)) => pid.parse().map(Started::Running).ok(),
            Some(("error", msg)) => Some(Started::Failed(msg.to_owned())),
            _ => None,
        };
        let started = parsed.unwrap_or_else(|| Started::Failed(format!("no report: {line:?}")));
        if let Started::Ready(pid) | Started::Running(pid) = started {
            self.track(pid);
        }
        (started, out)
    }

    /// Starts `drtrace-sessiond --detach` for this test's socket; returns its report.
    pub(crate) fn start_daemon_as(&self, user: Option<&TestUser>) -> Started {
        let mut cmd = self.sessiond(["--detach"]);
        if let Some(user) = user {
            cmd = cmd.run_as(user);
        }
        self.launch(cmd).0
    }

    /// Starts the daemon for this test's socket and returns its pid; panics with the report
    /// unless it says `ready PID`.
    pub(crate) fn start_daemon(&self) -> i32 {
        match self.start_daemon_as(None) {
            Started::Ready(pid) => pid,
            other => panic!(
                "daemon did not start: {other:?}\n{}",
                self.failure_report("drtrace-sessiond --detach", None, "", "")
            ),
        }
    }

    /// Remembers a daemon pid so that drop stops it.
    pub(crate) fn track(&self, pid: i32) {
        self.pids.lock().unwrap().insert(pid);
        TRACKED.lock().unwrap().insert(pid);
    }

    /// Tracks the pid in the lock file of this test's socket (and its users' sockets, and
    /// its broker's: a broker the CLI started is tracked too).
    pub(crate) fn observe(&self) {
        let mut sockets = vec![self.socket.clone()];
        sockets.extend(self.users.lock().unwrap().iter().map(|u| u.socket.clone()));
        for socket in sockets {
            if let Some(pid) = drtrace_proto::client::pid_from_lock_file(&socket) {
                self.track(pid);
            }
        }
        if let Some(pid) = self.broker_pid() {
            if is_our_child(pid) {
                self.track_broker(pid);
            }
        }
    }

    /// Remembers a broker pid so that drop stops it and removes what it left in tracefs.
    pub(crate) fn track_broker(&self, pid: i32) {
        self.track(pid);
        self.broker_pids.lock().unwrap().insert(pid);
    }

    /// Our live `drtrace-sessiond` children started for this test's socket (told apart
    /// from other tests' daemons by the socket in their environment, so that this holds
    /// when tests share a process, as under `cargo test`).
    pub(crate) fn daemons(&self) -> Vec<i32> {
        self.daemons_at(&self.socket)
    }

    /// Our live `drtrace-sessiond` children started for `socket`.
    pub(crate) fn daemons_at(&self, socket: &Path) -> Vec<i32> {
        our_children_for(socket, |name| name == "drtrace-sessiond")
    }

    /// Asserts that exactly one daemon serves this test's socket, the one in the lock file,
    /// and returns its pid. Starters that lost a race report `running PID` just before they
    /// exit, so each is waited for (bounded), never assumed gone.
    pub(crate) fn the_only_daemon(&self) -> i32 {
        let winner = self.daemon_pid().expect("a daemon holds the lock file");
        for pid in self.daemons() {
            if pid != winner {
                assert!(
                    reap(pid, Duration::from_secs(10)).is_some(),
                    "a second daemon, pid {pid}, still runs beside {winner}\n{}",
                    self.logs()
                );
            }
        }
        assert_eq!(self.daemons(), vec![winner], "{}", self.logs());
        winner
    }

    /// Asserts that no daemon is left for `socket`; one that just reported a
    /// failure is given a bounded time to exit.
    pub(crate) fn assert_no_daemon_left_at(&self, socket: &Path) {
        for pid in self.daemons_at(socket) {
            assert!(
                reap(pid, Duration::from_secs(10)).is_some(),
                "daemon pid {pid} still runs\n{}",
                self.logs()
            );
        }
    }

    /// The pid the daemon of this test's socket wrote in its lock file.
    pub(crate) fn daemon_pid(&self) -> Option<i32> {
        drtrace_proto::client::pid_from_lock_file(&self.socket)
    }

    /// The daemon log of this test's user.
    pub(crate) fn daemon_log(&self) -> PathBuf {
        self.state.join("drtrace").join("sessiond.log")
    }

    /// Creates a throwaway user whose home, socket and traces are inside this test's dir;
    /// the user is deleted when the environment is dropped.
    pub(crate) fn user(&self, tag: &str) -> TestUser {
        // Other users must reach their homes and the shared socket dir through the root.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let user = TestUser::create(self, tag, &[]);
        self.users.lock().unwrap().push(user.clone());
        user
    }

    /// A copy of `program` (one of the binaries under test) that every user can run: the
    /// build directory may not be reachable by other users. Copies sit side by side, so the
    /// CLI still finds the daemon beside itself.
    pub(crate) fn shared_copy(&self, program: &Path) -> PathBuf {
        let b = bins();
        let build_dir = b.drtrace.parent().unwrap();
        let peer_dir = b.peer.parent().unwrap();
        if program.parent() != Some(build_dir) && program.parent() != Some(peer_dir) {
            return program.to_owned();
        }
        let dir = self.root.join("bin");
        let _guard = self.copy_lock.lock().unwrap();
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            // Every drtrace binary, so that each still finds the others beside itself.
            let mut all: Vec<PathBuf> = std::fs::read_dir(build_dir)
                .unwrap()
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| {
                    p.file_name().and_then(OsStr::to_str).is_some_and(|n| {
                        n == "drtrace" || n.starts_with("drtrace-") && !n.contains('.')
                    }) && std::fs::metadata(p)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
                .collect();
            all.push(b.peer.clone());
            for bin in all {
                let to = dir.join(bin.file_name().unwrap());
                std::fs::copy(&bin, &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir.join(program.file_name().unwrap())
    }

    /// A directory every user may create files in (sticky, like /tmp).
    pub(crate) fn shared_dir(&self) -> PathBuf {
        let dir = self.root.join("shared");
        if !dir.exists() {
            std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        dir
    }

    fn failure_report(
        &self,
        desc: &str,
        status: Option<&ExitStatus>,
        stdout: &str,
        stderr: &str,
    ) -> String {
        let mut s = format!("--- test {} ---\n{desc}\n", self.name);
        if let Some(status) = status {
            let _ = writeln!(s, "status: {status}");
        }
        let _ = writeln!(s, "--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
        s.push_str(&self.logs());
        s
    }

    /// Every daemon log of this test (its own, its users' and its brokers').
    pub(crate) fn logs(&self) -> String {
        let mut logs = vec![self.daemon_log()];
        logs.extend(self.users.lock().unwrap().iter().map(TestUser::daemon_log));
        for log in [
            self.broker_log(),
            self.state.join("drtrace").join("broker.log"),
            self.state.join("drtrace").join("consumerd.log"),
            self.state.join("drtrace").join("broker-consumerd.log"),
            self.root.join("broker-consumerd.log"),
        ] {
            if log.exists() {
                logs.push(log);
            }
        }
        let mut s = String::new();
        for log in logs {
            match std::fs::read_to_string(&log) {
                Ok(text) => {
                    let _ = writeln!(s, "--- daemon log {} ---\n{text}", log.display());
                }
                Err(_) => {
                    let _ = writeln!(s, "--- daemon log {}: none ---", log.display());
                }
            }
        }
        s
    }

    /// Stops every tracked daemon that is still our child: SIGCONT (it may have been
    /// stopped by the test), SIGTERM, then SIGKILL if it has not exited in time.
    pub(crate) fn stop_daemons(&self) {
        self.observe();
        let mut sockets = vec![self.socket.clone()];
        sockets.extend(self.users.lock().unwrap().iter().map(|u| u.socket.clone()));
        let pids: Vec<i32> = self.pids.lock().unwrap().iter().copied().collect();
        for pid in pids {
            if !is_our_child(pid) {
                continue;
            }
            let p = Pid::from_raw(pid);
            let _ = kill(p, Signal::SIGCONT);
            let _ = kill(p, Signal::SIGTERM);
            if reap(pid, Duration::from_secs(10)).is_none() {
                let _ = kill(p, Signal::SIGKILL);
                let _ = reap(pid, Duration::from_secs(5));
            }
        }
        // Whatever else of ours is left for these sockets (a daemon started on another path
        // by a test, a consumer orphaned by a killed daemon) goes too.
        let mut sockets: Vec<PathBuf> = sockets;
        sockets.extend(self.extra_sockets.lock().unwrap().iter().cloned());
        for socket in &sockets {
            for pid in our_children_for(socket, |name| name.starts_with("drtrace")) {
                let p = Pid::from_raw(pid);
                let _ = kill(p, Signal::SIGCONT);
                let _ = kill(p, Signal::SIGKILL);
                let _ = reap(pid, Duration::from_secs(5));
            }
        }
    }

    /// Makes drop also end the processes started for `socket` (a path other than the
    /// test's own socket).
    pub(crate) fn also_clean(&self, socket: &Path) {
        self.extra_sockets.lock().unwrap().push(socket.to_owned());
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.stop_daemons();
        {
            let mut tracked = TRACKED.lock().unwrap();
            for pid in self.pids.lock().unwrap().iter() {
                tracked.remove(pid);
            }
        }
        reap_untracked_zombies();
        self.remove_broker_instances();
        for user in self.users.lock().unwrap().drain(..) {
            user.delete();
        }
        for group in self.groups.lock().unwrap().drain(..) {
            group.delete();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A throwaway Unix user.
#[derive(Debug, Clone)]
pub(crate) struct TestUser {
    /// Login name.
    pub(crate) name: String,
    /// Uid.
    pub(crate) uid: u32,
    /// Primary gid.
    pub(crate) gid: u32,
    /// Home directory (inside the test dir).
    pub(crate) home: PathBuf,
    /// This user's socket (inside its home) unless a test points it elsewhere.
    pub(crate) socket: PathBuf,
    /// Supplementary groups (test groups it was made a member of), which its commands get.
    pub(crate) groups: Vec<u32>,
}

impl TestUser {
    /// Creates the user, a member of `groups` besides its own group.
    fn create(env: &TestEnv, tag: &str, groups: &[&kernel::TestGroup]) -> Self {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Login names are at most 32 bytes: "dt" + pid + test counter + tag initial.
        let name = format!(
            "dt{}x{n}{}",
            std::process::id(),
            tag.chars().next().unwrap_or('u')
        );
        let home = env.root.join(format!("home-{name}"));
        let mut useradd = Command::new("useradd");
        useradd
            .args(["--create-home", "--home-dir"])
            .arg(&home)
            .args(["--shell", "/bin/sh", "--user-group"]);
        if !groups.is_empty() {
            let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            useradd.arg("--groups").arg(names.join(","));
        }
        let out = useradd.arg(&name).output().expect("run useradd");
        assert!(
            out.status.success(),
            "useradd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {name} not found after useradd"));
        let state = home.join(".state");
        let created = Self {
            socket: home.join("sessiond.sock"),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.iter().map(|g| g.gid).collect(),
            name,
            home,
        };
        std::fs::create_dir_all(&state).unwrap();
        nix::unistd::chown(&state, Some(user.uid), Some(user.gid)).unwrap();
        created
    }

    /// The environment of this user's commands.
    pub(crate) fn vars(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("HOME".into(), self.home.clone().into_os_string()),
            ("USER".into(), self.name.clone().into()),
            ("LOGNAME".into(), self.name.clone().into()),
            (
                "DRTRACE_HOME".into(),
                self.home.join("traces").into_os_string(),
            ),
            (
                "XDG_STATE_HOME".into(),
                self.home.join(".state").into_os_string(),
            ),
            (
                "DRTRACE_SESSIOND_SOCKET".into(),
                self.socket.clone().into_os_string(),
            ),
        ]
    }

    /// This user's daemon log.
    pub(crate) fn daemon_log(&self) -> PathBuf {
        self.home.join(".state/drtrace/sessiond.log")
    }

    fn delete(&self) {
        let out = Command::new("userdel")
            .args(["--remove", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            // userdel -r exits 12 when it cannot remove the mail spool that useradd never
            // made; the account itself is gone then.
            Ok(o) if o.status.code() == Some(12) => {}
            Ok(o) => eprintln!(
                "warning: userdel {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run userdel {}: {e}", self.name),
        }
    }
}
