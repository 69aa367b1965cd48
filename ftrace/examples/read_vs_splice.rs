//! Measures what reading the CPU buffers costs: `read()` against `splice()`, both woken by
//! `poll()` at `buffer_percent` 50, and `read()` woken on any data (`buffer_percent` 0,
//! close to a blocking reader). Root only.
//!
//! ```text
//! cargo run --release -p drtrace-ftrace --example read_vs_splice [-- ROUNDS]
//! ```
//!
//! Each run records `sched:sched_switch` and `sched:sched_wakeup` in a fresh instance while
//! `perf bench sched messaging -g 10 -l 500` runs (the workload of `shared/KERNEL.md`; a
//! shell loop when perf is missing), with one reader thread per CPU that keeps the used
//! bytes of each page, then drains the buffers. It prints each reader's CPU time (summed
//! over CPUs), the calls, pages and bytes read, and the events; and, once, the CPU time of
//! converting the kept pages to CTF.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drtrace_ctf::packet::PacketHeader;
use drtrace_ftrace::ctf::{EventCatalog, KernelStream, StreamConfig};
use drtrace_ftrace::page::{Page, PageLayout};
use drtrace_ftrace::reader::{CpuReader, ReadMode, ReaderStats};
use drtrace_ftrace::tracefs::{Instance, InstanceConfig, RealSystem, Tracefs};
use nix::time::{ClockId, clock_gettime};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

fn process_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

#[derive(Default)]
struct Totals {
    cpu: Duration,
    stats: ReaderStats,
    kept: u64,
    events: u64,
    pages: Vec<(u32, Vec<u8>)>,
}

fn workload() -> Command {
    let perf = std::path::Path::new("/usr/bin/perf");
    if perf.exists() {
        let mut c = Command::new(perf);
        c.args(["bench", "sched", "messaging", "-g", "10", "-l", "500"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done",
        ]);
        c
    }
}

fn run(fs: &Tracefs, label: &str, mode: ReadMode, percent: u32) -> Result<Totals, BoxError> {
    let id = format!("bench-{}-{label}", std::process::id());
    let inst = fs.create_instance(&id)?;
    let result = record(&inst, mode, percent);
    // Remove the instance whatever happened; the readers are closed by now.
    let removed = inst.remove();
    let totals = result?;
    removed?;
    Ok(totals)
}

fn record(inst: &Instance, mode: ReadMode, percent: u32) -> Result<Totals, BoxError> {
    inst.configure(&InstanceConfig {
        buffer_percent: Some(percent),
        ..InstanceConfig::default()
    })?;
    inst.set_tracing_on(false)?;
    inst.enable_events("sched:sched_switch")?;
    inst.enable_events("sched:sched_wakeup")?;
    let layout = inst.page_layout()?;
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Mutex::new(Totals::default()));
    inst.set_tracing_on(true)?;
    let mut threads = Vec::new();
    for cpu in inst.cpus()? {
        let path = inst.trace_pipe_raw(cpu);
        let stop = Arc::clone(&stop);
        let totals = Arc::clone(&totals);
        let inst = inst.clone();
        threads.push(std::thread::spawn(move || -> Result<(), BoxError> {
            let mut reader = CpuReader::open(&path, cpu, layout.page_size, mode)?;
            let mut kept: Vec<u8> = Vec::new();
            let mut events = 0u64;
            let mut keep = |page: &[u8]| -> Result<(), BoxError> {
                let p = Page::parse(&layout, page)?;
                events += p.events().count() as u64;
                kept.extend_from_slice(&page[..p.kept_len(&layout)]);
                Ok(())
            };
            while !stop.load(Ordering::Relaxed) {
                if reader.wait(Some(Duration::from_millis(100)))? {
                    reader.read_available::<BoxError>(1024, &mut keep)?;
                }
            }
            reader.drain::<BoxError>(1 << 20, || Ok(inst.cpu_stats(cpu)?.entries), &mut keep)?;
            let cpu_time = thread_cpu();
            let s = reader.stats();
            let mut t = totals.lock().map_err(|_| "poisoned")?;
            t.cpu += cpu_time;
            t.stats.calls += s.calls;
            t.stats.pages += s.pages;
            t.stats.bytes += s.bytes;
            t.stats.zero_reads += s.zero_reads;
            t.stats.empty += s.empty;
            t.stats.polls += s.polls;
            t.kept += kept.len() as u64;
            t.events += events;
            t.pages.push((cpu, kept));
            Ok(())
        }));
    }
    let started = Instant::now();
    let status = workload().stdout(std::process::Stdio::null()).status()?;
    let elapsed = started.elapsed();
    inst.set_tracing_on(false)?;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "reader thread panicked")??;
    }
    let mut lost = 0;
    for cpu in inst.cpus()? {
        lost += inst.cpu_stats(cpu)?.lost();
    }
    eprintln!(
        "  workload {status} in {:.2} s, {lost} events lost",
        elapsed.as_secs_f64()
    );
    let mut totals = std::mem::take(&mut *totals.lock().map_err(|_| "poisoned")?);
    totals.pages.sort_by_key(|(cpu, _)| *cpu);
    Ok(totals)
}

