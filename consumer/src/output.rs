//! Stream files: checking what an earlier consumer left in them, and appending whole packets.
//!
//! A stream file is a sequence of CTF packets with no gaps (`docs/format.md`). Two things can
//! break that, and both are repaired here so that the file always ends on a packet boundary:
//!
//! - **A consumer killed in the middle of a write** leaves a partial packet at the end. When a
//!   respawned consumer is given the file, [`StreamFile::open`] walks the packets from the
//!   start (fixed header and context only: magic, trace UUID, stream, sizes, increasing
//!   sequence numbers) and truncates at the first one that is incomplete or malformed.
//! - **A failed write** (disk full, I/O error) can leave part of a packet behind: the write is
//!   rolled back with `ftruncate` to the last packet boundary, and the caller keeps the whole
//!   packet to retry later. If even the truncation fails, it is retried before the next write.
//!
//! The consumer is the only writer of its stream files; the session daemon opens them
//! (`O_APPEND`) and passes the descriptors.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use drtrace_ctf::packet::{PACKET_HEADER_SIZE, PACKET_PREAMBLE_SIZE, PacketContext, PacketHeader};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use thiserror::Error;

/// A stream file could not be taken over.
#[derive(Debug, Error)]
pub(crate) enum FileError {
    /// `fstat` or `fcntl` on the descriptor failed.
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The descriptor is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    /// The descriptor was not opened for writing.
    #[error("{} is not open for writing", path.display())]
    NotWritable { path: PathBuf },
    /// Reading the existing packets failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Cutting a partial packet off failed.
    #[error("cannot truncate {} to {len} bytes: {source}", path.display())]
    Truncate {
        path: PathBuf,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// The file holds packets of another stream: it is not ours to append to (or to cut).
    #[error(
        "{} holds another stream's packets (at byte {offset}: trace {found_uuid}, stream {found_stream}, cpu {found_cpu})",
        path.display()
    )]
    Foreign {
        path: PathBuf,
        offset: u64,
        found_uuid: String,
        found_stream: u32,
        found_cpu: u64,
    },
}

/// What an existing stream file held when it was taken over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Complete packets kept.
    pub(crate) packets: u64,
    /// Bytes kept (a packet boundary).
    pub(crate) bytes: u64,
    /// Bytes cut off the end (a partial or malformed packet).
    pub(crate) truncated: u64,
    /// The last kept packet's context, if any.
    pub(crate) last: Option<PacketContext>,
}

/// The writes of one flush. A flush happens because the session is stopping, so once a
/// write fails during it, what cannot be written is counted as discarded rather than kept
/// for a retry that will not come.
#[derive(Debug, Default)]
pub(crate) struct FlushWrites {
    /// A write failed during this flush: give up on what is pending.
    giving_up: bool,
    /// Events the consumer had counted as discarded before the flush.
    lost_before: u64,
    /// The write error that made the flush give up.
    failure: Option<String>,
}

impl FlushWrites {
    /// A flush beginning with `lost_before` events already counted as discarded.
    pub(crate) fn new(lost_before: u64) -> Self {
        Self {
            lost_before,
            ..Self::default()
        }
    }

    /// True once a write failed during this flush.
    pub(crate) fn giving_up(&self) -> bool {
        self.giving_up
    }

    /// A write to `file` failed: the rest of the flush gives up too.
    pub(crate) fn give_up(&mut self, file: &StreamFile) {
        self.giving_up = true;
        self.failure = file.failure().map(str::to_owned);
    }

    /// The write problem the flush reports, `lost_now` being the consumer's discarded
    /// count now: the failure that made it give up and what that cost, or (when it did
    /// not give up) the failure `file` is still in.
    pub(crate) fn problem(
        writes: Option<&Self>,
        file: &StreamFile,
        lost_now: u64,
    ) -> Option<String> {
        match writes.and_then(|w| w.failure.as_deref().map(|f| (f, w.lost_before))) {
            Some((failure, lost_before)) => Some(format!(
                "{failure}; {} event(s) could not be written and are counted as discarded",
                lost_now - lost_before
            )),
            None => file.failure().map(str::to_owned),
        }
    }
}

/// An open stream file whose length is known to end on a packet boundary.
#[derive(Debug)]
pub(crate) struct StreamFile {
    file: File,
    path: PathBuf,
    /// Bytes of complete packets: where the next packet starts.
    len: u64,
    /// A failed write may have left bytes beyond `len` that could not be truncated yet.
    dirty: bool,
    /// The write error the file is in, if any (see [`StreamFile::write_batch`]).
    failure: Option<String>,
}

