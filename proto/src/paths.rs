//! Where things live, and the environment variables that move them (for tests and containers).
//!
//! | what | default | override |
//! |---|---|---|
//! | user session daemon socket | `/tmp/ltt-sessiond-$USER` | `DRTRACE_SESSIOND_SOCKET` |
//! | its single-instance lock | the socket path + `.lock` | (follows the socket) |
//! | broker directory | `/run/drtrace` | `DRTRACE_BROKER_DIR` |
//! | trace output | `$HOME/drtrace-traces/<session>` | `DRTRACE_HOME`, `create --output` |
//!
//! `$USER` and `$HOME` come from the password database entry of the real uid, never from the
//! environment: a process that inherited someone else's `USER` must still find its own daemon.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

/// Prefix of the per-user session daemon socket. A fixed, predictable path in `/tmp` is what
/// lets every process of a user find the daemon without configuration; it is safe only
/// because both ends check ownership and peer credentials (see [`crate::creds`]).
pub const SESSIOND_SOCKET_PREFIX: &str = "/tmp/ltt-sessiond-";
/// Default broker directory: root-owned, so no user can squat the broker's sockets.
pub const DEFAULT_BROKER_DIR: &str = "/run/drtrace";
/// Name of the broker's socket inside its directory.
pub const BROKER_SOCKET_NAME: &str = "broker.sock";
/// Directory under the user's home where traces go by default.
pub const TRACES_DIR_NAME: &str = "drtrace-traces";

/// Overrides the user session daemon socket path.
pub const ENV_SESSIOND_SOCKET: &str = "DRTRACE_SESSIOND_SOCKET";
/// Overrides the broker directory.
pub const ENV_BROKER_DIR: &str = "DRTRACE_BROKER_DIR";
/// Overrides the directory traces are written under.
pub const ENV_HOME: &str = "DRTRACE_HOME";
/// Names the session daemon binary the CLI spawns.
pub const ENV_SESSIOND_PATH: &str = "DRTRACE_SESSIOND_PATH";
/// Names the broker binary root's CLI spawns.
pub const ENV_BROKER_PATH: &str = "DRTRACE_BROKER_PATH";
/// Names the consumer daemon binary the session daemon spawns.
pub const ENV_CONSUMERD_PATH: &str = "DRTRACE_CONSUMERD_PATH";
/// Bounds how long a traced application waits for registration at start-up, in ms.
pub const ENV_REGISTER_TIMEOUT_MS: &str = "DRTRACE_REGISTER_TIMEOUT_MS";
/// Bounds how long a traced application waits for a daemon to answer its greeting, in ms.
pub const ENV_PING_TIMEOUT_MS: &str = "DRTRACE_PING_TIMEOUT_MS";

/// The real user of this process, from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Real uid.
    pub uid: u32,
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
}

impl UserInfo {
    /// Looks up the real uid of this process.
    pub fn current() -> io::Result<Self> {
        Self::of(nix::unistd::getuid().as_raw())
    }

    /// Looks up `uid`.
    pub fn of(uid: u32) -> io::Result<Self> {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(io::Error::from)?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("uid {uid} has no entry in the password database"),
                )
            })?;
        Ok(Self {
            uid,
            name: user.name,
            home: user.dir,
        })
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The session daemon socket for `user` (honouring `DRTRACE_SESSIOND_SOCKET`).
pub fn sessiond_socket(user: &UserInfo) -> PathBuf {
    env_path(ENV_SESSIOND_SOCKET)
        .unwrap_or_else(|| PathBuf::from(format!("{SESSIOND_SOCKET_PREFIX}{}", user.name)))
}

/// The lock file that makes one daemon the only owner of `socket`.
pub fn lock_path(socket: &std::path::Path) -> PathBuf {
    let mut s: OsString = socket.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The broker directory (honouring `DRTRACE_BROKER_DIR`).
pub fn broker_dir() -> PathBuf {
    env_path(ENV_BROKER_DIR).unwrap_or_else(|| PathBuf::from(DEFAULT_BROKER_DIR))
}

/// The broker's socket.
pub fn broker_socket() -> PathBuf {
    broker_dir().join(BROKER_SOCKET_NAME)
}

/// The directory under which sessions of `user` write their traces (honouring `DRTRACE_HOME`).
pub fn trace_home(user: &UserInfo) -> PathBuf {
    env_path(ENV_HOME).unwrap_or_else(|| user.home.join(TRACES_DIR_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_sits_beside_the_socket() {
        assert_eq!(
            lock_path(std::path::Path::new("/tmp/ltt-sessiond-bob")),
            PathBuf::from("/tmp/ltt-sessiond-bob.lock")
        );
    }

    #[test]
    fn current_user_comes_from_the_password_database() {
        let me = UserInfo::current().unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert!(!me.name.is_empty());
    }
}
