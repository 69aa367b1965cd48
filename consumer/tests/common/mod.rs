//! A fake session daemon for the consumer's tests and benchmark: it creates buffers and
//! stream files the way `drtrace-sessiond` does, writes the metadata, spawns the real
//! `drtrace-consumerd` with a socket pair as its standard input, and talks the consumer
//! protocol to it. Children (this test binary re-executed) write from other processes.

#![allow(dead_code)] // the tests and the benchmark each use a different part

pub(crate) mod kernel;

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use drtrace_ctf::metadata::{self, ClockInfo, Domain, StreamInfo, TraceInfo};
// Not every test binary checks with babeltrace2.
#[allow(unused_imports)]
pub(crate) use drtrace_ctf::testing::babeltrace2;
use drtrace_proto::consumer::{
    ConsumerCommand, ConsumerMessage, ConsumerReply, ConsumerRequest, StreamKey, StreamSetup,
    StreamStats,
};
use drtrace_proto::control::BufferMode;
use drtrace_proto::event::{EventDescription, FieldDescription, FieldType, LogLevel};
use drtrace_proto::frame::{FrameError, recv_message, send_message};
use drtrace_ringbuf::{ClockSource, Layout, Mode, Writer, create_buffer};
use nix::sys::eventfd::{EfdFlags, EventFd};
use uuid::Uuid;

/// The consumer binary under test.
pub(crate) const CONSUMERD: &str = env!("CARGO_BIN_EXE_drtrace-consumerd");
/// Event id of `test:seq { writer: u32, seq: u64 }`.
pub(crate) const SEQ_EVENT: u32 = 0;
/// Payload bytes of a `test:seq` record.
pub(crate) const SEQ_PAYLOAD: usize = 12;
/// Event id of `test:text { n: i32, msg: string }`.
pub(crate) const TEXT_EVENT: u32 = 1;
/// Event id of `test:tick { v: u64 }` (the benchmark's 8-byte payload).
pub(crate) const TICK_EVENT: u32 = 2;
/// Longest a request may take to be answered (a flush waits up to 2 s for writers).
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `drtrace-consumerd` and our end of its control socket.
pub(crate) struct Consumerd {
    child: Child,
    sock: UnixStream,
    seq: u64,
    /// Its log file.
    pub(crate) log: PathBuf,
    /// `stream_error` messages received so far.
    pub(crate) stream_errors: Vec<(StreamKey, String)>,
    exited: Option<ExitStatus>,
}

impl Consumerd {
    /// Spawns the consumer as the session daemon does: socket pair on stdin, stdout null,
    /// `--log-file` given.
    pub(crate) fn spawn(log: &Path) -> Consumerd {
        Consumerd::spawn_with(log, &[])
    }

    /// Spawns with extra arguments.
    pub(crate) fn spawn_with(log: &Path, args: &[&str]) -> Consumerd {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let child = Command::new(CONSUMERD)
            .arg("--log-file")
            .arg(log)
            .arg("--log-level")
            .arg("debug")
            .args(args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Consumerd {
            child,
            sock: ours,
            seq: 0,
            log: log.to_owned(),
            stream_errors: Vec::new(),
            exited: None,
        }
    }

    /// The consumer's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `command` with `fds` and waits for its reply, keeping stream errors that come
    /// first.
    pub(crate) fn request(
        &mut self,
        command: ConsumerCommand,
        fds: &[BorrowedFd<'_>],
    ) -> ConsumerReply {
        self.seq += 1;
        let seq = self.seq;
        let request = ConsumerRequest { seq, command };
        send_message(&self.sock, &request, fds, Duration::from_secs(5)).unwrap();
        self.reply_to(seq)
    }

    /// Waits for the reply to `seq`.
    pub(crate) fn reply_to(&mut self, seq: u64) -> ConsumerReply {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no reply to request {seq}\n{}",
                self.log_text()
            );
            match self.recv(left) {
                ConsumerMessage::Reply { seq: s, reply } if s == seq => return reply,
                ConsumerMessage::Reply { seq: s, reply } => {
                    panic!("reply to {s} while waiting for {seq}: {reply:?}")
                }
                ConsumerMessage::StreamError { key, message } => {
                    self.stream_errors.push((key, message));
                }
            }
        }
    }

