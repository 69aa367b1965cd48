//! `drtrace-sessiond`, the per-user session daemon.
//!
//! One runs per user, spawned on that user's first `drtrace` command, listening at
//! `/tmp/ltt-sessiond-$USER` (override `DRTRACE_SESSIOND_SOCKET`). It holds the user's
//! session registry (sessions, channels, event rules, the current session) and serves only
//! peers running as its own uid or root.
//!
//! The binary's `main` parses arguments, detaches and sets up logging; [`run`] does the rest:
//! it takes the socket (see [`drtrace_daemon::instance`] for the one-daemon rules), reports
//! readiness, and serves until SIGTERM/SIGINT or `drtrace daemon stop`, removing its socket
//! on every exit path but SIGKILL (after which the next daemon cleans up). The serving itself
//! is [`drtrace_registry`]'s, shared with the broker; what is this daemon's own is who may
//! connect (its user and root) and how kernel events are reached: delegated to the root
//! broker, with the user's own credentials (`broker_link`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker_link;

use std::path::PathBuf;
use std::time::Duration;

use drtrace_daemon::instance::{Instance, StartupError};
use drtrace_daemon::process::report_readiness;
use drtrace_daemon::signals::TerminationSignals;
use drtrace_proto::hello::{DaemonInfo, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use drtrace_proto::paths::UserInfo;
use drtrace_proto::startup::Readiness;
use drtrace_registry::{AccessPolicy, EngineConfig};
use thiserror::Error;

/// How long a starter waits for another daemon on the same socket to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What the daemon was started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Socket path; `None` = the user's default (or `DRTRACE_SESSIOND_SOCKET`).
    pub socket: Option<PathBuf>,
    /// The log file in use, reported by `drtrace daemon status`.
    pub log_file: Option<PathBuf>,
    /// True when detached: standard error goes to `/dev/null` after start-up.
    pub detached: bool,
}

/// Why the daemon stopped with a failure; each maps to its own exit code.
#[derive(Debug, Error)]
pub enum MainError {
    /// The user could not be looked up.
    #[error("cannot identify the current user: {0}")]
    User(#[source] std::io::Error),
    /// Signals could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
    /// The socket could not be taken.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// Serving failed.
    #[error("event loop failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl MainError {
    /// The process exit code for this error: 1 for start-up failures, 3 for runtime ones
    /// (2 is left to argument errors).
    pub fn exit_code(&self) -> u8 {
        match self {
            MainError::User(_) | MainError::Signals(_) | MainError::Startup(_) => 1,
            MainError::Serve(_) => 3,
        }
    }
}

/// Takes the socket and serves until told to stop. Returns `Ok(())` also when another daemon
/// already serves the socket (after saying so).
pub fn run(config: Config) -> Result<(), MainError> {
    // Blocked before any thread exists, so that every thread inherits the mask.
    let signals = TerminationSignals::block().map_err(MainError::Signals)?;
    let user = UserInfo::current().map_err(MainError::User)?;
    let socket = config
        .socket
        .clone()
        .unwrap_or_else(|| drtrace_proto::paths::sessiond_socket(&user));
    let Some(instance) = Instance::acquire_or_report(
        "drtrace-sessiond",
        &socket,
        user.uid,
        PING_TIMEOUT,
        config.detached,
    )?
    else {
        return Ok(());
    };
    let pid = std::process::id();
    log::info!("listening on {} as {}", socket.display(), user.name);
    let info = DaemonInfo {
        pid,
        uid: user.uid,
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    report_readiness(
        &Readiness::Ready {
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
        },
        config.detached,
    );
    let mut engine = EngineConfig::new(info, socket, user.name, AccessPolicy::Owner);
    engine.consumer.log_file = config
        .log_file
        .as_ref()
        .map(|p| p.with_file_name("consumerd.log"));
    engine.log_file = config.log_file;
    engine.kernel = Some(std::rc::Rc::new(broker_link::BrokerLink::new(user.uid)));
    drtrace_registry::serve(engine, instance, signals).map_err(MainError::Serve)?;
    log::info!("exiting");
    Ok(())
}
