//! Test support (feature `test-support`), shared by the tests of every crate that checks
//! its traces with babeltrace2.

use std::path::PathBuf;

/// The babeltrace2 binary (on `PATH`, or `/usr/bin`), or `None` with the reason printed.
/// Under CI (`CI` set) a missing babeltrace2 is a failure naming the package: the
/// agreement checks must run there.
pub fn babeltrace2() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("babeltrace2"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "babeltrace2 was not found: apt-get install babeltrace2 (the babeltrace2 checks must run under CI)"
        );
        eprintln!(
            "skipping the babeltrace2 checks: babeltrace2 was not found (apt-get install babeltrace2)"
        );
    }
    found
}
