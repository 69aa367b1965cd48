//! Kernel tracing done here: one tracefs instance per kernel sub-session, its per-CPU
//! buffers drained by the broker's (root) consumer into the files the caller passed.
//!
//! ```text
//! create: instance drtrace-<pid>-<n> (clock mono, buffer size, 50% wake-ups, overwrite?)
//!         → enable the rules' events → metadata from their format files, written to the
//!           caller's descriptor → one consumer stream per CPU (trace_pipe_raw + stats +
//!           the caller's stream file)
//! start:  tracing_on = 1          stop: tracing_on = 0, consumer flush
//! destroy: tracing_on = 0, consumer flush and remove, instance removed
//! ```
//!
//! Files in a user's directory are only ever written through descriptors the user's own
//! session daemon opened: this process never opens a path there.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use drtrace_ctf::metadata::{ClockInfo, Domain as CtfDomain, StreamInfo};
use drtrace_ftrace::ctf::{EventCatalog, KernelChannel, kernel_metadata, kernel_trace_uuid};
use drtrace_ftrace::format::EventFormat;
use drtrace_ftrace::tracefs::{Instance, InstanceConfig, Tracefs};
use drtrace_proto::consumer::{KernelEventFormat, KernelStreamSetup, StreamKey, StreamStats};
use drtrace_proto::control::BufferMode;
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::kernel::KernelSessionSpec;
use drtrace_registry::clock;
use drtrace_registry::kernel::{
    BoxFuture, Ctx, KernelBackend, KernelCreated, KernelFiles, KernelInfo, boxed,
};

/// Consumer session ids of kernel sub-sessions start here, far above the engine's own
/// session ids, so the two never meet in the one consumer they share.
const CONSUMER_SESSION_BASE: u64 = 1 << 48;
/// Stream keys of kernel streams likewise.
const STREAM_KEY_BASE: u64 = 1 << 48;

fn io_error(what: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorCode::Io, what.to_string())
}

/// A live kernel sub-session.
#[derive(Debug)]
struct Sub {
    instance: Instance,
    consumer_session: u64,
    name: String,
}

/// The broker's [`KernelBackend`].
#[derive(Debug)]
pub(crate) struct LocalKernel {
    tracefs: Tracefs,
    subs: RefCell<BTreeMap<u64, Sub>>,
    next_id: Cell<u64>,
    next_stream: Cell<u64>,
}

impl LocalKernel {
    pub(crate) fn new(tracefs: Tracefs) -> Self {
        Self {
            tracefs,
            subs: RefCell::new(BTreeMap::new()),
            next_id: Cell::new(1),
            next_stream: Cell::new(STREAM_KEY_BASE),
        }
    }

    fn cpus(&self) -> Result<u32, WireError> {
        let dir = self.tracefs.root().join("per_cpu");
        let count = std::fs::read_dir(&dir)
            .map_err(|e| io_error(format_args!("cannot list {}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("cpu"))
            .count();
        u32::try_from(count.max(1)).map_err(|_| io_error("too many CPUs"))
    }

    fn read_text(&self, path: PathBuf) -> Result<String, WireError> {
        let bytes = self
            .tracefs
            .system()
            .read(&path)
            .map_err(|e| io_error(format_args!("cannot read {}: {e}", path.display())))?;
        String::from_utf8(bytes)
            .map_err(|_| io_error(format_args!("{} is not UTF-8", path.display())))
    }

    /// Sets up the instance and enables the rules' events; on any failure the instance is
    /// removed again, so nothing is left on the system.
    fn make_instance(
        &self,
        id: u64,
        spec: &KernelSessionSpec,
    ) -> Result<(Instance, Vec<EventFormat>), WireError> {
        let instance = self
            .tracefs
            .create_instance(&format!("{}-{id}", std::process::id()))
            .map_err(io_error)?;
        let result = (|| {
            // A new instance records at once; nothing may be recorded before `start`.
            instance.set_tracing_on(false).map_err(io_error)?;
            let bytes = u64::from(spec.channel.subbuf_size) * u64::from(spec.channel.num_subbuf);
            instance
                .configure(&InstanceConfig {
                    buffer_size_kb: Some((bytes / 1024).max(4)),
                    overwrite: spec.channel.mode == BufferMode::Overwrite,
                    ..InstanceConfig::default()
                })
                .map_err(io_error)?;
            for rule in &spec.rules {
                let enabled = instance.enable_events(&rule.pattern).map_err(io_error)?;
                if enabled.is_empty() {
                    return Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "no kernel event matches '{}' (see `drtrace list -k`)",
                            rule.pattern
                        ),
                    ));
                }
            }
            let formats = instance.enabled_formats().map_err(io_error)?;
            Ok(formats)
        })();
        match result {
            Ok(formats) => Ok((instance, formats)),
            Err(e) => {
                let _ = instance.remove();
                Err(e)
            }
        }
    }

