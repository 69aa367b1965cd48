//! Kernel streams through the real `drtrace-consumerd`: ftrace's captured pages fed
//! through regular files standing in for `trace_pipe_raw` (no root needed), and a real
//! tracefs instance recording a workload (root only; CI runs as root). Traces are checked
//! with drtrace's CTF reader and with babeltrace2.

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::kernel::*;
use common::{Consumerd, babeltrace2};
use drtrace_ctf::Trace;
use drtrace_ctf::reader::Value;
use drtrace_ftrace::tracefs::{InstanceConfig, RealSystem, System};
use drtrace_proto::consumer::{ConsumerCommand, ConsumerReply, StreamKey, StreamStats};
use drtrace_proto::error::ErrorCode;
use uuid::Uuid;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("consumerd-kernel")
        .tempdir()
        .unwrap()
}

fn flushed(reply: ConsumerReply, c: &Consumerd) -> Vec<StreamStats> {
    match reply {
        ConsumerReply::Flushed(stats) => stats,
        other => panic!("flush answered {other:?}\n{}", c.log_text()),
    }
}

/// `babeltrace2 --clock-cycles` over `dir`: its event lines (without time deltas) and
/// its stderr; `None` when babeltrace2 is missing (outside CI).
fn babeltrace2_lines(dir: &Path) -> Option<(Vec<String>, String)> {
    let (lines, stderr) = run_babeltrace2_cycles(&babeltrace2()?, dir);
    Some((lines.iter().map(|l| without_delta(l)).collect(), stderr))
}

