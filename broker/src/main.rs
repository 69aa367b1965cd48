//! `drtrace-broker`: see the library docs for what it does.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drtrace_broker::{Config, DEFAULT_GROUP, DEFAULT_TRACES_DIR, MainError, run};
use drtrace_daemon::process::{Detached, abort_on_panic, report_readiness};
use drtrace_proto::startup::Readiness;

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
    // SAFETY: first thing in main: nothing in this process owns a descriptor above 2 yet.
    #[allow(unsafe_code)]
    unsafe {
        drtrace_daemon::process::close_inherited_fds();
    }
    let args = Args::parse();
    if args.detach {
        // SAFETY: no thread exists yet: argument parsing is single-threaded and the event
        // loop, the only thread spawner, starts later in `run`.
        #[allow(unsafe_code)]
        match unsafe { drtrace_daemon::process::detach() } {
            Ok(Detached::Parent) => return ExitCode::SUCCESS,
            Ok(Detached::Daemon) => {}
            Err(e) => {
                eprintln!("error: cannot detach: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let log_path = args
        .log_file
        .clone()
        .or_else(|| drtrace_daemon::logging::default_log_file("broker"))
        .unwrap_or_else(|| PathBuf::from("-"));
    let log_file = match drtrace_daemon::logging::init("broker", &log_path, args.log_level) {
        Ok(file) => file,
        Err(e) => {
            let msg = format!("cannot open log file {}: {e}", log_path.display());
            eprintln!("error: {msg}");
            report_readiness(&Readiness::Failed { message: msg }, args.detach);
            return ExitCode::from(1);
        }
    };
    abort_on_panic();
    let config = Config {
        dir: args.dir,
        group: args.group,
        traces_dir: args.traces_dir,
        log_file,
        detached: args.detach,
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, args.detach),
    }
}

fn fail(e: &MainError, detached: bool) -> ExitCode {
    log::error!("{e}");
    if !detached {
        eprintln!("error: {e}");
    }
    report_readiness(
        &Readiness::Failed {
            message: e.to_string(),
        },
        detached,
    );
    ExitCode::from(e.exit_code())
}
