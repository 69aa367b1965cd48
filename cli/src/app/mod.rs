//! The `drtrace` commands: each turns its arguments into one or two control requests and
//! prints the result, for people or (with `--json`) as one `{"type", "data"}` document.
//!
//! Requests go to the user's session daemon, or with `--system` to the root broker
//! ([`Target`]). Whatever needs the broker (`--system`, a kernel request) starts it first when
//! the user is root and none runs; anyone else is told how to have it started.
//!
//! Errors become one line, `error: <message>`, and an exit status ([`AppError::exit_code`]):
//! 1 for failures, 2 for usage errors. `daemon status` exits 3 when no daemon runs, and
//! `record` exits with its command's status ([`Outcome::Exited`]), 126 or 127 when the
//! command cannot be run.

mod child;
mod output;
mod record;
mod view;

use std::error::Error;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use drtrace_ctf::reader::ReadError;
use drtrace_proto::ErrorCode;
use drtrace_proto::control::{
    BufferMode, BufferOwnership, ChannelConfig, CreateSession, DEFAULT_CHANNEL, Domain, EventRule,
    LogLevelFilter, OutputLocation, SessionTarget,
};
use drtrace_proto::paths::{UserInfo, trace_home};
use nix::sys::signal::Signal;
use thiserror::Error;

use crate::cli::{Cli, Command, DaemonCommand, DomainArgs};
use crate::client::{Client, ClientError, ConnectOptions, DaemonKind};
use output::Printer;

/// Exit status of a usage error (the same as clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit status of `daemon status` when no daemon runs.
pub const EXIT_NOT_RUNNING: u8 = 3;
pub use record::{EXIT_CANNOT_RUN, EXIT_NOT_FOUND};

/// Why a command failed.
#[derive(Debug, Error)]
pub enum AppError {
    /// A control operation failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon refused a request; the message is the daemon's, made actionable.
    #[error("{0}")]
    Daemon(String),
    /// The arguments are not usable.
    #[error("{0}")]
    Usage(String),
    /// The current directory is needed to make a path absolute.
    #[error("cannot determine the current directory: {0}")]
    CurrentDir(#[source] io::Error),
    /// Printing the result failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
    /// `record` could not block the signals it must survive.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] nix::Error),
    /// `record`'s command was not found.
    #[error("cannot run {program}: command not found")]
    CommandNotFound {
        /// The command as given.
        program: String,
    },
    /// `record`'s command was found but could not be started.
    #[error("cannot run {program}: {source}")]
    CommandFailed {
        /// The command as given.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Waiting for `record`'s command failed.
    #[error("cannot wait for {program}: {source}")]
    Wait {
        /// The command as given.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A terminating signal reached `record` before its command started.
    #[error("interrupted by {signal} before the command started")]
    Interrupted {
        /// The signal.
        signal: Signal,
    },
    /// Stopping or destroying `record`'s session failed after its command ended.
    #[error("cannot {step} session {session} after {ending}")]
    Finish {
        /// `stop` or `destroy`.
        step: &'static str,
        /// The session.
        session: String,
        /// How the command ended (`myapp exited with status 0`).
        ending: String,
        /// Why.
        #[source]
        source: Box<AppError>,
    },
    /// A failure after which the session made for it could not be destroyed.
    #[error("{}; session {session} could not be destroyed: {cleanup}", error_line(.error.as_ref()))]
    LeftBehind {
        /// The failure.
        error: Box<AppError>,
        /// The session left behind.
        session: String,
        /// Why it could not be destroyed.
        cleanup: String,
    },
    /// A trace could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// `view` found nothing to read.
    #[error("{0}")]
    View(String),
}

impl AppError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AppError::Usage(_) => ExitCode::from(EXIT_USAGE),
            AppError::CommandNotFound { .. } => ExitCode::from(EXIT_NOT_FOUND),
            AppError::CommandFailed { .. } => ExitCode::from(EXIT_CANNOT_RUN),
            AppError::Interrupted { signal } => {
                ExitCode::from(u8::try_from(128 + *signal as i32).unwrap_or(1))
            }
            AppError::LeftBehind { error, .. } => error.exit_code(),
            _ => ExitCode::FAILURE,
        }
    }

