//! `drtrace record -- COMMAND`: one session around one command.
//!
//! The steps: reach the daemon (the broker with `--system`; for root, the broker is started
//! first when kernel events are asked for and none runs), block the terminating signals
//! ([`SignalGuard`]), create the session, enable the channel options and event rules (the
//! kernel's too, with `-k`), start, run the command with drtrace's environment
//! and standard streams (so its in-process library finds the same daemon), wait for it, then
//! stop, destroy and summarise. Whatever fails before the command runs destroys the session
//! again, so a failed `record` leaves nothing behind.
//!
//! The control connection used for the set-up is closed before the command starts and a new
//! one is opened when it has ended: the daemon disconnects control clients idle for a minute,
//! and a command may run for hours.

use std::ffi::OsString;
use std::io::{self, Write};

use drtrace_proto::ErrorCode;
use drtrace_proto::control::{
    BufferMode, BufferOwnership, ChannelConfig, CreateSession, DEFAULT_CHANNEL, Domain, EventRule,
    LogLevelFilter, SessionInfo, SessionTarget, TraceStats,
};
use nix::errno::Errno;
use serde::Serialize;

use super::child::{Ending, SignalGuard, SpawnFailure};
use super::output::Printer;
use super::{AppError, Outcome, Target, friendly, output_location};
use crate::cli::RecordArgs;
use crate::client::{Client, ClientError, ConnectOptions};

/// Exit status when the command was not found (as in shells and `env`).
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit status when the command was found but could not be run.
pub const EXIT_CANNOT_RUN: u8 = 126;

/// `data` of a `record` document.
#[derive(Debug, Serialize)]
pub(super) struct RecordDoc<'a> {
    /// The session as it was just before it was destroyed.
    pub(super) session: &'a SessionInfo,
    /// What was recorded; `null` if the daemon reported nothing.
    pub(super) stats: Option<&'a TraceStats>,
    /// The command and its arguments.
    pub(super) command: Vec<String>,
    /// Its exit status, or `null` if a signal killed it.
    pub(super) exit_status: Option<i32>,
    /// The signal that killed it, or `null`.
    pub(super) signal: Option<i32>,
}

fn channel_config(args: &RecordArgs) -> ChannelConfig {
    let opts = &args.channel;
    let mut channel = ChannelConfig::new(DEFAULT_CHANNEL, Domain::User);
    if let Some(size) = opts.subbuf_size {
        channel.subbuf_size = size;
    }
    if let Some(n) = opts.num_subbuf {
        channel.num_subbuf = n;
    }
    if opts.overwrite {
        channel.mode = BufferMode::Overwrite;
    }
    if opts.buffers_pid {
        channel.buffers = BufferOwnership::PerPid;
    }
    if let Some(ms) = opts.switch_timer {
        channel.switch_timer_ms = ms;
    }
    channel
}

fn rules(args: &RecordArgs) -> Vec<EventRule> {
    let loglevel = match (args.loglevel, args.loglevel_only) {
        (Some(l), _) => Some(LogLevelFilter::AtLeast(l)),
        (None, Some(l)) => Some(LogLevelFilter::Exactly(l)),
        (None, None) => None,
    };
    let mut patterns: Vec<String> = Vec::new();
    for p in &args.events {
        if !patterns.contains(p) {
            patterns.push(p.clone());
        }
    }
    if patterns.is_empty() {
        patterns.push("*".to_owned());
    }
    patterns
        .into_iter()
        .map(|pattern| EventRule { pattern, loglevel })
        .collect()
}

/// The kernel rules of `-k EVENT` options, each once.
fn kernel_rules(args: &RecordArgs) -> Vec<EventRule> {
    let mut rules: Vec<EventRule> = Vec::new();
    for pattern in &args.kernel_events {
        if !rules.iter().any(|r| &r.pattern == pattern) {
            rules.push(EventRule {
                pattern: pattern.clone(),
                loglevel: None,
            });
        }
    }
    rules
}

fn program_name(command: &[OsString]) -> String {
    command
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The error for a command that could not be started.
fn spawn_error(program: String, failure: SpawnFailure) -> AppError {
    match failure {
        SpawnFailure::Errno(Errno::ENOENT) => AppError::CommandNotFound { program },
        SpawnFailure::Errno(e) => AppError::CommandFailed {
            program,
            source: io::Error::from(e),
        },
        SpawnFailure::Nul => AppError::CommandFailed {
            program,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "an argument or environment variable holds a NUL byte",
            ),
        },
    }
}

