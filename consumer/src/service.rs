//! The event loop and the commands it serves.
//!
//! One thread polls the control socket, the termination signals, the eventfd of every live
//! userspace stream and the `trace_pipe_raw` of every live kernel stream, with the read
//! timer as timeout. Each turn:
//!
//! 1. read-timer work when due (retry failed writes, release stuck sub-buffers of dead
//!    writers, refresh the kernel buffers' loss counters), and switch timers;
//! 2. drain every live userspace stream, and read every kernel buffer poll reported, up to
//!    a budget each (one ring's worth of packets, [`crate::kernel::BURST_PAGES`] pages), so
//!    that a busy stream cannot starve the others or the control socket;
//! 3. arm the wake-up of every live userspace stream; if one already has data (or a budget
//!    ran out), poll without sleeping;
//! 4. poll; then empty the eventfds that fired, disarm, note the kernel buffers that are
//!    readable, and serve a signal or the control socket.
//!
//! A command runs to completion inside the loop. A flush waits (bounded by
//! [`Config::flush_timeout`]) for the last commits of the session's buffers, and drains its
//! kernel buffers; other sessions' buffers wait meanwhile, which their rings absorb.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long apps get to stop writing after their session daemon vanished (their listener sees
/// the closed socket at once and retires the buffers after a 10 ms grace period).
const SETTLE_BEFORE_SHUTDOWN: Duration = Duration::from_millis(200);

use drtrace_daemon::signals::TerminationSignals;
use drtrace_proto::consumer::{
    ConsumerCommand, ConsumerMessage, ConsumerReply, ConsumerRequest, KernelStreamSetup, StreamKey,
    StreamSetup, StreamStats,
};
use drtrace_proto::error::{ErrorCode, WireError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::control::{Control, ControlError, Incoming};
use crate::kernel::{Catalogs, CpuStream, KernelAddError};
use crate::stream::{Drained, Stream};
use crate::{Config, MainError};

/// Why the loop ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The session daemon closed the control socket.
    Closed,
    /// A termination signal arrived.
    Signal(nix::sys::signal::Signal),
}

/// The consumer's state: its control socket and its streams.
#[derive(Debug)]
pub(crate) struct Service {
    config: Config,
    control: Control,
    signals: TerminationSignals,
    streams: BTreeMap<StreamKey, Stream>,
    kernel: BTreeMap<StreamKey, CpuStream>,
    catalogs: Catalogs,
    /// Kernel streams to read at the next turn: poll said readable (true), or the last
    /// burst ran out of budget (false).
    kernel_due: Vec<(StreamKey, bool)>,
}

/// What poll reported.
#[derive(Debug, Default)]
struct Ready {
    control: bool,
    signal: bool,
    woken: Vec<StreamKey>,
    kernel: Vec<StreamKey>,
}

impl Service {
    pub(crate) fn new(config: Config, control: Control, signals: TerminationSignals) -> Self {
        Service {
            config,
            control,
            signals,
            streams: BTreeMap::new(),
            kernel: BTreeMap::new(),
            catalogs: Catalogs::default(),
            kernel_due: Vec::new(),
        }
    }