#[test]
fn captured_pages_become_a_trace_babeltrace2_reads_exactly() {
    let t = tempdir();
    let cap = capture_dir("capture");
    let header_page = std::fs::read_to_string(cap.join("header_page")).unwrap();
    let formats = captured_formats(&cap, &CAPTURED_EVENTS);
    let catalog = catalog(&formats);
    let session = t.path().join("session");
    let trace_uuid = write_kernel_metadata(&session, Uuid::from_u128(21), &catalog);
    let mut c = Consumerd::spawn(&t.path().join("consumerd.log"));
    let mut expected = Vec::new();
    let mut setups = Vec::new();
    for cpu in [0, 1] {
        let pages = cap.join(format!("cpu{cpu}.pages"));
        expected.extend(expected_events(
            &catalog,
            &header_page,
            cpu,
            &std::fs::read(&pages).unwrap(),
        ));
        let stats = t.path().join(format!("stats{cpu}"));
        std::fs::write(&stats, stats_text(0, 0, 0)).unwrap();
        let setup = kernel_setup(&session, 21, trace_uuid, cpu, &header_page, &formats);
        // A regular file reads like trace_pipe_raw (whole pages), then 0 bytes for ever:
        // "try again", which must not make the consumer spin.
        let reply = add_kernel_stream(&mut c, &setup, &open_read(&pages), &open_read(&stats));
        assert_eq!(reply, ConsumerReply::Ok, "{}", c.log_text());
        setups.push(setup);
    }
    assert!(expected.len() > 100, "{}", expected.len());

    // The files always poll readable and then read 0 bytes: the consumer reads them once,
    // then backs off to the read timer instead of spinning on them.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(c.pid()).1;
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_seconds(c.pid()).1 - before;
    assert!(
        busy < 0.2,
        "the consumer used {busy:.3} s of CPU in 1 s with nothing to read\n{}",
        c.log_text()
    );

    let stats = flushed(
        c.request(ConsumerCommand::FlushSession { session: 21 }, &[]),
        &c,
    );
    let keys: Vec<StreamKey> = stats.iter().map(|s| s.key).collect();
    assert_eq!(keys, setups.iter().map(|s| s.key).collect::<Vec<_>>());
    for (s, cpu) in stats.iter().zip([0, 1]) {
        let want = expected.iter().filter(|e| e.cpu == cpu).count() as u64;
        assert_eq!((s.events, s.discarded, &s.error), (want, 0, &None), "{s:?}");
        assert_eq!(s.bytes, std::fs::metadata(&s.path).unwrap().len());
    }
    let removed = flushed(
        c.request(ConsumerCommand::RemoveSession { session: 21 }, &[]),
        &c,
    );
    assert_eq!(removed, stats, "nothing new since the flush");
    c.ping();

    // drtrace's reader: every event, in order per CPU, with every field.
    let trace = Trace::open(&session).unwrap();
    let events = trace.read_all().unwrap();
    assert_eq!(events.len(), expected.len());
    for cpu in [0, 1] {
        let want: Vec<_> = expected.iter().filter(|e| e.cpu == cpu).collect();
        let got: Vec<_> = events.iter().filter(|e| e.cpu == Some(cpu)).collect();
        assert_eq!(want.len(), got.len(), "cpu {cpu}");
        for (w, g) in want.iter().zip(got) {
            assert_eq!((&g.name, g.clock_cycles), (&w.name, w.timestamp), "{w:?}");
            assert_eq!(g.fields, w.fields, "{w:?}");
            assert_eq!(g.domain(), "kernel");
        }
    }
    for s in trace.stream_stats().unwrap() {
        assert_eq!(s.events_discarded, 0);
        assert!(s.lost_packets.is_empty(), "{:?}", s.lost_packets);
    }
    let switches = events.iter().filter(|e| e.name == "sched_switch").count();
    assert!(switches > 10, "{switches}");

    // babeltrace2: the same events, line for line.
    if let Some((mut got, stderr)) = babeltrace2_lines(&session) {
        let mut want: Vec<String> = expected.iter().map(|e| bt2_line(e, &catalog)).collect();
        got.sort();
        want.sort();
        assert_eq!(got.len(), want.len(), "{stderr}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
    }
}

#[test]
fn losses_in_pages_and_stats_reach_the_trace() {
    let t = tempdir();
    let cap = capture_dir("capture-overwrite");
    let header_page = std::fs::read_to_string(cap.join("header_page")).unwrap();
    let formats = captured_formats(&cap, &CAPTURED_EVENTS);
    let catalog = catalog(&formats);
    let session = t.path().join("session");
    let trace_uuid = write_kernel_metadata(&session, Uuid::from_u128(22), &catalog);
    let mut c = Consumerd::spawn(&t.path().join("consumerd.log"));
    let mut stats_files = Vec::new();
    for cpu in [0, 1] {
        let stats = t.path().join(format!("stats{cpu}"));
        std::fs::write(&stats, stats_text(0, 0, 0)).unwrap();
        let setup = kernel_setup(&session, 22, trace_uuid, cpu, &header_page, &formats);
        let pages = open_read(&cap.join(format!("cpu{cpu}.pages")));
        let reply = add_kernel_stream(&mut c, &setup, &pages, &open_read(&stats));
        assert_eq!(reply, ConsumerReply::Ok, "{}", c.log_text());
        stats_files.push(stats);
    }
    let first = flushed(
        c.request(ConsumerCommand::FlushSession { session: 22 }, &[]),
        &c,
    );
    let page_losses: u64 = first.iter().map(|s| s.discarded).sum();
    assert!(
        page_losses > 0,
        "the overwrite capture reports losses: {first:?}"
    );
    // The kernel then counts drops in `stats` (7 on CPU 1): the next flush ends the file
    // with them, in an empty packet.
    std::fs::write(&stats_files[1], stats_text(0, 0, 7)).unwrap();
    let last = flushed(
        c.request(ConsumerCommand::RemoveSession { session: 22 }, &[]),
        &c,
    );
    assert_eq!(last[0], first[0]);
    assert_eq!(last[1].discarded, first[1].discarded + 7);
    assert_eq!(last[1].packets, first[1].packets + 1);
    assert_eq!(last[1].events, first[1].events);

    let trace = Trace::open(&session).unwrap();
    let by_cpu: BTreeMap<u32, _> = trace
        .stream_stats()
        .unwrap()
        .into_iter()
        .map(|s| (s.cpu.unwrap(), s))
        .collect();
    for (cpu, s) in [0u32, 1].iter().zip(&last) {
        let file = &by_cpu[cpu];
        assert_eq!(
            (file.events, file.events_discarded),
            (s.events, s.discarded),
            "cpu {cpu}: the stats' discarded is the file's last count"
        );
        assert!(file.lost_packets.is_empty(), "{:?}", file.lost_packets);
    }
    if let Some((lines, stderr)) = babeltrace2_lines(&session) {
        let total: u64 = last.iter().map(|s| s.events).sum();
        assert_eq!(lines.len() as u64, total);
        let reported: u64 = stderr
            .lines()
            .filter_map(|l| {
                let rest = l.split("discarded ").nth(1)?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        let discarded: u64 = last.iter().map(|s| s.discarded).sum();
        assert_eq!(reported, discarded, "{stderr}");
    }
}

#[test]
fn kernel_requests_are_checked_and_the_consumer_goes_on() {
    let t = tempdir();
    let cap = capture_dir("capture");
    let header_page = std::fs::read_to_string(cap.join("header_page")).unwrap();
    let formats = captured_formats(&cap, &CAPTURED_EVENTS[..2]);
    let session = t.path().join("session");
    let trace_uuid = write_kernel_metadata(&session, Uuid::from_u128(23), &catalog(&formats));
    let stats = t.path().join("stats0");
    std::fs::write(&stats, stats_text(0, 0, 0)).unwrap();
    let pages = open_read(&cap.join("cpu0.pages"));
    let mut c = Consumerd::spawn(&t.path().join("consumerd.log"));
    let setup = kernel_setup(&session, 23, trace_uuid, 0, &header_page, &formats);
    let error = |reply: ConsumerReply| match reply {
        ConsumerReply::Error(e) => (e.code, e.message),
        other => panic!("expected an error, got {other:?}"),
    };

    // Two descriptors instead of three.
    let reply = c.request(
        ConsumerCommand::AddKernelStream(setup.clone()),
        &[pages.as_fd(), open_read(&stats).as_fd()],
    );
    let (code, message) = error(reply);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("needs 3 descriptors"), "{message}");

    // A format that does not parse names its event.
    let mut bad = setup.clone();
    bad.formats[0].format = bad.formats[0].format.replace("offset:", "offset=");
    let (code, message) = error(add_kernel_stream(&mut c, &bad, &pages, &open_read(&stats)));
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(
        message.contains("bad format of sched:sched_switch (format 0)"),
        "{message}"
    );

    let reply = add_kernel_stream(&mut c, &setup, &pages, &open_read(&stats));
    assert_eq!(reply, ConsumerReply::Ok, "{}", c.log_text());
    // The same key again.
    let (code, message) = error(add_kernel_stream(
        &mut c,
        &setup,
        &pages,
        &open_read(&stats),
    ));
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("already exists"), "{message}");
    // Kernel streams have no writer processes to die: ignored.
    let reply = c.request(
        ConsumerCommand::WritersDied {
            streams: vec![setup.key],
        },
        &[],
    );
    assert_eq!(reply, ConsumerReply::Ok);
    c.ping();
    // Closing the control socket flushes the kernel stream too.
    c.close();
    assert!(c.wait_exit(Duration::from_secs(10)).success());
    let trace = Trace::open(&session).unwrap();
    let events = trace.read_all().unwrap();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.name == "sched_switch" || e.name == "sched_wakeup")
    );
}

