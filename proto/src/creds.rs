//! Who is at the other end: peer credentials (SO_PEERCRED, SO_PEERGROUPS) and socket-file
//! ownership, checked both ways before any request is sent or served (DESIGN.md, "Discovery
//! and liveness").

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use thiserror::Error;

/// The credentials the kernel recorded for the process at the other end of a Unix socket:
/// for a connecting client, at `connect()`; for a listening daemon, at `listen()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id (in our pid namespace; 0 if the peer is in an unrelated one).
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl PeerCred {
    /// True if the peer is `gid` by primary or supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Reads the peer's credentials and groups from a connected Unix socket.
pub fn peer_credentials(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let cred = getsockopt(&sock, PeerCredentials)?;
    let groups = crate::sys::peer_groups(sock)?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
    })
}

/// A uid, shown with its user name when the password database knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidName(pub u32);

impl fmt::Display for UidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match user_name(self.0) {
            Some(name) => write!(f, "uid {} ({name})", self.0),
            None => write!(f, "uid {}", self.0),
        }
    }
}

/// The user name of `uid` from the password database.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// A socket path or peer that is not what the caller expected.
#[derive(Debug, Error)]
pub enum OwnershipError {
    /// The path exists but belongs to someone else.
    #[error(
        "{path} is owned by {owner}, not {expected}; refusing to use it (remove it if it is stale)"
    )]
    WrongOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: UidName,
        /// Who should own it.
        expected: UidName,
    },
    /// The path exists but is not a socket.
    #[error("{path} exists and is not a socket; refusing to use it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The process behind the socket runs as someone else.
    #[error(
        "the daemon behind {path} (pid {pid}) runs as {owner}, not {expected}; refusing to talk to it"
    )]
    WrongPeer {
        /// The socket path.
        path: PathBuf,
        /// The peer's pid.
        pid: i32,
        /// The peer's uid.
        owner: UidName,
        /// Who it should be.
        expected: UidName,
    },
    /// The path could not be examined.
    #[error("cannot examine {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What is at a socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFile {
    /// Nothing.
    Absent,
    /// A socket owned by the expected uid.
    Owned,
}

/// Checks that `path`, if present, is a socket owned by `expected_uid` (symlinks are not
/// followed: a link is "not a socket").
pub fn check_socket_file(path: &Path, expected_uid: u32) -> Result<SocketFile, OwnershipError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SocketFile::Absent),
        Err(source) => {
            return Err(OwnershipError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if meta.uid() != expected_uid {
        return Err(OwnershipError::WrongOwner {
            path: path.to_owned(),
            owner: UidName(meta.uid()),
            expected: UidName(expected_uid),
        });
    }
    if !meta.file_type().is_socket() {
        return Err(OwnershipError::NotASocket {
            path: path.to_owned(),
        });
    }
    Ok(SocketFile::Owned)
}

/// Checks that the peer behind a connected socket runs as `expected_uid`.
pub fn check_peer(
    sock: BorrowedFd<'_>,
    path: &Path,
    expected_uid: u32,
) -> Result<PeerCred, OwnershipError> {
    let cred = peer_credentials(sock).map_err(|source| OwnershipError::Io {
        path: path.to_owned(),
        source,
    })?;
    if cred.uid != expected_uid {
        return Err(OwnershipError::WrongPeer {
            path: path.to_owned(),
            pid: cred.pid,
            owner: UidName(cred.uid),
            expected: UidName(expected_uid),
        });
    }
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn socketpair_peer_is_us() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_credentials(a.as_fd()).unwrap();
        assert_eq!(cred.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(cred.pid, i32::try_from(std::process::id()).unwrap());
        assert!(cred.in_group(nix::unistd::getegid().as_raw()));
    }

    #[test]
    fn socket_files_are_checked_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let sock = dir.path().join("s");
        assert_eq!(check_socket_file(&sock, me).unwrap(), SocketFile::Absent);
        let _l = UnixListener::bind(&sock).unwrap();
        assert_eq!(check_socket_file(&sock, me).unwrap(), SocketFile::Owned);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(matches!(
            check_socket_file(&link, me),
            Err(OwnershipError::NotASocket { .. })
        ));
        let err = check_socket_file(&sock, me + 1).unwrap_err();
        assert!(matches!(err, OwnershipError::WrongOwner { .. }));
        assert!(err.to_string().contains(&format!("uid {me}")), "{err}");
    }
}
