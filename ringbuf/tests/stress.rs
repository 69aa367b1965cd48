//! Multi-process runs: several processes × threads writing sequence-numbered records into
//! shared per-CPU buffers while this process reads them, and a writer SIGKILLed between
//! reserve and commit.
//!
//! Children are this test binary re-executed with `DRTRACE_RINGBUF_TEST_CHILD` set; they
//! run [`child_entry`] (a no-op in a normal run) and get the buffers as inherited fds.
#![cfg(not(loom))]

mod common;

use common::{SEQ_PAYLOAD, StreamCheck, write_seq};
use drtrace_ringbuf::{ClockSource, Layout, Mode, Reader, Writer, create_buffer};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "DRTRACE_RINGBUF_TEST_CHILD";

/// A child's instructions, passed in the environment.
#[derive(Debug)]
struct Spec {
    role: String,
    proc_id: u32,
    threads: u32,
    records: u64,
    fds: Vec<RawFd>,
    efd: Option<RawFd>,
}

impl Spec {
    fn encode(&self) -> String {
        let fds: Vec<String> = self.fds.iter().map(|f| f.to_string()).collect();
        format!(
            "{} {} {} {} {} {}",
            self.role,
            self.proc_id,
            self.threads,
            self.records,
            fds.join(","),
            self.efd.unwrap_or(-1)
        )
    }

    fn decode(s: &str) -> Spec {
        let v: Vec<&str> = s.split(' ').collect();
        let efd: RawFd = v[5].parse().unwrap();
        Spec {
            role: v[0].to_owned(),
            proc_id: v[1].parse().unwrap(),
            threads: v[2].parse().unwrap(),
            records: v[3].parse().unwrap(),
            fds: v[4].split(',').map(|f| f.parse().unwrap()).collect(),
            efd: (efd >= 0).then_some(efd),
        }
    }
}

/// Takes ownership of an fd number the parent left open across exec.
fn inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: the parent dup'ed this fd (without CLOEXEC) for this process only and passed
    // its number in the environment; nothing else in this process owns or closes it, and
    // each number is converted once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Runs in re-executed children only.
#[test]
fn child_entry() {
    let Ok(raw) = std::env::var(CHILD) else {
        return;
    };
    let spec = Spec::decode(&raw);
    let efd = spec.efd.map(inherited);
    let writers: Vec<Writer> = spec
        .fds
        .iter()
        .map(|&fd| {
            let fd = inherited(fd);
            let wake = efd.as_ref().map(|e| e.try_clone().unwrap());
            Writer::map(&fd, wake).unwrap()
        })
        .collect();
    match spec.role.as_str() {
        "write" => child_write(&spec, &writers),
        "die" => child_die(&spec, &writers[0]),
        other => panic!("unknown child role {other}"),
    }
}

/// Each thread writes `records` sequence-numbered records, choosing the buffer of the CPU
/// it runs on (rotated every 1000 records so buffers are also shared across CPUs), then
/// reports how many it emitted into each buffer.
fn child_write(spec: &Spec, writers: &[Writer]) {
    let emitted: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|t| {
                s.spawn(move || {
                    let writer_id = spec.proc_id * 16 + t;
                    let mut counts = vec![0u64; writers.len()];
                    for seq in 0..spec.records {
                        let cpu = nix::sched::sched_getcpu().unwrap_or(0);
                        let b = (cpu + (seq / 1000) as usize) % writers.len();
                        let id = if seq % 4 == 0 { 1000 } else { 5 };
                        write_seq(&writers[b], id, writer_id, seq);
                        counts[b] += 1;
                    }
                    (writer_id, counts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (writer_id, counts) = h.join().unwrap();
                counts
                    .into_iter()
                    .enumerate()
                    .map(|(b, c)| {
                        println!("EMIT {b} {writer_id} {c}");
                        c
                    })
                    .collect()
            })
            .collect()
    });
    assert_eq!(
        emitted.iter().flatten().sum::<u64>(),
        spec.records * u64::from(spec.threads)
    );
}

