//! Control requests (from the CLI or any `drtrace-ctl` client) and their replies.
//!
//! Every request gets exactly one reply; an error is [`ControlReply::Error`]. Requests that
//! name no session act on the user's current session, as in lttng.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::WireError;
use crate::event::LogLevel;
use crate::hello::DaemonInfo;

/// Default sub-buffer size of a channel, per CPU.
pub const DEFAULT_SUBBUF_SIZE: u32 = 1 << 20;
/// Default number of sub-buffers of a channel, per CPU.
pub const DEFAULT_NUM_SUBBUF: u32 = 4;
/// Name of the channel created when events are enabled without one.
pub const DEFAULT_CHANNEL: &str = "channel0";

/// Where a session writes its trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum OutputLocation {
    /// Exactly this directory (`create --output DIR`); it must not exist yet.
    Dir(PathBuf),
    /// `<this directory>/<session name>`; the session's directory must not exist yet.
    Under(PathBuf),
}

/// Which sessions a destroy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum SessionTarget {
    /// The current session.
    Current,
    /// The session with this name.
    Named(String),
    /// Every session of this daemon.
    All,
}

/// Which tracer an event rule or channel belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// Userspace applications (the in-process library).
    User,
    /// The kernel (through the root broker).
    Kernel,
}

/// What a full buffer does with new events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferMode {
    /// Drop new events and count them (the default).
    Discard,
    /// Overwrite the oldest sub-buffer (flight recorder).
    Overwrite,
}

/// Who shares one set of buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferOwnership {
    /// All applications of one user share per-CPU buffers (the default).
    PerUid,
    /// Each process gets its own per-CPU buffers.
    PerPid,
}

/// A channel's configuration: a set of per-CPU ring buffers and their policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelConfig {
    /// Name, unique within the session; it names the stream files.
    pub name: String,
    /// Tracer domain.
    pub domain: Domain,
    /// Bytes per sub-buffer (a power of two, at least 4096).
    pub subbuf_size: u32,
    /// Sub-buffers per CPU (at least 2).
    pub num_subbuf: u32,
    /// Full-buffer policy.
    pub mode: BufferMode,
    /// Buffer sharing.
    pub buffers: BufferOwnership,
    /// Period of the consumer's timer that closes partly filled sub-buffers, in ms; 0 = off.
    pub switch_timer_ms: u32,
}

impl ChannelConfig {
    /// The default channel configuration for `domain` under `name`.
    pub fn new(name: impl Into<String>, domain: Domain) -> Self {
        Self {
            name: name.into(),
            domain,
            subbuf_size: DEFAULT_SUBBUF_SIZE,
            num_subbuf: DEFAULT_NUM_SUBBUF,
            mode: BufferMode::Discard,
            buffers: BufferOwnership::PerUid,
            switch_timer_ms: 0,
        }
    }
}

/// How an event rule filters by log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "level", rename_all = "snake_case")]
pub enum LogLevelFilter {
    /// Events at this level or more severe.
    AtLeast(LogLevel),
    /// Events at exactly this level.
    Exactly(LogLevel),
}

impl LogLevelFilter {
    /// True if an event of `level` passes.
    pub fn accepts(self, level: LogLevel) -> bool {
        match self {
            LogLevelFilter::AtLeast(l) => level <= l,
            LogLevelFilter::Exactly(l) => level == l,
        }
    }
}

/// An event rule: events whose `provider:name` matches `pattern` (`*` wildcards) are recorded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventRule {
    /// The name pattern.
    pub pattern: String,
    /// Optional log-level filter.
    pub loglevel: Option<LogLevelFilter>,
}

/// The state of an event rule in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRuleInfo {
    /// The rule.
    #[serde(flatten)]
    pub rule: EventRule,
    /// Whether it is enabled.
    pub enabled: bool,
}

/// A channel as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Its configuration.
    #[serde(flatten)]
    pub config: ChannelConfig,
    /// Whether it records.
    pub enabled: bool,
    /// Its event rules.
    pub events: Vec<EventRuleInfo>,
}

/// Lifecycle state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Created or stopped: configured, not recording.
    Inactive,
    /// Recording.
    Active,
}

/// A session as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Its name, which names its trace directory.
    pub name: String,
    /// Its UUID, also the CTF trace UUID.
    pub uuid: Uuid,
    /// Its trace directory.
    pub output: PathBuf,
    /// Recording or not.
    pub state: SessionState,
    /// True if this is the user's current session.
    pub current: bool,
    /// Creation time, in ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Its channels.
    pub channels: Vec<ChannelInfo>,
    /// What has been recorded, as of the last stop (absent before the first stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<TraceStats>,
}

/// What a session has recorded, summed over its streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStats {
    /// Events written to the trace.
    pub events_recorded: u64,
    /// Events lost (buffers full, overwritten, or lost with a dead writer), all counted in
    /// the trace's `events_discarded`.
    pub events_discarded: u64,
    /// Bytes of stream files written.
    pub bytes_written: u64,
    /// Number of stream files.
    pub streams: u32,
    /// Problems that left part of the trace incomplete (one line each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A registered application, for `drtrace list -u`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Process name.
    pub procname: String,
    /// Its events.
    pub events: Vec<crate::event::EventDescription>,
}

