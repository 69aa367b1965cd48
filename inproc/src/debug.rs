//! Diagnostics for the people debugging tracing itself: printed to stderr only when
//! `DRTRACE_DEBUG=1`, otherwise silent (the host program's stderr is not ours).

use std::fmt;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU8, Ordering};

/// Turns diagnostics on when set to `1`.
pub const ENV_DEBUG: &str = "DRTRACE_DEBUG";

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// True when `DRTRACE_DEBUG=1` (read once).
pub(crate) fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        UNKNOWN => {
            let on = std::env::var_os(ENV_DEBUG).is_some_and(|v| v == "1");
            STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
        s => s == ON,
    }
}

/// Prints one diagnostic line, prefixed with the pid, when enabled. Write errors are ignored:
/// a closed stderr must not disturb the host.
///
/// The line goes out in one `write(2)` on descriptor 2, without taking the lock of
/// `std::io::stderr()`: a forked child logs too, and the lock may have been held by a parent
/// thread that does not exist in the child.
pub(crate) fn log(args: fmt::Arguments<'_>) {
    if enabled() {
        let line = format!("drtrace[{}]: {args}\n", std::process::id());
        let _ = nix::unistd::write(std::io::stderr().as_fd(), line.as_bytes());
    }
}