    /// Receives one message.
    pub(crate) fn recv(&mut self, timeout: Duration) -> ConsumerMessage {
        match recv_message::<ConsumerMessage>(&self.sock, timeout) {
            Ok((msg, fds)) => {
                assert!(fds.is_empty(), "the consumer sends no descriptors");
                msg
            }
            Err(e) => panic!("no message from the consumer: {e}\n{}", self.log_text()),
        }
    }

    /// Waits up to `timeout` for a stream error; `None` if none came.
    pub(crate) fn wait_stream_error(&mut self, timeout: Duration) -> Option<(StreamKey, String)> {
        if let Some(e) = self.stream_errors.first() {
            return Some(e.clone());
        }
        match recv_message::<ConsumerMessage>(&self.sock, timeout) {
            Ok((ConsumerMessage::StreamError { key, message }, _)) => {
                self.stream_errors.push((key, message.clone()));
                Some((key, message))
            }
            Ok((other, _)) => panic!("unexpected {other:?}"),
            Err(FrameError::TimedOut(_)) => None,
            Err(e) => panic!("consumer socket: {e}"),
        }
    }

    /// Writes raw bytes on the control socket.
    pub(crate) fn send_raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        drtrace_proto::frame::write_frame(&self.sock, bytes, fds, Duration::from_secs(5)).unwrap();
    }

    /// Flushes a session and returns its streams' stats.
    pub(crate) fn flush(&mut self, session: u64) -> Vec<StreamStats> {
        match self.request(ConsumerCommand::FlushSession { session }, &[]) {
            ConsumerReply::Flushed(stats) => stats,
            other => panic!("flush answered {other:?}\n{}", self.log_text()),
        }
    }

    /// Pings; panics unless the consumer answers.
    pub(crate) fn ping(&mut self) {
        assert_eq!(self.request(ConsumerCommand::Ping, &[]), ConsumerReply::Ok);
    }

    /// Closes our end of the control socket.
    pub(crate) fn close(&mut self) {
        let (dead, _) = UnixStream::pair().unwrap();
        // Replacing the socket drops (closes) ours.
        self.sock = dead;
    }

    /// Waits up to `timeout` for the consumer to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the consumer did not exit\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the consumer with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = Some(self.child.wait().unwrap());
        }
    }

    /// The log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Consumerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {CONSUMERD} (pid {}) log {}:\n{}",
                self.child.id(),
                self.log.display(),
                self.log_text()
            );
        }
        if self.exited.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// One channel of a test session.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) name: &'static str,
    pub(crate) layout: Layout,
    pub(crate) switch_timer_ms: u32,
}

impl Channel {
    pub(crate) fn new(
        name: &'static str,
        subbuf_size: u32,
        num_subbuf: u32,
        mode: Mode,
    ) -> Channel {
        Channel {
            name,
            layout: Layout {
                subbuf_size,
                num_subbuf,
                mode,
            },
            switch_timer_ms: 0,
        }
    }
}

/// One buffer (channel × CPU) and what the consumer needs for it.
#[derive(Debug)]
pub(crate) struct Buffer {
    pub(crate) memfd: OwnedFd,
    pub(crate) eventfd: OwnedFd,
    pub(crate) setup: StreamSetup,
}

/// A session directory with its metadata and buffers.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: u64,
    /// The session directory (what viewers open).
    pub(crate) dir: PathBuf,
    /// `ust/uid/<uid>/64-bit`.
    pub(crate) trace_dir: PathBuf,
    pub(crate) buffers: Vec<Buffer>,
}

/// The events every test trace declares.
pub(crate) fn events() -> Vec<EventDescription> {
    let field = |name: &str, ty| FieldDescription {
        name: name.into(),
        ty,
    };
    vec![
        EventDescription {
            provider: "test".into(),
            name: "seq".into(),
            loglevel: LogLevel::Info,
            fields: vec![
                field("writer", FieldType::U32),
                field("seq", FieldType::U64),
            ],
        },
        EventDescription {
            provider: "test".into(),
            name: "text".into(),
            loglevel: LogLevel::Warning,
            fields: vec![field("n", FieldType::I32), field("msg", FieldType::String)],
        },
        EventDescription {
            provider: "test".into(),
            name: "tick".into(),
            loglevel: LogLevel::Debug,
            fields: vec![field("v", FieldType::U64)],
        },
    ]
}

