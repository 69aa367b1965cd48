//! Tests against the real kernel (root only; CI runs as root): instance management on the
//! real tracefs, capturing pages checked against the kernel's own text output (and, with
//! `DRTRACE_FTRACE_UPDATE_FIXTURES=1`, saved as the fixtures under `tests/data/`), and an
//! end-to-end recording read back by babeltrace2.
//!
//! Each test mounts its own tracefs on a temporary directory and unmounts it afterwards,
//! and removes its instances through a drop guard even when it fails.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use drtrace_ctf::metadata::{ClockInfo, Domain, StreamInfo, TraceInfo};
use drtrace_ctf::packet::PacketHeader;
use drtrace_ctf::reader::{Trace, Value};
use drtrace_ftrace::ctf::{self, EventCatalog, KernelChannel, KernelStream, StreamConfig};
use drtrace_ftrace::format::EventName;
use drtrace_ftrace::page::Page;
use drtrace_ftrace::reader::{CpuReader, ReadMode, ReaderError};
use drtrace_ftrace::tracefs::{Instance, InstanceConfig, RealSystem, System, TracefsError};
use uuid::Uuid;

/// Restricts an instance's events to this thread and its children (a test-only knob: the
/// fixtures then hold the test's own workload, not the whole machine's). The filter is by
/// thread id, and the test runs on a thread of its own.
fn only_this_thread(inst: &Instance) {
    std::fs::write(
        inst.path().join("set_event_pid"),
        nix::unistd::gettid().to_string(),
    )
    .unwrap();
    std::fs::write(inst.path().join("options/event-fork"), "1").unwrap();
}

/// A little of everything the captured events cover: execs, opens, writes, switches.
/// With `rare`, also the page forms a short workload lacks: an exec through a path long
/// enough for an event over 112 bytes (stored with its length in `array[0]`), and a pause
/// over 2^27 ns (a time extend).
fn workload(rare: bool) {
    for _ in 0..2 {
        let status = Command::new("/bin/true").status().unwrap();
        assert!(status.success());
    }
    if rare {
        let dir = tempfile::Builder::new()
            .prefix(&"drtrace-long-path-".repeat(6))
            .tempdir()
            .unwrap();
        let link = dir.path().join("true");
        std::os::unix::fs::symlink("/bin/true", &link).unwrap();
        assert!(link.as_os_str().len() > 112);
        assert!(Command::new(&link).status().unwrap().success());
        std::thread::sleep(Duration::from_millis(150));
    }
    for path in ["/etc/hostname", "/proc/self/stat", "/nonexistent-drtrace"] {
        let _ = std::fs::File::open(path);
    }
    std::fs::write("/dev/null", b"drtrace").unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Errors of the drain callbacks: reader or tracefs ones.
type DrainError = Box<dyn std::error::Error + Send + Sync>;

/// Drains every CPU buffer of a stopped instance: CPU → pages as read.
fn drain_all(inst: &Instance, page_size: usize) -> BTreeMap<u32, Vec<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for cpu in inst.cpus().unwrap() {
        let mut reader =
            CpuReader::open(&inst.trace_pipe_raw(cpu), cpu, page_size, ReadMode::Read).unwrap();
        let mut pages = Vec::new();
        reader
            .drain::<DrainError>(
                100_000,
                || Ok(inst.cpu_stats(cpu)?.entries),
                |p| {
                    pages.push(p.to_vec());
                    Ok(())
                },
            )
            .unwrap();
        out.insert(cpu, pages);
    }
    out
}

