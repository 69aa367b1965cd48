//! One kernel stream: a CPU's ftrace buffer (`trace_pipe_raw`), its `stats` file, and its
//! stream file.
//!
//! # Reading
//!
//! The event loop polls `trace_pipe_raw`, which the kernel makes readable when the buffer is
//! `buffer_percent` full (the broker sets 50), so a busy CPU is read in bursts of full pages
//! and an idle one costs nothing. A burst ([`CpuStream::read_burst`]) moves *full* pages
//! with `splice()` (16 per call, through a pipe: [`ReadMode::Splice`]) until none is left or
//! [`BURST_PAGES`] were read, converts them with [`drtrace_ftrace::ctf::KernelStream`],
//! closes the open packet, and writes every packet of the burst with one `write(2)`.
//! Nothing is read on the timer: a buffer that never reaches `buffer_percent` is read at
//! the next flush (as trace-cmd does).
//!
//! Full pages only, because the consumer is traced too when `syscalls:*` is enabled: with
//! `read()`, which also returns the writer's partial page, a burst ended only when the
//! buffer was empty, and each of its calls wrote a `sys_enter_read`/`sys_exit_read` pair
//! into a buffer it was draining. Bursts ran to their page limit on pages of 5 events,
//! a fifth of the trace was the consumer's own calls, and it cost twice trace-cmd's CPU
//! (BENCHMARKS.md). Splice stops at the writer's page and takes 16 pages per call.
//!
//! A 0-byte read means "try again later", never end of file (`shared/KERNEL.md`), and
//! [`drtrace_ftrace::reader::CpuReader`] retries it a few times. If poll said the buffer was
//! readable and a burst still found nothing, the stream leaves the poll set until the next
//! read-timer tick: a descriptor that keeps reporting `POLLIN` with nothing to read (a
//! kernel watermark quirk, a closed pipe in tests) costs one wake-up per tick, not a spin.
//!
//! # Packets and accounting
//!
//! The converter numbers its packets from 0 and counts the kernel's losses; the consumer
//! rewrites two fields of each packet it gets before writing it:
//!
//! - `packet_seq_num`: the file's own numbering, after the empty *baseline* packet 0 that
//!   starts every new file (written with the first real packet, as for userspace streams),
//!   or after the last packet of a file an earlier consumer wrote;
//! - `events_discarded`: the converter's count (page loss flags and the `stats` counters
//!   `overrun`, `commit overrun`, `dropped events`), plus the consumer's own losses (events
//!   of packets given up at a flush because the file could not be written), never below
//!   the file's last count.
//!
//! An empty packet that says nothing new (no records, the same count as the packet before
//! it, or 0 before the baseline) is dropped rather than written. Events of an event type
//! missing from the request's formats cannot be written; they are counted as discarded too,
//! so for each stream `events recorded + last events_discarded` is every event the kernel
//! recorded. Only malformed pages lose events uncounted (the events after the damage);
//! flush stats report them.
//!
//! A failed write keeps the burst's packets pending and stops reading the buffer until a
//! read-timer tick writes them: the kernel buffer then fills and the kernel counts what it
//! drops (`dropped events`, or `overrun` in overwrite mode), which reaches
//! `events_discarded` through the `stats` file. A flush gives up on packets that cannot be
//! written and counts their events as discarded, leaving a gap in the sequence numbers.
//!
//! # Flush
//!
//! The broker stops recording before it flushes. A flush drains the buffer to empty with
//! `read()` ([`CpuReader::drain`], which checks the `entries` counter of `stats`), closes
//! the open packet, and writes an empty packet when the lost count grew since the last
//! packet, so that the file's last `events_discarded` is final. Removal does the same and
//! then ends the converter ([`KernelStream::finish`]).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Instant;

use drtrace_ctf::packet::{
    PACKET_HEADER_SIZE, PACKET_PREAMBLE_SIZE, PacketContext, PacketHeader, write_packet,
};
use drtrace_ftrace::ctf::{ConvertError, EventCatalog, KernelStream, StreamConfig, StreamCounters};
use drtrace_ftrace::format::{EventFormat, FormatError, HeaderPage};
use drtrace_ftrace::page::PageLayout;
use drtrace_ftrace::reader::{CpuReader, ReadMode, ReaderError};
use drtrace_ftrace::tracefs::CpuStats;
use drtrace_proto::consumer::{KernelEventFormat, KernelStreamSetup, StreamKey, StreamStats};
use drtrace_proto::error::ErrorCode;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use thiserror::Error;

use crate::output::{FileError, FlushWrites, Recovered, StreamFile};
use crate::stream::{Drained, SEQ_OFFSET, io_text};

/// Pages one burst may read before its packets are written and other streams get a turn:
/// 1 MiB of 4 KiB pages, more than a default 1.4 MB buffer holds at half full.
pub(crate) const BURST_PAGES: usize = 256;

/// Bytes kept free at the front of the packet buffer for the baseline packet, so that the
/// baseline and a burst's packets go out in one write without moving them.
const BASELINE: usize = PACKET_PREAMBLE_SIZE;

/// Offsets of the rewritten packet context fields in a packet (`drtrace_ctf::packet`).
const SEQ_AT: usize = PACKET_HEADER_SIZE + 32;
const DISCARDED_AT: usize = PACKET_HEADER_SIZE + 40;

/// The `stats` file is about 200 bytes.
const STATS_READ: usize = 4096;

