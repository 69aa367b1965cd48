//! What the daemons asked this process to record, and the commands that change it.
//!
//! The listeners share one [`State`] under a mutex (the emit path never takes it: it reads
//! only the channel slots and the callsites' interest words). Each command is applied
//! completely, then the interest words are rebuilt from the live channels, so a writer sees
//! either the old or the new configuration of a channel, never a half-built one.
//!
//! Commands come from a daemon we checked the credentials of, but they are still input:
//! anything out of range gets an error reply and changes nothing.

use std::os::fd::{OwnedFd, RawFd};

use drtrace_proto::app::{AppCommand, ChannelKey, ChannelSetup, EnabledEvent};
use drtrace_proto::error::{ErrorCode, WireError};

use crate::callsite::{NO_INDEX, for_each_callsite};
use crate::channel::{self, Channel, MAX_SLOTS};
use crate::endpoint::Endpoint;

/// How long retirement waits between turning a channel's events off and replacing its
/// memory, for records already under way to commit (see `retire_where`).
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_millis(10);

/// A channel in a slot.
#[derive(Debug, Clone, Copy)]
struct Live {
    slot: usize,
    channel: &'static Channel,
}

/// What one process records, across daemons.
#[derive(Debug, Default)]
pub(crate) struct State {
    live: Vec<Live>,
    /// Recording state of each session a daemon told us about.
    sessions: Vec<(Endpoint, u64, bool)>,
    /// Descriptor numbers retired writers still hold, ready for reuse (see `channel`).
    parked: Vec<RawFd>,
    /// Events each daemon has been told about (indexes below this are valid for it).
    known_events: [u32; Endpoint::COUNT],
}

/// The outcome of one command.
pub(crate) type Outcome = Result<(), WireError>;

fn bad(code: ErrorCode, message: String) -> WireError {
    WireError::new(code, message)
}

impl State {
    /// A fresh state whose first channels reuse these parked descriptor numbers (a forked
    /// child's inheritance).
    pub(crate) fn with_parked(parked: Vec<RawFd>) -> Self {
        Self {
            parked,
            ..Self::default()
        }
    }

    /// Hands over the parked descriptor numbers (to a forked child's new state).
    pub(crate) fn take_parked(&mut self) -> Vec<RawFd> {
        std::mem::take(&mut self.parked)
    }

    /// The daemon `ep` now knows events `0..count`.
    pub(crate) fn set_known_events(&mut self, ep: Endpoint, count: u32) {
        self.known_events[ep.index()] = count;
    }

    /// Applies one command from daemon `ep`; `fds` are the descriptors that came with it.
    pub(crate) fn apply(
        &mut self,
        ep: Endpoint,
        command: AppCommand,
        fds: Vec<OwnedFd>,
    ) -> Outcome {
        if !matches!(command, AppCommand::AddChannel(_)) && !fds.is_empty() {
            return Err(bad(
                ErrorCode::BadRequest,
                format!(
                    "{} descriptors came with a command that takes none",
                    fds.len()
                ),
            ));
        }
        match command {
            AppCommand::AddChannel(setup) => self.add_channel(ep, setup, fds),
            AppCommand::SetEvents { key, events } => self.set_events(ep, key, &events),
            AppCommand::SetSessionActive { session, active } => {
                self.set_session_active(ep, session, active);
                Ok(())
            }
            AppCommand::RemoveSession { session } => {
                self.remove_session(ep, session);
                Ok(())
            }
            AppCommand::RegistrationDone | AppCommand::Ping => Ok(()),
        }
    }

    fn find(&self, ep: Endpoint, key: ChannelKey) -> Option<usize> {
        self.live
            .iter()
            .position(|l| l.channel.endpoint == ep && l.channel.key == key)
    }

    fn session_active(&self, ep: Endpoint, session: u64) -> bool {
        self.sessions
            .iter()
            .any(|&(e, s, active)| e == ep && s == session && active)
    }

