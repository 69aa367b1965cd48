//! `drtrace-consumerd`: drains the shared ring buffers of a session daemon into CTF stream
//! files, and accounts every event that does not reach them.
//!
//! The session daemon (`drtrace-sessiond`, later the broker) spawns one consumer with one end
//! of a socket pair as its standard input and sends it [`ConsumerRequest`]s
//! (`drtrace_proto::consumer`): `add_stream` with three descriptors (the buffer's sealed
//! memfd, its wake-up eventfd, and the stream file opened `O_APPEND`), `flush_session`,
//! `remove_session`, `writers_died` and `ping`. The root consumer the broker spawns also
//! gets `add_kernel_stream` with three descriptors (a CPU's ftrace `trace_pipe_raw`, its
//! `stats` file, and the stream file), and converts the kernel's pages to CTF (see "Kernel
//! streams"); it is the same binary. The consumer opens nothing by path. Linked only by its
//! own binary (`main.rs`) and its tests; the library exists so that tests reach the logic.
//!
//! # Architecture
//!
//! - `control`: the control socket: frames in (each bounded by a timeout once started),
//!   replies and `stream_error` messages out.
//! - `service`: the single-threaded event loop and the commands.
//! - `stream`: one buffer and its file: reading sub-buffers, building packets, accounting,
//!   flushing.
//! - `kernel`: one CPU's ftrace buffer and its file: reading pages, converting them with
//!   `drtrace_ftrace`, numbering packets, accounting, draining at a flush.
//! - `output`: the stream file: repairing what a killed consumer left, appending whole
//!   packets, rolling back a failed write.
//!
//! **One thread.** Per packet the consumer copies one sub-buffer out of shared memory and
//! makes one `write(2)` of the packet (84 bytes of header and context, then the records); a
//! single thread does that at memory speed (see `benches/drain.rs`), far beyond what writers
//! of 4-CPU-sized buffers produce. One thread keeps the control socket, the streams and their
//! files free of locks, and makes every command see a consistent state. What it costs: a
//! write that blocks (a slow disk) delays every stream and the next command; the rings absorb
//! it, and what they cannot hold is dropped by writers and counted. Each drain pass writes at
//! most one buffer's worth of packets per stream, so a busy stream cannot starve the others
//! or the control socket.
//!
//! **Waking up.** The loop polls the control socket, the termination signals and the eventfd
//! of every *live* stream (discard mode, not blocked by a failed write), with the read timer
//! (100 ms) as timeout, so that a missed wake-up, a switch timer or a stuck writer is handled
//! within one period. Before sleeping it arms each live stream's wake-up flag (a writer then
//! signals the eventfd when it completes a sub-buffer); if a stream already has data it does
//! not sleep. Overwrite-mode streams are not drained while recording (a flight recorder keeps
//! the newest data); they are read at flush. Kernel streams are polled on their
//! `trace_pipe_raw`, which the kernel makes readable at the instance's `buffer_percent`.
//!
//! # Commands
//!
//! - `add_stream`: maps the buffer (validated by `drtrace_ringbuf`), checks that its mode is
//!   the channel's, and takes over the file: if it is not empty (a respawned consumer), its
//!   packets are checked from the start and an incomplete or malformed tail is cut off, so
//!   the file ends on a packet boundary; a file holding another stream's packets is refused.
//!   Packets are appended from there. The ring remembers where the previous reader stopped.
//! - `flush_session`: for each of the session's streams at once: close the partial
//!   sub-buffer, read until everything it held is on disk (pending commits of writers in the
//!   middle of a record land within microseconds; a dead writer's sub-buffer is released
//!   after the stuck timeout if `writers_died` named the stream; the wait is bounded by
//!   [`Config::flush_timeout`]), then write the ring's final packet, so that the file's last
//!   `events_discarded` is final. Replies `flushed` with one [`StreamStats`] per stream.
//!   Streams stay usable: a session is flushed at each stop and may start again.
//! - `remove_session`: the same flush, then the files are closed and the buffers unmapped,
//!   then the reply.
//! - `writers_died`: marks the streams; from then on every read-timer tick releases their
//!   sub-buffers that stayed half-committed for [`Config::stuck_timeout`].
//! - `add_kernel_stream`: parses the request's `header_page` and event formats (a format
//!   that does not parse is a `bad_request` naming the event), builds the event catalog in
//!   the order given (the broker declares the events in the metadata in that order, so ids
//!   agree; streams with the same formats share one catalog), reads the `stats` file once
//!   to check it, and takes over the file as `add_stream` does.
//! - `ping`: answers `ok`.
//!
//! `flush_session` and `remove_session` treat kernel streams like the others: a flush drains
//! each kernel buffer to empty (the broker stops recording first) and writes the final lost
//! count; `writers_died` ignores them.
//!
//! A request that does not decode gets an `error` reply with code `bad_request` (echoing its
//! `seq` when the JSON has one) and the consumer goes on. When the session daemon closes the
//! socket, or on SIGTERM/SIGINT/SIGQUIT, every stream is flushed and the consumer exits 0:
//! the data still in the buffers reaches the disk.
//!
//! # Accounting
//!
//! Per stream, every event a writer emitted is in exactly one of: a packet in the file, or the
//! stream's running lost count (the packets' `events_discarded`, and
//! [`StreamStats::discarded`] at each flush). The lost count is the sum of:
//!
//! - the ring's own count (`drtrace_ringbuf`): events writers dropped because the buffer was
//!   full (discard mode) or that were overwritten before being read (overwrite mode),
//!   sub-buffers skipped as corrupt, and sub-buffers released because their writer died
//!   (their committed records plus one for the record that was never committed);
//! - the consumer's own count: events of packets it read but could not write. A failed write
//!   (ENOSPC, EIO...) loses nothing at first: the packet stays in memory and is retried on
//!   every tick, and the stream is not read meanwhile, so its writers find the ring full and
//!   count what they drop (in the ring's count). The session daemon gets one `stream_error`
//!   message per failure episode. Only a flush gives up: it retries the packet once, and if
//!   that fails it counts the packet's events, and those of every packet it reads after it
//!   during that flush, as discarded, and the flush's [`StreamStats::error`] says so. The
//!   packets given up leave a gap in the file's `packet_seq_num`, which viewers report as
//!   lost packets, and their events are in `events_discarded` of the next packet written
//!   (babeltrace2 reports them as discarded events).
//!
//! Every new stream file starts with an empty *baseline* packet (sequence number 0,
//! `events_discarded` 0), written together with the first real packet, and the file's
//! sequence numbers are the ring's plus one: viewers compute lost events as the difference
//! between consecutive packets, so without a baseline babeltrace2 could only say that events
//! "may have" been lost before the first packet, without a count.
//!
//! So, for each stream, `events recorded + last events_discarded = events emitted`, exactly,
//! with two exceptions that lose events uncounted: a packet the consumer had read when it was
//! killed but not completely written (the respawned consumer cuts it off the file; the gap in
//! sequence numbers shows it), and a released sub-buffer in which more than one reservation
//! was pending (the ring counts one). A respawned consumer never writes an `events_discarded`
//! below the file's last one.
//!
//! [`StreamStats`] fields: `packets`, `events` and `bytes` count what this consumer process
//! wrote to the file since the stream was added (cumulative across flushes; not what an
//! earlier consumer wrote before a respawn); `discarded` is the stream's running lost count
//! as defined above, which is the file's last `events_discarded` unless the final packet
//! could not be written; `error` says why the file is incomplete: a write error (still
//! failing, or given up during this flush with the number of events it cost), a flush that ran
//! out of time with a sub-buffer still half-committed, or corrupt sub-buffers skipped.
//!
//! # Kernel streams
//!
//! One per CPU of a session's ftrace instance. The loop reads a buffer when poll reports it
//! readable: `read()` of whole pages (partial pages included) until the buffer is empty, up
//! to 256 pages per turn; the pages are converted with `drtrace_ftrace::ctf::KernelStream`
//! and the burst's packets written with one `write(2)` (with the baseline packet in front
//! when the file is new). A 0-byte read is "try again", not end of file; a wake-up that
//! finds nothing takes the buffer out of the poll set until the next read-timer tick, so a
//! descriptor that keeps polling readable cannot make the loop spin. The `stats` file is
//! re-read (`pread` at offset 0) after each burst, on every read-timer tick and at each
//! flush. Nothing is read on the timer: a buffer below `buffer_percent` waits for the next
//! flush, as trace-cmd's does.
//!
//! Reading costs little (about 0.02 s of CPU for 130 k events, `benches/kernel.rs`); what
//! can lose events is waking up late: a buffer read at half full has the other half as
//! headroom, and on a machine saturated by hundreds of runnable tasks a consumer at the
//! default priority was sometimes scheduled too late. The broker therefore starts the root
//! consumer with `--nice -10`.
//!
//! Accounting is the same as for userspace streams, with the kernel as the writer: a kernel
//! stream's lost count is the converter's (events lost before pages flagged as following a
//! loss, or `overrun` if larger, plus `commit overrun` and `dropped events` of `stats`), plus
//! events whose type is missing from the request's formats (they cannot be written), plus
//! the consumer's own losses at a flush. So `events recorded + last events_discarded` is
//! every event the kernel recorded in the buffer, except the events after the damage in a
//! malformed page, which the flush stats report. A failed write stops reading the buffer
//! until it succeeds; the kernel counts what it then drops.
//!
//! Stream files are not `fsync`ed: a flush guarantees the data is in the files for every
//! reader of the system, not that it survives a power cut.
//!
//! [`ConsumerRequest`]: drtrace_proto::consumer::ConsumerRequest
//! [`StreamStats`]: drtrace_proto::consumer::StreamStats
//! [`StreamStats::discarded`]: drtrace_proto::consumer::StreamStats::discarded
//! [`StreamStats::error`]: drtrace_proto::consumer::StreamStats::error
//!
//! # Example
//!
//! The binary is `run` behind argument parsing; a session daemon drives it like this (see
//! `tests/common/mod.rs` for a complete fake session daemon):
//!
//! ```no_run
//! use std::os::fd::OwnedFd;
//! use std::os::unix::net::UnixStream;
//! use std::process::{Command, Stdio};
//! use std::time::Duration;
//! use drtrace_proto::consumer::{ConsumerCommand, ConsumerMessage, ConsumerRequest};
//! use drtrace_proto::frame::{recv_message, send_message};
//!
//! let (ours, theirs) = UnixStream::pair()?;
//! let mut child = Command::new("drtrace-consumerd")
//!     .args(["--log-file", "-"])
//!     .stdin(Stdio::from(OwnedFd::from(theirs)))
//!     .stdout(Stdio::null())
//!     .spawn()?;
//! let ping = ConsumerRequest { seq: 1, command: ConsumerCommand::Ping };
//! send_message(&ours, &ping, &[], Duration::from_secs(2))?;
//! let (reply, _fds): (ConsumerMessage, _) = recv_message(&ours, Duration::from_secs(2))?;
//! drop(ours); // the consumer flushes everything and exits 0
//! assert!(child.wait()?.success());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod control;
mod kernel;
mod output;
mod service;
mod stream;

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use drtrace_daemon::signals::TerminationSignals;
use nix::errno::Errno;
use nix::sys::stat::{SFlag, fstat};
use thiserror::Error;

