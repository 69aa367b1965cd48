//! What a started session owns: its buffer sets, their metadata and streams.
//!
//! A *buffer set* is one CTF trace inside the session directory: one metadata file and, per
//! channel, one ring buffer and one stream file per CPU. Per-UID channels of a session share
//! one set (`ust/uid/<uid>/64-bit/`) across all of the user's apps; per-PID channels get one
//! set per app (`ust/pid/<procname>-<pid>-<datetime>/`). Each set numbers its events itself
//! and declares each number once in its metadata, so the same event in two apps of one uid
//! gets one id.
//!
//! Sets are created when a session first starts (per-UID) or when an app first needs one
//! (per-PID), and live until the session is destroyed; buffers are never reallocated, so
//! apps that register late, or a respawned consumer, find the same memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use drtrace_ctf::metadata::{
    Domain as CtfDomain, EnvValue, StreamInfo, TraceInfo, event_declaration, preamble,
};
use drtrace_proto::app::{ChannelKey, ChannelSetup, EnabledEvent};
use drtrace_proto::consumer::{StreamKey, StreamSetup};
use drtrace_proto::control::{BufferMode, BufferOwnership, ChannelConfig, Domain};
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::event::EventDescription;
use drtrace_proto::names::wildcard_match;

use crate::clock::ClockSetup;
use crate::registry::{Channel, Session};

fn io_error(what: &str, path: &Path, e: std::io::Error) -> WireError {
    WireError::new(
        ErrorCode::Io,
        format!("cannot {what} {}: {e}", path.display()),
    )
}

/// One per-CPU buffer of a channel in a set.
#[derive(Debug)]
pub(crate) struct CpuBuffer {
    pub(crate) memfd: OwnedFd,
    pub(crate) eventfd: OwnedFd,
    pub(crate) stream: StreamKey,
}

/// A stream to hand to the consumer, produced when a set allocates buffers.
#[derive(Debug)]
pub(crate) struct NewStream {
    pub(crate) setup: StreamSetup,
    pub(crate) memfd: OwnedFd,
    pub(crate) eventfd: OwnedFd,
}

/// One metadata file and the buffers of the channels it declares.
#[derive(Debug)]
pub(crate) struct BufferSet {
    metadata_path: PathBuf,
    metadata: File,
    ids: HashMap<(u32, EventDescription), u32>,
    next_id: BTreeMap<u32, u32>,
    pub(crate) channels: BTreeMap<u32, Vec<CpuBuffer>>,
}

/// What a set needs to know about its session to create itself.
pub(crate) struct SetContext<'a> {
    pub(crate) session_id: u64,
    pub(crate) session: &'a Session,
    pub(crate) clock: &'a ClockSetup,
    pub(crate) cpus: u32,
    pub(crate) ownership: BufferOwnership,
    /// `procname` and `vpid` for per-PID sets.
    pub(crate) app: Option<(&'a str, i32)>,
}

