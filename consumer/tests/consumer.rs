//! The real `drtrace-consumerd`, driven by a fake session daemon (`common`): buffers written
//! from this process and from child processes, traces checked with drtrace's CTF reader and
//! with babeltrace2.
//!
//! Children are this test binary re-executed with `DRTRACE_CONSUMERD_TEST_CHILD` set; they
//! run [`child_entry`] (a no-op in a normal run) and receive the buffers' descriptors over a
//! socket on their standard input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Channel, Consumerd, Session, describe, file_stats, read_seqs, run_babeltrace2, write_seq,
    write_text,
};
use drtrace_proto::consumer::{ConsumerCommand, ConsumerReply, StreamStats};
use drtrace_proto::error::ErrorCode;
use drtrace_proto::frame::{recv_message, send_message};
use drtrace_ringbuf::{Mode, Writer};

const CHILD: &str = "DRTRACE_CONSUMERD_TEST_CHILD";

/// Runs in re-executed children only: `write THREADS RECORDS WRITER_BASE` writes
/// `RECORDS` `test:seq` records from each of `THREADS` threads, thread `t` into buffer
/// `t % buffers` as writer `WRITER_BASE + t`; `die RECORDS` writes `RECORDS` records into
/// buffer 0, reserves one more and dies by SIGKILL before committing it.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let sock = UnixStream::from(stdin);
    let (_, mut fds): (String, Vec<OwnedFd>) =
        recv_message(&sock, Duration::from_secs(10)).unwrap();
    let eventfd = fds.pop().unwrap();
    let writers: Vec<Writer> = fds
        .iter()
        .map(|fd| Writer::map(fd, Some(eventfd.try_clone().unwrap())).unwrap())
        .collect();
    let args: Vec<&str> = spec.split(' ').collect();
    match args[0] {
        "write" => {
            let threads: u32 = args[1].parse().unwrap();
            let records: u64 = args[2].parse().unwrap();
            let base: u32 = args[3].parse().unwrap();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let w = &writers[t as usize % writers.len()];
                    s.spawn(move || {
                        for seq in 0..records {
                            write_seq(w, base + t, seq);
                        }
                    });
                }
            });
        }
        "die" => {
            let records: u64 = args[1].parse().unwrap();
            for seq in 0..records {
                assert!(write_seq(&writers[0], 99, seq));
            }
            let slot = writers[0].reserve(common::SEQ_EVENT, common::SEQ_PAYLOAD);
            assert!(slot.is_some(), "room for the fatal record");
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL)
                .unwrap();
            drop(slot);
            unreachable!("SIGKILL is not deliverable late");
        }
        other => panic!("unknown child role {other}"),
    }
}

/// Starts a child writer with `spec`, giving it `buffers` and `eventfd`.
fn spawn_child(spec: &str, buffers: &[BorrowedFd<'_>], eventfd: BorrowedFd<'_>) -> Child {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, spec)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut fds = buffers.to_vec();
    fds.push(eventfd);
    send_message(&ours, &"buffers", &fds, Duration::from_secs(5)).unwrap();
    child
}

/// A temp dir holding the session directory and the consumer's log.
struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    fn new() -> TestDir {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("consumerd-test")
                .tempdir()
                .unwrap(),
        }
    }

    fn session_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

fn by_path(stats: &[StreamStats]) -> BTreeMap<String, &StreamStats> {
    stats
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s,
            )
        })
        .collect()
}

/// Checks, per stream, that the file, the flush stats and babeltrace2 all say
/// recorded + discarded = emitted; returns babeltrace2's view if it ran.
fn check_accounting(
    dir: &Path,
    stats: &[StreamStats],
    emitted: &BTreeMap<String, u64>,
) -> Option<common::Babeltrace> {
    let files = file_stats(dir);
    let stats = by_path(stats);
    let mut total_events = 0;
    let mut total_discarded = 0;
    for (name, events, discarded, _) in &files {
        let s = stats[name];
        assert_eq!(s.error, None, "{name}");
        assert_eq!(s.events, *events, "{name}: stats and file agree on events");
        assert_eq!(
            s.discarded, *discarded,
            "{name}: stats and file agree on discarded"
        );
        assert_eq!(
            events + discarded,
            emitted[name],
            "{name}: recorded {events} + discarded {discarded} = emitted"
        );
        total_events += events;
        total_discarded += discarded;
    }
    assert_eq!(files.len(), emitted.len());
    let bt = run_babeltrace2(dir)?;
    assert_eq!(bt.lines.len() as u64, total_events, "{}", bt.stderr);
    assert_eq!(bt.discarded_events, total_discarded, "{}", bt.stderr);
    Some(bt)
}

