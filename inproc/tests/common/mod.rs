//! A fake session daemon built on `proto` and `ringbuf`, and helpers to run the traced side
//! as a child process (the test binary re-executed), so that the library's constructor,
//! listener threads and fork handler really run.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drtrace_proto::app::{
    AppCommand, AppMessage, AppRegistration, AppRequest, ChannelKey, ChannelSetup, EnabledEvent,
};
use drtrace_proto::control::BufferMode;
use drtrace_proto::error::WireError;
use drtrace_proto::event::{EventDescription, FieldType};
use drtrace_proto::frame::{recv_message, send_message, write_frame};
use drtrace_proto::hello::{DaemonInfo, Hello, HelloReply};
use drtrace_ringbuf::{ClockSource, Layout, Mode, Reader, create_buffer};
use nix::sys::eventfd::{EfdFlags, EventFd};

#[path = "../../src/test_records.rs"]
pub mod records;

/// Generous bound for anything a test waits on: a loaded CI machine is slow, never hung.
pub const LONG: Duration = Duration::from_secs(20);

/// A scratch directory with the daemon socket path and the child's signal files.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The session daemon socket (in a subdirectory that may not exist yet).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/sessiond.sock")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates a signal file for the child.
    pub fn signal(&self, name: &str) {
        std::fs::write(self.path(name), b"").unwrap();
    }

    /// Waits for the child to create a signal file.
    pub fn wait_for(&self, name: &str) {
        wait_until(LONG, || self.path(name).exists(), &format!("file {name}"));
    }
}

/// Polls `cond` every millisecond until it holds or `limit` passes (then panics).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, what: &str) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The test binary, re-executed to run only the `child` test with `scenario`.
pub fn spawn_child(scratch: &Scratch, scenario: &str, env: &[(&str, &str)]) -> ChildApp {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env("DRTRACE_IT_SCENARIO", scenario)
        .env("DRTRACE_IT_DIR", scratch.dir.path())
        .env("DRTRACE_SESSIOND_SOCKET", scratch.socket())
        // The broker's directory does not exist: that listener just waits.
        .env("DRTRACE_BROKER_DIR", scratch.path("broker"))
        .env("DRTRACE_DEBUG", "1")
        // A loaded machine may take more than the default 10 ms to get the fake daemon to
        // answer; the tests that measure the ping timeout set it back.
        .env("DRTRACE_PING_TIMEOUT_MS", "5000")
        .env_remove("DRTRACE_DISABLE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    for (out, name) in [
        (
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            "out",
        ),
        (
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
            "err",
        ),
    ] {
        let tx = tx.clone();
        let out = out.unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(format!("{name}: {line}")).is_err() {
                    break;
                }
            }
        });
    }
    ChildApp {
        child,
        lines: rx,
        seen: Vec::new(),
    }
}

/// A running child app and its output.
pub struct ChildApp {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl ChildApp {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Everything the child printed so far.
    pub fn output_so_far(&mut self) -> String {
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }

