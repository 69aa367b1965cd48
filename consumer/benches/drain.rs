//! How fast the real `drtrace-consumerd` drains buffers into stream files, and whether
//! anything is lost.
//!
//! Two writer threads (one per buffer, pinned to CPU 0 and 1 when there are two) write
//! `test:tick { v: u64 }` records (8-byte payload, 12 bytes with the compact header) into
//! default-size buffers (1 MiB × 4 sub-buffers per CPU, discard mode) while the consumer
//! drains them; then a flush. Each configuration runs several times with a fresh consumer
//! and prints the median and the spread (min–max):
//!
//! - *drained/s*: events in the files / time from the first write to the flush reply;
//! - *emitted/s*: events the writers emitted / time the writers took;
//! - *lost*: discarded / emitted (recorded + discarded = emitted is checked on every run);
//! - *consumer CPU*: the consumer's time on a CPU per event written.
//!
//! `flat out` writes as fast as the writers can (the consumer shares the machine's CPUs with
//! them); `paced` writes 2 M events/s per thread, a very busy application.
//!
//! Run: `cargo bench -p drtrace-consumerd --bench drain` (`DRAIN_RUNS`, `DRAIN_EVENTS` per
//! thread override the defaults).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Channel, Consumerd, Session, TICK_EVENT};
use drtrace_ringbuf::{Mode, Writer};

/// One run's measurements.
#[derive(Debug, Clone, Copy)]
struct Run {
    drained_per_s: f64,
    emitted_per_s: f64,
    lost_fraction: f64,
    cpu_ns_per_event: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The consumer's CPU time so far (`/proc/PID/schedstat`: nanoseconds on a CPU; `stat`'s
/// utime and stime only have clock-tick resolution).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let ns: u64 = stat.split(' ').next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Writes `n` ticks, at most `rate` per second if given; returns when done.
fn write_ticks(w: &Writer, n: u64, rate: Option<u64>) {
    let start = Instant::now();
    for i in 0..n {
        if let Some(mut slot) = w.reserve(TICK_EVENT, 8) {
            slot.put_u64(i);
        }
        if let Some(rate) = rate {
            if i % 1024 == 1023 {
                let due = Duration::from_nanos(i * 1_000_000_000 / rate);
                while start.elapsed() < due {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

fn one_run(base: &Path, per_thread: u64, rate: Option<u64>) -> Run {
    let tmp = tempfile::Builder::new()
        .prefix("consumerd-bench")
        .tempdir_in(base)
        .unwrap();
    let dir = tmp.path().join("session");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let session = Session::create(
        &dir,
        1,
        &[Channel::new("bench", 1 << 20, 4, Mode::Discard)],
        2,
    );
    let mut c = Consumerd::spawn(&tmp.path().join("consumerd.log"));
    session.add_all(&mut c);
    let writers = [session.writer(0), session.writer(1)];
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, w) in writers.iter().enumerate() {
            s.spawn(move || {
                if cpus >= 2 {
                    pin_to(i);
                }
                write_ticks(w, per_thread, rate);
            });
        }
    });
    let writing = start.elapsed();
    let stats = c.flush(1);
    let elapsed = start.elapsed();
    let cpu = cpu_time(c.pid());
    let recorded: u64 = stats.iter().map(|s| s.events).sum();
    let discarded: u64 = stats.iter().map(|s| s.discarded).sum();
    let emitted = 2 * per_thread;
    assert_eq!(
        recorded + discarded,
        emitted,
        "recorded + discarded = emitted"
    );
    assert!(stats.iter().all(|s| s.error.is_none()), "{stats:?}");
    c.close();
    assert!(c.wait_exit(Duration::from_secs(30)).success());
    Run {
        drained_per_s: recorded as f64 / elapsed.as_secs_f64(),
        emitted_per_s: emitted as f64 / writing.as_secs_f64(),
        lost_fraction: discarded as f64 / emitted as f64,
        cpu_ns_per_event: cpu.as_nanos() as f64 / recorded.max(1) as f64,
    }
}

fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn report(label: &str, runs: &[Run]) {
    let column = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        summary(&mut v)
    };
    let (d, dmin, dmax) = column(|r| r.drained_per_s / 1e6);
    let (e, emin, emax) = column(|r| r.emitted_per_s / 1e6);
    let (l, lmin, lmax) = column(|r| r.lost_fraction * 100.0);
    let (c, cmin, cmax) = column(|r| r.cpu_ns_per_event);
    println!(
        "{label:<28} drained {d:6.2} M/s ({dmin:.2}–{dmax:.2})  emitted {e:6.2} M/s ({emin:.2}–{emax:.2})  \
         lost {l:5.2}% ({lmin:.2}–{lmax:.2})  consumer CPU {c:5.1} ns/event ({cmin:.1}–{cmax:.1})"
    );
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let runs = usize::try_from(env_or("DRAIN_RUNS", 7)).unwrap_or(7).max(1);
    let per_thread = env_or("DRAIN_EVENTS", 4_000_000);
    let targets: Vec<(&str, PathBuf)> = [
        ("tmpfs (/dev/shm)", "/dev/shm"),
        ("disk (/var/tmp)", "/var/tmp"),
    ]
    .into_iter()
    .filter(|(_, p)| Path::new(p).is_dir())
    .map(|(l, p)| (l, PathBuf::from(p)))
    .collect();
    println!(
        "drtrace-consumerd drain: 2 writer threads × {per_thread} events (8-byte payload), \
         buffers 1 MiB × 4 per CPU, {runs} runs each; median (min–max)"
    );
    for (where_, base) in &targets {
        for (mode, rate) in [("flat out", None), ("paced 2 M/s/thread", Some(2_000_000))] {
            let results: Vec<Run> = (0..runs).map(|_| one_run(base, per_thread, rate)).collect();
            report(&format!("{where_}, {mode}"), &results);
        }
    }
}