impl StreamFile {
    /// Takes over `fd` (the stream file for `expect`'s stream), repairing its end.
    ///
    /// `path` is for messages only: the descriptor is authoritative.
    pub(crate) fn open(
        fd: OwnedFd,
        path: &Path,
        expect: &PacketHeader,
    ) -> Result<(StreamFile, Recovered), FileError> {
        let path = path.to_owned();
        let file = File::from(fd);
        let inspect = |source| FileError::Inspect {
            path: path.clone(),
            source,
        };
        let meta = file.metadata().map_err(inspect)?;
        if !meta.file_type().is_file() {
            return Err(FileError::NotRegular { path });
        }
        let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|e| inspect(e.into()))?;
        let access = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
        if access == OFlag::O_RDONLY {
            return Err(FileError::NotWritable { path });
        }
        let mut recovered = Recovered::default();
        if meta.len() > 0 {
            let reader = readable(&file, access, &meta, &path)?;
            recovered = scan(&reader, meta.len(), expect, &path)?;
            if recovered.bytes < meta.len() {
                file.set_len(recovered.bytes)
                    .map_err(|source| FileError::Truncate {
                        path: path.clone(),
                        len: recovered.bytes,
                        source,
                    })?;
                recovered.truncated = meta.len() - recovered.bytes;
            }
        }
        let out = StreamFile {
            file,
            path,
            len: recovered.bytes,
            dirty: false,
            failure: None,
        };
        Ok((out, recovered))
    }

    /// The write error the file is in (from the first failed write until one succeeds).
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// [`StreamFile::append`] for stream `stream`, keeping the file's write health: the
    /// first failure of an episode is logged and its message returned (`Err(Some)`) for the
    /// caller to report; later ones return `Err(None)`; the first success after a failure
    /// is logged.
    pub(crate) fn write_batch(&mut self, stream: u64, bytes: &[u8]) -> Result<(), Option<String>> {
        match self.append(bytes) {
            Ok(()) => {
                if self.failure.take().is_some() {
                    log::info!("stream {stream}: writing {} again", self.path.display());
                }
                Ok(())
            }
            Err(_) if self.failure.is_some() => Err(None),
            Err(e) => {
                let message = format!(
                    "cannot write {}: {}; events are being discarded",
                    self.path.display(),
                    crate::stream::io_text(&e)
                );
                log::warn!("stream {stream}: {message}");
                self.failure = Some(message.clone());
                Err(Some(message))
            }
        }
    }

    /// Appends one whole packet, or nothing: on failure the file is cut back to where it
    /// was, and the caller keeps the packet to try again.
    pub(crate) fn append(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.len)?;
            self.dirty = false;
        }
        let mut done = 0;
        while done < packet.len() {
            match self.file.write(&packet[done..]) {
                Ok(0) => {
                    self.roll_back(done);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.roll_back(done);
                    return Err(e);
                }
            }
        }
        self.len += packet.len() as u64;
        Ok(())
    }

    /// Removes the `written` bytes of a packet that could not be completed.
    fn roll_back(&mut self, written: usize) {
        if written > 0 && self.file.set_len(self.len).is_err() {
            self.dirty = true;
        }
    }
}

/// A descriptor the existing packets can be read through.
///
/// The session daemon opens stream files write-only (`O_APPEND`). The same file can then be
/// read through `/proc/self/fd/N`, which opens the very inode the descriptor refers to (no
/// path lookup an attacker could redirect; the inode is checked anyway).
fn readable(
    file: &File,
    access: OFlag,
    meta: &std::fs::Metadata,
    path: &Path,
) -> Result<File, FileError> {
    let read_err = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    if access == OFlag::O_RDWR {
        return file.try_clone().map_err(read_err);
    }
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let reopened = File::open(&proc_path).map_err(read_err)?;
    let again = reopened.metadata().map_err(read_err)?;
    if (again.dev(), again.ino()) != (meta.dev(), meta.ino()) {
        return Err(read_err(io::Error::other(
            "reopening the descriptor through /proc gave another file",
        )));
    }
    Ok(reopened)
}