#[test]
fn records_reach_the_files_with_their_fields() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(
        &dir,
        1,
        &[Channel::new("channel0", 16384, 4, Mode::Discard)],
        2,
    );
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w0 = session.writer(0);
    let w1 = session.writer(1);
    for i in 0..3000u64 {
        assert!(write_seq(if i % 3 == 0 { &w1 } else { &w0 }, 7, i));
    }
    assert!(write_text(&w0, -5, "hello, world"));
    assert!(write_text(&w1, i32::MAX, ""));
    let stats = c.flush(1);
    assert_eq!(stats.len(), 2);
    let emitted = BTreeMap::from([("channel0_0".into(), 2001), ("channel0_1".into(), 1001)]);
    let bt = check_accounting(&dir, &stats, &emitted);
    let mut seqs: Vec<u64> = read_seqs(&dir).iter().map(|(_, _, s)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..3000).collect::<Vec<_>>());
    for b in &session.buffers {
        let s = stats.iter().find(|s| s.key == b.setup.key).unwrap();
        assert_eq!(s.bytes, std::fs::metadata(&b.setup.path).unwrap().len());
        assert!(s.packets >= 1);
    }
    let events = drtrace_ctf::Trace::open(&dir).unwrap().read_all().unwrap();
    let texts: Vec<_> = events.iter().filter(|e| e.name == "test:text").collect();
    assert_eq!(texts.len(), 2);
    let hello = texts.iter().find(|e| e.cpu == Some(0)).unwrap();
    assert_eq!(hello.field("n").and_then(|v| v.as_i64()), Some(-5));
    assert_eq!(
        hello.field("msg").and_then(|v| v.as_str()),
        Some("hello, world")
    );
    let times: Vec<i64> = events.iter().map(|e| e.timestamp_ns).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    if let Some(bt) = bt {
        let mut seqs: Vec<u64> = bt.seqs().iter().map(|(_, s)| *s).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..3000).collect::<Vec<_>>());
        let text: Vec<&String> = bt
            .lines
            .iter()
            .filter(|l| l.contains("test:text"))
            .collect();
        assert_eq!(text.len(), 2);
        assert!(
            text.iter()
                .any(|l| l.ends_with("{ cpu_id = 0 }, { n = -5, msg = \"hello, world\" }")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|l| l.ends_with("{ n = 2147483647, msg = \"\" }"))
        );
    }
    c.close();
    assert!(c.wait_exit(Duration::from_secs(10)).success());
    let log = c.log_text();
    assert!(log.contains("stream 1000 added"), "{log}");
    assert!(log.contains("stream 1000 flushed"), "{log}");
}

#[test]
fn tiny_discard_buffers_account_every_event() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(&dir, 2, &[Channel::new("tiny", 4096, 2, Mode::Discard)], 2);
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w0 = session.writer(0);
    let w1 = session.writer(1);
    let n = 200_000u64;
    // Writing as fast as possible into 8 KiB: far more than the consumer can keep up with.
    std::thread::scope(|s| {
        s.spawn(|| {
            (0..n).for_each(|i| {
                write_seq(&w0, 0, i);
            })
        });
        s.spawn(|| {
            (0..n).for_each(|i| {
                write_seq(&w1, 1, i);
            })
        });
    });
    let stats = c.flush(2);
    let emitted = BTreeMap::from([("tiny_0".into(), n), ("tiny_1".into(), n)]);
    let bt = check_accounting(&dir, &stats, &emitted);
    let discarded: u64 = stats.iter().map(|s| s.discarded).sum();
    assert!(discarded > 0, "the tiny buffers overflowed");
    if let Some(bt) = bt {
        assert!(bt.discarded_events > 0, "{}", bt.stderr);
    }
    // Every event read is one that was written, once, in order per writer.
    let mut per_writer: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (_, w, seq) in read_seqs(&dir) {
        per_writer.entry(w).or_default().push(seq);
    }
    for seqs in per_writer.values() {
        assert!(seqs.windows(2).all(|p| p[0] < p[1]));
    }
}

