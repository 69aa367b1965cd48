//! `tracebench-stats [--lttng] TRACE_DIR`: what a trace holds, for `benches/run`.
//!
//! For a drtrace trace, reads every stream with `drtrace-ctf` and prints one line:
//! `events=N discarded=M lost_packets=K streams=S` (sums over the streams; `discarded` is
//! each stream's last `events_discarded`). Faster than counting with babeltrace2 on the
//! tens of millions of events of a throughput run.
//!
//! With `--lttng`, walks the packets of an LTTng-UST trace instead and prints
//! `discarded=M packets=P streams=S` (no event count: that needs LTTng's event decoding,
//! babeltrace2's job). `lttng list` can report a discarded count with bit 63 set when
//! several threads share a buffer, so the benchmark reads the count the consumer wrote into
//! the packets, as a trace reader does.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use drtrace_ctf::reader::Trace;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let lttng = args.first().is_some_and(|a| a == "--lttng");
    if lttng {
        args.remove(0);
    }
    let [dir] = args.as_slice() else {
        eprintln!("usage: tracebench-stats [--lttng] TRACE_DIR");
        return ExitCode::from(2);
    };
    let dir = Path::new(dir);
    let result = if lttng {
        lttng_stats(dir)
    } else {
        drtrace_stats(dir)
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tracebench-stats: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn drtrace_stats(dir: &Path) -> Result<String, String> {
    let stats = Trace::open(dir)
        .and_then(|t| t.stream_stats())
        .map_err(|e| e.to_string())?;
    let events: u64 = stats.iter().map(|s| s.events).sum();
    let discarded: u64 = stats.iter().map(|s| s.events_discarded).sum();
    let lost: u64 = stats
        .iter()
        .flat_map(|s| &s.lost_packets)
        .map(|g| g.lost())
        .sum();
    Ok(format!(
        "events={events} discarded={discarded} lost_packets={lost} streams={}",
        stats.len()
    ))
}

/// CTF packet magic.
const MAGIC: u32 = 0xC1FC_1FC1;
/// lttng-ust 2.13's packet header (magic, uuid, stream_id, stream_instance_id: 32 bytes)
/// and context (timestamp_begin, timestamp_end, content_size, packet_size, packet_seq_num,
/// events_discarded, cpu_id), every field 8-byte aligned: byte offsets of what we read.
const PACKET_SIZE_AT: usize = 56;
const DISCARDED_AT: usize = 72;
const CONTEXT_END: usize = 84;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Sums, over the stream files under `dir`, the last packet's `events_discarded`.
fn lttng_stats(dir: &Path) -> Result<String, String> {
    let mut files = Vec::new();
    find_streams(dir, &mut files).map_err(|e| e.to_string())?;
    let (mut discarded, mut packets) = (0u64, 0u64);
    for f in &files {
        let data = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut at = 0usize;
        let mut last = 0u64;
        while at < data.len() {
            let p = &data[at..];
            if p.len() < CONTEXT_END || p[..4] != MAGIC.to_le_bytes() {
                return Err(format!("{}: no packet at offset {at}", f.display()));
            }
            let size = usize::try_from(u64_at(p, PACKET_SIZE_AT) / 8).unwrap_or(usize::MAX);
            if size < CONTEXT_END || size > p.len() {
                return Err(format!("{}: bad packet size at offset {at}", f.display()));
            }
            last = u64_at(p, DISCARDED_AT);
            packets += 1;
            at += size;
        }
        discarded += last;
    }
    Ok(format!(
        "discarded={discarded} packets={packets} streams={}",
        files.len()
    ))
}

/// Stream files: every file under `dir` but `metadata` and the `index` directories.
fn find_streams(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type()?.is_dir() {
            if name != "index" {
                find_streams(&path, out)?;
            }
        } else if name != "metadata" {
            out.push(path);
        }
    }
    Ok(())
}
