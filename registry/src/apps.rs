//! Registered applications: one task per app connection, and a handle the rest of the
//! daemon uses to send it commands.
//!
//! The task owns the connection. It forwards commands from the handle one at a time (each
//! with a sequence number, answered within [`APP_REPLY_TIMEOUT`]) and, in between, watches
//! the connection for the app's own messages (`NewEvents`) and for its close, which is how
//! the daemon learns that the app is gone. An app that stops answering fails the command at
//! hand, never the daemon: its late replies are recognised by their old sequence numbers and
//! dropped.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use drtrace_proto::app::{
    APP_ABI_MAJOR, AppCommand, AppMessage, AppRegistration, AppRequest, ChannelKey, MAX_APP_EVENTS,
};
use drtrace_proto::control::AppInfo;
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::event::EventDescription;
use drtrace_proto::frame::FrameError;

use crate::conn::{Conn, with_timeout};

/// Time an app has to answer one command.
pub(crate) const APP_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Time an app has to register after its hello.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// A command waiting for the app task, with the channel its outcome goes back on.
#[derive(Debug)]
struct Pending {
    command: AppCommand,
    fds: Vec<OwnedFd>,
    reply: smol::channel::Sender<Result<(), WireError>>,
}

/// What the daemon knows of one registered app.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) id: u64,
    pub(crate) pid: i32,
    pub(crate) uid: u32,
    pub(crate) procname: String,
    pub(crate) registered_at: SystemTime,
    pub(crate) events: RefCell<Vec<EventDescription>>,
    /// Channels the app has mapped.
    pub(crate) channels: RefCell<BTreeSet<ChannelKey>>,
    /// Sessions the app was told are active.
    pub(crate) active: RefCell<BTreeMap<u64, bool>>,
    alive: Cell<bool>,
    commands: smol::channel::Sender<Pending>,
}

impl App {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.get()
    }

    pub(crate) fn info(&self) -> AppInfo {
        AppInfo {
            pid: self.pid,
            uid: self.uid,
            procname: self.procname.clone(),
            events: self.events.borrow().clone(),
        }
    }

    /// Sends one command (with descriptors) and waits for the app's answer.
    pub(crate) async fn call(
        &self,
        command: AppCommand,
        fds: Vec<OwnedFd>,
    ) -> Result<(), WireError> {
        if !self.is_alive() {
            return Err(WireError::new(
                ErrorCode::Io,
                format!("app {} (pid {}) is gone", self.procname, self.pid),
            ));
        }
        let (tx, rx) = smol::channel::bounded(1);
        let pending = Pending {
            command,
            fds,
            reply: tx,
        };
        if self.commands.send(pending).await.is_err() {
            return Err(WireError::new(
                ErrorCode::Io,
                format!("app {} (pid {}) is gone", self.procname, self.pid),
            ));
        }
        rx.recv().await.unwrap_or_else(|_| {
            Err(WireError::new(
                ErrorCode::Io,
                format!("app {} (pid {}) went away", self.procname, self.pid),
            ))
        })
    }
}

/// Checks a registration against the peer's credentials and our limits.
pub(crate) fn validate_registration(
    reg: &AppRegistration,
    peer_pid: i32,
    peer_uid: u32,
) -> Result<(), String> {
    if reg.abi_major != APP_ABI_MAJOR {
        return Err(format!(
            "application ABI {}.{} is not supported (this daemon speaks {APP_ABI_MAJOR}.x)",
            reg.abi_major, reg.abi_minor
        ));
    }
    if reg.uid != peer_uid || (peer_pid != 0 && reg.pid != peer_pid) {
        return Err(format!(
            "registration claims pid {} uid {} but the socket says pid {peer_pid} uid {peer_uid}",
            reg.pid, reg.uid
        ));
    }
    check_events(&reg.events, 0)
}

