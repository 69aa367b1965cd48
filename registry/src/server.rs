//! The event loop: accepting peers, greeting them, and serving each role.
//!
//! Every connection is its own task on a single-threaded smol executor; the registry is
//! touched only between awaits, so no lock is needed and no borrow spans a suspension.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use drtrace_daemon::instance::Instance;
use drtrace_daemon::signals::TerminationSignals;
use drtrace_proto::control::{ControlReply, ControlRequest};
use drtrace_proto::creds::{UidName, peer_credentials};
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::frame::FrameError;
use drtrace_proto::hello::{DaemonInfo, Hello, HelloReply, Role};
use smol::{Async, LocalExecutor, Timer};

use crate::apps::{App, AppNews};
use crate::clock::ClockSetup;
use crate::conn::Conn;
use crate::consumer::{Consumer, ConsumerConfig};
use crate::control;
use crate::kernel::{Ctx, KernelBackend};
use crate::recording::Recording;
use crate::registry::Registry;

/// Time a new peer has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// A control client idle for this long is disconnected.
const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections served at once; more are closed on accept, so a runaway or hostile
/// client of the same user cannot exhaust the daemon's descriptors.
const MAX_CONNECTIONS: usize = 512;

/// Who may connect, in which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessPolicy {
    /// The per-user session daemon: only its own uid and root, in any role.
    Owner,
    /// The broker: applications of every user; control clients and session daemons only
    /// when they are root or in `group` (by primary or supplementary group).
    Broker {
        /// The kernel-tracing group's name and gid, if it exists.
        group: Option<(String, u32)>,
    },
}

/// Serves a session daemon's kernel delegation connection (the broker's); gets the
/// connection after its hello was answered.
pub type SessiondHandler = Rc<dyn Fn(crate::kernel::Ctx, Conn) -> crate::kernel::BoxFuture<()>>;

/// What a daemon built on the engine is.
pub struct EngineConfig {
    /// Who answers hellos.
    pub info: DaemonInfo,
    /// The socket path (for `status`).
    pub socket: PathBuf,
    /// The log file (for `status`).
    pub log_file: Option<PathBuf>,
    /// How the consumer daemon is started.
    pub consumer: ConsumerConfig,
    /// Prefix of default session names (`<prefix>.<uuid>`).
    pub user_name: String,
    /// Who may connect.
    pub access: AccessPolicy,
    /// How kernel channels are served; `None` refuses them.
    pub kernel: Option<Rc<dyn KernelBackend>>,
    /// Serves [`Role::Sessiond`] connections (the broker); `None` refuses them.
    pub sessiond_handler: Option<SessiondHandler>,
    /// Where sessions of peers other than root go, whatever they ask (the broker: traces of
    /// system-wide sessions stay in a root-owned directory); `None` lets clients choose.
    pub forced_output: Option<PathBuf>,
    /// Runs at shutdown, after every session was destroyed and before the consumer is let go
    /// (the broker removes the kernel sub-sessions of session daemons still connected).
    pub on_shutdown: Option<ShutdownHook>,
}

/// See [`EngineConfig::on_shutdown`].
pub type ShutdownHook = Rc<dyn Fn(Ctx) -> crate::kernel::BoxFuture<()>>;

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("info", &self.info)
            .field("socket", &self.socket)
            .field("access", &self.access)
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

impl EngineConfig {
    /// A configuration with no kernel support and clients choosing their outputs.
    pub fn new(info: DaemonInfo, socket: PathBuf, user_name: String, access: AccessPolicy) -> Self {
        Self {
            info,
            socket,
            log_file: None,
            consumer: ConsumerConfig::default(),
            user_name,
            access,
            kernel: None,
            sessiond_handler: None,
            forced_output: None,
            on_shutdown: None,
        }
    }
}