    /// True if the output went to a closed pipe (`drtrace list | head -1`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, AppError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what was asked.
    Success,
    /// `daemon status` found no daemon.
    DaemonNotRunning,
    /// `record`'s command ended: its exit status, or 128 + the signal that killed it.
    Exited(u8),
}

impl Outcome {
    /// The exit status.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::DaemonNotRunning => ExitCode::from(EXIT_NOT_RUNNING),
            Outcome::Exited(status) => ExitCode::from(status),
        }
    }
}

/// One line for an error and its causes, `outer: inner: innermost`, leaving out a cause
/// whose text its parent already shows.
pub fn error_line(err: &dyn Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace(['\n', '\r'], " ")
}

/// Prints a clap outcome: help and version on stdout (status 0), a usage error as one line
/// on stderr (status 2). Returns the exit status.
pub fn report_clap_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // A closed stdout is not worth failing `--help` over.
            let _ = write!(io::stdout(), "{}", err.render());
            ExitCode::SUCCESS
        }
        _ => {
            let _ = writeln!(io::stderr(), "error: {}", clap_one_line(err));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// clap's message as one line: its first paragraph (the error, with any list of missing
/// arguments), without the usage and tips, which `--help` shows in full.
fn clap_one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let command = usage_command(&rendered);
    if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return format!("'{command}' needs a command; see '{command} --help'");
    }
    let first = rendered.split("\n\n").next().unwrap_or_default();
    let joined = first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message = joined.strip_prefix("error: ").unwrap_or(&joined);
    format!("{message}; see '{command} --help'")
}

/// The command path (`drtrace enable-event`) from the usage line of a rendered clap error.
fn usage_command(rendered: &str) -> String {
    let words: Vec<&str> = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .unwrap_or("drtrace")
        .split_whitespace()
        .take_while(|w| !w.starts_with(['[', '<', '-']))
        .collect();
    if words.is_empty() {
        "drtrace".to_owned()
    } else {
        words.join(" ")
    }
}

/// Makes `path` absolute against the current directory, dropping `.` components.
fn absolute(path: &Path) -> Result<PathBuf, AppError> {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(AppError::CurrentDir)?
            .join(path)
    };
    Ok(joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect())
}

fn domain(args: &DomainArgs) -> Result<Domain, AppError> {
    match (args.userspace, args.kernel) {
        (true, false) => Ok(Domain::User),
        (false, true) => Ok(Domain::Kernel),
        _ => Err(AppError::Usage(
            "choose one tracer domain: -u (userspace applications) or -k (the kernel)".to_owned(),
        )),
    }
}

/// The word for a domain in messages.
fn domain_word(domain: Domain) -> &'static str {
    match domain {
        Domain::User => "userspace",
        Domain::Kernel => "kernel",
    }
}

/// Refuses a userspace-only option on a kernel request.
fn user_only(domain: Domain, given: bool, option: &str) -> Result<(), AppError> {
    if domain == Domain::Kernel && given {
        return Err(AppError::Usage(format!(
            "{option} applies to userspace channels and events only, not to -k"
        )));
    }
    Ok(())
}

/// Turns a daemon's refusal into a message a user can act on.
fn friendly(err: ClientError) -> AppError {
    let ClientError::Daemon(wire) = err else {
        return AppError::Client(err);
    };
    let msg = wire.message;
    AppError::Daemon(match wire.code {
        ErrorCode::NoCurrentSession if !msg.contains("drtrace create") => format!(
            "{msg}; create one with 'drtrace create' or choose one with 'drtrace set-session NAME'"
        ),
        ErrorCode::VersionMismatch => format!(
            "{msg}; the daemon comes from another drtrace release: restart it with 'drtrace daemon stop'"
        ),
        // The broker's refusals (relayed by the user's daemon for kernel requests) already
        // say who may not do what, and what would grant it.
        ErrorCode::PermissionDenied if msg.contains(" may not ") => msg,
        ErrorCode::PermissionDenied => format!("the daemon refused the request: {msg}"),
        ErrorCode::Internal => format!("{msg} (an internal daemon error; its log has details)"),
        _ => msg,
    })
}

/// Where a new session's trace goes: `dir` (made absolute), else under the trace home.
fn output_location(dir: Option<&Path>) -> Result<OutputLocation, AppError> {
    Ok(match dir {
        Some(dir) => OutputLocation::Dir(absolute(dir)?),
        None => {
            let user = UserInfo::current().map_err(ClientError::User)?;
            OutputLocation::Under(absolute(&trace_home(&user))?)
        }
    })
}

