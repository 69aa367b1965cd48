//! `drtrace`: the command-line client of drtrace. Parsing, running and exit statuses only;
//! the commands live in the `drtrace_ctl` library.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use drtrace_ctl::app::{self, error_line, report_clap_error};
use drtrace_ctl::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return report_clap_error(&err),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match app::run(&cli, &mut out) {
        Ok(outcome) => outcome.exit_code(),
        // Output cut short by a closed pipe (`drtrace list | head -1`) is not a failure.
        Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            // Nothing better to do if stderr is gone too.
            let _ = writeln!(std::io::stderr(), "error: {}", error_line(&err));
            err.exit_code()
        }
    }
}
