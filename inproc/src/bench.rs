//! Recording without a daemon, for the benchmarks: buffers created in-process, every
//! registered event enabled. Not a stable API (`drtrace::__private::bench`).
//!
//! It uses its own registry state and the global channel slots, so run it in a process
//! with no daemon (or with `DRTRACE_DISABLE=1`).

use std::os::fd::OwnedFd;

use drtrace_proto::app::{AppCommand, ChannelKey, ChannelSetup, EnabledEvent};
use drtrace_proto::control::BufferMode;
use drtrace_ringbuf::{ClockSource, Layout, Mode, create_buffer};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::callsite::registered_events;
use crate::endpoint::Endpoint;
use crate::registry::State;

/// A session recording every registered event into one channel of overwrite-mode buffers
/// (so that writers never find them full). Dropping it retires the channel.
#[derive(Debug)]
pub struct Session {
    state: State,
    /// The daemon's side of the buffers (memfds), kept open for the session's life.
    _memfds: Vec<OwnedFd>,
}

/// Starts recording every registered event, except those named in `except`
/// (`provider:event`), with the given clock.
pub fn record_all(
    clock: ClockSource,
    subbuf_size: u32,
    num_subbuf: u32,
    except: &[&str],
) -> Result<Session, String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let cpus = u32::try_from(cpus).map_err(|e| e.to_string())?;
    let layout = Layout {
        subbuf_size,
        num_subbuf,
        mode: Mode::Overwrite,
    };
    let mut memfds = Vec::new();
    let mut fds = Vec::new();
    for cpu in 0..cpus {
        let memfd =
            create_buffer(&layout, clock, &format!("bench_{cpu}")).map_err(|e| e.to_string())?;
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| e.to_string())?;
        fds.push(memfd.try_clone().map_err(|e| e.to_string())?);
        fds.push(OwnedFd::from(efd));
        memfds.push(memfd);
    }
    let ep = Endpoint::Sessiond;
    let events = registered_events();
    let mut state = State::default();
    state.set_known_events(ep, u32::try_from(events.len()).map_err(|e| e.to_string())?);
    let key = ChannelKey {
        session: 1,
        channel: 0,
    };
    let setup = ChannelSetup {
        key,
        name: "bench".into(),
        cpus,
        subbuf_size,
        num_subbuf,
        mode: BufferMode::Overwrite,
    };
    let enabled = (0u32..)
        .zip(&events)
        .filter(|(_, cs)| !except.contains(&cs.description().full_name().as_str()))
        .map(|(id, cs)| EnabledEvent {
            index: cs.index(),
            id,
        })
        .collect();
    for (command, fds) in [
        (AppCommand::AddChannel(setup), fds),
        (
            AppCommand::SetEvents {
                key,
                events: enabled,
            },
            Vec::new(),
        ),
        (
            AppCommand::SetSessionActive {
                session: 1,
                active: true,
            },
            Vec::new(),
        ),
    ] {
        state.apply(ep, command, fds).map_err(|e| e.to_string())?;
    }
    Ok(Session {
        state,
        _memfds: memfds,
    })
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.drop_endpoint(Endpoint::Sessiond);
    }
}
