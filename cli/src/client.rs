//! [`Client`]: a greeted connection to the user's session daemon (or, with
//! [`ConnectOptions::for_broker`], to the root broker) with one typed method per control
//! request.
//!
//! Every step is bounded: the hello (and so the liveness check) by [`HELLO_TIMEOUT`], so a
//! stopped or hung daemon is reported with its pid well within two seconds; ordinary
//! requests by [`REQUEST_TIMEOUT`]; requests that wait for buffers to be flushed (stop,
//! destroy, stopping the daemon) by [`FLUSH_TIMEOUT`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drtrace_proto::client::{ConnectError, Connection, UnexpectedMessage};
use drtrace_proto::control::{
    AppInfo, ChannelConfig, ControlReply, ControlRequest, CreateSession, DaemonStatus, Domain,
    EventRule, SessionInfo, SessionTarget,
};
use drtrace_proto::hello::DaemonInfo;
use drtrace_proto::paths::{UserInfo, broker_socket, sessiond_socket};
use drtrace_proto::{Role, WireError};
use thiserror::Error;

use crate::spawn::{self, DaemonBinary, SpawnError};

/// How long the hello may take: short, so that a hung daemon is reported quickly.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an ordinary request may take once the daemon has answered the hello.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request that flushes buffers may take (stop, destroy, stopping the daemon).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Which daemon a client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    /// The user's own session daemon, `drtrace-sessiond`.
    Sessiond,
    /// The root broker, `drtrace-broker`: system-wide sessions and kernel tracing.
    Broker,
}

impl DaemonKind {
    /// The daemon's binary name, for messages.
    pub fn binary_name(self) -> &'static str {
        self.binary().file_name()
    }

    fn binary(self) -> DaemonBinary {
        match self {
            DaemonKind::Sessiond => DaemonBinary::Sessiond,
            DaemonKind::Broker => DaemonBinary::Broker,
        }
    }
}

/// Where the daemon is, who it must be, and how long each step may take.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Which daemon this is (decides what [`Client::connect_or_spawn`] starts).
    pub kind: DaemonKind,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The uid the daemon (and its socket file) must belong to.
    pub daemon_uid: u32,
    /// Bound on the hello and on pings.
    pub hello_timeout: Duration,
    /// Bound on ordinary requests.
    pub request_timeout: Duration,
    /// Bound on requests that flush buffers.
    pub flush_timeout: Duration,
    /// Bound on a spawned daemon's start-up report.
    pub ready_timeout: Duration,
}

impl ConnectOptions {
    /// Options for `user`'s own daemon, at its socket path (honouring
    /// `DRTRACE_SESSIOND_SOCKET`), with the default timeouts.
    pub fn for_user(user: &UserInfo) -> Self {
        Self {
            kind: DaemonKind::Sessiond,
            socket: sessiond_socket(user),
            daemon_uid: user.uid,
            hello_timeout: HELLO_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            flush_timeout: FLUSH_TIMEOUT,
            ready_timeout: spawn::READY_TIMEOUT,
        }
    }

    /// Options for the daemon of the real user of this process.
    pub fn from_env() -> Result<Self, ClientError> {
        let user = UserInfo::current().map_err(ClientError::User)?;
        Ok(Self::for_user(&user))
    }

    /// Options for the root broker, at its socket (honouring `DRTRACE_BROKER_DIR`), with the
    /// default timeouts. It must run as root.
    pub fn for_broker() -> Self {
        Self {
            kind: DaemonKind::Broker,
            socket: broker_socket(),
            daemon_uid: 0,
            hello_timeout: HELLO_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            flush_timeout: FLUSH_TIMEOUT,
            ready_timeout: spawn::READY_TIMEOUT,
        }
    }
}