    async fn create_sub(
        self: Rc<Self>,
        ctx: Ctx,
        spec: KernelSessionSpec,
        files: KernelFiles,
    ) -> Result<KernelCreated, WireError> {
        let cpus = self.cpus()?;
        if files.streams.len() != usize::try_from(cpus).unwrap_or(usize::MAX) {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!("{} stream files for {cpus} CPUs", files.streams.len()),
            ));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (instance, formats) = self.make_instance(id, &spec)?;
        let consumer_session = CONSUMER_SESSION_BASE + id;
        match self
            .clone()
            .feed(&ctx, &spec, &instance, &formats, files, consumer_session)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                let _ = ctx.consumer.flush_session(consumer_session, true).await;
                let _ = instance.remove();
                return Err(e);
            }
        }
        let events: Vec<String> = formats
            .iter()
            .map(|f| format!("{}:{}", f.system, f.name))
            .collect();
        log::info!(
            "kernel sub-session {id} for session {} in instance {}: {}",
            spec.session_name,
            instance.name(),
            events.join(", ")
        );
        self.subs.borrow_mut().insert(
            id,
            Sub {
                instance,
                consumer_session,
                name: spec.session_name.clone(),
            },
        );
        Ok(KernelCreated { id, events })
    }

    /// Writes the metadata and hands every CPU's buffer to the consumer.
    async fn feed(
        self: Rc<Self>,
        ctx: &Ctx,
        spec: &KernelSessionSpec,
        instance: &Instance,
        formats: &[EventFormat],
        files: KernelFiles,
        consumer_session: u64,
    ) -> Result<(), WireError> {
        let catalog = EventCatalog::new(formats.iter().cloned()).map_err(io_error)?;
        let trace_uuid = kernel_trace_uuid(spec.session_uuid);
        let stream = StreamInfo {
            id: 0,
            channel: spec.channel.name.clone(),
        };
        let info = drtrace_registry::trace_info(
            trace_uuid,
            CtfDomain::Kernel,
            &spec.session_name,
            Vec::new(),
            ClockInfo::monotonic_ns(clock::boot_id(), clock::mono_to_realtime_ns()),
        );
        let text = kernel_metadata(
            &info,
            &[KernelChannel {
                stream: &stream,
                catalog: &catalog,
            }],
        )
        .map_err(io_error)?;
        File::from(files.metadata)
            .write_all(text.as_bytes())
            .map_err(|e| io_error(format_args!("cannot write the kernel metadata: {e}")))?;
        let header_page = self.read_text(self.tracefs.root().join("events/header_page"))?;
        let raw_formats = formats
            .iter()
            .map(|f| {
                self.read_text(
                    self.tracefs
                        .root()
                        .join("events")
                        .join(&f.system)
                        .join(&f.name)
                        .join("format"),
                )
                .map(|format| KernelEventFormat {
                    system: f.system.clone(),
                    format,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (cpu, file) in (0u32..).zip(files.streams) {
            let pipe = open_read(instance.trace_pipe_raw(cpu), true)?;
            let stats = open_read(
                instance.path().join(format!("per_cpu/cpu{cpu}/stats")),
                false,
            )?;
            let key = StreamKey(self.next_stream.get());
            self.next_stream.set(key.0 + 1);
            let setup = KernelStreamSetup {
                key,
                session: consumer_session,
                trace_uuid,
                stream_id: 0,
                cpu,
                header_page: header_page.clone(),
                formats: raw_formats.clone(),
                path: PathBuf::from(format!(
                    "kernel/{}",
                    drtrace_ftrace::ctf::stream_file_name(&spec.channel.name, cpu)
                )),
            };
            ctx.consumer
                .add_kernel_stream(setup, pipe, stats, file)
                .await?;
        }
        Ok(())
    }

    fn sub_instance(&self, id: u64) -> Result<(Instance, u64, String), WireError> {
        self.subs
            .borrow()
            .get(&id)
            .map(|s| (s.instance.clone(), s.consumer_session, s.name.clone()))
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("no kernel sub-session {id}"),
                )
            })
    }

    async fn stop_sub(
        self: Rc<Self>,
        ctx: Ctx,
        id: u64,
        remove: bool,
    ) -> Result<Vec<StreamStats>, WireError> {
        let (instance, consumer_session, name) = self.sub_instance(id)?;
        // Stop the kernel writing first, so the drain below can reach the end.
        let off = instance.set_tracing_on(false).map_err(io_error);
        let stats = ctx.consumer.flush_session(consumer_session, remove).await;
        if remove {
            self.subs.borrow_mut().remove(&id);
            // The consumer closed its readers above; only then can the instance go.
            if let Err(e) = instance.remove() {
                log::warn!("cannot remove instance {}: {e}", instance.name());
            }
            log::info!("kernel sub-session {id} of session {name} removed");
        }
        off?;
        stats
    }

    /// Removes every sub-session in `ids` (a session daemon that went away).
    pub(crate) async fn teardown(self: Rc<Self>, ctx: Ctx, ids: Vec<u64>) {
        for id in ids {
            if let Err(e) = self.clone().stop_sub(ctx.clone(), id, true).await {
                log::warn!("tearing down kernel sub-session {id}: {e}");
            }
        }
    }

    /// Removes every sub-session (broker shutdown).
    pub(crate) async fn teardown_all(self: Rc<Self>, ctx: Ctx) {
        let ids: Vec<u64> = self.subs.borrow().keys().copied().collect();
        self.teardown(ctx, ids).await;
    }

    pub(crate) fn info_now(&self) -> Result<KernelInfo, WireError> {
        Ok(KernelInfo { cpus: self.cpus()? })
    }

    pub(crate) fn events_now(&self) -> Result<Vec<String>, WireError> {
        let mut events: Vec<String> = self
            .tracefs
            .available_events()
            .map_err(io_error)?
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        events.sort();
        Ok(events)
    }
}

