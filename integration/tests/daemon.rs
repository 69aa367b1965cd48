//! The session daemon's start-up and lifetime: readiness, single instance, stale sockets,
//! hung daemons, signals, `daemon stop`, and hostile peers.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use drtrace_proto::frame::{FrameError, MAX_FRAME_LEN, read_frame};
use drtrace_proto::hello::{Hello, PROTOCOL_MAJOR, PROTOCOL_MINOR, Role};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use crate::harness::{Started, TestEnv, is_alive, is_our_child, reap, signal_child};

#[test]
fn detached_start_reports_ready_and_serves() {
    let env = TestEnv::new("detached_start_reports_ready_and_serves");
    let pid = env.start_daemon();
    assert_eq!(
        env.daemon_pid(),
        Some(pid),
        "lock file holds the daemon pid"
    );
    assert!(is_our_child(pid) && is_alive(pid), "daemon {pid} runs");
    let data = env
        .drtrace(["--json", "daemon", "status"])
        .success()
        .json_data("daemon_status");
    assert_eq!(data["running"], true);
    assert_eq!(data["daemon"]["daemon"]["pid"], pid);
    assert_eq!(data["socket"], env.socket.to_str().unwrap());
    let human = env.drtrace(["daemon", "status"]).success();
    assert!(
        human.stdout.contains(&format!("pid {pid}")),
        "{}",
        human.report()
    );
}

#[test]
fn socket_is_mode_0600_and_ours() {
    let env = TestEnv::new("socket_is_mode_0600_and_ours");
    env.start_daemon();
    let meta = std::fs::symlink_metadata(&env.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
}

#[test]
fn second_start_says_already_running() {
    let env = TestEnv::new("second_start_says_already_running");
    let pid = env.start_daemon();
    // In the foreground, a second starter says so and exits 0.
    let out = env.sessiond(std::iter::empty::<&str>()).success();
    let said = format!("already running (pid {pid})");
    assert!(
        out.stderr.contains(&said) || out.stdout.contains(&said),
        "{}",
        out.report()
    );
    // Detached, it reports `running PID`.
    let (started, out) = env.launch(env.sessiond(["--detach"]));
    assert_eq!(started, Started::Running(pid), "{}", out.report());
    assert!(out.status.success(), "{}", out.report());
    assert_eq!(env.the_only_daemon(), pid);
}

#[test]
fn concurrent_starters_end_with_exactly_one_daemon() {
    let env = TestEnv::new("concurrent_starters_end_with_exactly_one_daemon");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env.launch(env.sessiond(["--detach"]))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ready: Vec<i32> = results
        .iter()
        .filter_map(|(s, _)| match s {
            Started::Ready(pid) => Some(*pid),
            _ => None,
        })
        .collect();
    let reports: String = results.iter().map(|(_, o)| o.report()).collect();
    assert_eq!(ready.len(), 1, "exactly one starter is ready\n{reports}");
    let winner = ready[0];
    for (started, out) in &results {
        assert!(out.status.success(), "{}", out.report());
        assert!(
            matches!(started, Started::Ready(p) | Started::Running(p) if *p == winner),
            "{started:?}\n{}",
            out.report()
        );
    }
    assert_eq!(env.the_only_daemon(), winner);
}

#[test]
fn concurrent_commands_spawn_exactly_one_daemon() {
    let env = TestEnv::new("concurrent_commands_spawn_exactly_one_daemon");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env.drtrace(["list"]).success()))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    env.the_only_daemon();
}

#[test]
fn stale_socket_file_is_taken_over() {
    let env = TestEnv::new("stale_socket_file_is_taken_over");
    // A socket file nobody listens on any more.
    drop(UnixListener::bind(&env.socket).unwrap());
    assert!(env.socket.exists());
    let out = env.drtrace(["daemon", "status"]).run();
    assert_eq!(
        out.code(),
        3,
        "a stale socket is no daemon\n{}",
        out.report()
    );
    env.drtrace(["create", "after-stale"]).success();
    let pid = env.daemon_pid().expect("a daemon took the socket over");
    assert!(is_alive(pid));
    let names = env
        .drtrace(["--json", "list"])
        .success()
        .json_data("sessions");
    assert_eq!(names[0]["name"], "after-stale");
}