/// A kernel stream could not be added.
#[derive(Debug, Error)]
pub(crate) enum KernelAddError {
    /// The request did not carry exactly the three descriptors.
    #[error(
        "add_kernel_stream needs 3 descriptors (trace_pipe_raw, stats, stream file), {0} were attached"
    )]
    Descriptors(usize),
    /// The key is taken.
    #[error("stream {0} already exists")]
    Duplicate(u64),
    /// `header_page` does not describe a page layout the converter reads.
    #[error("stream {key}: bad header_page")]
    HeaderPage {
        key: u64,
        #[source]
        source: FormatError,
    },
    /// An event format does not parse.
    #[error("stream {key}: bad format of {system}:{event} (format {index})")]
    Format {
        key: u64,
        index: usize,
        system: String,
        event: String,
        #[source]
        source: FormatError,
    },
    /// The formats do not make a catalog (shared ids, misplaced `common_type`).
    #[error("stream {key}: unusable event formats")]
    Catalog {
        key: u64,
        #[source]
        source: ConvertError,
    },
    /// The buffer descriptor is not readable.
    #[error("stream {key}: the trace_pipe_raw descriptor is not open for reading")]
    BufferNotReadable { key: u64 },
    /// The buffer descriptor is unusable.
    #[error("stream {key}: cannot use the trace_pipe_raw descriptor")]
    Buffer {
        key: u64,
        #[source]
        source: ReaderError,
    },
    /// The stats descriptor cannot be read at offset 0 or does not hold CPU stats.
    #[error("stream {key}: cannot read the stats file: {reason}")]
    Stats { key: u64, reason: String },
    /// The stream file is unusable.
    #[error(transparent)]
    File(#[from] FileError),
}

impl KernelAddError {
    /// The wire error code for this failure.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            KernelAddError::Descriptors(_)
            | KernelAddError::HeaderPage { .. }
            | KernelAddError::Format { .. }
            | KernelAddError::Catalog { .. } => ErrorCode::BadRequest,
            KernelAddError::Duplicate(_)
            | KernelAddError::BufferNotReadable { .. }
            | KernelAddError::Buffer { .. }
            | KernelAddError::Stats { .. }
            | KernelAddError::File(
                FileError::NotRegular { .. }
                | FileError::NotWritable { .. }
                | FileError::Foreign { .. },
            ) => ErrorCode::InvalidArgument,
            KernelAddError::File(_) => ErrorCode::Io,
        }
    }
}

/// Catalogs shared by the streams of one instance: every CPU's request carries the same
/// formats, and a catalog of all events is a few MB.
#[derive(Debug, Default)]
pub(crate) struct Catalogs {
    entries: Vec<CachedCatalog>,
}

#[derive(Debug)]
struct CachedCatalog {
    header_page: String,
    formats: Vec<KernelEventFormat>,
    layout: PageLayout,
    catalog: Weak<EventCatalog>,
}

impl Catalogs {
    /// The layout and catalog of `setup`, parsed or shared with a stream that has the same.
    fn get(
        &mut self,
        setup: &KernelStreamSetup,
    ) -> Result<(PageLayout, Arc<EventCatalog>), KernelAddError> {
        self.entries.retain(|e| e.catalog.strong_count() > 0);
        for e in &self.entries {
            if e.header_page == setup.header_page && e.formats == setup.formats {
                if let Some(catalog) = e.catalog.upgrade() {
                    return Ok((e.layout, catalog));
                }
            }
        }
        let key = setup.key.0;
        let layout = HeaderPage::parse(&setup.header_page)
            .and_then(|h| h.layout())
            .map_err(|source| KernelAddError::HeaderPage { key, source })?;
        let mut formats = Vec::with_capacity(setup.formats.len());
        for (index, f) in setup.formats.iter().enumerate() {
            let parsed = EventFormat::parse(&f.system, &f.format).map_err(|source| {
                KernelAddError::Format {
                    key,
                    index,
                    system: f.system.clone(),
                    event: format_name(&f.format),
                    source,
                }
            })?;
            formats.push(parsed);
        }
        let catalog = Arc::new(
            EventCatalog::new(formats).map_err(|source| KernelAddError::Catalog { key, source })?,
        );
        self.entries.push(CachedCatalog {
            header_page: setup.header_page.clone(),
            formats: setup.formats.clone(),
            layout,
            catalog: Arc::downgrade(&catalog),
        });
        Ok((layout, catalog))
    }
}

/// The `name:` line of a format file, for messages about one that does not parse.
fn format_name(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("name:"))
        .map(|n| n.trim().chars().take(64).collect())
        .unwrap_or_else(|| "?".to_owned())
}

/// A packet of the stream file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Last {
    seq: u64,
    discarded: u64,
    ts_end: u64,
}

/// Packets in the packet buffer that are not on disk yet.
#[derive(Debug, Clone, Copy)]
struct Batch {
    /// Where the bytes to write start: 0 with the baseline packet, [`BASELINE`] without.
    start: usize,
    /// Packets, the baseline included.
    packets: u64,
    events: u64,
    /// The batch's last packet.
    last: Last,
}

/// Totals of what this consumer wrote to the stream file.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    packets: u64,
    events: u64,
    bytes: u64,
}

/// The converter's problem counters at the last flush, to report what is new.
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    malformed_pages: u64,
    unknown_events: u64,
}

/// Where the stream's stream file and kernel files are, and what the packets say.
#[derive(Debug, Clone)]
struct Identity {
    key: StreamKey,
    session: u64,
    stream_id: u32,
    cpu: u32,
    path: PathBuf,
}

/// One CPU's ftrace buffer and its stream file.
#[derive(Debug)]
pub(crate) struct CpuStream {
    id: Identity,
    reader: CpuReader,
    /// A duplicate of the reader's descriptor, for the event loop's poll (`CpuReader` does
    /// not lend its own).
    poll_fd: OwnedFd,
    stats_file: File,
    stats_buf: Vec<u8>,
    /// `None` once finished (the stream is being removed).
    kernel: Option<KernelStream>,
    /// The converter's final counts (lost, and events of unknown types), once finished.
    final_counts: (u64, u64),
    file: StreamFile,
    header: PacketHeader,
    /// The packet buffer (reused): [`BASELINE`] bytes for the baseline packet, then the
    /// packets of one burst; holds the pending batch while `pending` is set.
    out: Vec<u8>,
    pending: Option<Batch>,
    written: Totals,
    /// Events of packets the consumer gave up writing.
    consumer_lost: u64,
    /// File sequence number of the next packet.
    next_seq: u64,
    /// The newest packet given a number (written, pending or given up).
    newest: Option<Last>,
    /// The newest packet on disk.
    last: Option<Last>,
    /// The clock's value from the last `stats` read, to date a packet when none precedes.
    now_ts: Option<u64>,
    /// A read error: the buffer is no longer read.
    read_error: Option<String>,
    /// Messages for the session daemon, sent once each.
    unreported: Vec<String>,
    /// Poll said readable and a burst found nothing: out of the poll set until the tick.
    backoff: bool,
    spurious_wakeups: u64,
    /// Bursts that read pages (for the log).
    bursts: u64,
    stats_error_logged: bool,
    reported: Reported,
    flushing: Option<FlushWrites>,
}

