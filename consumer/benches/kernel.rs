//! What the real `drtrace-consumerd` costs to record kernel events, against trace-cmd
//! (root only).
//!
//! Each run creates an ftrace instance (`drtrace-bench-<pid>-<run>`: clock `mono`, the
//! kernel's default buffer size, `buffer_percent` 50, discard mode) with
//! `sched:sched_switch` and `sched:sched_wakeup`, spawns the consumer with a socket pair,
//! adds one kernel stream per CPU, records `perf bench sched messaging -g 10 -l 500`
//! (`shared/KERNEL.md`'s workload; Debian's `linux-perf`), stops recording, flushes and
//! removes the session. It prints the consumer's CPU time while recording and flushing
//! (`/proc/PID/stat` utime + stime, and `schedstat`), the events written, the events the
//! kernel lost, the bytes written and the events left in the buffers; then the median and
//! the spread (min–max) over the runs.
//!
//! Then the same with `trace-cmd record -B <instance> -e sched:sched_switch -e
//! sched:sched_wakeup` (started without a command and stopped with SIGINT, so its CPU time,
//! recorder processes included, is its own), with its default compression of `trace.dat`
//! and with `--compression none`; events counted with `trace-cmd report`, losses from
//! `trace-cmd report --stat`. trace-cmd dies on this machine opening function-tracer files
//! (EPERM, `shared/KERNEL.md`); when it does, the benchmark builds a small `LD_PRELOAD` shim
//! with `cc` that hands it a scratch file for those, and says so.
//!
//! Run: `cargo bench -p drtrace-consumerd --bench kernel` (`KERNEL_RUNS` overrides the 5
//! runs; `KERNEL_WORKLOAD` the `perf bench sched messaging` arguments;
//! `KERNEL_CONSUMER_NICE=N` runs the consumer with `--nice N`; `KERNEL_SKIP_TRACE_CMD=1` skips trace-cmd).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Consumerd;
use common::kernel::{
    InstanceGuard, TracefsGuard, add_kernel_stream, catalog, cpu_seconds, kernel_setup, open_read,
    open_trace_pipe_raw, write_kernel_metadata,
};
use drtrace_ftrace::tracefs::{Instance, InstanceConfig, RealSystem, System, Tracefs};
use drtrace_proto::consumer::{ConsumerCommand, ConsumerReply, KernelEventFormat};
use uuid::Uuid;

/// One run's measurements.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// Consumer CPU, from `stat` (clock ticks) and `schedstat` (ns), in seconds.
    cpu_stat: f64,
    cpu_sched: f64,
    events: u64,
    lost: u64,
    bytes: u64,
    packets: u64,
    left: u64,
    workload: f64,
    flush: f64,
}

