//! Kernel sub-sessions delegated by users' session daemons.
//!
//! A session daemon reaches this only after the engine checked its credentials (root, or
//! a member of the tracing group). Every sub-session it creates belongs to its connection:
//! when the connection closes (the session daemon exited or was killed), they are stopped,
//! flushed and removed, and their tracefs instances with them.

use std::rc::Rc;

use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::frame::FrameError;
use drtrace_proto::kernel::{KernelReply, KernelRequest};
use drtrace_registry::Conn;
use drtrace_registry::kernel::{Ctx, KernelBackend, KernelFiles};

use crate::kernel::LocalKernel;

/// Serves one session daemon until it disconnects, then tears its sub-sessions down.
pub(crate) async fn serve(kernel: Rc<LocalKernel>, ctx: Ctx, mut conn: Conn) {
    let (pid, uid) = (conn.cred.pid, conn.cred.uid);
    log::info!("session daemon pid {pid} uid {uid} connected");
    let mut owned: Vec<u64> = Vec::new();
    loop {
        let (request, fds) = match conn.recv::<KernelRequest>(None).await {
            Ok(r) => r,
            Err(e) if e.is_disconnect() => break,
            Err(FrameError::Malformed(e)) => {
                let reply = KernelReply::Error(WireError::new(
                    ErrorCode::BadRequest,
                    format!("malformed request: {e}"),
                ));
                let _ = conn.send(&reply, &[]).await;
                break;
            }
            Err(e) => {
                log::warn!("session daemon pid {pid}: {e}");
                break;
            }
        };
        let reply = handle(&kernel, &ctx, request, fds, &mut owned).await;
        if conn.send(&reply, &[]).await.is_err() {
            break;
        }
    }
    if !owned.is_empty() {
        log::info!(
            "session daemon pid {pid} uid {uid} left; removing its {} kernel sub-session(s)",
            owned.len()
        );
    }
    kernel.teardown(ctx, owned).await;
}

fn not_owned(id: u64) -> KernelReply {
    KernelReply::Error(WireError::new(
        ErrorCode::InvalidArgument,
        format!("kernel sub-session {id} does not belong to this connection"),
    ))
}

async fn handle(
    kernel: &Rc<LocalKernel>,
    ctx: &Ctx,
    request: KernelRequest,
    fds: Vec<std::os::fd::OwnedFd>,
    owned: &mut Vec<u64>,
) -> KernelReply {
    if !fds.is_empty() && !matches!(request, KernelRequest::Create(_)) {
        return KernelReply::Error(WireError::new(
            ErrorCode::BadRequest,
            "only a create request carries descriptors",
        ));
    }
    let wrap = |r: Result<Vec<_>, WireError>| match r {
        Ok(stats) => KernelReply::Stopped(stats),
        Err(e) => KernelReply::Error(e),
    };
    match request {
        KernelRequest::Info => match kernel.info_now() {
            Ok(info) => KernelReply::Info { cpus: info.cpus },
            Err(e) => KernelReply::Error(e),
        },
        KernelRequest::ListEvents => match kernel.events_now() {
            Ok(events) => KernelReply::Events(events),
            Err(e) => KernelReply::Error(e),
        },
        KernelRequest::Create(spec) => {
            let mut fds = fds.into_iter();
            let Some(metadata) = fds.next() else {
                return KernelReply::Error(WireError::new(
                    ErrorCode::BadRequest,
                    "a create request carries the metadata file and one stream file per CPU",
                ));
            };
            let files = KernelFiles {
                metadata,
                streams: fds.collect(),
            };
            match Rc::clone(kernel).create(ctx.clone(), spec, files).await {
                Ok(created) => {
                    owned.push(created.id);
                    KernelReply::Created {
                        id: created.id,
                        events: created.events,
                    }
                }
                Err(e) => KernelReply::Error(e),
            }
        }
        KernelRequest::Start { id } if owned.contains(&id) => {
            match Rc::clone(kernel).start(ctx.clone(), id).await {
                Ok(()) => KernelReply::Ok,
                Err(e) => KernelReply::Error(e),
            }
        }
        KernelRequest::Stop { id } if owned.contains(&id) => {
            wrap(Rc::clone(kernel).stop(ctx.clone(), id).await)
        }
        KernelRequest::Destroy { id } if owned.contains(&id) => {
            owned.retain(|o| *o != id);
            wrap(Rc::clone(kernel).destroy(ctx.clone(), id).await)
        }
        KernelRequest::Start { id }
        | KernelRequest::Stop { id }
        | KernelRequest::Destroy { id } => not_owned(id),
    }
}