/// The daemon's view of itself, for `drtrace status` and `drtrace daemon status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Who the daemon is.
    pub daemon: DaemonInfo,
    /// Its socket path.
    pub socket: PathBuf,
    /// Its log file, if it logs to one.
    pub log_file: Option<PathBuf>,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// The current session's name, if any.
    pub current_session: Option<String>,
    /// Every session, in creation order.
    pub sessions: Vec<SessionInfo>,
}

/// Arguments of [`ControlRequest::CreateSession`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSession {
    /// The name; `None` assigns `<username>.<uuid>`.
    pub name: Option<String>,
    /// Where the trace goes.
    pub output: OutputLocation,
}

/// A request from a control client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Liveness check; answered with [`ControlReply::Pong`].
    Ping,
    /// The daemon and its sessions; answered with [`ControlReply::Status`].
    Status,
    /// Creates a session and makes it current; answered with [`ControlReply::Session`].
    CreateSession(CreateSession),
    /// Destroys sessions; answered with [`ControlReply::Destroyed`] once their traces are
    /// complete on disk.
    DestroySession {
        /// Which.
        target: SessionTarget,
    },
    /// Every session; answered with [`ControlReply::Sessions`].
    ListSessions,
    /// One session (`None` = current); answered with [`ControlReply::Session`].
    ShowSession {
        /// Which.
        name: Option<String>,
    },
    /// Makes a session the current one; answered with [`ControlReply::Session`].
    SetCurrent {
        /// Which.
        name: String,
    },
    /// Starts recording; answered with [`ControlReply::Session`].
    StartSession {
        /// Which (`None` = current).
        name: Option<String>,
    },
    /// Stops recording; answered with [`ControlReply::Session`] once every buffer is flushed.
    StopSession {
        /// Which (`None` = current).
        name: Option<String>,
    },
    /// Creates a channel, or re-enables a disabled one; answered with [`ControlReply::Session`].
    EnableChannel {
        /// Which session (`None` = current).
        session: Option<String>,
        /// The channel; if it exists, only re-enabling is allowed.
        channel: ChannelConfig,
    },
    /// Disables a channel; answered with [`ControlReply::Session`].
    DisableChannel {
        /// Which session (`None` = current).
        session: Option<String>,
        /// Tracer domain.
        domain: Domain,
        /// Channel name.
        name: String,
    },
    /// Adds or re-enables event rules; answered with [`ControlReply::Session`].
    EnableEvent {
        /// Which session (`None` = current).
        session: Option<String>,
        /// Which channel (`None` = the default channel, created if absent).
        channel: Option<String>,
        /// Tracer domain.
        domain: Domain,
        /// The rules.
        rules: Vec<EventRule>,
    },
    /// Disables event rules by pattern; answered with [`ControlReply::Session`].
    DisableEvent {
        /// Which session (`None` = current).
        session: Option<String>,
        /// Which channel (`None` = the default channel).
        channel: Option<String>,
        /// Tracer domain.
        domain: Domain,
        /// Patterns of the rules to disable, exactly as they were enabled.
        patterns: Vec<String>,
    },
    /// Registered applications and their events; answered with [`ControlReply::Apps`].
    ListApps,
    /// Kernel events available for tracing (`sys:event`); answered with
    /// [`ControlReply::KernelEvents`]. Needs kernel-tracing rights.
    ListKernelEvents,
    /// Asks the daemon to exit; answered with [`ControlReply::Ok`], then the daemon destroys
    /// its sessions (flushing their traces), removes its socket and exits.
    StopDaemon,
}

/// A reply to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ControlReply {
    /// The request succeeded and has nothing to report.
    Ok,
    /// Answer to [`ControlRequest::Ping`].
    Pong(DaemonInfo),
    /// Answer to [`ControlRequest::Status`].
    Status(Box<DaemonStatus>),
    /// One session's state after the request.
    Session(Box<SessionInfo>),
    /// Several sessions.
    Sessions(Vec<SessionInfo>),
    /// The sessions that were destroyed, as they were just before.
    Destroyed(Vec<SessionInfo>),
    /// Registered applications.
    Apps(Vec<AppInfo>),
    /// Kernel events, `sys:event`, sorted.
    KernelEvents(Vec<String>),
    /// The request failed.
    Error(WireError),
}

impl ControlReply {
    /// A short name of the reply's kind, for "expected X, received Y" errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlReply::Ok => "ok",
            ControlReply::Pong(_) => "pong",
            ControlReply::Status(_) => "status",
            ControlReply::Session(_) => "session",
            ControlReply::Sessions(_) => "sessions",
            ControlReply::Destroyed(_) => "destroyed",
            ControlReply::Apps(_) => "apps",
            ControlReply::KernelEvents(_) => "kernel_events",
            ControlReply::Error(_) => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_filters() {
        assert!(LogLevelFilter::AtLeast(LogLevel::Warning).accepts(LogLevel::Error));
        assert!(LogLevelFilter::AtLeast(LogLevel::Warning).accepts(LogLevel::Warning));
        assert!(!LogLevelFilter::AtLeast(LogLevel::Warning).accepts(LogLevel::Info));
        assert!(LogLevelFilter::Exactly(LogLevel::Info).accepts(LogLevel::Info));
        assert!(!LogLevelFilter::Exactly(LogLevel::Info).accepts(LogLevel::Error));
    }

    #[test]
    fn unknown_request_types_are_rejected_not_misread() {
        let r: Result<ControlRequest, _> = serde_json::from_str(r#"{"type":"format_disk"}"#);
        assert!(r.is_err());
    }
}
