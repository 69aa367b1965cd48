//! `drtrace-broker`, the root broker: one per host.
//!
//! It serves three kinds of peers on `/run/drtrace/broker.sock` (override
//! `DRTRACE_BROKER_DIR`):
//! - applications of every user, which register with it as with their own session daemon, so
//!   that system-wide sessions record them (each user's apps in their own buffer set and
//!   `ust/uid/<uid>/` directory: no app ever gets another user's buffers);
//! - control clients (`drtrace --system ...`) running as root or as members of the tracing
//!   group (`--group`, default `tracing`): system-wide sessions, with kernel channels;
//! - users' session daemons delegating the kernel part of a user's session, with that user's
//!   credentials (the same group rule), writing through descriptors the user's daemon opened.
//!
//! Kernel tracing goes through tracefs (mounted if absent): one instance per kernel
//! sub-session, `drtrace-<pid>-<n>`; instances left by a broker that died are removed when the
//! next one starts. The serving itself is [`drtrace_registry`]'s, shared with the session
//! daemon; this crate adds the policy, tracefs, and the delegation endpoint.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod kernel;
mod sessiond;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use drtrace_daemon::instance::{Instance, StartupError};
use drtrace_daemon::process::report_readiness;
use drtrace_daemon::signals::TerminationSignals;
use drtrace_proto::hello::{DaemonInfo, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use drtrace_proto::startup::Readiness;
use drtrace_registry::kernel::BoxFuture;
use drtrace_registry::{AccessPolicy, EngineConfig, SessiondHandler};
use thiserror::Error;

/// How long a starter waits for another broker on the same socket to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Default directory of system-wide traces: root-owned, so a session started by a member of
/// the tracing group never makes root write where that user chose.
pub const DEFAULT_TRACES_DIR: &str = "/var/lib/drtrace/traces";
/// Default name of the group whose members may trace the kernel.
pub const DEFAULT_GROUP: &str = "tracing";

/// What the broker was started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory of the broker's socket; `None` = `DRTRACE_BROKER_DIR` or `/run/drtrace`.
    pub dir: Option<PathBuf>,
    /// The kernel-tracing group.
    pub group: String,
    /// Where system-wide sessions of non-root clients write.
    pub traces_dir: PathBuf,
    /// The log file in use.
    pub log_file: Option<PathBuf>,
    /// True when detached.
    pub detached: bool,
}

/// Why the broker stopped with a failure.
#[derive(Debug, Error)]
pub enum MainError {
    /// Not root.
    #[error("drtrace-broker must run as root (it drives tracefs and serves every user)")]
    NotRoot,
    /// Signals could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
    /// The broker directory is unusable.
    #[error("broker directory {path}: {message}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// tracefs is unusable.
    #[error("cannot use tracefs: {0}")]
    Tracefs(String),
    /// The socket could not be taken.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// Serving failed.
    #[error("event loop failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl MainError {
    /// The exit code: 1 for start-up failures, 3 for runtime ones (2 is for usage errors).
    pub fn exit_code(&self) -> u8 {
        match self {
            MainError::Serve(_) => 3,
            _ => 1,
        }
    }
}

/// Prepares the broker directory: created if missing, root-owned, not writable by others.
fn prepare_dir(dir: &std::path::Path) -> Result<(), MainError> {
    let fail = |message: String| MainError::Dir {
        path: dir.to_owned(),
        message,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail(format!("cannot chmod it: {e}")))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(fail(
            "must be a directory owned by root and writable by root only".to_owned(),
        ));
    }
    Ok(())
}

/// How long start-up waits for stale instances to become removable: a dead broker's orphaned
/// consumer keeps their buffers open while it drains them (it exits within a second).
const STALE_REMOVAL_WAIT: Duration = Duration::from_secs(5);

/// Removes the instances of brokers that died, waiting (bounded) for any still held open by
/// their orphaned consumer.
fn remove_stale_instances(tracefs: &drtrace_ftrace::tracefs::Tracefs) {
    let deadline = std::time::Instant::now() + STALE_REMOVAL_WAIT;
    loop {
        match tracefs.remove_stale_instances(|id| !kernel::is_stale_instance(id)) {
            Ok((removed, failed)) => {
                if !removed.is_empty() {
                    log::info!(
                        "removed stale instances: drtrace-{}",
                        removed.join(", drtrace-")
                    );
                }
                if failed.is_empty() {
                    return;
                }
                if std::time::Instant::now() >= deadline {
                    for e in failed {
                        log::warn!("cannot remove a stale instance: {e}");
                    }
                    return;
                }
            }
            Err(e) => {
                log::warn!("cannot look for stale instances: {e}");
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes the socket and serves until told to stop.
pub fn run(config: Config) -> Result<(), MainError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(MainError::NotRoot);
    }
    let signals = TerminationSignals::block().map_err(MainError::Signals)?;
    let dir = config
        .dir
        .clone()
        .unwrap_or_else(drtrace_proto::paths::broker_dir);
    prepare_dir(&dir)?;
    let socket = dir.join(drtrace_proto::paths::BROKER_SOCKET_NAME);
    let Some(instance) =
        Instance::acquire_or_report("drtrace-broker", &socket, 0, PING_TIMEOUT, config.detached)?
    else {
        return Ok(());
    };
    // Every user's apps register here; who may do what is decided per connection from its
    // credentials, so the socket itself is open to all.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(|e| {
        MainError::Dir {
            path: socket.clone(),
            message: format!("cannot chmod the socket: {e}"),
        }
    })?;
    let tracefs = kernel::open_tracefs().map_err(|e| MainError::Tracefs(e.to_string()))?;
    remove_stale_instances(&tracefs);
    let group = nix::unistd::Group::from_name(&config.group)
        .ok()
        .flatten()
        .map(|g| (config.group.clone(), g.gid.as_raw()));
    match &group {
        Some((name, gid)) => log::info!("kernel tracing allowed to root and group {name} ({gid})"),
        None => log::warn!(
            "group {} does not exist: only root may trace the kernel",
            config.group
        ),
    }
    let pid = std::process::id();
    let info = DaemonInfo {
        pid,
        uid: 0,
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let local = Rc::new(kernel::LocalKernel::new(tracefs));
    let for_handler = Rc::clone(&local);
    let for_shutdown = Rc::clone(&local);
    let handler: SessiondHandler = Rc::new(move |ctx, conn| -> BoxFuture<()> {
        Box::pin(sessiond::serve(Rc::clone(&for_handler), ctx, conn))
    });
    let mut engine = EngineConfig::new(
        info,
        socket.clone(),
        "root".to_owned(),
        AccessPolicy::Broker { group },
    );
    engine.consumer.log_file = config
        .log_file
        .as_ref()
        .map(|p| p.with_file_name("broker-consumerd.log"));
    // Kernel buffers wake the consumer at half full; on a saturated machine a consumer at
    // the default priority was measured to wake too late now and then and lose events.
    engine.consumer.args = vec!["--nice".into(), "-10".into()];
    engine.log_file = config.log_file;
    engine.kernel = Some(local);
    engine.sessiond_handler = Some(handler);
    engine.forced_output = Some(config.traces_dir);
    engine.on_shutdown = Some(Rc::new(move |ctx| -> BoxFuture<()> {
        Box::pin(Rc::clone(&for_shutdown).teardown_all(ctx))
    }));
    log::info!("listening on {}", socket.display());
    report_readiness(
        &Readiness::Ready {
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
        },
        config.detached,
    );
    drtrace_registry::serve(engine, instance, signals).map_err(MainError::Serve)?;
    log::info!("exiting");
    Ok(())
}
