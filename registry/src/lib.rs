//! The session registry and the machinery that serves it, shared by the per-user session
//! daemon (`drtrace-sessiond`) and the root broker (`drtrace-broker`).
//!
//! A daemon built on it takes its socket (see `drtrace_daemon::instance`), then calls
//! [`serve`] with an [`EngineConfig`] saying who may connect ([`AccessPolicy`]) and how the
//! kernel is reached ([`kernel::KernelBackend`]: delegated to the broker by a session daemon,
//! local tracefs in the broker). The engine does the rest, on one smol thread:
//!
//! - control clients: the session registry (sessions, channels, event rules, the current
//!   session) and every request of [`drtrace_proto::control`];
//! - applications: registration, and the commands that bring them in line with the sessions
//!   (buffers, event ids, start/stop) — the same path for the first session and the next;
//! - buffers and metadata: per-UID buffer sets (one per user whose apps register) and per-PID
//!   ones, each a CTF trace with its own metadata file;
//! - the consumer daemon: spawned on first need, fed every stream, respawned if it dies.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use drtrace_daemon::instance::{Acquired, Instance};
//! use drtrace_daemon::signals::TerminationSignals;
//! use drtrace_proto::hello::{DaemonInfo, PROTOCOL_MAJOR, PROTOCOL_MINOR};
//! use drtrace_registry::{AccessPolicy, EngineConfig, serve};
//!
//! let signals = TerminationSignals::block()?;
//! let socket = std::path::PathBuf::from("/tmp/example.sock");
//! let uid = nix::unistd::getuid().as_raw();
//! if let Acquired::Owner(instance) = Instance::acquire(&socket, uid, Duration::from_secs(1))? {
//!     let info = DaemonInfo {
//!         pid: std::process::id(),
//!         uid,
//!         major: PROTOCOL_MAJOR,
//!         minor: PROTOCOL_MINOR,
//!         version: "0.1.0".into(),
//!     };
//!     let config = EngineConfig::new(info, socket, "alice".into(), AccessPolicy::Owner);
//!     serve(config, instance, signals)?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod apps;
pub mod clock;
mod conn;
mod consumer;
mod control;
pub mod kernel;
mod recording;
mod registry;
mod server;
mod sync;

pub use conn::{Conn, FRAME_TIMEOUT, with_timeout};
pub use consumer::{Consumer, ConsumerConfig};
pub use recording::trace_info;
pub use server::{AccessPolicy, EngineConfig, SessiondHandler, ShutdownHook, serve};
