//! `drtrace record -- COMMAND`: the whole data path around one command (the session daemon,
//! the consumer and the in-process library of `drtrace-demo`), read back by `drtrace view`
//! and by babeltrace2; exit statuses, event selection, the JSON summary, signals, and
//! failures that must leave nothing behind.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::demo::{Line, check_demo_lines, events_for, parse_lines};
use crate::harness::{Out, TestEnv, babeltrace2, bins, signal_child, wait_for};

/// The human summary `record` prints on stderr.
#[derive(Debug)]
struct Summary {
    recorded: u64,
    discarded: u64,
    trace: PathBuf,
    /// `PROGRAM exited with status N` or `PROGRAM was killed by signal N (SIGX)`.
    ending: String,
}

fn summary(out: &Out) -> Summary {
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("drtrace: ") && l.contains(" recorded, "))
        .unwrap_or_else(|| panic!("no summary on stderr\n{}", out.report()));
    let parse = || -> Option<Summary> {
        let rest = line.strip_prefix("drtrace: ")?;
        let (count, rest) = rest.split_once(" recorded, ")?;
        let recorded = count.split_whitespace().next()?.parse().ok()?;
        let (discarded, rest) = rest.split_once(" discarded, trace in ")?;
        let (trace, ending) = rest.split_once("; ")?;
        Some(Summary {
            recorded,
            discarded: discarded.parse().ok()?,
            trace: PathBuf::from(trace),
            ending: ending.to_owned(),
        })
    };
    parse().unwrap_or_else(|| panic!("unexpected summary {line:?}\n{}", out.report()))
}

fn demo_path() -> &'static OsStr {
    bins().demo.as_os_str()
}

fn session_names(env: &TestEnv) -> Vec<String> {
    env.drtrace(["--json", "list"])
        .success()
        .json_data("sessions")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// `drtrace view` output and babeltrace2 output compared where they must be identical: the
/// lines without booleans or byte sequences (which drtrace prints differently on purpose),
/// without the `(+delta)`, which depends on the order of equal timestamps.
fn comparable(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            Line::parse(l)
                .is_some_and(|p| p.name.starts_with("demo_app:") || p.name == "demo_types:ints")
        })
        .map(|l| match (l.find("] ("), l.find(") ")) {
            (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a + 1], &l[b + 1..]),
            _ => l.to_owned(),
        })
        .collect();
    lines.sort();
    lines
}

/// The last line of stdout as a `record` document's data.
fn record_doc(out: &Out) -> Value {
    let last = out.stdout.lines().last().unwrap_or_default();
    let doc: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e})\n{}", out.report()));
    assert_eq!(doc["type"], "record", "{}", out.report());
    doc["data"].clone()
}

#[test]
fn record_traces_the_demo_and_babeltrace2_agrees() {
    let env = TestEnv::new("record_traces_the_demo_and_babeltrace2_agrees");
    const N: u64 = 200;
    let out = env
        .drtrace(["record", "--name", "demo", "--"])
        .args([demo_path()])
        .args(["--iterations", &N.to_string()])
        .success();
    let s = summary(&out);
    let trace = env.traces.join("demo");
    assert_eq!(s.recorded, events_for(N), "{}", out.report());
    assert_eq!(s.discarded, 0, "{}", out.report());
    assert_eq!(s.trace, trace, "{}", out.report());
    assert_eq!(
        s.ending,
        format!("{} exited with status 0", bins().demo.display())
    );
    assert!(out.stdout.is_empty(), "{}", out.report());
    let metadata = trace.join(format!("ust/uid/{}/64-bit/metadata", uid()));
    assert!(metadata.is_file(), "{} is missing", metadata.display());
    assert!(session_names(&env).is_empty(), "record left a session");

    let view = env
        .drtrace([OsStr::new("view"), trace.as_os_str()])
        .success();
    assert!(view.stderr.is_empty(), "losses reported\n{}", view.report());
    check_demo_lines(
        &parse_lines(&view.stdout, "drtrace view"),
        N,
        "drtrace view",
    );

    let Some(bt) = babeltrace2() else { return };
    let theirs = env.command(&bt).args([&trace]).env("TZ", "UTC").success();
    check_demo_lines(
        &parse_lines(&theirs.stdout, "babeltrace2"),
        N,
        "babeltrace2",
    );
    assert_eq!(
        comparable(&view.stdout),
        comparable(&theirs.stdout),
        "drtrace view and babeltrace2 disagree"
    );
}