/// Writes a few records, reserves one more and dies before committing it. Reports how many
/// reservations the fatal record took (each failed one is a dropped, counted event).
fn child_die(spec: &Spec, w: &Writer) {
    for seq in 0..spec.records {
        write_seq(w, 5, 99, seq);
    }
    let start = Instant::now();
    let mut attempts = 0;
    let slot = loop {
        attempts += 1;
        if let Some(slot) = w.reserve(5, SEQ_PAYLOAD) {
            break slot;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "buffer never had room"
        );
        std::thread::sleep(Duration::from_micros(100));
    };
    println!("\nATTEMPTS {attempts}");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(slot);
    unreachable!("SIGKILL is not deliverable late");
}

/// Spawns a child with `fds` and `efd` inherited.
fn spawn(mut spec: Spec, fds: &[&OwnedFd], efd: Option<&OwnedFd>) -> Child {
    // dup() leaves CLOEXEC clear: the child inherits these, under the same numbers.
    let dups: Vec<OwnedFd> = fds.iter().map(|fd| nix::unistd::dup(fd).unwrap()).collect();
    let edup = efd.map(|e| nix::unistd::dup(e).unwrap());
    spec.fds = dups.iter().map(|d| d.as_raw_fd()).collect();
    spec.efd = edup.as_ref().map(|d| d.as_raw_fd());
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, spec.encode())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Per-buffer reader state of the parent.
struct Stream {
    reader: Reader,
    check: StreamCheck,
    out: Vec<u8>,
    seen: HashMap<u32, Vec<bool>>,
}

impl Stream {
    fn drain(&mut self) -> u64 {
        let mut n = 0;
        while let Some(info) = self.reader.read_packet(&mut self.out).unwrap() {
            for (w, seq) in self.check.packet(&info, &self.out) {
                let seen = self.seen.entry(w).or_default();
                let i = usize::try_from(seq).unwrap();
                if seen.len() <= i {
                    seen.resize(i + 1, false);
                }
                assert!(!seen[i], "writer {w} seq {seq} read twice");
                seen[i] = true;
            }
            n += 1;
        }
        n
    }

    fn final_lost(&mut self) -> u64 {
        self.reader
            .final_packet()
            .map_or(self.check.last_discarded, |p| p.events_discarded_total)
    }
}

/// Waits until some buffer has data or `timeout` passes, on one shared eventfd.
fn wait_any(streams: &[Stream], efd: &OwnedFd, timeout: Duration) {
    let ready = streams.iter().any(|s| s.reader.arm_wakeup());
    if !ready {
        let mut fds = [PollFd::new(efd.as_fd(), PollFlags::POLLIN)];
        let t = PollTimeout::try_from(timeout).unwrap();
        if poll(&mut fds, t).unwrap() > 0 {
            let mut buf = [0u8; 8];
            let _ = nix::unistd::read(efd, &mut buf);
        }
    }
    for s in streams {
        s.reader.disarm_wakeup();
    }
}

fn multi_process(mode: Mode, clock: ClockSource, procs: u32, threads: u32, records: u64) {
    let layout = Layout {
        subbuf_size: 8192,
        num_subbuf: 4,
        mode,
    };
    let nbuf = 2;
    let efd =
        OwnedFd::from(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap());
    let fds: Vec<OwnedFd> = (0..nbuf)
        .map(|cpu| create_buffer(&layout, clock, &format!("stress_{cpu}")).unwrap())
        .collect();
    let mut streams: Vec<Stream> = fds
        .iter()
        .map(|fd| Stream {
            reader: Reader::map(fd, Some(efd.try_clone().unwrap())).unwrap(),
            check: StreamCheck::default(),
            out: Vec::new(),
            seen: HashMap::new(),
        })
        .collect();
    let fd_refs: Vec<&OwnedFd> = fds.iter().collect();
    let mut children: Vec<Child> = (0..procs)
        .map(|p| {
            let spec = Spec {
                role: "write".into(),
                proc_id: p + 1,
                threads,
                records,
                fds: Vec::new(),
                efd: None,
            };
            spawn(spec, &fd_refs, Some(&efd))
        })
        .collect();
    let outputs: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let out = BufReader::new(c.stdout.take().unwrap());
            std::thread::spawn(move || out.lines().map_while(Result::ok).collect::<Vec<_>>())
        })
        .collect();
    let start = Instant::now();
    let mut wakeups = 0u64;
    loop {
        let packets: u64 = streams.iter_mut().map(Stream::drain).sum();
        let running = children.iter_mut().any(|c| c.try_wait().unwrap().is_none());
        if !running {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "children hang");
        if packets == 0 {
            wait_any(&streams, &efd, Duration::from_millis(20));
            wakeups += 1;
        }
    }
    for c in &mut children {
        assert!(c.wait().unwrap().success(), "a writer process failed");
    }
    let mut emitted: HashMap<usize, u64> = HashMap::new();
    for o in outputs {
        for line in o.join().unwrap() {
            // The harness may print "test child_entry ... " on the same line first.
            let Some((_, rest)) = line.split_once("EMIT ") else {
                continue;
            };
            let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            *emitted.entry(usize::try_from(v[0]).unwrap()).or_default() += v[2];
        }
    }
    assert_eq!(
        emitted.values().sum::<u64>(),
        u64::from(procs * threads) * records,
        "every child reported"
    );
    let mut total_read = 0;
    for (b, s) in streams.iter_mut().enumerate() {
        s.reader.flush();
        s.drain();
        assert!(s.reader.drained(), "buffer {b} not drained");
        let lost = s.final_lost();
        assert_eq!(
            s.check.records + lost,
            emitted[&b],
            "buffer {b}: recorded {} + discarded {lost}",
            s.check.records
        );
        total_read += s.check.records;
    }
    assert!(total_read > 0);
    eprintln!(
        "{mode:?}/{clock:?}: {total_read} of {} records read, {wakeups} waits",
        u64::from(procs * threads) * records
    );
}

