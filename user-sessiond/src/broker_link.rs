//! Kernel tracing for the user's sessions, delegated to the root broker.
//!
//! The link connects to the broker with role `sessiond`; the broker decides from this
//! connection's credentials (the user's) whether kernel tracing is allowed, so a user not in
//! the tracing group is refused before anything is created. The files of the kernel trace are
//! created by the engine, as the user, and their descriptors go to the broker with the
//! `Create` request.
//!
//! Kernel sub-sessions belong to the connection that created them. When the broker exits or
//! restarts, those ids die with the connection: the link reports their kernel events as lost
//! (userspace recording goes on), and connects again, as a new registration, the next time a
//! session needs the kernel.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use drtrace_proto::client::{ConnectError, Connection};
use drtrace_proto::consumer::StreamStats;
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::hello::Role;
use drtrace_proto::kernel::{KernelReply, KernelRequest, KernelSessionSpec};
use drtrace_registry::Conn;
use drtrace_registry::kernel::{
    BoxFuture, Ctx, KernelBackend, KernelCreated, KernelFiles, KernelInfo, boxed,
};
use smol::Async;
use smol::lock::Mutex;

/// Bounds the greeting of the broker (it answers at once unless it is hung).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds a request that flushes kernel buffers.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The live connection and its generation (ids from older generations are dead).
#[derive(Debug)]
struct Link {
    conn: Conn,
    generation: u64,
}

/// The session daemon's [`KernelBackend`]: a client of the broker.
#[derive(Debug)]
pub(crate) struct BrokerLink {
    link: Mutex<Option<Link>>,
    generation: Cell<u64>,
    /// Our ids → (generation, the broker's id).
    ids: RefCell<BTreeMap<u64, (u64, u64)>>,
    next_id: Cell<u64>,
    uid: u32,
}

fn lost() -> WireError {
    WireError::new(
        ErrorCode::Io,
        "the connection to the broker was lost (it exited or restarted); kernel events after \
         that are missing from the trace",
    )
}

impl BrokerLink {
    pub(crate) fn new(uid: u32) -> Self {
        Self {
            link: Mutex::new(None),
            generation: Cell::new(0),
            ids: RefCell::new(BTreeMap::new()),
            next_id: Cell::new(1),
            uid,
        }
    }

    /// Connects if needed (in a worker thread: the greeting may take up to its timeout).
    async fn connect(&self, slot: &mut Option<Link>) -> Result<(), WireError> {
        if slot.is_some() {
            return Ok(());
        }
        let path = drtrace_proto::paths::broker_socket();
        let uid = self.uid;
        let result = smol::unblock(move || {
            let conn = Connection::connect(&path, Role::Sessiond, 0, CONNECT_TIMEOUT)?;
            let cred = conn.peer().clone();
            let stream: UnixStream = conn.stream().try_clone().map_err(|e| ConnectError::Io {
                path: path.clone(),
                source: e,
            })?;
            Ok::<_, ConnectError>((stream, cred))
        })
        .await;
        let (stream, cred) = result.map_err(|e| match e {
            ConnectError::Refused(w) => w,
            ConnectError::NoDaemon { path } => WireError::new(
                ErrorCode::Unsupported,
                format!(
                    "kernel tracing needs the root broker, which is not running (no daemon at \
                     {}); an administrator can start it with `systemctl start drtrace-broker` \
                     or `drtrace-broker --detach`",
                    path.display()
                ),
            ),
            other => WireError::new(ErrorCode::Io, format!("cannot reach the broker: {other}")),
        })?;
        let _ = uid;
        stream
            .set_nonblocking(true)
            .map_err(|e| WireError::new(ErrorCode::Io, format!("broker socket: {e}")))?;
        let stream = Async::new(stream)
            .map_err(|e| WireError::new(ErrorCode::Io, format!("broker socket: {e}")))?;
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        log::info!("connected to the broker (pid {})", cred.pid);
        *slot = Some(Link {
            conn: Conn::new(stream, cred),
            generation,
        });
        Ok(())
    }

