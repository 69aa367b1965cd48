//! `fork()`: the child is a new process and registers as itself.
//!
//! The `pthread_atfork` child handler runs in the child, in the thread that called `fork`,
//! before `fork` returns; no other thread exists there. It:
//!
//! 1. clears every interest word, so no event of the child goes to an inherited channel;
//! 2. empties every channel slot and retires each inherited channel in place (its shared
//!    mappings become private memory, see [`crate::channel`]): the parent's per-PID buffers
//!    belong to the parent, and even a per-UID buffer must be written by the child only
//!    after a daemon has handed it to the child;
//! 3. closes the descriptors of the parent's listeners (daemon connections, inotify,
//!    eventfds): a daemon learns that the parent is gone by its connection closing, which an
//!    inherited copy would prevent;
//! 4. starts a fresh runtime (new state, new listeners, as this pid) and waits for it like
//!    the constructor does: bounded by the ping and register timeouts. It reuses the
//!    parent's settings (timeouts, daemon sockets): the child reads neither the environment
//!    (whose lock a parent thread may have held) nor the password database (NSS locks).
//!
//! Steps 1–3 are atomic stores and `mmap`/`close` system calls, all async-signal-safe. Step 4
//! allocates, creates threads and waits on a condition variable, which POSIX does not promise
//! to work in the child of a multi-threaded process; glibc and musl make `malloc` and thread
//! creation fork-safe (they reset their internal locks in the child), and LTTng-UST
//! re-initializes from its child handler the same way. The parent's runtime (whose mutex a
//! vanished parent thread may hold) is abandoned, never locked, except for a `try_lock` that
//! collects its parked descriptor numbers when it happens to be free.
//!
//! Only `fork()` runs the handler. `vfork` and `posix_spawn` (which Rust's `Command` uses when
//! it can) do not, and need not: their child execs at once. A program that forks and then
//! execs pays the child's registration wait before its exec when a daemon is live, about a
//! millisecond, bounded as at start-up.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::callsite::for_each_callsite;
use crate::channel::{self, MAX_SLOTS};
use crate::registry::State;
use crate::runtime;

/// The `pthread_atfork` child handler.
pub(crate) extern "C" fn child_handler() {
    // Unwinding into libc would abort: contain any panic here.
    let _ = catch_unwind(AssertUnwindSafe(after_fork_child));
}

fn after_fork_child() {
    for_each_callsite(|cs| cs.set_interest(0));
    let mut parked = Vec::new();
    for slot in 0..MAX_SLOTS {
        if let Some(ch) = channel::take(slot) {
            ch.retire(|fd| parked.push(fd));
        }
    }
    let Some(old) = runtime::current() else {
        // The handler is registered by start-up, which makes a runtime first.
        return;
    };
    {
        if let Ok(mut state) = old.state.try_lock() {
            parked.extend(state.take_parked());
        }
        for fd in runtime::listener_fd_numbers(old) {
            // SAFETY: these descriptors belong to the parent's listener threads, which do
            // not exist in the child; the objects owning them are never dropped here (the
            // old runtime is leaked, and the threads' stacks are gone), so nothing uses or
            // closes them again.
            #[allow(unsafe_code)]
            unsafe {
                crate::sys::atfork::close_inherited(fd)
            };
        }
        // Forget them in the (leaked) old runtime too.
        for l in &old.listeners {
            l.conn.store(-1, Ordering::Relaxed);
            l.watch.store(-1, Ordering::Relaxed);
        }
    }
    crate::debug::log(format_args!("forked: registering as a new process"));
    runtime::start_with(
        Instant::now(),
        old.settings.clone(),
        State::with_parked(parked),
    );
}
