//! Costs of the emit path and of start-up, measured with plain `Instant` loops
//! (`cargo bench -p drtrace --bench emit`).
//!
//! - disabled: an event no session records (one relaxed load and a branch);
//! - enabled `u64`, enabled `u32` + 16-byte string: single thread, into real per-CPU ring
//!   buffers created in-process (overwrite mode, so they never fill), with the TSC clock
//!   (when invariant) and with CLOCK_MONOTONIC;
//! - start-up: this binary re-executed with no daemon, a stale socket and a hung daemon,
//!   against the same binary with `DRTRACE_DISABLE=1`; and the constructor's own time as it
//!   reports it with `DRTRACE_DEBUG=1`.
//!
//! Each figure is the median of several runs, with the spread (min–max) of the runs.
//!
//! Measured on the 2-core development VM (quiet machine, release build):
//!
//! | what | median (min–max) |
//! |---|---|
//! | disabled event | 0.55 ns (0.51–0.63) |
//! | ring buffer alone, TSC: reserve + u64 + commit | 38.8 ns (38.2–41.9) |
//! | enabled u64, TSC | 46.7 ns (45.8–50.1) |
//! | enabled u32 + 16-byte string, TSC | 55.0 ns (51.0–61.0) |
//! | enabled u64 / u32 + string, CLOCK_MONOTONIC | 51.2 / 57.9 ns |
//! | start-up, no daemon or stale socket: constructor | 0.11 ms (wall: 0.06–0.6 ms, noise) |
//! | start-up, hung daemon: constructor | 13.6–14.1 ms (10 ms ping, jiffy-rounded) |

use std::hint::black_box;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drtrace_ringbuf::ClockSource;

drtrace::provider! {
    /// Benchmark events.
    mod bench {
        /// Never enabled.
        pub(super) fn disabled(n: u64);
        /// One u64.
        pub(super) fn enabled_u64(n: u64);
        /// An int and a string.
        pub(super) fn int_string(n: u32, s: &str);
    }
}

const RUNS: usize = 11;
const CHILD_ENV: &str = "DRTRACE_BENCH_CHILD";

/// Median and spread of per-run figures.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:8.2}  (min {:.2}, max {:.2})",
            self.median, self.min, self.max
        )
    }
}

/// ns per call of `f`, over `n` calls, `RUNS` times.
fn per_call(n: u64, mut f: impl FnMut(u64)) -> Stats {
    // Warm-up: page faults in the buffers, branch predictors, frequency.
    for i in 0..n / 4 {
        f(i);
    }
    let runs = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    Stats::of(runs)
}

/// Keeps the benchmark thread on one CPU (no migrations between runs); returns the
/// affinity to restore.
fn pin_to_current_cpu() -> Option<nix::sched::CpuSet> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
    let me = nix::unistd::Pid::from_raw(0);
    let before = sched_getaffinity(me).ok()?;
    let mut set = CpuSet::new();
    set.set(sched_getcpu().ok()?).ok()?;
    sched_setaffinity(me, &set).ok()?;
    Some(before)
}

