//! `drtrace-sessiond`: see the library docs for what it does.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drtrace_daemon::process::{Started, fail, start};
use drtrace_sessiond::{Config, run};

/// The drtrace per-user session daemon.
///
/// Normally spawned by the `drtrace` command on first use; run it by hand to choose its
/// socket or log file. It serves only its own user (and root), exits on SIGTERM or SIGINT or
/// `drtrace daemon stop`, and removes its socket when it does.
#[derive(Debug, Parser)]
#[command(name = "drtrace-sessiond", version)]
struct Args {
    /// Fork into the background; the first process exits at once, and the daemon writes one
    /// line on stdout: `ready PID`, `running PID` (another daemon serves the socket) or
    /// `error MESSAGE`.
    #[arg(long)]
    detach: bool,
    /// Socket to listen on [default: $DRTRACE_SESSIOND_SOCKET or /tmp/ltt-sessiond-$USER].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log file, `-` for stderr [default: $XDG_STATE_HOME/drtrace/sessiond.log].
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Least severe messages logged: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: first thing in main after argument parsing, which is single-threaded and
    // opens no descriptor that outlives it: no thread exists and nothing owns a descriptor
    // above 2.
    #[allow(unsafe_code)]
    let started = unsafe { start("sessiond", args.detach, args.log_file, args.log_level) };
    let log_file = match started {
        Started::Daemon(file) => file,
        Started::Exit(code) => return code,
    };
    let config = Config {
        socket: args.socket,
        log_file,
        detached: args.detach,
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, e.exit_code(), args.detach),
    }
}