/// Which daemon the commands talk to: the user's session daemon, or (`--system`) the root
/// broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// True for the broker.
    pub system: bool,
}

impl Target {
    /// The daemon's kind.
    pub fn kind(self) -> DaemonKind {
        if self.system {
            DaemonKind::Broker
        } else {
            DaemonKind::Sessiond
        }
    }

    /// Where the daemon is and who it must be.
    pub fn options(self) -> Result<ConnectOptions, AppError> {
        Ok(if self.system {
            ConnectOptions::for_broker()
        } else {
            ConnectOptions::from_env()?
        })
    }

    /// Connects, starting the daemon if none runs (the broker only for root).
    pub fn connect(self) -> Result<Client, AppError> {
        Ok(Client::connect_or_spawn(&self.options()?)?)
    }

    /// Connects for a request that needs the kernel: the user's own daemon delegates it to
    /// the broker, so root's command starts the broker first if none runs. (For anyone else
    /// the daemon's answer says how to have it started.)
    pub fn connect_for_kernel(self) -> Result<Client, AppError> {
        if !self.system && nix::unistd::geteuid().is_root() {
            drop(Client::connect_or_spawn(&ConnectOptions::for_broker())?);
        }
        self.connect()
    }

    /// Connects, through [`Target::connect_for_kernel`] if `kernel`.
    fn connect_domain(self, domain: Domain) -> Result<Client, AppError> {
        match domain {
            Domain::Kernel => self.connect_for_kernel(),
            Domain::User => self.connect(),
        }
    }
}