/// The session this run created, and what to put back when it is gone.
struct Recording {
    name: String,
    /// The user's current session before ours took its place.
    previous_current: Option<String>,
}

impl Recording {
    /// Makes the user's previous session current again if ours still was when destroyed.
    fn restore_current(&self, client: &Client, destroyed: &[SessionInfo]) {
        let ours_was_current = destroyed.iter().any(|s| s.name == self.name && s.current);
        if let (true, Some(previous)) = (ours_was_current, &self.previous_current) {
            // Best effort: the previous session may have been destroyed meanwhile.
            let _ = client.set_current(previous);
        }
    }

    /// Destroys the session after a failure, returning the failure (with the cleanup's
    /// own failure, if any, appended).
    fn abandon(&self, client: &Client, err: AppError) -> AppError {
        match client.destroy_session(SessionTarget::Named(self.name.clone())) {
            Ok(destroyed) => {
                self.restore_current(client, &destroyed);
                err
            }
            Err(e) => AppError::LeftBehind {
                error: Box::new(err),
                session: self.name.clone(),
                cleanup: super::error_line(&friendly(e)),
            },
        }
    }

    /// Creates, configures and starts the session.
    fn set_up(client: &Client, args: &RecordArgs) -> Result<Self, AppError> {
        let output = output_location(args.output.as_deref())?;
        let previous_current = client.status().map_err(friendly)?.current_session;
        let info = client
            .create_session(CreateSession {
                name: args.name.clone(),
                output,
            })
            .map_err(friendly)?;
        let this = Self {
            name: info.name,
            previous_current,
        };
        let configured = (|| {
            let session = Some(this.name.as_str());
            if args.channel.any() {
                client.enable_channel(session, channel_config(args))?;
            }
            client.enable_event(session, None, Domain::User, rules(args))?;
            let kernel = kernel_rules(args);
            if !kernel.is_empty() {
                client.enable_event(session, None, Domain::Kernel, kernel)?;
            }
            client.start_session(session)
        })();
        match configured {
            Ok(_) => Ok(this),
            Err(e) => Err(this.abandon(client, friendly(e))),
        }
    }
}

/// Stops and destroys the session once the command has ended; returns the session as it
/// was just before it went, and a warning if only the stop failed (the destroy, which
/// stops a session itself, completed the trace then).
fn finish(
    opts: &ConnectOptions,
    rec: &Recording,
    ending: Ending,
    program: &str,
) -> Result<(SessionInfo, Option<String>), AppError> {
    let failed = |step: &'static str, source: AppError| AppError::Finish {
        step,
        session: rec.name.clone(),
        ending: format!("{program} {}", ending.describe()),
        source: Box::new(source),
    };
    let client = Client::connect(opts).map_err(|e| failed("stop", e.into()))?;
    let stopped = client.stop_session(Some(&rec.name));
    let destroyed = client
        .destroy_session(SessionTarget::Named(rec.name.clone()))
        .map_err(|e| failed("destroy", friendly(e)))?;
    rec.restore_current(&client, &destroyed);
    let found = destroyed.into_iter().find(|s| s.name == rec.name);
    let (mut info, stop_stats, warning) = match (found, stopped) {
        (Some(info), Ok(stopped)) => (info, stopped.stats, None),
        (None, Ok(stopped)) => (stopped, None, None),
        // Someone stopped it already (`drtrace stop` while the command ran).
        (Some(info), Err(ClientError::Daemon(w))) if w.code == ErrorCode::InvalidState => {
            (info, None, None)
        }
        (Some(info), Err(e)) => {
            let warning = format!(
                "stopping session {} failed ({}); destroying it completed the trace",
                rec.name,
                super::error_line(&friendly(e))
            );
            (info, None, Some(warning))
        }
        (None, Err(e)) => return Err(failed("stop", friendly(e))),
    };
    // The destroy's counts are final; the stop's stand in if the daemon sent none.
    if info.stats.is_none() {
        info.stats = stop_stats;
    }
    Ok((info, warning))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The summary lines for people (on stderr: stdout belongs to the command).
