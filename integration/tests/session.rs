//! Sessions through the CLI: names and directories, the current session, the lifecycle,
//! channels and event rules, and the JSON documents.

use std::path::Path;

use serde_json::Value;

use crate::harness::TestEnv;

fn user_name() -> String {
    drtrace_proto::paths::UserInfo::current().unwrap().name
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn channel<'a>(session: &'a Value, name: &str) -> &'a Value {
    session["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no channel {name} in {session}"))
}

fn rule<'a>(channel: &'a Value, pattern: &str) -> &'a Value {
    channel["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pattern"] == pattern)
        .unwrap_or_else(|| panic!("no rule {pattern} in {channel}"))
}

#[test]
fn create_with_a_name_then_the_name_is_taken() {
    let env = TestEnv::new("create_with_a_name_then_the_name_is_taken");
    let out = env.drtrace(["create", "demo"]).success();
    let dir = env.traces.join("demo");
    assert_eq!(
        out.stdout,
        format!(
            "Session demo created.\nTraces will be written in {}\n",
            dir.display()
        )
    );
    let msg = env.drtrace(["create", "demo"]).fails();
    assert!(msg.contains("demo"), "{msg}");
    let list = env
        .drtrace(["--json", "list"])
        .success()
        .json_data("sessions");
    assert_eq!(names(&list), ["demo"]);
}

#[test]
fn create_never_overwrites_an_existing_directory() {
    let env = TestEnv::new("create_never_overwrites_an_existing_directory");
    let taken = env.traces.join("old");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("keep"), b"precious").unwrap();
    let msg = env.drtrace(["create", "old"]).fails();
    assert!(msg.contains(taken.to_str().unwrap()), "{msg}");
    let explicit = env.root.join("explicit");
    std::fs::create_dir_all(&explicit).unwrap();
    std::fs::write(explicit.join("keep"), b"precious too").unwrap();
    let msg = env
        .drtrace(["create", "other", "--output", explicit.to_str().unwrap()])
        .fails();
    assert!(msg.contains(explicit.to_str().unwrap()), "{msg}");
    assert_eq!(std::fs::read(taken.join("keep")).unwrap(), b"precious");
    assert_eq!(
        std::fs::read(explicit.join("keep")).unwrap(),
        b"precious too"
    );
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&explicit).unwrap().count(), 1);
    let list = env
        .drtrace(["--json", "list"])
        .success()
        .json_data("sessions");
    assert!(names(&list).is_empty(), "{list}");
}

#[test]
fn default_name_is_username_dot_uuid() {
    let env = TestEnv::new("default_name_is_username_dot_uuid");
    let data = env
        .drtrace(["--json", "create"])
        .success()
        .json_data("session");
    let name = data["name"].as_str().unwrap();
    let (user, uuid) = name.split_once('.').unwrap();
    assert_eq!(user, user_name());
    uuid::Uuid::parse_str(uuid).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(data["output"], env.traces.join(name).to_str().unwrap());
    assert_eq!(data["current"], true);
    let human = env.drtrace(["create"]).success();
    assert!(
        human
            .stdout
            .starts_with(&format!("Session {}.", user_name())),
        "{}",
        human.report()
    );
}

#[test]
fn relative_paths_are_made_absolute() {
    let env = TestEnv::new("relative_paths_are_made_absolute");
    let cwd = env.root.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    let data = env
        .drtrace(["--json", "create", "a", "--output", "./out/a"])
        .current_dir(&cwd)
        .success()
        .json_data("session");
    assert_eq!(data["output"], cwd.join("out/a").to_str().unwrap());
    let data = env
        .drtrace(["--json", "create", "b"])
        .env("DRTRACE_HOME", "rel-traces")
        .current_dir(&cwd)
        .success()
        .json_data("session");
    assert_eq!(data["output"], cwd.join("rel-traces/b").to_str().unwrap());
}

fn current(env: &TestEnv) -> Value {
    env.drtrace(["--json", "status"])
        .success()
        .json_data("status")["current_session"]
        .clone()
}

