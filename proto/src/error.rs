//! Errors that cross a socket: a stable code plus a human message, never `Debug` output.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error class. New codes are added at the end; a client that
/// receives a code it does not know reads it as [`ErrorCode::Unknown`] and shows the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be parsed or is not valid for this connection's role.
    BadRequest,
    /// The peer speaks an incompatible major protocol version.
    VersionMismatch,
    /// The peer's credentials do not allow this request.
    PermissionDenied,
    /// A session with this name already exists in this daemon.
    SessionExists,
    /// No session has this name.
    SessionNotFound,
    /// The request named no session and there is no current session.
    NoCurrentSession,
    /// The trace output directory already exists; nothing is overwritten.
    OutputExists,
    /// A session, channel or event name is not acceptable.
    InvalidName,
    /// The request is not possible in the session's current state.
    InvalidState,
    /// A channel with this name already exists in the session.
    ChannelExists,
    /// No channel has this name.
    ChannelNotFound,
    /// A parameter is out of range or inconsistent.
    InvalidArgument,
    /// A filesystem or socket operation failed on the daemon's side.
    Io,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The daemon failed in a way it did not expect; its log has details.
    Internal,
    /// The requested feature is not available in this daemon.
    Unsupported,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// An error reply: what went wrong, for programs (`code`) and for people (`message`).
///
/// Messages are lowercase, without a trailing period, and complete enough to act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// The stable error class.
    pub code: ErrorCode,
    /// One line for a person: what failed and, where possible, what to do.
    pub message: String,
}

impl WireError {
    /// Builds an error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_from_newer_peers_are_tolerated() {
        let e: WireError =
            serde_json::from_str(r#"{"code":"quota_exceeded","message":"too many"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
        assert_eq!(e.to_string(), "too many");
    }
}
