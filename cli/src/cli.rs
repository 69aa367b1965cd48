//! The `drtrace` command line: argument definitions (clap derive) and their help texts.
//!
//! Parsing only checks shapes (a size is a size, a log level is a level); what the
//! arguments mean is decided in [`crate::app`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use drtrace_proto::event::LogLevel;
use drtrace_proto::names::check_event_pattern;

use crate::size::parse_size;

const ABOUT: &str = "Control drtrace tracing sessions";

const LONG_ABOUT: &str = "\
Control drtrace tracing sessions.

Sessions live in your own session daemon, drtrace-sessiond, which any command that needs it
starts when it is not running. The last session created (or chosen with set-session) is the
current session: commands that take an optional session name act on it.

A typical run:
  drtrace create demo
  drtrace enable-event -u 'myapp:*'
  drtrace start
  ./myapp
  drtrace stop
  drtrace destroy

Or, all of it around one command:
  drtrace record -- ./myapp
  drtrace view ~/drtrace-traces/NAME

Kernel events (-k) and system-wide sessions (--system, recording the applications of every
user) go through the root broker, drtrace-broker: they are allowed to root and to members of
the group `tracing`. A session of your own can hold kernel events beside your applications':
  drtrace create demo
  drtrace enable-event -k sched_switch
  drtrace enable-event -u -a
  drtrace start
With --system every command talks to the broker instead of your daemon:
  drtrace --system create everyone
  drtrace --system enable-event -u -a
  drtrace --system start

Environment:
  DRTRACE_SESSIOND_SOCKET  the daemon's socket (default /tmp/ltt-sessiond-$USER)
  DRTRACE_HOME             where traces go (default ~/drtrace-traces)
  DRTRACE_SESSIOND_PATH    the drtrace-sessiond binary to start (default: beside drtrace,
                           then on PATH)
  DRTRACE_BROKER_DIR       the broker's directory (default /run/drtrace)
  DRTRACE_BROKER_PATH      the drtrace-broker binary root starts (default: beside drtrace,
                           then on PATH)

Exit status: 0 on success, 1 on failure, 2 on a usage error, 3 for `daemon status` when no
daemon runs. `record` exits with its command's status (see `drtrace record --help`).";

/// The `drtrace` command line.
#[derive(Debug, Parser)]
#[command(name = "drtrace", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Print the result as one JSON document, {"type": ..., "data": ...}, on stdout (view:
    /// one JSON object per event and line).
    #[arg(long, global = true)]
    pub json: bool,
    /// Talk to the root broker (system-wide sessions, kernel tracing) instead of your own
    /// session daemon; needs root or membership in the tracing group.
    #[arg(long, global = true)]
    pub system: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a session and make it the current one.
    #[command(
        long_about = "\
Create a tracing session and make it the current one.

Without NAME the session is named <username>.<uuid>. Traces go to DIR with --output, else to
$DRTRACE_HOME/NAME, else to ~/drtrace-traces/NAME. Nothing is ever overwritten: creation fails
if NAME is taken or if the trace directory already exists.",
        after_help = "Examples:\n  drtrace create\n  drtrace create demo\n  drtrace create demo --output /var/tmp/demo-trace"
    )]
    Create(CreateArgs),
    /// Destroy a session (the current one by default) once its trace is complete.
    #[command(
        after_help = "Examples:\n  drtrace destroy\n  drtrace destroy demo\n  drtrace destroy --all"
    )]
    Destroy(DestroyArgs),
    /// List sessions, show one session, or list traceable applications (-u) or kernel events (-k).
    #[command(
        long_about = "\
List sessions (`*` marks the current one), show one session's channels and event rules, or,
with -u, list the applications registered with the daemon right now: their pid, uid and
process name, and every event they declare with its level and fields. With -k, list the
kernel events available for tracing, as sys:event (needs root or the tracing group).",
        after_help = "Examples:\n  drtrace list\n  drtrace list demo\n  drtrace list -u\n  drtrace list -k\n  drtrace --system list -u\n  drtrace --json list"
    )]
    List(ListArgs),
    /// Show the daemon and the current session.
    Status,
    /// Make a session the current one.
    #[command(after_help = "Example:\n  drtrace set-session demo")]
    SetSession(SetSessionArgs),
    /// Start recording (the current session by default).
    #[command(after_help = "Examples:\n  drtrace start\n  drtrace start demo")]
    Start(SessionNameArg),
    /// Stop recording once every buffer is flushed (the current session by default).
    #[command(after_help = "Examples:\n  drtrace stop\n  drtrace stop demo")]
    Stop(SessionNameArg),
    /// Create a channel (a set of per-CPU ring buffers), or re-enable a disabled one.
    #[command(
        long_about = "\
Create a channel, or re-enable a disabled one.

