//! Process hygiene for daemons: closing what was inherited, detaching from the spawner, and
//! telling the spawner how start-up went (see [`drtrace_proto::startup`]).
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use drtrace_proto::startup::Readiness;
use nix::unistd::ForkResult;

/// Closes every descriptor above standard error that this process inherited.
///
/// A spawner written in C may leak descriptors (sockets, pipes, other users' files) into
/// us; a daemon that lives for days must not keep them open (Firecracker's jailer does the
/// same before serving).
///
/// # Safety
///
/// Must be called before anything in this process owns a descriptor above 2 (first thing in
/// `main`): those descriptors are closed under their owners.
pub unsafe fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; the caller guarantees that nothing in this
    // process owns one above 2 yet, so no owner is left with a dangling descriptor.
    let rc = unsafe { libc::close_range(3, u32::MAX, 0) };
    if rc != 0 {
        log::warn!(
            "cannot close inherited descriptors: {}",
            io::Error::last_os_error()
        );
    }
}

/// Which side of [`detach`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The original process: it should exit with success at once.
    Parent,
    /// The daemon: in a new session, cwd `/`, stdin on `/dev/null`; stdout is still the
    /// spawner's pipe, for the readiness line.
    Daemon,
}

/// Forks into the background.
///
/// The spawner (e.g. the CLI) waits for the original process, which exits at once, and then
/// reads the daemon's readiness line from the pipe both share as stdout. The daemon is
/// adopted by init, so no spawner is left with a zombie to reap.
///
/// # Safety
///
/// No other thread may exist in the process: after `fork` only the calling thread survives,
/// and locks held by others would stay locked forever in the child.
pub unsafe fn detach() -> io::Result<Detached> {
    // SAFETY: the caller guarantees the process is single-threaded, so the child inherits no
    // lock held by a vanished thread and may run arbitrary code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { .. } => Ok(Detached::Parent),
        ForkResult::Child => {
            nix::unistd::setsid()?;
            std::env::set_current_dir("/")?;
            let null = OpenOptions::new().read(true).open("/dev/null")?;
            nix::unistd::dup2_stdin(&null)?;
            Ok(Detached::Daemon)
        }
    }
}

/// Writes the readiness line to stdout once, then points stdout (and stderr when
/// `quiet_stderr`) at `/dev/null` so that nothing written later can fail on a closed pipe.
pub fn report_readiness(readiness: &Readiness, quiet_stderr: bool) {
    let mut out = io::stdout().lock();
    // The spawner may have given up and closed the pipe; there is nobody left to tell.
    let _ = out.write_all(readiness.to_line().as_bytes());
    let _ = out.flush();
    drop(out);
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        if quiet_stderr {
            let _ = nix::unistd::dup2_stderr(&null);
        }
    }
}

/// Makes any panic log its message and abort: a daemon must not limp on with broken state,
/// and abort leaves a core for the developer (Firecracker builds its daemons with
/// `panic = "abort"`; a hook gives the same behaviour without a workspace-wide profile).
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        log::error!("panic: {info}");
        eprintln!("fatal: {info}");
        std::process::abort();
    }));
}

/// How a daemon's `main` goes on after [`start`].
#[derive(Debug)]
pub enum Started {
    /// This is the daemon; the log file in use (`None` when logging to stderr).
    Daemon(Option<PathBuf>),
    /// Return this from `main` now (the detaching parent, or a failed start).
    Exit(ExitCode),
}

/// The common start of every daemon's `main`: closes inherited descriptors, detaches when
/// asked, opens the log (`log_file`, else `<state dir>/drtrace/<name>.log`, else stderr) and
/// makes panics abort.
///
/// # Safety
///
/// Call it first thing in `main`, before any thread exists and before anything owns a
/// descriptor above 2 (see [`close_inherited_fds`] and [`detach`]).
pub unsafe fn start(
    name: &'static str,
    detach_requested: bool,
    log_file: Option<PathBuf>,
    level: log::LevelFilter,
) -> Started {
    // SAFETY: the caller calls this first thing in main: nothing owns a descriptor above 2.
    unsafe { close_inherited_fds() };
    if detach_requested {
        // SAFETY: the caller guarantees that no thread exists yet.
        match unsafe { detach() } {
            Ok(Detached::Parent) => return Started::Exit(ExitCode::SUCCESS),
            Ok(Detached::Daemon) => {}
            Err(e) => {
                eprintln!("error: cannot detach: {e}");
                return Started::Exit(ExitCode::from(1));
            }
        }
    }
    let path = log_file
        .or_else(|| crate::logging::default_log_file(name))
        .unwrap_or_else(|| PathBuf::from("-"));
    match crate::logging::init(name, &path, level) {
        Ok(file) => {
            abort_on_panic();
            Started::Daemon(file)
        }
        Err(e) => {
            let msg = format!("cannot open log file {}: {e}", path.display());
            Started::Exit(fail(&msg, 1, detach_requested))
        }
    }
}

/// Reports why a daemon stops: in its log, on stderr when it is not detached, and as its
/// readiness line (for a spawner still waiting); returns `code` as the exit code.
pub fn fail(reason: &dyn std::fmt::Display, code: u8, detached: bool) -> ExitCode {
    log::error!("{reason}");
    if !detached {
        eprintln!("error: {reason}");
    }
    report_readiness(
        &Readiness::Failed {
            message: reason.to_string(),
        },
        detached,
    );
    ExitCode::from(code)
}
