//! Termination signals as a readable descriptor (signalfd).
//!
//! The signals are blocked in the calling thread before any other thread exists, so every
//! thread inherits the mask and the signals queue on the descriptor instead of killing the
//! process; the event loop reads them like any other input and shuts down cleanly, removing
//! its socket. Child processes inherit the mask (std's `Command` does not reset it): a child
//! that must react to these signals unblocks them or, like the consumer daemon, reads them
//! from its own signalfd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Blocked termination signals and the descriptor they arrive on.
#[derive(Debug)]
pub struct TerminationSignals {
    fd: SignalFd,
}

impl TerminationSignals {
    /// The signals handled: SIGTERM, SIGINT and SIGQUIT end the daemon; SIGHUP is taken so a
    /// closing terminal cannot kill a daemon started in the foreground.
    pub const HANDLED: [Signal; 4] = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
    ];

    /// Blocks the signals in the calling thread and opens a non-blocking descriptor for them.
    /// Call it before spawning any thread.
    pub fn block() -> io::Result<Self> {
        let mut set = SigSet::empty();
        for sig in Self::HANDLED {
            set.add(sig);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Self { fd })
    }

    /// Reads one pending signal, `None` when none is pending.
    pub fn read(&self) -> io::Result<Option<Signal>> {
        match self.fd.read_signal()? {
            Some(info) => {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                Ok(Signal::try_from(signo).ok())
            }
            None => Ok(None),
        }
    }

    /// True for the signals that should end the daemon.
    pub fn terminates(sig: Signal) -> bool {
        sig != Signal::SIGHUP
    }
}

impl AsFd for TerminationSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