A channel is a set of per-CPU ring buffers of NUM sub-buffers of SIZE bytes each. Defaults:
--subbuf-size 1M, --num-subbuf 4, --discard, --buffers-uid, --switch-timer 0 (off). Event
rules enabled without -c go to the channel channel0, created with the defaults if absent.

A session has at most one kernel channel (-k): its per-CPU kernel buffers hold
SIZE x NUM bytes each; --buffers-pid/--buffers-uid and --switch-timer apply to userspace
channels only.",
        after_help = "Examples:\n  drtrace enable-channel -u big --subbuf-size 4M --num-subbuf 8\n  drtrace enable-channel -u flight --overwrite --buffers-pid --switch-timer 100\n  drtrace enable-channel -k kchan --subbuf-size 1M --num-subbuf 8"
    )]
    EnableChannel(EnableChannelArgs),
    /// Disable a channel: its events stop being recorded.
    #[command(
        after_help = "Examples:\n  drtrace disable-channel -u big\n  drtrace disable-channel -k channel0"
    )]
    DisableChannel(DisableChannelArgs),
    /// Record events whose names match patterns (`provider:event`, `*` wildcards).
    #[command(
        long_about = "\
Record events whose names match patterns.

A pattern is provider:event, where * matches any run of characters (`myapp:*`, `*:tick`).
Rules go to the channel given with -c, else to channel0 (created if absent). --loglevel LEVEL
records events at LEVEL or more severe; --loglevel-only LEVEL exactly at LEVEL. Levels, most
severe first: emergency alert critical error warning notice info debug (or 0-7).

Kernel events (-k) are named as in `drtrace list -k`: `sched_switch`, `sched:sched_switch`,
`sched:*`, `syscalls:sys_enter_*`, `*`. They are fixed when the session first starts, and
need root or membership in the tracing group.",
        after_help = "Examples:\n  drtrace enable-event -u 'myapp:*'\n  drtrace enable-event -u -a\n  drtrace enable-event -u 'myapp:request' --loglevel warning -c big\n  drtrace enable-event -k sched_switch 'syscalls:sys_enter_*'"
    )]
    EnableEvent(EnableEventArgs),
    /// Stop recording events matched by rules enabled earlier.
    #[command(
        long_about = "\
Disable event rules.

Each pattern must be given exactly as it was enabled. -a disables every rule of the channel
(channel0 unless -c is given).",
        after_help = "Examples:\n  drtrace disable-event -u 'myapp:*'\n  drtrace disable-event -u -a -c big\n  drtrace disable-event -k sched_switch"
    )]
    DisableEvent(DisableEventArgs),
    /// Trace one command: create a session, start it, run the command, stop, destroy.
    #[command(
        long_about = RECORD_ABOUT,
        after_help = "Examples:\n  drtrace record -- ./myapp --port 8080\n  drtrace record --name run1 -e 'myapp:*' -e 'http:request' -- ./myapp\n  drtrace record -k sched_switch -k 'sched:sched_wakeup*' -- ./myapp\n  drtrace record --loglevel warning --subbuf-size 4M -- ./myapp\n  drtrace --json record -- ./myapp > result.json"
    )]
    Record(RecordArgs),
    /// Print a trace's events as text (or JSON lines), read by drtrace's own CTF reader.
    #[command(
        long_about = VIEW_ABOUT,
        after_help = "Examples:\n  drtrace view ~/drtrace-traces/demo\n  drtrace view demo\n  drtrace view --limit 20\n  drtrace view --json demo | jq .fields"
    )]
    View(ViewArgs),
    /// Inspect or stop the session daemon, or with --system the broker (these never start one).
    #[command(subcommand)]
    Daemon(DaemonCommand),
}

const RECORD_ABOUT: &str = "\
Trace one command from start to end.

drtrace record creates a session (named NAME, else <username>.<uuid>; written to DIR, else to
$DRTRACE_HOME/NAME or ~/drtrace-traces/NAME), enables the channel options given and the
events matching each -e pattern (every event by default) and the kernel events of each -k
(none by default; root or the tracing group), starts tracing, runs COMMAND with
drtrace's environment, standard input, output and error, waits for it, then stops and
destroys the session and prints a summary on standard error:

  drtrace: 1000 events recorded, 0 discarded, trace in ~/drtrace-traces/NAME; myapp exited with status 0

