//! Reading traces back: [`Trace::open`] finds every `metadata` file under a session
//! directory, and [`Trace::events`] yields the events of all their streams merged in time
//! order.
//!
//! Design: each stream file is read one packet at a time (a packet is one sub-buffer, so
//! memory stays at one packet per stream whatever the trace's size), and the streams are
//! merged with a k-way merge on a binary heap keyed by nanoseconds from the clock's origin,
//! so streams of different traces and clock frequencies interleave correctly. Packets are
//! decoded through the metadata, not through fixed offsets, so traces from other CTF 1.8
//! producers (the kernel converter's, LTTng's) read the same way.
//!
//! Nothing in here trusts the files: every length is checked against the bytes that are
//! really there before anything is allocated or read, and every problem becomes a
//! [`ReadError`] naming the file and byte offset. A stream that fails stops; the others go
//! on.

mod bits;
mod decode;
mod stream;
mod value;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use uuid::Uuid;

pub use value::{Event, Value};

use crate::tsdl::{self, FieldClass, Metadata, TsdlError};
use stream::StreamReader;

/// Largest metadata file the reader accepts.
pub const MAX_METADATA_SIZE: u64 = 64 << 20;
/// How deep under the given directory `metadata` files are searched for
/// (`ust/uid/<uid>/64-bit` is four levels).
pub const MAX_SEARCH_DEPTH: usize = 8;

/// Magic of LTTng's packetized metadata, which drtrace never writes.
const PACKETIZED_METADATA_MAGIC: u32 = 0x75D1_1D57;

/// A packet or record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The data ends before a field does.
    #[error("data ends early: {needed_bits} bits needed at bit {at_bit}, {available_bits} left")]
    Truncated {
        /// Position in the packet, in bits.
        at_bit: u64,
        /// Bits the field needs.
        needed_bits: u64,
        /// Bits left before the end of the packet's content.
        available_bits: u64,
    },
    /// A string runs to the end of the content without a NUL.
    #[error("string at bit {at_bit} has no terminating NUL")]
    UnterminatedString {
        /// Position in the packet, in bits.
        at_bit: u64,
    },
    /// A variant has no tag to select its option.
    #[error("variant has no tag")]
    UntaggedVariant,
    /// A variant tag or sequence length names no decoded field.
    #[error("{what} '{path}' names no field decoded before it")]
    MissingReference {
        /// "variant tag" or "sequence length".
        what: &'static str,
        /// The path as written in the metadata.
        path: String,
    },
    /// A variant tag is not an enumeration.
    #[error("variant tag '{path}' is not an enumeration")]
    TagNotEnum {
        /// The tag's path.
        path: String,
    },
    /// A tag value selects no option of the variant.
    #[error("variant tag value {value} (label {label:?}) selects no option")]
    NoVariantOption {
        /// The tag's integer value.
        value: i128,
        /// Its label, if it has one.
        label: Option<String>,
    },
    /// A sequence length is not a non-negative integer.
    #[error("sequence length '{path}' is not a non-negative integer")]
    BadLength {
        /// The length's path.
        path: String,
    },
    /// An array or sequence claims more elements than can be there.
    #[error("array of {length} elements cannot fit in the {available_bits} bits left")]
    LengthTooLarge {
        /// Claimed element count.
        length: u64,
        /// Bits left in the packet.
        available_bits: u64,
    },
    /// The packet header's magic is wrong.
    #[error("bad packet magic {found:#x}, expected 0xc1fc1fc1")]
    BadMagic {
        /// What was read.
        found: u64,
    },
    /// The packet header's uuid is not the trace's.
    #[error("packet uuid {found} is not the trace uuid {expected}")]
    UuidMismatch {
        /// The packet's uuid.
        found: Uuid,
        /// The metadata's.
        expected: Uuid,
    },
    /// The packet header names no stream class and the metadata has several.
    #[error("packet names no stream class and the metadata declares several")]
    NoStreamId,
    /// The packet names a stream class the metadata does not declare.
    #[error("packet names unknown stream class {id}")]
    UnknownStream {
        /// The stream class id.
        id: u64,
    },
    /// A record names an event class the metadata does not declare.
    #[error("unknown event id {id} in stream class {stream}")]
    UnknownEvent {
        /// The stream class.
        stream: u64,
        /// The event id.
        id: u64,
    },
    /// A record header carries no event id and the stream class has several events.
    #[error("record has no event id and stream class {stream} has {classes} event classes")]
    NoEventId {
        /// The stream class.
        stream: u64,
        /// How many event classes it has.
        classes: usize,
    },
    /// The packet's sizes are inconsistent with each other or with the file.
    #[error(
        "bad packet (packet_size {packet_size} bits, content_size {content_size} bits): {reason}"
    )]
    BadPacketSize {
        /// The declared packet size in bits.
        packet_size: u64,
        /// The declared content size in bits.
        content_size: u64,
        /// What is wrong.
        reason: String,
    },
    /// The packet is larger than the reader loads.
    #[error("packet of {bytes} bytes is larger than the reader's limit")]
    PacketTooLarge {
        /// Its size.
        bytes: u64,
    },
    /// A record takes no bits at all, so reading could not advance.
    #[error("record takes no space")]
    EmptyRecord,
    /// A broken invariant in the reader itself.
    #[error("internal reader error")]
    Internal,
}