    /// Serves until the session daemon goes away or a termination signal arrives; either
    /// way every stream is flushed to disk first.
    pub(crate) fn run(mut self) -> Result<Exit, MainError> {
        let mut next_tick = Instant::now() + self.config.read_timer;
        loop {
            let now = Instant::now();
            if let Err(e) = self.control.check_deadline(now) {
                return self.fail(e);
            }
            if now >= next_tick {
                for s in self.streams.values_mut() {
                    s.tick(now, self.config.stuck_timeout);
                }
                for k in self.kernel.values_mut() {
                    k.tick();
                }
                next_tick = now + self.config.read_timer;
            }
            let mut busy = false;
            for s in self.streams.values_mut() {
                s.switch_timer(now);
                if s.live() {
                    busy |= s.drain() == Drained::More;
                }
            }
            busy |= self.read_kernel();
            if let Err(e) = self.report_failures() {
                return self.fail(e);
            }
            let ready = match self.wait(busy, next_tick) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("{}: flushing every stream and exiting", error_chain(&e));
                    self.shutdown();
                    return Err(e);
                }
            };
            for key in &ready.woken {
                if let Some(s) = self.streams.get(key) {
                    s.clear_wake();
                }
            }
            self.kernel_due
                .extend(ready.kernel.iter().map(|k| (*k, true)));
            for s in self.streams.values() {
                s.disarm();
            }
            if ready.signal {
                if let Some(sig) = self.take_signal() {
                    log::info!("{sig}: flushing every stream and exiting");
                    self.shutdown();
                    return Ok(Exit::Signal(sig));
                }
            }
            if ready.control {
                match self.serve_control(Instant::now()) {
                    Ok(false) => {}
                    Ok(true) => {
                        log::info!(
                            "the session daemon closed the control socket: flushing every stream and exiting"
                        );
                        self.settle_before_shutdown();
                        self.shutdown();
                        return Ok(Exit::Closed);
                    }
                    Err(e) => return self.fail(e),
                }
            }
        }
    }

    /// Reads the kernel buffers that are due; true when one has more to read at once.
    fn read_kernel(&mut self) -> bool {
        let mut busy = false;
        for (key, woken) in std::mem::take(&mut self.kernel_due) {
            let Some(k) = self.kernel.get_mut(&key) else {
                continue;
            };
            if k.read_burst(woken) == Drained::More {
                self.kernel_due.push((key, false));
                busy = true;
            }
        }
        busy
    }

    /// Arms the live streams and polls; `busy` (or data found while arming) means poll
    /// without sleeping.
    fn wait(&mut self, busy: bool, next_tick: Instant) -> Result<Ready, MainError> {
        let mut now_ready = busy;
        for s in self.streams.values().filter(|s| s.live()) {
            // Arm every one, even once data is found: all are disarmed after the poll.
            now_ready |= s.arm();
        }
        let now = Instant::now();
        let timeout = if now_ready {
            Duration::ZERO
        } else {
            let mut until = next_tick;
            for at in self.streams.values().filter_map(Stream::next_switch) {
                until = until.min(at);
            }
            if let Some(d) = self.control.deadline() {
                until = until.min(d);
            }
            until.saturating_duration_since(now)
        };
        let live: Vec<StreamKey> = self
            .streams
            .values()
            .filter(|s| s.live())
            .map(Stream::key)
            .collect();
        let kernel: Vec<StreamKey> = self
            .kernel
            .values()
            .filter(|k| k.live())
            .map(CpuStream::key)
            .collect();
        let mut fds = Vec::with_capacity(2 + live.len() + kernel.len());
        fds.push(PollFd::new(self.control.fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(
            std::os::fd::AsFd::as_fd(&self.signals),
            PollFlags::POLLIN,
        ));
        for key in &live {
            if let Some(s) = self.streams.get(key) {
                fds.push(PollFd::new(s.wake_fd(), PollFlags::POLLIN));
            }
        }
        for key in &kernel {
            if let Some(k) = self.kernel.get(key) {
                fds.push(PollFd::new(k.poll_fd(), PollFlags::POLLIN));
            }
        }
        // Round up so a deadline a few microseconds away does not spin.
        let ms = timeout.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(MainError::Poll(e)),
        }
        let fired = |fd: &PollFd<'_>| {
            fd.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        Ok(Ready {
            control: fired(&fds[0]),
            signal: fired(&fds[1]),
            woken: live
                .iter()
                .zip(&fds[2..])
                .filter(|(_, fd)| fired(fd))
                .map(|(k, _)| *k)
                .collect(),
            kernel: kernel
                .iter()
                .zip(&fds[2 + live.len()..])
                .filter(|(_, fd)| fired(fd))
                .map(|(k, _)| *k)
                .collect(),
        })
    }

    /// Reads a pending signal; `None` for signals that do not end the daemon.
    fn take_signal(&self) -> Option<nix::sys::signal::Signal> {
        match self.signals.read() {
            Ok(Some(sig)) if TerminationSignals::terminates(sig) => Some(sig),
            Ok(Some(sig)) => {
                log::info!("{sig} ignored");
                None
            }
            Ok(None) => None,
            Err(e) => {
                log::warn!("cannot read the signal descriptor: {e}");
                None
            }
        }
    }

    /// Sends each new write failure to the session daemon, once.
    fn report_failures(&mut self) -> Result<(), ControlError> {
        let mut reports: Vec<(StreamKey, String)> = self
            .streams
            .values_mut()
            .filter_map(|s| Some((s.key(), s.take_report()?)))
            .collect();
        reports.extend(
            self.kernel
                .values_mut()
                .filter_map(|k| Some((k.key(), k.take_report()?))),
        );
        for (key, message) in reports {
            self.control
                .send(&ConsumerMessage::StreamError { key, message })?;
        }
        Ok(())
    }

    /// Serves one readable event of the control socket; true when it was closed.
    fn serve_control(&mut self, now: Instant) -> Result<bool, ControlError> {
        match self.control.read(now)? {
            Incoming::Partial => Ok(false),
            Incoming::Closed => Ok(true),
            Incoming::Malformed { seq, message } => {
                log::warn!("request {seq} refused: {message}");
                self.reply(
                    seq,
                    ConsumerReply::Error(WireError::new(ErrorCode::BadRequest, message)),
                )?;
                Ok(false)
            }
            Incoming::Request(ConsumerRequest { seq, command }, fds) => {
                let reply = self.handle(command, fds);
                self.reply(seq, reply)?;
                Ok(false)
            }
        }
    }

    fn reply(&self, seq: u64, reply: ConsumerReply) -> Result<(), ControlError> {
        self.control.send(&ConsumerMessage::Reply { seq, reply })
    }

    /// Runs one command.
    fn handle(&mut self, command: ConsumerCommand, fds: Vec<OwnedFd>) -> ConsumerReply {
        if !fds.is_empty()
            && !matches!(
                command,
                ConsumerCommand::AddStream(_) | ConsumerCommand::AddKernelStream(_)
            )
        {
            let message = format!(
                "this command takes no descriptors, {} were attached",
                fds.len()
            );
            log::warn!("request refused: {message}");
            return ConsumerReply::Error(WireError::new(ErrorCode::BadRequest, message));
        }
        match command {
            ConsumerCommand::AddStream(setup) => self.add_stream(setup, fds),
            ConsumerCommand::FlushSession { session } => {
                ConsumerReply::Flushed(self.flush(Some(session), false))
            }
            ConsumerCommand::RemoveSession { session } => {
                ConsumerReply::Flushed(self.remove_session(session))
            }
            ConsumerCommand::WritersDied { streams } => {
                for key in streams {
                    match self.streams.get_mut(&key) {
                        Some(s) => {
                            log::info!(
                                "stream {}: a writer died; sub-buffers it left half-written are released after {:?}",
                                key.0,
                                self.config.stuck_timeout
                            );
                            s.set_writers_died();
                        }
                        None if self.kernel.contains_key(&key) => {
                            log::debug!("writers_died names kernel stream {}: ignored", key.0);
                        }
                        None => log::debug!("writers_died names unknown stream {}", key.0),
                    }
                }
                ConsumerReply::Ok
            }
            ConsumerCommand::Ping => ConsumerReply::Ok,
            ConsumerCommand::AddKernelStream(setup) => self.add_kernel_stream(setup, fds),
        }
    }

    fn add_kernel_stream(&mut self, setup: KernelStreamSetup, fds: Vec<OwnedFd>) -> ConsumerReply {
        let key = setup.key;
        let events = setup.formats.len();
        let result = if self.streams.contains_key(&key) || self.kernel.contains_key(&key) {
            Err(KernelAddError::Duplicate(key.0))
        } else {
            CpuStream::add(setup, fds, &mut self.catalogs)
        };
        match result {
            Ok((stream, recovered)) => {
                log::info!(
                    "kernel stream {} added: {} (session {}, stream id {}, cpu {}, {events} event type(s)){}",
                    key.0,
                    stream.path().display(),
                    stream.session(),
                    stream.stream_id(),
                    stream.cpu(),
                    recovered_text(&recovered)
                );
                self.kernel.insert(key, stream);
                ConsumerReply::Ok
            }
            Err(e) => {
                let message = error_chain(&e);
                log::warn!("kernel stream {} refused: {message}", key.0);
                ConsumerReply::Error(WireError::new(e.code(), message))
            }
        }
    }

    fn add_stream(&mut self, setup: StreamSetup, fds: Vec<OwnedFd>) -> ConsumerReply {
        let key = setup.key;
        let result = if self.streams.contains_key(&key) || self.kernel.contains_key(&key) {
            Err(crate::stream::AddError::Duplicate(key.0))
        } else {
            Stream::add(setup, fds, Instant::now())
        };
        match result {
            Ok((stream, recovered)) => {
                let s = stream.setup();
                let existing = recovered_text(&recovered);
                log::info!(
                    "stream {} added: {} (session {}, stream id {}, cpu {}, {} mode, switch timer {} ms){existing}",
                    key.0,
                    s.path.display(),
                    s.session,
                    s.stream_id,
                    s.cpu,
                    match stream.mode() {
                        drtrace_ringbuf::Mode::Discard => "discard",
                        drtrace_ringbuf::Mode::Overwrite => "overwrite",
                    },
                    s.switch_timer_ms
                );
                self.streams.insert(key, stream);
                ConsumerReply::Ok
            }
            Err(e) => {
                let message = error_chain(&e);
                log::warn!("stream {} refused: {message}", key.0);
                ConsumerReply::Error(WireError::new(e.code(), message))
            }
        }
    }

    /// Flushes the streams of `session` (every stream with `None`), in parallel, within the
    /// flush timeout; `remove` ends the kernel streams' conversion too (the caller removes
    /// the streams). Returns the stats in key order.
    fn flush(&mut self, session: Option<u64>, remove: bool) -> Vec<StreamStats> {
        let start = Instant::now();
        let picked = |s: u64| session.is_none_or(|want| want == s);
        let keys: Vec<StreamKey> = self
            .streams
            .values()
            .filter(|s| picked(s.session()))
            .map(Stream::key)
            .collect();
        for key in &keys {
            if let Some(s) = self.streams.get_mut(key) {
                s.begin_flush();
            }
        }
        let deadline = start + self.config.flush_timeout;
        // Kernel buffers are drained meanwhile: the broker stopped recording, so each holds
        // at most its size. Pending userspace commits land in the meantime.
        let mut stats: Vec<StreamStats> = self
            .kernel
            .values_mut()
            .filter(|k| picked(k.session()))
            .map(|k| k.flush(deadline, remove))
            .collect();
        self.kernel_due.clear();
        let mut waiting = keys.clone();
        // Pending commits land within microseconds; a dead writer's after the stuck timeout.
        let mut pause = Duration::from_micros(100);
        loop {
            let now = Instant::now();
            waiting.retain(|key| {
                self.streams
                    .get_mut(key)
                    .is_some_and(|s| !s.flush_step(now, self.config.stuck_timeout))
            });
            if waiting.is_empty() || now >= deadline {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        stats.extend(keys.iter().filter_map(|key| {
            let complete = !waiting.contains(key);
            Some(self.streams.get_mut(key)?.finish_flush(complete))
        }));
        stats.sort_by_key(|s| s.key);
        let incomplete = stats.iter().filter(|s| s.error.is_some()).count();
        log::info!(
            "flushed {} stream(s) in {:.1} ms: {} events, {} discarded, {} bytes{}",
            stats.len(),
            start.elapsed().as_secs_f64() * 1e3,
            stats.iter().map(|s| s.events).sum::<u64>(),
            stats.iter().map(|s| s.discarded).sum::<u64>(),
            stats.iter().map(|s| s.bytes).sum::<u64>(),
            if incomplete == 0 {
                String::new()
            } else {
                format!("; {incomplete} with an error")
            }
        );
        stats
    }

    /// Flushes a session's streams, then closes their files and unmaps their buffers.
    fn remove_session(&mut self, session: u64) -> Vec<StreamStats> {
        let stats = self.flush(Some(session), true);
        for s in &stats {
            if self.streams.remove(&s.key).is_some() || self.kernel.remove(&s.key).is_some() {
                log::info!("stream {} removed: {}", s.key.0, s.path.display());
            }
        }
        stats
    }

    /// The session daemon is gone, but its apps write on until their listeners notice and
    /// retire the buffers (moments later). Wait that long before the final flush, so it takes
    /// what they wrote meanwhile instead of leaving it in memory nobody reads again.
    fn settle_before_shutdown(&mut self) {
        std::thread::sleep(SETTLE_BEFORE_SHUTDOWN);
    }

    /// Flushes every stream (the consumer is exiting).
    fn shutdown(&mut self) {
        // Nobody is left to say which writers died, and a writer cut off by its app's
        // retirement of the buffers will never commit: treat every writer as possibly dead,
        // so a sub-buffer stuck that way is released (and counted) instead of withheld.
        for s in self.streams.values_mut() {
            s.set_writers_died();
        }
        self.flush(None, true);
        self.streams.clear();
        self.kernel.clear();
    }

    /// Ends on a control failure: a disconnect is the session daemon exiting; anything else
    /// is an error. The streams are flushed either way.
    fn fail(&mut self, e: ControlError) -> Result<Exit, MainError> {
        if e.is_disconnect() {
            log::info!("lost the session daemon ({e}): flushing every stream and exiting");
            self.shutdown();
            return Ok(Exit::Closed);
        }
        log::error!("{}: flushing every stream and exiting", error_chain(&e));
        self.shutdown();
        Err(MainError::Control(e))
    }
}

/// What an existing stream file held, for the log line of a new stream.
fn recovered_text(recovered: &crate::output::Recovered) -> String {
    let mut existing = String::new();
    if recovered.packets > 0 || recovered.truncated > 0 {
        existing = format!(
            "; the file already held {} packets ({} bytes)",
            recovered.packets, recovered.bytes
        );
        if recovered.truncated > 0 {
            existing += &format!(
                ", {} bytes of an incomplete packet were cut off its end",
                recovered.truncated
            );
        }
    }
    existing
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        // thiserror's `transparent` repeats the inner message; do not print it twice.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
