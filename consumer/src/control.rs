//! The control socket: requests from the session daemon in, replies and stream errors out.
//!
//! The socket is the consumer's standard input, one end of a socket pair the session daemon
//! made; no hello is exchanged (nobody else can reach it). Frames are those of
//! [`drtrace_proto::frame`]. The event loop polls the socket and calls [`Control::read`]
//! once per readable event: one `recv` that never blocks and never reads past the frame
//! being assembled, so a request's descriptors stay with it.
//!
//! Bounds: once the first byte of a frame has arrived, the whole frame must arrive within
//! [`FRAME_TIMEOUT`] ([`Control::deadline`]); replies are written within [`SEND_TIMEOUT`].
//! A frame that does not decode gets an error reply and the consumer goes on (the frame's
//! length keeps the stream in step; an oversized frame's payload is read and thrown away).
//! Only a frame that stalls half-way leaves the stream out of step for good: that ends the
//! connection ([`ControlError::FrameTimeout`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use drtrace_proto::consumer::{ConsumerMessage, ConsumerRequest};
use drtrace_proto::frame::{
    FrameAssembler, FrameError, MAX_FRAME_LEN, decode_json, recv_with_fds, send_message,
};
use thiserror::Error;

/// Time a frame has to arrive completely once its first byte did (docs/protocol.md).
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a reply or stream error has to be written.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The control connection failed for good.
#[derive(Debug, Error)]
pub enum ControlError {
    /// A frame started but did not complete in time: the byte stream is out of step.
    #[error("a request frame stalled for more than {0:?}")]
    FrameTimeout(Duration),
    /// A frame carried more descriptors than any frame may.
    #[error("a request frame carried too many descriptors")]
    TooManyFds,
    /// Receiving failed.
    #[error("cannot read the control socket")]
    Recv(#[source] io::Error),
    /// Sending failed.
    #[error("cannot write to the control socket")]
    Send(#[source] FrameError),
}

impl ControlError {
    /// True when the session daemon went away (rather than misbehaved).
    pub fn is_disconnect(&self) -> bool {
        match self {
            ControlError::Send(e) => e.is_disconnect(),
            ControlError::Recv(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// What one read produced.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Part of a frame, or nothing.
    Partial,
    /// A whole request and its descriptors.
    Request(ConsumerRequest, Vec<OwnedFd>),
    /// A whole frame that is not a valid request: answer `seq` (the frame's `seq` field if
    /// it has one, else 0) with an error.
    Malformed { seq: u64, message: String },
    /// The session daemon closed its end.
    Closed,
}

/// An oversized frame being skipped.
#[derive(Debug)]
struct Skip {
    len: usize,
    left: usize,
}

/// The consumer's end of the control socket pair.
#[derive(Debug)]
pub(crate) struct Control {
    sock: UnixStream,
    asm: FrameAssembler,
    skip: Option<Skip>,
    /// When the frame being received must be complete.
    deadline: Option<Instant>,
    max_len: usize,
}

impl Control {
    /// Wraps the socket (left blocking: reads happen only when poll said readable, and
    /// writes use a timeout).
    pub(crate) fn new(sock: UnixStream) -> io::Result<Control> {
        Control::with_max_len(sock, MAX_FRAME_LEN)
    }

    fn with_max_len(sock: UnixStream, max_len: usize) -> io::Result<Control> {
        // A safety net: a read is only ever attempted on a readable socket.
        sock.set_read_timeout(Some(FRAME_TIMEOUT))?;
        Ok(Control {
            sock,
            asm: FrameAssembler::new(max_len),
            skip: None,
            deadline: None,
            max_len,
        })
    }

    /// The socket, for poll.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// When the frame in progress must be complete, if one is in progress.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Fails if the frame in progress is overdue.
    pub(crate) fn check_deadline(&self, now: Instant) -> Result<(), ControlError> {
        match self.deadline {
            Some(d) if now >= d => Err(ControlError::FrameTimeout(FRAME_TIMEOUT)),
            _ => Ok(()),
        }
    }

    /// Receives once (call it when the socket is readable).
    pub(crate) fn read(&mut self, now: Instant) -> Result<Incoming, ControlError> {
        if self.skip.is_some() {
            return self.skip_some();
        }
        let started = self.asm.is_idle();
        let mut fds = Vec::new();
        let n = match recv_with_fds(self.sock.as_fd(), self.asm.read_buf(), &mut fds) {
            Ok(n) => n,
            Err(e) if retry_later(&e) => return Ok(Incoming::Partial),
            Err(e) => return Err(ControlError::Recv(e)),
        };
        if started && n > 0 {
            self.deadline = Some(now + FRAME_TIMEOUT);
        }
        match self.asm.advance(n, fds) {
            Ok(None) => Ok(Incoming::Partial),
            Ok(Some(frame)) => {
                self.deadline = None;
                Ok(match decode_json::<ConsumerRequest>(&frame.payload) {
                    Ok(request) => Incoming::Request(request, frame.fds),
                    Err(e) => Incoming::Malformed {
                        seq: seq_of(&frame.payload),
                        message: format!("malformed request: {}", cause(&e)),
                    },
                })
            }
            Err(FrameError::Closed | FrameError::Truncated { .. }) => {
                self.deadline = None;
                Ok(Incoming::Closed)
            }
            Err(FrameError::TooLarge { len, .. }) => {
                self.skip = Some(Skip { len, left: len });
                Ok(Incoming::Partial)
            }
            Err(FrameError::TooManyFds { .. }) => Err(ControlError::TooManyFds),
            Err(FrameError::Io(e)) => Err(ControlError::Recv(e)),
            Err(e) => Err(ControlError::Recv(io::Error::other(e))),
        }
    }

    /// Reads and drops part of an oversized frame's payload.
    fn skip_some(&mut self) -> Result<Incoming, ControlError> {
        let Some(skip) = self.skip.as_mut() else {
            return Ok(Incoming::Partial);
        };
        let mut scratch = [0u8; 16 * 1024];
        let want = skip.left.min(scratch.len());
        // Descriptors that came with the frame are closed when `fds` drops.
        let mut fds = Vec::new();
        let n = match recv_with_fds(self.sock.as_fd(), &mut scratch[..want], &mut fds) {
            Ok(n) => n,
            Err(e) if retry_later(&e) => return Ok(Incoming::Partial),
            Err(e) => return Err(ControlError::Recv(e)),
        };
        if n == 0 {
            self.skip = None;
            self.deadline = None;
            return Ok(Incoming::Closed);
        }
        skip.left -= n;
        if skip.left > 0 {
            return Ok(Incoming::Partial);
        }
        let len = skip.len;
        self.skip = None;
        self.deadline = None;
        Ok(Incoming::Malformed {
            seq: 0,
            message: format!(
                "request of {len} bytes exceeds the limit of {} bytes",
                self.max_len
            ),
        })
    }

    /// Sends one message within [`SEND_TIMEOUT`].
    pub(crate) fn send(&self, msg: &ConsumerMessage) -> Result<(), ControlError> {
        send_message(&self.sock, msg, &[], SEND_TIMEOUT).map_err(ControlError::Send)
    }
}

/// True for errors after which the socket may simply be read again later.
fn retry_later(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::TimedOut
    )
}

/// The `seq` of a request that does not decode, if its JSON has one.
fn seq_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("seq")?.as_u64())
        .unwrap_or(0)
}

/// The innermost message of a frame error (serde's own text).
fn cause(e: &FrameError) -> String {
    match e {
        FrameError::Malformed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_proto::consumer::ConsumerCommand;
    use drtrace_proto::frame::encode_json;
    use std::io::Write;

    fn pair() -> (Control, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Control::with_max_len(a, 64).unwrap(), b)
    }

    /// Reads until something other than `Partial` comes (the test wrote it all already).
    fn next(c: &mut Control) -> Incoming {
        for _ in 0..1000 {
            match c.read(Instant::now()).unwrap() {
                Incoming::Partial => {}
                other => return other,
            }
        }
        panic!("no complete frame");
    }

    fn raw_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn requests_decode_and_malformed_ones_keep_their_seq() {
        let (mut c, mut peer) = pair();
        let ping = ConsumerRequest {
            seq: 4,
            command: ConsumerCommand::Ping,
        };
        peer.write_all(&encode_json(&ping).unwrap()).unwrap();
        peer.write_all(&raw_frame(br#"{"seq":9,"command":{"type":"dance"}}"#))
            .unwrap();
        peer.write_all(&raw_frame(b"not json")).unwrap();
        peer.write_all(&encode_json(&ping).unwrap()).unwrap();
        assert!(matches!(next(&mut c), Incoming::Request(r, fds) if r == ping && fds.is_empty()));
        match next(&mut c) {
            Incoming::Malformed { seq, message } => {
                assert_eq!(seq, 9);
                assert!(
                    message.starts_with("malformed request: unknown variant `dance`"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut c), Incoming::Malformed { seq: 0, .. }));
        assert!(matches!(next(&mut c), Incoming::Request(r, _) if r == ping));
        assert_eq!(c.deadline(), None);
        drop(peer);
        assert!(matches!(next(&mut c), Incoming::Closed));
    }

    #[test]
    fn an_oversized_frame_is_skipped_and_the_next_one_reads() {
        let (mut c, mut peer) = pair();
        peer.write_all(&raw_frame(&[b'x'; 1000])).unwrap();
        let ping = ConsumerRequest {
            seq: 1,
            command: ConsumerCommand::Ping,
        };
        peer.write_all(&encode_json(&ping).unwrap()).unwrap();
        match next(&mut c) {
            Incoming::Malformed { seq: 0, message } => {
                assert_eq!(
                    message,
                    "request of 1000 bytes exceeds the limit of 64 bytes"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut c), Incoming::Request(r, _) if r == ping));
    }

    #[test]
    fn a_stalled_frame_has_a_deadline() {
        let (mut c, mut peer) = pair();
        peer.write_all(&[10, 0]).unwrap();
        let t0 = Instant::now();
        assert!(matches!(c.read(t0).unwrap(), Incoming::Partial));
        assert_eq!(c.deadline(), Some(t0 + FRAME_TIMEOUT));
        assert!(c.check_deadline(t0 + Duration::from_secs(1)).is_ok());
        assert!(matches!(
            c.check_deadline(t0 + FRAME_TIMEOUT),
            Err(ControlError::FrameTimeout(_))
        ));
        // The peer dying mid-frame is a close, not an error.
        drop(peer);
        assert!(matches!(next(&mut c), Incoming::Closed));
    }
}