/// Everything the connection tasks share.
pub(crate) struct Daemon {
    pub(crate) info: DaemonInfo,
    pub(crate) uid: u32,
    pub(crate) socket: PathBuf,
    pub(crate) log_file: Option<PathBuf>,
    pub(crate) started: Instant,
    pub(crate) access: AccessPolicy,
    pub(crate) kernel: Option<Rc<dyn KernelBackend>>,
    sessiond_handler: Option<SessiondHandler>,
    pub(crate) forced_output: Option<PathBuf>,
    pub(crate) registry: RefCell<Registry>,
    /// Live applications by id.
    pub(crate) apps: RefCell<BTreeMap<u64, Rc<App>>>,
    /// Buffers and metadata of sessions that have been started, by session id.
    pub(crate) recordings: RefCell<BTreeMap<u64, Recording>>,
    pub(crate) consumer: Rc<Consumer>,
    /// Serialises operations that change what apps and the consumer hold.
    pub(crate) ops: smol::lock::Mutex<()>,
    pub(crate) clock: ClockSetup,
    pub(crate) cpus: u32,
    pub(crate) next_stream: Cell<u64>,
    next_app: Cell<u64>,
    pub(crate) ex: Rc<LocalExecutor<'static>>,
    connections: Cell<usize>,
    shutdown: smol::channel::Sender<()>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("info", &self.info)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Asks the loop to shut down (idempotent).
    pub(crate) fn request_shutdown(&self) {
        let _ = self.shutdown.try_send(());
    }

    /// What a kernel backend may use.
    pub(crate) fn ctx(&self) -> Ctx {
        Ctx {
            ex: Rc::clone(&self.ex),
            consumer: Rc::clone(&self.consumer),
        }
    }
}

/// Serves the instance's socket until a termination signal or a stop request, then destroys
/// every session (flushing their traces), removes the socket and returns.
pub fn serve(
    config: EngineConfig,
    mut instance: Instance,
    signals: TerminationSignals,
) -> std::io::Result<()> {
    let listener = instance
        .take_listener()
        .ok_or_else(|| std::io::Error::other("the listener was already taken"))?;
    let (shutdown_tx, shutdown_rx) = smol::channel::bounded(1);
    let ex = Rc::new(LocalExecutor::new());
    let clock = ClockSetup::detect();
    let daemon = Rc::new(Daemon {
        uid: config.info.uid,
        info: config.info,
        consumer: Rc::new(Consumer::new(Rc::clone(&ex), config.consumer)),
        socket: config.socket,
        log_file: config.log_file,
        started: Instant::now(),
        access: config.access,
        kernel: config.kernel,
        sessiond_handler: config.sessiond_handler,
        forced_output: config.forced_output,
        registry: RefCell::new(Registry::new(config.user_name)),
        apps: RefCell::new(BTreeMap::new()),
        recordings: RefCell::new(BTreeMap::new()),
        ops: smol::lock::Mutex::new(()),
        clock,
        cpus: crate::recording::possible_cpus(),
        next_stream: Cell::new(1),
        next_app: Cell::new(1),
        ex: Rc::clone(&ex),
        connections: Cell::new(0),
        shutdown: shutdown_tx,
    });
    let listener = Async::new(listener)?;
    let signals = Async::new(signals)?;
    smol::block_on(ex.run(accept_loop(
        Rc::clone(&ex),
        Rc::clone(&daemon),
        listener,
        signals,
        shutdown_rx,
    )))?;
    smol::block_on(ex.run(control::destroy_all(&daemon)));
    if let Some(hook) = config.on_shutdown {
        smol::block_on(ex.run(hook(daemon.ctx())));
    }
    // The socket and lock go before any connection closes: a client waiting for our exit
    // (daemon stop) must find the socket gone once it sees its connection close.
    drop(instance);
    drop(ex);
    Ok(())
}

enum Wake {
    Accepted(std::io::Result<Async<UnixStream>>),
    Signal,
    Shutdown,
}

