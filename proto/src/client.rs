//! A blocking client connection that never hangs on a stale, squatted or silent socket.
//!
//! [`Connection::connect`] is the liveness rule of DESIGN.md in code:
//! 1. the socket file must be a socket owned by the expected uid (no link, no squatter);
//! 2. the connect is non-blocking, so a daemon whose backlog is full cannot block us;
//! 3. the peer's credentials (SO_PEERCRED) must be the expected uid, checked before we send;
//! 4. the hello must be answered within the timeout, or the daemon is reported as not
//!    responding, with its pid.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::creds::{OwnershipError, PeerCred, SocketFile, check_peer, check_socket_file};
use crate::error::WireError;
use crate::frame::{FrameError, recv_message, send_message};
use crate::hello::{DaemonInfo, Hello, HelloReply, Role};

/// Why a daemon could not be reached or talked to.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// Nothing listens at the path (absent, or a stale file nobody accepts on).
    #[error("no daemon is listening at {path}")]
    NoDaemon {
        /// The socket path.
        path: PathBuf,
    },
    /// The path or the process behind it belongs to someone else.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    /// A process listens but does not answer in time (stopped, hung or overloaded).
    #[error("{} at {path} is not responding (no answer within {after:?}); it may be stopped or hung", daemon_name(*.pid))]
    NotResponding {
        /// The socket path.
        path: PathBuf,
        /// The daemon's pid, when known.
        pid: Option<i32>,
        /// How long we waited.
        after: Duration,
    },
    /// The daemon refused the connection (version mismatch, permission).
    #[error("{0}")]
    Refused(WireError),
    /// The daemon closed the connection or sent something unreadable.
    #[error("lost connection to the daemon at {path}: {source}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: FrameError,
    },
    /// The socket could not be created or connected.
    #[error("cannot connect to {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn daemon_name(pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!("daemon pid {pid}"),
        None => "the daemon".to_owned(),
    }
}

/// A reply of the wrong kind arrived.
#[derive(Debug, Error)]
#[error("unexpected reply: expected {expected}, received {received}")]
pub struct UnexpectedMessage {
    /// What the step expects.
    pub expected: &'static str,
    /// What arrived.
    pub received: &'static str,
}

/// The pid a daemon recorded in its lock file, if readable.
pub fn pid_from_lock_file(socket: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(crate::paths::lock_path(socket)).ok()?;
    text.trim().parse().ok().filter(|pid| *pid > 0)
}

/// An open, greeted connection to a daemon.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    path: PathBuf,
    peer: PeerCred,
    daemon: DaemonInfo,
}

impl Connection {
    /// Connects to the daemon at `path`, which must run as `expected_uid`, and greets it as
    /// `role`; every step is bounded by `timeout`.
    pub fn connect(
        path: &Path,
        role: Role,
        expected_uid: u32,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        Self::begin(path, role, expected_uid, timeout)?.finish(timeout)
    }

    /// The first half of [`Connection::connect`]: checks the socket and its peer, connects
    /// and sends the hello, without waiting for the answer. Lets a caller bound its own
    /// wait tightly (an application's start-up) and hand the greeting to someone who can
    /// wait longer (its listener thread), instead of dropping a slow daemon's connection.
    pub fn begin(
        path: &Path,
        role: Role,
        expected_uid: u32,
        timeout: Duration,
    ) -> Result<PendingHello, ConnectError> {
        if check_socket_file(path, expected_uid)? == SocketFile::Absent {
            return Err(ConnectError::NoDaemon {
                path: path.to_owned(),
            });
        }
        let stream = connect_nonblocking(path, timeout)?;
        let peer = check_peer(stream.as_fd(), path, expected_uid)?;
        let pending = PendingHello {
            stream,
            path: path.to_owned(),
            peer,
        };
        send_message(&pending.stream, &Hello::new(role), &[], timeout)
            .map_err(|e| pending.map_err(e))?;
        Ok(pending)
    }

    /// Who answered.
    pub fn daemon(&self) -> &DaemonInfo {
        &self.daemon
    }