    fn add_channel(&mut self, ep: Endpoint, setup: ChannelSetup, fds: Vec<OwnedFd>) -> Outcome {
        if self.find(ep, setup.key).is_some() {
            return Err(bad(
                ErrorCode::ChannelExists,
                format!(
                    "channel {} of session {} is already mapped",
                    setup.key.channel, setup.key.session
                ),
            ));
        }
        let Some(slot) = (0..MAX_SLOTS).find(|s| self.live.iter().all(|l| l.slot != *s)) else {
            return Err(bad(
                ErrorCode::InvalidState,
                format!("this process already records into {MAX_SLOTS} channels, the most it can"),
            ));
        };
        let buffers = channel::map_buffers(&setup, fds, &mut self.parked)?;
        let active = self.session_active(ep, setup.key.session);
        let channel: &'static Channel = Box::leak(Box::new(Channel::new(
            ep, setup.key, setup.name, buffers, active,
        )));
        channel::publish(slot, channel);
        self.live.push(Live { slot, channel });
        // No event is recorded yet (the id table is empty): no interest changes.
        Ok(())
    }

    fn set_events(&mut self, ep: Endpoint, key: ChannelKey, events: &[EnabledEvent]) -> Outcome {
        let Some(pos) = self.find(ep, key) else {
            return Err(bad(
                ErrorCode::ChannelNotFound,
                format!(
                    "channel {} of session {} is not mapped",
                    key.channel, key.session
                ),
            ));
        };
        let known = self.known_events[ep.index()];
        if let Some(e) = events.iter().find(|e| e.index >= known) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                format!(
                    "event index {} is out of range (this process registered {known} events)",
                    e.index
                ),
            ));
        }
        let ids = &self.live[pos].channel.ids;
        // New ids first, then the events no longer wanted: an event in both sets never
        // stops being recorded.
        for e in events {
            ids.set(e.index, Some(e.id));
        }
        for (index, _) in ids.entries() {
            if !events.iter().any(|e| e.index == index) {
                ids.set(index, None);
            }
        }
        self.rebuild_interest();
        Ok(())
    }

    fn set_session_active(&mut self, ep: Endpoint, session: u64, active: bool) {
        match self
            .sessions
            .iter_mut()
            .find(|(e, s, _)| *e == ep && *s == session)
        {
            Some(entry) => entry.2 = active,
            None => self.sessions.push((ep, session, active)),
        }
        for l in &self.live {
            if l.channel.endpoint == ep && l.channel.key.session == session {
                l.channel.set_active(active);
            }
        }
        self.rebuild_interest();
    }

    fn remove_session(&mut self, ep: Endpoint, session: u64) {
        self.sessions
            .retain(|&(e, s, _)| !(e == ep && s == session));
        self.retire_where(|ch| ch.endpoint == ep && ch.key.session == session);
    }

    /// Forgets everything daemon `ep` set up: it is gone.
    pub(crate) fn drop_endpoint(&mut self, ep: Endpoint) {
        self.sessions.retain(|&(e, _, _)| e != ep);
        self.known_events[ep.index()] = 0;
        self.retire_where(|ch| ch.endpoint == ep);
    }

    /// Retires the channels `which` selects, in the order the module docs of `channel` give.
    fn retire_where(&mut self, which: impl Fn(&Channel) -> bool) {
        let (gone, kept): (Vec<Live>, Vec<Live>) = self.live.iter().partition(|l| which(l.channel));
        if gone.is_empty() {
            return;
        }
        self.live = kept;
        for l in &gone {
            channel::take(l.slot);
        }
        self.rebuild_interest();
        // A grace period: a thread that read the old interest just before the rebuild is
        // finishing its record (tens of nanoseconds, unless preempted); let it commit into the
        // shared buffer, where the reader can complete the sub-buffer, rather than into the
        // private memory that replaces it. Only the listener thread waits here.
        std::thread::sleep(RETIRE_GRACE);
        for l in &gone {
            l.channel.retire(|fd| self.parked.push(fd));
            crate::debug::log(format_args!(
                "retired channel {} (session {}, {})",
                l.channel.name, l.channel.key.session, l.channel.endpoint
            ));
        }
    }

    /// Recomputes every callsite's interest word from the live channels.
    pub(crate) fn rebuild_interest(&self) {
        for_each_callsite(|cs| {
            let index = cs.index();
            let mut mask = 0u64;
            if index != NO_INDEX {
                for l in &self.live {
                    if l.channel.records(index) {
                        mask |= 1 << l.slot;
                    }
                }
            }
            cs.set_interest(mask);
        });
    }

    /// Number of channels mapped.
    #[cfg(test)]
    #[allow(
        dead_code,
        reason = "for the registry tests, which need the default level features"
    )]
    pub(crate) fn live_count(&self) -> usize {
        self.live.len()
    }
}

