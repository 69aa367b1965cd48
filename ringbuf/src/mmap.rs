//! Creating, sealing and mapping buffer memfds; raw access to the mapping.
//!
//! This is the only module that calls `mmap`/`munmap` (the workspace's `clippy.toml` routes
//! them here) and the only one that dereferences pointers into shared memory. The rules it
//! keeps, so that everything built on it is safe code:
//!
//! - A memfd is mapped only when its seals forbid shrinking and growing (`F_SEAL_SHRINK |
//!   F_SEAL_GROW | F_SEAL_SEAL`): no process can truncate it under us (which would turn
//!   every access into SIGBUS), and the size `fstat` reported stays the size of the mapping.
//! - The header is validated against that size before any offset derived from it is used,
//!   and the derived offsets (slot lines, data area) are checked to lie inside the mapping.
//! - Shared memory is exposed as `&Header` / `&SlotCtl` only: structures made entirely of
//!   atomics, valid for any bit pattern, so another process writing them is never UB on our
//!   side. Record bytes are never exposed as references: writers store through raw pointers
//!   with bounds checks, the reader copies out with volatile reads into its own memory.
//!
//! Data races on record bytes are possible only with a misbehaving peer (a hostile writer
//! moving `write_pos`, or an overwrite-mode copy racing the next lap, which the reader
//! detects and discards, see `ring.rs`): like any memory shared with another process, such a
//! race yields unspecified byte values, never an out-of-bounds access.

use crate::clock::ClockSource;
use crate::header::{self, HEADER_SIZE, Header, HeaderError, SLOT_CTL_SIZE, SlotCtl};
use crate::layout::{Layout, LayoutError, MAX_DATA_SIZE, MAX_NUM_SUBBUF, to_usize};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, munmap};
use std::ffi::CString;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use thiserror::Error;

