//! The read side, used by the consumer daemon.

#![forbid(unsafe_code)]

use crate::clock::ClockSource;
use crate::layout::Layout;
use crate::mmap::MapError;
use crate::ring::{PacketInfo, ReadError, ReaderState, Ring, StuckReport};
use crate::writer::{MapBackend, open_ring};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why [`Reader::wait`] failed.
#[derive(Debug, Error)]
pub enum WaitError {
    /// `poll` on the eventfd failed.
    #[error("poll on the wake-up eventfd failed")]
    Poll(#[source] Errno),
    /// Reading the eventfd failed.
    #[error("reading the wake-up eventfd failed")]
    Read(#[source] Errno),
}

/// The one reader of a buffer.
///
/// # Driving it (consumer daemon)
///
/// - **Reading:** call [`Reader::read_packet`] until it returns `Ok(None)`; each packet is
///   one CTF packet (write the packet header and context from its [`PacketInfo`], then the
///   records). `Err(ReadError::Corrupt)` means one sub-buffer was unusable and skipped; go
///   on calling.
/// - **Waiting:** [`Reader::wait`] (or, to multiplex many buffers on one `poll`,
///   [`Reader::arm_wakeup`] / [`Reader::disarm_wakeup`] around your own poll of the
///   eventfd). Writers write the eventfd only when a sub-buffer completes while the flag is
///   armed. Always poll with a timeout: a sub-buffer whose writer died never completes.
/// - **Stuck writers:** on each timeout, call [`Reader::check_stuck`] with whether any
///   writer process of this buffer has died (the session daemon knows). Sub-buffers with no
///   commit progress for `timeout` after the write position moved past them are released
///   then, their records counted as lost.
/// - **Stop:** [`Reader::flush`] closes the partial sub-buffer (writers may still be
///   writing), then read until [`Reader::drained`] (pending commits can delay the last
///   packet: wait, and use `check_stuck` if a writer died), then write the packet from
///   [`Reader::final_packet`] if it returns one, so the trace's last `events_discarded` is
///   the final count: recorded + discarded = emitted.
/// - **Overwrite mode:** the same calls; between reads, writers overwrite the oldest
///   sub-buffers (counted as discarded). At stop, `flush` then read: you get the newest
///   complete sub-buffers.
#[derive(Debug)]
pub struct Reader {
    ring: Ring<MapBackend>,
    st: ReaderState,
    layout: Layout,
    wake: Option<OwnedFd>,
}

impl Reader {
    /// Maps a buffer memfd for reading, validated as in [`Writer::map`](crate::Writer::map).
    ///
    /// `wake` is the eventfd the buffer's writers were given (the reader only reads it).
    /// A reader mapping a buffer that an earlier reader used resumes at the position that
    /// reader published.
    pub fn map(memfd: impl AsFd, wake: Option<OwnedFd>) -> Result<Reader, MapError> {
        let (ring, layout, _) = open_ring(memfd, None)?;
        let st = ring.reader_state();
        Ok(Reader {
            ring,
            st,
            layout,
            wake,
        })
    }

    /// The buffer's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The clock the buffer's timestamps use.
    pub fn clock_source(&self) -> ClockSource {
        self.ring.be.clock
    }

    /// Copies the next complete sub-buffer's records into `out` (cleared first; only the
    /// used bytes, no padding) and releases it to the writers.
    ///
    /// `Ok(None)`: nothing complete yet. The control fields are validated before anything
    /// is copied and lengths come from the reader's own geometry, so nothing a writer puts
    /// in shared memory makes this panic or read outside the buffer.
    pub fn read_packet(&mut self, out: &mut Vec<u8>) -> Result<Option<PacketInfo>, ReadError> {
        self.ring.read_packet(&mut self.st, out)
    }

    /// Closes the current partial sub-buffer so it becomes readable once its pending
    /// commits land; false if there was none. Safe while writers write: it is a
    /// compare-and-swap on the write position, like a writer's own sub-buffer switch.
    pub fn flush(&self) -> bool {
        self.ring.flush()
    }

    /// True when [`Reader::read_packet`] would return a packet now.
    pub fn has_data(&self) -> bool {
        self.ring.has_data(&self.st)
    }

    /// True when every sub-buffer up to the write position has been read or accounted for
    /// and none is open (after [`Reader::flush`], once pending commits landed).
    pub fn drained(&self) -> bool {
        self.ring.drained(&self.st)
    }

    /// Tells writers the reader is about to sleep. Returns true if data is already
    /// available: then do not sleep, call [`Reader::disarm_wakeup`] and read.
    pub fn arm_wakeup(&self) -> bool {
        self.ring.arm_wakeup(&self.st)
    }

    /// Clears the waiting flag (after waking up, or when not sleeping after all).
    pub fn disarm_wakeup(&self) {
        self.ring.disarm_wakeup();
    }

    /// Waits up to `timeout` for a packet; returns whether one is available.
    ///
    /// With an eventfd: arm, re-check, poll, drain the eventfd, disarm. Without one, it
    /// sleeps for at most 1 ms (a polling fallback for tests and tools).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, WaitError> {
        if self.arm_wakeup() {
            self.disarm_wakeup();
            return Ok(true);
        }
        let result = match &self.wake {
            Some(fd) => wait_eventfd(fd, timeout),
            None => {
                std::thread::sleep(timeout.min(Duration::from_millis(1)));
                Ok(())
            }
        };
        self.disarm_wakeup();
        result.map(|()| self.has_data())
    }

    /// Releases sub-buffers whose writer stopped between reserve and commit.
    ///
    /// Call it periodically (for instance on each wait timeout) with the current time:
    /// a closed sub-buffer whose commit word has not changed since a call at least
    /// `timeout` earlier is released if `writer_died` (some writer process of this buffer
    /// has exited since it was mapped; the session daemon knows). It is delivered to no one
    /// and counted as lost: its committed records plus one for the pending reservation
    /// (exact when one reservation was pending, a lower bound when several were). If the
    /// writer was merely slow, its late commit lands in memory that writers keep skipping
    /// until it completes, so it corrupts nothing.
    pub fn check_stuck(
        &mut self,
        now: Instant,
        timeout: Duration,
        writer_died: bool,
    ) -> StuckReport {
        self.ring
            .check_stuck(&mut self.st, now, timeout, writer_died)
    }

    /// Events lost in this buffer so far.
    pub fn events_discarded_total(&self) -> u64 {
        self.ring.events_discarded_total(&self.st)
    }

    /// At the end of a trace: an empty packet (no records, timestamps at the later of now
    /// and the last packet's end) carrying the final lost count, if it grew since the last
    /// packet returned. Write it so the stream's last `events_discarded` is final.
    pub fn final_packet(&mut self) -> Option<PacketInfo> {
        self.ring.final_packet(&mut self.st)
    }
}

/// Polls an eventfd for up to `timeout`, then drains it.
fn wait_eventfd(fd: &OwnedFd, timeout: Duration) -> Result<(), WaitError> {
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(0) | Err(Errno::EINTR) => return Ok(()),
        Ok(_) => {}
        Err(e) => return Err(WaitError::Poll(e)),
    }
    let mut buf = [0u8; 8];
    match nix::unistd::read(fd, &mut buf) {
        Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(WaitError::Read(e)),
    }
}
