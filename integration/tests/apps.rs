//! `drtrace list -u`: the applications registered with the daemon and their events, as
//! the in-process library of a running `drtrace-demo` declares them.

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{TestEnv, wait_for};

fn apps(env: &TestEnv) -> Vec<Value> {
    env.drtrace(["--json", "list", "-u"])
        .success()
        .json_data("apps")
        .as_array()
        .unwrap_or_else(|| panic!("apps is not an array"))
        .clone()
}

#[test]
fn list_u_without_applications() {
    let env = TestEnv::new("list_u_without_applications");
    let out = env.drtrace(["list", "-u"]).success();
    assert!(
        out.stdout.starts_with("No registered applications."),
        "{}",
        out.report()
    );
    assert!(apps(&env).is_empty());
    let out = env.drtrace(["list", "--userspace"]).success();
    assert!(out.stdout.starts_with("No registered applications."));
}

#[test]
fn list_u_refuses_a_session_name_and_the_kernel() {
    let env = TestEnv::new("list_u_refuses_a_session_name_and_the_kernel");
    env.drtrace(["list", "-u", "demo"]).fails_with(2);
    env.drtrace(["list", "-u", "-k"]).fails_with(2);
    env.drtrace(["list", "-k", "demo"]).fails_with(2);
    // None of these needed a daemon.
    assert!(!env.socket.exists());
}

#[test]
fn list_u_shows_a_running_demo_until_it_exits() {
    let env = TestEnv::new("list_u_shows_a_running_demo_until_it_exits");
    // The daemon first, so the demo registers at its start.
    env.drtrace(["list"]).success();
    let go = env.root.join("go");
    let demo = env
        .demo([
            OsStr::new("--wait-for-file"),
            go.as_os_str(),
            OsStr::new("--iterations"),
            OsStr::new("1"),
        ])
        .spawn();
    let pid = i64::from(demo.pid());
    let app = wait_for("the demo in list -u", Duration::from_secs(30), || {
        apps(&env).into_iter().find(|a| a["pid"] == pid)
    });
    assert_eq!(app["uid"], nix::unistd::getuid().as_raw());
    assert_eq!(app["procname"], "drtrace-demo");
    let mut names: Vec<String> = app["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["provider"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "demo_app:finish",
            "demo_app:iteration",
            "demo_app:start",
            "demo_http:request",
            "demo_types:floats",
            "demo_types:ints",
            "demo_types:text",
        ]
    );
    let request = app["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["provider"] == "demo_http")
        .unwrap();
    assert_eq!(request["loglevel"], "info");
    assert_eq!(
        request["fields"],
        json!([
            {"name": "id", "type": "u64"},
            {"name": "path", "type": "string"},
            {"name": "ok", "type": "bool"},
            {"name": "elapsed_us", "type": "u32"},
        ])
    );
    let human = env.drtrace(["list", "-u"]).success();
    assert!(
        human.stdout.contains(&format!(
            "pid {pid} (uid {}): drtrace-demo, 7 events",
            nix::unistd::getuid()
        )),
        "{}",
        human.report()
    );
    assert!(
        human
            .stdout
            .contains("demo_types:text [debug] (msg: string, raw: bytes)"),
        "{}",
        human.report()
    );

    std::fs::write(&go, b"").unwrap();
    let out = demo.finish();
    assert!(out.status.success(), "{}", out.report());
    wait_for("the demo to leave list -u", Duration::from_secs(30), || {
        (!apps(&env).iter().any(|a| a["pid"] == pid)).then_some(())
    });
}