/// Runs one parsed command, printing its result to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<Outcome, AppError> {
    let target = Target { system: cli.system };
    let connect = || target.connect();
    let mut p = Printer::new(out, cli.json, target.kind());
    match &cli.command {
        Command::Create(args) => {
            let output = output_location(args.output.as_deref())?;
            let client = connect()?;
            let info = client
                .create_session(CreateSession {
                    name: args.name.clone(),
                    output,
                })
                .map_err(friendly)?;
            p.created(&info)?;
        }
        Command::Destroy(args) => {
            let which = if args.all {
                SessionTarget::All
            } else {
                args.name
                    .clone()
                    .map_or(SessionTarget::Current, SessionTarget::Named)
            };
            let list = connect()?.destroy_session(which).map_err(friendly)?;
            p.destroyed(&list)?;
            for info in &list {
                p.trace_warnings(info)?;
            }
        }
        Command::List(args) if args.kernel => {
            let events = target
                .connect_for_kernel()?
                .list_kernel_events()
                .map_err(friendly)?;
            p.kernel_events(&events)?;
        }
        Command::List(args) if args.userspace => {
            let mut apps = connect()?.list_apps().map_err(friendly)?;
            apps.sort_by_key(|a| a.pid);
            p.apps(&apps)?;
        }
        Command::List(args) => {
            let client = connect()?;
            match &args.name {
                Some(name) => {
                    p.session_details(&client.show_session(Some(name)).map_err(friendly)?)?
                }
                None => p.sessions(&client.list_sessions().map_err(friendly)?)?,
            }
        }
        Command::Status => {
            let status = connect()?.status().map_err(friendly)?;
            p.status(&status)?;
        }
        Command::SetSession(args) => {
            let info = connect()?.set_current(&args.name).map_err(friendly)?;
            p.session_changed(&info, &format!("Session set to {}.", info.name))?;
        }
        Command::Start(args) => {
            let info = connect()?
                .start_session(args.name.as_deref())
                .map_err(friendly)?;
            p.session_changed(
                &info,
                &format!("Tracing started for session {}.", info.name),
            )?;
        }
        Command::Stop(args) => {
            let info = connect()?
                .stop_session(args.name.as_deref())
                .map_err(friendly)?;
            p.session_changed(
                &info,
                &format!("Tracing stopped for session {}.", info.name),
            )?;
            p.trace_warnings(&info)?;
        }
        Command::EnableChannel(args) => {
            let domain = domain(&args.domain)?;
            user_only(domain, args.buffers_pid, "--buffers-pid")?;
            user_only(domain, args.buffers_uid, "--buffers-uid")?;
            user_only(domain, args.switch_timer.is_some(), "--switch-timer")?;
            let mut channel = ChannelConfig::new(args.name.clone(), domain);
            if let Some(size) = args.subbuf_size {
                channel.subbuf_size = size;
            }
            if let Some(n) = args.num_subbuf {
                channel.num_subbuf = n;
            }
            if args.overwrite {
                channel.mode = BufferMode::Overwrite;
            }
            if args.buffers_pid {
                channel.buffers = BufferOwnership::PerPid;
            }
            if let Some(ms) = args.switch_timer {
                channel.switch_timer_ms = ms;
            }
            let info = target
                .connect_domain(domain)?
                .enable_channel(args.session.session.as_deref(), channel)
                .map_err(friendly)?;
            let msg = format!(
                "Channel {} enabled in session {} ({}).",
                args.name,
                info.name,
                domain_word(domain)
            );
            p.session_changed(&info, &msg)?;
        }
        Command::DisableChannel(args) => {
            let domain = domain(&args.domain)?;
            let info = target
                .connect_domain(domain)?
                .disable_channel(args.session.session.as_deref(), domain, &args.name)
                .map_err(friendly)?;
            let msg = format!(
                "Channel {} disabled in session {} ({}).",
                args.name,
                info.name,
                domain_word(domain)
            );
            p.session_changed(&info, &msg)?;
        }
        Command::EnableEvent(args) => {
            let domain = domain(&args.domain)?;
            user_only(domain, args.loglevel.is_some(), "--loglevel")?;
            user_only(domain, args.loglevel_only.is_some(), "--loglevel-only")?;
            let loglevel = match (args.loglevel, args.loglevel_only) {
                (Some(l), _) => Some(LogLevelFilter::AtLeast(l)),
                (None, Some(l)) => Some(LogLevelFilter::Exactly(l)),
                (None, None) => None,
            };
            let mut patterns = args.names.clone();
            if args.all && !patterns.iter().any(|p| p == "*") {
                patterns.push("*".to_owned());
            }
            let rules = patterns
                .iter()
                .map(|pattern| EventRule {
                    pattern: pattern.clone(),
                    loglevel,
                })
                .collect();
            let channel = args.channel.as_deref();
            let info = target
                .connect_domain(domain)?
                .enable_event(args.session.session.as_deref(), channel, domain, rules)
                .map_err(friendly)?;
            let msg = events_message("enabled", &patterns, channel, &info.name, domain);
            p.session_changed(&info, &msg)?;
        }
        Command::DisableEvent(args) => {
            let domain = domain(&args.domain)?;
            let client = target.connect_domain(domain)?;
            let session = args.session.session.as_deref();
            let channel = args.channel.as_deref();
            let mut patterns = args.names.clone();
            if args.all {
                // The protocol disables rules by pattern: -a names every enabled rule of the
                // channel as the daemon reports it.
                let info = client.show_session(session).map_err(friendly)?;
                let wanted = channel.unwrap_or(DEFAULT_CHANNEL);
                let chan = info
                    .channels
                    .iter()
                    .find(|c| c.config.name == wanted && c.config.domain == domain)
                    .ok_or_else(|| {
                        AppError::Daemon(format!(
                            "session {} has no {} channel named {wanted}",
                            info.name,
                            domain_word(domain)
                        ))
                    })?;
                for rule in chan.events.iter().filter(|e| e.enabled) {
                    if !patterns.contains(&rule.rule.pattern) {
                        patterns.push(rule.rule.pattern.clone());
                    }
                }
                if patterns.is_empty() {
                    let msg = format!(
                        "No enabled event rule in channel {wanted} of session {}.",
                        info.name
                    );
                    p.session_changed(&info, &msg)?;
                    p.finish()?;
                    return Ok(Outcome::Success);
                }
            }
            let info = client
                .disable_event(session, channel, domain, patterns.clone())
                .map_err(friendly)?;
            let msg = events_message("disabled", &patterns, channel, &info.name, domain);
            p.session_changed(&info, &msg)?;
        }
        Command::Record(args) => return record::run(args, target, cli.json, p.into_inner()),
        Command::View(args) => return view::run(args, target, cli.json, p.into_inner()),
        Command::Daemon(DaemonCommand::Status) => {
            let opts = target.options()?;
            match Client::connect(&opts) {
                Err(e) if e.is_no_daemon() => {
                    p.daemon_not_running(&opts.socket)?;
                    return Ok(Outcome::DaemonNotRunning);
                }
                Err(e) => return Err(e.into()),
                Ok(client) => p.daemon_status(&client.status().map_err(friendly)?)?,
            }
        }
        Command::Daemon(DaemonCommand::Stop) => {
            let opts = target.options()?;
            match Client::connect(&opts) {
                Err(e) if e.is_no_daemon() => p.daemon_stopped(None, &opts.socket)?,
                Err(e) => return Err(e.into()),
                Ok(client) => {
                    let info = client.stop_daemon().map_err(friendly)?;
                    p.daemon_stopped(Some(&info), &opts.socket)?;
                }
            }
        }
    }
    p.finish()?;
    Ok(Outcome::Success)
}