// These tests record Info and Warning events: they need the default level features.
#[cfg(all(
    test,
    not(any(
        feature = "max_level_off",
        feature = "max_level_error",
        feature = "max_level_warn",
        feature = "max_level_info"
    ))
))]
mod tests {
    use std::os::fd::OwnedFd;
    use std::sync::{Mutex, PoisonError};

    use drtrace_proto::app::{AppCommand, ChannelKey, ChannelSetup, EnabledEvent};
    use drtrace_proto::control::BufferMode;
    use drtrace_proto::error::ErrorCode;
    use drtrace_proto::event::FieldType;
    use drtrace_ringbuf::{ClockSource, Layout, Mode, Reader, create_buffer};
    use nix::sys::eventfd::{EfdFlags, EventFd};

    use super::*;
    use crate::callsite::registered_events;

    use crate::test_records as records;
    use records::Value;

    crate::provider! {
        /// Events of the registry tests.
        mod unit_reg {
            pub(super) fn ping(n: u64);
            #[loglevel(Warning)]
            pub(super) fn text(n: u32, s: &str, raw: &[u8]);
        }
    }

    /// The channel slots are global: one registry test at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    const EP: Endpoint = Endpoint::Sessiond;
    const SUBBUF: u32 = 4096;

    /// The daemon's half of a channel: its buffers and eventfds.
    struct DaemonSide {
        buffers: Vec<(OwnedFd, OwnedFd)>,
    }

    impl DaemonSide {
        fn new(cpus: u32) -> Self {
            let layout = Layout {
                subbuf_size: SUBBUF,
                num_subbuf: 4,
                mode: Mode::Discard,
            };
            let buffers = (0..cpus)
                .map(|i| {
                    let memfd =
                        create_buffer(&layout, ClockSource::Monotonic, &format!("t_{i}")).unwrap();
                    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                        .unwrap();
                    (memfd, OwnedFd::from(efd))
                })
                .collect();
            Self { buffers }
        }

        /// The descriptors an AddChannel carries (duplicates: the daemon keeps its own).
        fn fds(&self) -> Vec<OwnedFd> {
            self.buffers
                .iter()
                .flat_map(|(m, e)| [m.try_clone().unwrap(), e.try_clone().unwrap()])
                .collect()
        }

        fn setup(&self, session: u64, channel: u32) -> ChannelSetup {
            ChannelSetup {
                key: ChannelKey { session, channel },
                name: format!("chan{channel}"),
                cpus: u32::try_from(self.buffers.len()).unwrap(),
                subbuf_size: SUBBUF,
                num_subbuf: 4,
                mode: BufferMode::Discard,
            }
        }

        /// Every record in every buffer, decoded with `types`.
        fn drain(&self, types: &dyn Fn(u32) -> Option<Vec<FieldType>>) -> Vec<records::Record> {
            let mut out = Vec::new();
            for (memfd, _) in &self.buffers {
                let mut reader = Reader::map(memfd, None).unwrap();
                reader.flush();
                let mut buf = Vec::new();
                while let Some(p) = reader.read_packet(&mut buf).unwrap() {
                    out.extend(records::decode(&buf, p.timestamp_begin, types).unwrap());
                }
            }
            out
        }
    }

