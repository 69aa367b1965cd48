//! The root broker in tests, throwaway groups, and tracefs instances.
//!
//! Each test's broker serves the test's own directory (`DRTRACE_BROKER_DIR`, which every
//! command of the test gets, so nothing ever touches `/run/drtrace`), writes the system-wide
//! traces of non-root clients to `<test dir>/system-traces`, logs to `<test dir>/broker.log`,
//! and lets in the members of a group the test created ([`TestGroup`], `groupadd` with a
//! unique name, `groupdel` on drop). A broker the CLI starts by itself is tracked too (the
//! harness reads the pid in the broker's lock file), and so is stopped at the end.
//!
//! Brokers name their tracefs instances `drtrace-<broker pid>-<n>`, and a broker starting
//! up removes the instances of brokers that are gone, whichever test started them. So that
//! a test can watch the instance a broker it killed left behind, starting a broker takes a
//! shared lock on a host-wide lock file, and a test that must see such an instance survive
//! holds the lock exclusively meanwhile ([`TracefsLock`]).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use nix::fcntl::{Flock, FlockArg};

use super::{NEXT_ID, Started, TestCommand, TestEnv, TestUser, bins, is_alive, is_root, which};

/// Where tracefs is (mounted by the broker if it is not yet).
pub(crate) const TRACEFS: &str = "/sys/kernel/tracing";

/// The instances directory of tracefs.
pub(crate) fn instances_dir() -> PathBuf {
    Path::new(TRACEFS).join("instances")
}

/// The `setpriv` binary, which runs a command as a user with supplementary groups.
pub(crate) fn setpriv() -> PathBuf {
    which("setpriv").unwrap_or_else(|| PathBuf::from("/usr/bin/setpriv"))
}

fn have(command: &str) -> bool {
    which(command).is_some() || Path::new("/usr/sbin").join(command).exists()
}

/// For tests that run the broker (root, tracefs, users and groups): true if they can run.
/// When they cannot, fails the test if `CI` is set (CI runs as root with tracefs), naming
/// what is missing, else prints why the test is skipped and returns false.
pub(crate) fn require_kernel(test: &str) -> bool {
    let missing = if !is_root() {
        Some("root (to run the broker and trace the kernel)".to_owned())
    } else if !Path::new(TRACEFS).is_dir() {
        Some(format!(
            "tracefs ({TRACEFS} does not exist: a kernel without ftrace)"
        ))
    } else {
        ["useradd", "userdel", "groupadd", "groupdel", "setpriv"]
            .into_iter()
            .find(|c| !have(c))
            .map(|c| format!("the {c} command"))
    };
    match missing {
        None => true,
        Some(what) if std::env::var_os("CI").is_some() => {
            panic!("{test} needs {what}, which this CI runner does not provide")
        }
        Some(what) => {
            eprintln!("skipping {test}: it needs {what}");
            false
        }
    }
}

