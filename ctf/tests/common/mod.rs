//! Builders shared by the integration tests: they write traces the way the sessiond (the
//! metadata) and the consumer (the packets) will, through the crate's public API only.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

use drtrace_ctf::metadata::{self, ClockInfo, Domain, EnvValue, StreamInfo, TraceInfo};
use drtrace_ctf::packet::{PacketContext, PacketHeader, write_packet};
use drtrace_ctf::record::{FieldValue, HeaderKind, write_record};
// Not every test binary checks with babeltrace2.
#[allow(unused_imports)]
pub(crate) use drtrace_ctf::testing::babeltrace2;
use drtrace_proto::event::{EventDescription, FieldDescription, FieldType, LogLevel};
use uuid::Uuid;

/// The boot id every test trace uses as its clock uuid.
pub(crate) const BOOT_ID: Uuid = Uuid::from_u128(0xb007_1d00_0000_0000_0000_0000_0000_0001);
/// The session every test trace belongs to.
pub(crate) const SESSION: Uuid = Uuid::from_u128(0x5e55_1014);
/// CLOCK_REALTIME - CLOCK_MONOTONIC used by the tests: 2023-11-14T22:13:20Z.
pub(crate) const MONO_TO_REALTIME_NS: i64 = 1_700_000_000_000_000_000;

pub(crate) fn desc(provider: &str, name: &str, fields: &[(&str, FieldType)]) -> EventDescription {
    EventDescription {
        provider: provider.into(),
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

pub(crate) fn trace_info(domain: Domain, rel_dir: &str, freq: u64) -> TraceInfo {
    TraceInfo {
        uuid: metadata::trace_uuid(SESSION, rel_dir),
        domain,
        tracer_major: 0,
        tracer_minor: 1,
        tracer_patchlevel: 0,
        hostname: "testhost".into(),
        trace_name: "session1".into(),
        creation_datetime: "20231114T221320+0000".into(),
        extra_env: if rel_dir.starts_with("ust/pid/") {
            vec![
                ("procname".into(), EnvValue::Str("app".into())),
                ("vpid".into(), EnvValue::Int(42)),
            ]
        } else {
            vec![]
        },
        clock: ClockInfo {
            boot_id: BOOT_ID,
            freq,
            offset_ns: 0,
            mono_to_realtime_ns: MONO_TO_REALTIME_NS,
            precision: 1,
        },
    }
}

/// One trace (one metadata file and its stream files) under a session directory.
pub(crate) struct TraceDir {
    pub(crate) dir: PathBuf,
    pub(crate) info: TraceInfo,
}

impl TraceDir {
    /// Creates `<session>/<rel_dir>` with a metadata file declaring `channels` and
    /// `events` (stream id, event id, description).
    pub(crate) fn create(
        session: &Path,
        rel_dir: &str,
        domain: Domain,
        freq: u64,
        channels: &[&str],
        events: &[(u32, u32, EventDescription)],
    ) -> Self {
        let dir = session.join(rel_dir);
        std::fs::create_dir_all(&dir).unwrap();
        let info = trace_info(domain, rel_dir, freq);
        let streams: Vec<StreamInfo> = channels
            .iter()
            .enumerate()
            .map(|(i, c)| StreamInfo {
                id: u32::try_from(i).unwrap(),
                channel: (*c).into(),
            })
            .collect();
        let mut text = metadata::preamble(&info, &streams).unwrap();
        for (stream, id, d) in events {
            text += &metadata::event_declaration(*stream, *id, d).unwrap();
        }
        std::fs::write(dir.join("metadata"), text).unwrap();
        Self { dir, info }
    }

    pub(crate) fn stream(&self, stream_id: u32, cpu: u32) -> StreamBuilder {
        StreamBuilder::new(self.info.uuid, stream_id, cpu)
    }

    pub(crate) fn write_stream(&self, file_name: &str, stream: &StreamBuilder) -> PathBuf {
        let path = self.dir.join(file_name);
        std::fs::write(&path, &stream.out).unwrap();
        path
    }
}

/// Builds a stream file packet by packet, like the consumer does from sub-buffers.
pub(crate) struct StreamBuilder {
    header: PacketHeader,
    cpu: u32,
    pub(crate) out: Vec<u8>,
    records: Vec<u8>,
    begin: u64,
    previous: u64,
    seq: u64,
    pub(crate) discarded: u64,
    pub(crate) kinds: Vec<HeaderKind>,
}

impl StreamBuilder {
    pub(crate) fn new(uuid: Uuid, stream_id: u32, cpu: u32) -> Self {
        Self {
            header: PacketHeader {
                uuid,
                stream_id,
                stream_instance_id: u64::from(cpu),
            },
            cpu,
            out: Vec::new(),
            records: Vec::new(),
            begin: 0,
            previous: 0,
            seq: 0,
            discarded: 0,
            kinds: Vec::new(),
        }
    }

    pub(crate) fn begin_packet(&mut self, timestamp_begin: u64) -> &mut Self {
        self.records.clear();
        self.begin = timestamp_begin;
        self.previous = timestamp_begin;
        self
    }

    pub(crate) fn record(
        &mut self,
        id: u32,
        timestamp: u64,
        fields: &[FieldValue<'_>],
    ) -> &mut Self {
        let kind = write_record(&mut self.records, id, timestamp, self.previous, fields);
        self.kinds.push(kind);
        self.previous = timestamp;
        self
    }

    /// Appends raw record bytes (hand-made headers).
    pub(crate) fn raw(&mut self, bytes: &[u8], timestamp: u64) -> &mut Self {
        self.records.extend_from_slice(bytes);
        self.previous = timestamp;
        self
    }

    /// Closes the packet at `timestamp_end` with `lost` more events discarded.
    pub(crate) fn end_packet(&mut self, timestamp_end: u64, lost: u64) -> &mut Self {
        self.discarded += lost;
        let context = PacketContext {
            timestamp_begin: self.begin,
            timestamp_end,
            packet_seq_num: self.seq,
            events_discarded: self.discarded,
            cpu_id: self.cpu,
            ..PacketContext::default()
        };
        write_packet(&mut self.out, &self.header, &context, &self.records).unwrap();
        self.seq += 1;
        self
    }

    /// Skips `n` sequence numbers, as if the consumer lost packets.
    pub(crate) fn lose_packets(&mut self, n: u64) -> &mut Self {
        self.seq += n;
        self
    }
}

/// Runs `babeltrace2 <dir>` in UTC and returns its stdout lines and its stderr; panics with
/// both if it fails.
pub(crate) fn run_babeltrace2(bt: &Path, dir: &Path) -> (Vec<String>, String) {
    let out = Command::new(bt).arg(dir).env("TZ", "UTC").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "babeltrace2 {} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        dir.display(),
        out.status
    );
    (stdout.lines().map(str::to_owned).collect(), stderr)
}
