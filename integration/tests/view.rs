//! `drtrace view`: traces written here with `drtrace-ctf` (as the session daemon and the
//! consumer write them), read back through the CLI as text and JSON lines; limits, lost
//! events, reader errors, session names, and a session recorded through the whole data path.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use drtrace_ctf::metadata::{self, ClockInfo, Domain, StreamInfo, TraceInfo};
use drtrace_ctf::packet::{PacketContext, PacketHeader, write_packet};
use drtrace_ctf::reader::Trace;
use drtrace_ctf::record::{FieldValue, write_record};
use drtrace_ctf::text::TextFormatter;
use drtrace_proto::event::{EventDescription, FieldDescription, FieldType, LogLevel};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::demo::{check_demo_lines, parse_lines};
use crate::harness::{TestEnv, bins};

/// CLOCK_REALTIME - CLOCK_MONOTONIC of the written traces: 2023-11-14T22:13:20Z.
const EPOCH_NS: i64 = 1_700_000_000_000_000_000;
/// Where the metadata goes, relative to the session directory.
const UST: &str = "ust/uid/1000/64-bit";

fn event(name: &str, fields: &[(&str, FieldType)]) -> EventDescription {
    EventDescription {
        provider: "synth".into(),
        name: name.into(),
        loglevel: LogLevel::Info,
        fields: fields
            .iter()
            .map(|(n, t)| FieldDescription {
                name: (*n).into(),
                ty: *t,
            })
            .collect(),
    }
}

/// One stream file under construction, packet by packet.
struct Stream {
    header: PacketHeader,
    cpu: u32,
    out: Vec<u8>,
    seq: u64,
    discarded: u64,
}

impl Stream {
    fn new(uuid: Uuid, cpu: u32) -> Self {
        Self {
            header: PacketHeader {
                uuid,
                stream_id: 0,
                stream_instance_id: u64::from(cpu),
            },
            cpu,
            out: Vec::new(),
            seq: 0,
            discarded: 0,
        }
    }