    fn index_of(name: &str) -> u32 {
        registered_events()
            .iter()
            .find(|cs| cs.description().full_name() == name)
            .map(|cs| cs.index())
            .unwrap()
    }

    fn known() -> u32 {
        u32::try_from(registered_events().len()).unwrap()
    }

    fn types(id: u32) -> Option<Vec<FieldType>> {
        match id {
            3 => Some(vec![FieldType::U64]),
            40 => Some(vec![FieldType::U32, FieldType::String, FieldType::Bytes]),
            _ => None,
        }
    }

    #[test]
    fn commands_map_enable_record_and_retire_a_channel() {
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = State::default();
        st.set_known_events(EP, known());
        let daemon = DaemonSide::new(2);
        let key = ChannelKey {
            session: 7,
            channel: 0,
        };
        st.apply(EP, AppCommand::AddChannel(daemon.setup(7, 0)), daemon.fds())
            .unwrap();
        assert_eq!(st.live_count(), 1);
        let (ping, text) = (index_of("unit_reg:ping"), index_of("unit_reg:text"));
        let events = vec![
            EnabledEvent { index: ping, id: 3 },
            // An id above 30 needs the extended header.
            EnabledEvent {
                index: text,
                id: 40,
            },
        ];
        st.apply(EP, AppCommand::SetEvents { key, events }, Vec::new())
            .unwrap();
        // Not recording until the session starts.
        unit_reg::ping(1);
        assert!(daemon.drain(&types).is_empty());
        st.apply(
            EP,
            AppCommand::SetSessionActive {
                session: 7,
                active: true,
            },
            Vec::new(),
        )
        .unwrap();
        unit_reg::ping(42);
        unit_reg::text(5, "hello\0hidden", b"\x00\x01");
        let recs = daemon.drain(&types);
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert_eq!(recs[0].id, 3);
        assert!(!recs[0].extended);
        assert_eq!(recs[0].fields, vec![Value::U(42)]);
        assert_eq!(recs[1].id, 40);
        assert!(recs[1].extended);
        assert_eq!(
            recs[1].fields,
            vec![
                Value::U(5),
                Value::Str("hello".into()),
                Value::Bytes(vec![0, 1])
            ]
        );
        assert!(recs[1].timestamp >= recs[0].timestamp);

        // Disabling one event leaves the other recorded.
        let events = vec![EnabledEvent { index: ping, id: 3 }];
        st.apply(EP, AppCommand::SetEvents { key, events }, Vec::new())
            .unwrap();
        unit_reg::text(6, "x", b"");
        unit_reg::ping(43);
        let recs = daemon.drain(&types);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].fields, vec![Value::U(43)]);

        // Removing the session retires the channel and parks its two eventfd numbers.
        let retired = st.live[0].channel;
        st.apply(EP, AppCommand::RemoveSession { session: 7 }, Vec::new())
            .unwrap();
        assert_eq!(st.live_count(), 0);
        assert_eq!(st.parked.len(), 2);
        unit_reg::ping(44);
        assert!(daemon.drain(&types).is_empty());
        // A late writer (one that found the channel before it retired) writes into private
        // memory: the daemon's buffers never see it.
        for _ in 0..2 {
            retired.late_write_for_test(3, &45u64.to_le_bytes());
        }
        assert!(daemon.drain(&types).is_empty());

        // The next channel reuses the parked numbers for its eventfds.
        let parked = st.parked.clone();
        let daemon2 = DaemonSide::new(2);
        st.apply(
            EP,
            AppCommand::AddChannel(daemon2.setup(8, 0)),
            daemon2.fds(),
        )
        .unwrap();
        assert!(st.parked.is_empty());
        let ch = st.live[0].channel;
        let mut numbers = ch.wake_numbers();
        numbers.sort_unstable();
        let mut want = parked;
        want.sort_unstable();
        assert_eq!(numbers, want);
        st.drop_endpoint(EP);
        assert_eq!(st.live_count(), 0);
    }

    #[test]
    fn bad_commands_are_refused_and_change_nothing() {
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = State::default();
        st.set_known_events(EP, known());
        let daemon = DaemonSide::new(2);
        let key = ChannelKey {
            session: 1,
            channel: 0,
        };
        // Too few descriptors.
        let mut fds = daemon.fds();
        fds.pop();
        let err = st
            .apply(EP, AppCommand::AddChannel(daemon.setup(1, 0)), fds)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        // A layout that does not match the buffers.
        let mut setup = daemon.setup(1, 0);
        setup.num_subbuf = 8;
        let err = st
            .apply(EP, AppCommand::AddChannel(setup), daemon.fds())
            .unwrap_err();
        assert!(err.message.contains("layout"), "{err}");
        // Descriptors where none belong: memfd and eventfd swapped are not buffers.
        let mut swapped = daemon.fds();
        swapped.swap(0, 1);
        assert!(
            st.apply(EP, AppCommand::AddChannel(daemon.setup(1, 0)), swapped)
                .is_err()
        );
        let err = st.apply(EP, AppCommand::Ping, daemon.fds()).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        // Events of a channel that does not exist, and an index out of range.
        let events = vec![EnabledEvent { index: 0, id: 1 }];
        let err = st
            .apply(EP, AppCommand::SetEvents { key, events }, Vec::new())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ChannelNotFound);
        assert_eq!(st.live_count(), 0);
        st.apply(EP, AppCommand::AddChannel(daemon.setup(1, 0)), daemon.fds())
            .unwrap();
        let err = st
            .apply(EP, AppCommand::AddChannel(daemon.setup(1, 0)), daemon.fds())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ChannelExists);
        let events = vec![EnabledEvent {
            index: known(),
            id: 1,
        }];
        let err = st
            .apply(EP, AppCommand::SetEvents { key, events }, Vec::new())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        // Unknown sessions are fine to stop or remove (idempotent).
        st.apply(EP, AppCommand::RemoveSession { session: 99 }, Vec::new())
            .unwrap();
        assert_eq!(st.live_count(), 1);
        st.drop_endpoint(EP);
    }

    #[test]
    fn sessions_of_one_daemon_do_not_touch_the_others() {
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = State::default();
        st.set_known_events(EP, known());
        st.set_known_events(Endpoint::Broker, known());
        let a = DaemonSide::new(1);
        let b = DaemonSide::new(1);
        let ping = index_of("unit_reg:ping");
        for (ep, d) in [(EP, &a), (Endpoint::Broker, &b)] {
            st.apply(ep, AppCommand::AddChannel(d.setup(1, 0)), d.fds())
                .unwrap();
            let key = ChannelKey {
                session: 1,
                channel: 0,
            };
            let events = vec![EnabledEvent { index: ping, id: 3 }];
            st.apply(ep, AppCommand::SetEvents { key, events }, Vec::new())
                .unwrap();
            st.apply(
                ep,
                AppCommand::SetSessionActive {
                    session: 1,
                    active: true,
                },
                Vec::new(),
            )
            .unwrap();
        }
        unit_reg::ping(1);
        assert_eq!(a.drain(&types).len(), 1);
        assert_eq!(b.drain(&types).len(), 1);
        // The session daemon dies: the broker's session goes on.
        st.drop_endpoint(EP);
        unit_reg::ping(2);
        assert!(a.drain(&types).is_empty());
        assert_eq!(b.drain(&types)[0].fields, vec![Value::U(2)]);
        st.drop_endpoint(Endpoint::Broker);
        unit_reg::ping(3);
        assert!(b.drain(&types).is_empty());
    }
}