#[test]
fn overwrite_buffers_keep_the_newest_events() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(
        &dir,
        3,
        &[Channel::new("flight", 4096, 4, Mode::Overwrite)],
        1,
    );
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    let n = 20_000u64;
    for i in 0..n {
        assert!(
            write_seq(&w, 3, i),
            "overwrite mode never drops a new event"
        );
    }
    // Overwrite buffers are not read while recording: nothing is on disk yet.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::metadata(&session.buffers[0].setup.path)
            .unwrap()
            .len(),
        0
    );
    let stats = c.flush(3);
    let emitted = BTreeMap::from([("flight_0".into(), n)]);
    let bt = check_accounting(&dir, &stats, &emitted);
    let seqs: Vec<u64> = read_seqs(&dir).iter().map(|(_, _, s)| *s).collect();
    assert!(!seqs.is_empty());
    // The newest events, contiguous, up to the last one written.
    assert_eq!(*seqs.last().unwrap(), n - 1);
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "contiguous");
    assert!(seqs.len() < 4096 * 4 / 16, "at most the buffer's worth");
    if let Some(bt) = bt {
        assert_eq!(bt.seqs().iter().map(|(_, s)| *s).collect::<Vec<_>>(), seqs);
    }
}

#[test]
fn the_switch_timer_delivers_partial_sub_buffers() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let mut channel = Channel::new("live", 65536, 4, Mode::Discard);
    channel.switch_timer_ms = 50;
    let session = Session::create(&dir, 4, &[channel], 1);
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    for i in 0..5 {
        assert!(write_seq(&w, 4, i));
    }
    // No flush: only the switch timer can close this mostly empty sub-buffer.
    let start = Instant::now();
    loop {
        if std::fs::metadata(&session.buffers[0].setup.path)
            .unwrap()
            .len()
            > 0
        {
            let seqs: Vec<u64> = read_seqs(&dir).iter().map(|(_, _, s)| *s).collect();
            if seqs.len() == 5 {
                assert_eq!(seqs, [0, 1, 2, 3, 4]);
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", c.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    // And again for the next batch.
    for i in 5..8 {
        assert!(write_seq(&w, 4, i));
    }
    let start = Instant::now();
    while read_seqs(&dir).len() < 8 {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", c.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = c.flush(4);
    check_accounting(&dir, &stats, &BTreeMap::from([("live_0".into(), 8)]));
}

#[test]
fn writers_in_several_processes_share_buffers() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(
        &dir,
        5,
        &[Channel::new("shared", 65536, 4, Mode::Discard)],
        2,
    );
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let (procs, threads, records) = (3u32, 2u32, 30_000u64);
    let memfds: Vec<BorrowedFd<'_>> = session.buffers.iter().map(|b| b.memfd.as_fd()).collect();
    // One eventfd for both buffers, as a writer of several buffers may have.
    let children: Vec<Child> = (0..procs)
        .map(|p| {
            spawn_child(
                &format!("write {threads} {records} {}", p * 10),
                &memfds,
                session.buffers[0].eventfd.as_fd(),
            )
        })
        .collect();
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "writer: {}", describe(status));
    }
    let stats = c.flush(5);
    // Thread t of every process wrote into buffer t % 2.
    let per_buffer = u64::from(procs) * records;
    let emitted = BTreeMap::from([
        ("shared_0".into(), per_buffer),
        ("shared_1".into(), per_buffer),
    ]);
    let bt = check_accounting(&dir, &stats, &emitted);
    let seen = read_seqs(&dir);
    let unique: BTreeSet<(u32, u64)> = seen.iter().map(|(_, w, s)| (*w, *s)).collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    for (file, w, _) in &seen {
        assert_eq!(
            file,
            &format!("shared_{}", w % 10 % 2),
            "writer {w} wrote into one buffer"
        );
    }
    if let Some(bt) = bt {
        let theirs: BTreeSet<(u32, u64)> = bt.seqs().into_iter().collect();
        assert_eq!(theirs, unique);
    }
}

