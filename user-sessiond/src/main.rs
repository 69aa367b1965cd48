//! `drtrace-sessiond`: see the library docs for what it does.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drtrace_daemon::process::{Detached, abort_on_panic, report_readiness};
use drtrace_proto::startup::Readiness;
use drtrace_sessiond::{Config, MainError, run};

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
    if args.detach {
        // SAFETY: nothing has started a thread yet: argument parsing is single-threaded and
        // the event loop, the only thread spawner, starts later in `run`.
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
        .or_else(|| drtrace_daemon::logging::default_log_file("sessiond"))
        .unwrap_or_else(|| PathBuf::from("-"));
    let log_file = match drtrace_daemon::logging::init("sessiond", &log_path, args.log_level) {
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
        socket: args.socket,
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
