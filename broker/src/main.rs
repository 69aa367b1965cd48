//! `drtrace-broker`: see the library docs for what it does.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drtrace_broker::{Config, DEFAULT_GROUP, DEFAULT_TRACES_DIR, run};
use drtrace_daemon::process::{Started, fail, start};

/// The drtrace root broker: kernel tracing and system-wide sessions.
///
/// Runs as root, one per host: as a service (see drtrace-broker.service), or spawned by root's
/// `drtrace --system` commands. Root and members of the tracing group may trace the kernel
/// and the whole system; every user's applications register with it.
#[derive(Debug, Parser)]
#[command(name = "drtrace-broker", version)]
struct Args {
    /// Fork into the background; the daemon writes one line on stdout: `ready PID`,
    /// `running PID` (another broker serves the socket) or `error MESSAGE`.
    #[arg(long)]
    detach: bool,
    /// Directory of the broker's socket [default: $DRTRACE_BROKER_DIR or /run/drtrace].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Group whose members may trace the kernel and the whole system.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_GROUP)]
    group: String,
    /// Where system-wide sessions of non-root users write their traces.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TRACES_DIR)]
    traces_dir: PathBuf,
    /// Log file, `-` for stderr [default: $XDG_STATE_HOME/drtrace/broker.log].
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
    let started = unsafe { start("broker", args.detach, args.log_file, args.log_level) };
    let log_file = match started {
        Started::Daemon(file) => file,
        Started::Exit(code) => return code,
    };
    let config = Config {
        dir: args.dir,
        group: args.group,
        traces_dir: args.traces_dir,
        log_file,
        detached: args.detach,
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, e.exit_code(), args.detach),
    }
}
