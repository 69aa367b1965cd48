//! The greeting that opens every connection.
//!
//! The connecting side sends [`Hello`]; the daemon answers [`HelloReply`]. A different major
//! version is refused with both versions in the message; a different minor version is
//! accepted, and each side uses only what the lower minor knows.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// Major protocol version: bumped on any change an older peer would misread.
pub const PROTOCOL_MAJOR: u16 = 1;
/// Minor protocol version: bumped when fields or messages are added compatibly.
pub const PROTOCOL_MINOR: u16 = 0;

/// What the connecting process is, which decides the messages it may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A control client such as the `drtrace` CLI.
    Control,
    /// A traced application's in-process library.
    App,
    /// A consumer daemon.
    Consumer,
    /// A user session daemon talking to the root broker.
    Sessiond,
}

/// First frame on every connection, sent by the side that connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// What the connecting process is.
    pub role: Role,
    /// Its protocol major version.
    pub major: u16,
    /// Its protocol minor version.
    pub minor: u16,
}

impl Hello {
    /// The greeting this build sends for `role`.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
        }
    }

    /// Checks the peer's version against ours: a major mismatch is refused with both versions.
    pub fn check_compatible(&self) -> Result<u16, WireError> {
        if self.major != PROTOCOL_MAJOR {
            return Err(WireError::new(
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version mismatch: peer speaks {}.{}, this daemon speaks {}.{}",
                    self.major, self.minor, PROTOCOL_MAJOR, PROTOCOL_MINOR
                ),
            ));
        }
        // Trivial while our minor is 0, but the rule must already hold when it grows.
        #[allow(clippy::unnecessary_min_or_max)]
        let negotiated = self.minor.min(PROTOCOL_MINOR);
        Ok(negotiated)
    }
}

/// Who answered a hello: enough to name a daemon in errors ("daemon pid 42 ...").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// The uid it runs as.
    pub uid: u32,
    /// Its protocol major version.
    pub major: u16,
    /// Its protocol minor version.
    pub minor: u16,
    /// The drtrace release it was built from.
    pub version: String,
}

/// The daemon's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum HelloReply {
    /// The connection is accepted; `minor` is the negotiated minor version.
    Welcome(DaemonInfo),
    /// The connection is refused; the daemon closes it after this frame.
    Refused(WireError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_mismatch_names_both_versions() {
        let hello = Hello {
            role: Role::Control,
            major: PROTOCOL_MAJOR + 1,
            minor: 7,
        };
        let err = hello.check_compatible().unwrap_err();
        assert_eq!(err.code, ErrorCode::VersionMismatch);
        assert!(err.message.contains(&format!("{}.7", PROTOCOL_MAJOR + 1)));
        assert!(
            err.message
                .contains(&format!("{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"))
        );
    }

    #[test]
    fn newer_minor_negotiates_down() {
        let hello = Hello {
            role: Role::App,
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR + 3,
        };
        assert_eq!(hello.check_compatible().unwrap(), PROTOCOL_MINOR);
    }
}
