//! Running the command of `drtrace record` without dying of the signals meant for it.
//!
//! Design: [`SignalGuard::block`] blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in the calling
//! thread, before the session exists and while no other thread runs (threads started later
//! inherit the mask, so no thread can take a process-directed signal with its default
//! action), and receives them through a signalfd. No handler is installed, so no `unsafe`
//! is needed.
//!
//! The command is started with `posix_spawnp` rather than `std::process::Command`, because
//! the standard library leaves a blocked signal blocked in the child: the spawn attributes
//! give the command the signal mask drtrace itself started with and SIGPIPE's default
//! action (which the Rust runtime ignores in drtrace), as a shell would. Its standard
//! streams, environment and working directory are drtrace's.
//!
//! While the command runs, [`SignalGuard::wait`] polls two descriptors: the signalfd, and a
//! pipe that a helper thread closes once the command has exited (`waitid` with `WNOWAIT`,
//! so the command stays a zombie and its pid cannot be reused until this thread reaps it:
//! a signal passed on can never reach a stranger). A terminating signal that another
//! process sent to drtrace (`kill`: `si_code` <= 0) is passed on to the command; one the
//! kernel sent (Ctrl-C, a terminal hang-up: `si_code` > 0) went to the whole foreground
//! process group, the command included, so it is not sent twice. Either way drtrace lives
//! on to stop and destroy the session. Signals that arrive after the command ended are
//! dropped when the guard goes.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

/// The signals that would end drtrace while its command runs.
const TERMINATING: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// The signal numbered so killed it.
    Killed(i32),
}

impl Ending {
    /// drtrace's own exit status: the command's, or 128 + the signal.
    pub(super) fn exit_status(self) -> u8 {
        let n = match self {
            Ending::Exited(code) => code & 0xff,
            Ending::Killed(sig) => (128 + sig) & 0xff,
        };
        u8::try_from(n).unwrap_or(1)
    }

    /// `exited with status 3`, `was killed by signal 9 (SIGKILL)`.
    pub(super) fn describe(self) -> String {
        match self {
            Ending::Exited(code) => format!("exited with status {code}"),
            Ending::Killed(sig) => match Signal::try_from(sig) {
                Ok(s) => format!("was killed by signal {sig} ({s})"),
                Err(_) => format!("was killed by signal {sig}"),
            },
        }
    }
}

/// Why the command could not be started.
#[derive(Debug)]
pub(super) enum SpawnFailure {
    /// An argument or environment variable holds a NUL byte.
    Nul,
    /// `posix_spawnp` failed with this error (`ENOENT`: not found).
    Errno(Errno),
}

/// Blocked signals, received through a signalfd; the previous mask comes back on drop.
#[derive(Debug)]
pub(super) struct SignalGuard {
    fd: SignalFd,
    old: SigSet,
}

fn c_string(bytes: &[u8]) -> Result<CString, SpawnFailure> {
    CString::new(bytes).map_err(|_| SpawnFailure::Nul)
}

