//! `drtrace-demo`: a small traced program, used by the README's quick start and by the tests.
//!
//! It declares three providers and emits a fixed, documented number of events, so a test can
//! compute exactly what a trace of it must contain. With `--processes P --threads T
//! --iterations N` it emits `P * (2 + T * N * 5)` events:
//!
//! | event | level | per | fields |
//! |---|---|---|---|
//! | `demo_app:start` | notice | process, first | `pid: i32, threads: u32, iterations: u64` |
//! | `demo_app:iteration` | info | iteration | `thread: u32, seq: u64, pid: i32` |
//! | `demo_types:ints` | debug | iteration | `a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64` |
//! | `demo_types:floats` | debug | iteration | `x: f32, y: f64, even: bool` |
//! | `demo_types:text` | debug | iteration | `msg: &str, raw: &[u8]` |
//! | `demo_http:request` | info | iteration | `id: u64, path: &str, ok: bool, elapsed_us: u32` |
//! | `demo_app:finish` | notice | process, last | `pid: i32, events: u64` |
//!
//! Field values for iteration `seq` of thread `thread` (see [`emit_iteration`]): `ints` carries
//! `seq` truncated to each width (negated for the signed ones), `floats` carries
//! `seq * 0.5`, `seq * 0.25` and `seq % 2 == 0`, `text` carries a string of `--payload-len`
//! letters and the 8 little-endian bytes of `seq`, `request` carries `id = seq`,
//! `path = "/item/<thread>"`, `ok = seq % 3 != 0`, `elapsed_us = seq * 10`.
#![warn(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

drtrace::provider! {
    /// The program's life: one start and one finish per process, one event per iteration.
    pub mod demo_app {
        /// A process starts emitting.
        #[loglevel(Notice)]
        pub fn start(pid: i32, threads: u32, iterations: u64);
        /// One iteration of one thread.
        pub fn iteration(thread: u32, seq: u64, pid: i32);
        /// A process is done; `events` counts what it emitted, this event included.
        #[loglevel(Notice)]
        pub fn finish(pid: i32, events: u64);
    }
}

drtrace::provider! {
    /// One event per field type family.
    pub mod demo_types {
        /// Every integer width, unsigned and signed.
        #[loglevel(Debug)]
        pub fn ints(a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64);
        /// Floating point and booleans.
        #[loglevel(Debug)]
        pub fn floats(x: f32, y: f64, even: bool);
        /// A string and a byte sequence.
        #[loglevel(Debug)]
        pub fn text(msg: &str, raw: &[u8]);
    }
}

drtrace::provider! {
    /// A pretend web server.
    pub mod demo_http {
        /// A request was served.
        #[loglevel(Info)]
        pub fn request(id: u64, path: &str, ok: bool, elapsed_us: u32);
    }
}

/// Events each iteration emits.
pub const EVENTS_PER_ITERATION: u64 = 5;
/// Events each process emits besides its iterations (start and finish).
pub const EVENTS_PER_PROCESS: u64 = 2;

const HELP: &str = "\
drtrace-demo: a traced program with a fixed, known number of events

USAGE: drtrace-demo [OPTIONS]

OPTIONS:
  --iterations N      iterations per thread (default 10)
  --threads T         threads per process, each doing N iterations (default 1)
  --processes P       processes: the first forks P-1 children doing the same (default 1)
  --delay-us D        pause between iterations, in microseconds (default 0)
  --payload-len L     length of the demo_types:text string (default 16)
  --wait-for-file F   wait until F exists before emitting anything
  --print-pid         print 'pid <PID>' on stdout when each process starts emitting
  -h, --help          this text

EVENTS (P * (2 + T * N * 5) in all):
  per process:    demo_app:start (first), demo_app:finish (last)       [notice]
  per iteration:  demo_app:iteration, demo_http:request                [info]
                  demo_types:ints, demo_types:floats, demo_types:text  [debug]
";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    iterations: u64,
    threads: u32,
    processes: u32,
    delay: Duration,
    payload_len: usize,
    wait_for: Option<PathBuf>,
    print_pid: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            iterations: 10,
            threads: 1,
            processes: 1,
            delay: Duration::ZERO,
            payload_len: 16,
            wait_for: None,
            print_pid: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run(Options),
    Help,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    fn value<T: std::str::FromStr>(
        flag: &str,
        it: &mut impl Iterator<Item = String>,
    ) -> Result<T, String> {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("invalid value '{v}' for {flag}"))
    }
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--iterations" => o.iterations = value(&arg, &mut it)?,
            "--threads" => o.threads = value(&arg, &mut it)?,
            "--processes" => o.processes = value(&arg, &mut it)?,
            "--delay-us" => o.delay = Duration::from_micros(value(&arg, &mut it)?),
            "--payload-len" => o.payload_len = value(&arg, &mut it)?,
            "--wait-for-file" => o.wait_for = Some(value::<PathBuf>(&arg, &mut it)?),
            "--print-pid" => o.print_pid = true,
            other => return Err(format!("unknown argument '{other}' (see --help)")),
        }
    }
    if o.threads == 0 || o.processes == 0 {
        return Err("--threads and --processes must be at least 1".into());
    }
    Ok(Command::Run(o))
}

