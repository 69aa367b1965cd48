//! drtrace's in-process library: tracepoints for Rust programs.
//!
//! A program declares its events with [`provider!`] and calls them like functions. While no
//! tracing session records an event, a call costs one relaxed atomic load and a branch. When
//! one does, the call writes a record (a timestamp, the event id and the fields) into a
//! per-CPU ring buffer shared with the drtrace consumer: no allocation, no lock, no system
//! call (except the rare wake-up of a waiting reader).
//!
//! ```
//! drtrace::provider! {
//!     /// Events of the demo web server.
//!     pub mod demo_http {
//!         /// A request was served.
//!         #[loglevel(Info)]
//!         pub fn request(id: u64, path: &str, ok: bool, elapsed_us: u32);
//!         /// A periodic tick (no `loglevel`: `Info`).
//!         pub fn tick(n: u64);
//!         /// Every field type.
//!         #[loglevel(Debug)]
//!         pub fn all(a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64,
//!                    x: f32, y: f64, flag: bool, s: &str, raw: &[u8]);
//!     }
//! }
//!
//! demo_http::request(1, "/index", true, 42);
//! demo_http::tick(7);
//! demo_http::all(1, 2, 3, 4, -1, -2, -3, -4, 0.5, 0.25, true, "s", b"raw");
//! ```
//!
//! # Declaring events
//!
//! `provider!` takes one module. The module's name is the *provider* name and each `fn`
//! declares an *event*, named `provider:event` in the trace and on the command line
//! (`drtrace enable-event demo_http:request`). Fields are the arguments, in order; their types
//! are those implementing [`Field`]: `u8`–`u64`, `i8`–`i64`, `f32`, `f64`, `bool`, `&str` and
//! `&[u8]`. Doc comments are kept; an optional `#[loglevel(Level)]` (a [`LogLevel`] variant:
//! `Emergency` … `Debug`, default `Info`) goes after them. Names must be ASCII identifiers
//! (events with other names are not registered).
//!
//! The cargo features `max_level_off`, `max_level_error`, `max_level_warn`, `max_level_info`
//! and `max_level_debug` compile the events above that level out entirely (their calls
//! become empty functions and they are not registered), like `tracing`'s `max_level_*`.
//!
//! # Registration before `main`
//!
//! Each `provider!` expansion contains a constructor: a function pointer in the
//! `.init_array.60000` section, which the dynamic loader runs before `main` (or when a library
//! is `dlopen`ed). It is an `unsafe` attribute (`#[unsafe(link_section)]`) marked
//! `#[allow(unsafe_code)]`, so a crate using `provider!` may `deny(unsafe_code)` but not
//! `forbid(unsafe_code)` (a `forbid` cannot be allowed locally). The constructor links the
//! provider's static descriptors onto a lock-free list.
//!
//! This library's own constructor sits in the plain `.init_array`, which the linker places
//! after every prioritized `.init_array.NNNNN` entry, so it runs once every provider of the
//! executable is registered. It greets each daemon once (the user's session daemon and the
//! root broker; connect and hello, bounded by the ping timeout), starts one listener thread
//! (`drtrace-listener`) per daemon, and waits, bounded, for the daemons that answered to
//! register the process and hand it the sessions that are already recording: events from
//! the first line of `main` are recorded. The design notes of the private modules say more: `runtime`
//! for the bounds (`DRTRACE_PING_TIMEOUT_MS`, `DRTRACE_REGISTER_TIMEOUT_MS`), `listener` for
//! how daemons that appear, die and restart later are followed, `channel` for how buffers
//! are written and retired, and `fork` for forked children.
//!
//! # Never in the way
//!
//! Tracing never panics, aborts or blocks the program: a missing, stale or hung daemon costs
//! start-up at most the ping timeout (10 ms by default); a full buffer drops the event and
//! counts it; a daemon's bad command gets an error reply. Diagnostics go to stderr only when
//! `DRTRACE_DEBUG=1`. `DRTRACE_DISABLE=1` turns tracing off for the process.
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod bench;
mod callsite;
mod channel;
mod debug;
mod endpoint;
mod field;
mod fork;
mod listener;
mod registry;
mod runtime;
mod sys;
#[cfg(test)]
#[allow(dead_code, unreachable_pub)]
mod test_records;

pub use callsite::MAX_LEVEL;
pub use debug::ENV_DEBUG;
pub use drtrace_proto::event::LogLevel;
pub use drtrace_proto::paths::ENV_REGISTER_TIMEOUT_MS;
pub use field::Field;
pub use runtime::{
    DEFAULT_PING_TIMEOUT, DEFAULT_REGISTER_TIMEOUT, ENV_DISABLE, ENV_PING_TIMEOUT_MS,
};

