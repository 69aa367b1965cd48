//! Starting the user's `drtrace-sessiond`, or (for root) the `drtrace-broker`, when none
//! runs.
//!
//! The binary is found the same way for both ([`find_daemon`]): the variable naming it
//! (`DRTRACE_SESSIOND_PATH`, `DRTRACE_BROKER_PATH`) if set, else the binary beside the
//! running executable, else the first one on `PATH`. It is started with `--detach`: its
//! first process exits at once, and the daemon writes exactly one line to the standard
//! output it inherited (see [`Readiness`]). That line is read with a deadline
//! ([`read_report`]), so a daemon that dies or hangs during start-up is reported, never
//! waited for forever, and nothing sleeps.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drtrace_proto::paths::{ENV_BROKER_DIR, ENV_SESSIOND_PATH, ENV_SESSIOND_SOCKET};
use drtrace_proto::startup::Readiness;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use thiserror::Error;

/// File name of the session daemon binary.
pub const SESSIOND_BIN: &str = "drtrace-sessiond";
/// File name of the root broker binary.
pub const BROKER_BIN: &str = "drtrace-broker";
pub use drtrace_proto::paths::ENV_BROKER_PATH;

/// Which daemon to find and start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonBinary {
    /// The user's `drtrace-sessiond`.
    Sessiond,
    /// The root `drtrace-broker`.
    Broker,
}

impl DaemonBinary {
    /// The binary's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            DaemonBinary::Sessiond => SESSIOND_BIN,
            DaemonBinary::Broker => BROKER_BIN,
        }
    }

    /// The variable that names the binary to start.
    pub fn env_var(self) -> &'static str {
        match self {
            DaemonBinary::Sessiond => ENV_SESSIOND_PATH,
            DaemonBinary::Broker => ENV_BROKER_PATH,
        }
    }

    /// Where the daemon writes its log when started without `--log-file`.
    pub fn log_path(self) -> PathBuf {
        state_dir().join(match self {
            DaemonBinary::Sessiond => "sessiond.log",
            DaemonBinary::Broker => "broker.log",
        })
    }
}
/// How long a spawned daemon may take to report its start-up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest start-up line accepted; a longer one is cut (it is only shown to the user).
const MAX_LINE: usize = 4096;