/// Converts the kept bytes of every page; returns (CPU time, events, CTF bytes).
fn convert(
    catalog: &Arc<EventCatalog>,
    layout: PageLayout,
    pages: &[(u32, Vec<u8>)],
) -> (Duration, u64, usize) {
    let before = process_cpu();
    let mut events = 0;
    let mut bytes = 0;
    for (cpu, kept) in pages {
        let header = PacketHeader {
            uuid: uuid::Uuid::nil(),
            stream_id: 0,
            stream_instance_id: u64::from(*cpu),
        };
        let mut stream = KernelStream::new(
            Arc::clone(catalog),
            layout,
            header,
            *cpu,
            StreamConfig::default(),
        );
        let mut out = Vec::new();
        let mut at = 0;
        while at < kept.len() {
            let Ok(page) = Page::parse(&layout, &kept[at..]) else {
                break;
            };
            let len = page.kept_len(&layout);
            let _ = stream.push_page(&kept[at..at + len], &mut out);
            at += len;
        }
        if let Ok(c) = stream.finish(&mut out) {
            events += c.events;
        }
        bytes += out.len();
    }
    (process_cpu() - before, events, bytes)
}

fn main() -> Result<(), BoxError> {
    if !nix::unistd::geteuid().is_root() {
        return Err("read_vs_splice needs root (tracefs, ftrace instances)".into());
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1);
    let fs = Tracefs::find_or_mount(Arc::new(RealSystem))?;
    let runs = [
        ("read", ReadMode::Read, 50),
        ("splice", ReadMode::Splice, 50),
        ("read-any", ReadMode::Read, 0),
    ];
    println!(
        "| reader | buffer_percent | reader CPU ms | calls | pages | MB read | MB kept | events |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut last = None;
    for round in 0..rounds {
        for (label, mode, percent) in runs {
            eprintln!("round {round}: {label}");
            let t = run(&fs, label, mode, percent)?;
            println!(
                "| {label} | {percent} | {:.0} | {} | {} | {:.1} | {:.1} | {} |",
                t.cpu.as_secs_f64() * 1e3,
                t.stats.calls,
                t.stats.pages,
                t.stats.bytes as f64 / 1e6,
                t.kept as f64 / 1e6,
                t.events
            );
            last = Some(t);
        }
    }
    if let Some(t) = last {
        let inst = fs.create_instance(&format!("bench-{}-formats", std::process::id()))?;
        let formats = (|| -> Result<_, BoxError> {
            inst.enable_events("sched:sched_switch")?;
            inst.enable_events("sched:sched_wakeup")?;
            Ok((inst.enabled_formats()?, inst.page_layout()?))
        })();
        inst.remove()?;
        let (formats, layout) = formats?;
        let catalog = Arc::new(EventCatalog::new(formats)?);
        let (cpu, events, bytes) = convert(&catalog, layout, &t.pages);
        println!(
            "\nconversion of the last run's pages: {events} events in {:.0} ms CPU ({:.0} ns/event), {:.1} MB of CTF",
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e9 / events.max(1) as f64,
            bytes as f64 / 1e6
        );
    }
    if fs.mounted_here() {
        fs.unmount()?;
    }
    Ok(())
}
