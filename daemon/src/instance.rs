//! One daemon per socket.
//!
//! ```text
//! starter                                     lock file: <socket>.lock (0600, holds the pid)
//!   |- socket path owned by someone else? ---> refuse, naming the owner
//!   |- flock(lock, EX|NB) fails -------------> another starter or daemon holds it: greet the
//!   |                                          socket until it answers ("already running")
//!   |                                          or the deadline passes (error naming its pid)
//!   |- flock succeeds, socket file present:
//!   |    greeted and answered ---------------> already running (its lock file was removed)
//!   |    nobody accepts -------------------> stale: unlink and take over
//!   '- bind + listen, chmod 0600, write pid into the lock file
//! ```
//!
//! The lock, not the socket file, decides who owns the socket: the kernel drops a `flock`
//! when its holder dies, even by SIGKILL, so a dead daemon never blocks the next one. On
//! drop, [`Instance`] removes the socket (if it is still ours) and the lock file.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drtrace_proto::client::{ConnectError, Connection};
use drtrace_proto::creds::{OwnershipError, SocketFile, UidName, check_socket_file};
use drtrace_proto::hello::Role;
use drtrace_proto::paths::lock_path;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

/// Why a daemon could not take its socket.
#[derive(Debug, Error)]
pub enum StartupError {
    /// The socket path, or the lock file, belongs to someone else or is not a socket.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    /// The lock file belongs to another uid.
    #[error("lock file {path} is owned by {owner}, not {expected}; refusing to start")]
    LockOwner {
        /// The lock file.
        path: PathBuf,
        /// Its owner.
        owner: UidName,
        /// Who should own it.
        expected: UidName,
    },
    /// Another daemon holds the lock or the socket but does not answer.
    #[error(
        "{} holds {path} but does not answer; it may be stopped or hung (kill it, or wait)",
        match pid { Some(pid) => format!("daemon pid {pid}"), None => "another daemon".to_owned() }
    )]
    NotResponding {
        /// The socket.
        path: PathBuf,
        /// That daemon's pid, when known.
        pid: Option<i32>,
    },
    /// A filesystem or socket call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StartupError + 'a {
    move |source| StartupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The outcome of [`Instance::acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// This process now owns the socket.
    Owner(Instance),
    /// A live daemon already serves the socket.
    AlreadyRunning {
        /// Its pid.
        pid: i32,
    },
}

/// Ownership of a daemon socket: the bound listener and the held lock.
#[derive(Debug)]
pub struct Instance {
    listener: Option<UnixListener>,
    socket: PathBuf,
    socket_ino: (u64, u64),
    lock: Flock<File>,
    lock_path: PathBuf,
}

impl Instance {
    /// Takes the socket at `socket` for a daemon running as `uid`, following the rules in the
    /// module docs; `timeout` bounds each greeting of another daemon.
    pub fn acquire(socket: &Path, uid: u32, timeout: Duration) -> Result<Acquired, StartupError> {
        check_socket_file(socket, uid)?;
        let lock_path = lock_path(socket);
        // Another starter may unlink the lock file between our open and our flock (it does so
        // on exit); a lock on an unlinked file guards nothing, so start over a few times.
        for _ in 0..16 {
            let file = open_lock_file(&lock_path, uid)?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((_, Errno::EWOULDBLOCK)) => return wait_for_holder(socket, uid, timeout),
                Err((_, e)) => return Err(io_err("cannot lock", &lock_path)(e.into())),
            };
            if !same_file(&lock, &lock_path) {
                continue;
            }
            return Self::take_socket(socket, uid, timeout, lock, lock_path);
        }
        Err(StartupError::Io {
            what: "lock file keeps changing:",
            path: lock_path,
            source: io::Error::from(io::ErrorKind::ResourceBusy),
        })
    }

    fn take_socket(
        socket: &Path,
        uid: u32,
        timeout: Duration,
        mut lock: Flock<File>,
        lock_path: PathBuf,
    ) -> Result<Acquired, StartupError> {
        if check_socket_file(socket, uid)? == SocketFile::Owned {
            match Connection::connect(socket, Role::Control, uid, timeout) {
                Ok(conn) => {
                    return Ok(Acquired::AlreadyRunning {
                        pid: i32::try_from(conn.daemon().pid).unwrap_or(i32::MAX),
                    });
                }
                Err(ConnectError::NotResponding { pid, .. }) => {
                    return Err(StartupError::NotResponding {
                        path: socket.to_owned(),
                        pid,
                    });
                }
                Err(ConnectError::Ownership(e)) => return Err(e.into()),
                // Nobody accepts (or something unreadable answers while we hold the lock
                // that every drtrace daemon holds): the file is stale.
                Err(_) => remove_stale(socket)?,
            }
        }
        let listener = bind_private(socket)?;
        let meta = std::fs::symlink_metadata(socket).map_err(io_err("cannot stat", socket))?;
        let pid = std::process::id();
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(&*lock, "{pid}"))
            .map_err(io_err("cannot write", &lock_path))?;
        Ok(Acquired::Owner(Instance {
            listener: Some(listener),
            socket: socket.to_owned(),
            socket_ino: (meta.dev(), meta.ino()),
            lock,
            lock_path,
        }))
    }

    /// [`Instance::acquire`] for a daemon's start-up: when another daemon already serves the
    /// socket, says so (log, stderr unless `detached`, and the `running PID` readiness line)
    /// and returns `None`, and the caller exits with success.
    pub fn acquire_or_report(
        program: &str,
        socket: &Path,
        uid: u32,
        timeout: Duration,
        detached: bool,
    ) -> Result<Option<Instance>, StartupError> {
        match Self::acquire(socket, uid, timeout)? {
            Acquired::Owner(instance) => Ok(Some(instance)),
            Acquired::AlreadyRunning { pid } => {
                log::info!("already running (pid {pid}) at {}", socket.display());
                if !detached {
                    eprintln!("{program}: already running (pid {pid})");
                }
                crate::process::report_readiness(
                    &drtrace_proto::startup::Readiness::AlreadyRunning { pid },
                    detached,
                );
                Ok(None)
            }
        }
    }

    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        self.listener
            .as_ref()
            .expect("the listener is only taken by take_listener")
    }

    /// Moves the listener out (e.g. into an async wrapper); the socket file is still removed
    /// when the instance is dropped.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Remove the socket only if it is still the one we bound: after our lock was lost
        // (e.g. the lock file was deleted by hand) another daemon may own the path.
        if let Ok(meta) = std::fs::symlink_metadata(&self.socket) {
            if (meta.dev(), meta.ino()) == self.socket_ino {
                let _ = std::fs::remove_file(&self.socket);
            }
        }
        // Unlink while still holding the lock; a starter that opened this inode re-checks
        // the path after locking and starts over with a fresh file.
        if same_file(&self.lock, &self.lock_path) {
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

fn open_lock_file(path: &Path, uid: u32) -> Result<File, StartupError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("cannot open lock file", path))?;
    let meta = file
        .metadata()
        .map_err(io_err("cannot stat lock file", path))?;
    if meta.uid() != uid {
        return Err(StartupError::LockOwner {
            path: path.to_owned(),
            owner: UidName(meta.uid()),
            expected: UidName(uid),
        });
    }
    Ok(file)
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Someone holds the lock: a running daemon, or one still starting. Greet the socket until it
/// answers; the holder's pid (from the lock file) names it if it never does.
fn wait_for_holder(socket: &Path, uid: u32, timeout: Duration) -> Result<Acquired, StartupError> {
    let deadline = Instant::now() + timeout.max(Duration::from_secs(2));
    let mut pause = Duration::from_millis(2);
    loop {
        match Connection::connect(socket, Role::Control, uid, timeout) {
            Ok(conn) => {
                return Ok(Acquired::AlreadyRunning {
                    pid: i32::try_from(conn.daemon().pid).unwrap_or(i32::MAX),
                });
            }
            Err(ConnectError::Ownership(e)) => return Err(e.into()),
            Err(ConnectError::NotResponding { pid, .. }) => {
                return Err(StartupError::NotResponding {
                    path: socket.to_owned(),
                    pid: pid.or_else(|| drtrace_proto::client::pid_from_lock_file(socket)),
                });
            }
            // Not listening yet: the holder is between taking the lock and binding.
            Err(_) if Instant::now() < deadline => {
                // No readiness signal exists between two independent starters, so this one
                // place polls, with a short, growing pause.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(_) => {
                return Err(StartupError::NotResponding {
                    path: socket.to_owned(),
                    pid: drtrace_proto::client::pid_from_lock_file(socket),
                });
            }
        }
    }
}

fn remove_stale(socket: &Path) -> Result<(), StartupError> {
    match std::fs::remove_file(socket) {
        Ok(()) => {
            log::info!("removed stale socket {}", socket.display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove stale socket", socket)(e)),
    }
}

/// Binds `socket` readable and writable by its owner only.
fn bind_private(socket: &Path) -> Result<UnixListener, StartupError> {
    if let Some(parent) = socket.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            std::fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
    }
    // The umask makes the file 0600 from the moment it exists; the chmod is for umasks that
    // the process does not control. Peers are still checked one by one (SO_PEERCRED).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err("cannot listen on", socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod", socket))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    #[test]
    fn first_starter_owns_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let inst = match Instance::acquire(&sock, me(), Duration::from_millis(200)).unwrap() {
            Acquired::Owner(i) => i,
            Acquired::AlreadyRunning { .. } => panic!("nobody else runs"),
        };
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pid: u32 = std::fs::read_to_string(lock_path(&sock))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, std::process::id());
        drop(inst);
        assert!(!sock.exists());
        assert!(!lock_path(&sock).exists());
    }

    #[test]
    fn stale_socket_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        drop(UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let acquired = Instance::acquire(&sock, me(), Duration::from_millis(200)).unwrap();
        assert!(matches!(acquired, Acquired::Owner(_)));
    }

    #[test]
    fn a_held_lock_with_a_silent_holder_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let _holder = match Instance::acquire(&sock, me(), Duration::from_millis(100)).unwrap() {
            Acquired::Owner(i) => i,
            Acquired::AlreadyRunning { .. } => panic!("nobody else runs"),
        };
        // The holder never accepts, so a second starter must give up with the holder's pid.
        let start = Instant::now();
        let err = Instance::acquire(&sock, me(), Duration::from_millis(100)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        let ours = i32::try_from(std::process::id()).unwrap();
        assert!(
            matches!(err, StartupError::NotResponding { pid: Some(p), .. } if p == ours),
            "{err}"
        );
    }

    #[test]
    fn a_regular_file_at_the_socket_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        std::fs::write(&sock, b"not a socket").unwrap();
        let err = Instance::acquire(&sock, me(), Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
    }
}