impl Session {
    /// Creates `<dir>/ust/uid/<uid>/64-bit/metadata` and `cpus` buffers per channel; stream
    /// keys start at `id * 1000`.
    pub(crate) fn create(dir: &Path, id: u64, channels: &[Channel], cpus: u32) -> Session {
        let uid = nix::unistd::getuid().as_raw();
        let rel = format!("ust/uid/{uid}/64-bit");
        let trace_dir = dir.join(&rel);
        std::fs::create_dir_all(&trace_dir).unwrap();
        let session_uuid = Uuid::from_u128(0x5e55_0000 + u128::from(id));
        let trace_uuid = metadata::trace_uuid(session_uuid, &rel);
        let info = TraceInfo {
            uuid: trace_uuid,
            domain: Domain::Ust,
            tracer_major: 0,
            tracer_minor: 1,
            tracer_patchlevel: 0,
            hostname: "testhost".into(),
            trace_name: format!("session{id}"),
            creation_datetime: "20250102T030405+0000".into(),
            extra_env: vec![],
            clock: ClockInfo::monotonic_ns(Uuid::from_u128(0xb007), 0),
        };
        let streams: Vec<StreamInfo> = channels
            .iter()
            .enumerate()
            .map(|(i, c)| StreamInfo {
                id: u32::try_from(i).unwrap(),
                channel: c.name.into(),
            })
            .collect();
        let mut text = metadata::preamble(&info, &streams).unwrap();
        for stream in &streams {
            for (event_id, desc) in events().iter().enumerate() {
                text +=
                    &metadata::event_declaration(stream.id, u32::try_from(event_id).unwrap(), desc)
                        .unwrap();
            }
        }
        std::fs::write(trace_dir.join("metadata"), text).unwrap();
        let mut buffers = Vec::new();
        let mut key = id * 1000;
        for (idx, c) in channels.iter().enumerate() {
            for cpu in 0..cpus {
                let memfd = create_buffer(
                    &c.layout,
                    ClockSource::Monotonic,
                    &format!("{}_{cpu}", c.name),
                )
                .unwrap();
                let eventfd = OwnedFd::from(
                    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap(),
                );
                buffers.push(Buffer {
                    memfd,
                    eventfd,
                    setup: StreamSetup {
                        key: StreamKey(key),
                        session: id,
                        trace_uuid,
                        stream_id: u32::try_from(idx).unwrap(),
                        cpu,
                        mode: match c.layout.mode {
                            Mode::Discard => BufferMode::Discard,
                            Mode::Overwrite => BufferMode::Overwrite,
                        },
                        switch_timer_ms: c.switch_timer_ms,
                        path: trace_dir.join(format!("{}_{cpu}", c.name)),
                    },
                });
                key += 1;
            }
        }
        Session {
            id,
            dir: dir.to_owned(),
            trace_dir,
            buffers,
        }
    }

    /// Sends `add_stream` for buffer `i`, with descriptors as the session daemon sends them.
    pub(crate) fn add(&self, c: &mut Consumerd, i: usize) -> ConsumerReply {
        let b = &self.buffers[i];
        let file = open_stream_file(&b.setup.path);
        c.request(
            ConsumerCommand::AddStream(b.setup.clone()),
            &[b.memfd.as_fd(), b.eventfd.as_fd(), file.as_fd()],
        )
    }

    /// Adds every buffer; panics on a refusal.
    pub(crate) fn add_all(&self, c: &mut Consumerd) {
        for i in 0..self.buffers.len() {
            let reply = self.add(c, i);
            assert_eq!(reply, ConsumerReply::Ok, "{}", c.log_text());
        }
    }

    /// A writer on buffer `i` that wakes the consumer.
    pub(crate) fn writer(&self, i: usize) -> Writer {
        let b = &self.buffers[i];
        Writer::map(&b.memfd, Some(b.eventfd.try_clone().unwrap())).unwrap()
    }

    /// The keys of every buffer.
    pub(crate) fn keys(&self) -> Vec<StreamKey> {
        self.buffers.iter().map(|b| b.setup.key).collect()
    }
}

