//! `drtrace-tracebench`: the drtrace side of the side-by-side benchmark with LTTng-UST.
//!
//! It mirrors `benches/lttng/bench.c` (same event shapes, same loop, same output), so that
//! `benches/run` can time both programs the same way:
//!
//! ```text
//! drtrace-tracebench u64|int_string ITERATIONS THREADS [RATE]
//!     emits ITERATIONS events from each of THREADS threads and prints the wall time
//!     divided by ITERATIONS, in ns (the per-thread cost of one event). With RATE (events/s
//!     over all threads) the writers pace themselves and a second number is printed: the
//!     rate achieved.
//! drtrace-tracebench noop
//!     exits at once: the cost of start-up alone (the library's constructor).
//! drtrace-tracebench primitives ITERATIONS
//!     the costs of the building blocks of the emit path on this machine, in ns per call.
//! ```
//!
//! Events are `bench:u64` (one `u64`) and `bench:int_string` (an `i32` and the string
//! `"hello, tracer"`), as in `benches/lttng/bench_tp.h`.
//!
//! This is a benchmark program, not a test: nothing here runs under `cargo test`.
#![warn(missing_docs)]

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drtrace_ringbuf::{ClockSource, clock};

drtrace::provider! {
    /// The benchmark's events: the shapes of `benches/lttng/bench_tp.h`.
    pub mod bench {
        /// One u64 field.
        pub fn u64(v: u64);
        /// An int and a string.
        pub fn int_string(n: i32, s: &str);
    }
}

const USAGE: &str = "usage: drtrace-tracebench u64|int_string ITERATIONS THREADS [RATE]\n       \
                     drtrace-tracebench noop\n       \
                     drtrace-tracebench primitives ITERATIONS";

/// The string of `int_string`, as in bench.c.
const HELLO: &str = "hello, tracer";

#[derive(Debug, Clone, Copy)]
enum Kind {
    U64,
    IntString,
}

/// How a paced writer spreads its events: `per_s` events per second, checked every
/// `batch` events.
#[derive(Debug, Clone, Copy)]
struct Pace {
    per_s: u64,
    batch: u64,
}

impl Pace {
    /// A thread's share of `total_per_s`, checked about every 100 µs of events: often
    /// enough to keep bursts far smaller than a sub-buffer, rarely enough that the clock
    /// reads cost nothing.
    fn new(total_per_s: u64, threads: u64) -> Self {
        let per_s = (total_per_s / threads).max(1);
        Self {
            per_s,
            batch: (per_s / 10_000).max(1),
        }
    }

    /// When event `i` is due, counted from the thread's start.
    fn due(&self, i: u64) -> Duration {
        let ns = u128::from(i) * 1_000_000_000 / u128::from(self.per_s);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Calls `f(0..iterations)`, paced if asked. Inlined into each caller, so the unpaced loop
/// is the plain loop of bench.c.
#[inline(always)]
fn emit(iterations: u64, pace: Option<Pace>, mut f: impl FnMut(u64)) {
    let Some(pace) = pace else {
        for i in 0..iterations {
            f(i);
        }
        return;
    };
    let start = Instant::now();
    let mut i = 0;
    while i < iterations {
        let end = (i + pace.batch).min(iterations);
        for j in i..end {
            f(j);
        }
        i = end;
        // Sleep rather than spin when ahead: on 2 CPUs the consumer needs the time.
        let due = start + pace.due(i);
        if let Some(rest) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
    }
}

fn writer(kind: Kind, iterations: u64, pace: Option<Pace>) {
    match kind {
        Kind::U64 => emit(iterations, pace, bench::u64),
        Kind::IntString => {
            // Opaque, like the C string the LTTng probe receives through a function
            // pointer: the NUL scan is not constant-folded away.
            let s = black_box(HELLO);
            #[allow(
                clippy::cast_possible_truncation,
                reason = "a wrapping counter, as in bench.c"
            )]
            emit(iterations, pace, |i| bench::int_string(i as i32, s));
        }
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "ns and event counts far below 2^52"
)]
fn run_emit(kind: Kind, iterations: u64, threads: u64, rate: Option<u64>) {
    let pace = rate.map(|r| Pace::new(r, threads));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || writer(kind, iterations, pace));
        }
    });
    let elapsed = start.elapsed();
    let ns = elapsed.as_nanos() as f64 / iterations.max(1) as f64;
    match rate {
        None => println!("{ns:.3}"),
        Some(_) => {
            let achieved = (iterations * threads) as f64 / elapsed.as_secs_f64();
            println!("{ns:.3} {achieved:.0}");
        }
    }
}

