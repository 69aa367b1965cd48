//! The data path end to end: real apps (`drtrace-demo`) with the in-process library, the
//! real session daemon and consumer, and traces judged by Debian's babeltrace2 and by
//! drtrace's own reader.
//!
//! The demo emits, per process, `demo_app:start` and `demo_app:finish`, and per iteration
//! of each thread five events, `demo_app:iteration` carrying `(thread, seq, pid)` among them:
//! so every expected count is exact, and which events were lost is visible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drtrace_ctf::reader::Trace;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{TestEnv, bins};

/// Events one demo process emits: start, finish, and five per iteration of each thread.
fn demo_events(threads: u64, iterations: u64) -> u64 {
    2 + threads * iterations * 5
}

fn demo_path() -> PathBuf {
    let p = bins()
        .drtrace
        .parent()
        .expect("binaries have a directory")
        .join("drtrace-demo");
    assert!(
        p.is_file(),
        "{} not found: build with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// A demo running in the background; killed and reaped on drop.
struct Bg {
    child: Child,
}

impl Bg {
    fn spawn(env: &TestEnv, args: &[&str]) -> Self {
        let mut cmd = Command::new(demo_path());
        cmd.args(args)
            .env_clear()
            .current_dir(&env.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env.base_vars() {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawn drtrace-demo"),
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Spawns a demo with `--print-pid` and returns once it starts emitting: its start-up
    /// waits for the sessions already recording, so from then on its events reach them.
    fn spawn_emitting(env: &TestEnv, args: &[&str]) -> Self {
        let mut all = vec!["--print-pid"];
        all.extend_from_slice(args);
        let mut cmd = Command::new(demo_path());
        cmd.args(&all)
            .env_clear()
            .current_dir(&env.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env.base_vars() {
            cmd.env(k, v);
        }
        // The default 10 ms greeting bound is for production start-up; on a loaded test
        // machine the daemon may answer later, and this test needs the registration done.
        cmd.env("DRTRACE_PING_TIMEOUT_MS", "5000");
        let mut child = cmd.spawn().expect("spawn drtrace-demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("read the demo's pid line");
        assert!(line.starts_with("pid "), "demo said {line:?}");
        Self { child }
    }

    /// Waits for the app to exit on its own, bounded; returns its exit code.
    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "drtrace-demo pid {} did not finish within {limit:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` until it returns true or `limit` passes (a bounded wait on an observable state).
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True once the daemon lists an app with this pid.
fn registered(env: &TestEnv, pid: i32) -> bool {
    let out = env.drtrace(["--json", "list", "-u"]).run();
    out.code() == 0
        && out.json_data("apps").as_array().is_some_and(|apps| {
            apps.iter()
                .any(|a| a["pid"].as_i64() == Some(i64::from(pid)))
        })
}

/// What a trace holds, as drtrace's reader decodes it.
#[derive(Debug, Default)]
struct Summary {
    events: u64,
    by_name: BTreeMap<String, u64>,
    /// `demo_app:iteration` sequence numbers per (pid, thread), in trace order.
    seqs: BTreeMap<(i64, u64), Vec<u64>>,
    discarded: u64,
    lost_packets: u64,
}

fn summarize(path: &Path) -> Summary {
    let trace = Trace::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut s = Summary::default();
    for event in trace.events() {
        let event = event.unwrap_or_else(|e| panic!("bad trace {}: {e}", path.display()));
        s.events += 1;
        *s.by_name.entry(event.name.clone()).or_default() += 1;
        if event.name == "demo_app:iteration" {
            let pid = event.field("pid").and_then(|v| v.as_i64()).unwrap();
            let thread = event.field("thread").and_then(|v| v.as_u64()).unwrap();
            let seq = event.field("seq").and_then(|v| v.as_u64()).unwrap();
            s.seqs.entry((pid, thread)).or_default().push(seq);
        }
    }
    for st in trace.stream_stats().unwrap() {
        s.discarded += st.events_discarded;
        s.lost_packets += st.lost_packets.iter().map(|g| g.lost()).sum::<u64>();
    }
    s
}

/// Runs Debian's babeltrace2 on a trace: (event lines, stderr).
fn babeltrace2(path: &Path) -> Option<(u64, String)> {
    let bin = Path::new("/usr/bin/babeltrace2");
    if !bin.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "babeltrace2 is missing: apt-get install babeltrace2 (scripts/install-deps does)"
        );
        eprintln!("skipping the babeltrace2 check: babeltrace2 is not installed");
        return None;
    }
    let out = Command::new(bin)
        .arg(path)
        .output()
        .expect("run babeltrace2");
    assert!(
        out.status.success(),
        "babeltrace2 failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    Some((lines, String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn session_dir(env: &TestEnv, name: &str) -> PathBuf {
    env.traces.join(name)
}

/// Creates `name` with all events enabled (after `channel_args`, if any, made a channel).
fn create_all_events(env: &TestEnv, name: &str, channel_args: &[&str]) {
    env.drtrace(["create", name]).success();
    if !channel_args.is_empty() {
        let mut args = vec!["enable-channel", "-u"];
        args.extend_from_slice(channel_args);
        args.push("channel0");
        env.drtrace(args).success();
    }
    env.drtrace(["enable-event", "-u", "-a"]).success();
}

fn stop_and_stats(env: &TestEnv, name: &str) -> (u64, u64) {
    let out = env.drtrace(["--json", "stop", name]).success();
    let stats = &out.json_data("session")["stats"];
    (
        stats["events_recorded"].as_u64().unwrap(),
        stats["events_discarded"].as_u64().unwrap(),
    )
}

#[test]
fn threads_and_processes_of_one_user_share_buffers_and_lose_nothing() {
    let env = TestEnv::new("threads_and_processes");
    create_all_events(&env, "s", &[]);
    env.drtrace(["start"]).success();
    let (threads, iterations, processes) = (3u64, 2000u64, 2u64);
    let mut app = Bg::spawn(
        &env,
        &["--iterations", "2000", "--threads", "3", "--processes", "2"],
    );
    assert_eq!(app.wait(Duration::from_secs(60)), 0);
    let (recorded, discarded) = stop_and_stats(&env, "s");
    env.drtrace(["destroy"]).success();
    let expected = processes * demo_events(threads, iterations);
    assert_eq!((recorded, discarded), (expected, 0));

    let dir = session_dir(&env, "s");
    let s = summarize(&dir);
    assert_eq!(s.events, expected);
    assert_eq!(s.discarded, 0);
    assert_eq!(s.by_name["demo_app:start"], processes);
    assert_eq!(
        s.by_name["demo_app:iteration"],
        processes * threads * iterations
    );
    // Every thread of every process, each sequence complete and in order.
    assert_eq!(s.seqs.len() as u64, processes * threads);
    for (key, seqs) in &s.seqs {
        assert_eq!(seqs, &(0..iterations).collect::<Vec<_>>(), "{key:?}");
    }
    // One per-UID buffer set for all of them.
    let uid = nix::unistd::getuid().as_raw();
    assert!(dir.join(format!("ust/uid/{uid}/64-bit/metadata")).is_file());
    assert!(!dir.join("ust/pid").exists());
    if let Some((lines, _)) = babeltrace2(&dir) {
        assert_eq!(lines, expected);
    }
}

#[test]
fn per_pid_buffers_give_each_process_its_own_trace() {
    let env = TestEnv::new("per_pid");
    create_all_events(&env, "s", &["--buffers-pid"]);
    env.drtrace(["start"]).success();
    let mut app = Bg::spawn(
        &env,
        &["--iterations", "500", "--threads", "2", "--processes", "3"],
    );
    assert_eq!(app.wait(Duration::from_secs(60)), 0);
    let (recorded, discarded) = stop_and_stats(&env, "s");
    env.drtrace(["destroy"]).success();
    let per_process = demo_events(2, 500);
    assert_eq!((recorded, discarded), (3 * per_process, 0));

    let pid_dir = session_dir(&env, "s").join("ust/pid");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&pid_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 3, "one trace per process: {dirs:?}");
    for dir in dirs {
        let s = summarize(&dir);
        assert_eq!(s.events, per_process, "{}", dir.display());
        let pids: Vec<i64> = s.seqs.keys().map(|(pid, _)| *pid).collect();
        assert!(pids.windows(2).all(|w| w[0] == w[1]), "one pid per trace");
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("drtrace-demo-{}-", pids[0])),
            "directory {name} names the process"
        );
        if let Some((lines, _)) = babeltrace2(&dir) {
            assert_eq!(lines, per_process);
        }
    }
}

#[test]
fn tiny_discard_buffers_account_for_every_event() {
    let env = TestEnv::new("tiny_discard");
    for round in 0..3 {
        let name = format!("s{round}");
        create_all_events(&env, &name, &["--subbuf-size", "4096", "--num-subbuf", "2"]);
        env.drtrace(["start", &name]).success();
        let mut app = Bg::spawn(&env, &["--iterations", "20000", "--threads", "2"]);
        assert_eq!(app.wait(Duration::from_secs(60)), 0);
        let (recorded, discarded) = stop_and_stats(&env, &name);
        env.drtrace(["destroy", &name]).success();
        let emitted = demo_events(2, 20000);
        assert!(discarded > 0, "round {round}: 8 KiB per CPU must overflow");
        assert_eq!(recorded + discarded, emitted, "round {round}");

        let dir = session_dir(&env, &name);
        let s = summarize(&dir);
        assert_eq!(s.events, recorded, "round {round}");
        assert_eq!(
            s.discarded, discarded,
            "the trace carries the discarded count"
        );
        if let Some((lines, stderr)) = babeltrace2(&dir) {
            assert_eq!(lines, recorded);
            assert!(
                stderr.contains("discarded"),
                "babeltrace2 reports the discarded events: {stderr}"
            );
        }
        // What was kept is in order within each thread.
        for seqs in s.seqs.values() {
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

#[test]
fn overwrite_mode_keeps_the_newest_events() {
    let env = TestEnv::new("overwrite");
    create_all_events(
        &env,
        "s",
        &["--overwrite", "--subbuf-size", "4096", "--num-subbuf", "4"],
    );
    env.drtrace(["start"]).success();
    let iterations = 20000u64;
    let mut app = Bg::spawn(&env, &["--iterations", "20000"]);
    assert_eq!(app.wait(Duration::from_secs(60)), 0);
    let (recorded, discarded) = stop_and_stats(&env, "s");
    env.drtrace(["destroy"]).success();
    assert!(
        discarded > 0,
        "a 16 KiB flight recorder cannot hold 100k events"
    );
    assert_eq!(recorded + discarded, demo_events(1, iterations));

    let s = summarize(&session_dir(&env, "s"));
    assert_eq!(s.events, recorded);
    assert_eq!(
        s.by_name.get("demo_app:finish"),
        Some(&1),
        "the last event is kept: {:?}",
        s.by_name
    );
    let seqs = s.seqs.values().next().expect("some iterations are kept");
    assert_eq!(
        *seqs.last().unwrap(),
        iterations - 1,
        "the newest iteration is kept"
    );
    assert!(seqs[0] > 0, "the oldest ones are gone");
}

#[test]
fn an_app_started_before_the_daemon_is_traced_once_a_session_starts() {
    let env = TestEnv::new("app_before_daemon");
    let go = env.root.join("go");
    let mut app = Bg::spawn(
        &env,
        &[
            "--iterations",
            "100",
            "--wait-for-file",
            go.to_str().unwrap(),
        ],
    );
    // No daemon exists yet: the app must not wait for one.
    assert!(env.daemon_pid().is_none());
    create_all_events(&env, "s", &[]);
    env.drtrace(["start"]).success();
    // The daemon appeared after the app: the app registers on its own, quickly.
    let appeared = Instant::now();
    wait_until(Duration::from_secs(5), "the app to register", || {
        registered(&env, app.pid())
    });
    assert!(
        appeared.elapsed() < Duration::from_secs(2),
        "registration took {:?}",
        appeared.elapsed()
    );
    std::fs::write(&go, b"").unwrap();
    assert_eq!(app.wait(Duration::from_secs(30)), 0);
    let (recorded, discarded) = stop_and_stats(&env, "s");
    assert_eq!((recorded, discarded), (demo_events(1, 100), 0));
    env.drtrace(["destroy"]).success();
}

#[test]
fn a_killed_daemon_hangs_no_app_and_a_new_one_is_registered_with() {
    let env = TestEnv::new("daemon_killed");
    create_all_events(&env, "s1", &[]);
    env.drtrace(["start"]).success();
    // About 4 s of steady emission, already reaching the first session.
    let mut app = Bg::spawn_emitting(&env, &["--iterations", "4000", "--delay-us", "1000"]);
    // Let it record into the first session for a while (events only sit in the ring buffer
    // until a flush, so there is nothing to observe sooner).
    std::thread::sleep(Duration::from_millis(300));
    let daemon = env.daemon_pid().expect("a daemon runs");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    // The app keeps running, unhindered: it is still alive a moment later.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        app.child.try_wait().unwrap().is_none(),
        "the app died with the daemon"
    );
    // A new daemon (spawned by the CLI) is registered with automatically.
    create_all_events(&env, "s2", &[]);
    env.drtrace(["start", "s2"]).success();
    env.observe();
    wait_until(Duration::from_secs(5), "the app to re-register", || {
        registered(&env, app.pid())
    });
    assert_eq!(
        app.wait(Duration::from_secs(30)),
        0,
        "the app finishes normally"
    );
    let (recorded, discarded) = stop_and_stats(&env, "s2");
    env.drtrace(["destroy", "s2"]).success();
    assert!(recorded > 0, "the new session records the running app");
    assert_eq!(discarded, 0);
    let s = summarize(&session_dir(&env, "s2"));
    assert_eq!(s.events, recorded);
    assert_eq!(s.by_name.get("demo_app:finish"), Some(&1));
    // The first session's trace, flushed by its consumer when its daemon vanished, is
    // readable too.
    let first = session_dir(&env, "s1");
    let s1 = summarize(&first);
    assert!(
        s1.events > 0,
        "the orphaned consumer flushed the first session"
    );
    if let Some((lines, _)) = babeltrace2(&first) {
        assert_eq!(lines, s1.events);
    }
}

#[test]
fn an_app_killed_mid_burst_leaves_the_trace_readable_and_others_intact() {
    let env = TestEnv::new("app_killed");
    create_all_events(&env, "s", &[]);
    env.drtrace(["start"]).success();
    let go = env.root.join("go");
    let go_arg = go.to_str().unwrap();
    let mut survivor = Bg::spawn(
        &env,
        &[
            "--iterations",
            "30000",
            "--threads",
            "2",
            "--wait-for-file",
            go_arg,
        ],
    );
    let mut victim = Bg::spawn(
        &env,
        &[
            "--iterations",
            "100000000",
            "--threads",
            "2",
            "--wait-for-file",
            go_arg,
        ],
    );
    wait_until(Duration::from_secs(5), "both apps to register", || {
        registered(&env, survivor.pid()) && registered(&env, victim.pid())
    });
    std::fs::write(&go, b"").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    kill(Pid::from_raw(victim.pid()), Signal::SIGKILL).unwrap();
    let _ = victim.wait(Duration::from_secs(5));
    assert_eq!(survivor.wait(Duration::from_secs(60)), 0);
    let started = Instant::now();
    let (recorded, discarded) = stop_and_stats(&env, "s");
    env.drtrace(["destroy"]).success();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stop and destroy must not hang on the dead writer"
    );
    let dir = session_dir(&env, "s");
    let s = summarize(&dir);
    assert_eq!(s.events, recorded);
    assert_eq!(s.discarded, discarded);
    // The survivor's events are intact: each thread's sequence in order, and whatever is
    // missing is accounted for as discarded.
    let survivor_pid = i64::from(survivor.pid());
    let mut survivor_iterations = 0u64;
    for ((pid, _), seqs) in &s.seqs {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ordered: pid {pid}");
        if *pid == survivor_pid {
            survivor_iterations += seqs.len() as u64;
        }
    }
    assert!(
        survivor_iterations + discarded >= 2 * 30000,
        "survivor: {survivor_iterations} iterations kept, {discarded} events discarded"
    );
    if let Some((lines, _)) = babeltrace2(&dir) {
        assert_eq!(lines, recorded);
    }
}

#[test]
fn a_second_session_records_the_same_app_independently() {
    let env = TestEnv::new("two_sessions");
    create_all_events(&env, "first", &[]);
    env.drtrace(["start", "first"]).success();
    let mut app = Bg::spawn(&env, &["--iterations", "3000", "--delay-us", "500"]);
    wait_until(Duration::from_secs(5), "the app to register", || {
        registered(&env, app.pid())
    });
    std::thread::sleep(Duration::from_millis(300));
    create_all_events(&env, "second", &[]);
    env.drtrace(["start", "second"]).success();
    assert_eq!(app.wait(Duration::from_secs(30)), 0);
    let (first, d1) = stop_and_stats(&env, "first");
    let (second, d2) = stop_and_stats(&env, "second");
    env.drtrace(["destroy", "--all"]).success();
    assert_eq!((first, d1, d2), (demo_events(1, 3000), 0, 0));
    assert!(
        second > 0 && second < first,
        "second: {second}, first: {first}"
    );
    let s1 = summarize(&session_dir(&env, "first"));
    let s2 = summarize(&session_dir(&env, "second"));
    assert_eq!((s1.events, s2.events), (first, second));
    // The second session saw a contiguous tail of the same iterations.
    let tail = s2.seqs.values().next().unwrap();
    assert!(tail.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
    assert_eq!(*tail.last().unwrap(), 2999);
}
