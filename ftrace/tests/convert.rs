//! Round trips: captured pages → `KernelStream` → a kernel trace directory (metadata and
//! stream files) → read back with drtrace's CTF reader and with babeltrace2 → the same
//! events and field values as decoded straight from the pages.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use drtrace_ctf::metadata::{ClockInfo, Domain, StreamInfo, TraceInfo};
use drtrace_ctf::packet::PacketHeader;
use drtrace_ctf::reader::{Trace, Value};
use drtrace_ftrace::ctf::{
    self, EventCatalog, KernelChannel, KernelStream, StreamConfig, StreamCounters,
};
use drtrace_ftrace::page::Page;
use uuid::Uuid;

const BOOT_ID: Uuid = Uuid::from_u128(0xb007_0000_0000_0000_0000_0000_0000_0001);

fn trace_info(uuid: Uuid) -> TraceInfo {
    TraceInfo {
        uuid,
        domain: Domain::Kernel,
        tracer_major: 0,
        tracer_minor: 1,
        tracer_patchlevel: 0,
        hostname: "testhost".into(),
        trace_name: "roundtrip".into(),
        creation_datetime: "20250102T030405+0000".into(),
        extra_env: vec![],
        clock: ClockInfo::monotonic_ns(BOOT_ID, 1_700_000_000_000_000_000),
    }
}

