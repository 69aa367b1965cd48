//! Bringing applications and the consumer in line with the registry.
//!
//! Every function here runs with the daemon's operation lock held (the callers take it), so
//! start, stop, destroy, rule changes and app registrations never interleave. Work is done in
//! two phases: a synchronous one that reads the registry, assigns event ids, writes metadata
//! and allocates buffers (no await, so no borrow spans a suspension), then an asynchronous one
//! that hands streams to the consumer and commands to the apps, all apps at once.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use drtrace_proto::app::{AppCommand, ChannelKey};
use drtrace_proto::consumer::{StreamKey, StreamStats};
use drtrace_proto::control::{BufferOwnership, Domain, SessionInfo, SessionState, TraceStats};
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::kernel::KernelSessionSpec;

use crate::apps::App;
use crate::kernel::KernelFiles;
use crate::recording::{
    BufferSet, NewStream, Recording, SetContext, enabled_events, pid_set_dir, uid_set_dir,
    user_channels,
};
use crate::server::Daemon;

/// Commands for one app, in order, with the channel each AddChannel maps.
type Plan = Vec<(AppCommand, Vec<OwnedFd>, Option<ChannelKey>)>;

/// Starts recording a session: on its first start, creates its kernel sub-session if it has
/// a kernel channel; then tells the kernel side and every app. Userspace buffers are made when
/// the first app that needs them registers.
pub(crate) async fn start(d: &Rc<Daemon>, name: &str) -> Result<SessionInfo, WireError> {
    let session_id = {
        let reg = d.registry.borrow();
        let s = reg.get(name)?;
        if s.state == SessionState::Active {
            return Err(WireError::new(
                ErrorCode::InvalidState,
                format!("session '{name}' is already started"),
            ));
        }
        s.id
    };
    d.consumer.ensure_started().await?;
    let first = !d.recordings.borrow().contains_key(&session_id);
    if first {
        d.recordings
            .borrow_mut()
            .insert(session_id, Recording::new());
        if let Err(e) = create_kernel(d, name, session_id).await {
            d.recordings.borrow_mut().remove(&session_id);
            return Err(e);
        }
    }
    let kernel = d
        .recordings
        .borrow()
        .get(&session_id)
        .and_then(|r| r.kernel);
    if let (Some(id), Some(backend)) = (kernel, d.kernel.clone()) {
        backend.start(d.ctx(), id).await?;
    }
    d.registry
        .borrow_mut()
        .set_state(name, SessionState::Active)?;
    log::info!("started session {name}");
    sync_all_apps(d, name).await;
    d.registry.borrow().info(name)
}

