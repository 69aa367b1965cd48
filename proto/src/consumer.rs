//! Messages between a session daemon (or the broker) and the consumer daemon it spawned.
//!
//! The session daemon spawns `drtrace-consumerd` with one end of a socket pair as its
//! standard input; that socket carries [`ConsumerRequest`]s down and [`ConsumerMessage`]s up.
//! The consumer opens nothing by path: the session daemon (running as the user) creates each
//! stream file and passes its descriptor along with the buffer's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::control::BufferMode;
use crate::error::WireError;

/// Identifies a stream (one per-CPU buffer and its file) within a consumer.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct StreamKey(pub u64);

/// What the consumer needs to drain one buffer into one stream file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSetup {
    /// The stream's key.
    pub key: StreamKey,
    /// The session it belongs to.
    pub session: u64,
    /// The trace UUID written in every packet header.
    pub trace_uuid: Uuid,
    /// The CTF stream id (the channel's index in the session).
    pub stream_id: u32,
    /// The CPU the buffer belongs to (the packet's `cpu_id` and `stream_instance_id`).
    pub cpu: u32,
    /// Full-buffer policy of the channel (overwrite buffers are read only at flush).
    pub mode: BufferMode,
    /// Period of the timer that closes a partly filled sub-buffer, in ms (0 = never).
    pub switch_timer_ms: u32,
    /// Where the stream file is, for messages only (the descriptor is authoritative).
    pub path: PathBuf,
}

/// One enabled kernel event's description, as tracefs gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEventFormat {
    /// Its subsystem (`sched` for `sched:sched_switch`).
    pub system: String,
    /// The text of its `events/<system>/<event>/format` file.
    pub format: String,
}

/// What the consumer needs to turn one CPU's ftrace buffer into one CTF stream file.
///
/// The consumer builds its event catalog from `formats` in the order given; the broker
/// declares the events in the metadata in the same order, so both number them alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStreamSetup {
    /// The stream's key.
    pub key: StreamKey,
    /// The session it belongs to.
    pub session: u64,
    /// The kernel trace's UUID (every packet header carries it).
    pub trace_uuid: Uuid,
    /// The CTF stream id (the kernel channel's index).
    pub stream_id: u32,
    /// The CPU whose buffer this is.
    pub cpu: u32,
    /// The text of `events/header_page` (the ring-buffer page layout).
    pub header_page: String,
    /// The enabled events, in CTF id order.
    pub formats: Vec<KernelEventFormat>,
    /// Where the stream file is, for messages only.
    pub path: PathBuf,
}

/// What one stream holds after a flush.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// The stream's key.
    pub key: StreamKey,
    /// Its file.
    pub path: PathBuf,
    /// Packets written.
    pub packets: u64,
    /// Events written.
    pub events: u64,
    /// Events lost (the last packet's `events_discarded`).
    pub discarded: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Why the stream is incomplete, if it is (e.g. the disk is full).
    pub error: Option<String>,
}

/// A request from the session daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ConsumerCommand {
    /// Start draining a buffer; descriptors attached: the buffer's memfd, its wake-up
    /// eventfd, and the stream file (opened for writing, positioned at its end).
    AddStream(StreamSetup),
    /// Close every partly filled sub-buffer of a session and write everything to disk;
    /// answered with [`ConsumerReply::Flushed`] once the files are complete.
    FlushSession {
        /// Which session.
        session: u64,
    },
    /// Start converting one CPU's ftrace buffer; descriptors attached: the CPU's
    /// `trace_pipe_raw` (read-only, non-blocking), its `stats` file (read-only, re-read for
    /// the kernel's loss counters), and the stream file (opened for writing, at its end).
    AddKernelStream(KernelStreamSetup),
    /// Flush, then close and forget a session's streams; answered with
    /// [`ConsumerReply::Flushed`].
    RemoveSession {
        /// Which session.
        session: u64,
    },
    /// Writer processes of these streams died: a sub-buffer one of them left half
    /// committed may be released once it has made no progress for a while.
    WritersDied {
        /// The affected streams.
        streams: Vec<StreamKey>,
    },
    /// Liveness probe.
    Ping,
}

/// A request with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRequest {
    /// Sequence number, echoed in the reply.
    pub seq: u64,
    /// The command.
    pub command: ConsumerCommand,
}

/// The outcome of a [`ConsumerCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ConsumerReply {
    /// Done.
    Ok,
    /// The session's streams, complete on disk.
    Flushed(Vec<StreamStats>),
    /// Failed.
    Error(WireError),
}

/// A message from the consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ConsumerMessage {
    /// The reply to the request with this sequence number.
    Reply {
        /// The request's sequence number.
        seq: u64,
        /// The outcome.
        reply: ConsumerReply,
    },
    /// Something went wrong with a stream outside any request (e.g. the disk filled up);
    /// the session daemon logs it and reports it at the next stop.
    StreamError {
        /// The stream.
        key: StreamKey,
        /// What happened.
        message: String,
    },
}