    /// Appends a packet of `records` (id, timestamp, fields) after `lost` more events were
    /// discarded.
    fn packet(&mut self, records: &[(u32, u64, Vec<FieldValue<'_>>)], lost: u64) -> &mut Self {
        let begin = records.first().map_or(0, |r| r.1 - 1);
        let mut bytes = Vec::new();
        let mut previous = begin;
        for (id, ts, fields) in records {
            write_record(&mut bytes, *id, *ts, previous, fields);
            previous = *ts;
        }
        self.discarded += lost;
        let context = PacketContext {
            timestamp_begin: begin,
            timestamp_end: previous + 1,
            packet_seq_num: self.seq,
            events_discarded: self.discarded,
            cpu_id: self.cpu,
            ..PacketContext::default()
        };
        write_packet(&mut self.out, &self.header, &context, &bytes).unwrap();
        self.seq += 1;
        self
    }
}

/// Writes a metadata file declaring `synth:tick { count: u64, msg: string }` (id 0) and
/// `synth:flag { ok: bool, raw: bytes, x: f64 }` (id 1) under `session/UST`; returns the
/// directory and the trace uuid.
fn metadata(session: &Path) -> (std::path::PathBuf, Uuid) {
    let dir = session.join(UST);
    std::fs::create_dir_all(&dir).unwrap();
    let uuid = metadata::trace_uuid(Uuid::from_u128(0x5e55), UST);
    let info = TraceInfo {
        uuid,
        domain: Domain::Ust,
        tracer_major: 0,
        tracer_minor: 1,
        tracer_patchlevel: 0,
        hostname: "testhost".into(),
        trace_name: "synthetic".into(),
        creation_datetime: "20231114T221320+0000".into(),
        extra_env: vec![],
        clock: ClockInfo::monotonic_ns(Uuid::from_u128(0xb007), EPOCH_NS),
    };
    let streams = [StreamInfo {
        id: 0,
        channel: "channel0".into(),
    }];
    let mut text = metadata::preamble(&info, &streams).unwrap();
    let tick = event(
        "tick",
        &[("count", FieldType::U64), ("msg", FieldType::String)],
    );
    let flag = event(
        "flag",
        &[
            ("ok", FieldType::Bool),
            ("raw", FieldType::Bytes),
            ("x", FieldType::F64),
        ],
    );
    text += &metadata::event_declaration(0, 0, &tick).unwrap();
    text += &metadata::event_declaration(0, 1, &flag).unwrap();
    std::fs::write(dir.join("metadata"), text).unwrap();
    (dir, uuid)
}

/// A small trace under `session`: ticks 0..4 at 1000, 2000, 3000, 4000 ns (even ones on CPU
/// 0, odd ones on CPU 1), then a flag at 5000 on CPU 0 after 4 discarded events; CPU 1 lost
/// two packets between its ticks.
fn write_trace(session: &Path) {
    let (dir, uuid) = metadata(session);
    let tick = |n: u64, msg: &'static str| {
        (
            0,
            1000 * (n + 1),
            vec![FieldValue::U64(n), FieldValue::Str(msg)],
        )
    };
    let mut cpu0 = Stream::new(uuid, 0);
    cpu0.packet(&[tick(0, "zero"), tick(2, "two")], 0).packet(
        &[(
            1,
            5000,
            vec![
                FieldValue::Bool(true),
                FieldValue::Bytes(&[1, 2]),
                FieldValue::F64(0.5),
            ],
        )],
        4,
    );
    std::fs::write(dir.join("channel0_0"), &cpu0.out).unwrap();
    let mut cpu1 = Stream::new(uuid, 1);
    cpu1.packet(&[tick(1, "one")], 0);
    cpu1.seq += 2;
    cpu1.packet(&[tick(3, "three")], 0);
    std::fs::write(dir.join("channel0_1"), &cpu1.out).unwrap();
}

/// A trace of `n` ticks on one CPU, one packet per 1000.
fn write_big_trace(session: &Path, n: u64) {
    let (dir, uuid) = metadata(session);
    let mut s = Stream::new(uuid, 0);
    let mut i = 0;
    while i < n {
        let records: Vec<_> = (i..n.min(i + 1000))
            .map(|k| {
                (
                    0,
                    10 * (k + 1),
                    vec![FieldValue::U64(k), FieldValue::Str("m")],
                )
            })
            .collect();
        s.packet(&records, 0);
        i += 1000;
    }
    std::fs::write(dir.join("channel0_0"), &s.out).unwrap();
}

/// What `drtrace view` must print for `dir`: the library's own rendering.
fn library_lines(dir: &Path) -> Vec<String> {
    let mut f = TextFormatter::new();
    Trace::open(dir)
        .unwrap()
        .events()
        .map(|e| f.format(&e.unwrap()))
        .collect()
}

fn view<'a>(env: &'a TestEnv, path: &Path) -> crate::harness::TestCommand<'a> {
    env.drtrace([OsStr::new("view"), path.as_os_str()])
}

