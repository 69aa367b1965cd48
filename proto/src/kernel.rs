//! Kernel tracing delegated by a user's session daemon to the root broker.
//!
//! A session daemon that needs kernel events for one of its user's sessions connects to the
//! broker with role [`Role::Sessiond`](crate::Role::Sessiond). The broker authorizes the
//! connection from the peer's credentials alone (root, or a member of the tracing group), so
//! the user's own rights decide, never anything the daemon says. The session daemon creates
//! the trace files itself, as the user, in the session's `kernel/` directory and passes their
//! descriptors: the broker never opens a path in a user's directory.
//!
//! ```text
//! sessiond                                         broker
//!  |-- Hello { role: Sessiond } ------------------->|  refused unless root or tracing group
//!  |<------------------------------- Welcome -------|
//!  |-- KernelRequest::Info ------------------------>|
//!  |<------------------ KernelReply::Info { cpus } -|
//!  |-- Create(spec) + [metadata, cpu0, cpu1 ...] -->|  instance, events, metadata, streams
//!  |<------------------ KernelReply::Created { id }-|
//!  |-- Start { id } / Stop { id } / Destroy { id } ->|
//!  |<------------- Ok / Stopped(stats) -------------|
//! ```
//!
//! The connection owns its kernel sessions: when it closes (the session daemon died), the
//! broker tears them down.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::consumer::StreamStats;
use crate::control::{ChannelConfig, EventRule};
use crate::error::WireError;

/// What a kernel sub-session records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSessionSpec {
    /// The user's session name (for the trace's `env` and for logs).
    pub session_name: String,
    /// The user's session UUID (the kernel trace's UUID is derived from it).
    pub session_uuid: Uuid,
    /// The kernel channel (buffer size and full-buffer policy).
    pub channel: ChannelConfig,
    /// Event rules: `sys:event` names or patterns (`sched_switch`, `sched:*`, `syscalls:*`).
    pub rules: Vec<EventRule>,
}

/// A request from a session daemon to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum KernelRequest {
    /// What the kernel side looks like; answered with [`KernelReply::Info`].
    Info,
    /// Creates a kernel sub-session, not yet recording. Descriptors attached: the metadata
    /// file, then one stream file per CPU (as many as [`KernelReply::Info`] said), all opened
    /// for writing by the session daemon.
    Create(KernelSessionSpec),
    /// Starts recording.
    Start {
        /// The sub-session.
        id: u64,
    },
    /// Stops recording and flushes; answered with [`KernelReply::Stopped`].
    Stop {
        /// The sub-session.
        id: u64,
    },
    /// Stops (if needed), flushes and removes the sub-session; answered with
    /// [`KernelReply::Stopped`].
    Destroy {
        /// The sub-session.
        id: u64,
    },
    /// Kernel events available (`sys:event`); answered with [`KernelReply::Events`].
    ListEvents,
}

/// The broker's answer to a [`KernelRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum KernelReply {
    /// Done.
    Ok,
    /// The kernel side.
    Info {
        /// Number of per-CPU buffers (and so of stream files) a sub-session has.
        cpus: u32,
    },
    /// The sub-session exists; `events` lists the kernel events its rules enabled.
    Created {
        /// Its id on this connection.
        id: u64,
        /// The events enabled, `sys:event`.
        events: Vec<String>,
    },
    /// What the sub-session's streams hold, after a flush.
    Stopped(Vec<StreamStats>),
    /// Available events.
    Events(Vec<String>),
    /// The request failed.
    Error(WireError),
}