fn workload_args() -> Vec<String> {
    std::env::var("KERNEL_WORKLOAD")
        .unwrap_or_else(|_| "-g 10 -l 500".to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn workload() -> Command {
    let mut c = Command::new("perf");
    c.args(["bench", "sched", "messaging"])
        .args(workload_args());
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn setup_instance(fs: &Tracefs, name: &str) -> InstanceGuard {
    let inst = InstanceGuard(fs.create_instance(name).unwrap());
    inst.0
        .configure(&InstanceConfig {
            buffer_percent: Some(50),
            ..InstanceConfig::default()
        })
        .unwrap();
    inst.0.set_tracing_on(false).unwrap();
    for event in ["sched:sched_switch", "sched:sched_wakeup"] {
        inst.0.enable_events(event).unwrap();
    }
    inst
}

fn read(inst: &Instance, rel: &str) -> String {
    String::from_utf8(RealSystem.read(&inst.path().join(rel)).unwrap()).unwrap()
}

fn drtrace_run(fs: &Tracefs, run: u32, dir: &Path) -> Run {
    let inst = setup_instance(fs, &format!("bench-{}-{run}", std::process::id()));
    let inst = &inst.0;
    let header_page = read(inst, "events/header_page");
    let formats: Vec<KernelEventFormat> = ["sched_switch", "sched_wakeup"]
        .iter()
        .map(|ev| KernelEventFormat {
            system: "sched".into(),
            format: read(inst, &format!("events/sched/{ev}/format")),
        })
        .collect();
    let session = dir.join(format!("run{run}"));
    let id = 100 + u64::from(run);
    let trace_uuid =
        write_kernel_metadata(&session, Uuid::from_u128(id.into()), &catalog(&formats));
    // `--nice`: the priority the broker gives its root consumer, for comparison.
    let nice = std::env::var("KERNEL_CONSUMER_NICE").ok();
    let args: Vec<&str> = match &nice {
        Some(n) => vec!["--nice", n],
        None => vec![],
    };
    let mut c = Consumerd::spawn_with(&dir.join(format!("consumerd{run}.log")), &args);
    let cpus = inst.cpus().unwrap();
    for &cpu in &cpus {
        let setup = kernel_setup(&session, id, trace_uuid, cpu, &header_page, &formats);
        let buffer = open_trace_pipe_raw(&inst.trace_pipe_raw(cpu));
        let stats = open_read(&inst.path().join(format!("per_cpu/cpu{cpu}/stats")));
        assert_eq!(
            add_kernel_stream(&mut c, &setup, &buffer, &stats),
            ConsumerReply::Ok,
            "{}",
            c.log_text()
        );
    }
    let before = cpu_seconds(c.pid());
    inst.set_tracing_on(true).unwrap();
    let started = Instant::now();
    let status = workload().status().unwrap();
    let workload = started.elapsed().as_secs_f64();
    inst.set_tracing_on(false).unwrap();
    assert!(status.success(), "perf bench: {status}");
    let started = Instant::now();
    let stats = match c.request(ConsumerCommand::FlushSession { session: id }, &[]) {
        ConsumerReply::Flushed(s) => s,
        other => panic!("{other:?}"),
    };
    let flush = started.elapsed().as_secs_f64();
    let after = cpu_seconds(c.pid());
    let left: u64 = cpus
        .iter()
        .map(|&cpu| inst.cpu_stats(cpu).unwrap().entries)
        .sum();
    c.request(ConsumerCommand::RemoveSession { session: id }, &[]);
    c.close();
    c.wait_exit(Duration::from_secs(10));
    for line in c
        .log_text()
        .lines()
        .filter(|l| l.contains("kernel stream") && l.contains("flushed"))
    {
        if run == 0 || stats.iter().any(|s| s.discarded > 0) {
            println!("  {}", line.split_once("flushed").map_or(line, |(_, r)| r));
        }
    }
    for s in &stats {
        assert_eq!(s.error, None, "{s:?}");
    }
    Run {
        cpu_stat: after.0 - before.0,
        cpu_sched: after.1 - before.1,
        events: stats.iter().map(|s| s.events).sum(),
        lost: stats.iter().map(|s| s.discarded).sum(),
        bytes: stats.iter().map(|s| s.bytes).sum(),
        packets: stats.iter().map(|s| s.packets).sum(),
        left,
        workload,
        flush,
    }
}

/// Children's CPU time so far (reaped children and their reaped descendants), in seconds.
fn children_cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// A shim for `LD_PRELOAD` that gives trace-cmd a scratch file instead of the
/// function-tracer files it opens and dies on here (EPERM: `shared/KERNEL.md`); event
/// tracing does not use them. For this measurement only.
const TRACE_CMD_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
static const char *blocked[] = {"set_ftrace_pid", "set_ftrace_filter", "set_ftrace_notrace",
  "set_graph_function", "set_graph_notrace", "ftrace_enabled", "stack_trace_filter", 0};
static const char *redirect(const char *p) {
  for (int i = 0; p && blocked[i]; i++) if (strstr(p, blocked[i])) return SCRATCH;
  return p;
}
#define WRAP_AT(name) int name(int d, const char *p, int f, ...) { \
  static int (*real)(int, const char *, int, ...); \
  if (!real) real = dlsym(RTLD_NEXT, #name); \
  va_list ap; va_start(ap, f); int m = va_arg(ap, int); va_end(ap); \
  return real(d, redirect(p), f, m); }
#define WRAP(name) int name(const char *p, int f, ...) { \
  static int (*real)(const char *, int, ...); \
  if (!real) real = dlsym(RTLD_NEXT, #name); \
  va_list ap; va_start(ap, f); int m = va_arg(ap, int); va_end(ap); \
  return real(redirect(p), f, m); }
WRAP_AT(openat) WRAP_AT(openat64) WRAP(open) WRAP(open64)
"#;

/// Builds [`TRACE_CMD_SHIM`] with `cc` in `dir`; `None` when that fails.
fn build_shim(dir: &Path) -> Option<std::path::PathBuf> {
    let src = dir.join("shim.c");
    let so = dir.join("shim.so");
    let scratch = dir.join("scratch");
    std::fs::write(&scratch, b"").ok()?;
    std::fs::write(&src, TRACE_CMD_SHIM).ok()?;
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg(format!("-DSCRATCH=\"{}\"", scratch.display()))
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(so)
}

/// Disables and removes a trace-cmd instance it left behind.
fn remove_instance(name: &str) {
    let inst = Path::new("/sys/kernel/tracing/instances").join(name);
    if inst.exists() {
        let _ = std::fs::write(inst.join("tracing_on"), "0");
        let _ = std::fs::write(inst.join("events/enable"), "0");
        for _ in 0..50 {
            if std::fs::remove_dir(&inst).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cannot remove {}", inst.display());
    }
}

/// `trace-cmd record` over the same workload: started without a command (so its CPU time
/// is its own, recorder processes included), stopped with SIGINT once the workload is
/// done. `shim`: run it with that `LD_PRELOAD`.
fn trace_cmd_run(run: u32, dir: &Path, shim: Option<&Path>, extra: &[&str]) -> Result<Run, String> {
    let name = format!("tcbench-{}-{run}", std::process::id());
    let out = dir.join(format!("trace{run}.dat"));
    let err_path = dir.join(format!("trace-cmd{run}.err"));
    let before = children_cpu();
    let mut cmd = Command::new("trace-cmd");
    cmd.args([
        "record",
        "-B",
        &name,
        "-e",
        "sched:sched_switch",
        "-e",
        "sched:sched_wakeup",
    ])
    .args(extra)
    .arg("-o")
    .arg(&out)
    .stdout(Stdio::null())
    .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()));
    if let Some(shim) = shim {
        cmd.env("LD_PRELOAD", shim);
    }
    let mut tc = cmd
        .spawn()
        .map_err(|e| format!("cannot run trace-cmd: {e}"))?;
    let stderr = || {
        std::fs::read_to_string(&err_path)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    // trace-cmd has no readiness signal: wait for its instance to record.
    let tracing_on = Path::new("/sys/kernel/tracing/instances")
        .join(&name)
        .join("tracing_on");
    let ready = Instant::now();
    while std::fs::read_to_string(&tracing_on).map_or(true, |s| s.trim() != "1") {
        if let Some(status) = tc.try_wait().unwrap() {
            remove_instance(&name);
            return Err(format!(
                "trace-cmd exited before recording ({status}): {}",
                stderr()
            ));
        }
        if ready.elapsed() > Duration::from_secs(10) {
            let _ = tc.kill();
            let _ = tc.wait();
            remove_instance(&name);
            return Err("trace-cmd did not start recording within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its recorders start right after tracing is on.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    // perf is our child too: its CPU time is taken out of the children's total below.
    let perf_before = children_cpu();
    let status = workload().status().unwrap();
    let perf_cpu = children_cpu() - perf_before;
    let workload = started.elapsed().as_secs_f64();
    assert!(status.success());
    let started = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(tc.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = tc.wait().unwrap();
    let flush = started.elapsed().as_secs_f64();
    let cpu = children_cpu() - before - perf_cpu;
    remove_instance(&name);
    if !status.success() {
        return Err(format!("trace-cmd {status}: {}", stderr()));
    }
    let report = |args: &[&str]| {
        let o = Command::new("trace-cmd")
            .arg("report")
            .args(args)
            .arg("-i")
            .arg(&out)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let events = report(&[])
        .lines()
        .filter(|l| l.contains(" sched_switch:") || l.contains(" sched_wakeup:"))
        .count() as u64;
    let mut lost = 0;
    let mut left = 0;
    for line in report(&["--stat"]).lines() {
        let value = |key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        lost += value("overrun:").unwrap_or(0) + value("dropped events:").unwrap_or(0);
        left += value("entries:").unwrap_or(0);
    }
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    Ok(Run {
        cpu_stat: cpu,
        cpu_sched: cpu,
        events,
        lost,
        bytes,
        packets: 0,
        left,
        workload,
        flush,
    })
}

fn median_spread(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.3} ({:.3}–{:.3})", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the kernel benchmark needs root (tracefs, ftrace instances): skipped");
        return;
    }
    if Command::new("perf").arg("--version").output().is_err() {
        eprintln!("the kernel benchmark needs perf: apt-get install linux-perf");
        return;
    }
    let runs: u32 = std::env::var("KERNEL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tracefs = TracefsGuard::find_or_mount("kernel bench");
    let dir = tempfile::Builder::new()
        .prefix("consumerd-kernel-bench")
        .tempdir()
        .unwrap();
    let probe = tracefs
        .fs()
        .create_instance(&format!("bench-{}-probe", std::process::id()))
        .unwrap();
    let kb = std::fs::read_to_string(probe.path().join("buffer_size_kb")).unwrap_or_default();
    probe.remove().unwrap();
    println!(
        "workload: perf bench sched messaging {}; events sched_switch + sched_wakeup; buffer_size_kb {} per CPU, buffer_percent 50",
        workload_args().join(" "),
        kb.trim()
    );
    let mut all = Vec::new();
    for run in 0..runs {
        let r = drtrace_run(tracefs.fs(), run, dir.path());
        println!(
            "drtrace run {run}: consumer CPU {:.3} s (stat) / {:.4} s (schedstat), {} events, {} lost, {} left in the buffers, {} bytes in {} packets; workload {:.2} s, flush {:.1} ms",
            r.cpu_stat,
            r.cpu_sched,
            r.events,
            r.lost,
            r.left,
            r.bytes,
            r.packets,
            r.workload,
            r.flush * 1e3
        );
        all.push(r);
    }
    println!(
        "drtrace median (min–max) over {runs} runs: CPU {} s (stat), {} s (schedstat); events {}; lost {}; bytes {}",
        median_spread(all.iter().map(|r| r.cpu_stat).collect()),
        median_spread(all.iter().map(|r| r.cpu_sched).collect()),
        median_spread(all.iter().map(|r| r.events as f64).collect()),
        median_spread(all.iter().map(|r| r.lost as f64).collect()),
        median_spread(all.iter().map(|r| r.bytes as f64).collect()),
    );
    if std::env::var_os("KERNEL_SKIP_TRACE_CMD").is_some() {
        return;
    }
    // trace-cmd as it is, then (if it dies here) with the shim; with its default
    // compression of trace.dat and without.
    let mut shim = None;
    match trace_cmd_run(0, dir.path(), None, &[]) {
        Ok(_) => println!("trace-cmd runs here as it is"),
        Err(why) => {
            println!("trace-cmd as it is: failed: {why}");
            shim = build_shim(dir.path());
            match &shim {
                Some(_) => println!(
                    "trace-cmd with an LD_PRELOAD shim that hands it a scratch file for the function-tracer files (measurement only):"
                ),
                None => {
                    println!("no C compiler for the shim: no trace-cmd numbers");
                    return;
                }
            }
        }
    }
    for (label, extra) in [
        ("default compression", &[][..]),
        ("--compression none", &["--compression", "none"][..]),
    ] {
        let mut all = Vec::new();
        for run in 0..runs {
            match trace_cmd_run(run, dir.path(), shim.as_deref(), extra) {
                Ok(r) => {
                    println!(
                        "trace-cmd ({label}) run {run}: CPU {:.3} s (getrusage), {} events, {} lost, {} bytes; workload {:.2} s, stop {:.0} ms",
                        r.cpu_stat,
                        r.events,
                        r.lost,
                        r.bytes,
                        r.workload,
                        r.flush * 1e3
                    );
                    all.push(r);
                }
                Err(why) => {
                    println!("trace-cmd ({label}) run {run}: failed: {why}");
                    break;
                }
            }
        }
        if !all.is_empty() {
            println!(
                "trace-cmd ({label}) median (min–max) over {} runs: CPU {} s; events {}; lost {}; bytes {}",
                all.len(),
                median_spread(all.iter().map(|r| r.cpu_stat).collect()),
                median_spread(all.iter().map(|r| r.events as f64).collect()),
                median_spread(all.iter().map(|r| r.lost as f64).collect()),
                median_spread(all.iter().map(|r| r.bytes as f64).collect()),
            );
        }
    }
}
