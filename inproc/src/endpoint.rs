//! The daemons an application registers with, and where to find them.

use std::fmt;
use std::io;
use std::path::PathBuf;

use drtrace_proto::paths;

/// A daemon the application keeps a listener for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The user's session daemon (runs as the real uid).
    Sessiond,
    /// The root broker (system-wide sessions; speaks the same app protocol).
    Broker,
}

impl Endpoint {
    pub(crate) const COUNT: usize = 2;
    pub(crate) const ALL: [Endpoint; Self::COUNT] = [Endpoint::Sessiond, Endpoint::Broker];

    pub(crate) fn index(self) -> usize {
        match self {
            Endpoint::Sessiond => 0,
            Endpoint::Broker => 1,
        }
    }

    /// The socket and the uid the daemon behind it must run as.
    ///
    /// The session daemon's path comes from `DRTRACE_SESSIOND_SOCKET` when set, without the
    /// password-database lookup (which may go through NSS, and may not know a container's
    /// uid).
    pub(crate) fn resolve(self) -> io::Result<(PathBuf, u32)> {
        match self {
            Endpoint::Sessiond => {
                let uid = nix::unistd::getuid().as_raw();
                match std::env::var_os(paths::ENV_SESSIOND_SOCKET).filter(|v| !v.is_empty()) {
                    Some(path) => Ok((PathBuf::from(path), uid)),
                    None => {
                        let user = paths::UserInfo::current()?;
                        Ok((paths::sessiond_socket(&user), user.uid))
                    }
                }
            }
            Endpoint::Broker => Ok((paths::broker_socket(), 0)),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Sessiond => "session daemon",
            Endpoint::Broker => "broker",
        })
    }
}
