//! One stream: a ring buffer's reader, its stream file, and the accounting between them.
//!
//! Each sub-buffer the reader returns becomes one CTF packet, built in a reused buffer and
//! written with one `write(2)` (see [`crate::output`]). A packet that cannot be written stays
//! *pending*: the stream stops reading its ring until the packet is written (writers then
//! find the ring full and count what they drop), and the write is retried on every timer
//! tick. Only a flush gives up on it, counting its events as discarded (see the crate docs,
//! "Accounting").
//!
//! A new stream file starts with an empty *baseline* packet (sequence number 0, no events
//! discarded) written together with the first real packet, and the file's sequence numbers
//! are the ring's plus [`SEQ_OFFSET`]. Viewers report lost events as the difference between
//! consecutive packets' counts: without a baseline, babeltrace2 can only say that events
//! "may have" been discarded before the first packet, without a number.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use drtrace_ctf::packet::{PacketContext, PacketHeader, write_packet};
use drtrace_proto::consumer::{StreamKey, StreamSetup, StreamStats};
use drtrace_proto::control::BufferMode;
use drtrace_proto::error::ErrorCode;
use drtrace_ringbuf::{MapError, Mode, PacketInfo, ReadError, Reader};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use thiserror::Error;

use crate::output::{FileError, FlushWrites, Recovered, StreamFile};

/// File sequence number of a ring packet: ring number + 1; 0 is the baseline packet's.
pub(crate) const SEQ_OFFSET: u64 = 1;

/// A stream could not be added.
#[derive(Debug, Error)]
pub(crate) enum AddError {
    /// The request did not carry exactly the three descriptors.
    #[error(
        "add_stream needs 3 descriptors (buffer memfd, eventfd, stream file), {0} were attached"
    )]
    Descriptors(usize),
    /// The key is taken.
    #[error("stream {0} already exists")]
    Duplicate(u64),
    /// The buffer could not be mapped.
    #[error("cannot map the buffer of stream {key}")]
    Map {
        key: u64,
        #[source]
        source: MapError,
    },
    /// The buffer's own mode is not the channel's.
    #[error("stream {key}: the buffer is in {actual:?} mode but the channel says {expected:?}")]
    Mode {
        key: u64,
        actual: Mode,
        expected: BufferMode,
    },
    /// The eventfd is unusable.
    #[error("stream {key}: cannot use the wake-up descriptor")]
    Wake {
        key: u64,
        #[source]
        source: Errno,
    },
    /// The stream file is unusable.
    #[error(transparent)]
    File(#[from] FileError),
}

impl AddError {
    /// The wire error code for this failure.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            AddError::Descriptors(_) => ErrorCode::BadRequest,
            AddError::Duplicate(_)
            | AddError::Map { .. }
            | AddError::Mode { .. }
            | AddError::Wake { .. }
            | AddError::File(FileError::NotRegular { .. } | FileError::NotWritable { .. })
            | AddError::File(FileError::Foreign { .. }) => ErrorCode::InvalidArgument,
            AddError::File(_) => ErrorCode::Io,
        }
    }
}

/// What a drain pass ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing more to read for now.
    Idle,
    /// The pass's budget ran out with packets left: come back soon.
    More,
    /// A packet could not be written; the stream waits for the next tick to retry.
    Blocked,
}

/// A packet built in `Stream::packet` that is not on disk yet.
#[derive(Debug, Clone, Copy)]
struct Built {
    /// Packets in the buffer: one, or two with the baseline packet.
    packets: u64,
    records: u64,
    /// File sequence number.
    seq: u64,
    discarded: u64,
    ts_end: u64,
}

/// The last packet on disk.
#[derive(Debug, Clone, Copy)]
struct Last {
    /// File sequence number.
    seq: u64,
    discarded: u64,
    ts_end: u64,
}

/// Totals of what this consumer wrote to the stream file.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    packets: u64,
    events: u64,
    bytes: u64,
}

