//! Reusing parked descriptor numbers (see `channel`'s module docs).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Moves the open file of `fd` onto the number `parked` (atomically replacing what `parked`
/// referred to), closes `fd`, and returns ownership of `parked`.
///
/// # Safety
///
/// `parked` must be a parked number: open, and held only by retired writers that will never
/// close it (their channels are leaked). The returned `OwnedFd` then shares the number with
/// them; that is sound because they never close or re-use it as anything but an eventfd to
/// write a wake-up into, which is exactly what the new file at that number is.
pub(crate) unsafe fn reuse_number(fd: OwnedFd, parked: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: dup3 only touches the descriptor table: `fd` is open (we own it) and `parked`
    // is open and ours to replace (caller's promise). O_CLOEXEC: an exec'ed program must not
    // inherit our buffers' eventfds.
    let rc = unsafe { libc::dup3(fd.as_raw_fd(), parked, libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(fd);
    // SAFETY: `parked` is open (dup3 succeeded) and, by the caller's promise, nothing else
    // will close it.
    Ok(unsafe { OwnedFd::from_raw_fd(parked) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsFd;

    #[test]
    fn a_parked_number_takes_the_new_file() {
        let old = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
        let parked = OwnedFd::from(old);
        let number = parked.as_raw_fd();
        // Parked: the number stays open, owned by nobody who will close it.
        std::mem::forget(parked);
        let new = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
        new.write(5).unwrap();
        // SAFETY: `number` was forgotten above, so this test is its only user.
        let moved = unsafe { reuse_number(OwnedFd::from(new), number) }.unwrap();
        assert_eq!(moved.as_raw_fd(), number);
        let mut buf = [0u8; 8];
        nix::unistd::read(moved.as_fd(), &mut buf).unwrap();
        assert_eq!(
            u64::from_ne_bytes(buf),
            5,
            "the number now refers to the new eventfd"
        );
    }
}
