//! The consumer daemon: spawned on first need, fed through a socket pair on its stdin, and
//! respawned if it dies.
//!
//! The session daemon keeps every stream's descriptors (buffer memfd, eventfd) and its file
//! path, so that a new consumer can be given the same streams: the read position lives in
//! the shared buffer, so a respawned consumer continues where the dead one stopped, and the
//! consumer truncates a partly written packet it finds at the end of a stream file.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use drtrace_proto::consumer::{
    ConsumerCommand, ConsumerMessage, ConsumerReply, ConsumerRequest, KernelStreamSetup, StreamKey,
    StreamSetup,
};
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::paths::ENV_CONSUMERD_PATH;
use smol::{Async, LocalExecutor};

use crate::conn::Conn;

/// Name of the consumer binary.
const CONSUMERD_BIN: &str = "drtrace-consumerd";
/// Time the consumer has to answer a command that only changes its state.
const QUICK_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the consumer has to take a stream whose file already holds packets (a respawned
/// consumer checks every packet header of it).
const ADD_STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the consumer has to flush a session to disk.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A stream as registered with the consumer, kept to replay into a respawned one.
#[derive(Debug)]
enum StreamRecord {
    /// A userspace ring buffer; its file is reopened by path for each consumer.
    Ust {
        setup: StreamSetup,
        memfd: OwnedFd,
        eventfd: OwnedFd,
    },
    /// A kernel CPU buffer; its file came as a descriptor (the broker never opens a path
    /// in a user's directory), so a duplicate of it is kept.
    Kernel {
        setup: KernelStreamSetup,
        pipe: OwnedFd,
        stats: OwnedFd,
        file: OwnedFd,
    },
}

impl StreamRecord {
    fn key(&self) -> StreamKey {
        match self {
            StreamRecord::Ust { setup, .. } => setup.key,
            StreamRecord::Kernel { setup, .. } => setup.key,
        }
    }

    fn session(&self) -> u64 {
        match self {
            StreamRecord::Ust { setup, .. } => setup.session,
            StreamRecord::Kernel { setup, .. } => setup.session,
        }
    }

    fn path(&self) -> &Path {
        match self {
            StreamRecord::Ust { setup, .. } => &setup.path,
            StreamRecord::Kernel { setup, .. } => &setup.path,
        }
    }

    /// The command that hands this stream to a consumer, with fresh descriptors.
    fn command(&self) -> Result<(ConsumerCommand, Vec<OwnedFd>), WireError> {
        Ok(match self {
            StreamRecord::Ust {
                setup,
                memfd,
                eventfd,
            } => (
                ConsumerCommand::AddStream(setup.clone()),
                vec![
                    dup(memfd.as_fd())?,
                    dup(eventfd.as_fd())?,
                    open_stream_file(&setup.path)?,
                ],
            ),
            StreamRecord::Kernel {
                setup,
                pipe,
                stats,
                file,
            } => (
                ConsumerCommand::AddKernelStream(setup.clone()),
                vec![dup(pipe.as_fd())?, dup(stats.as_fd())?, dup(file.as_fd())?],
            ),
        })
    }
}

#[derive(Debug)]
struct Pending {
    command: ConsumerCommand,
    fds: Vec<OwnedFd>,
    timeout: Duration,
    reply: smol::channel::Sender<Result<ConsumerReply, WireError>>,
}

#[derive(Debug)]
struct Running {
    pid: u32,
    commands: smol::channel::Sender<Pending>,
}

/// How the engine starts its consumer daemon.
#[derive(Debug, Clone, Default)]
pub struct ConsumerConfig {
    /// The consumer's log file; `None` logs to the daemon's stderr.
    pub log_file: Option<PathBuf>,
    /// More arguments (the broker asks for a higher priority with `--nice`).
    pub args: Vec<String>,
}

/// The consumer daemon, as the daemon that spawned it sees it: spawned on first need,
/// respawned (with every stream replayed) if it dies.
#[derive(Debug)]
pub struct Consumer {
    ex: Rc<LocalExecutor<'static>>,
    config: ConsumerConfig,
    running: RefCell<Option<Running>>,
    streams: RefCell<BTreeMap<StreamKey, StreamRecord>>,
    /// Problems reported by the consumer outside any request, until the next flush.
    errors: RefCell<BTreeMap<StreamKey, String>>,
}

impl Consumer {
    pub(crate) fn new(ex: Rc<LocalExecutor<'static>>, config: ConsumerConfig) -> Self {
        Self {
            ex,
            config,
            running: RefCell::new(None),
            streams: RefCell::new(BTreeMap::new()),
            errors: RefCell::new(BTreeMap::new()),
        }
    }

    /// Registers a stream with the consumer (spawning it if needed) and keeps its
    /// descriptors for a respawn.
    pub(crate) async fn add_stream(
        self: &Rc<Self>,
        setup: StreamSetup,
        memfd: OwnedFd,
        eventfd: OwnedFd,
    ) -> Result<(), WireError> {
        self.add(StreamRecord::Ust {
            setup,
            memfd,
            eventfd,
        })
        .await
    }

    /// Registers a kernel CPU buffer: its `trace_pipe_raw`, its `stats` file, and the stream
    /// file to write.
    pub async fn add_kernel_stream(
        self: &Rc<Self>,
        setup: KernelStreamSetup,
        pipe: OwnedFd,
        stats: OwnedFd,
        file: OwnedFd,
    ) -> Result<(), WireError> {
        self.add(StreamRecord::Kernel {
            setup,
            pipe,
            stats,
            file,
        })
        .await
    }

    async fn add(self: &Rc<Self>, record: StreamRecord) -> Result<(), WireError> {
        let (command, fds) = record.command()?;
        self.call(command, fds, ADD_STREAM_TIMEOUT).await?;
        self.streams.borrow_mut().insert(record.key(), record);
        Ok(())
    }

    /// Starts the consumer now if none runs, so that a missing binary is reported before
    /// anything is allocated.
    pub(crate) async fn ensure_started(self: &Rc<Self>) -> Result<(), WireError> {
        self.ensure_running().await.map(drop)
    }

    /// Flushes a session's streams; with `remove`, also closes them and forgets them.
    /// Returns what each stream holds.
    pub async fn flush_session(
        self: &Rc<Self>,
        session: u64,
        remove: bool,
    ) -> Result<Vec<drtrace_proto::consumer::StreamStats>, WireError> {
        if !self
            .streams
            .borrow()
            .values()
            .any(|s| s.session() == session)
        {
            return Ok(Vec::new());
        }
        let command = if remove {
            ConsumerCommand::RemoveSession { session }
        } else {
            ConsumerCommand::FlushSession { session }
        };
        let reply = self.call(command, Vec::new(), FLUSH_TIMEOUT).await;
        if remove {
            self.streams
                .borrow_mut()
                .retain(|_, s| s.session() != session);
        }
        match reply? {
            ConsumerReply::Flushed(mut stats) => {
                // Problems reported between requests belong to the stream they name.
                let mut errors = self.errors.borrow_mut();
                for s in &mut stats {
                    if let Some(msg) = errors.remove(&s.key) {
                        s.error.get_or_insert(msg);
                    }
                }
                Ok(stats)
            }
            other => Err(WireError::new(
                ErrorCode::Internal,
                format!("consumer answered a flush with {other:?}"),
            )),
        }
    }

    /// Tells the consumer that writers of these streams died.
    pub(crate) async fn writers_died(self: &Rc<Self>, streams: Vec<StreamKey>) {
        if streams.is_empty() || self.running.borrow().is_none() {
            return;
        }
        if let Err(e) = self
            .call(
                ConsumerCommand::WritersDied { streams },
                Vec::new(),
                QUICK_TIMEOUT,
            )
            .await
        {
            log::warn!("cannot tell the consumer about dead writers: {e}");
        }
    }

    async fn call(
        self: &Rc<Self>,
        command: ConsumerCommand,
        fds: Vec<OwnedFd>,
        timeout: Duration,
    ) -> Result<ConsumerReply, WireError> {
        let commands = self.ensure_running().await?;
        let (tx, rx) = smol::channel::bounded(1);
        let pending = Pending {
            command,
            fds,
            timeout,
            reply: tx,
        };
        commands.send(pending).await.map_err(|_| consumer_gone())?;
        match rx.recv().await {
            Ok(Ok(ConsumerReply::Error(e))) => Err(e),
            Ok(result) => result,
            Err(_) => Err(consumer_gone()),
        }
    }

    /// Spawns the consumer if none runs, replaying every known stream into it.
    async fn ensure_running(self: &Rc<Self>) -> Result<smol::channel::Sender<Pending>, WireError> {
        if let Some(r) = self.running.borrow().as_ref() {
            return Ok(r.commands.clone());
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| {
            WireError::new(ErrorCode::Io, format!("cannot create socket pair: {e}"))
        })?;
        let binary = find_consumerd()?;
        let mut cmd = smol::process::Command::new(&binary);
        cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null());
        match &self.config.log_file {
            Some(path) => {
                cmd.arg("--log-file").arg(path).stderr(Stdio::null());
            }
            None => {
                cmd.arg("--log-file").arg("-").stderr(Stdio::inherit());
            }
        }
        cmd.args(&self.config.args);
        let mut child = cmd.spawn().map_err(|e| {
            WireError::new(
                ErrorCode::Io,
                format!("cannot start consumer {}: {e}", binary.display()),
            )
        })?;
        let pid = child.id();
        log::info!("started consumer {} (pid {pid})", binary.display());
        let stream = Async::new(ours)
            .map_err(|e| WireError::new(ErrorCode::Io, format!("consumer socket: {e}")))?;
        let cred = drtrace_proto::creds::peer_credentials(stream.get_ref().as_fd())
            .map_err(|e| WireError::new(ErrorCode::Io, format!("consumer socket: {e}")))?;
        let conn = Conn::new(stream, cred);
        let (tx, rx) = smol::channel::unbounded();
        *self.running.borrow_mut() = Some(Running {
            pid,
            commands: tx.clone(),
        });
        let this = Rc::clone(self);
        self.ex
            .spawn(async move {
                this.serve(conn, rx).await;
                let status = child.status().await;
                log::warn!("consumer pid {pid} exited ({status:?}); a new one starts on next need");
                let mut running = this.running.borrow_mut();
                if running.as_ref().is_some_and(|r| r.pid == pid) {
                    *running = None;
                }
            })
            .detach();
        // Replay streams known from a previous consumer.
        let keys: Vec<StreamKey> = self.streams.borrow().keys().copied().collect();
        for key in keys {
            let prepared = self
                .streams
                .borrow()
                .get(&key)
                .map(|r| (r.command(), r.path().to_owned()));
            let Some((prepared, path)) = prepared else {
                continue;
            };
            let (command, fds) = match prepared {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("cannot replay stream {}: {e}", path.display());
                    continue;
                }
            };
            let (rtx, rrx) = smol::channel::bounded(1);
            let _ = tx
                .send(Pending {
                    command,
                    fds,
                    timeout: ADD_STREAM_TIMEOUT,
                    reply: rtx,
                })
                .await;
            if let Ok(Err(e)) | Ok(Ok(ConsumerReply::Error(e))) = rrx.recv().await {
                log::warn!("consumer refused replayed stream {}: {e}", path.display());
            }
        }
        Ok(tx)
    }

    async fn serve(&self, mut conn: Conn, commands: smol::channel::Receiver<Pending>) {
        let mut seq = 0u64;
        loop {
            let next = smol::future::or(async { Some(commands.recv().await.ok()) }, async {
                // Between requests the consumer may report stream problems; its close
                // means it died.
                match conn.recv::<ConsumerMessage>(None).await {
                    Ok((msg, _)) => {
                        self.unsolicited(msg);
                        None
                    }
                    Err(e) => {
                        log::warn!("lost the consumer: {e}");
                        Some(None)
                    }
                }
            })
            .await;
            let pending = match next {
                None => continue,
                Some(None) => break,
                Some(Some(p)) => p,
            };
            seq += 1;
            let fds: Vec<BorrowedFd<'_>> = pending.fds.iter().map(AsFd::as_fd).collect();
            let request = ConsumerRequest {
                seq,
                command: pending.command.clone(),
            };
            if let Err(e) = conn.send(&request, &fds).await {
                let _ = pending.reply.try_send(Err(WireError::new(
                    ErrorCode::Io,
                    format!("cannot reach the consumer: {e}"),
                )));
                break;
            }
            let result = crate::conn::with_timeout(pending.timeout, async {
                loop {
                    let (msg, _) = conn.recv::<ConsumerMessage>(None).await?;
                    match msg {
                        ConsumerMessage::Reply { seq: s, reply } if s == seq => return Ok(reply),
                        other => self.unsolicited(other),
                    }
                }
            })
            .await;
            let broken = result.is_err();
            let _ = pending.reply.try_send(result.map_err(|e| {
                WireError::new(ErrorCode::Io, format!("consumer did not answer: {e}"))
            }));
            if broken {
                break;
            }
        }
        commands.close();
        while let Ok(p) = commands.try_recv() {
            let _ = p.reply.try_send(Err(consumer_gone()));
        }
    }

    fn unsolicited(&self, msg: ConsumerMessage) {
        match msg {
            ConsumerMessage::StreamError { key, message } => {
                log::warn!("consumer: stream {}: {message}", key.0);
                self.errors.borrow_mut().insert(key, message);
            }
            ConsumerMessage::Reply { seq, .. } => {
                log::debug!("late consumer reply {seq} dropped");
            }
        }
    }
}