impl SignalGuard {
    /// Blocks the signals in the calling thread and opens the signalfd that receives them.
    pub(super) fn block() -> nix::Result<Self> {
        let mut set = SigSet::empty();
        for s in TERMINATING {
            set.add(s);
        }
        let old = set.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
        let fd = match SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                // Best effort: the mask goes back to what it was.
                let _ = old.thread_set_mask();
                return Err(e);
            }
        };
        Ok(Self { fd, old })
    }

    /// The first terminating signal received so far, if any.
    pub(super) fn terminating_received(&self) -> nix::Result<Option<Signal>> {
        let mut first = None;
        while let Some(info) = self.fd.read_signal()? {
            if let Some(s) = signal_of(info.ssi_signo) {
                first.get_or_insert(s);
            }
        }
        Ok(first)
    }

    /// Starts `command` (a program, found on `PATH` unless it holds a `/`, and its
    /// arguments) with drtrace's environment, standard streams and original signal mask.
    pub(super) fn spawn(&self, command: &[OsString]) -> Result<Pid, SpawnFailure> {
        let args = command
            .iter()
            .map(|a| c_string(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(program) = args.first() else {
            return Err(SpawnFailure::Errno(Errno::ENOENT));
        };
        let env = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c_string(&kv)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut attr = PosixSpawnAttr::init().map_err(SpawnFailure::Errno)?;
        let mut default = SigSet::empty();
        default.add(Signal::SIGPIPE);
        attr.set_sigdefault(&default).map_err(SpawnFailure::Errno)?;
        attr.set_sigmask(&self.old).map_err(SpawnFailure::Errno)?;
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK,
        )
        .map_err(SpawnFailure::Errno)?;
        let actions = PosixSpawnFileActions::init().map_err(SpawnFailure::Errno)?;
        posix_spawnp(program, &actions, &attr, &args, &env).map_err(SpawnFailure::Errno)
    }

    /// Waits for the command `pid` to end, passing on the terminating signals that other
    /// processes send to drtrace meanwhile, and reaps it.
    pub(super) fn wait(&self, pid: Pid) -> io::Result<Ending> {
        let (exited_r, exited_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let waiter = std::thread::Builder::new()
            .name("drtrace-wait".to_owned())
            .spawn(move || notify_exit(pid, exited_w))?;
        loop {
            let mut fds = [
                PollFd::new(self.fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(exited_r.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let exited = fds[1].any().unwrap_or(true);
            // Until it is reaped below, the command's pid is still its own.
            self.forward_pending(pid)?;
            if exited {
                break;
            }
        }
        // The helper is done: it closed the pipe.
        let _ = waiter.join();
        loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Ending::Exited(code)),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(Ending::Killed(signal as i32)),
                // Stopped or continued (only reported when asked for): not an end.
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads what the signalfd holds and passes the terminating signals sent by a process
    /// on to `pid`.
    fn forward_pending(&self, pid: Pid) -> io::Result<()> {
        while let Some(info) = self.fd.read_signal()? {
            // si_code <= 0: kill(), sigqueue(), tgkill() from a process. Kernel-sent signals
            // (si_code > 0) already reached the command's process group.
            if let (Some(signal), true) = (signal_of(info.ssi_signo), info.ssi_code <= 0) {
                // The command may be exiting; there is nothing to pass on to it then.
                let _ = kill(pid, signal);
            }
        }
        Ok(())
    }
}

/// The terminating signal numbered `signo`, if it is one.
fn signal_of(signo: u32) -> Option<Signal> {
    let signal = Signal::try_from(i32::try_from(signo).ok()?).ok()?;
    TERMINATING.contains(&signal).then_some(signal)
}

/// Waits (without reaping) until `pid` has exited, then closes `exited`, which wakes the
/// poll in [`SignalGuard::wait`].
fn notify_exit(pid: Pid, exited: OwnedFd) {
    // Exited, or cannot be waited for at all: either way the poll must wake.
    while let Err(Errno::EINTR) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {
    }
    drop(exited);
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        // Signals still pending would act as soon as they are unblocked: drop them first.
        while let Ok(Some(_)) = self.fd.read_signal() {}
        let _ = self.old.thread_set_mask();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// A `Sig*:` mask of `/proc/<pid>/status`.
    fn mask(pid: Pid, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        u64::from_str_radix(line.trim_start_matches(':').trim(), 16).unwrap()
    }

    #[test]
    fn the_command_gets_the_original_mask_and_default_sigpipe() {
        let bit = |s: Signal| 1u64 << (s as i32 - 1);
        let guard = SignalGuard::block().unwrap();
        let me = nix::unistd::gettid();
        assert_ne!(mask(me, "SigBlk") & bit(Signal::SIGTERM), 0);
        // The test harness, like any Rust program, ignores SIGPIPE.
        assert_ne!(mask(Pid::this(), "SigIgn") & bit(Signal::SIGPIPE), 0);
        // posix_spawn returns once the program runs, so its status shows what it got.
        let pid = guard.spawn(&command(&["sleep", "60"])).unwrap();
        let blocked = mask(pid, "SigBlk");
        let ignored = mask(pid, "SigIgn");
        kill(pid, Signal::SIGKILL).unwrap();
        assert_eq!(
            guard.wait(pid).unwrap(),
            Ending::Killed(Signal::SIGKILL as i32)
        );
        for s in TERMINATING {
            assert_eq!(blocked & bit(s), 0, "{s} is blocked in the command");
        }
        assert_eq!(
            ignored & bit(Signal::SIGPIPE),
            0,
            "SIGPIPE is ignored in the command"
        );
        let pid = guard.spawn(&command(&["sh", "-c", "exit 7"])).unwrap();
        assert_eq!(guard.wait(pid).unwrap(), Ending::Exited(7));
    }

    #[test]
    fn a_missing_program_is_enoent() {
        let guard = SignalGuard::block().unwrap();
        match guard.spawn(&command(&["drtrace-no-such-program-here"])) {
            Err(SpawnFailure::Errno(Errno::ENOENT)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_signal_sent_to_drtrace_is_passed_on_to_the_command() {
        let guard = SignalGuard::block().unwrap();
        let pid = guard.spawn(&command(&["sleep", "60"])).unwrap();
        // Thread-directed, so that no other test thread (which does not block it) takes it.
        let me = nix::sys::pthread::pthread_self();
        std::thread::spawn(move || {
            nix::sys::pthread::pthread_kill(me, Signal::SIGTERM).unwrap();
        })
        .join()
        .unwrap();
        let ending = guard.wait(pid).unwrap();
        assert_eq!(ending, Ending::Killed(Signal::SIGTERM as i32));
        // This thread survived and the guard has nothing left pending.
        assert_eq!(guard.terminating_received().unwrap(), None);
    }

    #[test]
    fn exit_statuses_follow_the_shell() {
        assert_eq!(Ending::Exited(3).exit_status(), 3);
        assert_eq!(Ending::Exited(0).exit_status(), 0);
        assert_eq!(Ending::Killed(2).exit_status(), 130);
        assert_eq!(Ending::Killed(9).exit_status(), 137);
        assert_eq!(
            Ending::Killed(9).describe(),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(Ending::Exited(3).describe(), "exited with status 3");
    }
}