#[test]
fn socket_of_a_killed_daemon_is_taken_over() {
    let env = TestEnv::new("socket_of_a_killed_daemon_is_taken_over");
    let first = env.start_daemon();
    signal_child(first, Signal::SIGKILL);
    assert!(matches!(
        reap(first, Duration::from_secs(10)),
        Some(WaitStatus::Signaled(..))
    ));
    assert!(env.socket.exists(), "SIGKILL leaves the socket behind");
    let second = env.start_daemon();
    assert_ne!(first, second);
    env.drtrace(["status"]).success();
    assert_eq!(env.the_only_daemon(), second);
}

/// Resumes a stopped process even if the test fails half-way.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[test]
fn hung_daemon_is_reported_quickly_with_its_pid() {
    let env = TestEnv::new("hung_daemon_is_reported_quickly_with_its_pid");
    let pid = env.start_daemon();
    signal_child(pid, Signal::SIGSTOP);
    let resume = Resume(pid);
    for args in [
        &["list"][..],
        &["status"],
        &["create", "x"],
        &["daemon", "status"],
    ] {
        let out = env.drtrace(args).timeout(Duration::from_secs(10)).run();
        assert!(
            out.elapsed < Duration::from_secs(2),
            "took {:?}\n{}",
            out.elapsed,
            out.report()
        );
        assert_eq!(out.code(), 1, "{}", out.report());
        let msg = out.error_line();
        assert!(msg.contains(&format!("pid {pid}")), "{msg}");
        assert!(msg.contains("not responding"), "{msg}");
    }
    drop(resume);
    env.drtrace(["list"]).success();
    assert_eq!(env.the_only_daemon(), pid);
}

fn signal_removes_socket(name: &str, signal: Signal) {
    let env = TestEnv::new(name);
    let pid = env.start_daemon();
    env.drtrace(["create", "s"]).success();
    signal_child(pid, signal);
    let status = reap(pid, Duration::from_secs(30)).expect("daemon exits");
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "{status:?}\n{}",
        env.logs()
    );
    assert!(!env.socket.exists(), "socket removed on {signal}");
}

#[test]
fn sigterm_removes_the_socket() {
    signal_removes_socket("sigterm_removes_the_socket", Signal::SIGTERM);
}

#[test]
fn sigint_removes_the_socket() {
    signal_removes_socket("sigint_removes_the_socket", Signal::SIGINT);
}

#[test]
fn daemon_stop_waits_for_exit_and_never_spawns() {
    let env = TestEnv::new("daemon_stop_waits_for_exit_and_never_spawns");
    let pid = env.start_daemon();
    env.drtrace(["create", "s"]).success();
    let out = env.drtrace(["daemon", "stop"]).success();
    assert!(
        out.stdout.contains(&format!("pid {pid}")),
        "{}",
        out.report()
    );
    // `daemon stop` returns only once the daemon let go of its socket.
    assert!(!env.socket.exists(), "{}", out.report());
    assert!(
        reap(pid, Duration::from_secs(10)).is_some(),
        "daemon {pid} exited"
    );
    let again = env.drtrace(["--json", "daemon", "stop"]).success();
    let data = again.json_data("daemon_stopped");
    assert_eq!(data["was_running"], false);
    let human = env.drtrace(["daemon", "stop"]).success();
    assert!(
        human.stdout.contains("No daemon running"),
        "{}",
        human.report()
    );
    let status = env.drtrace(["--json", "daemon", "status"]).run();
    assert_eq!(status.code(), 3, "{}", status.report());
    assert_eq!(status.json_data("daemon_status")["running"], false);
    assert!(!env.socket.exists(), "nothing spawned a daemon");
    assert!(env.daemons().is_empty());
}