#[test]
fn view_prints_a_trace_and_warns_about_losses() {
    let env = TestEnv::new("view_prints_a_trace_and_warns_about_losses");
    let trace = env.root.join("t");
    write_trace(&trace);
    let out = view(&env, &trace).success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, library_lines(&trace), "{}", out.report());
    assert_eq!(
        lines,
        [
            "[22:13:20.000001000] (+?.?????????) testhost synth:tick: { cpu_id = 0 }, { count = 0, msg = \"zero\" }",
            "[22:13:20.000002000] (+0.000001000) testhost synth:tick: { cpu_id = 1 }, { count = 1, msg = \"one\" }",
            "[22:13:20.000003000] (+0.000001000) testhost synth:tick: { cpu_id = 0 }, { count = 2, msg = \"two\" }",
            "[22:13:20.000004000] (+0.000001000) testhost synth:tick: { cpu_id = 1 }, { count = 3, msg = \"three\" }",
            "[22:13:20.000005000] (+0.000001000) testhost synth:flag: { cpu_id = 0 }, { ok = true, raw = [ [0] = 1, [1] = 2 ], x = 0.5 }",
        ],
        "{}",
        out.report()
    );
    let dir = trace.join(UST);
    let warnings: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        warnings,
        [
            format!(
                "warning: the tracer discarded 4 events in stream {} (its buffers were full)",
                dir.join("channel0_0").display()
            ),
            format!(
                "warning: 2 packets are missing from stream {} (gaps in packet sequence numbers)",
                dir.join("channel0_1").display()
            ),
        ],
        "{}",
        out.report()
    );
    // The directory holding the metadata, or the metadata file itself, work as well.
    assert_eq!(view(&env, &dir).success().stdout, out.stdout);
    assert_eq!(
        view(&env, &dir.join("metadata")).success().stdout,
        out.stdout
    );
    assert!(!env.socket.exists(), "view of a path started a daemon");
}

#[test]
fn view_json_prints_one_event_per_line() {
    let env = TestEnv::new("view_json_prints_one_event_per_line");
    let trace = env.root.join("t");
    write_trace(&trace);
    let out = env
        .drtrace([OsStr::new("--json"), OsStr::new("view"), trace.as_os_str()])
        .success();
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", out.report()))
        })
        .collect();
    assert_eq!(events.len(), 5, "{}", out.report());
    assert_eq!(
        events[0],
        json!({"timestamp_ns": EPOCH_NS + 1000, "name": "synth:tick", "channel": "channel0",
               "cpu": 0, "fields": {"count": 0, "msg": "zero"}})
    );
    assert_eq!(events[3]["fields"], json!({"count": 3, "msg": "three"}));
    assert_eq!(events[3]["cpu"], 1);
    assert_eq!(
        events[4],
        json!({"timestamp_ns": EPOCH_NS + 5000, "name": "synth:flag", "channel": "channel0",
               "cpu": 0, "fields": {"ok": true, "raw": [1, 2], "x": 0.5}})
    );
    // The warnings stay on stderr, as text.
    assert!(
        out.stderr.contains("discarded 4 events"),
        "{}",
        out.report()
    );
}

#[test]
fn view_limit_stops_early() {
    let env = TestEnv::new("view_limit_stops_early");
    let trace = env.root.join("t");
    write_trace(&trace);
    let out = env
        .drtrace([
            OsStr::new("view"),
            OsStr::new("--limit"),
            OsStr::new("2"),
            trace.as_os_str(),
        ])
        .success();
    let all = library_lines(&trace);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        all[..2],
        "{}",
        out.report()
    );
    let out = env
        .drtrace([
            OsStr::new("view"),
            OsStr::new("--limit"),
            OsStr::new("0"),
            trace.as_os_str(),
        ])
        .success();
    assert!(out.stdout.is_empty(), "{}", out.report());
    env.drtrace(["view", "--limit", "many", "x"]).fails_with(2);
}

#[test]
fn view_keeps_the_events_read_before_a_broken_packet() {
    let env = TestEnv::new("view_keeps_the_events_read_before_a_broken_packet");
    let trace = env.root.join("t");
    let (dir, uuid) = metadata(&trace);
    let mut s = Stream::new(uuid, 0);
    s.packet(
        &[
            (0, 1000, vec![FieldValue::U64(1), FieldValue::Str("a")]),
            (0, 2000, vec![FieldValue::U64(2), FieldValue::Str("b")]),
        ],
        0,
    );
    let mut bytes = s.out.clone();
    bytes.extend_from_slice(&[0xff; 40]);
    let stream = dir.join("channel0_0");
    std::fs::write(&stream, bytes).unwrap();
    let out = view(&env, &trace).run();
    assert_eq!(out.code(), 1, "{}", out.report());
    let msg = out.error_line();
    assert!(msg.contains(stream.to_str().unwrap()), "{msg}");
    let counts: Vec<i128> = parse_lines(&out.stdout, "drtrace view")
        .iter()
        .map(|l| l.int("count"))
        .collect();
    assert_eq!(counts, [1, 2], "{}", out.report());
}