#[test]
fn a_writer_killed_mid_record_is_released_after_writers_died() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(
        &dir,
        6,
        &[Channel::new("victim", 4096, 4, Mode::Discard)],
        1,
    );
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let b = &session.buffers[0];
    let victim_records = 10;
    let mut victim = spawn_child(
        &format!("die {victim_records}"),
        &[b.memfd.as_fd()],
        b.eventfd.as_fd(),
    );
    let status = victim.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the victim dies by SIGKILL mid-record"
    );
    // A survivor goes on writing: the victim's sub-buffer never completes, so the reader is
    // stuck behind it and the ring fills (the survivor's drops are counted).
    let w = session.writer(0);
    let survivor = 2000u64;
    for i in 0..survivor {
        write_seq(&w, 1, i);
    }
    assert_eq!(
        c.request(
            ConsumerCommand::WritersDied {
                streams: session.keys()
            },
            &[]
        ),
        ConsumerReply::Ok
    );
    let start = Instant::now();
    let stats = c.flush(6);
    // The flush waited for the stuck timeout (1 s), no more than its own limit (2 s).
    assert!(start.elapsed() < Duration::from_secs(3));
    // Emitted: the victim's committed records, its one reserved record, the survivor's.
    let emitted = BTreeMap::from([("victim_0".into(), victim_records + 1 + survivor)]);
    check_accounting(&dir, &stats, &emitted);
    let log = c.log_text();
    assert!(
        log.contains("released 1 sub-buffer(s) left half-written by a dead writer"),
        "{log}"
    );
    // The stream is still usable once the dead writer's sub-buffer is out of the way.
    for i in survivor..survivor + 100 {
        assert!(write_seq(&w, 1, i));
    }
    let stats = c.flush(6);
    let emitted = BTreeMap::from([("victim_0".into(), victim_records + 1 + survivor + 100)]);
    check_accounting(&dir, &stats, &emitted);
}

#[test]
fn a_respawned_consumer_repairs_the_file_and_continues() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(&dir, 7, &[Channel::new("chan", 4096, 8, Mode::Discard)], 2);
    let mut first = Consumerd::spawn(&t.log("first"));
    session.add_all(&mut first);
    let w0 = session.writer(0);
    let w1 = session.writer(1);
    let mut next = 0u64;
    let mut write = |n: u64| {
        for _ in 0..n {
            assert!(write_seq(&w0, 0, next));
            assert!(write_seq(&w1, 1, next));
            next += 1;
        }
    };
    write(300);
    first.flush(7);
    // More complete sub-buffers, which the first consumer drains as they complete, and a
    // partial one it never gets to.
    write(500);
    std::thread::sleep(Duration::from_millis(300));
    first.kill();
    // The first consumer "died in the middle of a write": half a packet at the end of a file.
    let path0 = session.buffers[0].setup.path.clone();
    let good = std::fs::read(&path0).unwrap();
    assert!(!good.is_empty());
    let mut torn = good.clone();
    torn.extend_from_slice(&good[..good.len().min(200) - 30]);
    std::fs::write(&path0, &torn).unwrap();
    let path1 = session.buffers[1].setup.path.clone();
    let mut garbage = std::fs::read(&path1).unwrap();
    let good1 = garbage.len();
    garbage.extend_from_slice(&[0xa5; 77]);
    std::fs::write(&path1, &garbage).unwrap();

    let mut second = Consumerd::spawn(&t.log("second"));
    session.add_all(&mut second);
    assert_eq!(
        std::fs::read(&path0).unwrap(),
        good,
        "the torn packet is cut off"
    );
    assert_eq!(std::fs::metadata(&path1).unwrap().len(), good1 as u64);
    let log = second.log_text();
    assert!(
        log.contains("bytes of an incomplete packet were cut off its end"),
        "{log}"
    );
    write(400);
    let stats = second.flush(7);
    // The files hold everything: what the first consumer wrote, then the second.
    let files = file_stats(&dir);
    for (name, events, discarded, lost_packets) in &files {
        assert_eq!((*events, *discarded, *lost_packets), (1200, 0, 0), "{name}");
    }
    let mut seqs: Vec<(u32, u64)> = read_seqs(&dir).iter().map(|(_, w, s)| (*w, *s)).collect();
    seqs.sort_unstable();
    let expected: Vec<(u32, u64)> = (0..2)
        .flat_map(|w| (0..1200).map(move |s| (w, s)))
        .collect();
    assert_eq!(seqs, expected);
    // The second consumer's stats count what it wrote.
    let written: u64 = stats.iter().map(|s| s.events).sum();
    assert!(written > 0 && written < 2400);
    assert!(stats.iter().all(|s| s.error.is_none()));
    if let Some(bt) = run_babeltrace2(&dir) {
        assert_eq!(bt.lines.len(), 2400, "{}", bt.stderr);
        assert_eq!(
            (bt.discarded_events, bt.discarded_packets),
            (0, 0),
            "{}",
            bt.stderr
        );
    }
}

