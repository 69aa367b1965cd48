//! One listener thread per daemon: find it, register, obey it, and wait for it again when it
//! goes away.
//!
//! ```text
//!          +------------------------------------------------------------+
//!          v                                                            |
//!   arm the inotify watch --> connect + hello --ok--> Register --> serve commands
//!          ^                      |                                     |  (until EOF)
//!          |         no daemon / stale socket: wait for the socket      |
//!          |         to be created, renamed or chmod'ed (inotify)       |
//!          |         silent or refusing daemon: the same, or a          |
//!          |         backoff timeout (100 ms doubling to 5 s)           |
//!          +---------------------------------- drop the daemon's sessions
//! ```
//!
//! The watch is armed *before* each connection attempt, so a daemon that binds its socket
//! between a failed attempt and the wait still wakes the listener. The watch is on the
//! socket's directory (or, if that does not exist yet, on its nearest existing ancestor),
//! for the socket's name: `IN_CREATE` (bind), `IN_MOVED_TO` (rename into place) and
//! `IN_ATTRIB` (the daemon's chmod, which comes after `listen`). A `bind` is visible before the
//! `listen` that follows it, so an attempt right after an event that is refused is retried a
//! few times over about 100 ms before the listener goes back to waiting.
//!
//! The watch is set up only once the process has lived [`PROBE_PHASE`] (2 s): tearing an
//! inotify watch down delays the process's exit by a kernel grace period (about 12 ms
//! here), which short-lived programs must not pay. Until then, and whenever inotify cannot
//! be had (its per-user instance limit), the listener probes every [`PROBE_PERIOD`]
//! (80 ms): a `stat` of the socket path, and a `connect` if a file is there. A long-lived
//! process therefore runs no timer at all while no daemon exists.
//!
//! While connected, the listener sleeps in `poll` on the daemon socket and on an eventfd
//! that [`events_added`](crate::runtime::events_added) writes when a provider is registered
//! late (a `dlopen`ed library); it then sends the new events with `AppMessage::NewEvents`.
//! Each daemon command is applied under the state lock and answered with one
//! `AppMessage::Reply`; a command that cannot be decoded gets an error reply with the
//! sequence number it carried (or 0), and the connection goes on.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drtrace_proto::app::{
    APP_ABI_MAJOR, APP_ABI_MINOR, AppCommand, AppMessage, AppRegistration, AppRequest,
};
use drtrace_proto::client::{ConnectError, Connection, PendingHello};
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::frame::{FrameAssembler, FrameError, MAX_FRAME_LEN, decode_json, recv_with_fds};
use drtrace_proto::hello::Role;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::callsite::registered_events;
use crate::endpoint::Endpoint;
use crate::runtime::{Phase, Runtime};

/// Bound on the hello of a background connection attempt (the start-up wait has its own,
/// shorter bound and does not wait for this one).
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on sending one message to the daemon: a daemon that does not read is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses between attempts after an inotify event whose attempt was refused (the daemon has
/// bound its socket but not called `listen` yet).
const RETRY_AFTER_EVENT: [Duration; 4] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(30),
    Duration::from_millis(60),
];
/// Backoff for a daemon that is there but does not answer, or refuses us.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a listener probes (tries every [`PROBE_PERIOD`]) before it sets up inotify.
///
/// An inotify watch is cheap to wait on but costly to tear down: the kernel waits for an
/// SRCU grace period when the watch's instance is closed, which delays the *exit* of the
/// process by about 12 ms here (measured: 3.4 ms per run of a tiny program without a watch,
/// 15.4 ms with one). A short-lived traced program (a command-line tool run in a loop) must
/// not pay that, so the first seconds use a cheap periodic probe (a `stat` of the socket
/// path, plus a refused `connect` if a stale file is there) and only a process still
/// waiting after them sets up the watch, for the rest of its life.
const PROBE_PHASE: Duration = Duration::from_secs(2);
/// Period of the probe, and of the fallback when inotify is unavailable (its per-user
/// instance limit): short enough to register within 100 ms of a daemon's arrival.
const PROBE_PERIOD: Duration = Duration::from_millis(80);
/// Bound on re-arming rounds while directories on the way to the socket keep appearing.
const MAX_ARM_ROUNDS: usize = 16;
/// A session shorter than this that ended in a protocol error counts as a failed attempt
/// (backoff), so a daemon that closes at once cannot make the listener spin.
const SHORT_SESSION: Duration = Duration::from_secs(1);

