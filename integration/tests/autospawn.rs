//! Commands that need the daemon start it: where the binary is found, how its start-up
//! report is read, and what a failed start-up looks like.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::{TestEnv, bins, is_alive, is_our_child};

fn assert_spawned(env: &TestEnv) -> i32 {
    let pid = env.daemon_pid().expect("a daemon wrote its lock file");
    assert!(is_our_child(pid) && is_alive(pid), "daemon {pid} runs");
    assert!(env.socket.exists());
    pid
}

#[test]
fn list_starts_the_daemon() {
    let env = TestEnv::new("list_starts_the_daemon");
    let out = env.drtrace(["list"]).success();
    assert!(out.stdout.contains("No sessions"), "{}", out.report());
    assert_spawned(&env);
}

#[test]
fn status_starts_the_daemon() {
    let env = TestEnv::new("status_starts_the_daemon");
    let data = env
        .drtrace(["--json", "status"])
        .success()
        .json_data("status");
    let pid = assert_spawned(&env);
    assert_eq!(data["daemon"]["pid"], pid);
}

#[test]
fn create_starts_the_daemon_once() {
    let env = TestEnv::new("create_starts_the_daemon_once");
    env.drtrace(["create", "first"]).success();
    let pid = assert_spawned(&env);
    env.drtrace(["create", "second"]).success();
    env.drtrace(["start"]).success();
    assert_eq!(env.the_only_daemon(), pid);
}

/// A copy of `drtrace` alone in a directory, so that no daemon binary sits beside it.
fn lonely_drtrace(env: &TestEnv) -> PathBuf {
    let dir = env.root.join("lonely");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("drtrace");
    std::fs::copy(&bins().drtrace, &exe).unwrap();
    exe
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap()
}

#[test]
fn the_daemon_binary_is_found_through_the_environment() {
    let env = TestEnv::new("the_daemon_binary_is_found_through_the_environment");
    let exe = lonely_drtrace(&env);
    env.command(&exe)
        .args(["list"])
        .env("PATH", "/usr/bin:/bin")
        .env("DRTRACE_SESSIOND_PATH", &bins().sessiond)
        .success();
    assert_spawned(&env);
}

#[test]
fn the_daemon_binary_is_found_on_path() {
    let env = TestEnv::new("the_daemon_binary_is_found_on_path");
    let exe = lonely_drtrace(&env);
    let path = format!("/usr/bin:{}:/bin", dir_of(&bins().sessiond).display());
    env.command(&exe)
        .args(["list"])
        .env("PATH", path)
        .env_remove("DRTRACE_SESSIOND_PATH")
        .success();
    assert_spawned(&env);
}

#[test]
fn a_missing_daemon_binary_is_one_clear_error() {
    let env = TestEnv::new("a_missing_daemon_binary_is_one_clear_error");
    let exe = lonely_drtrace(&env);
    let msg = env
        .command(&exe)
        .args(["list"])
        .env("PATH", "/usr/bin:/bin")
        .fails();
    assert!(msg.contains("drtrace-sessiond"), "{msg}");
    assert!(msg.contains("DRTRACE_SESSIOND_PATH"), "{msg}");
    let bogus = env.root.join("no-such-sessiond");
    let msg = env
        .drtrace(["list"])
        .env("DRTRACE_SESSIOND_PATH", &bogus)
        .fails();
    assert!(msg.contains(bogus.to_str().unwrap()), "{msg}");
}

fn fake_daemon(env: &TestEnv, name: &str, script: &str) -> PathBuf {
    let path = env.root.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_start_up_error_is_shown_as_the_daemon_said_it() {
    let env = TestEnv::new("a_start_up_error_is_shown_as_the_daemon_said_it");
    let fake = fake_daemon(&env, "fails", "echo 'error the disk is on fire'; exit 1");
    let msg = env
        .drtrace(["create"])
        .env("DRTRACE_SESSIOND_PATH", &fake)
        .fails();
    assert_eq!(msg, "the disk is on fire");
}

#[test]
fn a_daemon_that_dies_silently_points_at_its_log() {
    let env = TestEnv::new("a_daemon_that_dies_silently_points_at_its_log");
    let fake = fake_daemon(&env, "dies", "exit 0");
    let msg = env
        .drtrace(["status"])
        .env("DRTRACE_SESSIOND_PATH", &fake)
        .fails();
    assert!(msg.contains(env.daemon_log().to_str().unwrap()), "{msg}");
}

#[test]
fn a_daemon_that_never_reports_does_not_hang_the_cli() {
    let env = TestEnv::new("a_daemon_that_never_reports_does_not_hang_the_cli");
    // Keeps the report pipe open without writing; it records its pid so the harness can
    // end it (it outlives the CLI and is adopted by the test process).
    let pidfile = env.root.join("mute.pid");
    let fake = fake_daemon(
        &env,
        "mute",
        &format!("echo $$ > {}; exec sleep 30", pidfile.display()),
    );
    let out = env
        .drtrace(["list"])
        .env("DRTRACE_SESSIOND_PATH", &fake)
        .run();
    assert_eq!(out.code(), 1, "{}", out.report());
    let msg = out.error_line();
    assert!(msg.contains("did not report"), "{msg}");
    assert!(out.elapsed.as_secs() < 10, "{:?}", out.elapsed);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    env.track(pid);
}

#[test]
fn a_real_start_up_failure_is_one_line() {
    let env = TestEnv::new("a_real_start_up_failure_is_one_line");
    // The daemon cannot bind a socket in a directory that does not exist.
    let socket = env.root.join("missing-dir").join("s.sock");
    env.also_clean(&socket);
    let msg = env
        .drtrace(["list"])
        .env("DRTRACE_SESSIOND_SOCKET", &socket)
        .fails();
    assert!(
        msg.contains(socket.parent().unwrap().to_str().unwrap()),
        "{msg}"
    );
    env.assert_no_daemon_left_at(&socket);
}

#[test]
fn daemon_status_and_stop_never_start_a_daemon() {
    let env = TestEnv::new("daemon_status_and_stop_never_start_a_daemon");
    let out = env.drtrace(["daemon", "status"]).run();
    assert_eq!(out.code(), 3, "{}", out.report());
    assert!(out.stdout.contains("No daemon running"), "{}", out.report());
    assert!(out.stderr.is_empty(), "{}", out.report());
    env.drtrace(["daemon", "stop"]).success();
    assert!(!env.socket.exists());
    assert!(env.daemons().is_empty());
}