    /// Waits for an output line containing `needle`; returns it.
    pub fn expect_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let end = Instant::now() + LONG;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the child to exit successfully and returns its whole output.
    pub fn finish(mut self) -> Vec<String> {
        let end = Instant::now() + LONG;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("child did not exit; output:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(l);
        }
        assert!(
            status.success(),
            "child failed ({status}); output:\n{}",
            self.seen.join("\n")
        );
        std::mem::take(&mut self.seen)
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fake session daemon listening on a socket.
pub struct FakeDaemon {
    pub listener: UnixListener,
    pub path: PathBuf,
}

impl FakeDaemon {
    /// Binds `path` (creating its directory) and listens.
    pub fn bind(path: &Path) -> Self {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        Self {
            listener,
            path: path.to_owned(),
        }
    }

    /// Accepts the next app, greets it and reads its registration.
    pub fn accept(&self) -> AppConn {
        self.try_accept().expect("no app connected")
    }

    /// Like [`accept`](Self::accept), showing `app`'s output if no app connects.
    pub fn accept_from(&self, app: &mut ChildApp) -> AppConn {
        match self.try_accept() {
            Some(conn) => conn,
            None => panic!("no app connected; app output:\n{}", app.output_so_far()),
        }
    }

    fn try_accept(&self) -> Option<AppConn> {
        self.listener.set_nonblocking(true).unwrap();
        let end = Instant::now() + LONG;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > end {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        Some(AppConn::greet(stream))
    }

    /// Stops listening and removes the socket, as a daemon that exits does.
    pub fn shut_down(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One registered app, seen from the daemon.
pub struct AppConn {
    pub stream: UnixStream,
    pub reg: AppRegistration,
    pub registered_at: Instant,
    seq: u64,
    /// Events the app added after registering.
    pub new_events: Vec<EventDescription>,
}

impl AppConn {
    fn greet(stream: UnixStream) -> Self {
        let (hello, _): (Hello, _) = recv_message(&stream, LONG).unwrap();
        hello.check_compatible().unwrap();
        let info = DaemonInfo {
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
            major: drtrace_proto::PROTOCOL_MAJOR,
            minor: drtrace_proto::PROTOCOL_MINOR,
            version: "test".into(),
        };
        send_message(&stream, &HelloReply::Welcome(info), &[], LONG).unwrap();
        let (msg, _): (AppMessage, _) = recv_message(&stream, LONG).unwrap();
        let AppMessage::Register(reg) = msg else {
            panic!("expected a registration, got {msg:?}");
        };
        Self {
            stream,
            reg,
            registered_at: Instant::now(),
            seq: 0,
            new_events: Vec::new(),
        }
    }

    /// The app event index of `provider:name`.
    pub fn index_of(&self, full_name: &str) -> u32 {
        self.reg
            .events
            .iter()
            .chain(&self.new_events)
            .position(|e| e.full_name() == full_name)
            .map(|i| u32::try_from(i).unwrap())
            .unwrap_or_else(|| panic!("{full_name} is not registered"))
    }

    /// Sends a command and returns the app's answer.
    pub fn command(
        &mut self,
        command: AppCommand,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), WireError> {
        self.seq += 1;
        let seq = self.seq;
        send_message(&self.stream, &AppRequest { seq, command }, fds, LONG).unwrap();
        self.reply_to(seq)
    }

    /// Sends raw frame bytes (prefix included) and returns the reply to `seq`.
    pub fn raw(&mut self, payload: &[u8], seq: u64) -> Result<(), WireError> {
        let mut frame = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        frame.extend_from_slice(payload);
        write_frame(&self.stream, &frame, &[], LONG).unwrap();
        self.reply_to(seq)
    }

    /// Reads messages until the reply to `seq`, collecting late events on the way.
    pub fn reply_to(&mut self, seq: u64) -> Result<(), WireError> {
        loop {
            let (msg, _): (AppMessage, _) = recv_message(&self.stream, LONG)
                .unwrap_or_else(|e| panic!("app pid {} (seq {seq}): {e}", self.reg.pid));
            match msg {
                AppMessage::Reply { seq: s, result } if s == seq => return result,
                AppMessage::Reply { seq: s, .. } => panic!("reply to {s}, expected {seq}"),
                AppMessage::NewEvents {
                    first_index,
                    events,
                } => {
                    let known = self.reg.events.len() + self.new_events.len();
                    assert_eq!(first_index as usize, known, "new events must follow on");
                    self.new_events.extend(events);
                }
                AppMessage::Register(_) => panic!("registered twice"),
            }
        }
    }

    /// Waits for a `NewEvents` message.
    pub fn expect_new_events(&mut self) {
        let (msg, _): (AppMessage, _) = recv_message(&self.stream, LONG).unwrap();
        let AppMessage::NewEvents {
            first_index,
            events,
        } = msg
        else {
            panic!("expected new events, got {msg:?}");
        };
        assert_eq!(
            first_index as usize,
            self.reg.events.len() + self.new_events.len()
        );
        self.new_events.extend(events);
    }

    /// Sets up a recording session: one channel, these events (name → id), active.
    pub fn start_session(
        &mut self,
        session: u64,
        cpus: u32,
        events: &[(&str, u32)],
    ) -> DaemonChannel {
        let chan = DaemonChannel::new(session, 0, cpus);
        let fds = chan.fds();
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        self.command(AppCommand::AddChannel(chan.setup()), &borrowed)
            .unwrap();
        let events = events
            .iter()
            .map(|(name, id)| EnabledEvent {
                index: self.index_of(name),
                id: *id,
            })
            .collect();
        self.command(
            AppCommand::SetEvents {
                key: chan.key,
                events,
            },
            &[],
        )
        .unwrap();
        self.command(
            AppCommand::SetSessionActive {
                session,
                active: true,
            },
            &[],
        )
        .unwrap();
        chan
    }

    pub fn registration_done(&mut self) {
        self.command(AppCommand::RegistrationDone, &[]).unwrap();
    }

    /// Waits for the app to close its connection (it exited).
    pub fn expect_closed(&self) {
        self.stream.set_read_timeout(Some(LONG)).unwrap();
        let r: Result<(AppMessage, Vec<OwnedFd>), _> = recv_message(&self.stream, LONG);
        assert!(r.is_err(), "expected the app to close, got {r:?}");
    }
}

pub const SUBBUF: u32 = 4096;
pub const NUM_SUBBUF: u32 = 4;

/// A channel's buffers as the daemon holds them.
pub struct DaemonChannel {
    pub key: ChannelKey,
    pub buffers: Vec<(OwnedFd, OwnedFd)>,
}

impl DaemonChannel {
    pub fn new(session: u64, channel: u32, cpus: u32) -> Self {
        let layout = Layout {
            subbuf_size: SUBBUF,
            num_subbuf: NUM_SUBBUF,
            mode: Mode::Discard,
        };
        let buffers = (0..cpus)
            .map(|i| {
                let memfd = create_buffer(
                    &layout,
                    ClockSource::Monotonic,
                    &format!("s{session}_c{channel}_{i}"),
                )
                .unwrap();
                let efd =
                    EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap();
                (memfd, OwnedFd::from(efd))
            })
            .collect();
        Self {
            key: ChannelKey { session, channel },
            buffers,
        }
    }

    pub fn setup(&self) -> ChannelSetup {
        ChannelSetup {
            key: self.key,
            name: format!("channel{}", self.key.channel),
            cpus: u32::try_from(self.buffers.len()).unwrap(),
            subbuf_size: SUBBUF,
            num_subbuf: NUM_SUBBUF,
            mode: BufferMode::Discard,
        }
    }

    /// Duplicates of the descriptors an AddChannel carries.
    pub fn fds(&self) -> Vec<OwnedFd> {
        self.buffers
            .iter()
            .flat_map(|(m, e)| [m.try_clone().unwrap(), e.try_clone().unwrap()])
            .collect()
    }

    /// Flushes and reads every record of every buffer (per buffer, in order).
    pub fn drain(
        &self,
        types: &dyn Fn(u32) -> Option<Vec<FieldType>>,
    ) -> Vec<Vec<records::Record>> {
        self.buffers
            .iter()
            .map(|(memfd, _)| {
                let mut reader = Reader::map(memfd, None).unwrap();
                reader.flush();
                let mut out = Vec::new();
                let mut buf = Vec::new();
                while let Some(p) = reader.read_packet(&mut buf).unwrap() {
                    out.extend(records::decode(&buf, p.timestamp_begin, types).unwrap());
                }
                out
            })
            .collect()
    }
}

/// CLOCK_MONOTONIC in ns (the buffers' clock).
pub fn monotonic_ns() -> u64 {
    drtrace_ringbuf::clock::monotonic_ns()
}