impl CpuStream {
    /// Takes over the descriptors of `setup` (`trace_pipe_raw`, `stats`, stream file) and
    /// repairs the stream file's end.
    pub(crate) fn add(
        setup: KernelStreamSetup,
        fds: Vec<OwnedFd>,
        catalogs: &mut Catalogs,
    ) -> Result<(CpuStream, Recovered), KernelAddError> {
        let key = setup.key.0;
        let count = fds.len();
        let Ok([buffer, stats, file]) = <[OwnedFd; 3]>::try_from(fds) else {
            return Err(KernelAddError::Descriptors(count));
        };
        let (layout, catalog) = catalogs.get(&setup)?;
        let buffer_path = PathBuf::from(format!("trace_pipe_raw of cpu {}", setup.cpu));
        let flags = fcntl(&buffer, FcntlArg::F_GETFL).map_err(|e| KernelAddError::Buffer {
            key,
            source: ReaderError::Io {
                op: "inspect",
                path: buffer_path.clone(),
                source: e.into(),
            },
        })?;
        if OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_WRONLY {
            return Err(KernelAddError::BufferNotReadable { key });
        }
        let poll_fd = buffer
            .try_clone()
            .map_err(|source| KernelAddError::Buffer {
                key,
                source: ReaderError::Io {
                    op: "duplicate",
                    path: buffer_path.clone(),
                    source,
                },
            })?;
        let reader = CpuReader::from_file(
            File::from(buffer),
            &buffer_path,
            setup.cpu,
            layout.page_size,
            ReadMode::Splice,
        )
        .map_err(|source| KernelAddError::Buffer { key, source })?;
        let stats_file = File::from(stats);
        let mut stats_buf = vec![0u8; STATS_READ];
        let first_stats = read_stats(&stats_file, &mut stats_buf)
            .map_err(|reason| KernelAddError::Stats { key, reason })?;
        let header = PacketHeader {
            uuid: setup.trace_uuid,
            stream_id: setup.stream_id,
            stream_instance_id: u64::from(setup.cpu),
        };
        let (file, recovered) = StreamFile::open(file, &setup.path, &header)?;
        let mut kernel =
            KernelStream::new(catalog, layout, header, setup.cpu, StreamConfig::default());
        kernel.update_stats(first_stats);
        let last = recovered.last.map(|c| Last {
            seq: c.packet_seq_num,
            discarded: c.events_discarded,
            ts_end: c.timestamp_end,
        });
        let stream = CpuStream {
            id: Identity {
                key: setup.key,
                session: setup.session,
                stream_id: setup.stream_id,
                cpu: setup.cpu,
                path: setup.path,
            },
            reader,
            poll_fd,
            stats_file,
            stats_buf,
            kernel: Some(kernel),
            final_counts: (0, 0),
            file,
            header,
            out: Vec::new(),
            pending: None,
            written: Totals::default(),
            consumer_lost: 0,
            next_seq: last.map_or(SEQ_OFFSET, |l| l.seq.saturating_add(1)),
            newest: last,
            last,
            now_ts: first_stats.now_ts,
            read_error: None,
            unreported: Vec::new(),
            backoff: false,
            spurious_wakeups: 0,
            bursts: 0,
            stats_error_logged: false,
            reported: Reported::default(),
            flushing: None,
        };
        Ok((stream, recovered))
    }

    /// The stream's key.
    pub(crate) fn key(&self) -> StreamKey {
        self.id.key
    }

    /// The session the stream belongs to.
    pub(crate) fn session(&self) -> u64 {
        self.id.session
    }