/// A connection the start-up made, handed to the listener: greeted, or with the greeting
/// still unanswered when start-up stopped waiting (a slow daemon is then registered with as
/// soon as it answers, instead of on the next attempt).
#[derive(Debug)]
pub(crate) enum First {
    Ready(Connection),
    Pending(PendingHello),
}

/// Start-up's attempt to reach `ep`, in the constructor's thread: the hello must complete
/// before `deadline`. `None` when there is no daemon, it is silent, or it refused us; the
/// listener then keeps trying in the background.
pub(crate) fn first_attempt(rt: &Runtime, ep: Endpoint, deadline: Instant) -> Option<First> {
    let (path, uid) = rt.settings.endpoint(ep)?;
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    let pending = match Connection::begin(path, Role::App, *uid, left) {
        Ok(pending) => pending,
        Err(ConnectError::NoDaemon { .. }) => return None,
        Err(e) => {
            crate::debug::log(format_args!("{ep} at start-up: {e}"));
            return None;
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if !pending.answered_within(left) {
        crate::debug::log(format_args!(
            "{ep} at start-up: pid {} has not answered yet; going on without waiting",
            pending.peer_pid()
        ));
        return Some(First::Pending(pending));
    }
    match pending.finish(left.max(Duration::from_millis(1))) {
        Ok(conn) => Some(First::Ready(conn)),
        Err(e) => {
            crate::debug::log(format_args!("{ep} at start-up: {e}"));
            None
        }
    }
}

/// The listener thread's body. Never panics out (a panic ends only this listener).
pub(crate) fn run(rt: &'static Runtime, ep: Endpoint, first: Option<First>) {
    if catch_unwind(AssertUnwindSafe(|| listen(rt, ep, first))).is_err() {
        crate::debug::log(format_args!("the {ep} listener stopped after a panic"));
        rt.startup.set(ep, Phase::Done);
    }
}

/// What to do after an attempt.
enum Next {
    /// Wait for an inotify event, with no timeout.
    Event,
    /// Wait for an event, or at most this long.
    Within(Duration),
}

fn listen(rt: &'static Runtime, ep: Endpoint, mut first: Option<First>) {
    let fds = &rt.listeners[ep.index()];
    let began = Instant::now();
    let mut watcher: Option<Watcher> = None;
    // Quick retries are earned by an inotify event or a daemon's exit, not at start.
    let mut retries = RETRY_AFTER_EVENT.len();
    let mut backoff = BACKOFF_MIN;
    let Some((path, uid)) = rt.settings.endpoint(ep) else {
        // Not locatable (no password-database entry, for instance): nothing to listen for.
        rt.startup.set(ep, Phase::Done);
        return;
    };
    let (path, uid) = (path.as_path(), *uid);
    loop {
        // Past the probing phase, arm the watch first: an arrival after this point wakes
        // the wait below.
        if watcher.is_none() && began.elapsed() >= PROBE_PHASE {
            watcher = Watcher::new()
                .map_err(|e| crate::debug::log(format_args!("no inotify ({e}): probing")))
                .ok();
            if let Some(w) = &watcher {
                fds.watch.store(w.raw_fd(), Ordering::Relaxed);
            }
        }
        let armed = watcher.as_mut().is_some_and(|w| w.arm(path).is_ok());
        let attempt = match first.take() {
            Some(First::Ready(conn)) => Ok(conn),
            Some(First::Pending(pending)) => pending.finish(HELLO_TIMEOUT),
            None => Connection::connect(path, Role::App, uid, HELLO_TIMEOUT),
        };
        let next = match attempt {
            Ok(conn) => {
                rt.startup.set(ep, Phase::Registering);
                let since = Instant::now();
                fds.conn.store(conn.stream().as_raw_fd(), Ordering::Relaxed);
                let end = serve(rt, ep, &conn);
                fds.conn.store(-1, Ordering::Relaxed);
                drop(conn);
                rt.state().drop_endpoint(ep);
                rt.startup.set(ep, Phase::Done);
                crate::debug::log(format_args!("{ep} at {}: {end}", path.display()));
                retries = 0;
                if end.is_disconnect() || since.elapsed() >= SHORT_SESSION {
                    backoff = BACKOFF_MIN;
                    // Try again at once: a restarted daemon may be there already; if not,
                    // the attempt fails with "no daemon" and the listener waits.
                    continue;
                }
                Next::Within(bump(&mut backoff))
            }
            Err(ConnectError::NoDaemon { .. }) => {
                rt.startup.set(ep, Phase::Done);
                match RETRY_AFTER_EVENT.get(retries) {
                    Some(pause) => {
                        retries += 1;
                        Next::Within(*pause)
                    }
                    None => Next::Event,
                }
            }
            Err(e) => {
                rt.startup.set(ep, Phase::Done);
                crate::debug::log(format_args!("{ep}: {e}"));
                Next::Within(bump(&mut backoff))
            }
        };
        let woke_by_event = match (&mut watcher, armed) {
            (Some(w), true) => w.wait(fds.notify.as_ref(), next),
            _ => {
                // Probing: no inotify yet (or none to be had), look again soon.
                std::thread::sleep(match next {
                    Next::Event => PROBE_PERIOD,
                    Next::Within(d) => d,
                });
                false
            }
        };
        if woke_by_event {
            // A fresh event earns fresh quick retries.
            retries = 0;
        }
    }
}

/// Doubles the backoff, returning the value before.
fn bump(backoff: &mut Duration) -> Duration {
    let now = *backoff;
    *backoff = (now * 2).min(BACKOFF_MAX);
    now
}

/// An inotify instance watching for one socket path to appear.
#[derive(Debug)]
struct Watcher {
    inotify: Inotify,
    /// The watched directory and its watch.
    watch: Option<(PathBuf, WatchDescriptor)>,
    /// The entry in that directory that matters: the socket, or the next missing directory
    /// on the way to it.
    name: OsString,
}

impl Watcher {
    fn new() -> nix::Result<Self> {
        Ok(Self {
            inotify: Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?,
            watch: None,
            name: OsString::new(),
        })
    }

    fn raw_fd(&self) -> i32 {
        self.inotify.as_fd().as_raw_fd()
    }

    /// Watches the directory where `path` (or the first missing directory on its way)
    /// would appear.
    fn arm(&mut self, path: &Path) -> nix::Result<()> {
        // A directory on the way may appear between finding the nearest existing one and
        // watching it, and its creation would then go unseen: after adding the watch, look
        // again, and move the watch deeper until nothing changed in between.
        for _ in 0..MAX_ARM_ROUNDS {
            let (dir, name) = nearest_existing(path).ok_or(Errno::ENOENT)?;
            self.watch_dir(&dir, &name)?;
            if nearest_existing(path).is_some_and(|(d, n)| d == dir && n == name) {
                return Ok(());
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Moves the watch to `dir`, for the entry `name`.
    fn watch_dir(&mut self, dir: &Path, name: &OsStr) -> nix::Result<()> {
        if let Some((old, wd)) = self.watch.take() {
            if old == dir {
                self.watch = Some((old, wd));
            } else {
                let _ = self.inotify.rm_watch(wd);
            }
        }
        if self.watch.is_none() {
            let flags = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_ONLYDIR;
            let wd = self.inotify.add_watch(dir, flags)?;
            self.watch = Some((dir.to_owned(), wd));
        }
        if self.name != name {
            self.name = name.to_owned();
            crate::debug::log(format_args!(
                "watching {} for {}",
                dir.display(),
                name.to_string_lossy()
            ));
        }
        Ok(())
    }

    /// Waits for an event on the watched name (true) or for the timeout (false). Wake-ups
    /// for late providers are drained: there is no daemon to tell.
    fn wait(&mut self, notify: Option<&EventFd>, next: Next) -> bool {
        let deadline = match next {
            Next::Event => None,
            Next::Within(d) => Some(Instant::now() + d),
        };
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut polled = vec![PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            if let Some(n) = notify {
                polled.push(PollFd::new(n.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut polled, timeout) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::debug::log(format_args!("poll on inotify failed: {e}"));
                    std::thread::sleep(PROBE_PERIOD);
                    return true;
                }
            }
            let woke = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            if polled.get(1).is_some_and(woke) {
                drain(notify);
            }
            if woke(&polled[0]) && self.relevant_events() {
                return true;
            }
        }
    }

    /// Reads the queued events: true if one names the watched entry (or events were lost).
    fn relevant_events(&mut self) -> bool {
        let mut relevant = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                if e.mask
                    .intersects(AddWatchFlags::IN_Q_OVERFLOW | AddWatchFlags::IN_IGNORED)
                    || e.name.as_deref() == Some(self.name.as_os_str())
                {
                    relevant = true;
                }
                if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The directory went away: re-arm on the next attempt.
                    self.watch = None;
                }
            }
        }
        relevant
    }
}

/// The nearest existing directory on the way to `path`, and the entry in it that leads to
/// `path`.
fn nearest_existing(path: &Path) -> Option<(PathBuf, OsString)> {
    let mut name = path.file_name()?.to_owned();
    let mut dir = path.parent()?;
    loop {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if d.is_dir() {
            return Some((d.to_owned(), name));
        }
        name = dir.file_name()?.to_owned();
        dir = dir.parent()?;
    }
}

fn drain(notify: Option<&EventFd>) {
    if let Some(n) = notify {
        let _ = n.read();
    }
}

/// Why a connection to a daemon ended.
#[derive(Debug)]
enum End {
    Frame(FrameError),
    Send(ConnectError),
    Poll(Errno),
}

impl End {
    fn is_disconnect(&self) -> bool {
        match self {
            End::Frame(e) => e.is_disconnect(),
            End::Send(ConnectError::Protocol { source, .. }) => source.is_disconnect(),
            End::Send(_) | End::Poll(_) => false,
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Frame(e) => write!(f, "connection ended: {e}"),
            End::Send(e) => write!(f, "cannot send: {e}"),
            End::Poll(e) => write!(f, "poll failed: {e}"),
        }
    }
}

/// This process as the daemons see it.
fn registration(events: Vec<drtrace_proto::event::EventDescription>) -> AppRegistration {
    AppRegistration {
        pid: nix::unistd::getpid().as_raw(),
        ppid: nix::unistd::getppid().as_raw(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        procname: procname(),
        abi_major: APP_ABI_MAJOR,
        abi_minor: APP_ABI_MINOR,
        bits_per_long: u8::try_from(usize::BITS).unwrap_or(64),
        tracer_version: env!("CARGO_PKG_VERSION").to_owned(),
        events,
    }
}

/// `/proc/self/comm`, or the executable's file name.
fn procname() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Registers with the daemon on `conn` and serves its commands until it goes away.
fn serve(rt: &Runtime, ep: Endpoint, conn: &Connection) -> End {
    let notify = rt.listeners[ep.index()].notify.as_ref();
    let events = registered_events();
    let mut sent = events.len();
    let descriptions = events.iter().map(|cs| cs.description()).collect();
    // Known before the daemon can name them.
    rt.state()
        .set_known_events(ep, u32::try_from(sent).unwrap_or(u32::MAX));
    if let Err(e) = conn.send(
        &AppMessage::Register(registration(descriptions)),
        &[],
        SEND_TIMEOUT,
    ) {
        return End::Send(e);
    }
    let sock = conn.stream().as_fd();
    let mut asm = FrameAssembler::new(MAX_FRAME_LEN);
    loop {
        let mut polled = vec![PollFd::new(sock, PollFlags::POLLIN)];
        if let Some(n) = notify {
            polled.push(PollFd::new(n.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return End::Poll(e),
        }
        let woke = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
        let (sock_ready, notified) = (woke(&polled[0]), polled.get(1).is_some_and(woke));
        if notified {
            drain(notify);
            let events = registered_events();
            if events.len() > sent {
                let first = u32::try_from(sent).unwrap_or(u32::MAX);
                let new = events[sent..].iter().map(|cs| cs.description()).collect();
                rt.state()
                    .set_known_events(ep, u32::try_from(events.len()).unwrap_or(u32::MAX));
                let msg = AppMessage::NewEvents {
                    first_index: first,
                    events: new,
                };
                if let Err(e) = conn.send(&msg, &[], SEND_TIMEOUT) {
                    return End::Send(e);
                }
                sent = events.len();
            }
        }
        if !sock_ready {
            continue;
        }
        let mut fds = Vec::new();
        let got = match recv_with_fds(sock, asm.read_buf(), &mut fds) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => return End::Frame(FrameError::Io(e)),
        };
        let frame = match asm.advance(got, fds) {
            Ok(Some(frame)) => frame,
            Ok(None) => continue,
            Err(e) => return End::Frame(e),
        };
        let (seq, result, done) = handle(rt, ep, &frame.payload, frame.fds);
        let reply = AppMessage::Reply { seq, result };
        let sent = conn.send(&reply, &[], SEND_TIMEOUT);
        if done {
            // Only now: the start-up wait ending lets a short-lived program exit, and the
            // daemon must still get its reply.
            rt.startup.set(ep, Phase::Done);
        }
        if let Err(e) = sent {
            return End::Send(e);
        }
    }
}

/// Decodes and applies one command; returns the sequence number to answer, the outcome, and
/// whether it was `RegistrationDone`.
fn handle(
    rt: &Runtime,
    ep: Endpoint,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> (u64, Result<(), WireError>, bool) {
    let request: AppRequest = match decode_json(payload) {
        Ok(r) => r,
        Err(e) => {
            let seq = seq_of(payload);
            crate::debug::log(format_args!(
                "{ep} sent a malformed command (seq {seq}): {e}"
            ));
            return (
                seq,
                Err(WireError::new(
                    ErrorCode::BadRequest,
                    format!("malformed command: {e}"),
                )),
                false,
            );
        }
    };
    let done = matches!(request.command, AppCommand::RegistrationDone);
    let applied = catch_unwind(AssertUnwindSafe(|| {
        rt.state().apply(ep, request.command, fds)
    }));
    let result = applied.unwrap_or_else(|_| {
        Err(WireError::new(
            ErrorCode::Internal,
            "the command failed unexpectedly in the traced application",
        ))
    });
    if let Err(e) = &result {
        crate::debug::log(format_args!("{ep} command {} failed: {e}", request.seq));
    }
    (request.seq, result, done)
}

/// The `seq` of a command that could not be decoded, if it has one; else 0.
fn seq_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("seq")?.as_u64())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_existing_ancestor_is_watched() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a/b/sock");
        let (d, name) = nearest_existing(&sock).unwrap();
        assert_eq!(d, dir.path());
        assert_eq!(name, "a");
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let (d, name) = nearest_existing(&sock).unwrap();
        assert_eq!(d, dir.path().join("a/b"));
        assert_eq!(name, "sock");
    }

    #[test]
    fn undecodable_commands_keep_their_sequence_number() {
        assert_eq!(seq_of(br#"{"seq": 17, "command": {"type": "launch"}}"#), 17);
        assert_eq!(seq_of(b"not json"), 0);
        assert_eq!(seq_of(br#"{"seq": "x"}"#), 0);
    }

    #[test]
    fn a_created_socket_wakes_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sub/sock");
        let mut w = Watcher::new().unwrap();
        w.arm(&sock).unwrap();
        // Unrelated names do not count.
        std::fs::write(dir.path().join("other"), b"").unwrap();
        assert!(!w.wait(None, Next::Within(Duration::from_millis(20))));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(w.wait(None, Next::Within(Duration::from_secs(5))));
        w.arm(&sock).unwrap();
        let t = Instant::now();
        let h = std::thread::spawn({
            let sock = sock.clone();
            move || {
                std::thread::sleep(Duration::from_millis(30));
                std::os::unix::net::UnixListener::bind(&sock).unwrap()
            }
        });
        assert!(w.wait(None, Next::Event));
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(h.join().unwrap());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = BACKOFF_MIN;
        assert_eq!(bump(&mut b), BACKOFF_MIN);
        assert_eq!(b, BACKOFF_MIN * 2);
        for _ in 0..20 {
            bump(&mut b);
        }
        assert_eq!(b, BACKOFF_MAX);
    }
}
