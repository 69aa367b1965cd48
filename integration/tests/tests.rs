//! drtrace end-to-end tests: the real `drtrace`, `drtrace-sessiond`, `drtrace-consumerd` and
//! `drtrace-demo` binaries, each test in its own temp dir with its own socket, traces and
//! logs (see `harness`).
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo nextest run --workspace`.
//! Tests that create users need root; they fail when `CI` is set and root is missing, and
//! are skipped (saying why) elsewhere.

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
