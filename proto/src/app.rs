//! Messages between a traced application's in-process library and a daemon (its user's
//! session daemon, or the root broker).
//!
//! ```text
//! app                                   daemon
//!  |-- Hello { role: App } ------------->|
//!  |<------------------ HelloReply ------|
//!  |-- AppMessage::Register ------------>|   pid, uid, procname, ABI, event descriptions
//!  |<-- AppCommand (seq 1) + fds --------|   AddChannel, SetEvents, SetSessionActive ...
//!  |-- AppMessage::Reply { seq: 1 } ---->|
//!  |             ...                     |
//!  |<-- AppCommand::RegistrationDone ----|   the app's start-up wait ends here
//!  |             ... (forever)           |   new sessions take the same path (0→1, N→N+1)
//! ```
//!
//! Every command carries a sequence number and gets exactly one reply. The connection stays
//! open for the life of the app; its close tells the daemon the app is gone.

use serde::{Deserialize, Serialize};

use crate::control::BufferMode;
use crate::error::WireError;
use crate::event::EventDescription;

/// Major version of the application ABI: the commands below and the shared ring-buffer
/// layout. A daemon refuses an app with another major.
pub const APP_ABI_MAJOR: u16 = 1;
/// Minor version of the application ABI.
pub const APP_ABI_MINOR: u16 = 0;
/// Most events one application may register.
pub const MAX_APP_EVENTS: usize = 65_536;
/// Most channels one application records into at once (the width of a callsite's interest
/// mask).
pub const MAX_APP_CHANNELS: usize = 64;

/// What an application tells a daemon about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRegistration {
    /// Process id.
    pub pid: i32,
    /// Parent process id (lets a viewer relate a forked child to its parent).
    pub ppid: i32,
    /// Real uid; the daemon trusts SO_PEERCRED, this is only checked against it.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Process name (`/proc/self/comm`).
    pub procname: String,
    /// Application ABI major (see [`APP_ABI_MAJOR`]).
    pub abi_major: u16,
    /// Application ABI minor.
    pub abi_minor: u16,
    /// Width of a pointer in bits (64 on every supported platform).
    pub bits_per_long: u8,
    /// The drtrace release of the in-process library.
    pub tracer_version: String,
    /// The app's events, indexed from 0 in this order; later commands name events by index.
    pub events: Vec<EventDescription>,
}

/// Identifies a channel within an application's view: session and channel index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelKey {
    /// The daemon's session id (a counter of this daemon's lifetime).
    pub session: u64,
    /// The channel's index in the session (also its CTF `stream_id`).
    pub channel: u32,
}

/// Shape of one channel's buffers, as sent to the app with their descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSetup {
    /// Which channel.
    pub key: ChannelKey,
    /// Its name (for messages).
    pub name: String,
    /// Number of per-CPU buffers. The command carries `2 * cpus` descriptors: for CPU `i`,
    /// the buffer's memfd at `2*i` and its wake-up eventfd at `2*i + 1`.
    pub cpus: u32,
    /// Bytes per sub-buffer.
    pub subbuf_size: u32,
    /// Sub-buffers per CPU buffer.
    pub num_subbuf: u32,
    /// Full-buffer policy.
    pub mode: BufferMode,
}

/// An event to record in a channel: the app's event index and the id it has in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnabledEvent {
    /// Index into the app's registered events.
    pub index: u32,
    /// The event's id in the channel's metadata.
    pub id: u32,
}

/// A command from the daemon to the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum AppCommand {
    /// Map a channel's buffers (descriptors attached as [`ChannelSetup::cpus`] describes).
    AddChannel(ChannelSetup),
    /// Record exactly these events in the channel (replaces the previous set).
    SetEvents {
        /// Which channel.
        key: ChannelKey,
        /// The events and their ids.
        events: Vec<EnabledEvent>,
    },
    /// Start or stop recording into every channel of a session.
    SetSessionActive {
        /// Which session.
        session: u64,
        /// Recording or not.
        active: bool,
    },
    /// Stop writing to a session's channels and release them.
    RemoveSession {
        /// Which session.
        session: u64,
    },
    /// Everything known at registration has been sent; the app's start-up may go on.
    RegistrationDone,
    /// Liveness probe.
    Ping,
}

/// A command with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRequest {
    /// Sequence number, echoed in the reply.
    pub seq: u64,
    /// The command.
    pub command: AppCommand,
}

/// A message from the app to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum AppMessage {
    /// First message after the hello.
    Register(AppRegistration),
    /// The outcome of the command with this sequence number.
    Reply {
        /// The command's sequence number.
        seq: u64,
        /// `Ok` or why it failed.
        result: Result<(), WireError>,
    },
    /// Events registered after [`AppMessage::Register`] (a library loaded later); they get
    /// the next indexes, starting at `first_index`.
    NewEvents {
        /// Index of the first event in `events`.
        first_index: u32,
        /// The events.
        events: Vec<EventDescription>,
    },
}