fn check_events(events: &[EventDescription], already: usize) -> Result<(), String> {
    if already + events.len() > MAX_APP_EVENTS {
        return Err(format!(
            "too many events ({}), the limit is {MAX_APP_EVENTS}",
            already + events.len()
        ));
    }
    for e in events {
        e.validate().map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// Receives an app's registration after its hello.
pub(crate) async fn receive_registration(conn: &mut Conn) -> Result<AppRegistration, String> {
    match conn.recv::<AppMessage>(Some(REGISTER_TIMEOUT)).await {
        Ok((AppMessage::Register(reg), _)) => {
            validate_registration(&reg, conn.cred.pid, conn.cred.uid)?;
            Ok(reg)
        }
        Ok((other, _)) => Err(format!("expected a registration, received {other:?}")),
        Err(e) => Err(format!("no registration: {e}")),
    }
}

/// Creates the handle for a registered app; the returned receiver feeds [`run_app`].
pub(crate) fn new_app(id: u64, reg: AppRegistration) -> (Rc<App>, AppTask) {
    let (tx, rx) = smol::channel::unbounded();
    let app = Rc::new(App {
        id,
        pid: reg.pid,
        uid: reg.uid,
        procname: reg.procname,
        registered_at: SystemTime::now(),
        events: RefCell::new(reg.events),
        channels: RefCell::new(BTreeSet::new()),
        active: RefCell::new(BTreeMap::new()),
        alive: Cell::new(true),
        commands: tx,
    });
    (app, AppTask { commands: rx })
}

/// The receiving half of an app's command queue.
#[derive(Debug)]
pub(crate) struct AppTask {
    commands: smol::channel::Receiver<Pending>,
}

/// What the app task tells the daemon about.
pub(crate) enum AppNews {
    /// The app registered more events.
    NewEvents,
}

enum Wake {
    Command(Option<Pending>),
    Incoming(Result<AppMessage, FrameError>),
}

/// Serves an app until its connection closes. `news` is called for the app's unsolicited
/// messages that need the daemon's attention.
pub(crate) async fn run_app(
    app: &Rc<App>,
    task: AppTask,
    mut conn: Conn,
    mut news: impl FnMut(AppNews),
) -> FrameError {
    let mut seq = 0u64;
    let end = loop {
        let wake = smol::future::or(
            async { Wake::Command(task.commands.recv().await.ok()) },
            async { Wake::Incoming(conn.recv::<AppMessage>(None).await.map(|(m, _)| m)) },
        )
        .await;
        match wake {
            Wake::Command(None) => break FrameError::Closed,
            Wake::Command(Some(pending)) => {
                seq += 1;
                let result = exchange(
                    app,
                    &mut conn,
                    seq,
                    pending.command,
                    &pending.fds,
                    &mut news,
                )
                .await;
                let broken = matches!(&result, Err(Exchange::Broken(_)));
                let outcome = result.map_err(|e| e.into_wire(app));
                let _ = pending.reply.try_send(outcome);
                if broken {
                    break FrameError::Closed;
                }
            }
            Wake::Incoming(Ok(msg)) => {
                if let Err(e) = incoming(app, msg, &mut news) {
                    log::warn!("app {} (pid {}): {e}; closing", app.procname, app.pid);
                    break FrameError::Closed;
                }
            }
            Wake::Incoming(Err(e)) => break e,
        }
    };
    app.alive.set(false);
    task.commands.close();
    // Fail whatever is still queued, so no caller waits for a reply that cannot come.
    while let Ok(p) = task.commands.try_recv() {
        let _ = p.reply.try_send(Err(WireError::new(
            ErrorCode::Io,
            format!("app {} (pid {}) went away", app.procname, app.pid),
        )));
    }
    end
}

enum Exchange {
    /// The app answered with an error, or not in time; the connection is still usable.
    Failed(WireError),
    /// The connection is unusable.
    Broken(FrameError),
}

impl Exchange {
    fn into_wire(self, app: &App) -> WireError {
        match self {
            Exchange::Failed(e) => e,
            Exchange::Broken(e) => WireError::new(
                ErrorCode::Io,
                format!("app {} (pid {}): {e}", app.procname, app.pid),
            ),
        }
    }
}

async fn exchange(
    app: &App,
    conn: &mut Conn,
    seq: u64,
    command: AppCommand,
    fds: &[OwnedFd],
    news: &mut impl FnMut(AppNews),
) -> Result<(), Exchange> {
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    conn.send(&AppRequest { seq, command }, &borrowed)
        .await
        .map_err(Exchange::Broken)?;
    let deadline = Instant::now() + APP_REPLY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match with_timeout(left, conn.recv::<AppMessage>(None)).await {
            Ok((msg, _)) => msg,
            Err(FrameError::TimedOut(_)) => {
                return Err(Exchange::Failed(WireError::new(
                    ErrorCode::Io,
                    format!(
                        "app {} (pid {}) did not answer within {APP_REPLY_TIMEOUT:?}",
                        app.procname, app.pid
                    ),
                )));
            }
            Err(e) => return Err(Exchange::Broken(e)),
        };
        match msg {
            AppMessage::Reply { seq: s, result } if s == seq => {
                return result.map_err(Exchange::Failed);
            }
            // A late answer to a command that already timed out.
            AppMessage::Reply { .. } => {}
            other => incoming(app, other, news).map_err(|e| {
                Exchange::Broken(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e,
                )))
            })?,
        }
    }
}

fn incoming(app: &App, msg: AppMessage, news: &mut impl FnMut(AppNews)) -> Result<(), String> {
    match msg {
        AppMessage::NewEvents {
            first_index,
            events,
        } => {
            let mut known = app.events.borrow_mut();
            if usize::try_from(first_index).ok() != Some(known.len()) {
                return Err(format!(
                    "new events start at index {first_index}, expected {}",
                    known.len()
                ));
            }
            check_events(&events, known.len())?;
            known.extend(events);
            drop(known);
            news(AppNews::NewEvents);
            Ok(())
        }
        // Replies outside an exchange are late answers to timed-out commands.
        AppMessage::Reply { .. } => Ok(()),
        AppMessage::Register(_) => Err("registered twice".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_proto::event::{FieldDescription, FieldType, LogLevel};

    fn registration(pid: i32, uid: u32) -> AppRegistration {
        AppRegistration {
            pid,
            ppid: 1,
            uid,
            gid: uid,
            procname: "t".into(),
            abi_major: APP_ABI_MAJOR,
            abi_minor: 0,
            bits_per_long: 64,
            tracer_version: "0".into(),
            events: vec![EventDescription {
                provider: "p".into(),
                name: "e".into(),
                loglevel: LogLevel::Info,
                fields: vec![FieldDescription {
                    name: "x".into(),
                    ty: FieldType::U8,
                }],
            }],
        }
    }

    #[test]
    fn registrations_must_match_the_socket_credentials() {
        validate_registration(&registration(10, 1000), 10, 1000).unwrap();
        assert!(validate_registration(&registration(10, 0), 10, 1000).is_err());
        assert!(validate_registration(&registration(11, 1000), 10, 1000).is_err());
        let mut r = registration(10, 1000);
        r.abi_major += 1;
        assert!(
            validate_registration(&r, 10, 1000)
                .unwrap_err()
                .contains("not supported")
        );
        let mut r = registration(10, 1000);
        r.events[0].name = "bad name".into();
        assert!(validate_registration(&r, 10, 1000).is_err());
    }
}