/// Why the session daemon could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// `DRTRACE_SESSIOND_PATH` (or `DRTRACE_BROKER_PATH`) names something that is not an
    /// executable file.
    #[error("{var} is set to {path}, which is not an executable file")]
    BadOverride {
        /// The variable.
        var: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// No binary was found.
    #[error("cannot find {bin}: it is neither beside {exe} nor on PATH; install it or set {var}")]
    NotFound {
        /// The binary's file name.
        bin: &'static str,
        /// The variable that would name it.
        var: &'static str,
        /// The running executable's directory, as searched.
        exe: String,
    },
    /// The binary could not be run.
    #[error("cannot run {path}: {source}")]
    Exec {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The daemon reported a start-up failure; its message is shown as it is.
    #[error("{message}")]
    Failed {
        /// The daemon's one-line reason.
        message: String,
    },
    /// The daemon's processes ended without a report.
    #[error("{path} exited during start-up without reporting{}; see its log at {}", status_text(.status), .log.display())]
    Died {
        /// The binary.
        path: PathBuf,
        /// The first process's exit status, if it was collected.
        status: Option<ExitStatus>,
        /// Where the daemon logs.
        log: PathBuf,
    },
    /// No report arrived in time.
    #[error("{path} did not report start-up within {after:?}; see its log at {}", .log.display())]
    TimedOut {
        /// The binary.
        path: PathBuf,
        /// How long we waited.
        after: Duration,
        /// Where the daemon logs.
        log: PathBuf,
    },
    /// The report was not a line we understand.
    #[error(
        "{path} wrote an unexpected start-up report '{line}'; is it from another drtrace release?"
    )]
    BadReport {
        /// The binary.
        path: PathBuf,
        /// What it wrote.
        line: String,
    },
    /// Reading the report failed.
    #[error("cannot read the start-up report of {path}: {source}")]
    Io {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn status_text(status: &Option<ExitStatus>) -> String {
    match status {
        Some(s) if s.success() => String::new(),
        Some(s) => match s.code() {
            Some(2) => " (exit status 2: it did not accept its arguments)".to_owned(),
            Some(code) => format!(" (exit status {code})"),
            None => format!(" ({s})"),
        },
        None => String::new(),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the session daemon binary: `DRTRACE_SESSIOND_PATH`, else beside the running
/// executable, else on `PATH`.
pub fn find_sessiond() -> Result<PathBuf, SpawnError> {
    find_daemon(DaemonBinary::Sessiond)
}

/// Finds the broker binary: `DRTRACE_BROKER_PATH`, else beside the running executable, else
/// on `PATH`.
pub fn find_broker() -> Result<PathBuf, SpawnError> {
    find_daemon(DaemonBinary::Broker)
}

/// Finds a daemon binary: the variable naming it, else beside the running executable, else
/// on `PATH`.
pub fn find_daemon(which: DaemonBinary) -> Result<PathBuf, SpawnError> {
    let (bin, var) = (which.file_name(), which.env_var());
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(SpawnError::BadOverride { var, path })
        };
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned));
    if let Some(dir) = &exe_dir {
        let candidate = dir.join(bin);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // An empty PATH entry means the current directory, which we do not search.
            if dir.as_os_str().is_empty() {
                continue;
            }
            let candidate = dir.join(bin);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(SpawnError::NotFound {
        bin,
        var,
        exe: exe_dir.map_or_else(|| "this program".to_owned(), |d| d.display().to_string()),
    })
}

/// Where `drtrace-sessiond` writes its log: `$XDG_STATE_HOME/drtrace/sessiond.log`, by
/// default `~/.local/state/drtrace/sessiond.log`.
pub fn sessiond_log_path() -> PathBuf {
    DaemonBinary::Sessiond.log_path()
}

/// The daemons' state directory: `$XDG_STATE_HOME/drtrace`, by default
/// `~/.local/state/drtrace`.
fn state_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })
        .unwrap_or_else(|| PathBuf::from("~/.local/state"));
    state.join("drtrace")
}

/// What a detached start produced.
#[derive(Debug)]
pub struct StartReport {
    /// The report line, without its newline; `None` if the output ended without one.
    pub line: Option<String>,
    /// True if the deadline passed before a line or the end of output.
    pub timed_out: bool,
    /// The first process's exit status, if it ended before the deadline.
    pub status: Option<ExitStatus>,
}

/// Reads the start-up report of a child started with a piped stdout, and reaps the child;
/// neither step outlasts `timeout`.
///
/// The child is waited for on a helper thread, so that a first process that fails to exit
/// cannot block the caller; if it is still running at the deadline, the thread is left to
/// reap it.
pub fn read_report(mut child: Child, timeout: Duration) -> io::Result<StartReport> {
    let deadline = Instant::now() + timeout;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the child's standard output is not piped"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver may be gone by now; nobody else wants the status then.
        let _ = tx.send(child.wait());
    });
    let (line, timed_out) = read_line_until(stdout, deadline)?;
    let left = deadline.saturating_duration_since(Instant::now());
    let status = match rx.recv_timeout(left) {
        Ok(status) => Some(status?),
        Err(_) => None,
    };
    Ok(StartReport {
        line,
        timed_out,
        status,
    })
}

/// Reads one line (up to a newline or the end of output) before `deadline`; returns the
/// line, if any, and whether the deadline passed first.
pub fn read_line_until<R: Read + AsFd>(
    mut reader: R,
    deadline: Instant,
) -> io::Result<(Option<String>, bool)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok((Some(String::from_utf8_lossy(&buf).into_owned()), false));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((None, true));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let line = (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned());
            return Ok((line, false));
        }
        if buf.len() < MAX_LINE {
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// How a start went when it went well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new daemon with this pid is listening.
    Ready(i32),
    /// Another daemon, with this pid, already served the socket (it won a start-up race).
    AlreadyRunning(i32),
}