/// Reading a trace failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No `metadata` file was found.
    #[error("no metadata file under {}", path.display())]
    NoMetadata {
        /// The directory searched.
        path: PathBuf,
    },
    /// A metadata file is larger than [`MAX_METADATA_SIZE`].
    #[error("{} is {size} bytes, more than the {MAX_METADATA_SIZE}-byte metadata limit", path.display())]
    MetadataTooLarge {
        /// The metadata file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A metadata file is in the packetized format.
    #[error("{} is packetized metadata, which is not supported", path.display())]
    PacketizedMetadata {
        /// The metadata file.
        path: PathBuf,
    },
    /// A metadata file does not parse.
    #[error("{}: {source}", path.display())]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// The parse error, with its line.
        #[source]
        source: TsdlError,
    },
    /// A stream file holds something the metadata cannot explain.
    #[error("{} at byte {offset}: {source}", path.display())]
    Decode {
        /// The stream file.
        path: PathBuf,
        /// Byte offset in the file near the problem.
        offset: u64,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
}

/// Events a tracer recorded as lost, seen at one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardedEvents {
    /// Events lost since the previous packet (or since the start, for the first).
    pub count: u64,
    /// The packet's sequence number, if it has one.
    pub packet_seq_num: Option<u64>,
    /// The packet's offset in its file.
    pub offset: u64,
}

/// A jump in packet sequence numbers: packets were lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketGap {
    /// The sequence number that should have come next.
    pub expected: u64,
    /// The one that came.
    pub found: u64,
    /// Offset of the packet that came, in its file.
    pub offset: u64,
}

impl PacketGap {
    /// Packets missing in the gap.
    pub fn lost(&self) -> u64 {
        self.found.wrapping_sub(self.expected)
    }
}

/// What one stream file holds, counted while reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// The stream file.
    pub path: PathBuf,
    /// Its channel (file name without `_<cpu>`).
    pub channel: String,
    /// Stream class id of its first packet.
    pub stream_id: Option<u64>,
    /// CPU of its first packet.
    pub cpu: Option<u32>,
    /// Packets read.
    pub packets: u64,
    /// Records read.
    pub events: u64,
    /// The last packet's `events_discarded`: events lost in this stream in all.
    pub events_discarded: u64,
    /// Where the discarded count grew, packet by packet.
    pub discarded: Vec<DiscardedEvents>,
    /// Gaps in packet sequence numbers.
    pub lost_packets: Vec<PacketGap>,
}

/// One metadata file and what it says: a CTF trace within the session directory.
pub struct TraceSource {
    /// The directory holding the metadata file and its stream files.
    pub path: PathBuf,
    /// `env.domain` (`ust` or `kernel`), else guessed from the path, else empty.
    pub domain: String,
    /// The parsed metadata.
    pub metadata: Metadata,
    /// Clock class index of each stream class, for converting cycles to nanoseconds.
    stream_clocks: BTreeMap<u64, Option<usize>>,
}

impl fmt::Debug for TraceSource {
    // The metadata is long; events carry this, so keep their debug output readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceSource")
            .field("path", &self.path)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TraceSource {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.metadata == other.metadata
    }
}

