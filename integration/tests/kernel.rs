//! Kernel tracing and system-wide sessions through the root broker (root only: the tests run
//! a broker of their own, create users and a tracing group, and trace the real kernel).
//!
//! - a member of the tracing group records `sched_switch` beside their app's events in one
//!   session of their own: one trace, owned by them, that babeltrace2 merges in time order;
//! - anyone else is refused with one line that says what would grant it, and nothing is
//!   created on the system;
//! - root's system-wide session records the apps of two users into their own uid directories;
//! - faults: a broker killed leaves an instance that the next broker removes; a killed broker
//!   costs a user's session its kernel part only, and a restarted one is re-registered with;
//!   a killed session daemon has its kernel sub-sessions torn down by the broker;
//! - `list -k`, `--system` refusals, and root's commands starting the broker.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drtrace_ctf::reader::Trace;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::demo::{Line, check_demo_lines, events_for};
use crate::harness::kernel::{TestGroup, TracefsLock, instances_dir, instances_of, require_kernel};
use crate::harness::{Out, TestEnv, TestUser, babeltrace2, is_alive, reap, signal_child, wait_for};

/// Bound on waits for something the daemons do on their own (register, tear down).
const SETTLE: Duration = Duration::from_secs(20);

/// A test environment with a tracing group and a broker that lets its members in; `None`
/// (after saying why) when the test cannot run here.
fn setup(test: &str) -> Option<(TestEnv, TestGroup, i32)> {
    if !require_kernel(test) {
        return None;
    }
    let env = TestEnv::new(test);
    let group = env.group("tracing");
    let broker = env.start_broker(&group);
    Some((env, group, broker))
}

/// The pid a demo started with `--print-pid` printed first.
fn printed_pid(out: &Out) -> i64 {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the demo printed no pid\n{}", out.report()))
}

/// The pids of the applications a daemon lists now (`system`: the broker).
fn app_pids(env: &TestEnv, system: bool) -> Vec<i64> {
    let mut args = vec!["--json", "list", "-u"];
    if system {
        args.insert(0, "--system");
    }
    let out = env.drtrace(args).run();
    if out.code() != 0 {
        return Vec::new();
    }
    out.json_data("apps")
        .as_array()
        .map(|apps| apps.iter().filter_map(|a| a["pid"].as_i64()).collect())
        .unwrap_or_default()
}

fn wait_registered(env: &TestEnv, pid: i64, system: bool) {
    let who = if system {
        "the broker"
    } else {
        "the session daemon"
    };
    wait_for(&format!("pid {pid} to register with {who}"), SETTLE, || {
        app_pids(env, system).contains(&pid).then_some(())
    });
}

/// The kernel channels of a session document.
fn kernel_channels(session: &Value) -> Vec<Value> {
    session["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["domain"] == "kernel")
        .cloned()
        .collect()
}

/// Every file and directory under `dir`, `dir` included.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    let mut i = 0;
    while i < all.len() {
        let p = all[i].clone();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&p).unwrap() {
                all.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    all
}

/// Events and discarded events of the trace at `dir`, read by drtrace's reader, and the
/// pids that `demo_app:start` events carry.
fn count(dir: &Path) -> (u64, u64, BTreeSet<i64>) {
    let trace = Trace::open(dir).unwrap_or_else(|e| panic!("cannot open {}: {e}", dir.display()));
    let (mut events, mut pids) = (0, BTreeSet::new());
    for event in trace.events() {
        let event = event.unwrap_or_else(|e| panic!("bad trace {}: {e}", dir.display()));
        events += 1;
        if event.name == "demo_app:start" {
            pids.insert(event.field("pid").and_then(|v| v.as_i64()).unwrap());
        }
    }
    let discarded = trace
        .stream_stats()
        .unwrap()
        .iter()
        .map(|s| s.events_discarded)
        .sum();
    (events, discarded, pids)
}

/// babeltrace2's lines for `trace`, with their timestamps as (seconds, nanoseconds) since
/// the epoch; `None` when babeltrace2 is missing outside CI.
fn babeltrace2_lines(trace: &Path) -> Option<Vec<((u64, u32), Line)>> {
    let bin = babeltrace2()?;
    let out = Command::new(bin)
        .arg("--clock-seconds")
        .arg(trace)
        .output()
        .expect("run babeltrace2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "babeltrace2 failed on {}: {}",
        trace.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        stdout
            .lines()
            .map(|l| {
                let stamp = l
                    .strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(t, _)| t.split_once('.'))
                    .and_then(|(s, ns)| Some((s.parse().ok()?, ns.parse().ok()?)))
                    .unwrap_or_else(|| panic!("no timestamp in babeltrace2's line: {l}"));
                let line = Line::parse(l)
                    .unwrap_or_else(|| panic!("babeltrace2 printed a non-event line: {l}"));
                (stamp, line)
            })
            .collect(),
    )
}

