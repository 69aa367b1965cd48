//! Reading a CPU buffer (`per_cpu/cpuN/trace_pipe_raw`) without spinning.
//!
//! The file is opened non-blocking. [`CpuReader::wait`] polls it: the kernel wakes the
//! poller when the buffer is `buffer_percent` full (50: half full), so a busy buffer is read
//! in bursts of full pages and an idle one costs nothing. [`CpuReader::read_page`] then reads
//! one page at a time until the buffer is empty (EAGAIN). A blocking reader instead wakes on
//! nearly every event and gets mostly empty pages (`shared/KERNEL.md`).
//!
//! A buffer that never fills to `buffer_percent` never wakes its poller: a consumer that
//! wants events to show before stop reads anyway when [`CpuReader::wait`] times out, which
//! bounds the latency by the timeout.
//!
//! Quirks handled here:
//! - `read()` may return 0 while data is still there (a race with the writer): 0 means
//!   "try again", never end of file. A few immediate retries are made, then the page
//!   counts as not ready.
//! - Pages come back whole (4096 bytes) however little of them is used; callers keep only
//!   [`crate::page::Page::kept_len`] bytes.
//! - `splice()` ([`ReadMode::Splice`]) moves only *full* pages: the writer's partial page
//!   never comes out of it. [`CpuReader::drain`], for stop, therefore always uses `read()`,
//!   which also returns partial pages.
//!
//! # `read()` or `splice()`
//!
//! `examples/read_vs_splice.rs` measured both on this machine (2 CPUs, kernel 6.18) while
//! `perf bench sched messaging -g 10 -l 500` ran with `sched_switch` and `sched_wakeup`
//! enabled, over three rounds each (reader thread CPU time, summed over CPUs):
//!
//! | reader | wake-up | CPU | calls | events | bytes read / kept |
//! |---|---|---|---|---|---|
//! | `read()`, one page per call | poll, `buffer_percent` 50 | 6–8 ms | 1.3–2.3 k | 95–167 k | 1.01× |
//! | `splice()`, 16 pages per call, then `read()` of the pipe | poll, 50 | 10 ms | 240–410 | 138–163 k | 1.00× |
//! | `read()` | poll, `buffer_percent` 0 (any data) | 1.4–1.5 s | 0.7–1.1 M | 0.9–1.1 M | 20× |
//!
//! Woken at half full, both move nearly full pages and cost next to nothing when only the
//! scheduler is traced. The consumer nevertheless uses `splice()`: with `syscalls:*`
//! enabled its own calls are events in the buffers it drains, and `read()` hands out the
//! writer's partial page, so a reader that reads until the buffer is empty keeps refilling
//! it with its own calls (`consumer/src/kernel.rs`). `splice()` stops at the writer's page
//! and takes 16 pages per call; the pages still have to be copied out of the pipe to be
//! converted, so nothing is zero-copy. Waking on any data costs 200 times more, reads 20
//! times the useful bytes, and its own wake-ups add sched events to the trace: that is
//! the blocking reader's cost in `shared/KERNEL.md`. Converting the pages to CTF costs
//! about 25 ns per event on top ([`crate::ctf::KernelStream`], scheduler and system-call
//! events, pages in cache).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use thiserror::Error;

/// Immediate retries after a 0-byte read before the buffer counts as not ready.
pub const ZERO_READ_RETRIES: u32 = 4;
/// Pages moved per `splice()` call in [`ReadMode::Splice`] (the default pipe holds 16).
pub const SPLICE_BATCH_PAGES: usize = 16;

/// How pages are taken out of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// `read()` of one page per call: full and partial pages.
    #[default]
    Read,
    /// `splice()` of up to [`SPLICE_BATCH_PAGES`] full pages into a pipe, then one
    /// `read()` of the pipe.
    Splice,
}

/// A read failed.
#[derive(Debug, Error)]
pub enum ReaderError {
    /// A system call on the buffer file (or the splice pipe) failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The buffer file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What a reader did, for tuning and for the read/splice measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReaderStats {
    /// `read()` and `splice()` calls on the buffer file.
    pub calls: u64,
    /// Pages returned.
    pub pages: u64,
    /// Bytes returned (whole pages).
    pub bytes: u64,
    /// Reads that returned 0 bytes.
    pub zero_reads: u64,
    /// Reads that found the buffer empty (EAGAIN).
    pub empty: u64,
    /// `poll()` calls.
    pub polls: u64,
}

/// A non-blocking reader of one CPU's `trace_pipe_raw`.
#[derive(Debug)]
pub struct CpuReader {
    file: File,
    path: PathBuf,
    cpu: u32,
    page_size: usize,
    mode: ReadMode,
    /// Pages read but not yet returned (splice batches), and the next one's offset.
    buf: Vec<u8>,
    start: usize,
    /// The splice pipe: read end, write end.
    pipe: Option<(OwnedFd, OwnedFd)>,
    stats: ReaderStats,
}