#[test]
fn daemon_stop_reports_json() {
    let env = TestEnv::new("daemon_stop_reports_json");
    let pid = env.start_daemon();
    let data = env
        .drtrace(["--json", "daemon", "stop"])
        .success()
        .json_data("daemon_stopped");
    assert_eq!(data["was_running"], true);
    assert_eq!(data["pid"], pid);
    assert!(!env.socket.exists());
}

/// What a hostile connection got: an error frame, the end of the connection, or nothing.
fn outcome_of(stream: &UnixStream, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return format!("no answer and still open after {within:?} (saw {seen:?})");
        }
        match read_frame(stream, left, MAX_FRAME_LEN) {
            Ok(frame) => seen.push(String::from_utf8_lossy(&frame.payload).into_owned()),
            Err(FrameError::TimedOut(_)) => {
                return format!("no answer and still open after {within:?} (saw {seen:?})");
            }
            Err(e) if e.is_disconnect() || matches!(e, FrameError::Io(_)) => {
                return format!("closed after {seen:?}");
            }
            Err(e) => return format!("unreadable answer {e} after {seen:?}"),
        }
    }
}

fn connect(env: &TestEnv) -> UnixStream {
    UnixStream::connect(&env.socket).unwrap()
}

#[test]
fn hostile_peers_do_not_stall_other_clients() {
    let env = TestEnv::new("hostile_peers_do_not_stall_other_clients");
    let pid = env.start_daemon();
    env.drtrace(["create", "busy"]).success();

    // Several that say nothing, and several that stop in the middle of a frame.
    let silent: Vec<UnixStream> = (0..8).map(|_| connect(&env)).collect();
    let partial: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut s = connect(&env);
            s.write_all(&[40, 0]).unwrap();
            s
        })
        .collect();
    let mut garbage = connect(&env);
    garbage
        .write_all(&[4, 0, 0, 0, b'{', b'{', b'{', b'{'])
        .unwrap();
    let mut oversized = connect(&env);
    oversized.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut wrong_major = connect(&env);
    let hello = Hello {
        role: Role::Control,
        major: PROTOCOL_MAJOR + 98,
        minor: 3,
    };
    wrong_major
        .write_all(&drtrace_proto::frame::encode_json(&hello).unwrap())
        .unwrap();
    let mut http = connect(&env);
    http.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();

    // Meanwhile a normal client is served at once, over and over.
    for _ in 0..5 {
        let out = env.drtrace(["--json", "list", "busy"]).success();
        assert!(
            out.elapsed < Duration::from_secs(1),
            "served in {:?} while hostile peers are connected\n{}",
            out.elapsed,
            out.report()
        );
    }

    let refused = outcome_of(&wrong_major, Duration::from_secs(10));
    assert!(refused.contains("refused"), "{refused}");
    assert!(
        refused.contains(&format!("{}.3", PROTOCOL_MAJOR + 98))
            && refused.contains(&format!("{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}")),
        "both versions named: {refused}"
    );
    assert!(refused.starts_with("closed"), "{refused}");
    for (what, stream) in [
        ("garbage", &garbage),
        ("oversized length", &oversized),
        ("http", &http),
    ] {
        let got = outcome_of(stream, Duration::from_secs(10));
        assert!(got.starts_with("closed"), "{what}: {got}");
    }
    // The silent and the partial ones are timed out by the daemon (it bounds every read).
    for (i, stream) in silent.iter().chain(&partial).enumerate() {
        let got = outcome_of(stream, Duration::from_secs(15));
        assert!(got.starts_with("closed"), "peer {i}: {got}");
    }
    let mut buf = [0u8; 1];
    assert_eq!(garbage.read(&mut buf).unwrap_or(0), 0);
    assert!(is_alive(pid));
    env.drtrace(["list", "busy"]).success();
}