/// The integer field `name` of a kernel event line, if it has one.
fn kernel_int(line: &Line, name: &str) -> Option<i64> {
    line.field(name)?.parse().ok()
}

#[test]
fn a_member_records_kernel_and_app_events_in_one_session() {
    let Some((env, group, broker)) = setup("a_member_records_kernel_and_app_events_in_one_session")
    else {
        return;
    };
    let alice = env.user_in("alice", &group);
    let as_alice = |args: &[&str]| env.drtrace(args).run_as(&alice).success();
    as_alice(&["create", "k"]);
    let out = as_alice(&["enable-event", "-k", "sched_switch"]);
    assert!(out.stdout.contains("(kernel)"), "{}", out.report());
    as_alice(&["enable-event", "-u", "-a"]);
    let human = as_alice(&["list", "k"]);
    assert!(
        human.stdout.contains("Channel (kernel):")
            && human.stdout.contains("sched_switch [enabled]"),
        "{}",
        human.report()
    );
    as_alice(&["start"]);
    // The kernel side is an instance of this test's broker while the session is started.
    assert_eq!(instances_of(broker).len(), 1, "{}", env.logs());
    // Between start and finish the demo's main thread waits for its worker (which sleeps
    // between iterations): the scheduler switches it out, with its pid.
    let iterations = 20;
    let demo = env
        .demo(["--iterations", "20", "--delay-us", "2000", "--print-pid"])
        .run_as(&alice)
        .success();
    let pid = printed_pid(&demo);
    let stopped = env
        .drtrace(["--json", "stop"])
        .run_as(&alice)
        .success()
        .json_data("session");
    let stats = &stopped["stats"];
    assert!(stats["errors"].is_null(), "{stats}\n{}", env.logs());
    assert!(
        stats["events_recorded"].as_u64().unwrap() > events_for(iterations),
        "no kernel events counted: {stats}"
    );
    as_alice(&["destroy"]);
    assert!(instances_of(broker).is_empty(), "{}", env.logs());

    let trace = alice.home.join("traces").join("k");
    let ust = trace.join(format!("ust/uid/{}/64-bit", alice.uid));
    for f in [
        trace.join("kernel/metadata"),
        trace.join("kernel/channel0_0"),
        ust.join("metadata"),
    ] {
        assert!(f.is_file(), "{} is missing", f.display());
    }
    for p in tree(&trace) {
        let uid = std::fs::symlink_metadata(&p).unwrap().uid();
        assert_eq!(uid, alice.uid, "{} is owned by uid {uid}", p.display());
    }
    let (events, discarded, pids) = count(&ust);
    assert_eq!((events, discarded), (events_for(iterations), 0));
    assert_eq!(pids, BTreeSet::from([pid]));

    let Some(lines) = babeltrace2_lines(&trace) else {
        return;
    };
    for pair in lines.windows(2) {
        assert!(
            pair[0].0 <= pair[1].0,
            "babeltrace2's output goes back in time: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let (user, kernel): (Vec<_>, Vec<_>) = lines
        .iter()
        .map(|(_, l)| l.clone())
        .partition(|l| l.name.starts_with("demo_"));
    assert!(
        kernel.iter().all(|l| l.name == "sched_switch"),
        "only sched_switch was enabled"
    );
    assert!(!kernel.is_empty(), "no sched_switch in the merged trace");
    check_demo_lines(&user, iterations, "babeltrace2");
    let is_demo = |l: &Line| {
        ["common_pid", "prev_pid", "next_pid"]
            .iter()
            .any(|f| kernel_int(l, f) == Some(pid))
    };
    assert!(
        kernel.iter().any(is_demo),
        "no sched_switch names the demo's pid {pid}"
    );
    // Merged, not concatenated: the demo's own switches fall between its first and last
    // events.
    let at = |name: &str| {
        lines
            .iter()
            .position(|(_, l)| l.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let (start, finish) = (at("demo_app:start"), at("demo_app:finish"));
    assert!(
        lines[start..finish]
            .iter()
            .any(|(_, l)| l.name == "sched_switch" && kernel_int(l, "prev_pid") == Some(pid)),
        "no switch of pid {pid} between its start and finish events"
    );
}

#[test]
fn a_non_member_is_refused_and_nothing_is_created() {
    let Some((env, group, broker)) = setup("a_non_member_is_refused_and_nothing_is_created") else {
        return;
    };
    let bob = env.user("bob");
    env.drtrace(["create", "k"]).run_as(&bob).success();
    assert!(instances_of(broker).is_empty());
    let check = |msg: &str| {
        let who = format!("uid {} ({}) may not trace the kernel", bob.uid, bob.name);
        assert!(msg.starts_with(&who), "{msg}");
        assert!(msg.contains(&group.name), "the group is not named: {msg}");
        assert!(
            msg.contains(&format!("usermod -aG {} {}", group.name, bob.name)),
            "no way to get access: {msg}"
        );
        assert!(msg.contains(&bob.name), "{msg}");
    };
    check(
        &env.drtrace(["enable-event", "-k", "sched_switch"])
            .run_as(&bob)
            .fails(),
    );
    check(
        &env.drtrace(["enable-channel", "-k", "kchan"])
            .run_as(&bob)
            .fails(),
    );
    check(&env.drtrace(["list", "-k"]).run_as(&bob).fails());
    check(
        &env.drtrace(["record", "-k", "sched_switch", "--", "true"])
            .run_as(&bob)
            .fails(),
    );
    // Nothing was created: no kernel channel, no instance, no kernel directory.
    let session = env
        .drtrace(["--json", "list", "k"])
        .run_as(&bob)
        .success()
        .json_data("session");
    assert!(kernel_channels(&session).is_empty(), "{session}");
    env.drtrace(["enable-event", "-u", "-a"])
        .run_as(&bob)
        .success();
    env.drtrace(["start"]).run_as(&bob).success();
    env.drtrace(["stop"]).run_as(&bob).success();
    let trace = PathBuf::from(session["output"].as_str().unwrap());
    assert!(!trace.join("kernel").exists());
    assert!(instances_of(broker).is_empty());
    // The refusal happened at the broker, from the user's own credentials.
    let log = std::fs::read_to_string(env.broker_log()).unwrap();
    assert!(
        log.contains(&format!("uid {}", bob.uid)) && log.contains("refused"),
        "{log}"
    );
}

#[test]
fn system_commands_of_a_non_member_are_refused() {
    let Some((env, group, broker)) = setup("system_commands_of_a_non_member_are_refused") else {
        return;
    };
    let bob = env.user("bob");
    for args in [
        &["--system", "list"][..],
        &["--system", "create", "mine"],
        &["--system", "status"],
        &["--system", "list", "-u"],
    ] {
        let msg = env.drtrace(args).run_as(&bob).fails();
        let who = format!("uid {} ({}) may not", bob.uid, bob.name);
        assert!(
            msg.starts_with(&who)
                && msg.contains(&format!("usermod -aG {} {}", group.name, bob.name)),
            "{args:?}: {msg}"
        );
    }
    // A member is served; the broker holds none of bob's sessions.
    let carol = env.user_in("carol", &group);
    env.drtrace(["--system", "create", "carols"])
        .run_as(&carol)
        .success();
    let sessions = env
        .drtrace(["--system", "--json", "list"])
        .success()
        .json_data("sessions");
    let names: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["carols"]);
    // A member's system-wide trace stays in the broker's own directory, whatever asked.
    let output = sessions[0]["output"].as_str().unwrap();
    assert!(
        Path::new(output).starts_with(env.system_traces()),
        "{output}"
    );
    // Stopping the broker, which serves everyone, is for root alone.
    let msg = env
        .drtrace(["--system", "daemon", "stop"])
        .run_as(&carol)
        .fails();
    assert!(msg.contains("only root may stop the broker"), "{msg}");
    assert!(is_alive(broker) && env.broker_socket().exists());
    env.drtrace(["--system", "list"]).run_as(&carol).success();
}

#[test]
fn list_k_lists_the_kernel_events() {
    let Some((env, group, _broker)) = setup("list_k_lists_the_kernel_events") else {
        return;
    };
    let out = env.drtrace(["list", "-k"]).success();
    assert!(
        out.stdout.starts_with("Kernel events ("),
        "{}",
        out.report()
    );
    assert!(
        out.stdout.lines().any(|l| l.trim() == "sched:sched_switch"),
        "{}",
        out.report()
    );
    let events = env
        .drtrace(["--json", "list", "-k"])
        .success()
        .json_data("kernel_events");
    let events: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(events.contains(&"sched:sched_switch"));
    assert!(events.iter().any(|e| e.starts_with("syscalls:sys_enter_")));
    assert!(events.windows(2).all(|w| w[0] < w[1]), "not sorted");
    // The same list for a member, through their own daemon, and from the broker.
    let alice = env.user_in("alice", &group);
    let theirs = env
        .drtrace(["--json", "list", "-k"])
        .run_as(&alice)
        .success()
        .json_data("kernel_events");
    assert_eq!(theirs.as_array().unwrap().len(), events.len());
    let system = env
        .drtrace(["--system", "--json", "list", "-k"])
        .success()
        .json_data("kernel_events");
    assert_eq!(system.as_array().unwrap().len(), events.len());
}

#[test]
fn a_system_wide_session_records_each_users_apps_apart() {
    let Some((env, _group, _broker)) = setup("a_system_wide_session_records_each_users_apps_apart")
    else {
        return;
    };
    let alice = env.user("alice");
    let bob = env.user("bob");
    env.drtrace(["--system", "create", "everyone"]).success();
    env.drtrace(["--system", "enable-event", "-u", "-a"])
        .success();
    env.drtrace(["--system", "start"]).success();
    let go = env.shared_dir().join("go");
    let demo = |user: &TestUser, iterations: &str| {
        env.demo([
            OsStr::new("--wait-for-file"),
            go.as_os_str(),
            OsStr::new("--iterations"),
            OsStr::new(iterations),
            OsStr::new("--print-pid"),
        ])
        .run_as(user)
        .spawn()
    };
    let (na, nb) = (7, 11);
    let demo_a = demo(&alice, "7");
    let demo_b = demo(&bob, "11");
    for d in [&demo_a, &demo_b] {
        wait_registered(&env, i64::from(d.pid()), true);
    }
    std::fs::write(&go, b"").unwrap();
    let (out_a, out_b) = (demo_a.finish(), demo_b.finish());
    assert!(out_a.status.success(), "{}", out_a.report());
    assert!(out_b.status.success(), "{}", out_b.report());
    let stats = env
        .drtrace(["--system", "--json", "stop"])
        .success()
        .json_data("session")["stats"]
        .clone();
    assert_eq!(stats["events_recorded"], events_for(na) + events_for(nb));
    assert_eq!(stats["events_discarded"], 0);
    assert!(stats["errors"].is_null(), "{stats}");
    env.drtrace(["--system", "destroy"]).success();

    let trace = env.traces.join("everyone");
    let uids: BTreeSet<String> = std::fs::read_dir(trace.join("ust/uid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        uids,
        BTreeSet::from([alice.uid.to_string(), bob.uid.to_string()]),
        "one directory per user, nobody else's"
    );
    let top: BTreeSet<String> = std::fs::read_dir(&trace)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(top, BTreeSet::from(["ust".to_owned()]));
    for (user, out, n) in [(&alice, &out_a, na), (&bob, &out_b, nb)] {
        let dir = trace.join(format!("ust/uid/{}/64-bit", user.uid));
        let (events, discarded, pids) = count(&dir);
        assert_eq!((events, discarded), (events_for(n), 0), "{}", dir.display());
        assert_eq!(
            pids,
            BTreeSet::from([printed_pid(out)]),
            "{}",
            dir.display()
        );
        if let Some(lines) = babeltrace2_lines(&dir) {
            let lines: Vec<Line> = lines.into_iter().map(|(_, l)| l).collect();
            check_demo_lines(&lines, n, &format!("babeltrace2 on uid {}", user.uid));
        }
    }
}

#[test]
fn a_killed_brokers_instance_is_removed_by_the_next_broker() {
    if !require_kernel("a_killed_brokers_instance_is_removed_by_the_next_broker") {
        return;
    }
    let env = TestEnv::new("a_killed_brokers_instance_is_removed_by_the_next_broker");
    let other = TestEnv::new("a_killed_brokers_instance_is_removed_by_the_next_broker/other");
    let group = env.group("tracing");
    let with_kernel_session = |env: &TestEnv| {
        env.drtrace(["--system", "create", "k"]).success();
        env.drtrace(["--system", "enable-event", "-k", "sched_switch"])
            .success();
        env.drtrace(["--system", "start"]).success();
    };
    // Another live broker with its own instance, and an instance of another name.
    let live = other.start_broker(&group);
    with_kernel_session(&other);
    let live_instances = instances_of(live);
    assert_eq!(live_instances.len(), 1);
    let decoy = instances_dir().join(format!("drtrace-decoy{}", std::process::id()));
    std::fs::create_dir(&decoy).unwrap();
    let decoy_guard = RemoveOnDrop(decoy.clone());

    // No other broker may start (and clean up) between the kill and the check.
    let lock = TracefsLock::exclusive();
    let first = env.start_broker_holding(&group, &lock);
    with_kernel_session(&env);
    let left = instances_of(first);
    assert_eq!(left.len(), 1, "{}", env.logs());
    signal_child(first, Signal::SIGKILL);
    assert!(reap(first, SETTLE).is_some());
    for name in &left {
        assert!(
            instances_dir().join(name).is_dir(),
            "{name} went with its broker"
        );
    }
    let second = env.start_broker_holding(&group, &lock);
    drop(lock);
    for name in &left {
        assert!(
            !instances_dir().join(name).exists(),
            "the new broker left the stale {name}"
        );
    }
    let log = std::fs::read_to_string(env.broker_log()).unwrap();
    let name = left.iter().next().unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("broker[{second}]")) && l.contains(name.as_str())),
        "the new broker does not say it removed {name}:\n{log}"
    );
    assert_eq!(
        instances_of(live),
        live_instances,
        "a live broker's instance went"
    );
    assert!(decoy.is_dir(), "an instance of another name went");
    drop(decoy_guard);
    // The live broker's session is unharmed.
    let stopped = other
        .drtrace(["--system", "--json", "stop"])
        .success()
        .json_data("session");
    assert!(stopped["stats"]["errors"].is_null(), "{stopped}");
}

/// Removes a directory (a tracefs instance made by the test) when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir(&self.0) {
                eprintln!("warning: cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

#[test]
fn a_killed_broker_costs_only_the_kernel_part_and_a_new_one_is_registered_with() {
    let Some((env, group, first)) =
        setup("a_killed_broker_costs_only_the_kernel_part_and_a_new_one_is_registered_with")
    else {
        return;
    };
    env.drtrace(["create", "s"]).success();
    env.drtrace(["enable-event", "-k", "sched_switch"])
        .success();
    env.drtrace(["enable-event", "-u", "-a"]).success();
    env.drtrace(["start"]).success();
    let go = env.root.join("go");
    let iterations = 50;
    let demo = env
        .demo([
            OsStr::new("--wait-for-file"),
            go.as_os_str(),
            OsStr::new("--iterations"),
            OsStr::new("50"),
        ])
        .spawn();
    let pid = i64::from(demo.pid());
    wait_registered(&env, pid, false);
    wait_registered(&env, pid, true);

    signal_child(first, Signal::SIGKILL);
    assert!(reap(first, SETTLE).is_some());
    assert!(is_alive(demo.pid()), "the app died with the broker");
    let second = env.start_broker(&group);
    // The app registers with the new broker by itself.
    wait_registered(&env, pid, true);
    std::fs::write(&go, b"").unwrap();
    let out = demo.finish();
    assert!(out.status.success(), "{}", out.report());

    // Userspace is complete; the kernel part is reported lost, on stderr and in the stats.
    let out = env.drtrace(["stop"]).success();
    let warnings: Vec<&str> = out.stderr.lines().collect();
    assert!(
        warnings.len() == 1
            && warnings[0].starts_with("warning: session s: kernel events were lost")
            && warnings[0].contains("broker"),
        "{}",
        out.report()
    );
    let session = env
        .drtrace(["--json", "list", "s"])
        .success()
        .json_data("session");
    let stats = &session["stats"];
    let errors: Vec<&str> = stats["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors reported: {stats}"))
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("kernel events were lost"),
        "{errors:?}"
    );
    assert_eq!(stats["events_recorded"], events_for(iterations));
    // The destroy's final counts say so too, about the connection that was lost (the
    // sub-session's id never reaches the new broker).
    let out = env.drtrace(["destroy"]).success();
    assert!(
        out.stderr
            .contains("kernel events were lost: the connection to the broker was lost"),
        "{}",
        out.report()
    );
    let ust = env.traces.join("s/ust/uid/0/64-bit");
    let (events, discarded, pids) = count(&ust);
    assert_eq!((events, discarded), (events_for(iterations), 0));
    assert_eq!(pids, BTreeSet::from([pid]));

    // A new session with kernel events works with the new broker.
    env.drtrace(["create", "again"]).success();
    env.drtrace(["enable-event", "-k", "sched_switch"])
        .success();
    env.drtrace(["enable-event", "-u", "-a"]).success();
    env.drtrace(["start"]).success();
    assert_eq!(instances_of(second).len(), 1, "{}", env.logs());
    env.demo(["--iterations", "3"]).success();
    let stats = env
        .drtrace(["--json", "stop"])
        .success()
        .json_data("session")["stats"]
        .clone();
    assert!(stats["errors"].is_null(), "{stats}\n{}", env.logs());
    env.drtrace(["destroy"]).success();
    let (kernel_events, _, _) = count(&env.traces.join("again/kernel"));
    assert!(kernel_events > 0, "no kernel events in the new session");
    assert_eq!(
        stats["events_recorded"].as_u64().unwrap(),
        kernel_events + events_for(3)
    );
}

