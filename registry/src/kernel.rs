//! How the engine reaches the kernel: a [`KernelBackend`].
//!
//! The session daemon's backend forwards to the root broker (which checks the user's right to
//! trace the kernel from the connection's credentials); the broker's backend drives tracefs
//! and its own consumer. Either way the engine creates the kernel trace files itself, as the
//! daemon's user, in the session's `kernel/` directory, and hands over their descriptors
//! ([`KernelFiles`]): the side that runs as root never opens a path in a user's directory.

use std::os::fd::OwnedFd;
use std::rc::Rc;

use drtrace_proto::consumer::StreamStats;
use drtrace_proto::error::WireError;
use drtrace_proto::kernel::KernelSessionSpec;
use smol::LocalExecutor;
use smol::future::FutureExt;

use crate::consumer::Consumer;

/// A future a backend returns: boxed, not `Send` (everything runs on the engine's thread).
pub type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T>>>;

/// Boxes a future for a [`KernelBackend`] method.
pub fn boxed<T: 'static>(fut: impl Future<Output = T> + 'static) -> BoxFuture<T> {
    fut.boxed_local()
}

/// What the engine lends a backend: its executor and its consumer.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The engine's executor, for tasks the backend starts.
    pub ex: Rc<LocalExecutor<'static>>,
    /// The engine's consumer daemon (spawned on first use).
    pub consumer: Rc<Consumer>,
}

/// The kernel side as a backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// Per-CPU buffers of a kernel sub-session, so stream files to create.
    pub cpus: u32,
}

/// The files of one kernel trace, opened for writing by the engine.
#[derive(Debug)]
pub struct KernelFiles {
    /// The metadata file.
    pub metadata: OwnedFd,
    /// One stream file per CPU, in CPU order.
    pub streams: Vec<OwnedFd>,
}

/// A kernel sub-session just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCreated {
    /// Its id within the backend.
    pub id: u64,
    /// The events its rules enabled, `sys:event`.
    pub events: Vec<String>,
}

/// Kernel tracing for the engine. Every method may fail with a [`WireError`] the engine
/// passes on to the client; `info` is also the access check, made before anything is created.
pub trait KernelBackend: std::fmt::Debug {
    /// Checks the right to trace the kernel and describes the kernel side.
    fn info(self: Rc<Self>, ctx: Ctx) -> BoxFuture<Result<KernelInfo, WireError>>;
    /// Creates a sub-session (instance, events, metadata, streams), not yet recording.
    fn create(
        self: Rc<Self>,
        ctx: Ctx,
        spec: KernelSessionSpec,
        files: KernelFiles,
    ) -> BoxFuture<Result<KernelCreated, WireError>>;
    /// Starts recording.
    fn start(self: Rc<Self>, ctx: Ctx, id: u64) -> BoxFuture<Result<(), WireError>>;
    /// Stops recording and flushes.
    fn stop(self: Rc<Self>, ctx: Ctx, id: u64) -> BoxFuture<Result<Vec<StreamStats>, WireError>>;
    /// Stops, flushes and removes a sub-session.
    fn destroy(self: Rc<Self>, ctx: Ctx, id: u64)
    -> BoxFuture<Result<Vec<StreamStats>, WireError>>;
    /// Available kernel events, `sys:event`.
    fn list_events(self: Rc<Self>, ctx: Ctx) -> BoxFuture<Result<Vec<String>, WireError>>;
}