/// Progress of a flush (see [`Stream::begin_flush`]).
#[derive(Debug)]
struct FlushProgress {
    /// Buffer clock read right after the first flush: a packet that ends later was closed
    /// after everything the flush had to deliver.
    after: u64,
    /// Newest `timestamp_end` read since the flush began.
    newest_end: u64,
    writes: FlushWrites,
}

/// One per-CPU buffer and its stream file.
#[derive(Debug)]
pub(crate) struct Stream {
    setup: StreamSetup,
    reader: Reader,
    /// The eventfd writers signal; polled by the event loop (the reader does not need it).
    wake: OwnedFd,
    file: StreamFile,
    header: PacketHeader,
    mode: Mode,
    /// Packets one drain pass may write, so one busy stream cannot starve the others.
    budget: usize,
    /// Records of the sub-buffer being handled (reused).
    records: Vec<u8>,
    /// The encoded packet (reused); holds the pending packet while `pending` is set.
    packet: Vec<u8>,
    pending: Option<Built>,
    written: Totals,
    /// Events of packets the consumer gave up writing (see "Accounting").
    consumer_lost: u64,
    /// File sequence number of the newest packet given up: no packet on disk has it, so
    /// the final packet may take it when the ring has no number to give (see
    /// `write_final_packet`).
    vacant_seq: Option<u64>,
    last: Option<Last>,
    /// Some writer process of this buffer died: stuck sub-buffers may be released.
    writers_died: bool,
    /// The file's write error has not been sent to the session daemon yet.
    unreported: bool,
    /// Sub-buffers the reader found corrupt since the last flush.
    corrupt: u64,
    switch_period: Option<Duration>,
    next_switch: Option<Instant>,
    flushing: Option<FlushProgress>,
}

impl Stream {
    /// Maps the buffer and takes over the stream file of `setup`; `fds` are the request's
    /// descriptors: buffer memfd, eventfd, stream file.
    pub(crate) fn add(
        setup: StreamSetup,
        fds: Vec<OwnedFd>,
        now: Instant,
    ) -> Result<(Stream, Recovered), AddError> {
        let key = setup.key.0;
        let count = fds.len();
        let Ok([memfd, wake, file]) = <[OwnedFd; 3]>::try_from(fds) else {
            // The descriptors are closed here, with the vector.
            return Err(AddError::Descriptors(count));
        };
        // The reader gets no eventfd: the event loop polls it (one descriptor per stream
        // instead of two), and the mapping outlives the memfd, which is closed below.
        let reader = Reader::map(&memfd, None).map_err(|source| AddError::Map { key, source })?;
        drop(memfd);
        let layout = reader.layout();
        let expected = match setup.mode {
            BufferMode::Discard => Mode::Discard,
            BufferMode::Overwrite => Mode::Overwrite,
        };
        if layout.mode != expected {
            return Err(AddError::Mode {
                key,
                actual: layout.mode,
                expected: setup.mode,
            });
        }
        // The loop reads the eventfd only when poll says it is readable; non-blocking makes
        // sure a descriptor of another kind cannot block it anyway.
        let flags =
            fcntl(&wake, FcntlArg::F_GETFL).map_err(|source| AddError::Wake { key, source })?;
        fcntl(
            &wake,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|source| AddError::Wake { key, source })?;
        let header = PacketHeader {
            uuid: setup.trace_uuid,
            stream_id: setup.stream_id,
            stream_instance_id: u64::from(setup.cpu),
        };
        let (file, recovered) = StreamFile::open(file, &setup.path, &header)?;
        let switch_period = (setup.switch_timer_ms > 0 && layout.mode == Mode::Discard)
            .then(|| Duration::from_millis(u64::from(setup.switch_timer_ms)));
        let stream = Stream {
            reader,
            wake,
            file,
            header,
            mode: layout.mode,
            budget: usize::try_from(layout.num_subbuf)
                .unwrap_or(usize::MAX)
                .max(1),
            records: Vec::with_capacity(usize::try_from(layout.subbuf_size).unwrap_or(0)),
            packet: Vec::new(),
            pending: None,
            written: Totals::default(),
            consumer_lost: 0,
            vacant_seq: None,
            last: recovered.last.map(|c| Last {
                seq: c.packet_seq_num,
                discarded: c.events_discarded,
                ts_end: c.timestamp_end,
            }),
            writers_died: false,
            unreported: false,
            corrupt: 0,
            switch_period,
            next_switch: switch_period.map(|p| now + p),
            flushing: None,
            setup,
        };
        Ok((stream, recovered))
    }