/// Walks the packets of a file of `size` bytes; returns what is complete and valid.
///
/// Only the fixed 84-byte preamble of each packet is read, so this is one `pread` per packet
/// whatever the packets' sizes.
fn scan(
    file: &File,
    size: u64,
    expect: &PacketHeader,
    path: &Path,
) -> Result<Recovered, FileError> {
    let mut rec = Recovered::default();
    let mut buf = [0u8; PACKET_PREAMBLE_SIZE];
    let preamble = PACKET_PREAMBLE_SIZE as u64;
    while size - rec.bytes >= preamble {
        let offset = rec.bytes;
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => {}
            // The file shrank under us: what is left is the end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(source) => {
                return Err(FileError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let Ok(header) = PacketHeader::decode(&buf) else {
            break;
        };
        if header != *expect {
            return Err(FileError::Foreign {
                path: path.to_owned(),
                offset,
                found_uuid: header.uuid.to_string(),
                found_stream: header.stream_id,
                found_cpu: header.stream_instance_id,
            });
        }
        let Ok(ctx) = PacketContext::decode(&buf[PACKET_HEADER_SIZE..]) else {
            break;
        };
        if !plausible(&ctx, rec.last.as_ref(), size - offset) {
            break;
        }
        rec.bytes += ctx.content_size / 8;
        rec.packets += 1;
        rec.last = Some(ctx);
    }
    Ok(rec)
}

/// True when `ctx` describes a whole packet within the `left` bytes and follows `prev`.
fn plausible(ctx: &PacketContext, prev: Option<&PacketContext>, left: u64) -> bool {
    let bytes = ctx.content_size / 8;
    let sizes = ctx.content_size == ctx.packet_size
        && ctx.content_size % 8 == 0
        && bytes >= PACKET_PREAMBLE_SIZE as u64
        && bytes <= left;
    let ordered = ctx.timestamp_begin <= ctx.timestamp_end
        && prev.is_none_or(|p| {
            ctx.packet_seq_num > p.packet_seq_num && ctx.events_discarded >= p.events_discarded
        });
    sizes && ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_ctf::packet::write_packet;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    fn header() -> PacketHeader {
        PacketHeader {
            uuid: drtrace_ctf::metadata::trace_uuid(Default::default(), "ust/uid/0/64-bit"),
            stream_id: 1,
            stream_instance_id: 3,
        }
    }

    fn packet(seq: u64, discarded: u64, records: &[u8]) -> Vec<u8> {
        let ctx = PacketContext {
            timestamp_begin: 10 * seq,
            timestamp_end: 10 * seq + 5,
            packet_seq_num: seq,
            events_discarded: discarded,
            cpu_id: 3,
            ..PacketContext::default()
        };
        let mut out = Vec::new();
        write_packet(&mut out, &header(), &ctx, records).unwrap();
        out
    }

    /// Opens `path` the way the session daemon does: write-only, append.
    fn open_like_sessiond(path: &Path) -> OwnedFd {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .unwrap()
            .into()
    }

    fn take_over(path: &Path) -> Result<(StreamFile, Recovered), FileError> {
        StreamFile::open(open_like_sessiond(path), path, &header())
    }

    #[test]
    fn a_new_file_is_empty_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channel0_3");
        let (mut f, rec) = take_over(&path).unwrap();
        assert_eq!(rec, Recovered::default());
        let p = packet(0, 0, &[1, 2, 3]);
        f.append(&p).unwrap();
        f.append(&packet(1, 0, &[])).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), p.len() + 84);
    }

    #[test]
    fn complete_packets_are_kept_and_a_partial_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut bytes = packet(0, 0, &[7; 100]);
        bytes.extend(packet(1, 2, &[8; 50]));
        let good = bytes.len() as u64;
        let third = packet(2, 2, &[9; 40]);
        for cut in [1, 30, 83, 84, 85, third.len() - 1] {
            let mut file = bytes.clone();
            file.extend_from_slice(&third[..cut]);
            std::fs::write(&path, &file).unwrap();
            let (mut f, rec) = take_over(&path).unwrap();
            assert_eq!(rec.packets, 2, "cut {cut}");
            assert_eq!(rec.bytes, good);
            assert_eq!(rec.truncated, cut as u64);
            assert_eq!(rec.last.unwrap().packet_seq_num, 1);
            assert_eq!(rec.last.unwrap().events_discarded, 2);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
            // Appending continues right after the last good packet.
            f.append(&third).unwrap();
            let mut expected = bytes.clone();
            expected.extend_from_slice(&third);
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        }
    }

    #[test]
    fn garbage_and_inconsistent_packets_end_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let first = packet(5, 1, &[1; 20]);
        let mut bad_magic = packet(6, 1, &[]);
        bad_magic[0] ^= 0xff;
        let mut bad_size = packet(6, 1, &[]);
        bad_size[48] = 0xff; // content_size no longer equals packet_size
        let seq_backwards = packet(5, 1, &[]);
        let discarded_backwards = packet(6, 0, &[]);
        for (i, tail) in [
            vec![0u8; 200],
            bad_magic,
            bad_size,
            seq_backwards,
            discarded_backwards,
        ]
        .into_iter()
        .enumerate()
        {
            let mut file = first.clone();
            file.extend_from_slice(&tail);
            std::fs::write(&path, &file).unwrap();
            let (_, rec) = take_over(&path).unwrap();
            assert_eq!(rec.packets, 1, "case {i}");
            assert_eq!(rec.truncated, tail.len() as u64, "case {i}");
            assert_eq!(std::fs::read(&path).unwrap(), first, "case {i}");
        }
    }

    #[test]
    fn another_streams_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut other = packet(0, 0, &[1; 10]);
        other[20] = 9; // stream_id 9
        std::fs::write(&path, &other).unwrap();
        let err = take_over(&path).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::Foreign {
                    offset: 0,
                    found_stream: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), other);
    }

    #[test]
    fn read_only_and_non_regular_descriptors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, b"").unwrap();
        let ro: OwnedFd = File::open(&path).unwrap().into();
        assert!(matches!(
            StreamFile::open(ro, &path, &header()),
            Err(FileError::NotWritable { .. })
        ));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            StreamFile::open(a.into(), &path, &header()),
            Err(FileError::NotRegular { .. })
        ));
    }

    #[test]
    fn a_read_write_descriptor_is_scanned_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let p = packet(0, 0, &[3; 9]);
        let mut bytes = p.clone();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let fd: OwnedFd = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap()
            .into();
        let (_, rec) = StreamFile::open(fd, &path, &header()).unwrap();
        assert_eq!((rec.packets, rec.truncated), (1, 3));
        assert_eq!(std::fs::read(&path).unwrap(), p);
    }
}
