//! The drtrace wire protocol: every type that crosses a process boundary.
//!
//! Linked by every drtrace process: the `drtrace` CLI (through `drtrace-ctl`), the per-user
//! `drtrace-sessiond`, the root `drtrace-broker`, the `drtrace-consumerd` and the in-process
//! library inside traced applications. Keeping the types in one crate is what makes a change
//! to the wire visible in one diff (see `docs/protocol.md` for what counts as breaking).
//!
//! - [`frame`]: length-prefixed frames with file descriptors attached (SCM_RIGHTS), and the
//!   size cap checked before anything is allocated.
//! - [`hello`]: the versioned greeting that opens every connection.
//! - [`control`]: requests from control clients (the CLI) and their replies.
//! - [`app`]: the in-process library's registration and the commands daemons send it.
//! - [`consumer`]: session daemon ↔ consumer daemon.
//! - [`event`]: descriptions of tracepoints (fields, types, log levels).
//! - [`kernel`]: kernel tracing delegated by a session daemon to the root broker.
//! - [`creds`]: peer credentials (SO_PEERCRED, SO_PEERGROUPS) and socket ownership checks.
//! - [`paths`]: where sockets, traces and logs live, with their environment overrides.
//! - [`client`]: a blocking client that never hangs on a stale, squatted or silent socket.
//! - [`startup`]: the one-line readiness report a detached daemon gives its spawner.
//!
//! # Example
//!
//! ```
//! use drtrace_proto::control::ControlRequest;
//! use drtrace_proto::frame::{decode_json, encode_json};
//!
//! let bytes = encode_json(&ControlRequest::Ping).unwrap();
//! // A frame is a little-endian u32 length, then that many bytes of JSON.
//! assert_eq!(&bytes[..4], &(bytes.len() as u32 - 4).to_le_bytes());
//! let back: ControlRequest = decode_json(&bytes[4..]).unwrap();
//! assert_eq!(back, ControlRequest::Ping);
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod client;
pub mod consumer;
pub mod control;
pub mod creds;
pub mod error;
pub mod event;
pub mod frame;
pub mod hello;
pub mod kernel;
pub mod names;
pub mod paths;
pub mod startup;
mod sys;

pub use error::{ErrorCode, WireError};
pub use hello::{Hello, PROTOCOL_MAJOR, PROTOCOL_MINOR, Role};