fn consumer_gone() -> WireError {
    WireError::new(
        ErrorCode::Io,
        "the consumer daemon exited; see consumerd.log",
    )
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, WireError> {
    fd.try_clone_to_owned()
        .map_err(|e| WireError::new(ErrorCode::Io, format!("cannot duplicate descriptor: {e}")))
}

/// Opens (creating if needed) a stream file for appending, as the daemon's user.
fn open_stream_file(path: &Path) -> Result<OwnedFd, WireError> {
    // Readable too: a respawned consumer checks the packets already in the file.
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| {
            WireError::new(
                ErrorCode::Io,
                format!("cannot open {}: {e}", path.display()),
            )
        })
}

/// Finds the consumer binary: `DRTRACE_CONSUMERD_PATH`, beside this executable, then PATH.
fn find_consumerd() -> Result<PathBuf, WireError> {
    if let Some(p) = std::env::var_os(ENV_CONSUMERD_PATH).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        let beside = dir.join(CONSUMERD_BIN);
        if beside.is_file() {
            return Ok(beside);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(CONSUMERD_BIN))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::Io,
                format!(
                    "cannot find {CONSUMERD_BIN} beside {} or on PATH; set {ENV_CONSUMERD_PATH}",
                    std::env::current_exe()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "this daemon".into())
                ),
            )
        })
}