    /// The stream's key.
    pub(crate) fn key(&self) -> StreamKey {
        self.setup.key
    }

    /// The session the stream belongs to.
    pub(crate) fn session(&self) -> u64 {
        self.setup.session
    }

    /// The stream's setup.
    pub(crate) fn setup(&self) -> &StreamSetup {
        &self.setup
    }

    /// The buffer's mode.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// True when the event loop should drain this stream as data arrives: discard mode
    /// (overwrite buffers are read only at flush, so they keep the newest data) and no packet
    /// waiting for a failed write to be retried.
    pub(crate) fn live(&self) -> bool {
        self.mode == Mode::Discard && self.pending.is_none()
    }

    /// The eventfd writers signal when a sub-buffer completes while the reader waits.
    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Tells writers the consumer is about to sleep; true if data is there already.
    pub(crate) fn arm(&self) -> bool {
        self.reader.arm_wakeup()
    }

    /// Clears the waiting flag.
    pub(crate) fn disarm(&self) {
        self.reader.disarm_wakeup();
    }

    /// Empties the eventfd's counter (after poll reported it readable).
    pub(crate) fn clear_wake(&self) {
        let mut counter = [0u8; 8];
        // EAGAIN: another reader of a shared eventfd took it; anything else leaves the
        // descriptor readable, and the read timer still drains the stream.
        let _ = nix::unistd::read(&self.wake, &mut counter);
    }

    /// Marks the stream: one of its writer processes died.
    pub(crate) fn set_writers_died(&mut self) {
        self.writers_died = true;
    }

    /// When the switch timer next fires, if the stream has one.
    pub(crate) fn next_switch(&self) -> Option<Instant> {
        self.next_switch
    }