/// Creates the session's kernel sub-session (files made here, as the daemon's user).
async fn create_kernel(d: &Rc<Daemon>, name: &str, session_id: u64) -> Result<(), WireError> {
    let spec = {
        let reg = d.registry.borrow();
        let s = reg.get(name)?;
        let Some(channel) = s
            .channels
            .iter()
            .find(|c| c.config.domain == Domain::Kernel && c.enabled)
        else {
            return Ok(());
        };
        let rules: Vec<_> = channel
            .rules
            .iter()
            .filter(|r| r.enabled)
            .map(|r| r.rule.clone())
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        (
            KernelSessionSpec {
                session_name: s.name.clone(),
                session_uuid: s.uuid,
                channel: channel.config.clone(),
                rules,
            },
            s.output.clone(),
        )
    };
    let (spec, output) = spec;
    let backend = d.kernel.clone().ok_or_else(|| {
        WireError::new(
            ErrorCode::Unsupported,
            "kernel tracing is not available from this daemon",
        )
    })?;
    let info = backend.clone().info(d.ctx()).await?;
    let dir = output.join("kernel");
    let files = create_kernel_files(&dir, &spec.channel.name, info.cpus)?;
    match backend.create(d.ctx(), spec, files).await {
        Ok(created) => {
            log::info!(
                "session {name}: kernel events {}",
                created.events.join(", ")
            );
            if let Some(rec) = d.recordings.borrow_mut().get_mut(&session_id) {
                rec.kernel = Some(created.id);
            }
            Ok(())
        }
        Err(e) => {
            // Leave no half-made kernel trace behind.
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn create_kernel_files(dir: &Path, channel: &str, cpus: u32) -> Result<KernelFiles, WireError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        WireError::new(ErrorCode::Io, format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::DirBuilder::new()
        .mode(0o750)
        .create(dir)
        .map_err(|e| io("create", dir, e))?;
    let open = |p: PathBuf| -> Result<OwnedFd, WireError> {
        std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .mode(0o640)
            .custom_flags(
                nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits(),
            )
            .open(&p)
            .map(OwnedFd::from)
            .map_err(|e| io("create", &p, e))
    };
    let metadata = open(dir.join("metadata"))?;
    let streams = (0..cpus)
        .map(|cpu| open(dir.join(format!("{channel}_{cpu}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KernelFiles { metadata, streams })
}

/// Stops recording: the kernel side and the apps stop writing, then the consumer writes
/// everything to disk.
pub(crate) async fn stop(d: &Rc<Daemon>, name: &str) -> Result<SessionInfo, WireError> {
    let session_id = d.registry.borrow().get(name)?.id;
    d.registry
        .borrow_mut()
        .set_state(name, SessionState::Inactive)?;
    let kernel = kernel_call(d, session_id, false).await;
    for_each_app(d, session_id, |session| AppCommand::SetSessionActive {
        session,
        active: false,
    })
    .await;
    let mut stats = flush(d, session_id, false).await;
    merge_kernel(&mut stats, kernel);
    log::info!(
        "stopped session {name}: {} events recorded, {} discarded",
        stats.events_recorded,
        stats.events_discarded
    );
    d.registry.borrow_mut().get_mut(name)?.stats = Some(stats);
    d.registry.borrow().info(name)
}

/// Stops or destroys the kernel sub-session of a session, if it has a live one.
async fn kernel_call(
    d: &Rc<Daemon>,
    session_id: u64,
    destroy: bool,
) -> Option<Result<Vec<StreamStats>, WireError>> {
    let id = d.recordings.borrow().get(&session_id)?.kernel?;
    let backend = d.kernel.clone()?;
    let result = if destroy {
        backend.destroy(d.ctx(), id).await
    } else {
        backend.stop(d.ctx(), id).await
    };
    if destroy {
        if let Some(rec) = d.recordings.borrow_mut().get_mut(&session_id) {
            rec.kernel = None;
        }
    }
    Some(result)
}

fn merge_kernel(stats: &mut TraceStats, kernel: Option<Result<Vec<StreamStats>, WireError>>) {
    match kernel {
        None => {}
        Some(Ok(streams)) => add_stats(stats, &streams),
        Some(Err(e)) => stats.errors.push(format!("kernel events were lost: {e}")),
    }
}

/// Stops (if needed) and removes a session; its trace is complete on disk when this returns.
pub(crate) async fn destroy(d: &Rc<Daemon>, name: &str) -> Result<SessionInfo, WireError> {
    let (session_id, active) = {
        let reg = d.registry.borrow();
        let s = reg.get(name)?;
        (s.id, s.state == SessionState::Active)
    };
    if active {
        stop(d, name).await?;
    }
    for_each_app(d, session_id, |session| AppCommand::RemoveSession {
        session,
    })
    .await;
    for app in d.apps.borrow().values() {
        app.channels
            .borrow_mut()
            .retain(|k| k.session != session_id);
        app.active.borrow_mut().remove(&session_id);
    }
    let kernel = kernel_call(d, session_id, true).await;
    if let Some(Err(e)) = &kernel {
        log::warn!("session {name}: kernel part: {e}");
    }
    let had_recording = d.recordings.borrow_mut().remove(&session_id).is_some();
    if had_recording {
        let mut stats = flush(d, session_id, true).await;
        // The kernel streams' final counts (or their loss) belong in the final stats too.
        merge_kernel(&mut stats, kernel);
        if let Ok(s) = d.registry.borrow_mut().get_mut(name) {
            // Keep the stop's counts if the last flush found nothing new.
            if s.stats.is_none() || stats.streams > 0 {
                s.stats = Some(stats);
            }
        }
    }
    let info = d.registry.borrow_mut().remove(name)?;
    log::info!("destroyed session {name}");
    Ok(info)
}

/// Pushes the session's current rules to every app (after enable/disable requests).
pub(crate) async fn resync(d: &Rc<Daemon>, name: &str) {
    let has_recording = d
        .registry
        .borrow()
        .get(name)
        .is_ok_and(|s| d.recordings.borrow().contains_key(&s.id));
    if has_recording {
        sync_all_apps(d, name).await;
    }
}

/// Brings a newly registered app (or one with new events) up to date with every session.
pub(crate) async fn sync_app_all_sessions(d: &Rc<Daemon>, app: &Rc<App>) {
    let names: Vec<String> = {
        let reg = d.registry.borrow();
        let recs = d.recordings.borrow();
        reg.names()
            .into_iter()
            .filter(|n| reg.get(n).is_ok_and(|s| recs.contains_key(&s.id)))
            .collect()
    };
    for name in names {
        match plan_app(d, &name, app) {
            Ok((plan, streams)) => {
                if let Err(e) = add_streams(d, streams).await {
                    log::warn!("session {name}: {e}");
                    continue;
                }
                run_plan(app, plan).await;
            }
            Err(e) => log::warn!("session {name}: cannot update app pid {}: {e}", app.pid),
        }
    }
}

/// Forgets an app that disconnected and tells the consumer its writers are gone.
pub(crate) async fn app_gone(d: &Rc<Daemon>, app: &Rc<App>) {
    d.apps.borrow_mut().remove(&app.id);
    let streams: Vec<StreamKey> = {
        let recs = d.recordings.borrow();
        let sessions: Vec<u64> = app.channels.borrow().iter().map(|k| k.session).collect();
        recs.iter()
            .filter(|(id, _)| sessions.contains(id))
            .flat_map(|(_, rec)| {
                rec.uid_sets
                    .get(&app.uid)
                    .into_iter()
                    .chain(rec.pid_sets.get(&app.id))
                    .flat_map(BufferSet::stream_keys)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    d.consumer.writers_died(streams).await;
}

async fn add_streams(d: &Rc<Daemon>, streams: Vec<NewStream>) -> Result<(), WireError> {
    for s in streams {
        d.consumer.add_stream(s.setup, s.memfd, s.eventfd).await?;
    }
    Ok(())
}

/// Computes what `app` must be told about session `name`, creating its per-PID set if needed.
fn plan_app(d: &Daemon, name: &str, app: &App) -> Result<(Plan, Vec<NewStream>), WireError> {
    let reg = d.registry.borrow();
    let session = reg.get(name)?;
    let mut recs = d.recordings.borrow_mut();
    let Some(rec) = recs.get_mut(&session.id) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut streams = Vec::new();
    let wants_uid_set =
        user_channels(session).any(|(_, c)| c.config.buffers == BufferOwnership::PerUid);
    if wants_uid_set && !rec.uid_sets.contains_key(&app.uid) {
        let ctx = SetContext {
            session_id: session.id,
            session,
            clock: &d.clock,
            cpus: d.cpus,
            ownership: BufferOwnership::PerUid,
            app: None,
        };
        let mut next = d.next_stream.get();
        let (set, new) = BufferSet::create(&ctx, uid_set_dir(&session.output, app.uid), &mut next)?;
        d.next_stream.set(next);
        rec.uid_sets.insert(app.uid, set);
        streams = new;
    }
    let wants_pid_set =
        user_channels(session).any(|(_, c)| c.config.buffers == BufferOwnership::PerPid);
    if wants_pid_set && !rec.pid_sets.contains_key(&app.id) {
        let ctx = SetContext {
            session_id: session.id,
            session,
            clock: &d.clock,
            cpus: d.cpus,
            ownership: BufferOwnership::PerPid,
            app: Some((&app.procname, app.pid)),
        };
        let dir = pid_set_dir(&session.output, &app.procname, app.pid, app.registered_at);
        let mut next = d.next_stream.get();
        let (set, new) = BufferSet::create(&ctx, dir, &mut next)?;
        d.next_stream.set(next);
        rec.pid_sets.insert(app.id, set);
        streams.extend(new);
    }
    let events = app.events.borrow();
    let mapped = app.channels.borrow();
    let mut plan = Plan::new();
    for (idx, channel) in user_channels(session) {
        let set = match channel.config.buffers {
            BufferOwnership::PerUid => rec.uid_sets.get_mut(&app.uid),
            BufferOwnership::PerPid => rec.pid_sets.get_mut(&app.id),
        };
        let Some(set) = set else { continue };
        let key = ChannelKey {
            session: session.id,
            channel: idx,
        };
        if !mapped.contains(&key) {
            let (setup, fds) = set.channel_setup(key, &channel.config)?;
            plan.push((AppCommand::AddChannel(setup), fds, Some(key)));
        }
        let enabled = enabled_events(set, idx, channel, &events)?;
        plan.push((
            AppCommand::SetEvents {
                key,
                events: enabled,
            },
            Vec::new(),
            None,
        ));
    }
    let active = session.state == SessionState::Active;
    if !plan.is_empty() || app.active.borrow().get(&session.id) != Some(&active) {
        plan.push((
            AppCommand::SetSessionActive {
                session: session.id,
                active,
            },
            Vec::new(),
            None,
        ));
    }
    Ok((plan, streams))
}

/// Sends a plan to an app, in order; a failed AddChannel skips nothing else, the next sync
/// retries it.
async fn run_plan(app: &Rc<App>, plan: Plan) {
    for (command, fds, maps) in plan {
        let activity = match &command {
            AppCommand::SetSessionActive { session, active } => Some((*session, *active)),
            _ => None,
        };
        match app.call(command, fds).await {
            Ok(()) => {
                if let Some(key) = maps {
                    app.channels.borrow_mut().insert(key);
                }
                if let Some((session, active)) = activity {
                    app.active.borrow_mut().insert(session, active);
                }
            }
            Err(e) => {
                log::warn!("app {} (pid {}): {e}", app.procname, app.pid);
                if !app.is_alive() {
                    return;
                }
            }
        }
    }
}

/// Syncs every live app with session `name`, all apps at once.
async fn sync_all_apps(d: &Rc<Daemon>, name: &str) {
    let apps: Vec<Rc<App>> = d.apps.borrow().values().cloned().collect();
    let mut tasks = Vec::new();
    for app in apps {
        match plan_app(d, name, &app) {
            Ok((plan, streams)) => {
                if let Err(e) = add_streams(d, streams).await {
                    log::warn!("session {name}: {e}");
                    continue;
                }
                tasks.push(d.ex.spawn(async move { run_plan(&app, plan).await }));
            }
            Err(e) => log::warn!("session {name}: cannot plan for app pid {}: {e}", app.pid),
        }
    }
    for t in tasks {
        t.await;
    }
}

/// Sends one command per session-holding app, all at once.
async fn for_each_app(d: &Rc<Daemon>, session: u64, command: impl Fn(u64) -> AppCommand) {
    let apps: Vec<Rc<App>> = d
        .apps
        .borrow()
        .values()
        .filter(|a| a.channels.borrow().iter().any(|k| k.session == session))
        .cloned()
        .collect();
    let tasks: Vec<_> = apps
        .into_iter()
        .map(|app| {
            let cmd = command(session);
            d.ex.spawn(async move {
                let activity = match &cmd {
                    AppCommand::SetSessionActive { session, active } => Some((*session, *active)),
                    _ => None,
                };
                match app.call(cmd, Vec::new()).await {
                    Ok(()) => {
                        if let Some((s, a)) = activity {
                            app.active.borrow_mut().insert(s, a);
                        }
                    }
                    Err(e) => log::warn!("app {} (pid {}): {e}", app.procname, app.pid),
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
}

/// Flushes (and with `remove`, closes) a session's streams and sums what they hold.
async fn flush(d: &Rc<Daemon>, session: u64, remove: bool) -> TraceStats {
    let mut stats = TraceStats::default();
    match d.consumer.flush_session(session, remove).await {
        Ok(streams) => add_stats(&mut stats, &streams),
        Err(e) => stats
            .errors
            .push(format!("the trace may be incomplete: {e}")),
    }
    stats
}

fn add_stats(total: &mut TraceStats, streams: &[StreamStats]) {
    for s in streams {
        total.events_recorded += s.events;
        total.events_discarded += s.discarded;
        total.bytes_written += s.bytes;
        total.streams += 1;
        if let Some(e) = &s.error {
            total.errors.push(format!("{}: {e}", s.path.display()));
        }
    }
}