impl KernelBackend for LocalKernel {
    fn info(self: Rc<Self>, _ctx: Ctx) -> BoxFuture<Result<KernelInfo, WireError>> {
        boxed(async move { self.info_now() })
    }

    fn create(
        self: Rc<Self>,
        ctx: Ctx,
        spec: KernelSessionSpec,
        files: KernelFiles,
    ) -> BoxFuture<Result<KernelCreated, WireError>> {
        boxed(self.create_sub(ctx, spec, files))
    }

    fn start(self: Rc<Self>, _ctx: Ctx, id: u64) -> BoxFuture<Result<(), WireError>> {
        boxed(async move {
            let (instance, _, _) = self.sub_instance(id)?;
            instance.set_tracing_on(true).map_err(io_error)
        })
    }

    fn stop(self: Rc<Self>, ctx: Ctx, id: u64) -> BoxFuture<Result<Vec<StreamStats>, WireError>> {
        boxed(self.stop_sub(ctx, id, false))
    }

    fn destroy(
        self: Rc<Self>,
        ctx: Ctx,
        id: u64,
    ) -> BoxFuture<Result<Vec<StreamStats>, WireError>> {
        boxed(self.stop_sub(ctx, id, true))
    }

    fn list_events(self: Rc<Self>, _ctx: Ctx) -> BoxFuture<Result<Vec<String>, WireError>> {
        boxed(async move { self.events_now() })
    }
}

fn open_read(path: PathBuf, nonblocking: bool) -> Result<OwnedFd, WireError> {
    let mut flags = nix::fcntl::OFlag::O_CLOEXEC.bits();
    if nonblocking {
        flags |= nix::fcntl::OFlag::O_NONBLOCK.bits();
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|e| io_error(format_args!("cannot open {}: {e}", path.display())))
}

/// True for an instance id a broker made (`<pid>-<n>`) whose broker is gone. Instances of
/// a live broker (another broker directory, e.g. in tests) and ids of other shapes are
/// never touched.
pub(crate) fn is_stale_instance(id: &str) -> bool {
    let Some((pid, n)) = id.split_once('-') else {
        return false;
    };
    let (Ok(pid), Ok(_)) = (pid.parse::<i32>(), n.parse::<u64>()) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let ours = pid == i32::try_from(std::process::id()).unwrap_or(0);
    !alive || ours
}

/// The tracefs in use, for start-up.
pub(crate) fn open_tracefs() -> Result<Tracefs, drtrace_ftrace::tracefs::TracefsError> {
    Tracefs::find_or_mount(Arc::new(drtrace_ftrace::tracefs::RealSystem))
}