#[test]
fn a_killed_session_daemon_has_its_kernel_part_torn_down() {
    let Some((env, group, broker)) = setup("a_killed_session_daemon_has_its_kernel_part_torn_down")
    else {
        return;
    };
    let alice = env.user_in("alice", &group);
    for args in [
        &["create", "k"][..],
        &["enable-event", "-k", "sched_switch"],
        &["start"],
    ] {
        env.drtrace(args).run_as(&alice).success();
    }
    assert_eq!(instances_of(broker).len(), 1, "{}", env.logs());
    let sessiond = drtrace_proto::client::pid_from_lock_file(&alice.socket)
        .expect("alice's daemon wrote its lock file");
    signal_child(sessiond, Signal::SIGKILL);
    assert!(reap(sessiond, SETTLE).is_some());
    wait_for("the broker to remove the instance", SETTLE, || {
        instances_of(broker).is_empty().then_some(())
    });
    let log = std::fs::read_to_string(env.broker_log()).unwrap();
    assert!(
        log.contains(&format!(
            "session daemon pid {sessiond} uid {} left; removing its 1 kernel sub-session(s)",
            alice.uid
        )),
        "{log}"
    );
    assert!(
        log.contains("kernel sub-session") && log.contains("of session k removed"),
        "{log}"
    );
    // The broker goes on serving.
    env.drtrace(["--system", "list"]).success();
}