/// Opens a stream file as the session daemon does (`user-sessiond/src/consumer.rs`).
pub(crate) fn open_stream_file(path: &Path) -> OwnedFd {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc_nofollow())
        .open(path)
        .unwrap()
        .into()
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits()
}

/// Writes one `test:seq` record; false if it was dropped.
pub(crate) fn write_seq(w: &Writer, writer: u32, seq: u64) -> bool {
    match w.reserve(SEQ_EVENT, SEQ_PAYLOAD) {
        Some(mut slot) => {
            slot.put_u32(writer).put_u64(seq);
            true
        }
        None => false,
    }
}

/// Writes one `test:text` record; false if it was dropped.
pub(crate) fn write_text(w: &Writer, n: i32, msg: &str) -> bool {
    match w.reserve(TEXT_EVENT, 4 + drtrace_ringbuf::string_len(msg)) {
        Some(mut slot) => {
            slot.put_i32(n).put_str(msg);
            true
        }
        None => false,
    }
}

/// The `(writer, seq)` of every `test:seq` event of a trace, per stream file name, read with
/// drtrace's CTF reader (which fails on any malformed packet).
pub(crate) fn read_seqs(dir: &Path) -> Vec<(String, u32, u64)> {
    let trace = drtrace_ctf::Trace::open(dir).unwrap();
    let mut out = Vec::new();
    for ev in trace.read_all().unwrap() {
        if ev.name != "test:seq" {
            continue;
        }
        let writer = ev.field("writer").and_then(|v| v.as_u64()).unwrap();
        let seq = ev.field("seq").and_then(|v| v.as_u64()).unwrap();
        let cpu = ev.cpu.unwrap();
        out.push((
            format!("{}_{cpu}", ev.channel),
            u32::try_from(writer).unwrap(),
            seq,
        ));
    }
    out
}

/// Per stream file name: (events, last events_discarded, lost packets) from the CTF reader.
pub(crate) fn file_stats(dir: &Path) -> Vec<(String, u64, u64, u64)> {
    let trace = drtrace_ctf::Trace::open(dir).unwrap();
    trace
        .stream_stats()
        .unwrap()
        .into_iter()
        .map(|s| {
            let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
            let lost: u64 = s.lost_packets.iter().map(|g| g.lost()).sum();
            (name, s.events, s.events_discarded, lost)
        })
        .collect()
}

/// What babeltrace2 made of a trace.
#[derive(Debug, Default)]
pub(crate) struct Babeltrace {
    /// Event lines.
    pub(crate) lines: Vec<String>,
    /// Sum of "Tracer discarded N events" warnings.
    pub(crate) discarded_events: u64,
    /// Sum of "Tracer discarded N packets" warnings.
    pub(crate) discarded_packets: u64,
    pub(crate) stderr: String,
}

impl Babeltrace {
    /// `(writer, seq)` of each `test:seq` line.
    pub(crate) fn seqs(&self) -> Vec<(u32, u64)> {
        self.lines
            .iter()
            .filter(|l| l.contains(" test:seq: "))
            .map(|l| {
                (
                    u32::try_from(number_after(l, "writer = ")).unwrap(),
                    number_after(l, "seq = "),
                )
            })
            .collect()
    }
}

fn number_after(line: &str, key: &str) -> u64 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
        + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// Runs babeltrace2 on `dir`; `None` if it is not installed (outside CI). Panics if it fails.
pub(crate) fn run_babeltrace2(dir: &Path) -> Option<Babeltrace> {
    let bt = babeltrace2()?;
    let out = Command::new(&bt)
        .arg(dir)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "babeltrace2 {} failed ({}):\n{stderr}",
        dir.display(),
        out.status
    );
    let mut result = Babeltrace {
        lines: stdout.lines().map(str::to_owned).collect(),
        stderr,
        ..Babeltrace::default()
    };
    for line in result.stderr.lines() {
        if let Some(at) = line.find("Tracer discarded ") {
            let rest = &line[at + "Tracer discarded ".len()..];
            let n: u64 = rest
                .split(' ')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("cannot parse {line}"));
            if rest.contains(" events ") || rest.contains(" event ") {
                result.discarded_events += n;
            } else {
                result.discarded_packets += n;
            }
        }
    }
    Some(result)
}

/// How a process ended, for messages.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => format!("{status:?}"),
    }
}