/// Why [`create_buffer`](crate::create_buffer) failed.
#[derive(Debug, Error)]
pub enum CreateError {
    /// The layout is invalid.
    #[error("invalid layout")]
    Layout(#[from] LayoutError),
    /// The memfd name is unusable.
    #[error("invalid buffer name {name:?}: {reason}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `memfd_create` failed.
    #[error("memfd_create failed")]
    Memfd(#[source] Errno),
    /// Sizing the memfd failed.
    #[error("ftruncate to {size} bytes failed")]
    Truncate {
        /// Requested size.
        size: u64,
        /// The error.
        #[source]
        source: Errno,
    },
    /// Mapping the new memfd to initialize it failed.
    #[error("mmap of {size} bytes failed")]
    Mmap {
        /// Mapping size.
        size: u64,
        /// The error.
        #[source]
        source: Errno,
    },
    /// Adding the seals failed.
    #[error("sealing the memfd failed")]
    Seal(#[source] Errno),
}

/// Why mapping a buffer (as writer or reader) failed.
#[derive(Debug, Error)]
pub enum MapError {
    /// `fstat` on the fd failed.
    #[error("fstat of the buffer fd failed")]
    Stat(#[source] Errno),
    /// The fd is smaller than a header.
    #[error("buffer fd is {size} bytes, too small for a header")]
    TooSmall {
        /// Its size.
        size: u64,
    },
    /// The fd is larger than any valid buffer.
    #[error("buffer fd is {size} bytes, larger than any valid buffer")]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// Reading the seals failed (not a memfd?).
    #[error("reading the seals of the buffer fd failed (not a memfd?)")]
    Seals(#[source] Errno),
    /// The memfd lacks the seals that keep its size fixed.
    #[error("buffer memfd is not sealed (seals {found:#x}, need shrink, grow and seal)")]
    NotSealed {
        /// The seals it has.
        found: i32,
    },
    /// `mmap` failed.
    #[error("mmap of {size} bytes failed")]
    Mmap {
        /// Mapping size.
        size: u64,
        /// The error.
        #[source]
        source: Errno,
    },
    /// The header is not a valid buffer header.
    #[error("invalid buffer header")]
    Header(#[from] HeaderError),
}

/// The seals every buffer carries.
fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// A shared read-write mapping of a whole memfd, unmapped on drop.
struct RawMap {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, not tied to a thread; every access through a
// `RawMap` goes through atomics (`&Header`, `&SlotCtl`) or raw, bounds-checked copies
// (`RingMap`), which are valid from any thread.
unsafe impl Send for RawMap {}
// SAFETY: as for Send: `&RawMap` hands out only atomics and bounds-checked raw copies, both
// of which tolerate concurrent use.
unsafe impl Sync for RawMap {}

impl RawMap {
    /// Maps `len` bytes of `fd` shared, read-write. `len` must be at least a header.
    fn map(fd: BorrowedFd<'_>, len: u64) -> Result<RawMap, Errno> {
        if len < HEADER_SIZE {
            return Err(Errno::EINVAL);
        }
        let size = NonZeroUsize::new(to_usize(len)).ok_or(Errno::EINVAL)?;
        #[allow(
            clippy::disallowed_methods,
            reason = "this module is the one place that maps shared memory"
        )]
        // SAFETY: a fresh mapping chosen by the kernel (no address hint, no MAP_FIXED), so it
        // cannot alias any existing Rust object. The caller checked the fd's seals (or just
        // created it), so its size cannot drop below `len` while mapped.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )?
        };
        Ok(RawMap {
            base: ptr.cast(),
            len: size.get(),
        })
    }

    /// The header at offset 0.
    fn header(&self) -> &Header {
        // SAFETY: `map` ensured `len >= HEADER_SIZE == size_of::<Header>()` (const-asserted
        // in header.rs) and the mapping is page-aligned, above Header's 128-byte alignment.
        // Header consists of atomics only, so any content is a valid value and concurrent
        // writes by other processes are atomic accesses, not data races. The reference
        // borrows `self`, so it cannot outlive the mapping.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// The first `n` slot control lines, if they fit in the mapping.
    fn slots(&self, n: usize) -> Option<&[SlotCtl]> {
        let end = to_usize(HEADER_SIZE).checked_add(n.checked_mul(to_usize(SLOT_CTL_SIZE))?)?;
        if end > self.len {
            return None;
        }
        // SAFETY: the range [HEADER_SIZE, end) lies in the mapping (checked above); its
        // start is 128-aligned (page-aligned base + 512) as SlotCtl requires; SlotCtl is made
        // of atomics only (valid for any content, shared access is atomic). The slice
        // borrows `self`.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.base
                    .add(to_usize(HEADER_SIZE))
                    .cast::<SlotCtl>()
                    .as_ptr(),
                n,
            )
        })
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping made by `map` and not unmapped since; no
        // reference into it outlives `self` (they all borrow it).
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// A validated buffer mapping: header, slot lines and data area at checked offsets.
pub(crate) struct RingMap {
    raw: RawMap,
    /// Number of slots (a power of two); their lines fit before `data_off`.
    num: usize,
    /// Offset of the data area; `data_off + data_len == raw.len`.
    data_off: usize,
    /// Size of the data area.
    data_len: usize,
}

impl RingMap {
    /// Maps a sealed buffer memfd and validates its header against its size.
    pub(crate) fn open(fd: BorrowedFd<'_>) -> Result<(RingMap, Layout, ClockSource), MapError> {
        let st = nix::sys::stat::fstat(fd).map_err(MapError::Stat)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size < HEADER_SIZE {
            return Err(MapError::TooSmall { size });
        }
        if size > header::data_offset(MAX_NUM_SUBBUF) + MAX_DATA_SIZE {
            return Err(MapError::TooLarge { size });
        }
        let seals = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(MapError::Seals)?;
        let need = required_seals().bits();
        if seals & need != need {
            return Err(MapError::NotSealed { found: seals });
        }
        let raw = RawMap::map(fd, size).map_err(|source| MapError::Mmap { size, source })?;
        let (layout, clock) = raw.header().validate(size)?;
        let data_off = to_usize(header::data_offset(layout.num_subbuf));
        let data_len = to_usize(layout.data_size());
        let num = to_usize(u64::from(layout.num_subbuf));
        // `validate` checked data_off + data_len == size == raw.len and that data_off
        // leaves room for `num` slot lines; re-check what the unsafe accessors rely on.
        if raw.slots(num).is_none() || data_off.checked_add(data_len) != Some(raw.len) {
            return Err(MapError::Header(HeaderError::Size {
                field: "data area",
                found: size,
                expected: layout.buffer_size(),
            }));
        }
        let map = RingMap {
            raw,
            num,
            data_off,
            data_len,
        };
        Ok((map, layout, clock))
    }

    /// The header.
    #[inline]
    pub(crate) fn header(&self) -> &Header {
        self.raw.header()
    }

    /// Control line of slot `j % num`.
    #[inline]
    pub(crate) fn slot(&self, j: usize) -> &SlotCtl {
        let j = j & (self.num - 1);
        // SAFETY: `open` checked that `num` lines fit after the header and `j < num`; the
        // line is 128-aligned and made of atomics (see `RawMap::slots`); it borrows `self`.
        unsafe {
            self.raw
                .base
                .add(to_usize(HEADER_SIZE) + j * to_usize(SLOT_CTL_SIZE))
                .cast::<SlotCtl>()
                .as_ref()
        }
    }

    /// Pointer to data offset `off` if `[off, off + len)` lies in the data area.
    #[inline]
    fn data_ptr(&self, off: usize, len: usize) -> Option<NonNull<u8>> {
        if off.checked_add(len)? > self.data_len {
            return None;
        }
        // SAFETY: data_off + off + len <= data_off + data_len == raw.len, so the result
        // stays inside the mapping (one past its end at most).
        Some(unsafe { self.raw.base.add(self.data_off + off) })
    }

    /// Copies `src` to data offset `off`; out-of-range writes are ignored.
    #[inline]
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        if let Some(dst) = self.data_ptr(off, src.len()) {
            // SAFETY: `dst..dst+len` is inside the mapping (data_ptr checked it) and cannot
            // overlap `src`, which is private memory of the caller. No reference to the
            // destination exists (shared data is only ever accessed through raw pointers).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), src.len()) };
        }
    }

    /// Zeroes `len` bytes at data offset `off`; out-of-range requests are ignored.
    #[inline]
    pub(crate) fn zero(&self, off: usize, len: usize) {
        if let Some(dst) = self.data_ptr(off, len) {
            // SAFETY: in bounds (checked by data_ptr); raw-pointer access only, as in write.
            unsafe { std::ptr::write_bytes(dst.as_ptr(), 0, len) };
        }
    }

    /// Appends `len` bytes from data offset `off` to `out` with volatile reads (the memory
    /// may change under us; we copy whatever it holds and validate later). False if the
    /// range is out of bounds.
    pub(crate) fn copy_out(&self, off: usize, len: usize, out: &mut Vec<u8>) -> bool {
        let Some(src) = self.data_ptr(off, len) else {
            return false;
        };
        out.reserve(len);
        let src = src.as_ptr();
        let mut i = 0;
        if src.align_offset(8) == 0 {
            while i + 8 <= len {
                // SAFETY: src+i..src+i+8 is in bounds (i + 8 <= len, checked range) and
                // 8-aligned (src aligned, i a multiple of 8). Volatile: the bytes are
                // shared and read exactly once into private memory.
                let word = unsafe { std::ptr::read_volatile(src.add(i).cast::<u64>()) };
                out.extend_from_slice(&word.to_ne_bytes());
                i += 8;
            }
        }
        while i < len {
            // SAFETY: i < len, within the checked range; a byte read needs no alignment.
            out.push(unsafe { std::ptr::read_volatile(src.add(i)) });
            i += 1;
        }
        true
    }
}

impl std::fmt::Debug for RingMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingMap")
            .field("base", &self.raw.base)
            .field("len", &self.raw.len)
            .field("num", &self.num)
            .field("data_off", &self.data_off)
            .finish()
    }
}

/// Longest name accepted for a buffer memfd (the kernel allows 249 bytes).
const MAX_NAME_LEN: usize = 200;

/// Creates, initializes and seals a buffer memfd (see [`crate::create_buffer`]).
pub(crate) fn create(
    layout: &Layout,
    clock: ClockSource,
    name: &str,
) -> Result<OwnedFd, CreateError> {
    layout.validate()?;
    let bad_name = |reason| CreateError::Name {
        name: name.to_owned(),
        reason,
    };
    if name.len() > MAX_NAME_LEN {
        return Err(bad_name("longer than 200 bytes"));
    }
    let cname = CString::new(name).map_err(|_| bad_name("contains a NUL byte"))?;
    let fd = memfd_create(
        cname.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(CreateError::Memfd)?;
    let size = layout.buffer_size();
    let len = libc::off_t::try_from(size).map_err(|_| CreateError::Truncate {
        size,
        source: Errno::EFBIG,
    })?;
    nix::unistd::ftruncate(&fd, len).map_err(|source| CreateError::Truncate { size, source })?;
    {
        let raw =
            RawMap::map(fd.as_fd(), size).map_err(|source| CreateError::Mmap { size, source })?;
        let slots = raw
            .slots(to_usize(u64::from(layout.num_subbuf)))
            .ok_or(CreateError::Mmap {
                size,
                source: Errno::EINVAL,
            })?;
        raw.header().init(slots, layout, clock);
    }
    fcntl(&fd, FcntlArg::F_ADD_SEALS(required_seals())).map_err(CreateError::Seal)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Mode;
    use std::io::{Seek, SeekFrom, Write};

    fn layout() -> Layout {
        Layout {
            subbuf_size: 4096,
            num_subbuf: 4,
            mode: Mode::Discard,
        }
    }

    #[test]
    fn created_buffer_is_sealed_and_valid() {
        let fd = create(&layout(), ClockSource::Monotonic, "t").unwrap();
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap();
        assert_eq!(seals & required_seals().bits(), required_seals().bits());
        assert_eq!(
            nix::unistd::ftruncate(&fd, 100),
            Err(Errno::EPERM),
            "shrinking must be refused"
        );
        let (map, l, c) = RingMap::open(fd.as_fd()).unwrap();
        assert_eq!(l, layout());
        assert_eq!(c, ClockSource::Monotonic);
        assert_eq!(map.data_len, 4 * 4096);
        assert_eq!(map.data_off, 4096);
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let fd = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 8192).unwrap();
        assert!(matches!(
            RingMap::open(fd.as_fd()),
            Err(MapError::NotSealed { .. })
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        let long = "x".repeat(300);
        for name in ["a\0b", long.as_str()] {
            assert!(matches!(
                create(&layout(), ClockSource::Monotonic, name),
                Err(CreateError::Name { .. })
            ));
        }
    }

    #[test]
    fn header_is_checked_before_use() {
        let fd = create(&layout(), ClockSource::Tsc, "t").unwrap();
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        // A wrong version.
        file.seek(SeekFrom::Start(8)).unwrap();
        file.write_all(&7u32.to_le_bytes()).unwrap();
        match RingMap::open(fd.as_fd()) {
            Err(MapError::Header(HeaderError::Version { found: 7, .. })) => {}
            other => panic!("unexpected {other:?}"),
        }
        // Right version, but a geometry that does not match the file size.
        file.seek(SeekFrom::Start(8)).unwrap();
        file.write_all(&1u32.to_le_bytes()).unwrap();
        file.seek(SeekFrom::Start(20)).unwrap();
        file.write_all(&8u32.to_le_bytes()).unwrap();
        match RingMap::open(fd.as_fd()) {
            Err(MapError::Header(HeaderError::Size { .. })) => {}
            other => panic!("unexpected {other:?}"),
        }
        // Not a ring at all.
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(&[0; 8]).unwrap();
        assert!(matches!(
            RingMap::open(fd.as_fd()),
            Err(MapError::Header(HeaderError::BadMagic { found: 0 }))
        ));
    }

    #[test]
    fn out_of_range_data_access_is_ignored() {
        let fd = create(&layout(), ClockSource::Monotonic, "t").unwrap();
        let (map, _, _) = RingMap::open(fd.as_fd()).unwrap();
        let end = 4 * 4096;
        map.write(end - 2, &[1, 2, 3]);
        map.zero(end, 1);
        map.zero(usize::MAX, 2);
        let mut out = Vec::new();
        assert!(!map.copy_out(end - 2, 3, &mut out));
        assert!(!map.copy_out(usize::MAX, 2, &mut out));
        assert!(out.is_empty());
        map.write(end - 3, &[1, 2, 3]);
        assert!(map.copy_out(end - 11, 11, &mut out));
        assert_eq!(out, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
    }
}
