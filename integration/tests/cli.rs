//! The CLI's own contract: one-line errors with the right exit codes, help and version
//! without a daemon, and a closed stdout that is not a failure.

use std::process::{Command, Stdio};

use crate::harness::{TestEnv, bins};

#[test]
fn every_error_is_one_line_with_a_non_zero_status() {
    let env = TestEnv::new("every_error_is_one_line_with_a_non_zero_status");
    env.drtrace(["create", "here"]).success();
    env.drtrace(["destroy"]).success();
    let cases: &[(&[&str], i32)] = &[
        (&["list", "nosuch"], 1),
        (&["start", "nosuch"], 1),
        (&["stop", "nosuch"], 1),
        (&["set-session", "nosuch"], 1),
        (&["destroy", "nosuch"], 1),
        (&["start"], 1),
        (&["destroy"], 1),
        (&["create", "bad/name"], 1),
        (&["create", ".hidden"], 1),
        (&["enable-event", "-u", "-s", "nosuch", "a:b"], 1),
        (&["enable-event", "-u", "bad$"], 2),
        (&["--bogus"], 2),
        (&[], 2),
        (&["daemon"], 2),
        (&["frobnicate"], 2),
        (
            &["enable-channel", "-u", "--overwrite", "--discard", "c"],
            2,
        ),
        (&["destroy", "x", "--all"], 2),
        (&["create", "a", "b"], 2),
    ];
    for (args, code) in cases {
        let msg = env.drtrace(*args).fails_with(*code);
        assert!(!msg.is_empty(), "{args:?}");
    }
    let msg = env.drtrace(["start"]).fails();
    assert!(
        msg.contains("drtrace create"),
        "no current session hint: {msg}"
    );
}

#[test]
fn help_and_version_need_no_daemon() {
    let env = TestEnv::new("help_and_version_need_no_daemon");
    let out = env.drtrace(["--version"]).success();
    assert!(out.stdout.starts_with("drtrace "), "{}", out.report());
    let out = env.drtrace(["--help"]).success();
    assert!(out.stdout.contains("enable-event"), "{}", out.report());
    for cmd in [
        "create",
        "destroy",
        "list",
        "status",
        "set-session",
        "start",
        "stop",
        "enable-channel",
        "disable-channel",
        "enable-event",
        "disable-event",
        "record",
        "view",
        "daemon",
    ] {
        let out = env.drtrace([cmd, "--help"]).success();
        assert!(out.stdout.contains("Usage:"), "{}", out.report());
    }
    let out = env.drtrace(["help", "enable-channel"]).success();
    assert!(out.stdout.contains("--subbuf-size"), "{}", out.report());
    assert!(!env.socket.exists(), "help started a daemon");
}

#[test]
fn a_closed_stdout_is_not_a_failure() {
    let env = TestEnv::new("a_closed_stdout_is_not_a_failure");
    env.drtrace(["create", "s"]).success();
    let mut cmd = Command::new(&bins().drtrace);
    cmd.args(["list"])
        .env_clear()
        .envs(env.base_vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
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