#[test]
fn the_current_session_follows_create_and_set_session() {
    let env = TestEnv::new("the_current_session_follows_create_and_set_session");
    assert_eq!(current(&env), Value::Null);
    env.drtrace(["create", "a"]).success();
    env.drtrace(["create", "b"]).success();
    assert_eq!(current(&env), "b");
    // Commands without a name act on the current session.
    let started = env
        .drtrace(["--json", "start"])
        .success()
        .json_data("session");
    assert_eq!(started["name"], "b");
    assert_eq!(started["state"], "active");
    let out = env.drtrace(["set-session", "a"]).success();
    assert_eq!(out.stdout, "Session set to a.\n");
    assert_eq!(current(&env), "a");
    let list = env
        .drtrace(["--json", "list"])
        .success()
        .json_data("sessions");
    let flags: Vec<(String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["current"] == true))
        .collect();
    assert_eq!(flags, [("a".to_owned(), true), ("b".to_owned(), false)]);
    let destroyed = env
        .drtrace(["--json", "destroy"])
        .success()
        .json_data("destroyed");
    assert_eq!(names(&destroyed), ["a"]);
    // With the current session gone, commands that need one say so.
    let msg = env.drtrace(["start"]).fails();
    assert!(msg.contains("current session"), "{msg}");
    let msg = env.drtrace(["set-session", "nosuch"]).fails();
    assert!(msg.contains("nosuch"), "{msg}");
}

#[test]
fn start_stop_destroy_lifecycle() {
    let env = TestEnv::new("start_stop_destroy_lifecycle");
    env.drtrace(["create", "life"]).success();
    let show = |env: &TestEnv| {
        env.drtrace(["--json", "list", "life"])
            .success()
            .json_data("session")
    };
    assert_eq!(show(&env)["state"], "inactive");
    let out = env.drtrace(["start", "life"]).success();
    assert_eq!(out.stdout, "Tracing started for session life.\n");
    assert_eq!(show(&env)["state"], "active");
    let stopped = env
        .drtrace(["--json", "stop", "life"])
        .success()
        .json_data("session");
    assert_eq!(stopped["state"], "inactive");
    let out = env.drtrace(["destroy", "life"]).success();
    assert_eq!(out.stdout, "Session life destroyed.\n");
    let msg = env.drtrace(["list", "life"]).fails();
    assert!(msg.contains("life"), "{msg}");
    let msg = env.drtrace(["destroy", "life"]).fails();
    assert!(msg.contains("life"), "{msg}");
}

#[test]
fn destroy_all_destroys_every_session() {
    let env = TestEnv::new("destroy_all_destroys_every_session");
    for n in ["x", "y", "z"] {
        env.drtrace(["create", n]).success();
    }
    env.drtrace(["start", "y"]).success();
    let destroyed = env
        .drtrace(["--json", "destroy", "--all"])
        .success()
        .json_data("destroyed");
    let mut got = names(&destroyed);
    got.sort();
    assert_eq!(got, ["x", "y", "z"]);
    let list = env
        .drtrace(["--json", "list"])
        .success()
        .json_data("sessions");
    assert!(names(&list).is_empty());
    let out = env.drtrace(["destroy", "-a"]).success();
    assert_eq!(out.stdout, "No session to destroy.\n");
}

#[test]
fn list_and_status_documents() {
    let env = TestEnv::new("list_and_status_documents");
    env.drtrace(["create", "one"]).success();
    let pid = env.daemon_pid().unwrap();
    let list = env
        .drtrace(["--json", "list"])
        .success()
        .json_data("sessions");
    let s = &list[0];
    for key in [
        "name",
        "uuid",
        "output",
        "state",
        "current",
        "created_unix_ms",
        "channels",
    ] {
        assert!(s.get(key).is_some(), "{key} missing in {s}");
    }
    let one = env
        .drtrace(["--json", "list", "one"])
        .success()
        .json_data("session");
    assert_eq!(&one, s);
    let status = env
        .drtrace(["--json", "status"])
        .success()
        .json_data("status");
    assert_eq!(status["daemon"]["pid"], pid);
    assert_eq!(status["socket"], env.socket.to_str().unwrap());
    assert_eq!(status["current_session"], "one");
    assert_eq!(names(&status["sessions"]), ["one"]);
    let human = env.drtrace(["status"]).success();
    assert!(
        human.stdout.contains(&format!("pid {pid}")),
        "{}",
        human.report()
    );
    assert!(
        human.stdout.contains("Current session: one"),
        "{}",
        human.report()
    );
    let human = env.drtrace(["list"]).success();
    assert!(human.stdout.contains("* one"), "{}", human.report());
}