/// Why a control operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The user running this process could not be looked up.
    #[error("cannot look up the current user: {0}")]
    User(#[source] io::Error),
    /// The daemon could not be reached, is not who it should be, or stopped answering.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The daemon was absent and could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The root broker is not running, and only root may start it.
    #[error(
        "the root broker is not running (no daemon at {}); kernel tracing and system-wide \
         sessions need it: an administrator can start it with `systemctl start drtrace-broker` \
         or `drtrace-broker --detach`",
        .path.display()
    )]
    BrokerNotRunning {
        /// Its socket.
        path: PathBuf,
    },
    /// The daemon refused the request.
    #[error("{0}")]
    Daemon(WireError),
    /// The daemon answered with a reply of the wrong kind.
    #[error(transparent)]
    UnexpectedMessage(#[from] UnexpectedMessage),
    /// The daemon acknowledged a stop request but did not go away in time.
    #[error("daemon pid {pid} acknowledged the stop request but {what} within {after:?}")]
    StopIncomplete {
        /// The daemon's pid.
        pid: u32,
        /// What did not happen.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
}

impl ClientError {
    /// True if no daemon listens at the socket (absent or stale).
    pub fn is_no_daemon(&self) -> bool {
        matches!(self, ClientError::Connect(ConnectError::NoDaemon { .. }))
    }
}

/// An open connection to a session daemon.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    opts: ConnectOptions,
}

fn unexpected(expected: &'static str, reply: &ControlReply) -> ClientError {
    ClientError::UnexpectedMessage(UnexpectedMessage {
        expected,
        received: reply.kind(),
    })
}