/// ns per call of `f` over `n` calls: the median of 5 runs.
#[allow(
    clippy::cast_precision_loss,
    reason = "ns and iteration counts far below 2^52"
)]
fn per_call(n: u64, mut f: impl FnMut(u64) -> u64) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut acc = 0u64;
            for i in 0..n {
                acc = acc.wrapping_add(f(black_box(i)));
            }
            black_box(acc);
            t.elapsed().as_nanos() as f64 / n.max(1) as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Raw TSC reads, to compare with the ordered read the ring buffer uses (`rdtscp`, in
/// `drtrace_ringbuf::clock::read`).
#[cfg(target_arch = "x86_64")]
mod tsc {
    /// `rdtsc` alone: may execute before earlier loads complete.
    #[inline(always)]
    pub(crate) fn unordered() -> u64 {
        // SAFETY: rdtsc has no memory operands and no preconditions; Linux leaves it enabled
        // in user mode (CR4.TSD clear), as drtrace_ringbuf::clock already relies on.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// `lfence; rdtsc`: the other ordered read (the ring buffer's before it took `rdtscp`).
    #[inline(always)]
    pub(crate) fn lfence_rdtsc() -> u64 {
        // SAFETY: lfence and rdtsc have no memory operands and no preconditions; user mode
        // may execute rdtsc (CR4.TSD clear).
        unsafe {
            core::arch::x86_64::_mm_lfence();
            core::arch::x86_64::_rdtsc()
        }
    }

    /// `rdtscp`: waits until every earlier instruction has executed (so earlier loads have
    /// completed): the ordered read the ring buffer uses.
    #[inline(always)]
    pub(crate) fn rdtscp() -> u64 {
        let mut aux = 0u32;
        // SAFETY: rdtscp writes only `aux`, a valid local; the CPU has it (rdtscp is in the
        // flags of every x86_64 CPU Linux runs on that has an invariant TSC, and the kernel
        // uses it for getcpu), and user mode may execute it (CR4.TSD clear).
        unsafe { core::arch::x86_64::__rdtscp(&mut aux) }
    }
}

/// The building blocks of an enabled event, each alone in a loop (the loop's own cost is
/// printed first): what `benches/run` compares the per-event cost with.
fn run_primitives(n: u64) {
    let word = AtomicU64::new(0);
    let mut rows: Vec<(&str, f64)> = vec![
        ("loop", per_call(n, |i| i)),
        (
            "drtrace's clock read (rdtscp)",
            per_call(n, |_| clock::read(ClockSource::Tsc)),
        ),
        (
            "clock_gettime(MONOTONIC)",
            per_call(n, |_| clock::monotonic_ns()),
        ),
        (
            "sched_getcpu",
            per_call(n, |_| {
                nix::sched::sched_getcpu().map_or(0, |c| u64::try_from(c).unwrap_or(0))
            }),
        ),
        (
            "lock cmpxchg (uncontended)",
            per_call(n, |_| {
                let cur = word.load(Ordering::Acquire);
                match word.compare_exchange_weak(cur, cur + 12, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(v) | Err(v) => v,
                }
            }),
        ),
        (
            "lock xadd (uncontended)",
            per_call(n, |_| word.fetch_add(12, Ordering::Release)),
        ),
        (
            "disabled event",
            per_call(n, |i| {
                bench::u64(i);
                0
            }),
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    rows.extend([
        ("rdtsc alone (unordered)", per_call(n, |_| tsc::unordered())),
        ("rdtscp alone", per_call(n, |_| tsc::rdtscp())),
        ("lfence+rdtsc", per_call(n, |_| tsc::lfence_rdtsc())),
    ]);
    for (name, ns) in rows {
        println!("{name}\t{ns:.2}");
    }
}

fn parse(arg: Option<&String>, what: &str) -> Result<u64, String> {
    let text = arg.ok_or_else(|| format!("missing {what}"))?;
    text.parse()
        .map_err(|_| format!("{what} must be a number, not {text:?}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        // Start-up timing: the constructor has run; nothing else to do.
        Some("noop") => Ok(()),
        Some("primitives") => parse(args.get(1), "ITERATIONS").map(run_primitives),
        Some(k @ ("u64" | "int_string")) => (|| {
            let kind = if k == "u64" {
                Kind::U64
            } else {
                Kind::IntString
            };
            let iterations = parse(args.get(1), "ITERATIONS")?;
            let threads = parse(args.get(2), "THREADS")?;
            if !(1..=64).contains(&threads) {
                return Err("THREADS must be 1..=64".to_string());
            }
            let rate = args
                .get(3)
                .map(|_| parse(args.get(3), "RATE"))
                .transpose()?
                .filter(|&r| r > 0);
            run_emit(kind, iterations, threads, rate);
            Ok(())
        })(),
        _ => Err("unknown kind".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drtrace-tracebench: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