fn summary_lines(info: &SessionInfo, program: &str, ending: Ending) -> Vec<String> {
    let trace = info.output.display();
    let ended = format!("{program} {}", ending.describe());
    let Some(stats) = &info.stats else {
        return vec![format!(
            "drtrace: trace in {trace} (the daemon reported no event counts); {ended}"
        )];
    };
    let mut lines = vec![format!(
        "drtrace: {} recorded, {} discarded, trace in {trace}; {ended}",
        plural(stats.events_recorded, "event", "events"),
        stats.events_discarded
    )];
    lines.extend(
        stats
            .errors
            .iter()
            .map(|e| format!("drtrace: warning: {}", e.replace(['\n', '\r'], " "))),
    );
    lines
}

/// Runs `drtrace record`.
pub(super) fn run(
    args: &RecordArgs,
    target: Target,
    json: bool,
    out: &mut dyn Write,
) -> Result<Outcome, AppError> {
    let program = program_name(&args.command);
    // Reaching (or starting) the daemon comes first, so that a daemon started here does not
    // inherit the mask below (std's `Command` keeps blocked signals blocked). A signal until
    // then ends drtrace the usual way, with no session to clean up. The guard comes before
    // any session exists and before any thread of ours but `connect`'s helpers, which have
    // reaped the daemon's first process by the time it returns (see the child module).
    let client = if args.kernel_events.is_empty() {
        target.connect()?
    } else {
        target.connect_for_kernel()?
    };
    let guard = SignalGuard::block().map_err(AppError::Signals)?;
    let rec = Recording::set_up(&client, args)?;
    match guard.terminating_received() {
        Ok(None) => {}
        Ok(Some(signal)) => return Err(rec.abandon(&client, AppError::Interrupted { signal })),
        Err(e) => return Err(rec.abandon(&client, AppError::Signals(e))),
    }
    // Anything this process buffered must not come after the command's output.
    out.flush().map_err(AppError::Output)?;
    let child = match guard.spawn(&args.command) {
        Ok(pid) => pid,
        Err(e) => return Err(rec.abandon(&client, spawn_error(program, e))),
    };
    let opts = client.options().clone();
    // The daemon would close this connection once it idled for a minute; `finish` opens
    // a fresh one.
    drop(client);
    let ending = match guard.wait(child) {
        Ok(ending) => ending,
        Err(source) => {
            let err = AppError::Wait { program, source };
            return Err(match Client::connect(&opts) {
                Ok(client) => rec.abandon(&client, err),
                Err(e) => AppError::LeftBehind {
                    error: Box::new(err),
                    session: rec.name.clone(),
                    cleanup: super::error_line(&e),
                },
            });
        }
    };
    let (info, warning) = finish(&opts, &rec, ending, &program)?;
    drop(guard);
    if let Some(warning) = warning {
        // Nothing better to do if stderr is gone.
        let _ = writeln!(io::stderr(), "drtrace: warning: {warning}");
    }
    if json {
        let mut p = Printer::new(out, true, target.kind());
        p.record(&RecordDoc {
            session: &info,
            stats: info.stats.as_ref(),
            command: args
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            exit_status: match ending {
                Ending::Exited(code) => Some(code),
                Ending::Killed(_) => None,
            },
            signal: match ending {
                Ending::Killed(sig) => Some(sig),
                Ending::Exited(_) => None,
            },
        })?;
        p.finish()?;
    } else {
        let mut err = io::stderr().lock();
        for line in summary_lines(&info, &program, ending) {
            // Nothing better to do if stderr is gone.
            let _ = writeln!(err, "{line}");
        }
    }
    Ok(Outcome::Exited(ending.exit_status()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as CliCommand};
    use clap::Parser;

    fn parse(args: &[&str]) -> RecordArgs {
        let mut argv = vec!["drtrace", "record"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            CliCommand::Record(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_event_is_the_default_and_patterns_are_not_repeated() {
        let r = rules(&parse(&["--", "true"]));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].pattern, "*");
        assert_eq!(r[0].loglevel, None);
        let r = rules(&parse(&[
            "-e",
            "a:*",
            "--event",
            "b:c",
            "-e",
            "a:*",
            "--loglevel-only",
            "debug",
            "--",
            "true",
        ]));
        let patterns: Vec<&str> = r.iter().map(|r| r.pattern.as_str()).collect();
        assert_eq!(patterns, ["a:*", "b:c"]);
        assert!(r.iter().all(|r| r.loglevel
            == Some(LogLevelFilter::Exactly(
                drtrace_proto::event::LogLevel::Debug
            ))));
    }

    #[test]
    fn kernel_events_are_added_once_and_only_when_asked_for() {
        assert!(kernel_rules(&parse(&["--", "true"])).is_empty());
        let args = parse(&[
            "-k",
            "sched_switch",
            "--kernel-event",
            "sched:*",
            "-k",
            "sched_switch",
            "--",
            "true",
        ]);
        let patterns: Vec<String> = kernel_rules(&args).into_iter().map(|r| r.pattern).collect();
        assert_eq!(patterns, ["sched_switch", "sched:*"]);
        // The userspace default stays: -k adds kernel events to every userspace event.
        assert_eq!(rules(&args)[0].pattern, "*");
    }

    #[test]
    fn channel_options_build_the_default_channel() {
        let args = parse(&["--", "true"]);
        assert!(!args.channel.any());
        let args = parse(&[
            "--subbuf-size",
            "64k",
            "--num-subbuf",
            "8",
            "--overwrite",
            "--buffers-pid",
            "--switch-timer",
            "100",
            "--",
            "true",
        ]);
        assert!(args.channel.any());
        let c = channel_config(&args);
        assert_eq!(c.name, DEFAULT_CHANNEL);
        assert_eq!(c.subbuf_size, 65536);
        assert_eq!(c.num_subbuf, 8);
        assert_eq!(c.mode, BufferMode::Overwrite);
        assert_eq!(c.buffers, BufferOwnership::PerPid);
        assert_eq!(c.switch_timer_ms, 100);
    }

    #[test]
    fn the_command_keeps_its_own_options() {
        let args = parse(&["--name", "n", "--", "prog", "--name", "-e", "x"]);
        assert_eq!(args.name.as_deref(), Some("n"));
        assert_eq!(args.command, ["prog", "--name", "-e", "x"]);
        let args = parse(&["-e", "a:b", "prog", "-x", "--json"]);
        assert_eq!(args.command, ["prog", "-x", "--json"]);
        assert_eq!(args.events, ["a:b"]);
    }

    #[test]
    fn a_missing_command_or_bad_pattern_is_a_usage_error() {
        assert!(Cli::try_parse_from(["drtrace", "record"]).is_err());
        assert!(Cli::try_parse_from(["drtrace", "record", "--"]).is_err());
        assert!(Cli::try_parse_from(["drtrace", "record", "-e", "a$", "--", "x"]).is_err());
        assert!(
            Cli::try_parse_from([
                "drtrace",
                "record",
                "--loglevel",
                "info",
                "--loglevel-only",
                "info",
                "--",
                "x"
            ])
            .is_err()
        );
    }

    #[test]
    fn summaries_name_counts_trace_and_ending() {
        let info = SessionInfo {
            name: "s".into(),
            uuid: uuid::Uuid::nil(),
            output: "/t/s".into(),
            state: drtrace_proto::control::SessionState::Inactive,
            current: false,
            created_unix_ms: 0,
            channels: vec![],
            stats: Some(TraceStats {
                events_recorded: 1000,
                events_discarded: 2,
                bytes_written: 1,
                streams: 1,
                errors: vec!["/t/s/x: disk full\nreally".into()],
            }),
        };
        let lines = summary_lines(&info, "app", Ending::Exited(0));
        assert_eq!(
            lines,
            [
                "drtrace: 1000 events recorded, 2 discarded, trace in /t/s; app exited with status 0",
                "drtrace: warning: /t/s/x: disk full really",
            ]
        );
        let none = SessionInfo {
            stats: None,
            ..info
        };
        let lines = summary_lines(&none, "app", Ending::Killed(15));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].ends_with("app was killed by signal 15 (SIGTERM)"),
            "{lines:?}"
        );
    }

    #[test]
    fn unknown_commands_are_not_found() {
        let e = spawn_error("nosuch".into(), SpawnFailure::Errno(Errno::ENOENT));
        assert_eq!(e.to_string(), "cannot run nosuch: command not found");
        assert_eq!(e.exit_code(), std::process::ExitCode::from(EXIT_NOT_FOUND));
        let e = spawn_error("./x".into(), SpawnFailure::Errno(Errno::EACCES));
        assert_eq!(
            e.to_string(),
            "cannot run ./x: Permission denied (os error 13)"
        );
        assert_eq!(e.exit_code(), std::process::ExitCode::from(EXIT_CANNOT_RUN));
    }
}