impl Client {
    /// Connects to the daemon described by `opts`; fails with a "no daemon" error
    /// ([`ClientError::is_no_daemon`]) if none listens.
    pub fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        let conn = Connection::connect(
            &opts.socket,
            Role::Control,
            opts.daemon_uid,
            opts.hello_timeout,
        )?;
        Ok(Self {
            conn,
            opts: opts.clone(),
        })
    }

    /// Connects to the daemon, starting it first if none listens (an absent or stale socket).
    ///
    /// The binary is found by [`spawn::find_daemon`]; the daemon's start-up report is read
    /// with a deadline, and the new daemon is pinged before this returns. The broker is
    /// started only when this process runs as root: anyone else gets
    /// [`ClientError::BrokerNotRunning`], which says how to start it.
    pub fn connect_or_spawn(opts: &ConnectOptions) -> Result<Self, ClientError> {
        match Self::connect(opts) {
            Err(e) if e.is_no_daemon() => {}
            other => return other,
        }
        let binary = match opts.kind {
            DaemonKind::Broker if !nix::unistd::geteuid().is_root() => {
                return Err(ClientError::BrokerNotRunning {
                    path: opts.socket.clone(),
                });
            }
            kind => spawn::find_daemon(kind.binary())?,
        };
        match opts.kind {
            DaemonKind::Sessiond => {
                spawn::start_sessiond(&binary, &opts.socket, opts.ready_timeout)?;
            }
            DaemonKind::Broker => {
                let dir = opts
                    .socket
                    .parent()
                    .map_or_else(drtrace_proto::paths::broker_dir, Path::to_owned);
                spawn::start_broker(&binary, &dir, opts.ready_timeout)?;
            }
        }
        let client = Self::connect(opts)?;
        client.ping()?;
        Ok(client)
    }

    /// Who answered the hello.
    pub fn daemon(&self) -> &DaemonInfo {
        self.conn.daemon()
    }

    /// The options this client was connected with.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn call(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlReply, ClientError> {
        match self.conn.request(request, timeout)? {
            ControlReply::Error(err) => Err(ClientError::Daemon(err)),
            reply => Ok(reply),
        }
    }

    fn session_reply(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<SessionInfo, ClientError> {
        match self.call(request, timeout)? {
            ControlReply::Session(info) => Ok(*info),
            reply => Err(unexpected("session", &reply)),
        }
    }

    /// Checks that the daemon answers.
    pub fn ping(&self) -> Result<DaemonInfo, ClientError> {
        match self.call(&ControlRequest::Ping, self.opts.hello_timeout)? {
            ControlReply::Pong(info) => Ok(info),
            reply => Err(unexpected("pong", &reply)),
        }
    }

    /// The daemon and all its sessions.
    pub fn status(&self) -> Result<DaemonStatus, ClientError> {
        match self.call(&ControlRequest::Status, self.opts.request_timeout)? {
            ControlReply::Status(status) => Ok(*status),
            reply => Err(unexpected("status", &reply)),
        }
    }

    /// Creates a session and makes it current.
    pub fn create_session(&self, args: CreateSession) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::CreateSession(args),
            self.opts.request_timeout,
        )
    }

    /// Destroys sessions once their traces are complete; returns them as they were.
    pub fn destroy_session(&self, target: SessionTarget) -> Result<Vec<SessionInfo>, ClientError> {
        match self.call(
            &ControlRequest::DestroySession { target },
            self.opts.flush_timeout,
        )? {
            ControlReply::Destroyed(list) => Ok(list),
            reply => Err(unexpected("destroyed", &reply)),
        }
    }

    /// Every session, in creation order.
    pub fn list_sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        match self.call(&ControlRequest::ListSessions, self.opts.request_timeout)? {
            ControlReply::Sessions(list) => Ok(list),
            reply => Err(unexpected("sessions", &reply)),
        }
    }

    /// One session (`None` = the current one).
    pub fn show_session(&self, name: Option<&str>) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::ShowSession {
                name: name.map(str::to_owned),
            },
            self.opts.request_timeout,
        )
    }

    /// Makes `name` the current session.
    pub fn set_current(&self, name: &str) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::SetCurrent {
                name: name.to_owned(),
            },
            self.opts.request_timeout,
        )
    }

    /// Starts recording (`None` = the current session).
    pub fn start_session(&self, name: Option<&str>) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::StartSession {
                name: name.map(str::to_owned),
            },
            self.opts.request_timeout,
        )
    }

    /// Stops recording once every buffer is flushed (`None` = the current session).
    pub fn stop_session(&self, name: Option<&str>) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::StopSession {
                name: name.map(str::to_owned),
            },
            self.opts.flush_timeout,
        )
    }

    /// Creates a channel, or re-enables a disabled one.
    pub fn enable_channel(
        &self,
        session: Option<&str>,
        channel: ChannelConfig,
    ) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::EnableChannel {
                session: session.map(str::to_owned),
                channel,
            },
            self.opts.request_timeout,
        )
    }

    /// Disables a channel.
    pub fn disable_channel(
        &self,
        session: Option<&str>,
        domain: Domain,
        name: &str,
    ) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::DisableChannel {
                session: session.map(str::to_owned),
                domain,
                name: name.to_owned(),
            },
            self.opts.request_timeout,
        )
    }

    /// Adds or re-enables event rules (`channel: None` = the default channel).
    pub fn enable_event(
        &self,
        session: Option<&str>,
        channel: Option<&str>,
        domain: Domain,
        rules: Vec<EventRule>,
    ) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::EnableEvent {
                session: session.map(str::to_owned),
                channel: channel.map(str::to_owned),
                domain,
                rules,
            },
            self.opts.request_timeout,
        )
    }

    /// Disables event rules by the patterns they were enabled with.
    pub fn disable_event(
        &self,
        session: Option<&str>,
        channel: Option<&str>,
        domain: Domain,
        patterns: Vec<String>,
    ) -> Result<SessionInfo, ClientError> {
        self.session_reply(
            &ControlRequest::DisableEvent {
                session: session.map(str::to_owned),
                channel: channel.map(str::to_owned),
                domain,
                patterns,
            },
            self.opts.request_timeout,
        )
    }

    /// The applications registered with the daemon now, and their events.
    pub fn list_apps(&self) -> Result<Vec<AppInfo>, ClientError> {
        match self.call(&ControlRequest::ListApps, self.opts.request_timeout)? {
            ControlReply::Apps(apps) => Ok(apps),
            reply => Err(unexpected("apps", &reply)),
        }
    }

    /// The kernel events available for tracing, `sys:event`, sorted.
    pub fn list_kernel_events(&self) -> Result<Vec<String>, ClientError> {
        match self.call(&ControlRequest::ListKernelEvents, self.opts.request_timeout)? {
            ControlReply::KernelEvents(events) => Ok(events),
            reply => Err(unexpected("kernel_events", &reply)),
        }
    }

    /// Asks the daemon to exit and waits until it has: its acknowledgement, then the end of
    /// the connection, then its socket gone. Returns who it was.
    pub fn stop_daemon(self) -> Result<DaemonInfo, ClientError> {
        let daemon = self.daemon().clone();
        let timeout = self.opts.flush_timeout;
        let deadline = Instant::now() + timeout;
        match self.call(&ControlRequest::StopDaemon, timeout)? {
            ControlReply::Ok => {}
            reply => return Err(unexpected("ok", &reply)),
        }
        // The daemon flushes its sessions and then exits, which closes this connection.
        let left = deadline.saturating_duration_since(Instant::now());
        // Anything but a timeout, a closed connection included, means the daemon let go of us.
        if let Err(ConnectError::NotResponding { .. }) = self.conn.recv::<ControlReply>(left) {
            return Err(ClientError::StopIncomplete {
                pid: daemon.pid,
                what: "did not exit",
                after: timeout,
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let gone = crate::wait::wait_until_removed(&self.opts.socket, left).unwrap_or(false);
        if !gone {
            return Err(ClientError::StopIncomplete {
                pid: daemon.pid,
                what: "did not remove its socket",
                after: timeout,
            });
        }
        Ok(daemon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;

    use drtrace_proto::ErrorCode;
    use drtrace_proto::frame::{recv_message, send_message};
    use drtrace_proto::hello::{Hello, HelloReply};

    const T: Duration = Duration::from_secs(5);

    /// A one-connection fake daemon: greets, then answers each request with the next reply.
    fn fake_daemon(path: &Path, replies: Vec<ControlReply>) -> std::thread::JoinHandle<UnixStream> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let (_hello, _): (Hello, _) = recv_message(&stream, T).unwrap();
            let info = DaemonInfo {
                pid: std::process::id(),
                uid: nix::unistd::getuid().as_raw(),
                major: 1,
                minor: 0,
                version: "test".into(),
            };
            send_message(&stream, &HelloReply::Welcome(info), &[], T).unwrap();
            for reply in replies {
                let (_req, _): (ControlRequest, _) = recv_message(&stream, T).unwrap();
                send_message(&stream, &reply, &[], T).unwrap();
            }
            stream
        })
    }

    fn opts(path: &Path) -> ConnectOptions {
        ConnectOptions {
            kind: DaemonKind::Sessiond,
            socket: path.to_owned(),
            daemon_uid: nix::unistd::getuid().as_raw(),
            hello_timeout: T,
            request_timeout: T,
            flush_timeout: T,
            ready_timeout: T,
        }
    }

    #[test]
    fn a_reply_of_the_wrong_kind_is_unexpected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let daemon = fake_daemon(&path, vec![ControlReply::Ok]);
        let client = Client::connect(&opts(&path)).unwrap();
        let err = client.list_sessions().unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::UnexpectedMessage(UnexpectedMessage {
                    expected: "sessions",
                    received: "ok"
                })
            ),
            "{err}"
        );
        daemon.join().unwrap();
    }

    #[test]
    fn error_replies_carry_the_daemons_code_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let refusal = WireError::new(ErrorCode::SessionNotFound, "no session named x");
        let daemon = fake_daemon(&path, vec![ControlReply::Error(refusal.clone())]);
        let client = Client::connect(&opts(&path)).unwrap();
        match client.start_session(Some("x")) {
            Err(ClientError::Daemon(e)) => assert_eq!(e, refusal),
            other => panic!("{other:?}"),
        }
        daemon.join().unwrap();
    }

    #[test]
    fn stop_daemon_waits_for_the_socket_to_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let daemon = fake_daemon(&path, vec![ControlReply::Ok]);
        let client = Client::connect(&opts(&path)).unwrap();
        let remover = {
            let path = path.clone();
            std::thread::spawn(move || {
                // Like the real daemon: socket first, then the connection.
                let stream = daemon.join().unwrap();
                std::fs::remove_file(&path).unwrap();
                drop(stream);
            })
        };
        let info = client.stop_daemon().unwrap();
        assert_eq!(info.pid, std::process::id());
        assert!(!path.exists());
        remover.join().unwrap();
    }

    #[test]
    fn list_apps_returns_the_daemons_apps() {
        use drtrace_proto::event::{EventDescription, LogLevel};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let app = AppInfo {
            pid: 42,
            uid: 1000,
            procname: "app".into(),
            events: vec![EventDescription {
                provider: "p".into(),
                name: "e".into(),
                loglevel: LogLevel::Info,
                fields: vec![],
            }],
        };
        let daemon = fake_daemon(
            &path,
            vec![ControlReply::Apps(vec![app.clone()]), ControlReply::Ok],
        );
        let client = Client::connect(&opts(&path)).unwrap();
        assert_eq!(client.list_apps().unwrap(), [app]);
        let err = client.list_apps().unwrap_err();
        assert!(matches!(err, ClientError::UnexpectedMessage(_)), "{err}");
        daemon.join().unwrap();
    }

    #[test]
    fn no_daemon_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::connect(&opts(&dir.path().join("absent"))).unwrap_err();
        assert!(err.is_no_daemon(), "{err}");
    }
}