/// The names of the instances a broker of pid `pid` made (`drtrace-<pid>-<n>`), now.
pub(crate) fn instances_of(pid: i32) -> BTreeSet<String> {
    let prefix = format!("drtrace-{pid}-");
    std::fs::read_dir(instances_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(&prefix).is_some_and(|rest| {
                        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A lock on the set of tracefs instances, shared by broker start-ups (which remove the
/// instances of dead brokers) and held exclusively by a test that watches such an instance.
#[derive(Debug)]
pub(crate) struct TracefsLock {
    _lock: Flock<File>,
}

impl TracefsLock {
    fn take(arg: FlockArg) -> Self {
        let path = std::env::temp_dir().join("drtrace-it-tracefs.lock");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let lock = Flock::lock(file, arg)
            .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", path.display()));
        Self { _lock: lock }
    }

    /// Taken while a broker starts.
    pub(crate) fn shared() -> Self {
        Self::take(FlockArg::LockShared)
    }

    /// Taken while no other broker may start (so none removes a dead broker's instance).
    pub(crate) fn exclusive() -> Self {
        Self::take(FlockArg::LockExclusive)
    }
}

/// A throwaway group, deleted (`groupdel`) when its environment is dropped.
#[derive(Debug, Clone)]
pub(crate) struct TestGroup {
    /// Its name, unique to the test.
    pub(crate) name: String,
    /// Its gid.
    pub(crate) gid: u32,
}

impl TestGroup {
    fn create(tag: &str) -> Self {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "dtg{}x{n}{}",
            std::process::id(),
            tag.chars().next().unwrap_or('g')
        );
        let out = Command::new("groupadd")
            .arg(&name)
            .output()
            .expect("run groupadd");
        assert!(
            out.status.success(),
            "groupadd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let group = nix::unistd::Group::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("group {name} not found after groupadd"));
        Self {
            name,
            gid: group.gid.as_raw(),
        }
    }

    pub(super) fn delete(&self) {
        match Command::new("groupdel").arg(&self.name).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: groupdel {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run groupdel {}: {e}", self.name),
        }
    }
}

impl TestEnv {
    /// Creates a group for this test (the broker's tracing group, typically).
    pub(crate) fn group(&self, tag: &str) -> TestGroup {
        let group = TestGroup::create(tag);
        self.groups.lock().unwrap().push(group.clone());
        group
    }

    /// Creates a throwaway user who is a member of `group` (`useradd --groups`); its
    /// commands run with that supplementary group, as after a login.
    pub(crate) fn user_in(&self, tag: &str, group: &TestGroup) -> TestUser {
        std::fs::set_permissions(
            &self.root,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let user = TestUser::create(self, tag, &[group]);
        self.users.lock().unwrap().push(user.clone());
        user
    }

    /// The broker's socket in this test's broker directory.
    pub(crate) fn broker_socket(&self) -> PathBuf {
        self.broker_dir.join("broker.sock")
    }

    /// The pid the broker of this test's directory wrote in its lock file.
    pub(crate) fn broker_pid(&self) -> Option<i32> {
        drtrace_proto::client::pid_from_lock_file(&self.broker_socket())
    }

    /// The log of the brokers this test starts itself.
    pub(crate) fn broker_log(&self) -> PathBuf {
        self.root.join("broker.log")
    }

    /// Where the broker puts the system-wide traces of non-root clients.
    pub(crate) fn system_traces(&self) -> PathBuf {
        self.root.join("system-traces")
    }

    /// `drtrace-broker ARGS`, with this environment.
    pub(crate) fn broker<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        args: I,
    ) -> TestCommand<'_> {
        TestCommand::new(self, &bins().broker).args(args)
    }

    /// Starts `drtrace-broker --detach` for this test's directory, letting in `group`;
    /// returns its pid (tracked: drop stops it). Panics unless it reports `ready PID`.
    pub(crate) fn start_broker(&self, group: &TestGroup) -> i32 {
        let lock = TracefsLock::shared();
        self.start_broker_holding(group, &lock)
    }

    /// [`TestEnv::start_broker`] for a caller that already holds the tracefs lock.
    pub(crate) fn start_broker_holding(&self, group: &TestGroup, _lock: &TracefsLock) -> i32 {
        let traces = self.system_traces();
        std::fs::create_dir_all(&traces).unwrap();
        let log = self.broker_log();
        let cmd = self.broker([
            OsStr::new("--detach"),
            OsStr::new("--group"),
            OsStr::new(&group.name),
            OsStr::new("--traces-dir"),
            traces.as_os_str(),
            OsStr::new("--log-file"),
            log.as_os_str(),
        ]);
        let (started, out) = self.launch(cmd);
        match started {
            Started::Ready(pid) => {
                self.track_broker(pid);
                pid
            }
            other => panic!("the broker did not start: {other:?}\n{}", out.report()),
        }
    }

    /// Removes the tracefs instances left by this test's brokers once they are gone (a
    /// broker killed by the test leaves its instances to the next broker to start).
    pub(super) fn remove_broker_instances(&self) {
        for pid in self.broker_pids.lock().unwrap().iter().copied() {
            if is_alive(pid) {
                continue;
            }
            for name in instances_of(pid) {
                let dir = instances_dir().join(&name);
                if let Err(e) = std::fs::remove_dir(&dir) {
                    eprintln!("warning: cannot remove instance {}: {e}", dir.display());
                }
            }
        }
    }
}