#[test]
fn processes_and_threads_share_discard_buffers() {
    multi_process(Mode::Discard, ClockSource::Tsc, 3, 3, 60_000);
}

#[test]
fn processes_and_threads_share_overwrite_buffers() {
    multi_process(Mode::Overwrite, ClockSource::Monotonic, 3, 2, 40_000);
}

#[test]
fn a_writer_killed_mid_record_does_not_wedge_the_buffer() {
    let layout = Layout {
        subbuf_size: 4096,
        num_subbuf: 4,
        mode: Mode::Discard,
    };
    let fd = create_buffer(&layout, ClockSource::Monotonic, "killed").unwrap();
    let writer = Writer::map(&fd, None).unwrap();
    let mut s = Stream {
        reader: Reader::map(&fd, None).unwrap(),
        check: StreamCheck::default(),
        out: Vec::new(),
        seen: HashMap::new(),
    };
    let survivor_records = 50_000u64;
    let victim_records = 10u64;
    let timeout = Duration::from_millis(100);
    let mut released = 0;
    let mut died = false;
    let mut attempts = 0;
    std::thread::scope(|scope| {
        let survivor = scope.spawn(|| {
            let mut written = 0u64;
            for seq in 0..survivor_records {
                written += u64::from(write_seq(&writer, 1000, 1, seq));
                if seq % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            written
        });
        let mut victim = spawn(
            Spec {
                role: "die".into(),
                proc_id: 0,
                threads: 1,
                records: victim_records,
                fds: Vec::new(),
                efd: None,
            },
            &[&fd],
            None,
        );
        let start = Instant::now();
        let mut flushed = false;
        loop {
            s.drain();
            if !died && let Some(status) = victim.try_wait().unwrap() {
                assert_eq!(status.signal(), Some(9), "the victim dies by SIGKILL");
                died = true;
            }
            let rep = s.reader.check_stuck(Instant::now(), timeout, died);
            released += rep.released;
            if survivor.is_finished() && died {
                if !flushed {
                    s.reader.flush();
                    flushed = true;
                }
                if s.reader.drained() {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "buffer wedged");
            std::thread::sleep(Duration::from_micros(500));
        }
        assert!(survivor.join().unwrap() > 0);
        let out = BufReader::new(victim.stdout.take().unwrap());
        attempts = out
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_once("ATTEMPTS ")
                    .map(|(_, n)| n.parse::<u64>().unwrap())
            })
            .expect("the victim reports its attempts");
    });
    // The victim's sub-buffer (one more only if a survivor thread stalled for the whole
    // timeout, which a loaded host can do).
    assert!(released >= 1);
    // Survivor data read is intact and in order (StreamCheck); the victim's records that
    // shared the dead sub-buffer are lost with it.
    assert!(s.check.per_writer.get(&99).copied().unwrap_or(0) <= victim_records);
    let lost = s.final_lost();
    assert_eq!(
        s.check.records + lost,
        survivor_records + victim_records + attempts,
        "recorded {} + discarded {lost}",
        s.check.records
    );
    assert!(s.check.records > 0);
}