impl CpuReader {
    /// Opens `path` (an instance's [`crate::tracefs::Instance::trace_pipe_raw`]) for CPU
    /// `cpu`, with pages of `page_size` bytes ([`crate::page::PageLayout::page_size`]).
    pub fn open(
        path: &Path,
        cpu: u32,
        page_size: usize,
        mode: ReadMode,
    ) -> Result<Self, ReaderError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| ReaderError::Io {
                op: "open",
                path: path.to_owned(),
                source,
            })?;
        Self::from_file(file, path, cpu, page_size, mode)
    }

    /// Wraps an already open file (made non-blocking here): for tests, which feed pages
    /// through a pipe.
    pub fn from_file(
        file: File,
        path: &Path,
        cpu: u32,
        page_size: usize,
        mode: ReadMode,
    ) -> Result<Self, ReaderError> {
        let err = |op| {
            let path = path.to_owned();
            move |e: nix::Error| ReaderError::Io {
                op,
                path,
                source: e.into(),
            }
        };
        let flags =
            nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(err("get flags of"))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(err("make non-blocking"))?;
        let pipe = match mode {
            ReadMode::Read => None,
            ReadMode::Splice => {
                let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                    .map_err(err("create a splice pipe for"))?;
                let want = i32::try_from(page_size * SPLICE_BATCH_PAGES).unwrap_or(i32::MAX);
                // Best effort: the default (16 pages of 4 KiB) is enough for 4 KiB pages.
                let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(want));
                Some((r, w))
            }
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            cpu,
            page_size: page_size.max(1),
            mode,
            buf: Vec::with_capacity(page_size * SPLICE_BATCH_PAGES),
            start: 0,
            pipe,
            stats: ReaderStats::default(),
        })
    }

    /// The CPU this reader reads.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What this reader did so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> ReaderError + '_ {
        move |source| ReaderError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Waits until the kernel says the buffer is worth reading (`buffer_percent` full), or
    /// `timeout` passes (`None`: forever). Returns whether it is readable; an interrupted
    /// wait returns `false`.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, ReaderError> {
        self.stats.polls += 1;
        if self.start < self.buf.len() {
            return Ok(true);
        }
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(self.io("poll")(e.into())),
        }
    }

    /// Reads the next page: `Ok(None)` when none is ready (EAGAIN, or only 0-byte reads).
    pub fn read_page(&mut self) -> Result<Option<&[u8]>, ReaderError> {
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
            let got = match self.mode {
                ReadMode::Read => self.fill_read()?,
                ReadMode::Splice => self.fill_splice()?,
            };
            if !got {
                return Ok(None);
            }
        }
        let end = (self.start + self.page_size).min(self.buf.len());
        let page = &self.buf[self.start..end];
        self.start = end;
        self.stats.pages += 1;
        self.stats.bytes += page.len() as u64;
        Ok(Some(page))
    }

    /// One `read()` of a page into `buf`.
    fn fill_read(&mut self) -> Result<bool, ReaderError> {
        self.buf.resize(self.page_size, 0);
        for _ in 0..=ZERO_READ_RETRIES {
            self.stats.calls += 1;
            match self.file.read(&mut self.buf) {
                Ok(0) => self.stats.zero_reads += 1,
                Ok(n) => {
                    self.buf.truncate(n);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.empty += 1;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.clear();
                    return Err(self.io("read")(e));
                }
            }
        }
        self.buf.clear();
        Ok(false)
    }

    /// One `splice()` of up to a batch of full pages into the pipe, then reads them out.
    fn fill_splice(&mut self) -> Result<bool, ReaderError> {
        let Some((r, w)) = &self.pipe else {
            return self.fill_read();
        };
        let mut moved = 0;
        for _ in 0..=ZERO_READ_RETRIES {
            self.stats.calls += 1;
            match splice(
                &self.file,
                None,
                w,
                None,
                self.page_size * SPLICE_BATCH_PAGES,
                SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => self.stats.zero_reads += 1,
                Ok(n) => {
                    moved = n;
                    break;
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    self.stats.empty += 1;
                    break;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(ReaderError::Io {
                        op: "splice",
                        path: self.path.clone(),
                        source: e.into(),
                    });
                }
            }
        }
        if moved == 0 {
            return Ok(false);
        }
        self.buf.resize(moved, 0);
        let mut filled = 0;
        // The pipe holds exactly `moved` bytes; reading them cannot block for long, and a
        // short read just loops.
        while filled < moved {
            match nix::unistd::read(r, &mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(ReaderError::Io {
                        op: "read the splice pipe of",
                        path: self.path.clone(),
                        source: e.into(),
                    });
                }
            }
        }
        self.buf.truncate(filled);
        Ok(filled > 0)
    }

    /// Reads ready pages into `sink` until the buffer is empty or `max_pages` were read
    /// (so a caller under a flood still gets control back). Returns the pages read.
    pub fn read_available<E: From<ReaderError>>(
        &mut self,
        max_pages: usize,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut n = 0;
        while n < max_pages {
            match self.read_page()? {
                Some(page) => {
                    sink(page)?;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    /// Drains the buffer for stop, once recording is off: reads with `read()` (partial
    /// pages included) until the buffer is empty — EAGAIN twice in a row, or EAGAIN once
    /// and `entries()` (the CPU's `stats` entries) says 0 — or `max_pages` were read.
    /// Returns the pages read.
    pub fn drain<E: From<ReaderError>>(
        &mut self,
        max_pages: usize,
        mut entries: impl FnMut() -> Result<u64, E>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        // Splice leaves the writer's partial page behind; switch to read() for good.
        let previous = std::mem::replace(&mut self.mode, ReadMode::Read);
        let result = (|| {
            let mut n = 0;
            let mut empties = 0;
            while n < max_pages {
                match self.read_page()? {
                    Some(page) => {
                        sink(page)?;
                        n += 1;
                        empties = 0;
                    }
                    None => {
                        empties += 1;
                        if empties >= 2 || entries()? == 0 {
                            break;
                        }
                    }
                }
            }
            Ok(n)
        })();
        self.mode = previous;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe_reader(mode: ReadMode, page: usize) -> (CpuReader, File) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let reader = CpuReader::from_file(File::from(r), Path::new("pipe"), 0, page, mode).unwrap();
        (reader, File::from(w))
    }

    #[test]
    fn reads_pages_until_empty() {
        let (mut reader, mut w) = pipe_reader(ReadMode::Read, 8);
        assert_eq!(
            reader.read_page().unwrap(),
            None,
            "empty: EAGAIN, no blocking"
        );
        assert!(!reader.wait(Some(Duration::from_millis(1))).unwrap());
        w.write_all(b"aaaaaaaabbbbbbbb").unwrap();
        assert!(reader.wait(Some(Duration::from_secs(5))).unwrap());
        let mut pages = Vec::new();
        let n = reader
            .read_available::<ReaderError>(100, |p| {
                pages.push(p.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(pages, [b"aaaaaaaa".to_vec(), b"bbbbbbbb".to_vec()]);
        let s = reader.stats();
        assert_eq!((s.pages, s.bytes, s.empty), (2, 16, 2));
    }

    #[test]
    fn read_available_stops_at_the_cap() {
        let (mut reader, mut w) = pipe_reader(ReadMode::Read, 4);
        w.write_all(&[1u8; 40]).unwrap();
        let n = reader.read_available::<ReaderError>(3, |_| Ok(())).unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn zero_reads_are_retried_then_reported_as_not_ready() {
        // A closed pipe returns 0 forever, like the kernel's race but without end: the
        // reader must neither spin nor call it end of file.
        let (mut reader, w) = pipe_reader(ReadMode::Read, 8);
        drop(w);
        assert_eq!(reader.read_page().unwrap(), None);
        assert_eq!(reader.stats().zero_reads, u64::from(ZERO_READ_RETRIES) + 1);
        let mut asked = 0;
        let n = reader
            .drain::<ReaderError>(
                10,
                || {
                    asked += 1;
                    Ok(3)
                },
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(asked, 1, "a second empty read ends the drain");
    }

    #[test]
    fn drain_stops_when_entries_say_empty() {
        let (mut reader, mut w) = pipe_reader(ReadMode::Splice, 4);
        w.write_all(b"abcdefgh").unwrap();
        let mut got = Vec::new();
        let n = reader
            .drain::<ReaderError>(
                10,
                || Ok(0),
                |p| {
                    got.extend_from_slice(p);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(got, b"abcdefgh");
        assert_eq!(reader.mode, ReadMode::Splice, "the mode is restored");
    }

    #[test]
    fn splice_moves_batches() {
        let (mut reader, mut w) = pipe_reader(ReadMode::Splice, 4);
        w.write_all(b"0123456789ab").unwrap();
        let mut pages = Vec::new();
        reader
            .read_available::<ReaderError>(10, |p| {
                pages.push(p.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            pages,
            [b"0123".to_vec(), b"4567".to_vec(), b"89ab".to_vec()]
        );
        // One splice moved all three pages.
        assert_eq!(reader.stats().calls, 2);
    }

    #[test]
    fn open_errors_name_the_path() {
        let err = CpuReader::open(Path::new("/nonexistent/cpu0"), 0, 4096, ReadMode::Read)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cannot open /nonexistent/cpu0: No such file or directory (os error 2)"
        );
    }
}
