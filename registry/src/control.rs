//! Control requests: what each one does to the registry (and, through it, to apps and the
//! consumer).

use std::rc::Rc;

use drtrace_proto::control::{
    ControlReply, ControlRequest, DaemonStatus, Domain, OutputLocation, SessionInfo, SessionTarget,
};
use drtrace_proto::creds::PeerCred;
use drtrace_proto::error::{ErrorCode, WireError};

use crate::server::{AccessPolicy, Daemon};

fn session_reply(result: Result<SessionInfo, WireError>) -> ControlReply {
    match result {
        Ok(info) => ControlReply::Session(Box::new(info)),
        Err(e) => ControlReply::Error(e),
    }
}

/// The kernel domain a request touches, if any.
fn kernel_domain(request: &ControlRequest) -> bool {
    match request {
        ControlRequest::EnableChannel { channel, .. } => channel.domain == Domain::Kernel,
        ControlRequest::DisableChannel { domain, .. }
        | ControlRequest::EnableEvent { domain, .. }
        | ControlRequest::DisableEvent { domain, .. } => *domain == Domain::Kernel,
        _ => false,
    }
}

/// Checks, before anything is created, that kernel tracing is possible here and allowed to
/// this daemon's user.
async fn kernel_access(daemon: &Rc<Daemon>) -> Result<(), WireError> {
    match daemon.kernel.clone() {
        Some(kernel) => kernel.info(daemon.ctx()).await.map(drop),
        None => Err(WireError::new(
            ErrorCode::Unsupported,
            "kernel tracing is not available from this daemon",
        )),
    }
}

/// Serves one control request from a peer with credentials `cred`.
pub(crate) async fn handle(
    daemon: &Rc<Daemon>,
    cred: &PeerCred,
    request: ControlRequest,
) -> ControlReply {
    match request {
        // The broker serves every user: stopping it ends everyone's system-wide sessions and
        // kernel sub-sessions, which is for root alone, not for the tracing group.
        ControlRequest::StopDaemon
            if matches!(daemon.access, AccessPolicy::Broker { .. }) && cred.uid != 0 =>
        {
            ControlReply::Error(WireError::new(
                ErrorCode::PermissionDenied,
                "only root may stop the broker: it serves every user's sessions",
            ))
        }
        ControlRequest::CreateSession(mut req) => {
            // System-wide traces of non-root clients stay in the daemon's own directory:
            // the broker never writes as root where a user chose.
            if let Some(dir) = &daemon.forced_output {
                if cred.uid != 0 {
                    req.output = OutputLocation::Under(dir.clone());
                }
            }
            handle_registry(daemon, ControlRequest::CreateSession(req))
        }
        ControlRequest::ListKernelEvents => {
            let Some(kernel) = daemon.kernel.clone() else {
                return ControlReply::Error(WireError::new(
                    ErrorCode::Unsupported,
                    "kernel tracing is not available from this daemon",
                ));
            };
            match kernel.list_events(daemon.ctx()).await {
                Ok(events) => ControlReply::KernelEvents(events),
                Err(e) => ControlReply::Error(e),
            }
        }
        ControlRequest::DestroySession { target } => destroy_target(daemon, target).await,
        ControlRequest::StartSession { name } => {
            let _ops = daemon.ops.lock().await;
            let result = daemon.registry.borrow().resolve(name.as_deref());
            match result {
                Ok(n) => session_reply(crate::sync::start(daemon, &n).await),
                Err(e) => ControlReply::Error(e),
            }
        }
        ControlRequest::StopSession { name } => {
            let _ops = daemon.ops.lock().await;
            let result = daemon.registry.borrow().resolve(name.as_deref());
            match result {
                Ok(n) => session_reply(crate::sync::stop(daemon, &n).await),
                Err(e) => ControlReply::Error(e),
            }
        }
        ControlRequest::ListApps => {
            let apps = daemon.apps.borrow();
            ControlReply::Apps(
                apps.values()
                    .filter(|a| a.is_alive())
                    .map(|a| a.info())
                    .collect(),
            )
        }
        request @ (ControlRequest::EnableChannel { .. }
        | ControlRequest::DisableChannel { .. }
        | ControlRequest::EnableEvent { .. }
        | ControlRequest::DisableEvent { .. }) => {
            let _ops = daemon.ops.lock().await;
            if kernel_domain(&request) {
                if let Err(e) = kernel_access(daemon).await {
                    return ControlReply::Error(e);
                }
            }
            let reply = handle_registry(daemon, request);
            if let ControlReply::Session(info) = &reply {
                crate::sync::resync(daemon, &info.name).await;
            }
            reply
        }
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
        ControlRequest::ListKernelEvents
        | ControlRequest::DestroySession { .. }
        | ControlRequest::StartSession { .. }
        | ControlRequest::StopSession { .. }
        | ControlRequest::ListApps => ControlReply::Error(WireError::new(
            ErrorCode::Internal,
            "request reached the registry-only path",
        )),
    }
}

async fn destroy_target(daemon: &Rc<Daemon>, target: SessionTarget) -> ControlReply {
    let _ops = daemon.ops.lock().await;
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
        match crate::sync::destroy(daemon, &name).await {
            Ok(info) => destroyed.push(info),
            Err(e) => return ControlReply::Error(e),
        }
    }
    ControlReply::Destroyed(destroyed)
}

/// Destroys every session, at shutdown.
pub(crate) async fn destroy_all(daemon: &Rc<Daemon>) {
    let _ops = daemon.ops.lock().await;
    let names = daemon.registry.borrow().names();
    for name in names {
        if let Err(e) = crate::sync::destroy(daemon, &name).await {
            log::warn!("cannot destroy session {name} at shutdown: {e}");
        }
    }
}