#[test]
fn record_exits_with_the_commands_status() {
    let env = TestEnv::new("record_exits_with_the_commands_status");
    let out = env.drtrace(["record", "--", "sh", "-c", "exit 3"]).run();
    assert_eq!(out.code(), 3, "{}", out.report());
    let s = summary(&out);
    assert_eq!(s.ending, "sh exited with status 3");
    assert_eq!(s.recorded, 0);
    // The default name, as with create: <username>.<uuid> under the trace directory.
    let user = drtrace_proto::paths::UserInfo::current().unwrap().name;
    assert_eq!(s.trace.parent(), Some(env.traces.as_path()));
    let name = s.trace.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(&format!("{user}.")), "{name}");

    let out = env
        .drtrace(["record", "--", "sh", "-c", "kill -KILL $$"])
        .run();
    assert_eq!(out.code(), 128 + 9, "{}", out.report());
    assert_eq!(summary(&out).ending, "sh was killed by signal 9 (SIGKILL)");
    assert!(session_names(&env).is_empty());
}

#[test]
fn record_of_a_command_that_cannot_run_leaves_nothing_behind() {
    let env = TestEnv::new("record_of_a_command_that_cannot_run_leaves_nothing_behind");
    let msg = env
        .drtrace([
            "record",
            "--name",
            "gone",
            "--",
            "drtrace-no-such-command",
            "--flag",
        ])
        .fails_with(127);
    assert!(
        msg.contains("drtrace-no-such-command") && msg.contains("not found"),
        "{msg}"
    );
    let script = env.root.join("not-executable");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = env
        .drtrace([OsStr::new("record"), OsStr::new("--"), script.as_os_str()])
        .fails_with(126);
    assert!(msg.contains(script.to_str().unwrap()), "{msg}");
    assert!(session_names(&env).is_empty(), "a session was left behind");
    let status = env
        .drtrace(["--json", "status"])
        .success()
        .json_data("status");
    assert_eq!(status["current_session"], Value::Null);
}

#[test]
fn record_needs_a_command() {
    let env = TestEnv::new("record_needs_a_command");
    for args in [
        &["record"][..],
        &["record", "--"],
        &["record", "--name", "x"],
        &["record", "-e", "bad$", "--", "true"],
        &["record", "--loglevel", "loud", "--", "true"],
    ] {
        let msg = env.drtrace(args).fails_with(2);
        assert!(msg.contains("--help"), "{args:?}: {msg}");
    }
    assert!(!env.socket.exists(), "a usage error started a daemon");
}

#[test]
fn record_with_a_taken_name_runs_nothing() {
    let env = TestEnv::new("record_with_a_taken_name_runs_nothing");
    env.drtrace(["create", "taken"]).success();
    let marker = env.root.join("ran");
    let msg = env
        .drtrace(["record", "--name", "taken", "--", "touch"])
        .args([&marker])
        .fails();
    assert!(msg.contains("taken"), "{msg}");
    assert!(!marker.exists(), "the command ran");
    assert_eq!(session_names(&env), ["taken"]);
}

#[test]
fn record_gives_the_current_session_back() {
    let env = TestEnv::new("record_gives_the_current_session_back");
    env.drtrace(["create", "mine"]).success();
    let out = env
        .drtrace(["record", "--name", "r", "--", "true"])
        .success();
    assert_eq!(summary(&out).ending, "true exited with status 0");
    let status = env
        .drtrace(["--json", "status"])
        .success()
        .json_data("status");
    assert_eq!(status["current_session"], "mine");
    assert_eq!(session_names(&env), ["mine"]);
}