fn emit_benches() {
    let before = pin_to_current_cpu();
    emit_benches_pinned();
    if let Some(set) = before {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn emit_benches_pinned() {
    println!("emit path (ns per event, single thread, pinned)");
    let s = per_call(200_000_000, |i| bench::disabled(black_box(i)));
    println!("  disabled                 {s}");
    let mut clocks = vec![("monotonic", ClockSource::Monotonic)];
    if drtrace_ringbuf::clock::tsc_invariant() {
        clocks.insert(0, ("tsc", ClockSource::Tsc));
    }
    for (name, clock) in clocks {
        // The ring buffer alone (reserve, one u64, commit), for comparison: what the
        // library adds is the difference.
        let layout = drtrace_ringbuf::Layout {
            subbuf_size: 256 * 1024,
            num_subbuf: 8,
            mode: drtrace_ringbuf::Mode::Overwrite,
        };
        if let Ok(memfd) = drtrace_ringbuf::create_buffer(&layout, clock, "floor") {
            if let Ok(w) = drtrace_ringbuf::Writer::map(&memfd, None) {
                let s = per_call(4_000_000, |i| {
                    if let Some(mut slot) = w.reserve(1, 8) {
                        slot.put_u64(black_box(i));
                        slot.commit();
                    }
                });
                println!("  ringbuf alone ({name:9}) {s}");
            }
        }
        let session = match drtrace::__private::bench::record_all(
            clock,
            256 * 1024,
            8,
            &["bench:disabled"],
        ) {
            Ok(s) => s,
            Err(e) => {
                println!("  cannot set up buffers: {e}");
                return;
            }
        };
        let s = per_call(4_000_000, |i| bench::enabled_u64(black_box(i)));
        println!("  enabled u64 ({name:9})  {s}");
        let path = black_box("/index/page.html");
        let s = per_call(4_000_000, |i| {
            #[allow(clippy::cast_possible_truncation, reason = "a wrapping counter")]
            bench::int_string(black_box(i as u32), path);
        });
        println!("  u32 + str16 ({name:9})  {s}");
        drop(session);
    }
}

/// Runs this binary as a start-up child `n` times; returns wall times (µs) and the
/// constructor's own reported times (µs).
fn run_children(env: &[(&str, &Path)], disable: bool, n: usize) -> (Vec<f64>, Vec<f64>) {
    let exe = std::env::current_exe().expect("own path");
    let (mut wall, mut ctor) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.env(CHILD_ENV, "1")
            .env("DRTRACE_DEBUG", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if disable {
            cmd.env("DRTRACE_DISABLE", "1");
        } else {
            cmd.env_remove("DRTRACE_DISABLE");
        }
        let t = Instant::now();
        let out = cmd.output().expect("child runs");
        wall.push(t.elapsed().as_secs_f64() * 1e6);
        let err = String::from_utf8_lossy(&out.stderr);
        if let Some(d) = err
            .lines()
            .find_map(|l| l.split("start-up done in ").nth(1))
            .and_then(parse_duration)
        {
            ctor.push(d.as_secs_f64() * 1e6);
        }
    }
    (wall, ctor)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let i = s.find(|c: char| c.is_alphabetic() || c == 'µ')?;
    let (num, unit) = s.split_at(i);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-9,
        "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(v * scale))
}

fn startup_benches() {
    println!(
        "start-up (µs; wall = process run time, minus the same binary with DRTRACE_DISABLE=1)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("sessiond.sock");
    let broker = dir.path().join("broker");
    for case in ["no daemon", "stale socket", "hung daemon"] {
        let _ = std::fs::remove_file(&sock);
        let listener = match case {
            "stale socket" => {
                drop(UnixListener::bind(&sock).expect("bind"));
                None
            }
            "hung daemon" => Some(UnixListener::bind(&sock).expect("bind")),
            _ => None,
        };
        let env = [
            ("DRTRACE_SESSIOND_SOCKET", sock.as_path()),
            ("DRTRACE_BROKER_DIR", broker.as_path()),
        ];
        let n = 41;
        let mut base = Vec::new();
        let mut on = Vec::new();
        let mut ctor = Vec::new();
        // Interleaved, so that machine load affects both alike.
        for _ in 0..n / 10 + 1 {
            base.extend(run_children(&env, true, 10).0);
            let (w, c) = run_children(&env, false, 10);
            on.extend(w);
            ctor.extend(c);
        }
        let (base, on) = (Stats::of(base), Stats::of(on));
        println!(
            "  {case:13} wall overhead {:8.0}  (enabled median {:.0}, disabled median {:.0})",
            on.median - base.median,
            on.median,
            base.median
        );
        if !ctor.is_empty() {
            println!("  {case:13} constructor   {}", Stats::of(ctor));
        }
        drop(listener);
    }
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // A start-up child: the constructor has run; nothing else to do.
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument selects one group.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wants("emit") {
        emit_benches();
    }
    if wants("startup") {
        startup_benches();
    }
}