#[test]
fn root_starts_the_broker_and_others_are_told_how() {
    if !require_kernel("root_starts_the_broker_and_others_are_told_how") {
        return;
    }
    let env = TestEnv::new("root_starts_the_broker_and_others_are_told_how");
    let alice = env.user("alice");
    // With no broker, a user is told it is not running and how to start it: by the CLI
    // for --system, by their daemon for kernel events.
    for args in [
        &["--system", "list"][..],
        &["enable-event", "-k", "sched_switch"],
    ] {
        if args[0] == "enable-event" {
            env.drtrace(["create", "k"]).run_as(&alice).success();
        }
        let msg = env.drtrace(args).run_as(&alice).fails();
        assert!(
            msg.contains("broker")
                && msg.contains("not running")
                && msg.contains("drtrace-broker --detach"),
            "{args:?}: {msg}"
        );
    }
    assert!(!env.broker_socket().exists());
    // `daemon status` never starts it.
    let out = env.drtrace(["--system", "daemon", "status"]).run();
    assert_eq!(out.code(), 3, "{}", out.report());
    assert!(out.stdout.contains("No broker running"), "{}", out.report());

    // Root's --system command starts it, in this test's broker directory.
    let lock = TracefsLock::shared();
    let out = env.drtrace(["--system", "--json", "status"]).success();
    drop(lock);
    let pid = env.broker_pid().expect("a broker wrote its lock file");
    env.observe();
    assert!(is_alive(pid));
    let status = out.json_data("status");
    assert_eq!(status["daemon"]["pid"], pid);
    assert_eq!(status["daemon"]["uid"], 0);
    assert_eq!(status["socket"], env.broker_socket().to_str().unwrap());
    let human = env.drtrace(["--system", "daemon", "status"]).success();
    assert!(
        human.stdout.contains(&format!("drtrace-broker pid {pid}")),
        "{}",
        human.report()
    );
    let stopped = env
        .drtrace(["--system", "--json", "daemon", "stop"])
        .success()
        .json_data("daemon_stopped");
    assert_eq!(stopped["pid"], pid);
    assert!(!env.broker_socket().exists());
    assert!(reap(pid, SETTLE).is_some());

    // So does root's kernel request to root's own daemon.
    env.drtrace(["create", "mine"]).success();
    let lock = TracefsLock::shared();
    env.drtrace(["enable-event", "-k", "sched_switch"])
        .success();
    drop(lock);
    let pid = env.broker_pid().expect("a broker wrote its lock file");
    env.observe();
    assert!(is_alive(pid) && pid != stopped["pid"]);
    let session = env
        .drtrace(["--json", "list", "mine"])
        .success()
        .json_data("session");
    assert_eq!(kernel_channels(&session).len(), 1, "{session}");
}