#[test]
fn the_nice_option_sets_the_consumers_priority() {
    let t = tempdir();
    // Raising the nice value needs no privilege.
    let mut c = Consumerd::spawn_with(&t.path().join("consumerd.log"), &["--nice", "7"]);
    c.ping();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.pid())).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(fields[16], "7", "nice field of {stat}");
    assert!(
        c.log_text().contains("running at nice 7"),
        "{}",
        c.log_text()
    );
}

/// The workload of `shared/KERNEL.md`, smaller; a shell loop of execs without perf.
fn workload() -> Command {
    let perf = Path::new("/usr/bin/perf");
    if perf.exists() {
        let mut c = Command::new(perf);
        c.args(["bench", "sched", "messaging", "-g", "4", "-l", "100"]);
        c
    } else {
        eprintln!("perf is missing (apt-get install linux-perf): a shell loop is the workload");
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
        ]);
        c
    }
}

#[test]
fn a_real_workload_is_traced_end_to_end() {
    record_a_workload("a_real_workload_is_traced_end_to_end", 1, None);
}

#[test]
fn events_the_kernel_drops_from_a_tiny_buffer_are_accounted() {
    // Two pages per CPU fill faster than the consumer is woken: the kernel drops events
    // (discard mode) and counts them in `stats`.
    record_a_workload(
        "events_the_kernel_drops_from_a_tiny_buffer_are_accounted",
        2,
        Some(8),
    );
}