/// Starts `binary --detach` for `socket` and waits (at most `timeout`) for its report.
///
/// The environment is passed through (`HOME`, `XDG_STATE_HOME` and the `DRTRACE_*`
/// variables matter to the daemon), with `DRTRACE_SESSIOND_SOCKET` set to `socket`.
pub fn start_sessiond(
    binary: &Path,
    socket: &Path,
    timeout: Duration,
) -> Result<Started, SpawnError> {
    let mut command = Command::new(binary);
    command.env(ENV_SESSIOND_SOCKET, socket);
    start(command, binary, DaemonBinary::Sessiond, timeout)
}

/// Starts `binary --detach` (the broker) for the broker directory `dir` and waits (at most
/// `timeout`) for its report.
///
/// The environment is passed through (`DRTRACE_CONSUMERD_PATH`, `XDG_STATE_HOME` and the
/// rest matter to the broker), with `DRTRACE_BROKER_DIR` set to `dir`.
pub fn start_broker(binary: &Path, dir: &Path, timeout: Duration) -> Result<Started, SpawnError> {
    let mut command = Command::new(binary);
    command.env(ENV_BROKER_DIR, dir);
    start(command, binary, DaemonBinary::Broker, timeout)
}

fn start(
    mut command: Command,
    binary: &Path,
    which: DaemonBinary,
    timeout: Duration,
) -> Result<Started, SpawnError> {
    let child = command
        .arg("--detach")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| SpawnError::Exec {
            path: binary.to_owned(),
            source,
        })?;
    let report = read_report(child, timeout).map_err(|source| SpawnError::Io {
        path: binary.to_owned(),
        source,
    })?;
    interpret(binary, which, report, timeout)
}

fn interpret(
    binary: &Path,
    which: DaemonBinary,
    report: StartReport,
    timeout: Duration,
) -> Result<Started, SpawnError> {
    let Some(line) = report.line else {
        return Err(if report.timed_out {
            SpawnError::TimedOut {
                path: binary.to_owned(),
                after: timeout,
                log: which.log_path(),
            }
        } else {
            SpawnError::Died {
                path: binary.to_owned(),
                status: report.status,
                log: which.log_path(),
            }
        });
    };
    match Readiness::parse(&line) {
        Some(Readiness::Ready { pid }) => Ok(Started::Ready(pid)),
        Some(Readiness::AlreadyRunning { pid }) => Ok(Started::AlreadyRunning(pid)),
        Some(Readiness::Failed { message }) => Err(SpawnError::Failed { message }),
        None => Err(SpawnError::BadReport {
            path: binary.to_owned(),
            line,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Child {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn outcome(script: &str, timeout: Duration) -> Result<Started, SpawnError> {
        let report = read_report(sh(script), timeout).unwrap();
        interpret(
            Path::new("fake-sessiond"),
            DaemonBinary::Sessiond,
            report,
            timeout,
        )
    }

    #[test]
    fn ready_and_running_lines_are_understood() {
        let t = Duration::from_secs(5);
        assert_eq!(outcome("echo ready 42", t).unwrap(), Started::Ready(42));
        assert_eq!(
            outcome("echo running 7", t).unwrap(),
            Started::AlreadyRunning(7)
        );
    }

    #[test]
    fn error_lines_are_shown_as_they_are() {
        let err = outcome(
            "echo error socket owned by uid 1001; exit 1",
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "socket owned by uid 1001");
    }

    #[test]
    fn silence_then_exit_points_at_the_log() {
        let err = outcome("exit 1", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, SpawnError::Died { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("exit status 1") && msg.contains("sessiond.log"),
            "{msg}"
        );
    }

    #[test]
    fn a_broker_that_dies_points_at_its_own_log() {
        let report = read_report(sh("exit 3"), Duration::from_secs(5)).unwrap();
        let err = interpret(
            Path::new("fake-broker"),
            DaemonBinary::Broker,
            report,
            Duration::from_secs(5),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("exit status 3") && msg.ends_with("drtrace/broker.log"),
            "{msg}"
        );
    }

    #[test]
    fn a_silent_daemon_times_out_without_hanging() {
        let start = Instant::now();
        // `exec` keeps the pipe open in a process that never writes.
        let err = outcome("exec sleep 30", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, SpawnError::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn garbage_reports_are_refused() {
        let err = outcome("echo hello", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, SpawnError::BadReport { .. }), "{err}");
    }
}