    /// The write failure to report to the session daemon, once per episode.
    pub(crate) fn take_report(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.unreported) {
            return None;
        }
        self.file.failure().map(str::to_owned)
    }

    /// Reads and writes up to the stream's budget of packets.
    pub(crate) fn drain(&mut self) -> Drained {
        self.read_some(self.budget)
    }

    /// Read-timer work: retry a pending write, and release sub-buffers that dead writers
    /// left half-written and that made no progress for `stuck_timeout`.
    pub(crate) fn tick(&mut self, now: Instant, stuck_timeout: Duration) {
        if self.pending.is_some() {
            self.write_pending();
        }
        if self.writers_died {
            self.check_stuck(now, stuck_timeout);
        }
    }

    /// Runs the switch timer if it is due: closes the partial sub-buffer so its events
    /// reach the file within one period (the next drain writes it). A stream blocked by a
    /// failed write skips it: the ring keeps the data.
    pub(crate) fn switch_timer(&mut self, now: Instant) {
        if let (Some(at), Some(period)) = (self.next_switch, self.switch_period) {
            if now >= at {
                if self.live() {
                    self.reader.flush();
                }
                self.next_switch = Some(now + period);
            }
        }
    }

    fn check_stuck(&mut self, now: Instant, stuck_timeout: Duration) {
        let report = self.reader.check_stuck(now, stuck_timeout, true);
        if report.released > 0 {
            log::warn!(
                "stream {} ({}): released {} sub-buffer(s) left half-written by a dead writer, {} event(s) lost",
                self.setup.key.0,
                self.setup.path.display(),
                report.released,
                report.events_lost
            );
        }
    }

    /// Starts a flush: closes the partial sub-buffer so that everything written so far
    /// becomes readable once pending commits land. Then call [`Stream::flush_step`] until it
    /// returns true (or a deadline passes), then [`Stream::finish_flush`].
    pub(crate) fn begin_flush(&mut self) {
        self.reader.flush();
        let after = drtrace_ringbuf::clock::read(self.reader.clock_source());
        self.flushing = Some(FlushProgress {
            after,
            newest_end: 0,
            writes: FlushWrites::new(self.consumer_lost),
        });
    }

    /// Reads and writes what is there; true when the flush has delivered everything that
    /// was in the buffer when it began.
    ///
    /// Done means: nothing is open and the reader is at the write position, or a packet
    /// closed after the flush began was read (then everything before it was: the reader
    /// goes in order). Writers still writing open new sub-buffers; each step closes them
    /// too, so the second condition is met within a step or two.
    pub(crate) fn flush_step(&mut self, now: Instant, stuck_timeout: Duration) -> bool {
        while self.read_some(usize::MAX) == Drained::More {}
        if self.writers_died {
            self.check_stuck(now, stuck_timeout);
        }
        let past = self
            .flushing
            .as_ref()
            .is_some_and(|f| f.newest_end > f.after);
        if self.reader.drained() || past {
            return true;
        }
        self.reader.flush();
        false
    }

    /// Ends a flush: writes the final packet (so the file's last `events_discarded` is the
    /// final count) and returns what the stream holds. `complete` is false when the flush
    /// ran out of time.
    pub(crate) fn finish_flush(&mut self, complete: bool) -> StreamStats {
        let progress = self.flushing.take();
        self.write_final_packet();
        let mut problems: Vec<String> = FlushWrites::problem(
            progress.as_ref().map(|p| &p.writes),
            &self.file,
            self.consumer_lost,
        )
        .into_iter()
        .collect();
        if !complete {
            problems.push(
                "flush incomplete: a sub-buffer still waits for a writer to finish its record"
                    .to_owned(),
            );
        }
        if self.corrupt > 0 {
            problems.push(format!(
                "{} corrupt sub-buffer(s) were skipped and their events counted as discarded",
                self.corrupt
            ));
            self.corrupt = 0;
        }
        // The stats carry the failure; a new one after this flush is reported again.
        self.unreported = false;
        let stats = self.stats(problems);
        log::info!(
            "stream {} flushed ({}): {} packets, {} events, {} discarded, {} bytes{}",
            stats.key.0,
            stats.path.display(),
            stats.packets,
            stats.events,
            stats.discarded,
            stats.bytes,
            stats
                .error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
        stats
    }

    /// What the stream holds; see the crate docs, "Accounting".
    fn stats(&self, problems: Vec<String>) -> StreamStats {
        StreamStats {
            key: self.setup.key,
            path: self.setup.path.clone(),
            packets: self.written.packets,
            events: self.written.events,
            discarded: self.discarded_now(),
            bytes: self.written.bytes,
            error: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }

    /// The stream's running lost count: the ring's, plus the events of packets the consumer
    /// gave up writing, never below what the file already says.
    fn discarded_now(&self) -> u64 {
        self.discarded_with(self.reader.events_discarded_total())
    }

    fn discarded_with(&self, ring_total: u64) -> u64 {
        let ours = ring_total.saturating_add(self.consumer_lost);
        ours.max(self.last.map_or(0, |l| l.discarded))
    }

    /// Writes the ring's final packet, or one of ours if only the consumer's count grew.
    fn write_final_packet(&mut self) {
        if self.pending.is_some() {
            // A packet is still waiting: it goes first, and the final packet after it.
            self.write_pending();
            if self.pending.is_some() {
                return;
            }
        }
        let (info, seq) = match self.reader.final_packet() {
            Some(p) => (p, file_seq(p.seq_num)),
            None => {
                let ring_total = self.reader.events_discarded_total();
                let on_disk = self.last.map_or(0, |l| l.discarded);
                let last_seq = self.last.map(|l| l.seq);
                let vacant = self.vacant_seq.filter(|v| last_seq.is_none_or(|l| *v > l));
                match vacant {
                    Some(seq) if self.discarded_with(ring_total) > on_disk => {
                        let now = drtrace_ringbuf::clock::read(self.reader.clock_source());
                        let ts = now.max(self.last.map_or(0, |l| l.ts_end));
                        let info = PacketInfo {
                            timestamp_begin: ts,
                            timestamp_end: ts,
                            content_size: 0,
                            records: 0,
                            events_discarded_total: ring_total,
                            seq_num: seq.wrapping_sub(SEQ_OFFSET),
                        };
                        (info, seq)
                    }
                    _ => return,
                }
            }
        };
        self.records.clear();
        self.build(&info, seq);
        self.write_pending();
    }

    /// Reads up to `budget` packets, writing each.
    fn read_some(&mut self, budget: usize) -> Drained {
        if !self.write_pending() {
            return Drained::Blocked;
        }
        for _ in 0..budget {
            match self.reader.read_packet(&mut self.records) {
                Ok(Some(info)) => {
                    if let Some(f) = self.flushing.as_mut() {
                        f.newest_end = f.newest_end.max(info.timestamp_end);
                    }
                    self.build(&info, file_seq(info.seq_num));
                    if !self.write_pending() {
                        return Drained::Blocked;
                    }
                }
                Ok(None) => return Drained::Idle,
                Err(ReadError::Corrupt { seq_num, reason }) => {
                    // The ring counted its records as lost and left a gap in the sequence.
                    self.corrupt += 1;
                    if self.corrupt == 1 {
                        log::warn!(
                            "stream {} ({}): packet {seq_num} skipped: {reason}",
                            self.setup.key.0,
                            self.setup.path.display()
                        );
                    }
                }
            }
        }
        Drained::More
    }

    /// Encodes `info` and the records in `self.records` as the pending packet, number `seq`
    /// in the file, after the baseline packet if the file has no packet yet.
    fn build(&mut self, info: &PacketInfo, seq: u64) {
        let discarded = self.discarded_with(info.events_discarded_total);
        self.packet.clear();
        let mut packets = 1;
        if self.last.is_none() {
            let baseline = PacketContext {
                timestamp_begin: info.timestamp_begin,
                timestamp_end: info.timestamp_begin,
                packet_seq_num: 0,
                events_discarded: 0,
                cpu_id: self.setup.cpu,
                ..PacketContext::default()
            };
            // Cannot fail: only a packet larger than 2^61 bytes does.
            let _ = write_packet(&mut self.packet, &self.header, &baseline, &[]);
            packets = 2;
        }
        let context = PacketContext {
            timestamp_begin: info.timestamp_begin,
            timestamp_end: info.timestamp_end,
            packet_seq_num: seq,
            events_discarded: discarded,
            cpu_id: self.setup.cpu,
            ..PacketContext::default()
        };
        // Cannot fail either: a sub-buffer is at most 16 MiB.
        let _ = write_packet(&mut self.packet, &self.header, &context, &self.records);
        self.pending = Some(Built {
            packets,
            records: info.records,
            seq,
            discarded,
            ts_end: info.timestamp_end,
        });
    }

    /// Writes the pending packet, if any; false if it is still pending.
    fn write_pending(&mut self) -> bool {
        let Some(built) = self.pending else {
            return true;
        };
        if self.flushing.as_ref().is_some_and(|f| f.writes.giving_up()) {
            self.give_up_pending();
            return true;
        }
        match self.file.write_batch(self.setup.key.0, &self.packet) {
            Ok(()) => {
                self.pending = None;
                self.written.packets += built.packets;
                self.written.events += built.records;
                self.written.bytes += self.packet.len() as u64;
                self.last = Some(Last {
                    seq: built.seq,
                    discarded: built.discarded,
                    ts_end: built.ts_end,
                });
                true
            }
            Err(new_failure) => {
                self.unreported |= new_failure.is_some();
                if let Some(f) = self.flushing.as_mut() {
                    // The buffer must end the flush empty.
                    f.writes.give_up(&self.file);
                    self.give_up_pending();
                    return true;
                }
                false
            }
        }
    }

    /// Drops the pending packet, counting its events as discarded.
    fn give_up_pending(&mut self) {
        if let Some(built) = self.pending.take() {
            self.consumer_lost = self.consumer_lost.saturating_add(built.records);
            self.vacant_seq = Some(self.vacant_seq.map_or(built.seq, |v| v.max(built.seq)));
        }
    }
}

/// The file sequence number of ring packet `seq`. Wrapping: the ring's numbers come from
/// shared memory when a reader re-attaches, so they are not trusted not to be huge.
fn file_seq(seq: u64) -> u64 {
    seq.wrapping_add(SEQ_OFFSET)
}

/// An I/O error as lowercase text without the "(os error N)" suffix.
pub(crate) fn io_text(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_ctf::packet::PACKET_HEADER_SIZE;
    use drtrace_ringbuf::{ClockSource, Layout, Writer, create_buffer};
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    fn setup(path: &Path, mode: BufferMode, switch_timer_ms: u32) -> StreamSetup {
        StreamSetup {
            key: StreamKey(7),
            session: 1,
            trace_uuid: drtrace_ctf::metadata::trace_uuid(Default::default(), "ust/uid/0/64-bit"),
            stream_id: 0,
            cpu: 1,
            mode,
            switch_timer_ms,
            path: path.to_owned(),
        }
    }

    fn fds(memfd: &OwnedFd, file: &Path) -> Vec<OwnedFd> {
        let efd = nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
            .unwrap();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(file)
            .unwrap();
        vec![memfd.try_clone().unwrap(), OwnedFd::from(efd), f.into()]
    }

    fn buffer(mode: Mode) -> OwnedFd {
        let layout = Layout {
            subbuf_size: 4096,
            num_subbuf: 2,
            mode,
        };
        create_buffer(&layout, ClockSource::Monotonic, "stream-test").unwrap()
    }

    /// Packet contexts of a stream file, in order.
    fn contexts(path: &Path) -> Vec<PacketContext> {
        let bytes = std::fs::read(path).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let c = PacketContext::decode(&bytes[at + PACKET_HEADER_SIZE..]).unwrap();
            at += usize::try_from(c.packet_size / 8).unwrap();
            out.push(c);
        }
        assert_eq!(at, bytes.len());
        out
    }

    fn write(w: &Writer, n: u64) -> u64 {
        (0..n)
            .filter(|i| {
                w.reserve(1, 8)
                    .map(|mut s| {
                        s.put_u64(*i);
                    })
                    .is_some()
            })
            .count() as u64
    }

    #[test]
    fn flush_writes_every_event_and_the_final_lost_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channel0_1");
        let memfd = buffer(Mode::Discard);
        let (mut s, _) = Stream::add(
            setup(&path, BufferMode::Discard, 0),
            fds(&memfd, &path),
            Instant::now(),
        )
        .unwrap();
        let w = Writer::map(&memfd, None).unwrap();
        // Two 4 KiB sub-buffers of 12-byte records: far fewer than 2000 fit.
        let ok = write(&w, 2000);
        assert!(ok < 2000);
        s.begin_flush();
        assert!(s.flush_step(Instant::now(), Duration::from_secs(1)));
        let stats = s.finish_flush(true);
        assert_eq!(stats.events, ok);
        assert_eq!(stats.discarded, 2000 - ok);
        assert_eq!(stats.error, None);
        let ctx = contexts(&path);
        assert_eq!(ctx.len() as u64, stats.packets);
        let last = ctx.last().unwrap();
        assert_eq!(
            last.events_discarded,
            2000 - ok,
            "the final packet has the final count"
        );
        assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());
        let seqs: Vec<u64> = ctx.iter().map(|c| c.packet_seq_num).collect();
        assert_eq!(seqs, (0..ctx.len() as u64).collect::<Vec<_>>());
        assert!(ctx.iter().all(|c| c.cpu_id == 1));

        // The stream stays usable after a flush.
        assert_eq!(write(&w, 10), 10);
        s.begin_flush();
        assert!(s.flush_step(Instant::now(), Duration::from_secs(1)));
        let again = s.finish_flush(true);
        assert_eq!(again.events, ok + 10);
        assert_eq!(again.discarded, 2000 - ok);

        // A loss after the last data packet (a record too large for a sub-buffer is dropped
        // and counted by the writer) reaches the file through the final packet alone.
        assert!(w.reserve(1, 8192).is_none());
        s.begin_flush();
        assert!(s.flush_step(Instant::now(), Duration::from_secs(1)));
        let last = s.finish_flush(true);
        assert_eq!(last.discarded, 2000 - ok + 1);
        assert_eq!(last.events, ok + 10);
        let ctx = contexts(&path);
        let fin = ctx.last().unwrap();
        assert_eq!(fin.events_discarded, 2000 - ok + 1);
        assert_eq!(fin.content_size, 84 * 8, "an empty packet");
        assert_eq!(fin.packet_seq_num, ctx[ctx.len() - 2].packet_seq_num + 1);
    }

    #[test]
    fn overwrite_streams_are_not_live() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channel0_1");
        let memfd = buffer(Mode::Overwrite);
        let (s, _) = Stream::add(
            setup(&path, BufferMode::Overwrite, 10),
            fds(&memfd, &path),
            Instant::now(),
        )
        .unwrap();
        assert!(!s.live());
        assert_eq!(s.next_switch(), None, "no switch timer in overwrite mode");
    }

    #[test]
    fn a_mode_mismatch_and_missing_descriptors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channel0_1");
        let memfd = buffer(Mode::Overwrite);
        let err = Stream::add(
            setup(&path, BufferMode::Discard, 0),
            fds(&memfd, &path),
            Instant::now(),
        )
        .unwrap_err();
        assert!(matches!(err, AddError::Mode { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        let mut two = fds(&memfd, &path);
        two.pop();
        let err =
            Stream::add(setup(&path, BufferMode::Overwrite, 0), two, Instant::now()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn switch_timer_closes_the_partial_sub_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channel0_1");
        let memfd = buffer(Mode::Discard);
        let start = Instant::now();
        let (mut s, _) = Stream::add(
            setup(&path, BufferMode::Discard, 20),
            fds(&memfd, &path),
            start,
        )
        .unwrap();
        let w = Writer::map(&memfd, None).unwrap();
        assert_eq!(write(&w, 3), 3);
        assert_eq!(s.drain(), Drained::Idle);
        assert!(
            contexts(&path).is_empty(),
            "nothing complete before the timer"
        );
        s.switch_timer(start + Duration::from_millis(5));
        assert_eq!(s.drain(), Drained::Idle);
        assert!(contexts(&path).is_empty(), "the timer has not fired yet");
        s.switch_timer(start + Duration::from_millis(25));
        assert_eq!(s.drain(), Drained::Idle);
        let ctx = contexts(&path);
        assert_eq!(ctx.len(), 2, "the baseline packet, then the events");
        assert_eq!((ctx[0].packet_seq_num, ctx[0].content_size), (0, 84 * 8));
        assert_eq!(ctx[0].timestamp_begin, ctx[1].timestamp_begin);
        assert_eq!(ctx[1].packet_seq_num, 1);
        assert_eq!(s.next_switch(), Some(start + Duration::from_millis(45)));
    }

    #[test]
    fn io_errors_read_lowercase() {
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(io_text(&e), "no space left on device");
    }
}