impl BufferSet {
    /// Creates the set's directory and metadata, and allocates the buffers of every channel
    /// of the session with the set's ownership; returns the streams for the consumer.
    pub(crate) fn create(
        ctx: &SetContext<'_>,
        dir: PathBuf,
        next_stream: &mut u64,
    ) -> Result<(Self, Vec<NewStream>), WireError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(|e| io_error("create", &dir, e))?;
        let channels: Vec<(u32, &Channel)> = user_channels(ctx.session)
            .filter(|(_, c)| c.config.buffers == ctx.ownership)
            .collect();
        let streams: Vec<StreamInfo> = channels
            .iter()
            .map(|(idx, c)| StreamInfo {
                id: *idx,
                channel: c.config.name.clone(),
            })
            .collect();
        let mut extra_env = Vec::new();
        if let Some((procname, pid)) = ctx.app {
            extra_env.push(("procname".to_owned(), EnvValue::Str(procname.to_owned())));
            extra_env.push(("vpid".to_owned(), EnvValue::Int(i64::from(pid))));
        }
        // Each metadata file is a trace of its own and needs its own UUID (docs/format.md).
        let rel = dir
            .strip_prefix(&ctx.session.output)
            .unwrap_or(&dir)
            .to_string_lossy()
            .into_owned();
        let trace_uuid = drtrace_ctf::metadata::trace_uuid(ctx.session.uuid, &rel);
        let info = trace_info(
            trace_uuid,
            CtfDomain::Ust,
            &ctx.session.name,
            extra_env,
            ctx.clock.clock_info(),
        );
        let text = preamble(&info, &streams).map_err(|e| {
            WireError::new(ErrorCode::Internal, format!("cannot write metadata: {e}"))
        })?;
        let metadata_path = dir.join("metadata");
        let mut metadata = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc_flags())
            .open(&metadata_path)
            .map_err(|e| io_error("create", &metadata_path, e))?;
        metadata
            .write_all(text.as_bytes())
            .map_err(|e| io_error("write", &metadata_path, e))?;
        let mut set = BufferSet {
            metadata_path,
            metadata,
            ids: HashMap::new(),
            next_id: BTreeMap::new(),
            channels: BTreeMap::new(),
        };
        let mut new_streams = Vec::new();
        for (idx, channel) in channels {
            let mut cpus = Vec::new();
            for cpu in 0..ctx.cpus {
                let (memfd, eventfd) = allocate(&channel.config, ctx, cpu)?;
                let stream = StreamKey(*next_stream);
                *next_stream += 1;
                new_streams.push(NewStream {
                    setup: StreamSetup {
                        key: stream,
                        session: ctx.session_id,
                        trace_uuid,
                        stream_id: idx,
                        cpu,
                        mode: channel.config.mode,
                        switch_timer_ms: channel.config.switch_timer_ms,
                        path: dir.join(format!("{}_{cpu}", channel.config.name)),
                    },
                    memfd: dup(&memfd)?,
                    eventfd: dup(&eventfd)?,
                });
                cpus.push(CpuBuffer {
                    memfd,
                    eventfd,
                    stream,
                });
            }
            set.channels.insert(idx, cpus);
        }
        Ok((set, new_streams))
    }

    /// The id of `desc` in channel `channel`, declaring it in the metadata if new.
    pub(crate) fn id_for(
        &mut self,
        channel: u32,
        desc: &EventDescription,
    ) -> Result<u32, WireError> {
        if let Some(id) = self.ids.get(&(channel, desc.clone())) {
            return Ok(*id);
        }
        let next = self.next_id.entry(channel).or_insert(0);
        let id = *next;
        let text = event_declaration(channel, id, desc).map_err(|e| {
            WireError::new(
                ErrorCode::InvalidArgument,
                format!("event {}: {e}", desc.full_name()),
            )
        })?;
        self.metadata
            .write_all(text.as_bytes())
            .map_err(|e| io_error("write", &self.metadata_path, e))?;
        *next += 1;
        self.ids.insert((channel, desc.clone()), id);
        Ok(id)
    }

    /// The streams of this set.
    pub(crate) fn stream_keys(&self) -> impl Iterator<Item = StreamKey> + '_ {
        self.channels.values().flatten().map(|b| b.stream)
    }

    /// The AddChannel command for channel `idx` and the descriptors it carries.
    pub(crate) fn channel_setup(
        &self,
        key: ChannelKey,
        config: &ChannelConfig,
    ) -> Result<(ChannelSetup, Vec<OwnedFd>), WireError> {
        let buffers = self.channels.get(&key.channel).ok_or_else(|| {
            WireError::new(
                ErrorCode::Internal,
                format!("no buffers for channel {}", key.channel),
            )
        })?;
        let mut fds = Vec::with_capacity(buffers.len() * 2);
        for b in buffers {
            fds.push(dup(&b.memfd)?);
            fds.push(dup(&b.eventfd)?);
        }
        let setup = ChannelSetup {
            key,
            name: config.name.clone(),
            cpus: u32::try_from(buffers.len()).unwrap_or(u32::MAX),
            subbuf_size: config.subbuf_size,
            num_subbuf: config.num_subbuf,
            mode: config.mode,
        };
        Ok((setup, fds))
    }
}

/// The user-domain channels of a session with their indexes (the CTF stream ids).
pub(crate) fn user_channels(session: &Session) -> impl Iterator<Item = (u32, &Channel)> {
    session
        .channels
        .iter()
        .enumerate()
        .filter(|(_, c)| c.config.domain == Domain::User)
        .map(|(i, c)| (u32::try_from(i).unwrap_or(u32::MAX), c))
}