pub use crate::control::ControlError;

use crate::control::Control;
use crate::service::{Exit, Service};

/// How often the loop wakes up without being signalled: retries failed writes, releases
/// stuck sub-buffers, and catches any missed wake-up.
pub const DEFAULT_READ_TIMER: Duration = Duration::from_millis(100);
/// How long a sub-buffer of a dead writer must stay unchanged before it is released.
pub const DEFAULT_STUCK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a flush waits for writers' last commits. More than the stuck timeout, so that a
/// flush right after a writer died still releases its sub-buffer; well under the session
/// daemon's own 60 s limit for the reply.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The consumer's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Period of the read timer.
    pub read_timer: Duration,
    /// See [`DEFAULT_STUCK_TIMEOUT`].
    pub stuck_timeout: Duration,
    /// See [`DEFAULT_FLUSH_TIMEOUT`].
    pub flush_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            read_timer: DEFAULT_READ_TIMER,
            stuck_timeout: DEFAULT_STUCK_TIMEOUT,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

/// Why the consumer stopped with an error; each kind has its own exit code.
#[derive(Debug, Error)]
pub enum MainError {
    /// Standard input is not a socket.
    #[error(
        "standard input is not a socket: drtrace-consumerd is started by drtrace-sessiond, with its control socket as standard input"
    )]
    NotASocket,
    /// Standard input could not be taken as the control socket.
    #[error("cannot use standard input as the control socket")]
    ControlSetup(#[source] io::Error),
    /// The termination signals could not be set up.
    #[error("cannot block termination signals")]
    Signals(#[source] io::Error),
    /// `poll` failed.
    #[error("poll failed")]
    Poll(#[source] Errno),
    /// The control connection broke in a way other than the session daemon closing it.
    #[error("control connection failed")]
    Control(#[source] ControlError),
}

impl MainError {
    /// The process exit code for this error: 1 is a log file that cannot be opened and 2 a
    /// usage error (clap's), so these start at 3.
    pub fn exit_code(&self) -> u8 {
        match self {
            MainError::NotASocket | MainError::ControlSetup(_) => 3,
            MainError::Signals(_) => 4,
            MainError::Poll(_) => 5,
            MainError::Control(_) => 6,
        }
    }
}

/// Serves the control socket on standard input until the session daemon closes it or a
/// termination signal arrives; every stream is flushed before returning.
pub fn run(config: Config) -> Result<(), MainError> {
    let sock = control_socket()?;
    raise_fd_limit();
    let signals = TerminationSignals::block().map_err(MainError::Signals)?;
    let control = Control::new(sock).map_err(MainError::ControlSetup)?;
    log::info!(
        "consumer started (read timer {:?}, stuck timeout {:?}, flush timeout {:?})",
        config.read_timer,
        config.stuck_timeout,
        config.flush_timeout
    );
    match Service::new(config, control, signals).run()? {
        Exit::Closed => log::info!("exiting: the session daemon is gone"),
        Exit::Signal(sig) => log::info!("exiting on {sig}"),
    }
    Ok(())
}

/// Standard input as the control socket (a duplicate: std keeps its own handle on fd 0).
fn control_socket() -> Result<UnixStream, MainError> {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let stat = fstat(fd).map_err(|e| MainError::ControlSetup(e.into()))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(MainError::NotASocket);
    }
    let owned = fd.try_clone_to_owned().map_err(MainError::ControlSetup)?;
    Ok(UnixStream::from(owned))
}

/// Raises the soft descriptor limit to the hard one: each stream holds two descriptors
/// (eventfd and file; a kernel stream four: buffer, its duplicate for poll, stats and file),
/// and a machine with many CPUs, channels and per-process buffers passes the usual soft
/// limit of 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot read the descriptor limit: {e}"),
    }
}