#[test]
fn view_of_nothing_fails_in_one_line_without_a_daemon() {
    let env = TestEnv::new("view_of_nothing_fails_in_one_line_without_a_daemon");
    let missing = env.root.join("missing");
    let msg = view(&env, &missing).fails();
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    let empty = env.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let msg = view(&env, &empty).fails();
    assert!(msg.contains("no metadata"), "{msg}");
    let msg = env.drtrace(["view", "nosuch"]).fails();
    assert!(
        msg.contains("nosuch") && msg.contains("no session daemon"),
        "{msg}"
    );
    let msg = env.drtrace(["view"]).fails();
    assert!(msg.contains("no current session"), "{msg}");
    // A relative path that does not exist is not mistaken for a session name.
    let msg = env.drtrace(["view", "./nosuch"]).fails();
    assert!(msg.contains("./nosuch"), "{msg}");
    assert!(!env.socket.exists(), "view started a daemon");
}

#[test]
fn view_finds_a_sessions_trace_by_name() {
    let env = TestEnv::new("view_finds_a_sessions_trace_by_name");
    env.drtrace(["create", "synth"]).success();
    let msg = env.drtrace(["view", "synth"]).fails();
    assert!(
        msg.contains("synth") && msg.contains("no trace yet"),
        "{msg}"
    );
    let dir = env.traces.join("synth");
    write_trace(&dir);
    let expected = library_lines(&dir).join("\n") + "\n";
    let out = env.drtrace(["view", "synth"]).success();
    assert_eq!(out.stdout, expected, "{}", out.report());
    // Without a name: the current session.
    let out = env.drtrace(["view"]).success();
    assert_eq!(out.stdout, expected, "{}", out.report());
    let msg = env.drtrace(["view", "other"]).fails();
    assert!(
        msg.contains("other") && msg.contains("neither a trace directory nor a session"),
        "{msg}"
    );
    // An existing path wins over a session of the same name.
    let cwd = env.root.join("cwd");
    write_big_trace(&cwd.join("synth"), 3);
    let out = env.drtrace(["view", "synth"]).current_dir(&cwd).success();
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.report());
}

#[test]
fn view_streams_a_large_trace_and_a_closed_stdout_is_not_a_failure() {
    let env = TestEnv::new("view_streams_a_large_trace_and_a_closed_stdout_is_not_a_failure");
    let trace = env.root.join("big");
    write_big_trace(&trace, 20_000);
    let out = view(&env, &trace).success();
    assert_eq!(out.stdout.lines().count(), 20_000);
    let mut child = Command::new(&bins().drtrace)
        .args([OsStr::new("view"), trace.as_os_str()])
        .env_clear()
        .envs(env.base_vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the CLI writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn view_reads_a_session_recorded_by_the_data_path_before_destroy() {
    let env = TestEnv::new("view_reads_a_session_recorded_by_the_data_path_before_destroy");
    env.drtrace(["create", "live"]).success();
    env.drtrace(["enable-event", "-u", "-a"]).success();
    env.drtrace(["start"]).success();
    env.demo(["--iterations", "30"]).success();
    env.drtrace(["stop"]).success();
    let out = env.drtrace(["view", "live"]).success();
    check_demo_lines(
        &parse_lines(&out.stdout, "drtrace view"),
        30,
        "drtrace view live",
    );
    let current = env.drtrace(["view"]).success();
    assert_eq!(current.stdout, out.stdout);
    env.drtrace(["destroy"]).success();
    let after = view(&env, &env.traces.join("live")).success();
    assert_eq!(after.stdout, out.stdout, "the trace changed after destroy");
}
