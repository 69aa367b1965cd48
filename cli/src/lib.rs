//! `drtrace-ctl`: the control library of drtrace, and the `drtrace` command line built on it.
//!
//! Linked by the `drtrace` binary and by any program that wants to drive a user's
//! `drtrace-sessiond` (create sessions, enable events, start and stop tracing) without
//! shelling out to the CLI.
//!
//! - [`Client`]: one greeted connection to the user's session daemon (or to the root broker,
//!   for system-wide sessions), with one typed method per
//!   [`ControlRequest`](drtrace_proto::control::ControlRequest).
//!   [`Client::connect_or_spawn`] starts the daemon when none runs (the broker only when the
//!   caller is root).
//! - [`ConnectOptions`]: which daemon ([`DaemonKind`]), its socket, which uid it must run as,
//!   and the timeouts.
//! - [`spawn`]: finding `drtrace-sessiond` or `drtrace-broker` and reading its one-line
//!   start-up report.
//! - [`wait`]: waiting for a file to disappear without polling (inotify).
//! - [`cli`] and [`app`]: the `drtrace` command line (argument definitions and commands).
//!
//! # Example
//!
//! ```no_run
//! use drtrace_ctl::{Client, ConnectOptions};
//! use drtrace_proto::control::{CreateSession, OutputLocation};
//!
//! # fn main() -> Result<(), drtrace_ctl::ClientError> {
//! let opts = ConnectOptions::from_env()?;
//! let client = Client::connect_or_spawn(&opts)?;
//! let session = client.create_session(CreateSession {
//!     name: Some("demo".into()),
//!     output: OutputLocation::Under("/tmp/traces".into()),
//! })?;
//! client.start_session(Some(&session.name))?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cli;
mod client;
pub mod size;
pub mod spawn;
pub mod wait;

pub use client::{
    Client, ClientError, ConnectOptions, DaemonKind, FLUSH_TIMEOUT, HELLO_TIMEOUT, REQUEST_TIMEOUT,
};
