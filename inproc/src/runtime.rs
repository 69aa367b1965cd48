//! The process's tracing runtime: configuration, the listener threads, the bounded start-up
//! wait, and the state the listeners share.
//!
//! # Start-up
//!
//! ```text
//! .init_array.60000   provider constructors: register_provider() x N (lock-free list)
//! .init_array         start(): for each daemon, in the constructor's own thread:
//!                       connect + hello, all daemons together bounded by the ping
//!                       timeout (DRTRACE_PING_TIMEOUT_MS, default 10 ms):
//!                         no socket / stale socket (ENOENT, ECONNREFUSED): nothing to wait
//!                         for, a few microseconds
//!                         silent daemon: give up at the ping timeout
//!                         greeted: hand the connection to the listener
//!                     then spawn one listener thread per daemon, and wait until every
//!                     greeted daemon has sent RegistrationDone, bounded by the register
//!                     timeout (DRTRACE_REGISTER_TIMEOUT_MS, default 3000 ms)
//! main()              events from its first line are recorded if a session was active
//! ```
//!
//! The first attempt is made in the constructor rather than in the listener threads so that
//! the common cases (no daemon, a stale socket) cost no wait for threads to be scheduled:
//! on a loaded machine that alone can take a millisecond. The listeners then keep watching
//! in the background: a daemon that was silent, absent or late is registered with as soon
//! as it answers (see `listener`).
//!
//! The linker runs every prioritized `.init_array.NNNNN` entry before the plain `.init_array`
//! ones (GNU ld and lld both sort them with `SORT_BY_INIT_PRIORITY` ahead of the rest), so
//! every provider linked into the executable is registered before `start()` builds the
//! registration message. Providers that arrive later (a `dlopen`ed library) wake the
//! listeners, which send them with `AppMessage::NewEvents`. The alternative, starting from
//! the first provider's constructor, would register an incomplete event list; lazy start-up
//! at the first event would miss the events of the first lines of `main`.
//!
//! The listener threads (named `drtrace-listener`, one per daemon: the user's session daemon
//! and the root broker) outlive the wait: a listener that gave up waiting keeps trying in
//! the background, and every listener waits for its daemon again after it dies.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::endpoint::Endpoint;
use crate::registry::State;
use crate::sys::static_ref::StaticRef;

/// Overrides the hello (ping) timeout of the start-up wait, in ms.
pub const ENV_PING_TIMEOUT_MS: &str = drtrace_proto::paths::ENV_PING_TIMEOUT_MS;
/// Default bound on how long start-up waits for a daemon's hello: short enough that a hung
/// daemon costs a traced program almost nothing, long enough for a healthy daemon.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_millis(10);
/// Turns the library off for the process when set to `1`: no listener, no registration;
/// every event stays disabled.
pub const ENV_DISABLE: &str = "DRTRACE_DISABLE";
/// Default bound on the whole registration wait (`DRTRACE_REGISTER_TIMEOUT_MS`).
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_millis(3000);

/// Timeouts and daemon sockets, read from the environment (and the password database)
/// once, by the first start-up. A forked child reuses its parent's: it must not read the
/// environment or call into NSS, whose locks a vanished parent thread may hold.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ping_timeout: Duration,
    pub(crate) register_timeout: Duration,
    /// Per endpoint: its socket and the uid its daemon must run as, if it can be located.
    pub(crate) endpoints: [Option<(PathBuf, u32)>; Endpoint::COUNT],
}

impl Settings {
    pub(crate) fn from_env() -> Self {
        let locate = |ep: Endpoint| {
            ep.resolve()
                .map_err(|e| crate::debug::log(format_args!("cannot locate the {ep}: {e}")))
                .ok()
        };
        Self {
            ping_timeout: env_ms(ENV_PING_TIMEOUT_MS).unwrap_or(DEFAULT_PING_TIMEOUT),
            register_timeout: env_ms(drtrace_proto::paths::ENV_REGISTER_TIMEOUT_MS)
                .unwrap_or(DEFAULT_REGISTER_TIMEOUT),
            endpoints: Endpoint::ALL.map(locate),
        }
    }