/// Converts a capture into `<session>/kernel`; returns the counters per CPU.
fn convert(
    c: &Capture,
    catalog: &Arc<EventCatalog>,
    session: &Path,
    config: StreamConfig,
    kept_only: bool,
) -> BTreeMap<u32, StreamCounters> {
    let dir = session.join(ctf::KERNEL_TRACE_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let uuid = ctf::kernel_trace_uuid(Uuid::from_u128(0x5e55));
    let stream = StreamInfo {
        id: 0,
        channel: "channel0".into(),
    };
    let metadata = ctf::kernel_metadata(
        &trace_info(uuid),
        &[KernelChannel {
            stream: &stream,
            catalog,
        }],
    )
    .unwrap();
    std::fs::write(dir.join("metadata"), metadata).unwrap();
    let mut counters = BTreeMap::new();
    for (cpu, pages) in &c.pages {
        let header = PacketHeader {
            uuid,
            stream_id: 0,
            stream_instance_id: u64::from(*cpu),
        };
        let mut s = KernelStream::new(Arc::clone(catalog), c.layout, header, *cpu, config);
        let mut file = Vec::new();
        for page in pages {
            // The consumer may keep only the used part of each page.
            let bytes = if kept_only {
                let used = Page::parse(&c.layout, page).unwrap().kept_len(&c.layout);
                &page[..used]
            } else {
                &page[..]
            };
            s.push_page(bytes, &mut file).unwrap();
        }
        counters.insert(*cpu, s.finish(&mut file).unwrap());
        std::fs::write(dir.join(ctf::stream_file_name("channel0", *cpu)), file).unwrap();
    }
    counters
}

fn direct(c: &Capture, catalog: &EventCatalog) -> Vec<Decoded> {
    let mut out = Vec::new();
    for (cpu, pages) in &c.pages {
        out.extend(decode_pages(catalog, &c.layout, *cpu, pages).0);
    }
    out
}

#[test]
fn drtrace_reader_sees_what_the_pages_hold() {
    for (name, config, kept_only) in [
        ("capture", StreamConfig::default(), false),
        // Tiny packets: one per page or so, many packet boundaries.
        (
            "capture",
            StreamConfig {
                max_packet_bytes: 512,
            },
            true,
        ),
        ("capture-overwrite", StreamConfig::default(), true),
    ] {
        let c = Capture::load(&data_dir().join(name));
        let catalog = Arc::new(c.catalog());
        let session = tempfile::tempdir().unwrap();
        let counters = convert(&c, &catalog, session.path(), config, kept_only);
        let expected = direct(&c, &catalog);
        let trace = Trace::open(session.path()).unwrap();
        let events = trace.read_all().unwrap();
        assert_eq!(events.len(), expected.len(), "{name}");
        for cpu in c.pages.keys() {
            let ours: Vec<_> = expected.iter().filter(|d| d.cpu == *cpu).collect();
            let read: Vec<_> = events.iter().filter(|e| e.cpu == Some(*cpu)).collect();
            assert_eq!(ours.len(), read.len(), "{name} cpu {cpu}");
            for (d, e) in ours.iter().zip(read) {
                assert_eq!(e.name, d.name, "{name}");
                assert_eq!(e.clock_cycles, d.timestamp, "{name}: {d:?}");
                assert_eq!(e.domain(), "kernel");
                assert_eq!(e.fields, d.fields, "{name}: {d:?}");
            }
        }
        // events_discarded ends at what the pages reported lost.
        let stats = trace.stream_stats().unwrap();
        for s in &stats {
            let cpu = s.cpu.unwrap();
            assert_eq!(s.events_discarded, counters[&cpu].discarded, "{name}");
            assert_eq!(s.events, counters[&cpu].events, "{name}");
            assert!(s.lost_packets.is_empty(), "{name}: {:?}", s.lost_packets);
        }
        if name == "capture-overwrite" {
            assert!(stats.iter().any(|s| s.events_discarded > 0));
        }
        if config.max_packet_bytes == 512 {
            assert!(stats.iter().map(|s| s.packets).sum::<u64>() > 2);
        }
    }
}

#[test]
fn babeltrace2_sees_what_the_pages_hold() {
    let Some(bt) = babeltrace2() else { return };
    for name in ["capture", "capture-overwrite"] {
        let c = Capture::load(&data_dir().join(name));
        let catalog = Arc::new(c.catalog());
        let session = tempfile::tempdir().unwrap();
        let counters = convert(&c, &catalog, session.path(), StreamConfig::default(), true);
        let mut expected: Vec<String> = direct(&c, &catalog)
            .iter()
            .map(|d| bt2_line(d, &catalog))
            .collect();
        let mut got: Vec<String> = run_babeltrace2(&bt, session.path())
            .iter()
            .map(|l| without_delta(l))
            .collect();
        // babeltrace2 merges CPUs by time; compare as sorted lists.
        expected.sort();
        got.sort();
        assert_eq!(got.len(), expected.len(), "{name}");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g, e, "{name}");
        }
        // It reports the losses the pages carried.
        let lost: u64 = counters.values().map(|c| c.discarded).sum();
        let out = Command::new(&bt).arg(session.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reported: u64 = stderr
            .lines()
            .filter_map(|l| {
                let rest = l.split("discarded ").nth(1)?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        assert_eq!(reported, lost, "{name}: {stderr}");
    }
}

#[test]
fn events_with_every_field_kind_round_trip() {
    // Synthetic events for the shapes the captures lack: fixed arrays, __data_loc and
    // __rel_loc arrays, trailing strings, raw bytes, signed values of every width.
    use drtrace_ftrace::format::EventFormat;
    use drtrace_ftrace::page::{LostEvents, PageBuilder, PageLayout};
    let fields = "\tfield:s8 a;\toffset:8;\tsize:1;\tsigned:1;
\tfield:s16 b;\toffset:10;\tsize:2;\tsigned:1;
\tfield:u16 arr[3];\toffset:12;\tsize:6;\tsigned:0;
\tfield:s8 sarr[2];\toffset:18;\tsize:2;\tsigned:1;
\tfield:__data_loc u32[] dyn;\toffset:20;\tsize:4;\tsigned:0;
\tfield:__rel_loc char[] rel;\toffset:24;\tsize:4;\tsigned:0;
\tfield:struct odd raw;\toffset:28;\tsize:3;\tsigned:0;
\tfield:void * ptr;\toffset:32;\tsize:8;\tsigned:0;
\tfield:char tail[];\toffset:40;\tsize:0;\tsigned:0;
";
    let text = format!(
        "name: kinds\nID: 900\nformat:\n\
         \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
         \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
         \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
         \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n{fields}\n"
    );
    let format = EventFormat::parse("test", &text).unwrap();
    let catalog = Arc::new(EventCatalog::new(vec![format]).unwrap());

    // Build the raw event: fixed part (40 bytes), tail string, then dynamic payloads.
    let mut d = vec![0u8; 40];
    d[0..2].copy_from_slice(&900u16.to_le_bytes());
    d[4..8].copy_from_slice(&77i32.to_le_bytes());
    d[8] = (-5i8).to_le_bytes()[0];
    d[10..12].copy_from_slice(&(-300i16).to_le_bytes());
    for (i, v) in [1u16, 2, 65535].iter().enumerate() {
        d[12 + 2 * i..14 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    d[18] = (-1i8).to_le_bytes()[0];
    d[19] = 7;
    d[28..31].copy_from_slice(&[0xaa, 0xbb, 0xcc]);
    d[32..40].copy_from_slice(&0xdead_beefu64.to_le_bytes());
    d.extend_from_slice(b"tail\0\0\0\0");
    let dyn_at = d.len();
    for v in [10u32, 20, 30] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    let rel_at = d.len();
    d.extend_from_slice(b"relative\0");
    let dyn_loc = u32::try_from(dyn_at).unwrap() | 12 << 16;
    d[20..24].copy_from_slice(&dyn_loc.to_le_bytes());
    // __rel_loc counts from the end of its own field (offset 24 + size 4).
    let rel_loc = u32::try_from(rel_at - 28).unwrap() | 9 << 16;
    d[24..28].copy_from_slice(&rel_loc.to_le_bytes());

    let layout = PageLayout::DEFAULT_64;
    let page = PageBuilder::new(layout, 1_000)
        .event(3, &d, false)
        .event(1 << 20, &d, true)
        .finish(LostEvents::None, false);
    let (_, fields) = catalog.decode(&d).unwrap();
    let expect: Vec<(&str, Value)> = vec![
        ("common_flags", Value::U64(0)),
        ("common_preempt_count", Value::U64(0)),
        ("common_pid", Value::I64(77)),
        ("a", Value::I64(-5)),
        ("b", Value::I64(-300)),
        (
            "arr",
            Value::Array(vec![Value::U64(1), Value::U64(2), Value::U64(65535)]),
        ),
        ("sarr", Value::Array(vec![Value::I64(-1), Value::I64(7)])),
        (
            "dyn",
            Value::Array(vec![Value::U64(10), Value::U64(20), Value::U64(30)]),
        ),
        ("rel", Value::Str("relative".into())),
        ("raw", Value::Bytes(vec![0xaa, 0xbb, 0xcc])),
        ("ptr", Value::U64(0xdead_beef)),
        ("tail", Value::Str("tail".into())),
    ];
    let got: Vec<(&str, Value)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    assert_eq!(got, expect);

    let session = tempfile::tempdir().unwrap();
    let c = Capture {
        layout,
        formats: vec![],
        pages: BTreeMap::from([(0, vec![page])]),
        trace_text: String::new(),
    };
    let counters = convert(&c, &catalog, session.path(), StreamConfig::default(), false);
    assert_eq!(counters[&0].malformed_events, 0);
    let events = Trace::open(session.path()).unwrap().read_all().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].clock_cycles, 1_003);
    assert_eq!(events[1].clock_cycles, 1_003 + (1 << 20));
    for e in &events {
        assert_eq!(e.fields, fields);
    }

    let Some(bt) = babeltrace2() else { return };
    let lines = run_babeltrace2(&bt, session.path());
    assert_eq!(lines.len(), 2);
    let expected_line = bt2_line(
        &Decoded {
            cpu: 0,
            timestamp: 1_003,
            name: "kinds".into(),
            fields,
        },
        &catalog,
    );
    assert_eq!(without_delta(&lines[0]), expected_line);
    assert!(
        expected_line.contains("ptr = 0xDEADBEEF"),
        "{expected_line}"
    );
}