    /// The stream file's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.id.path
    }

    /// The CTF stream id.
    pub(crate) fn stream_id(&self) -> u32 {
        self.id.stream_id
    }

    /// The CPU whose buffer this is.
    pub(crate) fn cpu(&self) -> u32 {
        self.id.cpu
    }

    /// True when the event loop should poll the buffer: nothing pending, no read error, not
    /// backing off from a spurious wake-up.
    pub(crate) fn live(&self) -> bool {
        self.pending.is_none()
            && self.read_error.is_none()
            && !self.backoff
            && self.kernel.is_some()
    }

    /// The buffer's descriptor, for poll.
    pub(crate) fn poll_fd(&self) -> BorrowedFd<'_> {
        self.poll_fd.as_fd()
    }

    /// Messages for the session daemon (write or read failures), once each.
    pub(crate) fn take_report(&mut self) -> Option<String> {
        if self.unreported.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.unreported).join("; "))
    }

    /// Read-timer work: retry a pending write, refresh the loss counters, and poll the
    /// buffer again after a spurious wake-up.
    pub(crate) fn tick(&mut self) {
        if self.pending.is_some() {
            self.write_pending();
        }
        self.backoff = false;
        self.refresh_stats();
    }

    /// Reads what the buffer holds, up to [`BURST_PAGES`], and writes it. `woken`: poll
    /// said the buffer was readable (so finding nothing is a spurious wake-up).
    pub(crate) fn read_burst(&mut self, woken: bool) -> Drained {
        if !self.write_pending() {
            return Drained::Blocked;
        }
        if self.kernel.is_none() || self.read_error.is_some() {
            return Drained::Idle;
        }
        let (pages, events) = self.read_pages(false, BURST_PAGES);
        if pages == 0 {
            if woken && self.read_error.is_none() {
                self.spurious_wakeups += 1;
                self.backoff = true;
                log::debug!(
                    "stream {}: woken with nothing to read ({} time(s)); polling again at the next tick",
                    self.id.key.0,
                    self.spurious_wakeups
                );
            }
            return Drained::Idle;
        }
        self.bursts += 1;
        self.refresh_stats();
        self.close_packet(events);
        if !self.write_pending() {
            return Drained::Blocked;
        }
        if pages >= BURST_PAGES as u64 {
            Drained::More
        } else {
            Drained::Idle
        }
    }

    /// Reads up to `max_pages` pages into the converter (`drain`: to empty, for a flush);
    /// returns the pages read and the events converted.
    fn read_pages(&mut self, drain: bool, max_pages: usize) -> (u64, u64) {
        let Some(kernel) = self.kernel.as_mut() else {
            return (0, 0);
        };
        let before = kernel.counters();
        self.out.clear();
        self.out.resize(BASELINE, 0);
        let out = &mut self.out;
        let mut bad_page: Option<ConvertError> = None;
        let mut sink = |page: &[u8]| -> Result<(), ReaderError> {
            // A malformed page: the events before the damage were converted, and the
            // converter counts it; one message is enough.
            if let Err(e) = kernel.push_page(page, out) {
                bad_page.get_or_insert(e);
            }
            Ok(())
        };
        let result = if drain {
            let stats_file = &self.stats_file;
            let stats_buf = &mut self.stats_buf;
            self.reader.drain::<ReaderError>(
                max_pages,
                // Unreadable stats: rely on the reader's second empty read instead.
                || Ok(read_stats(stats_file, stats_buf).map_or(1, |s| s.entries)),
                &mut sink,
            )
        } else {
            self.reader.read_available(max_pages, &mut sink)
        };
        let after = kernel.counters();
        if let Some(e) = bad_page {
            if self.reported.malformed_pages == before.malformed_pages {
                log::warn!(
                    "stream {} ({}): malformed page: {e}",
                    self.id.key.0,
                    self.id.path.display()
                );
            }
        }
        if let Err(e) = result {
            let message = format!(
                "cannot read the kernel buffer of cpu {}: {}; it is no longer read",
                self.id.cpu,
                crate::service::error_chain(&e)
            );
            log::warn!("stream {}: {message}", self.id.key.0);
            self.unreported.push(message.clone());
            self.read_error = Some(message);
        }
        (after.pages - before.pages, after.events - before.events)
    }

    /// Reads `stats` into the converter (its loss counters become `events_discarded`).
    fn refresh_stats(&mut self) {
        match read_stats(&self.stats_file, &mut self.stats_buf) {
            Ok(stats) => {
                self.now_ts = stats.now_ts.or(self.now_ts);
                if let Some(k) = self.kernel.as_mut() {
                    k.update_stats(stats);
                }
            }
            Err(reason) => {
                if !std::mem::replace(&mut self.stats_error_logged, true) {
                    log::warn!(
                        "stream {}: cannot read the stats of cpu {}: {reason}; losses the kernel counts there are not seen",
                        self.id.key.0,
                        self.id.cpu
                    );
                }
            }
        }
    }

    /// Closes the converter's open packet and numbers the packets of the burst (`events`
    /// of them in total) as the pending batch.
    fn close_packet(&mut self, events: u64) {
        if let Some(k) = self.kernel.as_mut() {
            // Cannot fail: only a packet over 2^61 bytes does.
            let _ = k.flush(&mut self.out);
        }
        self.build_batch(events);
    }

    /// The converter's lost count (page flags and `stats` counters).
    fn kernel_discarded(&self) -> u64 {
        match &self.kernel {
            Some(k) => k.discarded(),
            None => self.final_counts.0,
        }
    }

    /// What the consumer adds to the converter's count: events of unknown types (not
    /// written) and events of packets it gave up writing.
    fn extra_now(&self) -> u64 {
        let unknown = match &self.kernel {
            Some(k) => k.counters().unknown_events,
            None => self.final_counts.1,
        };
        unknown.saturating_add(self.consumer_lost)
    }

    /// The stream's running lost count; see the module docs.
    fn discarded_now(&self) -> u64 {
        self.kernel_discarded()
            .saturating_add(self.extra_now())
            .max(self.newest.map_or(0, |l| l.discarded))
    }

    /// Rewrites the sequence numbers and lost counts of the packets in `out` after
    /// [`BASELINE`], drops the ones that say nothing, and makes them the pending batch with
    /// the baseline packet in front if the file has no packet yet.
    fn build_batch(&mut self, events: u64) {
        let extra = self.extra_now();
        let mut read = BASELINE;
        let mut write = BASELINE;
        let mut kept = 0u64;
        let mut first_begin = None;
        let mut prev = self.newest.map_or(0, |l| l.discarded);
        while read + PACKET_PREAMBLE_SIZE <= self.out.len() {
            let Ok(ctx) = PacketContext::decode(&self.out[read + PACKET_HEADER_SIZE..]) else {
                break;
            };
            let len = usize::try_from(ctx.packet_size / 8).unwrap_or(usize::MAX);
            if len < PACKET_PREAMBLE_SIZE || len > self.out.len() - read {
                // Cannot happen with the converter's packets; never write a broken one.
                log::error!(
                    "stream {}: the converter produced a packet of {len} bytes; {} bytes dropped",
                    self.id.key.0,
                    self.out.len() - read
                );
                break;
            }
            let discarded = ctx.events_discarded.saturating_add(extra).max(prev);
            let empty = ctx.content_size == (PACKET_PREAMBLE_SIZE as u64) * 8;
            if empty && discarded == prev {
                read += len;
                continue;
            }
            let seq = self.next_seq;
            self.next_seq = seq.wrapping_add(1);
            let packet = &mut self.out[read..read + len];
            packet[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
            packet[DISCARDED_AT..DISCARDED_AT + 8].copy_from_slice(&discarded.to_le_bytes());
            if write != read {
                self.out.copy_within(read..read + len, write);
            }
            write += len;
            read += len;
            kept += 1;
            prev = discarded;
            first_begin.get_or_insert(ctx.timestamp_begin);
            self.newest = Some(Last {
                seq,
                discarded,
                ts_end: ctx.timestamp_end,
            });
        }
        self.out.truncate(write);
        let (Some(begin), Some(last)) = (first_begin, self.newest) else {
            return;
        };
        if kept == 0 {
            return;
        }
        let mut start = BASELINE;
        let mut packets = kept;
        if self.last.is_none() {
            // The file has no packet yet: the baseline goes in front, in the space kept.
            let mut baseline = Vec::with_capacity(BASELINE);
            let ctx = PacketContext {
                timestamp_begin: begin,
                timestamp_end: begin,
                packet_seq_num: 0,
                events_discarded: 0,
                cpu_id: self.id.cpu,
                ..PacketContext::default()
            };
            // Cannot fail: an empty packet.
            let _ = write_packet(&mut baseline, &self.header, &ctx, &[]);
            self.out[..BASELINE].copy_from_slice(&baseline);
            start = 0;
            packets += 1;
        }
        self.pending = Some(Batch {
            start,
            packets,
            events,
            last,
        });
    }

    /// Writes the pending batch, if any; false if it is still pending.
    fn write_pending(&mut self) -> bool {
        let Some(batch) = self.pending else {
            return true;
        };
        if self.flushing.as_ref().is_some_and(FlushWrites::giving_up) {
            self.give_up_pending();
            return true;
        }
        match self
            .file
            .write_batch(self.id.key.0, &self.out[batch.start..])
        {
            Ok(()) => {
                self.pending = None;
                self.written.packets += batch.packets;
                self.written.events += batch.events;
                self.written.bytes += (self.out.len() - batch.start) as u64;
                self.last = Some(batch.last);
                true
            }
            Err(new_failure) => {
                self.unreported.extend(new_failure);
                if let Some(f) = self.flushing.as_mut() {
                    f.give_up(&self.file);
                    self.give_up_pending();
                    return true;
                }
                false
            }
        }
    }

    /// Drops the pending batch, counting its events as discarded (its sequence numbers
    /// stay used: the gap shows the lost packets).
    fn give_up_pending(&mut self) {
        if let Some(batch) = self.pending.take() {
            self.consumer_lost = self.consumer_lost.saturating_add(batch.events);
        }
    }

    /// Writes an empty packet carrying the current lost count if the file's last packet
    /// has a lower one.
    fn write_final_packet(&mut self) {
        if !self.write_pending() {
            return;
        }
        let discarded = self.discarded_now();
        if discarded <= self.last.map_or(0, |l| l.discarded) {
            return;
        }
        // After the newest packet; with none, the kernel clock's value at the last stats
        // read (the buffer was just drained, so every later event is younger).
        let ts = self.newest.map(|l| l.ts_end).or(self.now_ts).unwrap_or(0);
        self.out.clear();
        self.out.resize(BASELINE, 0);
        let ctx = PacketContext {
            timestamp_begin: ts,
            timestamp_end: ts,
            // Rewritten by `build_batch`, which takes the count as it is.
            packet_seq_num: 0,
            events_discarded: discarded.saturating_sub(self.extra_now()),
            cpu_id: self.id.cpu,
            ..PacketContext::default()
        };
        let _ = write_packet(&mut self.out, &self.header, &ctx, &[]);
        self.build_batch(0);
        self.write_pending();
    }

    /// Flushes the stream for a stop (`remove`: and ends it): drains the buffer to empty
    /// (until `deadline`), writes everything and the final lost count, and returns what
    /// the stream holds.
    pub(crate) fn flush(&mut self, deadline: Instant, remove: bool) -> StreamStats {
        self.flushing = Some(FlushWrites::new(self.consumer_lost));
        self.backoff = false;
        self.write_pending();
        let mut complete = true;
        if self.read_error.is_none() && self.kernel.is_some() {
            loop {
                let (pages, events) = self.read_pages(true, BURST_PAGES);
                self.refresh_stats();
                self.close_packet(events);
                self.write_pending();
                if pages < BURST_PAGES as u64 || self.read_error.is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    complete = false;
                    break;
                }
            }
        } else {
            self.refresh_stats();
        }
        let counters = self.kernel.as_ref().map(KernelStream::counters);
        if remove {
            if let Some(k) = self.kernel.take() {
                let counts = (k.discarded(), k.counters().unknown_events);
                self.out.clear();
                self.out.resize(BASELINE, 0);
                // The open packet was closed above: `finish` writes at most an empty
                // packet, which `build_batch` keeps only if its count is new.
                self.final_counts = counts;
                match k.finish(&mut self.out) {
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("stream {}: {e}", self.id.key.0);
                        self.out.truncate(BASELINE);
                    }
                }
                self.build_batch(0);
                self.write_pending();
            }
        }
        self.write_final_packet();
        let writes = self.flushing.take();
        self.flush_stats(writes, complete, counters)
    }

    /// The stats of a flush; `counters`: the converter's, if it ran during it.
    fn flush_stats(
        &mut self,
        writes: Option<FlushWrites>,
        complete: bool,
        counters: Option<StreamCounters>,
    ) -> StreamStats {
        let mut problems: Vec<String> =
            FlushWrites::problem(writes.as_ref(), &self.file, self.consumer_lost)
                .into_iter()
                .collect();
        if let Some(e) = &self.read_error {
            problems.push(e.clone());
        }
        if !complete {
            problems.push(
                "flush incomplete: the kernel buffer was not empty when the flush timed out (is recording still on?)"
                    .to_owned(),
            );
        }
        if let Some(c) = counters {
            let malformed = c.malformed_pages - self.reported.malformed_pages;
            if malformed > 0 {
                problems.push(format!(
                    "{malformed} malformed kernel page(s): the events after the damage in each were lost"
                ));
            }
            let unknown = c.unknown_events - self.reported.unknown_events;
            if unknown > 0 {
                problems.push(format!(
                    "{unknown} event(s) of types missing from the stream's formats were counted as discarded"
                ));
            }
            self.reported = Reported {
                malformed_pages: c.malformed_pages,
                unknown_events: c.unknown_events,
            };
        }
        // The stats carry the failures; a new one after this flush is reported again.
        self.unreported.clear();
        let stats = StreamStats {
            key: self.id.key,
            path: self.id.path.clone(),
            packets: self.written.packets,
            events: self.written.events,
            discarded: self.discarded_now(),
            bytes: self.written.bytes,
            error: (!problems.is_empty()).then(|| problems.join("; ")),
        };
        log::info!(
            "kernel stream {} flushed ({}): {} packets, {} events, {} discarded, {} bytes; {} pages in {} reader calls, {} bursts, {} spurious wake-up(s){}",
            stats.key.0,
            stats.path.display(),
            stats.packets,
            stats.events,
            stats.discarded,
            stats.bytes,
            self.reader.stats().pages,
            self.reader.stats().calls,
            self.bursts,
            self.spurious_wakeups,
            stats
                .error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
        stats
    }
}