impl TraceSource {
    fn new(path: PathBuf, root: &Path, metadata: Metadata) -> Self {
        let domain = metadata
            .env_str("domain")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                match rel
                    .components()
                    .next()
                    .map(|c| c.as_os_str().to_string_lossy())
                {
                    Some(c) if c == "kernel" || c == "ust" => c.into_owned(),
                    _ => String::new(),
                }
            });
        let stream_clocks = metadata
            .streams
            .values()
            .map(|s| {
                let named = [&s.packet_context, &s.event_header]
                    .into_iter()
                    .flatten()
                    .find_map(mapped_clock)
                    .and_then(|name| metadata.clocks.iter().position(|c| c.name == name));
                let clock = named.or(if metadata.clocks.len() == 1 {
                    Some(0)
                } else {
                    None
                });
                (s.id, clock)
            })
            .collect();
        Self {
            path,
            domain,
            metadata,
            stream_clocks,
        }
    }

    /// The hostname from `env.hostname`.
    pub fn hostname(&self) -> Option<&str> {
        self.metadata.env_str("hostname")
    }

    /// Nanoseconds from the origin of the clock of stream class `stream_id` (the cycles
    /// themselves when the stream has no clock).
    pub fn ns_from_origin(&self, stream_id: u64, cycles: u64) -> i64 {
        match self.stream_clocks.get(&stream_id).copied().flatten() {
            Some(i) => self.metadata.clocks[i].ns_from_origin(cycles),
            None => i64::try_from(cycles).unwrap_or(i64::MAX),
        }
    }
}

fn mapped_clock(class: &FieldClass) -> Option<&str> {
    match class {
        FieldClass::Int(i) => i.clock.as_deref(),
        FieldClass::Enum(e) => e.container.clock.as_deref(),
        FieldClass::Struct(s) => s.members.iter().find_map(|m| mapped_clock(&m.class)),
        FieldClass::Variant(v) => v.options.iter().find_map(|m| mapped_clock(&m.class)),
        FieldClass::Array { element, .. } | FieldClass::Sequence { element, .. } => {
            mapped_clock(element)
        }
        FieldClass::Float(_) | FieldClass::String(_) => None,
    }
}

/// A session directory (or any directory holding CTF traces), opened for reading.
#[derive(Debug)]
pub struct Trace {
    root: PathBuf,
    sources: Vec<Arc<TraceSource>>,
    /// Stream files: index into `sources`, and path.
    streams: Vec<(usize, PathBuf)>,
}

impl Trace {
    /// Finds and parses every `metadata` file under `path` (`ust/uid/*/64-bit`,
    /// `ust/pid/*`, `kernel`, or `path` itself) and lists their stream files: every other
    /// regular file next to a metadata file whose name does not start with `.`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReadError> {
        let root = path.as_ref().to_owned();
        let mut dirs = Vec::new();
        find_metadata(&root, 0, &mut dirs)?;
        if dirs.is_empty() {
            return Err(ReadError::NoMetadata { path: root });
        }
        dirs.sort();
        let mut sources = Vec::new();
        let mut streams = Vec::new();
        for dir in dirs {
            let metadata = read_metadata(&dir.join("metadata"))?;
            let index = sources.len();
            let mut files = Vec::new();
            let io = |source| ReadError::Io {
                path: dir.clone(),
                source,
            };
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name == "metadata" || name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                    files.push(path);
                }
            }
            files.sort();
            streams.extend(files.into_iter().map(|f| (index, f)));
            sources.push(Arc::new(TraceSource::new(dir, &root, metadata)));
        }
        Ok(Self {
            root,
            sources,
            streams,
        })
    }

    /// The directory given to [`Trace::open`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The traces found: one per metadata file, sorted by path.
    pub fn sources(&self) -> &[Arc<TraceSource>] {
        &self.sources
    }

    /// The stream files found, sorted by path within each trace.
    pub fn stream_paths(&self) -> impl Iterator<Item = &Path> {
        self.streams.iter().map(|(_, p)| p.as_path())
    }

    /// Every event of every stream, in timestamp order (ties keep stream-file order).
    ///
    /// A stream that fails yields one error and then stops; the other streams go on.
    pub fn events(&self) -> Events {
        let readers: Vec<StreamReader> = self
            .streams
            .iter()
            .map(|(i, p)| StreamReader::new(Arc::clone(&self.sources[*i]), p))
            .collect();
        Events {
            peeked: (0..readers.len()).map(|_| None).collect(),
            readers,
            heap: BinaryHeap::new(),
            errors: VecDeque::new(),
            started: false,
        }
    }

    /// Reads every event into memory, stopping at the first error (for tests and small
    /// traces; [`Trace::events`] streams).
    pub fn read_all(&self) -> Result<Vec<Event>, ReadError> {
        self.events().collect()
    }

    /// Reads every stream to its end and returns what each holds, discarded events and
    /// lost packets included; stops at the first error.
    pub fn stream_stats(&self) -> Result<Vec<StreamStats>, ReadError> {
        let mut out = Vec::with_capacity(self.streams.len());
        for (i, p) in &self.streams {
            let mut r = StreamReader::new(Arc::clone(&self.sources[*i]), p);
            while r.next_event()?.is_some() {}
            out.push(r.stats);
        }
        Ok(out)
    }
}