async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    daemon: Rc<Daemon>,
    listener: Async<UnixListener>,
    signals: Async<TerminationSignals>,
    shutdown: smol::channel::Receiver<()>,
) -> std::io::Result<()> {
    loop {
        let wake = smol::future::or(
            async { Wake::Accepted(listener.accept().await.map(|(s, _)| s)) },
            smol::future::or(
                async {
                    let _ = signals.readable().await;
                    Wake::Signal
                },
                async {
                    let _ = shutdown.recv().await;
                    Wake::Shutdown
                },
            ),
        )
        .await;
        match wake {
            Wake::Accepted(Ok(stream)) => {
                if daemon.connections.get() >= MAX_CONNECTIONS {
                    log::warn!("refusing a connection: {MAX_CONNECTIONS} already open");
                    continue;
                }
                daemon.connections.set(daemon.connections.get() + 1);
                let d = Rc::clone(&daemon);
                ex.spawn(async move {
                    serve_peer(&d, stream).await;
                    d.connections.set(d.connections.get().saturating_sub(1));
                })
                .detach();
            }
            Wake::Accepted(Err(e)) => {
                log::warn!("accept failed: {e}");
                // Out of descriptors or memory: give in-flight work a moment to release some
                // instead of spinning on an accept that keeps failing.
                Timer::after(Duration::from_millis(50)).await;
            }
            Wake::Signal => match signals.get_ref().read() {
                Ok(Some(sig)) if TerminationSignals::terminates(sig) => {
                    log::info!("received {sig}, shutting down");
                    return Ok(());
                }
                Ok(Some(sig)) => log::info!("ignoring {sig}"),
                Ok(None) => {}
                Err(e) => log::warn!("cannot read signals: {e}"),
            },
            Wake::Shutdown => {
                log::info!("stop requested, shutting down");
                return Ok(());
            }
        }
    }
}

async fn refuse(conn: &Conn, code: ErrorCode, message: String) {
    log::warn!(
        "refused pid {} uid {}: {message}",
        conn.cred.pid,
        conn.cred.uid
    );
    let _ = conn
        .send(&HelloReply::Refused(WireError::new(code, message)), &[])
        .await;
}

async fn serve_peer(daemon: &Rc<Daemon>, stream: Async<UnixStream>) {
    let cred = match peer_credentials(stream.get_ref().as_fd()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("cannot read peer credentials: {e}");
            return;
        }
    };
    let mut conn = Conn::new(stream, cred);
    if daemon.access == AccessPolicy::Owner && conn.cred.uid != daemon.uid && conn.cred.uid != 0 {
        let msg = format!(
            "{} may not use the session daemon of {}; each user has their own",
            UidName(conn.cred.uid),
            UidName(daemon.uid)
        );
        refuse(&conn, ErrorCode::PermissionDenied, msg).await;
        return;
    }
    let hello: Hello = match conn.recv(Some(HELLO_TIMEOUT)).await {
        Ok((hello, _fds)) => hello,
        Err(e) => {
            reject_bad_input(&conn, "hello", e).await;
            return;
        }
    };
    if let Err(e) = hello.check_compatible() {
        refuse(&conn, e.code, e.message).await;
        return;
    }
    if matches!(hello.role, Role::Control | Role::Sessiond) {
        if let Err(msg) = kernel_rights(&daemon.access, &conn.cred) {
            refuse(&conn, ErrorCode::PermissionDenied, msg).await;
            return;
        }
    }
    let handler = daemon.sessiond_handler.clone();
    match (hello.role, handler) {
        (Role::Control | Role::App, _) | (Role::Sessiond, Some(_)) => {}
        (role, _) => {
            let msg = format!(
                "this daemon does not accept {} connections",
                match role {
                    Role::Consumer => "consumer",
                    _ => "session daemon",
                }
            );
            refuse(&conn, ErrorCode::Unsupported, msg).await;
            return;
        }
    }
    if conn
        .send(&HelloReply::Welcome(daemon.info.clone()), &[])
        .await
        .is_err()
    {
        return;
    }
    match hello.role {
        Role::Control => control_loop(daemon, conn).await,
        Role::App => serve_app(daemon, conn).await,
        Role::Sessiond => {
            if let Some(handler) = daemon.sessiond_handler.clone() {
                handler(daemon.ctx(), conn).await;
            }
        }
        Role::Consumer => {}
    }
}