/// The events of `events` (by index) that `channel`'s enabled rules select.
pub(crate) fn selected_events<'a>(
    channel: &'a Channel,
    events: &'a [EventDescription],
) -> impl Iterator<Item = (u32, &'a EventDescription)> + 'a {
    events.iter().enumerate().filter_map(move |(i, desc)| {
        if !channel.enabled {
            return None;
        }
        let name = desc.full_name();
        let selected = channel.rules.iter().any(|r| {
            r.enabled
                && wildcard_match(&r.rule.pattern, &name)
                && r.rule.loglevel.is_none_or(|f| f.accepts(desc.loglevel))
        });
        selected.then(|| (u32::try_from(i).unwrap_or(u32::MAX), desc))
    })
}

/// Maps selected events to ids in `set`, declaring new ones.
pub(crate) fn enabled_events(
    set: &mut BufferSet,
    channel_idx: u32,
    channel: &Channel,
    events: &[EventDescription],
) -> Result<Vec<EnabledEvent>, WireError> {
    selected_events(channel, events)
        .map(|(index, desc)| {
            set.id_for(channel_idx, desc)
                .map(|id| EnabledEvent { index, id })
        })
        .collect()
}

fn allocate(
    config: &ChannelConfig,
    ctx: &SetContext<'_>,
    cpu: u32,
) -> Result<(OwnedFd, OwnedFd), WireError> {
    let layout = drtrace_ringbuf::Layout {
        subbuf_size: config.subbuf_size,
        num_subbuf: config.num_subbuf,
        mode: match config.mode {
            BufferMode::Discard => drtrace_ringbuf::Mode::Discard,
            BufferMode::Overwrite => drtrace_ringbuf::Mode::Overwrite,
        },
    };
    let name = format!("drtrace-{}-{}-{cpu}", ctx.session.name, config.name);
    let memfd = drtrace_ringbuf::create_buffer(&layout, ctx.clock.source, &name).map_err(|e| {
        WireError::new(
            ErrorCode::Io,
            format!("cannot allocate buffer for channel '{}': {e}", config.name),
        )
    })?;
    let eventfd = nix::sys::eventfd::EventFd::from_flags(
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .map_err(|e| WireError::new(ErrorCode::Io, format!("cannot create eventfd: {e}")))?;
    Ok((memfd, OwnedFd::from(eventfd)))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, WireError> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| WireError::new(ErrorCode::Io, format!("cannot duplicate descriptor: {e}")))
}

fn libc_flags() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits()
}

/// The `trace`, `env` and `clock` facts of a new metadata file: this drtrace's version, the
/// host's name and the time of creation around what the caller knows.
pub fn trace_info(
    uuid: uuid::Uuid,
    domain: CtfDomain,
    trace_name: &str,
    extra_env: Vec<(String, EnvValue)>,
    clock: drtrace_ctf::metadata::ClockInfo,
) -> TraceInfo {
    let version = |i: usize| -> u32 {
        env!("CARGO_PKG_VERSION")
            .split('.')
            .nth(i)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    TraceInfo {
        uuid,
        domain,
        tracer_major: version(0),
        tracer_minor: version(1),
        tracer_patchlevel: version(2),
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".to_owned()),
        trace_name: trace_name.to_owned(),
        creation_datetime: crate::clock::compact_utc(SystemTime::now(), "T", "+0000"),
        extra_env,
        clock,
    }
}

/// The directory of the per-UID set of a session.
pub(crate) fn uid_set_dir(output: &Path, uid: u32) -> PathBuf {
    output.join("ust/uid").join(uid.to_string()).join("64-bit")
}

/// The directory of an app's per-PID set.
pub(crate) fn pid_set_dir(
    output: &Path,
    procname: &str,
    pid: i32,
    registered: SystemTime,
) -> PathBuf {
    let safe: String = procname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    output.join("ust/pid").join(format!(
        "{safe}-{pid}-{}",
        crate::clock::compact_utc(registered, "-", "")
    ))
}

/// What a started session owns.
#[derive(Debug)]
pub(crate) struct Recording {
    /// Per-UID buffer sets, by the uid of the apps writing them: apps of one user never
    /// get another user's buffers.
    pub(crate) uid_sets: BTreeMap<u32, BufferSet>,
    /// Per-PID buffer sets, by app id.
    pub(crate) pid_sets: BTreeMap<u64, BufferSet>,
    /// The kernel sub-session, once created.
    pub(crate) kernel: Option<u64>,
}

impl Recording {
    pub(crate) fn new() -> Self {
        Self {
            uid_sets: BTreeMap::new(),
            pid_sets: BTreeMap::new(),
            kernel: None,
        }
    }
}

/// Number of possible CPUs (not only online ones: a CPU brought online later still needs
/// its buffer).
pub(crate) fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<u32>().ok())
                .max()
        })
        .map(|max| max + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn per_pid_directories_are_named_like_lttng() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_763_496);
        let dir = pid_set_dir(Path::new("/t"), "my app/x", 42, t);
        assert_eq!(dir, PathBuf::from("/t/ust/pid/my_app_x-42-20261127-071136"));
        assert_eq!(
            crate::clock::compact_utc(t, "T", "+0000"),
            "20261127T071136+0000"
        );
    }

    #[test]
    fn possible_cpus_is_at_least_one() {
        assert!(possible_cpus() >= 1);
    }
}