/// A tmpfs mounted for one test, unmounted on drop (even when the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file there: detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

#[test]
fn a_full_disk_is_reported_and_every_event_accounted() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the disk-full test mounts a tmpfs and needs root (CI runs as root)"
        );
        eprintln!("skipping the disk-full test: it mounts a tmpfs and needs root");
        return;
    }
    let t = TestDir::new();
    let mount = t.dir.path().join("small");
    let fs = Tmpfs::mount(&mount, "256k");
    let dir = mount.join("s");
    let session = Session::create(&dir, 8, &[Channel::new("full", 65536, 4, Mode::Discard)], 1);
    // Room to free later, to see the consumer recover.
    let spare = mount.join("spare");
    std::fs::write(&spare, vec![0u8; 128 * 1024]).unwrap();
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    let mut emitted = 0u64;
    let write = |emitted: &mut u64, n: u64| {
        for _ in 0..n {
            write_seq(&w, 8, *emitted);
            *emitted += 1;
        }
    };
    // About 120 KiB free; write 600 KiB in bursts the ring can hold, so the consumer writes
    // until the disk is full and then has to keep packets pending.
    let mut reported = None;
    for _ in 0..12 {
        write(&mut emitted, 4000);
        if let Some(e) = c.wait_stream_error(Duration::from_millis(100)) {
            reported = Some(e);
        }
    }
    let reported = reported
        .or_else(|| c.wait_stream_error(Duration::from_secs(2)))
        .unwrap_or_else(|| panic!("no stream error\n{}", c.log_text()));
    assert_eq!(reported.0, session.buffers[0].setup.key);
    assert!(
        reported.1.contains("no space left on device"),
        "{}",
        reported.1
    );
    assert!(
        reported.1.contains("events are being discarded"),
        "{}",
        reported.1
    );
    assert_eq!(
        c.stream_errors.len(),
        1,
        "one message per failure episode: {:?}",
        c.stream_errors
    );
    // Still serving, still retrying.
    c.ping();
    let stats = c.flush(8);
    let s = &stats[0];
    let error = s
        .error
        .as_deref()
        .unwrap_or_else(|| panic!("no error in {s:?}"));
    assert!(error.contains("no space left on device"), "{error}");
    assert!(
        error.contains("could not be written and are counted as discarded"),
        "{error}"
    );
    // The file ends on a packet boundary, and nothing is unaccounted for.
    let files = file_stats(&dir);
    let (_, recorded, file_discarded, _) = &files[0];
    assert_eq!(s.events, *recorded);
    assert_eq!(
        s.bytes,
        std::fs::metadata(&session.buffers[0].setup.path)
            .unwrap()
            .len()
    );
    assert_eq!(
        recorded + s.discarded,
        emitted,
        "recorded + discarded = emitted"
    );
    assert!(*file_discarded <= s.discarded);
    if let Some(bt) = run_babeltrace2(&dir) {
        assert_eq!(bt.lines.len() as u64, *recorded, "{}", bt.stderr);
    }

    // Space comes back: the stream recovers, and its next packets carry the full count.
    std::fs::remove_file(&spare).unwrap();
    write(&mut emitted, 2000);
    let stats = c.flush(8);
    assert_eq!(stats[0].error, None, "{:?}", stats[0]);
    let files = file_stats(&dir);
    let (_, recorded, file_discarded, _) = &files[0];
    assert_eq!(
        recorded + file_discarded,
        emitted,
        "the file alone accounts for everything"
    );
    assert_eq!(*file_discarded, stats[0].discarded);
    assert!(stats[0].events > s.events, "new events were written");
    assert!(stats[0].discarded >= s.discarded);
    if let Some(bt) = run_babeltrace2(&dir) {
        assert_eq!(bt.lines.len() as u64, *recorded, "{}", bt.stderr);
        assert_eq!(bt.discarded_events, *file_discarded, "{}", bt.stderr);
    }
    c.close();
    assert!(c.wait_exit(Duration::from_secs(10)).success());
    drop(fs);
}

