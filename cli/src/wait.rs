//! Waiting for a file to disappear, without polling: an inotify watch on its directory,
//! set up before the first check so that no removal can slip between check and watch.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Waits until `path` no longer exists, at most `timeout`; returns whether it is gone.
///
/// A removal or rename of the name counts even if something recreates it right after (a
/// new daemon may take the socket over at once).
pub fn wait_until_removed(path: &Path, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(!exists(path));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE_SELF,
    )?;
    if !exists(path) {
        return Ok(true);
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(!exists(path));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_DELETE_SELF)
                || event.name.as_deref() == Some(OsStr::new(name))
            {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_files_are_gone_at_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(wait_until_removed(&dir.path().join("nothing"), Duration::ZERO).unwrap());
    }

    #[test]
    fn a_removal_on_another_thread_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let remover = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::remove_file(path).unwrap())
        };
        assert!(wait_until_removed(&path, Duration::from_secs(10)).unwrap());
        remover.join().unwrap();
    }

    #[test]
    fn a_file_that_stays_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let start = Instant::now();
        assert!(!wait_until_removed(&path, Duration::from_millis(100)).unwrap());
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