/// Reads a `stats` file from offset 0.
fn read_stats(file: &File, buf: &mut [u8]) -> Result<CpuStats, String> {
    let n = loop {
        match file.read_at(buf, 0) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_text(&e)),
        }
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    CpuStats::parse(&text).ok_or_else(|| {
        format!(
            "not a stats file: {:?}",
            text.chars().take(80).collect::<String>()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_ftrace::page::Page;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::Duration;

    /// The events of ftrace's captures, in the order its tests give them CTF ids.
    const EVENTS: [(&str, &str); 5] = [
        ("sched", "sched_switch"),
        ("sched", "sched_wakeup"),
        ("sched", "sched_process_exec"),
        ("syscalls", "sys_enter_openat"),
        ("syscalls", "sys_exit_write"),
    ];

    /// A capture of ftrace's fixtures: pages read from a real kernel on this kind of machine.
    fn capture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ftrace/tests/data")
            .join(name)
    }

    fn setup(
        capture_dir: &Path,
        events: &[(&str, &str)],
        cpu: u32,
        path: &Path,
    ) -> KernelStreamSetup {
        let read = |rel: &str| std::fs::read_to_string(capture_dir.join(rel)).unwrap();
        KernelStreamSetup {
            key: StreamKey(40 + u64::from(cpu)),
            session: 4,
            trace_uuid: drtrace_ftrace::ctf::kernel_trace_uuid(uuid::Uuid::from_u128(4)),
            stream_id: 0,
            cpu,
            header_page: read("header_page"),
            formats: events
                .iter()
                .map(|(sys, ev)| KernelEventFormat {
                    system: (*sys).to_owned(),
                    format: read(&format!("formats/{sys}/{ev}/format")),
                })
                .collect(),
            path: path.to_owned(),
        }
    }

    fn stats_text(entries: u64, overrun: u64, dropped: u64) -> String {
        format!(
            "entries: {entries}\noverrun: {overrun}\ncommit overrun: 0\nbytes: 0\n\
             oldest event ts:  100.000001\nnow ts:  200.000002\ndropped events: {dropped}\n\
             read events: 0\n"
        )
    }

    /// A stream over `pages` (a regular file read like `trace_pipe_raw`), `stats` and a
    /// stream file opened as the broker does.
    struct Files {
        pages: PathBuf,
        stats: PathBuf,
        stream: PathBuf,
    }

    impl Files {
        fn new(dir: &Path, capture_dir: &Path, cpu: u32) -> Files {
            let files = Files {
                pages: capture_dir.join(format!("cpu{cpu}.pages")),
                stats: dir.join(format!("stats{cpu}")),
                stream: dir.join(format!("channel0_{cpu}")),
            };
            std::fs::write(&files.stats, stats_text(0, 0, 0)).unwrap();
            files
        }

        fn fds(&self) -> Vec<OwnedFd> {
            let stream = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&self.stream)
                .unwrap();
            vec![
                File::open(&self.pages).unwrap().into(),
                File::open(&self.stats).unwrap().into(),
                stream.into(),
            ]
        }
    }

    /// Events and lost-event counts of a capture's pages, decoded directly.
    fn page_counts(capture_dir: &Path, cpu: u32) -> (u64, u64) {
        let text = std::fs::read_to_string(capture_dir.join("header_page")).unwrap();
        let layout = HeaderPage::parse(&text).unwrap().layout().unwrap();
        let bytes = std::fs::read(capture_dir.join(format!("cpu{cpu}.pages"))).unwrap();
        let (mut events, mut lost) = (0, 0);
        for page in bytes.chunks(layout.page_size) {
            let p = Page::parse(&layout, page).unwrap();
            lost += p.lost.at_least();
            events += p.events().count() as u64;
        }
        (events, lost)
    }

    /// Packet contexts of a stream file, in order; fails unless the packets tile it.
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

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A tmpfs mounted for one test, unmounted (lazily, if busy) when dropped.
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(dir: &Path, size: &str) -> SmallDisk {
            std::fs::create_dir_all(dir).unwrap();
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "mount a tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            SmallDisk(dir.to_owned())
        }

        /// Fills the disk with a file, returning its path.
        fn fill(&self) -> PathBuf {
            let filler = self.0.join("filler");
            let mut f = File::create(&filler).unwrap();
            let block = [0u8; 4096];
            while std::io::Write::write_all(&mut f, &block).is_ok() {}
            filler
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    #[test]
    fn a_full_disk_is_reported_once_and_its_events_counted_at_the_flush() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the disk-full test mounts a tmpfs and needs root (CI runs as root)"
            );
            eprintln!("skipping the disk-full test: it mounts a tmpfs and needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = SmallDisk::mount(&dir.path().join("small"), "64k");
        let cap = capture("capture");
        let files = Files::new(&disk.0, &cap, 0);
        let (mut s, _) = CpuStream::add(
            setup(&cap, &EVENTS, 0, &files.stream),
            files.fds(),
            &mut Catalogs::default(),
        )
        .unwrap();
        let filler = disk.fill();
        let (events, _) = page_counts(&cap, 0);

        // The burst's packets stay pending; the failure is reported once.
        assert_eq!(s.read_burst(true), Drained::Blocked);
        assert!(
            !s.live(),
            "a stream with pending packets reads nothing more"
        );
        let report = s.take_report().expect("the write failure is reported");
        assert!(report.contains("no space left on device"), "{report}");
        s.tick();
        assert_eq!(s.take_report(), None, "one report per failure");

        // Room again: the next tick writes them.
        std::fs::remove_file(&filler).unwrap();
        s.tick();
        assert!(s.live());
        let stats = s.flush(later(), false);
        assert_eq!((stats.events, stats.discarded), (events, 0));
        assert_eq!(stats.error, None);

        // A stream whose disk is full at its flush: what cannot be written is counted as
        // discarded, with the reason.
        let files = Files::new(&disk.0, &cap, 1);
        std::fs::write(&files.stats, stats_text(0, 0, 3)).unwrap();
        let (mut s, _) = CpuStream::add(
            setup(&cap, &EVENTS, 1, &files.stream),
            files.fds(),
            &mut Catalogs::default(),
        )
        .unwrap();
        disk.fill();
        let (events, _) = page_counts(&cap, 1);
        let stats = s.flush(later(), true);
        let error = stats.error.unwrap_or_default();
        assert!(
            error.contains("no space left on device")
                && error.contains(&format!("{events} event(s) could not be written")),
            "{error}"
        );
        assert_eq!((stats.events, stats.discarded), (0, events + 3));
    }

    #[test]
    fn captured_pages_become_a_baseline_and_numbered_packets() {
        let dir = tempfile::tempdir().unwrap();
        let cap = capture("capture");
        let files = Files::new(dir.path(), &cap, 0);
        let (mut s, recovered) = CpuStream::add(
            setup(&cap, &EVENTS, 0, &files.stream),
            files.fds(),
            &mut Catalogs::default(),
        )
        .unwrap();
        assert_eq!(recovered, Recovered::default());
        assert!(s.live());
        assert_eq!(s.read_burst(true), Drained::Idle);
        let (events, lost) = page_counts(&cap, 0);
        assert!(events > 50, "{events}");
        assert_eq!(lost, 0);
        let ctx = contexts(&files.stream);
        assert_eq!(
            ctx.len(),
            2,
            "the baseline, then the burst's packet: {ctx:?}"
        );
        assert_eq!(
            (
                ctx[0].packet_seq_num,
                ctx[0].events_discarded,
                ctx[0].content_size
            ),
            (0, 0, 84 * 8)
        );
        assert_eq!(ctx[0].timestamp_begin, ctx[1].timestamp_begin);
        assert_eq!(ctx[0].timestamp_end, ctx[1].timestamp_begin);
        assert_eq!((ctx[1].packet_seq_num, ctx[1].cpu_id), (1, 0));
        assert!(ctx[1].timestamp_end >= ctx[1].timestamp_begin);

        // The file is at its end: reads return 0 ("try again"). Poll said readable, so the
        // stream backs off until the next tick instead of being woken again at once.
        assert_eq!(s.read_burst(true), Drained::Idle);
        assert!(!s.live());
        s.tick();
        assert!(s.live());
        // Nothing read when poll did not say so: no back-off.
        assert_eq!(s.read_burst(false), Drained::Idle);
        assert!(s.live());

        let stats = s.flush(later(), false);
        assert_eq!(stats.events, events);
        assert_eq!(
            (stats.packets, stats.discarded, stats.error.as_deref()),
            (2, 0, None)
        );
        assert_eq!(stats.bytes, std::fs::metadata(&files.stream).unwrap().len());
        assert_eq!(contexts(&files.stream).len(), 2, "nothing new to say");

        // The kernel dropped events since: the next flush ends the file with the count.
        std::fs::write(&files.stats, stats_text(0, 0, 5)).unwrap();
        let stats = s.flush(later(), false);
        assert_eq!((stats.packets, stats.discarded), (3, 5));
        let ctx = contexts(&files.stream);
        let last = ctx.last().unwrap();
        assert_eq!(
            (
                last.packet_seq_num,
                last.events_discarded,
                last.content_size
            ),
            (2, 5, 84 * 8)
        );
        assert_eq!(last.timestamp_begin, ctx[1].timestamp_end);
        // Removal ends the converter: nothing new, so nothing more is written.
        let stats = s.flush(later(), true);
        assert_eq!(
            (stats.packets, stats.events, stats.discarded),
            (3, events, 5)
        );
        assert_eq!(contexts(&files.stream).len(), 3);
        assert!(!s.live());
    }

    #[test]
    fn a_respawned_consumer_cuts_the_partial_tail_and_continues_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let cap = capture("capture");
        let files = Files::new(dir.path(), &cap, 1);
        let stream_setup = setup(&cap, &EVENTS, 1, &files.stream);
        std::fs::write(&files.stats, stats_text(0, 0, 3)).unwrap();
        let (mut s, _) =
            CpuStream::add(stream_setup.clone(), files.fds(), &mut Catalogs::default()).unwrap();
        let first = s.flush(later(), true);
        let before = contexts(&files.stream);
        assert_eq!(before.last().unwrap().events_discarded, 3);
        drop(s);
        // A consumer killed in the middle of a write left part of a packet.
        let mut bytes = std::fs::read(&files.stream).unwrap();
        let good = bytes.len();
        let head = bytes[..50].to_vec();
        bytes.extend_from_slice(&head);
        std::fs::write(&files.stream, &bytes).unwrap();
        // The new consumer sees a lower count (its converter starts over): the file's
        // count is a floor.
        std::fs::write(&files.stats, stats_text(0, 0, 1)).unwrap();
        let (mut s, recovered) =
            CpuStream::add(stream_setup, files.fds(), &mut Catalogs::default()).unwrap();
        assert_eq!(recovered.truncated, 50);
        assert_eq!(recovered.bytes, good as u64);
        assert_eq!(s.read_burst(true), Drained::Idle);
        let stats = s.flush(later(), true);
        assert_eq!(stats.events, first.events, "the same pages again");
        assert_eq!(stats.discarded, 3);
        let after = contexts(&files.stream);
        assert_eq!(&after[..before.len()], &before[..]);
        let seqs: Vec<u64> = after.iter().map(|c| c.packet_seq_num).collect();
        assert_eq!(
            seqs,
            (0..after.len() as u64).collect::<Vec<_>>(),
            "one baseline only"
        );
        assert!(
            after
                .iter()
                .skip(before.len())
                .all(|c| c.events_discarded == 3)
        );
    }

    #[test]
    fn events_of_unknown_types_are_counted_as_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cap = capture("capture");
        let files = Files::new(dir.path(), &cap, 0);
        let only_switch = setup(&cap, &EVENTS[..1], 0, &files.stream);
        let (mut s, _) =
            CpuStream::add(only_switch, files.fds(), &mut Catalogs::default()).unwrap();
        let stats = s.flush(later(), true);
        let (events, _) = page_counts(&cap, 0);
        assert!(stats.events > 0 && stats.discarded > 0, "{stats:?}");
        assert_eq!(stats.events + stats.discarded, events);
        let error = stats.error.unwrap();
        assert!(
            error.contains("missing from the stream's formats"),
            "{error}"
        );
        assert_eq!(
            contexts(&files.stream).last().unwrap().events_discarded,
            stats.discarded
        );
    }

    #[test]
    fn losses_flagged_on_pages_reach_events_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cap = capture("capture-overwrite");
        let mut total_lost = 0;
        for cpu in [0, 1] {
            let files = Files::new(dir.path(), &cap, cpu);
            let (mut s, _) = CpuStream::add(
                setup(&cap, &EVENTS, cpu, &files.stream),
                files.fds(),
                &mut Catalogs::default(),
            )
            .unwrap();
            assert_eq!(s.read_burst(true), Drained::Idle);
            let stats = s.flush(later(), true);
            let (events, lost) = page_counts(&cap, cpu);
            assert_eq!((stats.events, stats.discarded), (events, lost), "cpu {cpu}");
            let ctx = contexts(&files.stream);
            assert_eq!(ctx.last().unwrap().events_discarded, lost);
            let seqs: Vec<u64> = ctx.iter().map(|c| c.packet_seq_num).collect();
            assert_eq!(seqs, (0..ctx.len() as u64).collect::<Vec<_>>());
            // Only the baseline is empty: an empty packet with nothing new is not written.
            for w in ctx.windows(2) {
                assert!(w[0].events_discarded <= w[1].events_discarded);
                assert!(w[0].timestamp_end <= w[1].timestamp_begin);
                let empty = w[1].content_size == 84 * 8;
                assert!(!empty || w[1].events_discarded > w[0].events_discarded);
            }
            total_lost += lost;
        }
        assert!(
            total_lost > 0,
            "the overwrite capture has pages after losses"
        );
    }

    #[test]
    fn bad_requests_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cap = capture("capture");
        let files = Files::new(dir.path(), &cap, 0);
        let good = setup(&cap, &EVENTS, 0, &files.stream);
        let refuse = |setup: KernelStreamSetup, fds: Vec<OwnedFd>| {
            let err = CpuStream::add(setup, fds, &mut Catalogs::default()).unwrap_err();
            (err.code(), error_text(&err))
        };

        let mut two = files.fds();
        two.pop();
        let (code, text) = refuse(good.clone(), two);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(text.contains("needs 3 descriptors"), "{text}");

        let mut bad = good.clone();
        bad.header_page = "field: u64 timestamp; offset:0; size:8; signed:0;\n".into();
        let (code, text) = refuse(bad, files.fds());
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(text.contains("bad header_page"), "{text}");

        let mut bad = good.clone();
        bad.formats[1].format = bad.formats[1].format.replace("ID:", "Id:");
        let (code, text) = refuse(bad, files.fds());
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(
            text.contains("bad format of sched:sched_wakeup (format 1)"),
            "{text}"
        );

        let mut bad = good.clone();
        bad.formats.push(bad.formats[0].clone());
        let (code, text) = refuse(bad, files.fds());
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(text.contains("share ftrace id"), "{text}");

        let mut fds = files.fds();
        fds[1] = File::open("/dev/null").unwrap().into();
        let (code, text) = refuse(good.clone(), fds);
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(
            text.contains("cannot read the stats file: not a stats file"),
            "{text}"
        );

        let mut fds = files.fds();
        fds[0] = OpenOptions::new()
            .write(true)
            .open(dir.path().join("stats0"))
            .unwrap()
            .into();
        let (code, text) = refuse(good.clone(), fds);
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(text.contains("not open for reading"), "{text}");
        assert!(!files.stream.exists() || std::fs::metadata(&files.stream).unwrap().len() == 0);
    }

    #[test]
    fn streams_with_the_same_formats_share_one_catalog() {
        let cap = capture("capture");
        let mut catalogs = Catalogs::default();
        let a = setup(&cap, &EVENTS, 0, Path::new("a"));
        let b = setup(&cap, &EVENTS, 1, Path::new("b"));
        let (_, one) = catalogs.get(&a).unwrap();
        let (_, two) = catalogs.get(&b).unwrap();
        assert!(Arc::ptr_eq(&one, &two));
        let (_, other) = catalogs
            .get(&setup(&cap, &EVENTS[..2], 0, Path::new("c")))
            .unwrap();
        assert!(!Arc::ptr_eq(&one, &other));
        assert_eq!(one.events().len(), 5);
        drop((one, two, other));
        catalogs.get(&a).unwrap();
        assert_eq!(catalogs.entries.len(), 1, "dropped catalogs are forgotten");
    }

    fn error_text(e: &KernelAddError) -> String {
        crate::service::error_chain(e)
    }
}
