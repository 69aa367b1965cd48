//! Retiring a buffer mapping in place.
//!
//! `drtrace_ringbuf::Writer` owns its mapping and unmaps it on drop; a retired channel's
//! writers are never dropped (a preempted thread may still be inside one), so instead their
//! shared mapping is *replaced*: `mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS)` over the
//! same range atomically swaps the pages under every address. A late writer then reads and
//! writes zero-filled private memory: never the daemon's buffer, never an unmapped page.
//! The shared pages go back to the kernel once the daemon and the consumer close theirs.
//!
//! The writer does not expose its mapping, so the range is found in `/proc/self/maps` right
//! after mapping, by the memfd's device and inode (a memfd has a unique inode), and
//! accepted only if exactly one mapping of that inode exists and has the buffer's size.

use std::io;
use std::os::fd::BorrowedFd;

/// The address range of one buffer mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    start: usize,
    len: usize,
}

/// Finds the one mapping of `memfd` in this process, which must be `len` bytes (rounded up
/// to pages).
pub(crate) fn find_mapping(memfd: BorrowedFd<'_>, len: u64) -> io::Result<Mapping> {
    let st = nix::sys::stat::fstat(memfd)?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let dev = (libc::major(st.st_dev), libc::minor(st.st_dev));
    let found = find_in_maps(&maps, dev, st.st_ino)?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    let want = len.div_ceil(page) * page;
    if u64::try_from(found.len).ok() != Some(want) {
        return Err(io::Error::other(format!(
            "the buffer mapping has {} bytes, expected {want}",
            found.len
        )));
    }
    Ok(found)
}

/// The single line of `maps` for device `dev` and inode `ino`.
fn find_in_maps(maps: &str, dev: (u32, u32), ino: u64) -> io::Result<Mapping> {
    let mut found = None;
    for line in maps.lines() {
        let mut cols = line.split_ascii_whitespace();
        let (Some(range), Some(_perms), Some(_off), Some(d), Some(i)) = (
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
        ) else {
            continue;
        };
        if i.parse::<u64>().ok() != Some(ino) || parse_dev(d) != Some(dev) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        if found.is_some() || end <= start {
            return Err(io::Error::other("the buffer is mapped more than once"));
        }
        found = Some(Mapping {
            start,
            len: end - start,
        });
    }
    found.ok_or_else(|| io::Error::other("the buffer mapping is not in /proc/self/maps"))
}

fn parse_dev(d: &str) -> Option<(u32, u32)> {
    let (maj, min) = d.split_once(':')?;
    Some((
        u32::from_str_radix(maj, 16).ok()?,
        u32::from_str_radix(min, 16).ok()?,
    ))
}

/// Replaces `m` with private zero-filled memory, in place. Async-signal-safe (one `mmap`
/// system call), so a forked child may call it.
///
/// Failure (ENOMEM) leaves the shared mapping in place: still mapped, so still harmless to
/// a late writer; only the memory is not returned.
pub(crate) fn retire(m: Mapping) {
    #[allow(
        clippy::disallowed_methods,
        reason = "not a shared-memory mapping: this replaces one with private anonymous memory, \
                  which drtrace_ringbuf::mmap does not offer"
    )]
    // SAFETY: `m` is exactly the range of a live mapping owned by a `Writer` that is never
    // dropped (its channel is leaked), so no other object of this process owns the pages
    // being replaced. MAP_FIXED swaps them atomically: every address stays mapped, readable
    // and writable throughout, so the writer's atomics and raw-pointer stores remain valid
    // accesses; only their contents change, as shared memory may at any time anyway.
    let rc = unsafe {
        libc::mmap(
            m.start as *mut libc::c_void,
            m.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let _ = rc;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1312 /usr/bin/demo
7f1000000000-7f1000042000 rw-s 00000000 00:01 2049 /memfd:chan0_cpu0 (deleted)
7f1000100000-7f1000142000 rw-s 00000000 00:01 2050 /memfd:chan0_cpu1 (deleted)
";

    #[test]
    fn the_mapping_is_found_by_device_and_inode() {
        let m = find_in_maps(MAPS, (0, 1), 2050).unwrap();
        assert_eq!(m.start, 0x7f10_0010_0000);
        assert_eq!(m.len, 0x42000);
        assert!(find_in_maps(MAPS, (8, 1), 2050).is_err());
        assert!(find_in_maps(MAPS, (0, 1), 9999).is_err());
    }

    #[test]
    fn a_buffer_mapped_twice_is_refused() {
        let twice = format!("{MAPS}{}", MAPS.lines().nth(1).unwrap());
        assert!(find_in_maps(&twice, (0, 1), 2049).is_err());
    }
}