    /// Sends one request (with descriptors) and returns the reply; a broken connection is
    /// dropped, so the next call connects again.
    async fn call(
        &self,
        request: KernelRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<(KernelReply, u64), WireError> {
        self.call_in(None, request, fds, timeout).await
    }

    /// [`Self::call`] for a request naming a sub-session of connection `generation`: if that
    /// connection is gone (even if a new one is made here), the sub-session went with it, and
    /// its id must not reach the broker on another connection.
    async fn call_in(
        &self,
        generation: Option<u64>,
        request: KernelRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<(KernelReply, u64), WireError> {
        let mut slot = self.link.lock().await;
        self.connect(&mut slot).await?;
        let Some(link) = slot.as_mut() else {
            return Err(lost());
        };
        if generation.is_some_and(|g| g != link.generation) {
            return Err(lost());
        }
        let generation = link.generation;
        let result = async {
            link.conn.send(&request, fds).await?;
            let (reply, _) =
                drtrace_registry::Conn::recv::<KernelReply>(&mut link.conn, None).await?;
            Ok::<_, drtrace_proto::frame::FrameError>(reply)
        };
        let result = smol::future::or(result, async {
            smol::Timer::after(timeout).await;
            Err(drtrace_proto::frame::FrameError::TimedOut(timeout))
        })
        .await;
        match result {
            Ok(KernelReply::Error(e)) => Err(e),
            Ok(reply) => Ok((reply, generation)),
            Err(e) => {
                log::warn!("broker connection failed: {e}");
                *slot = None;
                Err(lost())
            }
        }
    }

    /// The broker's id for our `id` and the generation of its connection, if that
    /// connection is still the current one.
    fn broker_id(&self, id: u64) -> Result<(u64, u64), WireError> {
        match self.ids.borrow().get(&id) {
            Some((generation, bid)) if *generation == self.generation.get() => {
                Ok((*generation, *bid))
            }
            _ => Err(lost()),
        }
    }

    async fn stats_call(
        &self,
        generation: u64,
        request: KernelRequest,
    ) -> Result<Vec<StreamStats>, WireError> {
        match self
            .call_in(Some(generation), request, &[], FLUSH_TIMEOUT)
            .await?
            .0
        {
            KernelReply::Stopped(stats) => Ok(stats),
            other => Err(unexpected("stopped", &other)),
        }
    }
}

fn unexpected(expected: &str, got: &KernelReply) -> WireError {
    WireError::new(
        ErrorCode::Internal,
        format!("the broker answered {got:?} where {expected} was expected"),
    )
}

impl KernelBackend for BrokerLink {
    fn info(self: Rc<Self>, _ctx: Ctx) -> BoxFuture<Result<KernelInfo, WireError>> {
        boxed(async move {
            match self
                .call(KernelRequest::Info, &[], CONNECT_TIMEOUT)
                .await?
                .0
            {
                KernelReply::Info { cpus } => Ok(KernelInfo { cpus }),
                other => Err(unexpected("info", &other)),
            }
        })
    }

    fn create(
        self: Rc<Self>,
        _ctx: Ctx,
        spec: KernelSessionSpec,
        files: KernelFiles,
    ) -> BoxFuture<Result<KernelCreated, WireError>> {
        boxed(async move {
            let mut fds = vec![files.metadata.as_fd()];
            fds.extend(files.streams.iter().map(AsFd::as_fd));
            let (reply, generation) = self
                .call(KernelRequest::Create(spec), &fds, FLUSH_TIMEOUT)
                .await?;
            match reply {
                KernelReply::Created { id, events } => {
                    let ours = self.next_id.get();
                    self.next_id.set(ours + 1);
                    self.ids.borrow_mut().insert(ours, (generation, id));
                    Ok(KernelCreated { id: ours, events })
                }
                other => Err(unexpected("created", &other)),
            }
        })
    }

    fn start(self: Rc<Self>, _ctx: Ctx, id: u64) -> BoxFuture<Result<(), WireError>> {
        boxed(async move {
            let (generation, bid) = self.broker_id(id)?;
            match self
                .call_in(
                    Some(generation),
                    KernelRequest::Start { id: bid },
                    &[],
                    FLUSH_TIMEOUT,
                )
                .await?
                .0
            {
                KernelReply::Ok => Ok(()),
                other => Err(unexpected("ok", &other)),
            }
        })
    }

    fn stop(self: Rc<Self>, _ctx: Ctx, id: u64) -> BoxFuture<Result<Vec<StreamStats>, WireError>> {
        boxed(async move {
            let (generation, bid) = self.broker_id(id)?;
            self.stats_call(generation, KernelRequest::Stop { id: bid })
                .await
        })
    }

    fn destroy(
        self: Rc<Self>,
        _ctx: Ctx,
        id: u64,
    ) -> BoxFuture<Result<Vec<StreamStats>, WireError>> {
        boxed(async move {
            let known = self.broker_id(id);
            self.ids.borrow_mut().remove(&id);
            let (generation, bid) = known?;
            self.stats_call(generation, KernelRequest::Destroy { id: bid })
                .await
        })
    }

    fn list_events(self: Rc<Self>, _ctx: Ctx) -> BoxFuture<Result<Vec<String>, WireError>> {
        boxed(async move {
            match self
                .call(KernelRequest::ListEvents, &[], CONNECT_TIMEOUT)
                .await?
                .0
            {
                KernelReply::Events(events) => Ok(events),
                other => Err(unexpected("events", &other)),
            }
        })
    }
}
