//! `pthread_atfork` and the descriptor hygiene of a forked child.

use std::io;
use std::os::fd::RawFd;

/// Registers `child` to run in the child of every `fork()` (not `vfork`, not `posix_spawn`).
pub(crate) fn register_child_handler(child: unsafe extern "C" fn()) -> io::Result<()> {
    // SAFETY: `child` is a plain `extern "C"` function that lives for the whole program (it
    // is a function item, not a closure); the prepare and parent handlers are absent.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(child)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Closes an inherited descriptor by number, in a forked child.
///
/// # Safety
///
/// `fd` must be a descriptor that no live object of this process will use or close again:
/// in a forked child, a descriptor owned by a thread that exists only in the parent.
pub(crate) unsafe fn close_inherited(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: close is async-signal-safe; by the caller's promise nothing else will use
        // or close `fd`. An error (EBADF) leaves nothing to do.
        unsafe { libc::close(fd) };
    }
}