    /// The peer's credentials as the kernel recorded them.
    pub fn peer(&self) -> &PeerCred {
        &self.peer
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one message with descriptors.
    pub fn send<T: Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<(), ConnectError> {
        send_message(&self.stream, msg, fds, timeout).map_err(|e| self.map_err(e))
    }

    /// Receives one message and its descriptors.
    pub fn recv<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<(T, Vec<OwnedFd>), ConnectError> {
        recv_message(&self.stream, timeout).map_err(|e| self.map_err(e))
    }

    /// Sends a request and waits for its reply.
    pub fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, ConnectError> {
        self.send(request, &[], timeout)?;
        Ok(self.recv(timeout)?.0)
    }

    fn map_err(&self, source: FrameError) -> ConnectError {
        frame_error(&self.path, self.peer.pid, source)
    }
}

/// A connection whose hello was sent and whose answer has not been read yet.
#[derive(Debug)]
pub struct PendingHello {
    stream: UnixStream,
    path: PathBuf,
    peer: PeerCred,
}

impl PendingHello {
    /// Waits up to `timeout` for the answer to start arriving, without reading it: true
    /// when [`PendingHello::finish`] can go on at once.
    pub fn answered_within(&self, timeout: Duration) -> bool {
        let ms = u16::try_from(timeout.as_millis().min(u128::from(u16::MAX))).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.stream.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)), Ok(n) if n > 0)
    }

    /// Reads the daemon's answer, within `timeout`.
    pub fn finish(self, timeout: Duration) -> Result<Connection, ConnectError> {
        let (reply, _fds): (HelloReply, _) =
            recv_message(&self.stream, timeout).map_err(|e| self.map_err(e))?;
        match reply {
            HelloReply::Welcome(daemon) => Ok(Connection {
                stream: self.stream,
                path: self.path,
                peer: self.peer,
                daemon,
            }),
            HelloReply::Refused(err) => Err(ConnectError::Refused(err)),
        }
    }

    /// The peer's pid.
    pub fn peer_pid(&self) -> i32 {
        self.peer.pid
    }

    fn map_err(&self, source: FrameError) -> ConnectError {
        frame_error(&self.path, self.peer.pid, source)
    }
}

/// A frame error on a daemon connection, as the caller sees it: a timeout names the daemon.
fn frame_error(path: &Path, pid: i32, source: FrameError) -> ConnectError {
    match source {
        FrameError::TimedOut(after) => ConnectError::NotResponding {
            path: path.to_owned(),
            pid: Some(pid),
            after,
        },
        source => ConnectError::Protocol {
            path: path.to_owned(),
            source,
        },
    }
}

fn connect_nonblocking(path: &Path, timeout: Duration) -> Result<UnixStream, ConnectError> {
    let io_err = |source: io::Error| ConnectError::Io {
        path: path.to_owned(),
        source,
    };
    let addr = UnixAddr::new(path).map_err(|e| io_err(e.into()))?;
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| io_err(e.into()))?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::ECONNREFUSED | Errno::ENOENT) => {
            return Err(ConnectError::NoDaemon {
                path: path.to_owned(),
            });
        }
        // The listener's backlog is full: it exists but is not accepting, i.e. hung.
        Err(Errno::EAGAIN) => {
            return Err(ConnectError::NotResponding {
                path: path.to_owned(),
                pid: pid_from_lock_file(path),
                after: timeout,
            });
        }
        Err(e) => return Err(io_err(e.into())),
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).map_err(io_err)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    #[test]
    fn absent_and_stale_sockets_mean_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let path = dir.path().join("sock");
        let err = Connection::connect(&path, Role::Control, me, Duration::from_secs(1));
        assert!(matches!(err, Err(ConnectError::NoDaemon { .. })));
        // A socket file whose listener is gone is stale: connect is refused at once.
        drop(UnixListener::bind(&path).unwrap());
        let start = Instant::now();
        let err = Connection::connect(&path, Role::Control, me, Duration::from_secs(1));
        assert!(matches!(err, Err(ConnectError::NoDaemon { .. })));
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn a_silent_listener_is_reported_with_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let path = dir.path().join("sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err =
            Connection::connect(&path, Role::Control, me, Duration::from_millis(100)).unwrap_err();
        let ours = i32::try_from(std::process::id()).unwrap();
        assert!(
            matches!(err, ConnectError::NotResponding { pid: Some(p), .. } if p == ours),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("pid {ours}")), "{err}");
    }

    #[test]
    fn a_socket_of_another_uid_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let path = dir.path().join("sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err =
            Connection::connect(&path, Role::Control, me + 1, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ConnectError::Ownership(_)), "{err}");
    }
}