#[test]
fn instance_management_on_the_real_tracefs() {
    if !have_root("instance_management_on_the_real_tracefs") {
        return;
    }
    let mount = PrivateTracefs::mount("instance_management_on_the_real_tracefs");
    let fs = &mount.fs;
    let id = format!("test-{}-mgmt", std::process::id());
    let inst = InstanceGuard(fs.create_instance(&id).unwrap());
    assert!(fs.list_instances().unwrap().contains(&id));
    inst.0
        .configure(&InstanceConfig {
            buffer_size_kb: Some(256),
            buffer_percent: Some(50),
            ..InstanceConfig::default()
        })
        .unwrap();
    assert_eq!(inst.0.clock().unwrap(), "mono");
    let enabled = inst.0.enable_events("syscalls:sys_enter_open*").unwrap();
    assert!(enabled.contains(&EventName::new("syscalls", "sys_enter_openat")));
    assert_eq!(inst.0.enabled_events().unwrap(), enabled);
    inst.0.enable_events("sched:*").unwrap();
    assert!(
        inst.0
            .enabled_events()
            .unwrap()
            .contains(&EventName::new("sched", "sched_switch"))
    );
    let formats = inst.0.enabled_formats().unwrap();
    assert_eq!(formats.len(), inst.0.enabled_events().unwrap().len());
    EventCatalog::new(formats).unwrap();
    inst.0.disable_events("syscalls:*").unwrap();
    assert!(
        inst.0
            .enabled_events()
            .unwrap()
            .iter()
            .all(|e| e.system == "sched")
    );
    let cpus = inst.0.cpus().unwrap();
    assert!(!cpus.is_empty());
    let stats = inst.0.cpu_stats(cpus[0]).unwrap();
    assert!(stats.now_ts.is_some(), "{stats:?}");
    assert_eq!(
        inst.0.page_layout().unwrap(),
        fs.page_layout().unwrap(),
        "instances share the page layout"
    );
    // The kernel refuses unknown clocks; the error names the file.
    let err = inst.0.set_clock("sundial").unwrap_err().to_string();
    assert!(err.contains("trace_clock"), "{err}");
    // A busy instance (an open buffer file) cannot be removed: EBUSY, with the path.
    let reader = CpuReader::open(
        &inst.0.trace_pipe_raw(cpus[0]),
        cpus[0],
        4096,
        ReadMode::Read,
    )
    .unwrap();
    let err = inst.0.remove().unwrap_err();
    assert!(
        matches!(&err, TracefsError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
        "{err}"
    );
    drop(reader);
    // Stale cleanup removes it (the guard then finds nothing to do).
    let (removed, failed) = fs.remove_stale_instances(|other| other != id).unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(removed, std::slice::from_ref(&id));
    assert!(!fs.list_instances().unwrap().contains(&id));
}

#[test]
fn captured_pages_match_the_kernel_text() {
    capture("captured_pages_match_the_kernel_text", "capture", false, 1);
}

#[test]
fn overwritten_pages_report_their_losses() {
    // A small buffer in overwrite mode loses the oldest pages; the pages read afterwards
    // carry the loss in their commit flags.
    let Some(capture) = capture(
        "overwritten_pages_report_their_losses",
        "capture-overwrite",
        true,
        40,
    ) else {
        return;
    };
    let catalog = capture.catalog();
    let lost: Vec<_> = capture
        .pages
        .iter()
        .flat_map(|(cpu, pages)| decode_pages(&catalog, &capture.layout, *cpu, pages).1)
        .filter(|l| *l != drtrace_ftrace::page::LostEvents::None)
        .collect();
    assert!(!lost.is_empty(), "no page reported lost events");
}

/// Records the workload `rounds` times in a fresh instance (overwrite mode or not), checks
/// the pages against the kernel's text rendering, and saves them under `tests/data/<dir>`
/// when `DRTRACE_FTRACE_UPDATE_FIXTURES` is set. `None` when skipped.
fn capture(test: &str, dir: &str, overwrite: bool, rounds: usize) -> Option<Capture> {
    if !have_root(test) {
        return None;
    }
    let mount = PrivateTracefs::mount(test);
    let fs = &mount.fs;
    let id = format!("test-{}-{dir}", std::process::id());
    let inst = InstanceGuard(fs.create_instance(&id).unwrap());
    inst.0
        .configure(&InstanceConfig {
            // The smallest buffers keep the fixtures small (and make overwrite mode lose).
            buffer_size_kb: Some(if overwrite { 8 } else { 64 }),
            overwrite,
            ..InstanceConfig::default()
        })
        .unwrap();
    inst.0.set_tracing_on(false).unwrap();
    only_this_thread(&inst.0);
    for (sys, ev) in CAPTURED_EVENTS {
        inst.0.enable_events(&format!("{sys}:{ev}")).unwrap();
    }
    let layout = inst.0.page_layout().unwrap();
    inst.0.set_tracing_on(true).unwrap();
    for round in 0..rounds {
        workload(round == 0);
    }
    inst.0.set_tracing_on(false).unwrap();

    // The kernel's rendering first (it does not consume), then the pages (which do).
    let trace_text = std::fs::read_to_string(inst.0.path().join("trace")).unwrap();
    let pages = drain_all(&inst.0, layout.page_size);
    let formats = CAPTURED_EVENTS
        .iter()
        .map(|(s, e)| inst.0.event_format(&EventName::new(*s, *e)).unwrap())
        .collect();
    let capture = Capture {
        layout,
        formats,
        pages,
        trace_text,
    };
    let catalog = capture.catalog();
    let mut decoded = Vec::new();
    for (cpu, pages) in &capture.pages {
        decoded.extend(decode_pages(&catalog, &capture.layout, *cpu, pages).0);
    }
    let names: std::collections::BTreeSet<&str> = decoded.iter().map(|d| d.name.as_str()).collect();
    for (_, ev) in CAPTURED_EVENTS {
        assert!(
            names.contains(ev),
            "the workload produced no {ev}: {names:?}"
        );
    }
    let compared = assert_matches_text(&decoded, &parse_trace_text(&capture.trace_text));
    assert_eq!(compared, decoded.len());

    if std::env::var_os("DRTRACE_FTRACE_UPDATE_FIXTURES").is_some() {
        let dir = data_dir().join(dir);
        let _ = std::fs::remove_dir_all(&dir);
        let events = inst.0.path().join("events");
        // Through the library: std's small first read would cut the header files.
        let read = |p: &Path| String::from_utf8(RealSystem.read(p).unwrap()).unwrap();
        capture.save(
            &dir,
            &read(&events.join("header_page")),
            &read(&events.join("header_event")),
        );
        for (sys, ev) in CAPTURED_EVENTS {
            let to = dir.join(format!("formats/{sys}/{ev}"));
            std::fs::create_dir_all(&to).unwrap();
            std::fs::write(
                to.join("format"),
                read(&events.join(sys).join(ev).join("format")),
            )
            .unwrap();
        }
        eprintln!(
            "fixtures written to {}: {} events",
            dir.display(),
            decoded.len()
        );
    }
    Some(capture)
}

#[test]
fn recording_converts_to_a_trace_babeltrace2_reads() {
    let test = "recording_converts_to_a_trace_babeltrace2_reads";
    if !have_root(test) {
        return;
    }
    let mount = PrivateTracefs::mount(test);
    let fs = &mount.fs;
    let id = format!("test-{}", std::process::id());
    let inst = InstanceGuard(fs.create_instance(&id).unwrap());
    inst.0
        .configure(&InstanceConfig {
            buffer_size_kb: Some(512),
            buffer_percent: Some(50),
            ..InstanceConfig::default()
        })
        .unwrap();
    inst.0.set_tracing_on(false).unwrap();
    inst.0.enable_events("sched:sched_switch").unwrap();
    inst.0.enable_events("sched:sched_wakeup").unwrap();
    let layout = inst.0.page_layout().unwrap();
    let catalog = Arc::new(EventCatalog::new(inst.0.enabled_formats().unwrap()).unwrap());
    assert_eq!(catalog.events().len(), 2);

    // The session's kernel trace directory and metadata.
    let session = tempfile::tempdir().unwrap();
    let dir = session.path().join(ctf::KERNEL_TRACE_DIR);
    std::fs::create_dir(&dir).unwrap();
    let uuid = ctf::kernel_trace_uuid(Uuid::from_u128(0xfeed));
    let boot_id: Uuid = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stream = StreamInfo {
        id: 0,
        channel: "channel0".into(),
    };
    let info = TraceInfo {
        uuid,
        domain: Domain::Kernel,
        tracer_major: 0,
        tracer_minor: 1,
        tracer_patchlevel: 0,
        hostname: "testhost".into(),
        trace_name: "e2e".into(),
        creation_datetime: "20250102T030405+0000".into(),
        extra_env: vec![],
        clock: ClockInfo::monotonic_ns(boot_id, 0),
    };
    let metadata = ctf::kernel_metadata(
        &info,
        &[KernelChannel {
            stream: &stream,
            catalog: &catalog,
        }],
    )
    .unwrap();
    std::fs::write(dir.join("metadata"), metadata).unwrap();

    // One reader and one converter per CPU, polled while a workload runs.
    let cpus = inst.0.cpus().unwrap();
    let mut readers: Vec<(CpuReader, KernelStream, Vec<u8>)> = cpus
        .iter()
        .map(|&cpu| {
            let reader = CpuReader::open(
                &inst.0.trace_pipe_raw(cpu),
                cpu,
                layout.page_size,
                ReadMode::Read,
            )
            .unwrap();
            let header = PacketHeader {
                uuid,
                stream_id: 0,
                stream_instance_id: u64::from(cpu),
            };
            let stream = KernelStream::new(
                Arc::clone(&catalog),
                layout,
                header,
                cpu,
                StreamConfig::default(),
            );
            (reader, stream, Vec::new())
        })
        .collect();
    inst.0.set_tracing_on(true).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done")
        .spawn()
        .unwrap();
    let workload_pid = i64::from(child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (reader, stream, file) in &mut readers {
            if reader.wait(Some(Duration::from_millis(10))).unwrap() {
                reader
                    .read_available::<ReaderError>(64, |page| {
                        let _ = stream.push_page(page, file);
                        Ok(())
                    })
                    .unwrap();
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("workload did not finish in 60 s");
        }
    }
    inst.0.set_tracing_on(false).unwrap();
    let mut converted = 0;
    for (reader, mut stream, mut file) in readers {
        let cpu = reader.cpu();
        let mut reader = reader;
        reader
            .drain::<DrainError>(
                100_000,
                || Ok(inst.0.cpu_stats(cpu)?.entries),
                |page| {
                    Page::parse(&layout, page).unwrap();
                    stream
                        .push_page(page, &mut file)
                        .unwrap_or_else(|e| panic!("cpu {cpu}: {e}"));
                    Ok(())
                },
            )
            .unwrap();
        stream.update_stats(inst.0.cpu_stats(cpu).unwrap());
        let counters = stream.finish(&mut file).unwrap();
        assert_eq!(counters.unknown_events, 0, "{counters:?}");
        assert_eq!(counters.malformed_events, 0, "{counters:?}");
        converted += counters.events;
        std::fs::write(dir.join(ctf::stream_file_name("channel0", cpu)), &file).unwrap();
    }
    assert!(converted > 0);

    // drtrace's reader: every event, with strings and sane pids.
    let events = Trace::open(session.path()).unwrap().read_all().unwrap();
    assert_eq!(events.len() as u64, converted);
    let switches: Vec<_> = events.iter().filter(|e| e.name == "sched_switch").collect();
    assert!(!switches.is_empty());
    let mut saw_workload = false;
    for e in &switches {
        for key in ["prev_comm", "next_comm"] {
            assert!(matches!(e.field(key), Some(Value::Str(_))), "{e:?}");
        }
        for key in ["prev_pid", "next_pid", "common_pid"] {
            let pid = e.field(key).and_then(Value::as_i64).unwrap();
            assert!((0..=4_194_304).contains(&pid), "{key}={pid}: {e:?}");
        }
        saw_workload |= e.field("prev_pid").and_then(Value::as_i64) == Some(workload_pid)
            || e.field("next_pid").and_then(Value::as_i64) == Some(workload_pid);
    }
    assert!(
        saw_workload,
        "the workload's pid {workload_pid} is in no sched_switch"
    );

    // babeltrace2 reads the same trace.
    let Some(bt) = babeltrace2() else { return };
    let lines = run_babeltrace2(&bt, session.path());
    assert_eq!(lines.len() as u64, converted, "{}", lines.join("\n"));
    let switches: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" sched_switch: "))
        .collect();
    assert!(
        !switches.is_empty(),
        "no sched_switch in babeltrace2's output"
    );
    let number = |line: &str, key: &str| -> i64 {
        let at = line
            .find(&format!(" {key} = "))
            .unwrap_or_else(|| panic!("{key}: {line}"));
        let rest = &line[at + key.len() + 4..];
        let end = rest.find([',', ' ']).unwrap_or(rest.len());
        rest[..end]
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}: {line}"))
    };
    let mut bt_saw_workload = false;
    for sw in &switches {
        assert!(sw.contains("prev_comm = \""), "{sw}");
        assert!(sw.contains("next_comm = \""), "{sw}");
        for key in ["common_pid", "prev_pid", "next_pid"] {
            assert!((0..=4_194_304).contains(&number(sw, key)), "{key}: {sw}");
        }
        bt_saw_workload |=
            number(sw, "prev_pid") == workload_pid || number(sw, "next_pid") == workload_pid;
    }
    assert!(
        bt_saw_workload,
        "babeltrace2 shows no sched_switch of pid {workload_pid}"
    );
}

#[test]
fn header_files_read_whole() {
    // header_page and header_event return end of file after any read at a non-zero
    // offset: a reader that starts with a small probe read gets them cut.
    if !have_root("header_files_read_whole") {
        return;
    }
    let mount = PrivateTracefs::mount("header_files_read_whole");
    let layout = mount.fs.page_layout().unwrap();
    assert_eq!(layout.page_size, 4096);
    assert_eq!(layout.data_offset, 16);
}