/// Under the broker's policy, control clients and session daemons must be root or in the
/// tracing group; the reason is written for the person who was refused.
fn kernel_rights(
    access: &AccessPolicy,
    cred: &drtrace_proto::creds::PeerCred,
) -> Result<(), String> {
    let AccessPolicy::Broker { group } = access else {
        return Ok(());
    };
    if cred.uid == 0 {
        return Ok(());
    }
    let who = UidName(cred.uid);
    match group {
        Some((name, gid)) if cred.in_group(*gid) => {
            let _ = name;
            Ok(())
        }
        Some((name, _)) => Err(format!(
            "{who} may not trace the kernel or the whole system: that needs root or membership \
             in group '{name}' (an administrator can run `usermod -aG {name} {}`; then log in \
             again)",
            drtrace_proto::creds::user_name(cred.uid).unwrap_or_else(|| cred.uid.to_string())
        )),
        None => Err(format!(
            "{who} may not trace the kernel or the whole system: only root may, because the \
             broker's tracing group does not exist on this host (an administrator can create \
             it with `groupadd tracing` and restart the broker)"
        )),
    }
}

async fn serve_app(daemon: &Rc<Daemon>, mut conn: Conn) {
    let reg = match crate::apps::receive_registration(&mut conn).await {
        Ok(reg) => reg,
        Err(e) => {
            log::warn!("pid {} uid {}: {e}; closing", conn.cred.pid, conn.cred.uid);
            return;
        }
    };
    let id = daemon.next_app.get();
    daemon.next_app.set(id + 1);
    let (app, task) = crate::apps::new_app(id, reg);
    log::info!(
        "app {} (pid {}) registered with {} events",
        app.procname,
        app.pid,
        app.events.borrow().len()
    );
    daemon.apps.borrow_mut().insert(id, Rc::clone(&app));
    // Push every session's state, then release the app's start-up wait. Done in its own task
    // because it talks to the app through the task below.
    let d = Rc::clone(daemon);
    let a = Rc::clone(&app);
    daemon
        .ex
        .spawn(async move {
            let _ops = d.ops.lock().await;
            crate::sync::sync_app_all_sessions(&d, &a).await;
            let _ = a
                .call(drtrace_proto::app::AppCommand::RegistrationDone, Vec::new())
                .await;
        })
        .detach();
    let d = Rc::clone(daemon);
    let a = Rc::clone(&app);
    let end = crate::apps::run_app(&app, task, conn, move |news| match news {
        AppNews::NewEvents => {
            let d = Rc::clone(&d);
            let a = Rc::clone(&a);
            d.ex.clone()
                .spawn(async move {
                    let _ops = d.ops.lock().await;
                    crate::sync::sync_app_all_sessions(&d, &a).await;
                })
                .detach();
        }
    })
    .await;
    log::info!("app {} (pid {}) left: {end}", app.procname, app.pid);
    let _ops = daemon.ops.lock().await;
    crate::sync::app_gone(daemon, &app).await;
}

/// Answers unreadable input with an error (when the peer can still hear it) and logs it.
async fn reject_bad_input(conn: &Conn, what: &str, e: FrameError) {
    let (pid, uid) = (conn.cred.pid, conn.cred.uid);
    match e {
        e if e.is_disconnect() => log::debug!("pid {pid} left before its {what}"),
        FrameError::TimedOut(after) => {
            log::info!("pid {pid} uid {uid}: no complete {what} within {after:?}, closing");
        }
        e => {
            log::warn!("pid {pid} uid {uid}: bad {what}: {e}");
            let reply = WireError::new(ErrorCode::BadRequest, format!("bad {what}: {e}"));
            let _ = if what == "hello" {
                conn.send(&HelloReply::Refused(reply), &[]).await
            } else {
                conn.send(&ControlReply::Error(reply), &[]).await
            };
        }
    }
}

async fn control_loop(daemon: &Rc<Daemon>, mut conn: Conn) {
    loop {
        let request: ControlRequest = match conn.recv(Some(CONTROL_IDLE_TIMEOUT)).await {
            Ok((req, _fds)) => req,
            Err(e) => {
                reject_bad_input(&conn, "request", e).await;
                return;
            }
        };
        log::debug!("pid {}: {request:?}", conn.cred.pid);
        let stop = request == ControlRequest::StopDaemon;
        let reply = control::handle(daemon, &conn.cred, request).await;
        // A refused stop request stops nothing.
        let stop = stop && reply == ControlReply::Ok;
        if conn.send(&reply, &[]).await.is_err() {
            return;
        }
        if stop {
            daemon.request_shutdown();
            // Keep the connection open: the client sees it close only when the process
            // exits, after the socket is gone, so "daemon stop" returns once it is over.
            std::future::pending::<()>().await;
        }
    }
}