#[test]
fn kernel_channel_and_rules_shape_the_instance_until_the_first_start() {
    let Some((env, _group, broker)) =
        setup("kernel_channel_and_rules_shape_the_instance_until_the_first_start")
    else {
        return;
    };
    env.drtrace(["create", "k"]).success();
    let out = env
        .drtrace([
            "enable-channel",
            "-k",
            "kchan",
            "--subbuf-size",
            "64k",
            "--num-subbuf",
            "4",
        ])
        .success();
    assert!(out.stdout.contains("(kernel)"), "{}", out.report());
    // One kernel channel per session.
    let msg = env.drtrace(["enable-channel", "-k", "other"]).fails();
    assert!(msg.contains("one kernel channel"), "{msg}");
    env.drtrace([
        "enable-event",
        "-k",
        "-c",
        "kchan",
        "sched_switch",
        "sched:sched_wakeup",
    ])
    .success();
    env.drtrace(["disable-event", "-k", "-c", "kchan", "sched:sched_wakeup"])
        .success();
    // A pattern that matches nothing is refused at start, and leaves nothing behind.
    env.drtrace(["create", "bad"]).success();
    env.drtrace(["enable-event", "-k", "nosuch_event_xyz"])
        .success();
    let msg = env.drtrace(["start", "bad"]).fails();
    assert!(msg.contains("nosuch_event_xyz"), "{msg}");
    assert!(instances_of(broker).is_empty());
    assert!(!env.traces.join("bad/kernel").exists());
    env.drtrace(["destroy", "bad"]).success();

    env.drtrace(["start", "k"]).success();
    let names = instances_of(broker);
    assert_eq!(names.len(), 1);
    let instance = instances_dir().join(names.iter().next().unwrap());
    let read = |f: &str| std::fs::read_to_string(instance.join(f)).unwrap();
    // 64 KiB x 4 per CPU, which the kernel rounds up to whole pages of event data.
    let kb: u64 = read("buffer_size_kb").trim().parse().unwrap();
    assert!((256..=272).contains(&kb), "buffer_size_kb {kb}");
    assert!(
        read("trace_clock").contains("[mono]"),
        "{}",
        read("trace_clock")
    );
    assert_eq!(read("events/sched/sched_switch/enable").trim(), "1");
    assert_eq!(read("events/sched/sched_wakeup/enable").trim(), "0");
    // Kernel rules are fixed from the first start on.
    let msg = env
        .drtrace([
            "enable-event",
            "-k",
            "-s",
            "k",
            "-c",
            "kchan",
            "sched:sched_wakeup",
        ])
        .fails();
    assert!(msg.contains("fixed since its first start"), "{msg}");
    let human = env.drtrace(["list", "k"]).success();
    assert!(
        human
            .stdout
            .contains("kchan [enabled]: discard mode, 4 x 64 KiB sub-buffers per CPU")
            && human.stdout.contains("sched:sched_wakeup [disabled]"),
        "{}",
        human.report()
    );
    env.drtrace(["stop", "k"]).success();
    env.drtrace(["destroy", "k"]).success();
    assert!(instances_of(broker).is_empty());
    let kernel = env.traces.join("k/kernel");
    assert!(kernel.join("kchan_0").is_file());
    let trace = Trace::open(&kernel).unwrap();
    let names: BTreeSet<String> = trace.events().map(|e| e.unwrap().name).collect();
    assert_eq!(names, BTreeSet::from(["sched_switch".to_owned()]));
}

