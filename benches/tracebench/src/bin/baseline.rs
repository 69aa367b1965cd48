//! `tracebench-baseline`: `drtrace-tracebench noop` without drtrace, the reference for the
//! start-up overhead.
//!
//! Same command line, same standard library, nothing of drtrace linked in (`benches/run`
//! checks with `nm` that no drtrace symbol is in this binary): the difference between the
//! two programs' run times is what the library's constructor costs.
#![warn(missing_docs)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("noop") => ExitCode::SUCCESS,
        _ => {
            eprintln!("usage: tracebench-baseline noop");
            ExitCode::from(2)
        }
    }
}