    /// Where daemon `ep` listens, if known.
    pub(crate) fn endpoint(&self, ep: Endpoint) -> Option<&(PathBuf, u32)> {
        self.endpoints[ep.index()].as_ref()
    }
}

/// A duration in ms from the environment; absent or unparsable means the default.
fn env_ms(var: &str) -> Option<Duration> {
    let text = std::env::var(var).ok()?;
    let ms = parse_ms(&text);
    if ms.is_none() {
        crate::debug::log(format_args!("ignoring {var}={text:?}: not a number of ms"));
    }
    ms
}

fn parse_ms(text: &str) -> Option<Duration> {
    text.trim().parse::<u64>().ok().map(Duration::from_millis)
}

/// Where a listener is in the start-up wait's eyes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Greeted; registering and receiving the daemon's sessions (bounded by the register
    /// timeout).
    Registering,
    /// Nothing to wait for: registration done, no daemon, or a failure.
    Done,
}

/// The start-up wait: listeners report their phase, the constructor waits on it.
#[derive(Debug)]
pub(crate) struct Startup {
    phases: Mutex<[Phase; Endpoint::COUNT]>,
    changed: Condvar,
}

impl Startup {
    fn new() -> Self {
        Self {
            phases: Mutex::new([Phase::Done; Endpoint::COUNT]),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, [Phase; Endpoint::COUNT]> {
        self.phases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, ep: Endpoint, phase: Phase) {
        let mut phases = self.lock();
        if phases[ep.index()] != phase {
            phases[ep.index()] = phase;
            self.changed.notify_all();
        }
    }

    /// Waits until no listener is [`Phase::Registering`], or until `deadline`.
    pub(crate) fn wait(&self, deadline: Instant) {
        let mut phases = self.lock();
        loop {
            let now = Instant::now();
            if !phases.contains(&Phase::Registering) || now >= deadline {
                return;
            }
            let left = deadline.saturating_duration_since(now);
            phases = self
                .changed
                .wait_timeout(phases, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The descriptors of one listener, by number, so a forked child can close them.
#[derive(Debug)]
pub(crate) struct ListenerFds {
    /// Written (+1) when new providers are registered; the listener polls it.
    pub(crate) notify: Option<EventFd>,
    /// The daemon connection, or -1.
    pub(crate) conn: AtomicI32,
    /// The inotify instance, or -1.
    pub(crate) watch: AtomicI32,
}

/// Everything the listeners of one process share. One per process: a forked child gets a
/// fresh one and leaks the parent's (whose mutex a parent thread may hold forever).
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) settings: Settings,
    pub(crate) state: Mutex<State>,
    pub(crate) startup: Startup,
    pub(crate) listeners: [ListenerFds; Endpoint::COUNT],
}

impl Runtime {
    fn new(settings: Settings, state: State) -> Self {
        let fds = || ListenerFds {
            notify: EventFd::from_value_and_flags(
                0,
                EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
            )
            .ok(),
            conn: AtomicI32::new(-1),
            watch: AtomicI32::new(-1),
        };
        Self {
            settings,
            state: Mutex::new(state),
            startup: Startup::new(),
            listeners: [fds(), fds()],
        }
    }

    /// The shared state, even if a listener panicked while holding it (each command leaves
    /// it consistent before anything that could panic).
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The current process's runtime (null before start-up).
static RUNTIME: StaticRef<Runtime> = StaticRef::new();
/// Set by the first start-up: the constructor, or a test harness that starts by hand.
static STARTED: AtomicBool = AtomicBool::new(false);

/// The current runtime, if started.
pub(crate) fn current() -> Option<&'static Runtime> {
    RUNTIME.load(Ordering::Acquire)
}

/// Start-up, once per process: called from the library's constructor.
pub fn start() {
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    if std::env::var_os(ENV_DISABLE).is_some_and(|v| v == "1") {
        return;
    }
    if let Err(e) = crate::sys::atfork::register_child_handler(crate::fork::child_handler) {
        crate::debug::log(format_args!(
            "no fork handler ({e}): forked children are not traced"
        ));
    }
    let began = Instant::now();
    start_with(began, Settings::from_env(), State::default());
}

/// Builds a runtime around `state`, spawns the listeners and waits for them, bounded.
pub(crate) fn start_with(began: Instant, settings: Settings, state: State) {
    let register_deadline = began + settings.register_timeout;
    let ping_deadline = began + settings.ping_timeout.min(settings.register_timeout);
    let rt: &'static Runtime = Box::leak(Box::new(Runtime::new(settings, state)));
    // Release: pairs with the Acquire in `current`, which must see the runtime built.
    RUNTIME.store(Some(rt), Ordering::Release);
    for ep in Endpoint::ALL {
        let first = crate::listener::first_attempt(rt, ep, ping_deadline);
        // Only a daemon that answered in time is waited for; one still silent is left to
        // the listener, without delaying start-up further.
        if matches!(first, Some(crate::listener::First::Ready(_))) {
            rt.startup.set(ep, Phase::Registering);
        }
        let spawned = std::thread::Builder::new()
            .name("drtrace-listener".into())
            .stack_size(256 * 1024)
            .spawn(move || crate::listener::run(rt, ep, first));
        if let Err(e) = spawned {
            crate::debug::log(format_args!("cannot start the {ep} listener: {e}"));
            rt.startup.set(ep, Phase::Done);
        }
    }
    rt.startup.wait(register_deadline);
    crate::debug::log(format_args!("start-up done in {:?}", began.elapsed()));
}

/// Called after a provider is registered: wakes the listeners so that they send its events.
pub(crate) fn events_added() {
    if let Some(rt) = current() {
        for fds in &rt.listeners {
            if let Some(notify) = &fds.notify {
                // A full counter (EAGAIN) already means "wake up".
                let _ = notify.write(1);
            }
        }
    }
}

/// Raw numbers of every descriptor the runtime's listeners hold, for a forked child.
pub(crate) fn listener_fd_numbers(rt: &Runtime) -> impl Iterator<Item = i32> + '_ {
    rt.listeners.iter().flat_map(|l| {
        [
            l.conn.load(Ordering::Relaxed),
            l.watch.load(Ordering::Relaxed),
            l.notify.as_ref().map_or(-1, |n| n.as_fd().as_raw_fd()),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_ends_at_once_when_nobody_registers() {
        let s = Startup::new();
        let t = Instant::now();
        s.wait(t + Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_registration_that_never_ends_is_waited_for_until_the_deadline() {
        let s = Startup::new();
        s.set(Endpoint::Broker, Phase::Registering);
        let t = Instant::now();
        s.wait(t + Duration::from_millis(30));
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn registration_is_waited_for_until_done() {
        let s = std::sync::Arc::new(Startup::new());
        s.set(Endpoint::Sessiond, Phase::Registering);
        let s2 = s.clone();
        let t = Instant::now();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.set(Endpoint::Sessiond, Phase::Done);
        });
        s.wait(t + Duration::from_secs(5));
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        h.join().unwrap();
    }

    #[test]
    fn timeouts_parse_as_ms_and_garbage_is_refused() {
        assert_eq!(parse_ms(" 250 "), Some(Duration::from_millis(250)));
        assert_eq!(parse_ms("0"), Some(Duration::ZERO));
        assert_eq!(parse_ms("3s"), None);
        assert_eq!(parse_ms("-1"), None);
        assert_eq!(parse_ms(""), None);
    }
}