#[test]
fn record_k_adds_kernel_events_to_the_recorded_command() {
    let Some((env, group, _broker)) = setup("record_k_adds_kernel_events_to_the_recorded_command")
    else {
        return;
    };
    let alice = env.user_in("alice", &group);
    let demo = env.shared_copy(&crate::harness::bins().demo);
    let out = env
        .drtrace([
            OsStr::new("--json"),
            OsStr::new("record"),
            OsStr::new("--name"),
            OsStr::new("r"),
            OsStr::new("-k"),
            OsStr::new("sched_switch"),
            OsStr::new("--"),
            demo.as_os_str(),
            OsStr::new("--iterations"),
            OsStr::new("4"),
        ])
        .run_as(&alice)
        .success();
    let doc = serde_json::from_str::<Value>(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(doc["type"], "record", "{}", out.report());
    let data = &doc["data"];
    let domains: Vec<&str> = data["session"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["user", "kernel"]);
    let trace = alice.home.join("traces/r");
    let (user, _, _) = count(&trace.join(format!("ust/uid/{}/64-bit", alice.uid)));
    let (kernel, _, _) = count(&trace.join("kernel"));
    assert_eq!(user, events_for(4));
    assert!(kernel > 0, "no kernel events");
    // The summary counts both, as the trace holds them.
    assert_eq!(data["stats"]["events_recorded"], user + kernel, "{data}");
    assert!(data["stats"]["errors"].is_null(), "{data}");
}