#[test]
fn record_applies_channel_options_and_rules() {
    let env = TestEnv::new("record_applies_channel_options_and_rules");
    let out = env
        .drtrace([
            "--json",
            "record",
            "--name",
            "opts",
            "--output",
            "out/opts",
            "--subbuf-size",
            "64k",
            "--num-subbuf",
            "8",
            "--switch-timer",
            "50",
            "--overwrite",
            "--loglevel",
            "warning",
            "-e",
            "a:*",
            "--event",
            "b:c",
            "--",
            "true",
        ])
        .success();
    let data = record_doc(&out);
    assert_eq!(data["exit_status"], 0);
    assert_eq!(data["signal"], Value::Null);
    assert_eq!(data["command"], serde_json::json!(["true"]));
    let session = &data["session"];
    assert_eq!(session["name"], "opts");
    assert_eq!(
        session["output"],
        env.root.join("out/opts").to_str().unwrap()
    );
    let channels = session["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "{session}");
    let c = &channels[0];
    assert_eq!(c["name"], "channel0");
    assert_eq!(c["subbuf_size"], 65536);
    assert_eq!(c["num_subbuf"], 8);
    assert_eq!(c["switch_timer_ms"], 50);
    assert_eq!(c["mode"], "overwrite");
    assert_eq!(c["buffers"], "per_uid");
    let rules: Vec<(&str, &Value)> = c["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["pattern"].as_str().unwrap(), &e["loglevel"]))
        .collect();
    let warning = serde_json::json!({"kind": "at_least", "level": "warning"});
    assert_eq!(rules, [("a:*", &warning), ("b:c", &warning)]);
    assert!(
        !out.stderr.contains("recorded"),
        "--json also printed the human summary\n{}",
        out.report()
    );
}

#[test]
fn record_json_summary_follows_the_commands_output() {
    let env = TestEnv::new("record_json_summary_follows_the_commands_output");
    let out = env
        .drtrace(["--json", "record", "--name", "j", "--"])
        .args([demo_path()])
        .args(["--iterations", "10", "--print-pid"])
        .success();
    let first = out.stdout.lines().next().unwrap_or_default();
    let pid: i64 = first
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the demo's own output comes first\n{}", out.report()));
    let data = record_doc(&out);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.report());
    assert_eq!(data["session"]["name"], "j");
    assert_eq!(
        data["session"]["output"],
        env.traces.join("j").to_str().unwrap()
    );
    assert_eq!(data["stats"]["events_recorded"], events_for(10));
    assert_eq!(data["stats"]["events_discarded"], 0);
    assert_eq!(data["session"]["stats"], data["stats"]);
    assert_eq!(data["exit_status"], 0);
    assert_eq!(data["signal"], Value::Null);
    assert_eq!(data["command"][0], demo_path().to_str().unwrap());
    let view = env
        .drtrace([OsStr::new("view"), env.traces.join("j").as_os_str()])
        .success();
    let start = parse_lines(&view.stdout, "drtrace view")
        .into_iter()
        .find(|l| l.name == "demo_app:start")
        .unwrap_or_else(|| panic!("no demo_app:start\n{}", view.report()));
    assert_eq!(start.int("pid"), i128::from(pid));
}

#[test]
fn record_e_selects_events_and_loglevel_filters_them() {
    let env = TestEnv::new("record_e_selects_events_and_loglevel_filters_them");
    let out = env
        .drtrace(["record", "--name", "http", "-e", "demo_http:*", "--"])
        .args([demo_path()])
        .args(["--iterations", "20"])
        .success();
    assert_eq!(summary(&out).recorded, 20, "{}", out.report());
    let view = env
        .drtrace([OsStr::new("view"), env.traces.join("http").as_os_str()])
        .success();
    let lines = parse_lines(&view.stdout, "drtrace view");
    assert_eq!(lines.len(), 20, "{}", view.report());
    let mut ids: Vec<i128> = lines
        .iter()
        .map(|l| {
            assert_eq!(l.name, "demo_http:request", "{l:?}");
            l.int("id")
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..20).collect::<Vec<i128>>());

    // Notice or more severe: only demo_app:start and demo_app:finish.
    let out = env
        .drtrace(["record", "--name", "notice", "--loglevel", "notice", "--"])
        .args([demo_path()])
        .args(["--iterations", "20"])
        .success();
    assert_eq!(summary(&out).recorded, 2, "{}", out.report());
    let view = env
        .drtrace([OsStr::new("view"), env.traces.join("notice").as_os_str()])
        .success();
    let names: Vec<String> = parse_lines(&view.stdout, "drtrace view")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["demo_app:start", "demo_app:finish"]);
}

/// Runs `record -- drtrace-demo --wait-for-file F` (F never appears), sends `signal` to
/// drtrace once the demo has registered, and checks that the demo got it and the session
/// was still stopped, destroyed and summarised.
fn signal_is_passed_on(test: &str, signal: Signal) {
    let env = TestEnv::new(test);
    let never = env.root.join("never");
    let running = env
        .drtrace(["record", "--name", "sig", "--"])
        .args([
            demo_path(),
            OsStr::new("--wait-for-file"),
            never.as_os_str(),
        ])
        .spawn();
    let drtrace_pid = running.pid();
    wait_for("the demo to register", Duration::from_secs(30), || {
        let apps = env
            .drtrace(["--json", "list", "-u"])
            .success()
            .json_data("apps");
        apps.as_array()?
            .iter()
            .filter_map(|a| a["pid"].as_i64())
            .find(|&pid| {
                crate::harness::parent_of(i32::try_from(pid).unwrap()) == Some(drtrace_pid)
            })
    });
    signal_child(drtrace_pid, signal);
    let out = running.finish();
    assert_eq!(out.code(), 128 + signal as i32, "{}", out.report());
    let s = summary(&out);
    assert_eq!(
        s.ending,
        format!(
            "{} was killed by signal {} ({signal})",
            bins().demo.display(),
            signal as i32
        )
    );
    assert_eq!(s.trace, env.traces.join("sig"));
    assert!(
        session_names(&env).is_empty(),
        "the session was left behind"
    );
}

#[test]
fn record_passes_sigint_on_and_still_cleans_up() {
    signal_is_passed_on(
        "record_passes_sigint_on_and_still_cleans_up",
        Signal::SIGINT,
    );
}

#[test]
fn record_passes_sigterm_on_and_still_cleans_up() {
    signal_is_passed_on(
        "record_passes_sigterm_on_and_still_cleans_up",
        Signal::SIGTERM,
    );
}
