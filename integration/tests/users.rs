//! Several users on one host (root only: the tests create throwaway users): each user's
//! daemon serves only that user (and root), clients refuse sockets of other users, and a
//! squatted socket path is refused by everyone else, naming the squatter.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::harness::{Started, TestEnv, require_root};

#[test]
fn each_user_gets_their_own_daemon() {
    if !require_root("each_user_gets_their_own_daemon") {
        return;
    }
    let env = TestEnv::new("each_user_gets_their_own_daemon");
    let alice = env.user("alice");
    let bob = env.user("bob");
    let data = env
        .drtrace(["--json", "create"])
        .run_as(&alice)
        .success()
        .json_data("session");
    let name = data["name"].as_str().unwrap();
    assert!(name.starts_with(&format!("{}.", alice.name)), "{name}");
    assert!(
        data["output"]
            .as_str()
            .unwrap()
            .starts_with(alice.home.to_str().unwrap())
    );
    env.drtrace(["create", "bobs"]).run_as(&bob).success();
    let status = env
        .drtrace(["--json", "status"])
        .run_as(&alice)
        .success()
        .json_data("status");
    assert_eq!(status["daemon"]["uid"], alice.uid);
    assert_eq!(status["sessions"].as_array().unwrap().len(), 1);
    let meta = std::fs::symlink_metadata(&alice.socket).unwrap();
    assert_eq!(meta.uid(), alice.uid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let status = env
        .drtrace(["--json", "status"])
        .run_as(&bob)
        .success()
        .json_data("status");
    assert_eq!(status["daemon"]["uid"], bob.uid);
    assert_eq!(status["current_session"], "bobs");
}

#[test]
fn another_users_client_is_refused() {
    if !require_root("another_users_client_is_refused") {
        return;
    }
    let env = TestEnv::new("another_users_client_is_refused");
    let mallory = env.user("mallory");
    let root_pid = env.start_daemon();
    let theirs = env.socket.to_str().unwrap();

    // Client side: the CLI refuses a socket that is not its user's, naming the owner.
    let msg = env
        .drtrace(["list"])
        .run_as(&mallory)
        .env("DRTRACE_SESSIOND_SOCKET", theirs)
        .fails();
    assert!(msg.contains("uid 0"), "{msg}");
    assert!(msg.contains(theirs), "{msg}");

    // The socket's mode keeps other users from even connecting.
    let out = env
        .command(&crate::harness::bins().peer)
        .run_as(&mallory)
        .args([theirs])
        .success();
    assert!(out.stdout.starts_with("connect-error"), "{}", out.report());

    // Daemon side: with the mode opened up, the daemon still refuses the peer's uid.
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = env
        .command(&crate::harness::bins().peer)
        .run_as(&mallory)
        .args([theirs])
        .success();
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let first = out.stdout.lines().next().unwrap_or_default();
    assert!(
        first == "closed" || (first.starts_with("hello") && first.contains("refused")),
        "{}",
        out.report()
    );
    assert!(!out.stdout.contains("pong"), "{}", out.report());
    if first.contains("refused") {
        assert!(
            first.contains(&mallory.uid.to_string()),
            "refusal names the uid: {first}"
        );
    }
    // Root's own client is still served.
    let status = env
        .drtrace(["--json", "status"])
        .success()
        .json_data("status");
    assert_eq!(status["daemon"]["pid"], root_pid);
}

#[test]
fn a_squatted_socket_is_refused_naming_the_squatter() {
    if !require_root("a_squatted_socket_is_refused_naming_the_squatter") {
        return;
    }
    let env = TestEnv::new("a_squatted_socket_is_refused_naming_the_squatter");
    let alice = env.user("alice");
    let bob = env.user("bob");
    let path = env.shared_dir().join("squat.sock");
    let path_s = path.to_str().unwrap();
    env.also_clean(&path);

    // Alice's daemon holds the path.
    let (started, out) = env.launch(
        env.sessiond(["--detach"])
            .run_as(&alice)
            .env("DRTRACE_SESSIOND_SOCKET", path_s),
    );
    assert!(matches!(started, Started::Ready(_)), "{}", out.report());
    let alice_uid = format!("uid {}", alice.uid);

    // Bob's daemon refuses to start there.
    let (started, out) = env.launch(
        env.sessiond(["--detach"])
            .run_as(&bob)
            .env("DRTRACE_SESSIOND_SOCKET", path_s),
    );
    match &started {
        Started::Failed(msg) => assert!(msg.contains(&alice_uid), "{msg}"),
        other => panic!("bob's daemon started: {other:?}\n{}", out.report()),
    }
    assert_eq!(
        out.code(),
        0,
        "the first process exits 0; the report carries the error"
    );
    // In the foreground the failure is the exit status and one line on stderr.
    let fg = env
        .sessiond(std::iter::empty::<&str>())
        .run_as(&bob)
        .env("DRTRACE_SESSIOND_SOCKET", path_s)
        .run();
    assert_eq!(fg.code(), 1, "{}", fg.report());
    assert!(fg.stderr.contains(&alice_uid), "{}", fg.report());

    // Bob's CLI refuses it too, naming Alice, and does not start a daemon of its own.
    let msg = env
        .drtrace(["create"])
        .run_as(&bob)
        .env("DRTRACE_SESSIOND_SOCKET", path_s)
        .fails();
    assert!(msg.contains(&alice_uid), "{msg}");
    // So does root's: root talks only to a root daemon.
    let msg = env
        .drtrace(["list"])
        .env("DRTRACE_SESSIOND_SOCKET", path_s)
        .fails();
    assert!(msg.contains(&alice_uid), "{msg}");
    let (started, _) = env.launch(
        env.sessiond(["--detach"])
            .env("DRTRACE_SESSIOND_SOCKET", path_s),
    );
    assert!(
        matches!(&started, Started::Failed(m) if m.contains(&alice_uid)),
        "{started:?}"
    );
    // Alice herself is served.
    env.drtrace(["list"])
        .run_as(&alice)
        .env("DRTRACE_SESSIOND_SOCKET", path_s)
        .success();
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().uid(), alice.uid);
}