With --json the summary is a {\"type\": \"record\", ...} document on standard output, after
COMMAND's own output.

While COMMAND runs, drtrace does not die of SIGINT, SIGTERM, SIGHUP or SIGQUIT: a signal
sent to drtrace by another process is passed on to COMMAND, and one from the terminal
(Ctrl-C) already reaches COMMAND, which shares drtrace's process group. Either way the
session is still stopped, destroyed and summarised once COMMAND has ended.

Exit status: COMMAND's exit status, or 128 + N if a signal N killed it; 127 if COMMAND was
not found and 126 if it could not be run (the session is destroyed, nothing is left
behind); 128 + N if signal N arrived before COMMAND started; 1 if tracing itself failed (no
daemon, a refused request); 2 on a usage error.";

const VIEW_ABOUT: &str = "\
Print the events of a trace, one line each, in time order.

TRACE is a trace directory (a session's directory, or any directory holding CTF 1.8
metadata and streams), or the name of a session of your daemon (its trace directory is
used); without TRACE, the current session's. Traces are read with drtrace's own CTF reader
and streamed: memory stays small whatever their size. Lines look like babeltrace2's, with
times in UTC:

  [14:02:11.123456789] (+0.000001024) myhost myapp:request: { cpu_id = 3 }, { id = 7 }

Events the tracer lost (buffers full) and missing packets are reported on standard error
after the events. With --json each event is one JSON object per line:
  {\"timestamp_ns\": 1700000000000000000, \"name\": \"myapp:request\", \"channel\": \"channel0\",
   \"cpu\": 3, \"fields\": {\"id\": 7}}

This command never starts the daemon. Exit status: 0, or 1 if the trace cannot be read (the
events before the problem are printed), 2 on a usage error.";

/// `drtrace daemon ...`
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show whether the daemon runs (exit status 3 if it does not).
    Status,
    /// Stop the daemon: its sessions are destroyed, their traces flushed; waits until it exited.
    Stop,
}

/// Arguments of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Session name (default: `<username>.<uuid>`).
    #[arg(help = "Session name (default: <username>.<uuid>)")]
    pub name: Option<String>,
    /// Write the trace to exactly this directory, which must not exist yet.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// Arguments of `destroy`.
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Session to destroy (default: the current one).
    #[arg(conflicts_with = "all")]
    pub name: Option<String>,
    /// Destroy every session.
    #[arg(short, long)]
    pub all: bool,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// List the registered applications and their events instead of sessions.
    #[arg(short = 'u', long = "userspace", conflicts_with = "name")]
    pub userspace: bool,
    /// List the kernel events available for tracing instead of sessions.
    #[arg(short = 'k', long = "kernel", conflicts_with_all = ["name", "userspace"])]
    pub kernel: bool,
    /// Show this session in detail.
    pub name: Option<String>,
}

/// Arguments of `set-session`.
#[derive(Debug, Args)]
pub struct SetSessionArgs {
    /// The session to make current.
    pub name: String,
}

/// An optional session name (default: the current session).
#[derive(Debug, Args)]
pub struct SessionNameArg {
    /// Session (default: the current one).
    pub name: Option<String>,
}

/// The tracer domain flags: exactly one is required.
#[derive(Debug, Args)]
pub struct DomainArgs {
    /// Userspace applications.
    #[arg(short = 'u', long = "userspace")]
    pub userspace: bool,
    /// The kernel (root or the tracing group).
    #[arg(short = 'k', long = "kernel", conflicts_with = "userspace")]
    pub kernel: bool,
}

/// The session a channel or event command applies to.
#[derive(Debug, Args)]
pub struct SessionOpt {
    /// Session (default: the current one).
    #[arg(short, long, value_name = "SESSION")]
    pub session: Option<String>,
}

/// Arguments of `enable-channel`.
#[derive(Debug, Args)]
pub struct EnableChannelArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub domain: DomainArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub session: SessionOpt,
    /// Bytes per sub-buffer, a power of two of at least 4096 (4096, 64k, 1M) [default: 1M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub subbuf_size: Option<u32>,
    /// Sub-buffers per CPU, at least 2 [default: 4].
    #[arg(long, value_name = "NUM")]
    pub num_subbuf: Option<u32>,
    /// When full, overwrite the oldest sub-buffer (flight recorder).
    #[arg(long, conflicts_with = "discard")]
    pub overwrite: bool,
    /// When full, drop new events and count them (the default).
    #[arg(long)]
    pub discard: bool,
    /// One set of buffers per process.
    #[arg(long, conflicts_with = "buffers_uid")]
    pub buffers_pid: bool,
    /// One set of buffers per user, shared by their processes (the default).
    #[arg(long)]
    pub buffers_uid: bool,
    /// Flush partly filled sub-buffers every MS milliseconds; 0 = never [default: 0].
    #[arg(long, value_name = "MS")]
    pub switch_timer: Option<u32>,
    /// Channel name.
    pub name: String,
}

/// Arguments of `disable-channel`.
#[derive(Debug, Args)]
pub struct DisableChannelArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub domain: DomainArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub session: SessionOpt,
    /// Channel name.
    pub name: String,
}

