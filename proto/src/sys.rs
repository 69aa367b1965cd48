//! The few socket calls that need `unsafe`: taking ownership of descriptors received with
//! SCM_RIGHTS, and reading SO_PEERGROUPS, which nix does not wrap.
#![allow(unsafe_code)]

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};

/// Most descriptors one message can carry: the kernel's SCM_MAX_FD.
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Receives bytes into `buf` and appends any descriptors that came with them to `fds`.
///
/// Descriptors are received close-on-exec. Returns the number of bytes read (0 at end of
/// stream); errors are the socket's, including `WouldBlock` on a non-blocking socket.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    // Room for the most descriptors the kernel sends at once, so the control data can never
    // be truncated (a truncated list could not be iterated, and its descriptors would leak).
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let bytes = msg.bytes;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this message and
                // nothing else in the process knows its number, so we are its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(bytes)
}

/// Sends `buf` with `fds` attached (SCM_RIGHTS), never raising SIGPIPE.
///
/// Returns the number of bytes sent, which may be less than `buf.len()`; the descriptors
/// travel with the first byte sent.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let iov = [IoSlice::new(buf)];
    Ok(sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

/// The supplementary groups of the process at the other end of a Unix socket, as the kernel
/// recorded them at connect time (SO_PEERGROUPS, Linux 4.13+).
pub(crate) fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("group list too long"))?;
        // SAFETY: `groups` is a live, writable allocation of exactly `len` bytes, and `len`
        // is a valid pointer to its size; the kernel writes at most `len` bytes and updates
        // `len` to the size it needed.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = usize::try_from(len).unwrap_or(0) / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE means the buffer was too small and `len` now holds the size needed.
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65536 {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_their_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let sent = send_with_fds(a.as_fd(), b"hi", &[file.as_fd(), file.as_fd()]).unwrap();
        assert_eq!(sent, 2);
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn peer_groups_of_a_socketpair_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = peer_groups(a.as_fd()).unwrap();
        ours.sort_unstable();
        ours.dedup();
        theirs.sort_unstable();
        theirs.dedup();
        assert_eq!(theirs, ours);
    }
}
