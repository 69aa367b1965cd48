//! drtrace end-to-end tests: the real `drtrace`, `drtrace-sessiond`, `drtrace-broker`,
//! `drtrace-consumerd` and `drtrace-demo` binaries, each test in its own temp dir with its
//! own socket, broker directory, traces and logs (see `harness`).
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo nextest run --workspace`.
//! Tests that create users and groups or trace the kernel need root (and tracefs); they fail
//! when `CI` is set and what they need is missing, and are skipped (saying why) elsewhere.

mod harness;

mod apps;
mod autospawn;
mod cli;
mod daemon;
mod datapath;
mod kernel;
mod record;
mod session;
mod users;
mod view;