fn parse_pattern(text: &str) -> Result<String, String> {
    check_event_pattern(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_level(text: &str) -> Result<LogLevel, String> {
    text.parse()
}

/// Arguments of `enable-event`.
#[derive(Debug, Args)]
pub struct EnableEventArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub domain: DomainArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub session: SessionOpt,
    /// Channel (default: channel0, created if absent).
    #[arg(short, long, value_name = "CHANNEL")]
    pub channel: Option<String>,
    /// Record events at LEVEL or more severe.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level, conflicts_with = "loglevel_only")]
    pub loglevel: Option<LogLevel>,
    /// Record events exactly at LEVEL.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    pub loglevel_only: Option<LogLevel>,
    /// Every event (the pattern `*`).
    #[arg(short, long)]
    pub all: bool,
    /// Event name patterns (provider:event, `*` wildcards).
    #[arg(value_name = "NAME", required_unless_present = "all", value_parser = parse_pattern)]
    pub names: Vec<String>,
}

/// Channel options shared by `enable-channel` and `record`.
#[derive(Debug, Args)]
pub struct ChannelOpts {
    /// Bytes per sub-buffer, a power of two of at least 4096 (4096, 64k, 1M) [default: 1M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub subbuf_size: Option<u32>,
    /// Sub-buffers per CPU, at least 2 [default: 4].
    #[arg(long, value_name = "NUM")]
    pub num_subbuf: Option<u32>,
    /// When full, overwrite the oldest sub-buffer (flight recorder).
    #[arg(long)]
    pub overwrite: bool,
    /// One set of buffers per process.
    #[arg(long)]
    pub buffers_pid: bool,
    /// Flush partly filled sub-buffers every MS milliseconds; 0 = never [default: 0].
    #[arg(long, value_name = "MS")]
    pub switch_timer: Option<u32>,
}

impl ChannelOpts {
    /// True if any option was given.
    pub fn any(&self) -> bool {
        self.subbuf_size.is_some()
            || self.num_subbuf.is_some()
            || self.overwrite
            || self.buffers_pid
            || self.switch_timer.is_some()
    }
}

/// Arguments of `record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Session name (default: `<username>.<uuid>`).
    #[arg(
        long,
        value_name = "NAME",
        help = "Session name (default: <username>.<uuid>)"
    )]
    pub name: Option<String>,
    /// Write the trace to exactly this directory, which must not exist yet.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Record events matching PATTERN (provider:event, `*` wildcards); repeatable [default: *].
    #[arg(short, long = "event", value_name = "PATTERN", value_parser = parse_pattern)]
    pub events: Vec<String>,
    /// Also record the kernel events EVENT names (`sched_switch`, `sched:*`); repeatable.
    #[arg(short = 'k', long = "kernel-event", value_name = "EVENT", value_parser = parse_pattern)]
    pub kernel_events: Vec<String>,
    /// Record events at LEVEL or more severe.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level, conflicts_with = "loglevel_only")]
    pub loglevel: Option<LogLevel>,
    /// Record events exactly at LEVEL.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    pub loglevel_only: Option<LogLevel>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub channel: ChannelOpts,
    /// The command to trace and its arguments (after `--`).
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<OsString>,
}

/// Arguments of `view`.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// A trace directory, or a session name (default: the current session).
    #[arg(value_name = "TRACE")]
    pub target: Option<OsString>,
    /// Print at most N events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// Arguments of `disable-event`.
#[derive(Debug, Args)]
pub struct DisableEventArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub domain: DomainArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub session: SessionOpt,
    /// Channel (default: channel0).
    #[arg(short, long, value_name = "CHANNEL")]
    pub channel: Option<String>,
    /// Every rule of the channel.
    #[arg(short, long)]
    pub all: bool,
    /// Patterns of the rules to disable, exactly as they were enabled.
    #[arg(value_name = "NAME", required_unless_present = "all", value_parser = parse_pattern)]
    pub names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_levels_parse() {
        let cli = Cli::try_parse_from([
            "drtrace",
            "enable-channel",
            "-u",
            "--subbuf-size",
            "64k",
            "c",
        ])
        .unwrap();
        let Command::EnableChannel(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.subbuf_size, Some(65536));
        let cli = Cli::try_parse_from([
            "drtrace",
            "--json",
            "enable-event",
            "-u",
            "--loglevel",
            "warn",
            "a:*",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::EnableEvent(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.loglevel, Some(LogLevel::Warning));
    }

    #[test]
    fn bad_patterns_and_conflicts_are_usage_errors() {
        assert!(Cli::try_parse_from(["drtrace", "enable-event", "-u", "a$b"]).is_err());
        assert!(Cli::try_parse_from(["drtrace", "enable-event", "-u"]).is_err());
        assert!(
            Cli::try_parse_from([
                "drtrace",
                "enable-channel",
                "-u",
                "--overwrite",
                "--discard",
                "c"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["drtrace", "destroy", "x", "--all"]).is_err());
    }
}