/// Declares a provider: a module of events, each callable as a function.
///
/// See the [crate documentation](crate) for the syntax and an example.
#[macro_export]
macro_rules! provider {
    (
        $(#[$pmeta:meta])*
        $pvis:vis mod $provider:ident {
            $(
                $(#[doc = $doc:expr])*
                $(#[loglevel($level:ident)])?
                $vis:vis fn $event:ident ( $($arg:ident : $ty:ty),* $(,)? );
            )*
        }
    ) => {
        $(#[$pmeta])*
        $pvis mod $provider {
            /// Positions of the events in the callsite array.
            #[allow(non_camel_case_types, dead_code)]
            #[repr(usize)]
            enum __DrtraceEvent {
                $($event,)*
            }

            static __DRTRACE_CALLSITES: [
                $crate::__private::Callsite;
                $crate::__private::count(&[$(stringify!($event)),*])
            ] = [
                $(
                    $crate::__private::Callsite::new(
                        stringify!($event),
                        $crate::__drtrace_level!($($level)?),
                        &[$(
                            $crate::__private::FieldMeta::new(
                                stringify!($arg),
                                <$ty as $crate::Field>::TYPE,
                            )
                        ),*],
                    ),
                )*
            ];

            static __DRTRACE_PROVIDER: $crate::__private::Provider =
                $crate::__private::Provider::new(stringify!($provider), &__DRTRACE_CALLSITES);

            // Runs before `main` (or at dlopen), ahead of drtrace's own start-up (plain
            // `.init_array`): see the crate docs.
            #[used]
            #[allow(unsafe_code)]
            #[unsafe(link_section = ".init_array.60000")]
            static __DRTRACE_REGISTER: extern "C" fn() = {
                extern "C" fn __drtrace_register() {
                    $crate::__private::register_provider(&__DRTRACE_PROVIDER);
                }
                __drtrace_register
            };

            $(
                $(#[doc = $doc])*
                #[inline(always)]
                #[allow(clippy::too_many_arguments)]
                $vis fn $event($($arg: $ty),*) {
                    const __LEVEL: $crate::LogLevel = $crate::__drtrace_level!($($level)?);
                    const __ON: bool = $crate::__private::level_enabled(__LEVEL);
                    if __ON {
                        let cs = &__DRTRACE_CALLSITES[__DrtraceEvent::$event as usize];
                        let mask = cs.interest();
                        if mask != 0 {
                            #[cold]
                            #[inline(never)]
                            #[allow(clippy::too_many_arguments)]
                            fn __slow(
                                cs: &'static $crate::__private::Callsite,
                                mask: u64,
                                $($arg: $ty),*
                            ) {
                                $(let $arg = $crate::Field::prepare(&$arg);)*
                                let len = 0usize $(+ $crate::__private::Encode::encoded_len(&$arg))*;
                                $crate::__private::record(cs, mask, len, |_slot| {
                                    $($crate::__private::Encode::encode(&$arg, _slot);)*
                                });
                            }
                            __slow(cs, mask, $($arg),*);
                        }
                    }
                }
            )*
        }
    };
}

/// The level of an event: the one given, or `Info`.
#[doc(hidden)]
#[macro_export]
macro_rules! __drtrace_level {
    () => {
        $crate::LogLevel::Info
    };
    ($level:ident) => {
        $crate::LogLevel::$level
    };
}

/// What the `provider!` expansion and the benchmarks use; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::callsite::{Callsite, FieldMeta, Provider, level_enabled, register_provider};
    pub use crate::channel::record;
    pub use crate::field::Encode;
    /// The start-up the library's constructor runs; idempotent. For programs whose
    /// constructors do not run (or benchmarks that want it explicit).
    pub use crate::runtime::start;

    /// In-process recording for the benchmarks.
    pub mod bench {
        pub use crate::bench::{Session, record_all};
    }

    /// Number of events of a provider (for the callsite array's length).
    pub const fn count(names: &[&str]) -> usize {
        names.len()
    }
}

/// The library's start-up, after every provider's constructor (see the crate docs). Not in
/// the unit tests, which drive the pieces by hand.
#[cfg(not(test))]
#[used]
#[allow(unsafe_code)]
#[unsafe(link_section = ".init_array")]
static START: extern "C" fn() = {
    extern "C" fn drtrace_start() {
        // Unwinding out of a constructor would abort the program.
        let _ = std::panic::catch_unwind(runtime::start);
    }
    drtrace_start
};
