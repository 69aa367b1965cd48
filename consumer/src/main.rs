//! `drtrace-consumerd`: see the library docs for what it does.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use drtrace_consumerd::{Config, DEFAULT_READ_TIMER, MainError, run};
use drtrace_daemon::process::abort_on_panic;

/// The drtrace consumer daemon.
///
/// Started by drtrace-sessiond with its control socket as standard input; it drains the
/// session daemon's ring buffers into CTF stream files and exits, after flushing every
/// buffer to disk, when that socket closes or on SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(name = "drtrace-consumerd", version)]
struct Args {
    /// Log file, `-` for stderr [default: $XDG_STATE_HOME/drtrace/consumerd.log].
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Least severe messages logged: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
    /// Period of the read timer, in ms: retries failed writes, releases stuck sub-buffers,
    /// catches missed wake-ups.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_READ_TIMER.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    read_timer_ms: u64,
    /// Nice value to run at, from -20 to 19 (default: inherited). The broker runs its root
    /// consumer at -10: a kernel CPU buffer is read when it is half full, and on a saturated
    /// machine a consumer at the default priority was sometimes woken too late to read it
    /// before it filled (`benches/kernel.rs`).
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: Option<i32>,
}

fn main() -> ExitCode {
    // SAFETY: first statement of main: nothing in this process owns a descriptor above 2
    // yet (argument parsing and logging come after), so none is closed under its owner.
    #[allow(unsafe_code)]
    unsafe {
        drtrace_daemon::process::close_inherited_fds()
    };
    let args = Args::parse();
    let log_path = args
        .log_file
        .clone()
        .or_else(|| drtrace_daemon::logging::default_log_file("consumerd"))
        .unwrap_or_else(|| PathBuf::from("-"));
    if let Err(e) = drtrace_daemon::logging::init("consumerd", &log_path, args.log_level) {
        eprintln!("error: cannot open log file {}: {e}", log_path.display());
        return ExitCode::from(1);
    }
    abort_on_panic();
    if let Some(nice) = args.nice {
        set_nice(nice);
    }
    let config = Config {
        read_timer: Duration::from_millis(args.read_timer_ms),
        ..Config::default()
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Sets the process's nice value; a failure (lowering it needs CAP_SYS_NICE) is logged and
/// the consumer goes on at the priority it has.
fn set_nice(nice: i32) {
    // SAFETY: setpriority(2) takes three integers and reads or writes no memory of this
    // process. JUSTIFICATION: neither std nor the workspace's dependencies wrap it safely.
    #[allow(unsafe_code)]
    let rc = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        log::info!("running at nice {nice}");
    } else {
        log::warn!(
            "cannot set the nice value to {nice}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn fail(e: &MainError) -> ExitCode {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    log::error!("{text}");
    eprintln!("error: {text}");
    ExitCode::from(e.exit_code())
}
