//! Control requests: what each one does to the registry (and, through it, to apps and the
//! consumer).

use std::rc::Rc;

use drtrace_proto::control::{
    ControlReply, ControlRequest, DaemonStatus, SessionInfo, SessionState, SessionTarget,
};
use drtrace_proto::error::WireError;

use crate::server::Daemon;

fn session_reply(result: Result<SessionInfo, WireError>) -> ControlReply {
    match result {
        Ok(info) => ControlReply::Session(Box::new(info)),
        Err(e) => ControlReply::Error(e),
    }
}

/// Serves one control request.
pub(crate) async fn handle(daemon: &Rc<Daemon>, request: ControlRequest) -> ControlReply {
    match request {
        ControlRequest::DestroySession { target } => destroy_target(daemon, target).await,
        request => handle_registry(daemon, request),
    }
}

/// Requests that only touch the registry.
fn handle_registry(daemon: &Daemon, request: ControlRequest) -> ControlReply {
    let mut reg = daemon.registry.borrow_mut();
    match request {
        ControlRequest::Ping => ControlReply::Pong(daemon.info.clone()),
        ControlRequest::Status => ControlReply::Status(Box::new(DaemonStatus {
            daemon: daemon.info.clone(),
            socket: daemon.socket.clone(),
            log_file: daemon.log_file.clone(),
            uptime_s: daemon.started.elapsed().as_secs(),
            current_session: reg.current_name().map(str::to_owned),
            sessions: reg.infos(),
        })),
        ControlRequest::CreateSession(req) => {
            let result = reg.create(req);
            if let Ok(info) = &result {
                log::info!("created session {} in {}", info.name, info.output.display());
            }
            session_reply(result)
        }
        ControlRequest::ListSessions => ControlReply::Sessions(reg.infos()),
        ControlRequest::ShowSession { name } => {
            session_reply(reg.resolve(name.as_deref()).and_then(|n| reg.info(&n)))
        }
        ControlRequest::SetCurrent { name } => session_reply(reg.set_current(&name)),
        ControlRequest::StartSession { name } => session_reply(
            reg.resolve(name.as_deref())
                .and_then(|n| reg.set_state(&n, SessionState::Active).map(|()| n))
                .and_then(|n| {
                    log::info!("started session {n}");
                    reg.info(&n)
                }),
        ),
        ControlRequest::StopSession { name } => session_reply(
            reg.resolve(name.as_deref())
                .and_then(|n| reg.set_state(&n, SessionState::Inactive).map(|()| n))
                .and_then(|n| {
                    log::info!("stopped session {n}");
                    reg.info(&n)
                }),
        ),
        ControlRequest::EnableChannel { session, channel } => session_reply(
            reg.resolve(session.as_deref())
                .and_then(|n| reg.enable_channel(&n, channel).map(|()| n))
                .and_then(|n| reg.info(&n)),
        ),
        ControlRequest::DisableChannel {
            session,
            domain,
            name,
        } => session_reply(
            reg.resolve(session.as_deref())
                .and_then(|n| reg.disable_channel(&n, domain, &name).map(|()| n))
                .and_then(|n| reg.info(&n)),
        ),
        ControlRequest::EnableEvent {
            session,
            channel,
            domain,
            rules,
        } => session_reply(
            reg.resolve(session.as_deref())
                .and_then(|n| {
                    reg.enable_events(&n, channel.as_deref(), domain, rules)
                        .map(|()| n)
                })
                .and_then(|n| reg.info(&n)),
        ),
        ControlRequest::DisableEvent {
            session,
            channel,
            domain,
            patterns,
        } => session_reply(
            reg.resolve(session.as_deref())
                .and_then(|n| {
                    reg.disable_events(&n, channel.as_deref(), domain, &patterns)
                        .map(|()| n)
                })
                .and_then(|n| reg.info(&n)),
        ),
        ControlRequest::StopDaemon => ControlReply::Ok,
        ControlRequest::ListApps => ControlReply::Apps(Vec::new()),
        ControlRequest::DestroySession { .. } => ControlReply::Error(WireError::new(
            drtrace_proto::error::ErrorCode::Internal,
            "destroy reached the registry-only path",
        )),
    }
}

async fn destroy_target(daemon: &Rc<Daemon>, target: SessionTarget) -> ControlReply {
    let names = {
        let reg = daemon.registry.borrow();
        match target {
            SessionTarget::All => Ok(reg.names()),
            SessionTarget::Current => reg.resolve(None).map(|n| vec![n]),
            SessionTarget::Named(n) => reg.resolve(Some(&n)).map(|n| vec![n]),
        }
    };
    let names = match names {
        Ok(names) => names,
        Err(e) => return ControlReply::Error(e),
    };
    let mut destroyed = Vec::with_capacity(names.len());
    for name in names {
        match destroy(daemon, &name).await {
            Ok(info) => destroyed.push(info),
            Err(e) => return ControlReply::Error(e),
        }
    }
    ControlReply::Destroyed(destroyed)
}

/// Stops (if needed) and removes one session.
async fn destroy(daemon: &Rc<Daemon>, name: &str) -> Result<SessionInfo, WireError> {
    let mut reg = daemon.registry.borrow_mut();
    if reg.get(name)?.state == SessionState::Active {
        reg.set_state(name, SessionState::Inactive)?;
    }
    let info = reg.remove(name)?;
    log::info!("destroyed session {name}");
    Ok(info)
}

/// Destroys every session, at shutdown.
pub(crate) async fn destroy_all(daemon: &Rc<Daemon>) {
    let names = daemon.registry.borrow().names();
    for name in names {
        if let Err(e) = destroy(daemon, &name).await {
            log::warn!("cannot destroy session {name} at shutdown: {e}");
        }
    }
}