#[test]
fn enable_channel_options_reach_the_daemon() {
    let env = TestEnv::new("enable_channel_options_reach_the_daemon");
    env.drtrace(["create", "ch"]).success();
    let s = env
        .drtrace([
            "--json",
            "enable-channel",
            "-u",
            "big",
            "--subbuf-size",
            "64k",
            "--num-subbuf",
            "8",
            "--overwrite",
            "--buffers-pid",
            "--switch-timer",
            "100",
        ])
        .success()
        .json_data("session");
    let c = channel(&s, "big");
    assert_eq!(c["subbuf_size"], 65536);
    assert_eq!(c["num_subbuf"], 8);
    assert_eq!(c["mode"], "overwrite");
    assert_eq!(c["buffers"], "per_pid");
    assert_eq!(c["switch_timer_ms"], 100);
    assert_eq!(c["domain"], "user");
    assert_eq!(c["enabled"], true);
    let s = env
        .drtrace([
            "--json",
            "enable-channel",
            "-u",
            "-s",
            "ch",
            "mb",
            "--subbuf-size",
            "1M",
        ])
        .success()
        .json_data("session");
    let c = channel(&s, "mb");
    assert_eq!(c["subbuf_size"], 1 << 20);
    assert_eq!(c["num_subbuf"], 4);
    assert_eq!(c["mode"], "discard");
    assert_eq!(c["buffers"], "per_uid");
    assert_eq!(c["switch_timer_ms"], 0);
    let s = env
        .drtrace([
            "--json",
            "enable-channel",
            "-u",
            "small",
            "--subbuf-size",
            "4096",
            "--discard",
            "--buffers-uid",
        ])
        .success()
        .json_data("session");
    assert_eq!(channel(&s, "small")["subbuf_size"], 4096);
    // Shapes are checked by the CLI (usage errors), values by the daemon.
    let msg = env
        .drtrace(["enable-channel", "-u", "bad", "--subbuf-size", "12x"])
        .fails_with(2);
    assert!(msg.contains("12x"), "{msg}");
    let msg = env
        .drtrace(["enable-channel", "-u", "bad", "--subbuf-size", "3000"])
        .fails();
    assert!(
        msg.contains("3000") || msg.contains("power of two"),
        "{msg}"
    );
    let msg = env
        .drtrace(["enable-channel", "-u", "bad", "--num-subbuf", "1"])
        .fails();
    assert!(!msg.is_empty());
    // Disable, then re-enable.
    let s = env
        .drtrace(["--json", "disable-channel", "-u", "big"])
        .success()
        .json_data("session");
    assert_eq!(channel(&s, "big")["enabled"], false);
    let s = env
        .drtrace(["--json", "enable-channel", "-u", "big"])
        .success()
        .json_data("session");
    assert_eq!(channel(&s, "big")["enabled"], true);
    let msg = env.drtrace(["disable-channel", "-u", "nosuch"]).fails();
    assert!(msg.contains("nosuch"), "{msg}");
}