/// The merged events of a [`Trace`]; see [`Trace::events`].
#[derive(Debug)]
pub struct Events {
    readers: Vec<StreamReader>,
    peeked: Vec<Option<Event>>,
    /// (timestamp, stream index) of each stream's next event, smallest first.
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    errors: VecDeque<ReadError>,
    started: bool,
}

impl Events {
    fn advance(&mut self, i: usize) {
        match self.readers[i].next_event() {
            Ok(Some(ev)) => {
                self.heap.push(Reverse((ev.timestamp_ns, i)));
                self.peeked[i] = Some(ev);
            }
            Ok(None) => {}
            Err(e) => self.errors.push_back(e),
        }
    }

    /// What each stream held so far (complete once the iterator is exhausted).
    pub fn stats(&self) -> Vec<StreamStats> {
        self.readers.iter().map(|r| r.stats.clone()).collect()
    }
}

impl Iterator for Events {
    type Item = Result<Event, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            for i in 0..self.readers.len() {
                self.advance(i);
            }
        }
        if let Some(e) = self.errors.pop_front() {
            return Some(Err(e));
        }
        let Reverse((_, i)) = self.heap.pop()?;
        let ev = self.peeked[i].take();
        self.advance(i);
        ev.map(Ok)
    }
}

fn find_metadata(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), ReadError> {
    let io = |source| ReadError::Io {
        path: dir.to_owned(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        if dir.file_name().is_some_and(|n| n == "metadata") {
            if let Some(parent) = dir.parent() {
                out.push(parent.to_owned());
            }
            return Ok(());
        }
        return Err(ReadError::NoMetadata {
            path: dir.to_owned(),
        });
    }
    if dir.join("metadata").is_file() {
        out.push(dir.to_owned());
    }
    if depth >= MAX_SEARCH_DEPTH {
        return Ok(());
    }
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        // Symlinked directories are not followed: a link loop must not hang the search.
        if entry.file_type().map_err(io)?.is_dir() {
            subdirs.push(entry.path());
        }
    }
    subdirs.sort();
    for sub in subdirs {
        find_metadata(&sub, depth + 1, out)?;
    }
    Ok(())
}

fn read_metadata(path: &Path) -> Result<Metadata, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_METADATA_SIZE {
        return Err(ReadError::MetadataTooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_metadata(path, &bytes)
}

/// Parses metadata bytes (plain-text TSDL) as read from `path`.
pub(crate) fn parse_metadata(path: &Path, bytes: &[u8]) -> Result<Metadata, ReadError> {
    if bytes.len() >= 4 {
        let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if magic == PACKETIZED_METADATA_MAGIC || magic.swap_bytes() == PACKETIZED_METADATA_MAGIC {
            return Err(ReadError::PacketizedMetadata {
                path: path.to_owned(),
            });
        }
    }
    let text = String::from_utf8_lossy(bytes);
    tsdl::parse(&text).map_err(|source| ReadError::Metadata {
        path: path.to_owned(),
        source,
    })
}