#[test]
fn malformed_requests_get_error_replies() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(&dir, 9, &[Channel::new("c", 4096, 2, Mode::Discard)], 1);
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    let bad_request = |reply: ConsumerReply| match reply {
        ConsumerReply::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
            e.message
        }
        other => panic!("{other:?}"),
    };
    // Not JSON.
    c.send_raw(&frame(b"{{{"), &[]);
    let m = bad_request(c.reply_to(0));
    assert!(m.starts_with("malformed request: "), "{m}");
    // An unknown command: the reply echoes its seq.
    c.send_raw(
        &frame(br#"{"seq":41,"command":{"type":"explode","data":null}}"#),
        &[],
    );
    let m = bad_request(c.reply_to(41));
    assert!(m.contains("explode"), "{m}");
    // A frame over the 1 MiB cap.
    c.send_raw(&frame(&vec![b' '; 2 << 20]), &[]);
    let m = bad_request(c.reply_to(0));
    assert!(m.contains("exceeds the limit"), "{m}");
    // add_stream with one descriptor instead of three.
    let b = &session.buffers[0];
    let reply = c.request(
        ConsumerCommand::AddStream(b.setup.clone()),
        &[b.memfd.as_fd()],
    );
    assert!(bad_request(reply).contains("needs 3 descriptors"));
    // A descriptor attached to a command that takes none.
    let reply = c.request(
        ConsumerCommand::FlushSession { session: 9 },
        &[b.memfd.as_fd()],
    );
    assert!(bad_request(reply).contains("takes no descriptors"));
    // A socket as the stream file.
    let (a, _b) = UnixStream::pair().unwrap();
    let reply = c.request(
        ConsumerCommand::AddStream(b.setup.clone()),
        &[b.memfd.as_fd(), b.eventfd.as_fd(), a.as_fd()],
    );
    match reply {
        ConsumerReply::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.contains("is not a regular file"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    // Not a ring buffer.
    let file = common::open_stream_file(&b.setup.path);
    let reply = c.request(
        ConsumerCommand::AddStream(b.setup.clone()),
        &[file.as_fd(), b.eventfd.as_fd(), file.as_fd()],
    );
    match reply {
        ConsumerReply::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(
                e.message
                    .starts_with("cannot map the buffer of stream 9000"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    // After all that, the consumer works: a stream, events, a flush.
    session.add_all(&mut c);
    match session.add(&mut c, 0) {
        ConsumerReply::Error(e) => assert_eq!(e.code, ErrorCode::InvalidArgument),
        other => panic!("duplicate key accepted: {other:?}"),
    }
    let w = session.writer(0);
    assert!(write_seq(&w, 9, 0));
    let stats = c.flush(9);
    assert_eq!(stats[0].events, 1);
    assert_eq!(
        c.request(
            ConsumerCommand::WritersDied {
                streams: vec![drtrace_proto::consumer::StreamKey(12345)]
            },
            &[]
        ),
        ConsumerReply::Ok
    );
    c.ping();
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn closing_the_control_socket_flushes_and_exits() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(&dir, 10, &[Channel::new("c", 65536, 4, Mode::Discard)], 1);
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    for i in 0..100 {
        assert!(write_seq(&w, 10, i));
    }
    // Nothing complete yet: only the exit flush can write these.
    c.close();
    let status = c.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", describe(status));
    assert_eq!(read_seqs(&dir).len(), 100);
    assert!(c.log_text().contains("closed the control socket"));
}

#[test]
fn sigterm_flushes_and_exits() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(&dir, 11, &[Channel::new("c", 65536, 4, Mode::Overwrite)], 1);
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    for i in 0..100 {
        assert!(write_seq(&w, 11, i));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(c.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = c.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", describe(status));
    assert_eq!(read_seqs(&dir).len(), 100);
}

#[test]
fn a_stalled_frame_ends_the_consumer_after_flushing() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(&dir, 12, &[Channel::new("c", 65536, 4, Mode::Discard)], 1);
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    for i in 0..10 {
        assert!(write_seq(&w, 12, i));
    }
    // Half a length prefix, then silence: the stream of frames can never be in step again.
    c.send_raw(&[100, 0], &[]);
    let start = Instant::now();
    let status = c.wait_exit(Duration::from_secs(10));
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert_eq!(status.code(), Some(6), "{}", describe(status));
    assert_eq!(read_seqs(&dir).len(), 10, "flushed before exiting");
    assert!(c.log_text().contains("a request frame stalled"));
}

#[test]
fn remove_session_closes_only_that_session() {
    let t = TestDir::new();
    let one = Session::create(
        &t.session_dir("one"),
        13,
        &[Channel::new("c", 4096, 4, Mode::Discard)],
        2,
    );
    let two = Session::create(
        &t.session_dir("two"),
        14,
        &[Channel::new("c", 4096, 4, Mode::Discard)],
        1,
    );
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    one.add_all(&mut c);
    two.add_all(&mut c);
    let w1 = one.writer(1);
    let w2 = two.writer(0);
    for i in 0..50 {
        assert!(write_seq(&w1, 13, i));
        assert!(write_seq(&w2, 14, i));
    }
    let stats = match c.request(ConsumerCommand::RemoveSession { session: 13 }, &[]) {
        ConsumerReply::Flushed(stats) => stats,
        other => panic!("{other:?}"),
    };
    assert_eq!(stats.len(), 2);
    assert_eq!(stats.iter().map(|s| s.events).sum::<u64>(), 50);
    assert_eq!(read_seqs(&one.dir).len(), 50);
    // Gone: a flush finds nothing, and the keys are free again.
    assert_eq!(c.flush(13), vec![]);
    assert!(c.log_text().contains("stream 13000 removed"));
    // The other session is untouched.
    assert_eq!(read_seqs(&two.dir).len(), 0);
    let stats = c.flush(14);
    assert_eq!(stats[0].events, 50);
    assert_eq!(read_seqs(&two.dir).len(), 50);
}

#[test]
fn streams_stay_usable_across_flushes() {
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(&dir, 15, &[Channel::new("c", 8192, 4, Mode::Discard)], 1);
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    let mut total = 0;
    for round in 1..=4u64 {
        for i in 0..round * 300 {
            assert!(write_seq(&w, 15, total + i));
        }
        total += round * 300;
        let stats = c.flush(15);
        assert_eq!(stats[0].events, total, "cumulative");
        check_accounting(&dir, &stats, &BTreeMap::from([("c_0".into(), total)]));
    }
    let seqs: Vec<u64> = read_seqs(&dir).iter().map(|(_, _, s)| *s).collect();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>());
}

#[test]
fn a_flush_completes_promptly_while_a_writer_keeps_writing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let t = TestDir::new();
    let dir = t.session_dir("s");
    let session = Session::create(
        &dir,
        16,
        &[Channel::new("busy", 65536, 4, Mode::Discard)],
        1,
    );
    let mut c = Consumerd::spawn(&t.log("consumerd"));
    session.add_all(&mut c);
    let w = session.writer(0);
    // Highest seq committed so far, +1 (0: none yet).
    let committed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                assert!(
                    write_seq(&w, 16, seq),
                    "slow enough never to fill the buffer"
                );
                seq += 1;
                committed.store(seq, Ordering::Release);
                if seq % 10 == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        });
        for _ in 0..3 {
            while committed.load(Ordering::Acquire) < 500 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = committed.load(Ordering::Acquire);
            let start = Instant::now();
            let stats = c.flush(16);
            let took = start.elapsed();
            assert_eq!(stats[0].error, None);
            // Everything committed before the request is on disk, without waiting for the
            // writer to stop (the flush's limit is 2 s).
            assert!(took < Duration::from_millis(1000), "flush took {took:?}");
            let seqs: BTreeSet<u64> = read_seqs(&dir).iter().map(|(_, _, s)| *s).collect();
            assert!(
                (0..before).all(|s| seqs.contains(&s)),
                "flushed up to {before}"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let total = read_seqs(&dir).len();
    let stats = c.flush(16);
    assert_eq!(stats[0].discarded, 0);
    assert!(read_seqs(&dir).len() >= total);
}

#[test]
fn without_a_socket_on_stdin_the_consumer_refuses_to_start() {
    let t = TestDir::new();
    let out = Command::new(common::CONSUMERD)
        .arg("--log-file")
        .arg(t.log("consumerd"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(out.status));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("standard input is not a socket"),
        "{stderr}"
    );
}