fn events_message(
    verb: &str,
    patterns: &[String],
    channel: Option<&str>,
    session: &str,
    domain: Domain,
) -> String {
    let list = patterns
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let rules = if patterns.len() == 1 { "rule" } else { "rules" };
    format!(
        "Event {rules} {list} {verb} in channel {} of session {session} ({}).",
        channel.unwrap_or(DEFAULT_CHANNEL),
        domain_word(domain)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] io::Error);

    #[derive(Debug, Error)]
    #[error("outer")]
    struct Chains(#[source] io::Error);

    #[test]
    fn error_lines_join_causes_once() {
        let e = Repeats(io::Error::other("inner"));
        assert_eq!(error_line(&e), "outer: inner");
        let e = Chains(io::Error::other("inner\nmore"));
        assert_eq!(error_line(&e), "outer: inner more");
    }

    #[test]
    fn clap_errors_fit_on_one_line() {
        use clap::Parser;
        for args in [
            &["drtrace", "--bogus"][..],
            &["drtrace", "enable-event", "-u"],
            &["drtrace"],
            &[
                "drtrace",
                "enable-channel",
                "-u",
                "--subbuf-size",
                "12x",
                "c",
            ],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            let line = clap_one_line(&err);
            assert!(!line.contains('\n'), "{line}");
            assert!(!line.starts_with("error"), "{line}");
            assert!(line.len() > 30, "{line}");
            assert!(line.contains("--help"), "{line}");
        }
        let err = Cli::try_parse_from(["drtrace", "enable-event", "-u"]).unwrap_err();
        assert!(clap_one_line(&err).ends_with("see 'drtrace enable-event --help'"));
        let err = Cli::try_parse_from(["drtrace", "daemon"]).unwrap_err();
        assert_eq!(
            clap_one_line(&err),
            "'drtrace daemon' needs a command; see 'drtrace daemon --help'"
        );
    }

    #[test]
    fn paths_become_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute(Path::new("./a/./b")).unwrap(), cwd.join("a/b"));
        assert_eq!(
            absolute(Path::new("/x/./y")).unwrap(),
            PathBuf::from("/x/y")
        );
    }

    #[test]
    fn exactly_one_domain_is_required() {
        let args = |userspace, kernel| DomainArgs { userspace, kernel };
        assert!(matches!(
            domain(&args(false, false)),
            Err(AppError::Usage(_))
        ));
        assert!(matches!(domain(&args(true, true)), Err(AppError::Usage(_))));
        assert_eq!(domain(&args(true, false)).unwrap(), Domain::User);
        assert_eq!(domain(&args(false, true)).unwrap(), Domain::Kernel);
    }

    #[test]
    fn userspace_options_are_refused_on_kernel_requests() {
        let err = user_only(Domain::Kernel, true, "--loglevel").unwrap_err();
        assert!(matches!(err, AppError::Usage(_)));
        assert!(err.to_string().contains("--loglevel"), "{err}");
        user_only(Domain::Kernel, false, "--loglevel").unwrap();
        user_only(Domain::User, true, "--loglevel").unwrap();
    }

    #[test]
    fn messages_name_the_domain() {
        let m = events_message(
            "enabled",
            &["sched_switch".to_owned()],
            None,
            "s",
            Domain::Kernel,
        );
        assert_eq!(
            m,
            "Event rule 'sched_switch' enabled in channel channel0 of session s (kernel)."
        );
    }
}