#[test]
fn event_rules_with_wildcards_and_log_levels() {
    let env = TestEnv::new("event_rules_with_wildcards_and_log_levels");
    env.drtrace(["create", "ev"]).success();
    let s = env
        .drtrace([
            "--json",
            "enable-event",
            "-u",
            "demo:*",
            "--loglevel",
            "warning",
        ])
        .success()
        .json_data("session");
    let r = rule(channel(&s, "channel0"), "demo:*");
    assert_eq!(r["enabled"], true);
    assert_eq!(r["loglevel"]["kind"], "at_least");
    assert_eq!(r["loglevel"]["level"], "warning");
    let s = env
        .drtrace(["--json", "enable-event", "-u", "-a"])
        .success()
        .json_data("session");
    assert_eq!(rule(channel(&s, "channel0"), "*")["loglevel"], Value::Null);
    env.drtrace(["enable-channel", "-u", "big"]).success();
    let s = env
        .drtrace([
            "--json",
            "enable-event",
            "-u",
            "-c",
            "big",
            "-s",
            "ev",
            "*:tick",
            "app:req*",
            "--loglevel-only",
            "info",
        ])
        .success()
        .json_data("session");
    let big = channel(&s, "big");
    for p in ["*:tick", "app:req*"] {
        assert_eq!(rule(big, p)["loglevel"]["kind"], "exactly");
        assert_eq!(rule(big, p)["loglevel"]["level"], "info");
    }
    let out = env.drtrace(["disable-event", "-u", "demo:*"]).success();
    assert!(out.stdout.contains("'demo:*' disabled"), "{}", out.report());
    let s = env
        .drtrace(["--json", "list", "ev"])
        .success()
        .json_data("session");
    assert_eq!(rule(channel(&s, "channel0"), "demo:*")["enabled"], false);
    assert_eq!(rule(channel(&s, "channel0"), "*")["enabled"], true);
    let s = env
        .drtrace(["--json", "disable-event", "-u", "-a", "-c", "big"])
        .success()
        .json_data("session");
    let big = channel(&s, "big");
    assert!(
        big["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["enabled"] == false),
        "{big}"
    );
    assert_eq!(rule(channel(&s, "channel0"), "*")["enabled"], true);
    // Re-enabling a disabled rule.
    let s = env
        .drtrace([
            "--json",
            "enable-event",
            "-u",
            "demo:*",
            "--loglevel",
            "warning",
        ])
        .success()
        .json_data("session");
    assert_eq!(rule(channel(&s, "channel0"), "demo:*")["enabled"], true);
    // Usage errors: a pattern with bad characters, no pattern, two level filters.
    env.drtrace(["enable-event", "-u", "demo:$x"]).fails_with(2);
    env.drtrace(["enable-event", "-u"]).fails_with(2);
    env.drtrace([
        "enable-event",
        "-u",
        "a:b",
        "--loglevel",
        "info",
        "--loglevel-only",
        "info",
    ])
    .fails_with(2);
    let msg = env
        .drtrace(["enable-event", "-u", "a:b", "--loglevel", "loud"])
        .fails_with(2);
    assert!(msg.contains("loud"), "{msg}");
    let msg = env
        .drtrace(["enable-event", "-u", "-c", "nosuch", "a:b"])
        .fails();
    assert!(msg.contains("nosuch"), "{msg}");
}

#[test]
fn exactly_one_domain_is_required() {
    let env = TestEnv::new("exactly_one_domain_is_required");
    let msg = env.drtrace(["enable-event", "a:b"]).fails_with(2);
    assert!(msg.contains("-u") && msg.contains("-k"), "{msg}");
    let msg = env.drtrace(["enable-channel", "c"]).fails_with(2);
    assert!(msg.contains("-u") && msg.contains("-k"), "{msg}");
    env.drtrace(["disable-event", "sched_switch"]).fails_with(2);
    env.drtrace(["disable-channel", "c"]).fails_with(2);
    env.drtrace(["enable-event", "-u", "-k", "a:b"])
        .fails_with(2);
    // Options that only mean something for userspace are usage errors with -k.
    for args in [
        &["enable-event", "-k", "--loglevel", "info", "sched_switch"][..],
        &[
            "enable-event",
            "-k",
            "--loglevel-only",
            "info",
            "sched_switch",
        ],
        &["enable-channel", "-k", "--buffers-pid", "c"],
        &["enable-channel", "-k", "--switch-timer", "10", "c"],
    ] {
        let msg = env.drtrace(args).fails_with(2);
        assert!(msg.contains("-k") && msg.contains("--"), "{args:?}: {msg}");
    }
    // None of these needed a daemon, let alone the broker.
    assert!(!Path::new(&env.socket).exists());
    assert!(!env.broker_dir.exists());
}