/// Records sched_switch and sched_wakeup during a workload in instance
/// `drtrace-test-<pid>-<n>` (`buffer_kb` per CPU, or the kernel's default), through the
/// real consumer; checks the trace against the kernel's counters, with drtrace's reader
/// and babeltrace2.
fn record_a_workload(test: &str, n: u32, buffer_kb: Option<u64>) {
    if !have_root(test) {
        return;
    }
    // Dropped last: the consumer and every descriptor of the instance go first.
    let tracefs = TracefsGuard::find_or_mount(test);
    let inst = InstanceGuard(
        tracefs
            .fs()
            .create_instance(&format!("test-{}-{n}", std::process::id()))
            .unwrap(),
    );
    let inst = &inst.0;
    inst.configure(&InstanceConfig {
        buffer_percent: Some(50),
        buffer_size_kb: buffer_kb,
        ..InstanceConfig::default()
    })
    .unwrap();
    inst.set_tracing_on(false).unwrap();
    for event in ["sched:sched_switch", "sched:sched_wakeup"] {
        inst.enable_events(event).unwrap();
    }
    let read =
        |rel: &str| String::from_utf8(RealSystem.read(&inst.path().join(rel)).unwrap()).unwrap();
    let header_page = read("events/header_page");
    let formats: Vec<_> = ["sched_switch", "sched_wakeup"]
        .iter()
        .map(|ev| drtrace_proto::consumer::KernelEventFormat {
            system: "sched".into(),
            format: read(&format!("events/sched/{ev}/format")),
        })
        .collect();
    let catalog = catalog(&formats);
    let t = tempdir();
    let session = t.path().join("session");
    let id = 24 + u64::from(n);
    let trace_uuid = write_kernel_metadata(&session, Uuid::from_u128(id.into()), &catalog);
    let mut c = Consumerd::spawn(&t.path().join("consumerd.log"));
    let cpus = inst.cpus().unwrap();
    for &cpu in &cpus {
        let setup = kernel_setup(&session, id, trace_uuid, cpu, &header_page, &formats);
        let buffer = open_trace_pipe_raw(&inst.trace_pipe_raw(cpu));
        let stats = open_read(&inst.path().join(format!("per_cpu/cpu{cpu}/stats")));
        let reply = add_kernel_stream(&mut c, &setup, &buffer, &stats);
        assert_eq!(reply, ConsumerReply::Ok, "{}", c.log_text());
    }
    inst.set_tracing_on(true).unwrap();
    let status = workload()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    inst.set_tracing_on(false).unwrap();
    assert!(status.success(), "{status}");
    let flushed_stats = flushed(
        c.request(ConsumerCommand::FlushSession { session: id }, &[]),
        &c,
    );
    let kernel: Vec<_> = cpus
        .iter()
        .map(|&cpu| inst.cpu_stats(cpu).unwrap())
        .collect();
    let stats = flushed(
        c.request(ConsumerCommand::RemoveSession { session: id }, &[]),
        &c,
    );
    assert_eq!(stats, flushed_stats, "recording was off: nothing new");
    assert_eq!(stats.len(), cpus.len());
    for (s, k) in stats.iter().zip(&kernel) {
        assert_eq!(s.error, None, "{s:?}\n{}", c.log_text());
        assert_eq!(k.entries, 0, "the flush drained the buffer: {k:?}");
        // Discard mode: no page carries a loss, the kernel's counters are the losses.
        assert_eq!(s.discarded, k.lost(), "{s:?} {k:?}");
        assert_eq!(
            s.events, k.read_events,
            "every event read was written: {s:?} {k:?}"
        );
    }
    let total: u64 = stats.iter().map(|s| s.events).sum();
    let discarded: u64 = stats.iter().map(|s| s.discarded).sum();
    assert!(total > 1000, "{total} events for the whole workload");
    eprintln!("{test}: {total} events recorded, {discarded} dropped by the kernel");

    let trace = Trace::open(&session).unwrap();
    let events = trace.read_all().unwrap();
    assert_eq!(events.len() as u64, total);
    for file in trace.stream_stats().unwrap() {
        let s = stats.iter().find(|s| s.path == file.path).unwrap();
        assert_eq!(
            (file.events, file.events_discarded),
            (s.events, s.discarded),
            "the stats' discarded is the trace's last events_discarded"
        );
        assert!(file.lost_packets.is_empty(), "{:?}", file.lost_packets);
    }
    let comm = |v: Option<&Value>| match v {
        Some(Value::Str(s)) => s.clone(),
        other => panic!("comm is not a string: {other:?}"),
    };
    let switches: Vec<_> = events.iter().filter(|e| e.name == "sched_switch").collect();
    assert!(!switches.is_empty());
    for e in &switches {
        comm(e.field("prev_comm"));
        comm(e.field("next_comm"));
    }
    // perf's children name themselves sched-messaging; the fallback workload is sh and true.
    let workload_task = |c: String| ["perf", "sched-messaging", "sh", "true"].contains(&c.as_str());
    assert!(
        switches
            .iter()
            .any(|e| workload_task(comm(e.field("prev_comm")))
                || workload_task(comm(e.field("next_comm")))),
        "the workload's tasks are in the trace"
    );

    if let Some((lines, stderr)) = babeltrace2_lines(&session) {
        assert_eq!(lines.len() as u64, total, "{stderr}");
        let reported: u64 = stderr
            .lines()
            .filter_map(|l| {
                let rest = l.split("discarded ").nth(1)?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        assert_eq!(reported, discarded, "{stderr}");
        let bt_switches: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(" sched_switch: "))
            .collect();
        assert_eq!(bt_switches.len(), switches.len());
        for l in bt_switches {
            assert!(
                l.contains("prev_comm = \"") && l.contains("next_comm = \""),
                "{l}"
            );
        }
    }
}
