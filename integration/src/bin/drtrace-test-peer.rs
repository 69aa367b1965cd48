//! `drtrace-test-peer SOCKET [MAJOR]`: a raw protocol peer for the integration tests.
//!
//! It skips every client-side check (socket owner, peer credentials) so that the tests can
//! see what the daemon itself does with a peer it must refuse, e.g. one of another uid. It
//! sends a Control hello (with protocol major `MAJOR`, default ours) and, if welcomed, a
//! Ping; it prints one line per step and always exits 0 unless its arguments are wrong:
//!
//! ```text
//! connect-error <message>     the kernel refused the connection (e.g. permission denied)
//! hello <json>                the daemon's answer to the hello
//! reply <json>                its answer to the ping
//! closed | timeout | error <message>   what happened instead of an answer
//! ```
#![forbid(unsafe_code)]

use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use drtrace_proto::control::ControlRequest;
use drtrace_proto::frame::{FrameError, recv_message, send_message};
use drtrace_proto::hello::{Hello, Role};

const TIMEOUT: Duration = Duration::from_secs(5);

fn answer(stream: &UnixStream, what: &str) -> bool {
    match recv_message::<serde_json::Value>(stream, TIMEOUT) {
        Ok((value, _fds)) => {
            println!("{what} {value}");
            value["type"] != "refused" && value["type"] != "error"
        }
        Err(e) if e.is_disconnect() => {
            println!("closed");
            false
        }
        Err(FrameError::TimedOut(_)) => {
            println!("timeout");
            false
        }
        Err(e) => {
            println!("error {e}");
            false
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, major) = match args.as_slice() {
        [socket] => (socket, None),
        [socket, major] => match major.parse::<u16>() {
            Ok(m) => (socket, Some(m)),
            Err(_) => {
                eprintln!("error: MAJOR must be a number");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: drtrace-test-peer SOCKET [MAJOR]");
            return ExitCode::from(2);
        }
    };
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            println!("connect-error {e}");
            return ExitCode::SUCCESS;
        }
    };
    let mut hello = Hello::new(Role::Control);
    if let Some(m) = major {
        hello.major = m;
    }
    // A daemon that refuses us may answer and close before our hello is out: then the send
    // fails, but its answer is still there to read.
    if let Err(e) = send_message(&stream, &hello, &[], TIMEOUT) {
        if !e.is_disconnect() {
            println!("error {e}");
            return ExitCode::SUCCESS;
        }
    }
    if answer(&stream, "hello") {
        if let Err(e) = send_message(&stream, &ControlRequest::Ping, &[], TIMEOUT) {
            println!("error {e}");
            return ExitCode::SUCCESS;
        }
        answer(&stream, "reply");
    }
    ExitCode::SUCCESS
}