/// The `demo_types:text` string: `len` letters, `a` to `z` over and over.
fn payload(len: usize) -> String {
    (b'a'..=b'z').cycle().take(len).map(char::from).collect()
}

/// Emits the events of iteration `seq` of thread `thread` (see the module docs).
#[allow(
    clippy::cast_possible_truncation,
    reason = "truncation is the demo's point"
)]
fn emit_iteration(thread: u32, seq: u64, pid: i32, text: &str) {
    demo_app::iteration(thread, seq, pid);
    demo_types::ints(
        seq as u8,
        seq as u16,
        seq as u32,
        seq,
        (seq as i8).wrapping_neg(),
        (seq as i16).wrapping_neg(),
        (seq as i32).wrapping_neg(),
        (seq as i64).wrapping_neg(),
    );
    #[allow(clippy::cast_precision_loss, reason = "small demo values")]
    demo_types::floats(seq as f32 * 0.5, seq as f64 * 0.25, seq % 2 == 0);
    demo_types::text(text, &seq.to_le_bytes());
    let path = format!("/item/{thread}");
    demo_http::request(seq, &path, seq % 3 != 0, (seq as u32).wrapping_mul(10));
}

/// One process's share: start, T threads of N iterations, finish.
fn run_process(o: &Options) {
    let pid = nix::unistd::getpid().as_raw();
    if o.print_pid {
        println!("pid {pid}");
    }
    demo_app::start(pid, o.threads, o.iterations);
    let text = payload(o.payload_len);
    std::thread::scope(|s| {
        for thread in 0..o.threads {
            let text = &text;
            s.spawn(move || {
                for seq in 0..o.iterations {
                    emit_iteration(thread, seq, pid, text);
                    if !o.delay.is_zero() {
                        std::thread::sleep(o.delay);
                    }
                }
            });
        }
    });
    let events = EVENTS_PER_PROCESS + u64::from(o.threads) * o.iterations * EVENTS_PER_ITERATION;
    demo_app::finish(pid, events);
}

fn wait_for_file(path: &std::path::Path) {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run(o: &Options) -> Result<(), String> {
    if let Some(path) = &o.wait_for {
        wait_for_file(path);
    }
    let mut children = Vec::new();
    for _ in 1..o.processes {
        // SAFETY: no thread of ours runs yet (the emitting threads start after the forks;
        // drtrace's listener threads do not exist in the child, whose fork handler starts
        // its own). The child only runs `run_process` and exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                run_process(o);
                #[allow(
                    clippy::exit,
                    reason = "a forked child must not return into the parent's main"
                )]
                std::process::exit(0);
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => children.push(child),
            Err(e) => return Err(format!("fork failed: {e}")),
        }
    }
    run_process(o);
    let mut failed = 0;
    for child in children {
        match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
            _ => failed += 1,
        }
    }
    if failed > 0 {
        return Err(format!("{failed} child process(es) failed"));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{HELP}");
            std::process::ExitCode::SUCCESS
        }
        Ok(Command::Run(o)) => match run(&o) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("drtrace-demo: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("drtrace-demo: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn defaults_and_flags_parse() {
        assert_eq!(parse(args("")).unwrap(), Command::Run(Options::default()));
        let Command::Run(o) = parse(args(
            "--iterations 3 --threads 2 --processes 4 --delay-us 5 --payload-len 7 \
             --wait-for-file /tmp/x --print-pid",
        ))
        .unwrap() else {
            panic!("not a run");
        };
        assert_eq!(o.iterations, 3);
        assert_eq!(o.threads, 2);
        assert_eq!(o.processes, 4);
        assert_eq!(o.delay, Duration::from_micros(5));
        assert_eq!(o.payload_len, 7);
        assert_eq!(o.wait_for, Some(PathBuf::from("/tmp/x")));
        assert!(o.print_pid);
        assert_eq!(parse(args("--help")).unwrap(), Command::Help);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(
            parse(args("--iterations"))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse(args("--threads x"))
                .unwrap_err()
                .contains("invalid value")
        );
        assert!(
            parse(args("--bogus"))
                .unwrap_err()
                .contains("unknown argument")
        );
        assert!(parse(args("--threads 0")).is_err());
    }

    #[test]
    fn the_payload_cycles_through_the_alphabet() {
        assert_eq!(payload(3), "abc");
        assert_eq!(payload(28).len(), 28);
        assert!(payload(28).ends_with("ab"));
        assert_eq!(payload(0), "");
    }

    #[test]
    fn the_help_states_the_event_count() {
        assert!(HELP.contains("P * (2 + T * N * 5)"));
        assert_eq!(EVENTS_PER_ITERATION, 5);
        assert_eq!(EVENTS_PER_PROCESS, 2);
    }
}
