//! The drtrace shared-memory ring buffer: lock-free, multi-process writers and one reader.
//!
//! One buffer per channel and CPU, in a sealed memfd. The session daemon creates it
//! ([`create_buffer`]) and passes the fd (SCM_RIGHTS) to traced applications, whose
//! in-process library maps it with [`Writer::map`] and writes records into it, and to the
//! consumer daemon, which maps it with [`Reader::map`] and turns each completed sub-buffer
//! into a CTF packet. Linked by `inproc` (writer side), `consumer` (reader side) and the
//! session daemons (creation, [`clock::calibrate_tsc`]).
//!
//! The crate knows the record *header* of `docs/format.md` (a 4-byte compact header for
//! event ids 0..=30 when the timestamp's bits above bit 26 match a recent timestamp of the
//! buffer or the packet's begin timestamp, the 13-byte extended one otherwise) and nothing
//! of CTF packets: [`PacketInfo`] gives the consumer what it needs to write the packet
//! header and context.
//!
//! - [`Layout`], [`Mode`]: sub-buffer size and count, discard or overwrite.
//! - [`create_buffer`]: a new sealed, initialized memfd.
//! - [`Writer`] / [`Slot`]: reserve, write the payload, commit. Never blocks, never
//!   allocates, never panics; a full buffer drops and counts.
//! - [`Reader`]: [`read_packet`](Reader::read_packet), [`flush`](Reader::flush), wake-up
//!   handshake, [`check_stuck`](Reader::check_stuck) for writers killed mid-record,
//!   [`final_packet`](Reader::final_packet) for the final lost count.
//! - [`clock`]: TSC or CLOCK_MONOTONIC timestamps, TSC calibration.
//!
//! The shared-memory layout is drawn in `header.rs`; the algorithm (reservation, sub-buffer
//! switch, holes, consumption, wake-up, accounting) is described in `ring.rs`.
//!
//! # Example
//!
//! ```
//! use drtrace_ringbuf::{create_buffer, ClockSource, Layout, Mode, Reader, Writer};
//!
//! // Session daemon: one buffer per CPU.
//! let layout = Layout { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard };
//! let memfd = create_buffer(&layout, ClockSource::Monotonic, "ust-chan0-cpu0")?;
//!
//! // Traced application (any number of threads and processes).
//! let writer = Writer::map(&memfd, None)?;
//! for i in 0..100u64 {
//!     if let Some(mut slot) = writer.reserve(1, 8) {
//!         slot.put_u64(i);
//!         slot.commit();
//!     }
//! }
//!
//! // Consumer daemon, at stop.
//! let mut reader = Reader::map(&memfd, None)?;
//! reader.flush();
//! let (mut records, mut buf) = (0, Vec::new());
//! while let Some(packet) = reader.read_packet(&mut buf)? {
//!     records += packet.records;
//! }
//! let lost = reader.final_packet().map_or(0, |p| p.events_discarded_total);
//! assert_eq!(records + lost, 100);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Accounting
//!
//! Discard mode is exact: every reserved record ends up in exactly one packet, or in the
//! lost counter (`events_discarded_total`), so recorded + discarded = emitted. Overwrite mode
//! counts a sub-buffer's records when a writer overwrites it before the reader claimed it
//! (exact too, by a compare-and-swap against the reader's claim). A sub-buffer given up
//! because its writer died counts its committed records plus one.
//!
//! # Testing with loom
//!
//! The algorithm is generic over its memory, and atomics come from `primitive` (loom's
//! under `cfg(loom)`), so the loom models in `tests/loom.rs` run the real reserve, commit,
//! switch, flush, wake-up and stuck-recovery code on a heap-allocated buffer:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p drtrace-ringbuf --release --test loom
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS` (default 2 in the models) bounds the search; raising it to 3
//! explores more but takes much longer.
#![warn(missing_docs)]
// The loom build compiles only the core (no mmap, writer or reader types).
#![cfg_attr(loom, allow(dead_code, unused_imports))]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("drtrace-ringbuf supports 64-bit targets only");

pub mod clock;
mod header;
mod layout;
#[cfg(not(loom))]
mod mmap;
#[cfg(loom)]
pub mod model;
mod primitive;
#[cfg(not(loom))]
mod reader;
mod ring;
mod slot;
#[cfg(not(loom))]
mod writer;

pub use clock::{ClockSource, TscCalibration};
pub use header::HeaderError;
pub use layout::{
    Layout, LayoutError, MAX_DATA_SIZE, MAX_NUM_SUBBUF, MAX_SUBBUF_SIZE, MIN_NUM_SUBBUF,
    MIN_SUBBUF_SIZE, Mode,
};
#[cfg(not(loom))]
pub use mmap::{CreateError, MapError};
#[cfg(not(loom))]
pub use reader::{Reader, WaitError};
pub use ring::{PacketInfo, ReadError, StuckReport};
#[cfg(not(loom))]
pub use slot::Slot;
pub use slot::string_len;
#[cfg(not(loom))]
pub use writer::Writer;

/// Creates a buffer: a memfd named `name`, sized for `layout`, initialized for `clock`,
/// then sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) so no holder of the fd can
/// resize it under a reader. Pass the fd to writers and to the reader.
#[cfg(not(loom))]
pub fn create_buffer(
    layout: &Layout,
    clock: ClockSource,
    name: &str,
) -> Result<std::os::fd::OwnedFd, CreateError> {
    mmap::create(layout, clock, name)
}
