//! Frames: a little-endian `u32` payload length, then the payload (JSON), with any file
//! descriptors attached to the frame's bytes as SCM_RIGHTS.
//!
//! ```text
//! +----------------+------------------------------+
//! | len: u32 (LE)  | payload: len bytes of JSON   |   fds ride with the first bytes
//! +----------------+------------------------------+
//! ```
//!
//! The length is checked against a cap before anything is allocated, and a reader never
//! consumes bytes beyond the frame it is assembling, so descriptors are always attached to
//! the frame they were sent with. [`FrameAssembler`] is the I/O-free core shared by the
//! blocking helpers here and the daemons' async loops.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Largest payload accepted by default: room for thousands of event descriptions, small
/// enough that a hostile peer cannot make a daemon allocate much.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Most descriptors one frame may carry.
pub const MAX_FDS: usize = crate::sys::MAX_FDS_PER_MESSAGE;

/// One received frame: its payload and the descriptors that came with it.
#[derive(Debug, Default)]
pub struct Frame {
    /// The payload bytes (JSON).
    pub payload: Vec<u8>,
    /// Descriptors received with the frame, in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

/// Why a frame could not be read, written or decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({received} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame received, prefix included.
        received: usize,
        /// Bytes the frame should have had, prefix included (as far as known).
        expected: usize,
    },
    /// The length prefix announces more than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// More descriptors than one frame may carry.
    #[error("frame carries {count} file descriptors, more than the limit of {max}")]
    TooManyFds {
        /// Descriptors received or to send.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// The deadline passed before the whole frame was transferred.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// True when the peer went away (cleanly or not) rather than misbehaving.
    pub fn is_disconnect(&self) -> bool {
        match self {
            FrameError::Closed | FrameError::Truncated { .. } => true,
            FrameError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }
}

/// Encodes `msg` as a complete frame (prefix included).
pub fn encode_json<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut out, msg).map_err(FrameError::Encode)?;
    let len = out.len() - HEADER_LEN;
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        })?;
    out[..HEADER_LEN].copy_from_slice(&prefix.to_le_bytes());
    Ok(out)
}

/// Decodes a frame's payload.
pub fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(FrameError::Malformed)
}

/// Assembles one frame at a time from reads that never go past the current frame.
///
/// Call [`read_buf`](Self::read_buf) for where the next read goes, read into it (with
/// [`recv_with_fds`]), then [`advance`](Self::advance) with what was read.
#[derive(Debug)]
pub struct FrameAssembler {
    header: [u8; HEADER_LEN],
    header_have: usize,
    payload: Vec<u8>,
    payload_have: usize,
    payload_len: Option<usize>,
    fds: Vec<OwnedFd>,
    max_len: usize,
}

impl FrameAssembler {
    /// An assembler accepting payloads up to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            header: [0; HEADER_LEN],
            header_have: 0,
            payload: Vec::new(),
            payload_have: 0,
            payload_len: None,
            fds: Vec::new(),
            max_len,
        }
    }

    /// True when no byte of a next frame has been received yet.
    pub fn is_idle(&self) -> bool {
        self.header_have == 0 && self.fds.is_empty()
    }

    /// The buffer the next read must fill (never larger than what the frame still needs).
    pub fn read_buf(&mut self) -> &mut [u8] {
        match self.payload_len {
            None => &mut self.header[self.header_have..],
            Some(_) => &mut self.payload[self.payload_have..],
        }
    }

    /// Accounts for `n` bytes read into [`read_buf`](Self::read_buf) and the descriptors
    /// received with them; returns the frame once it is complete.
    pub fn advance(&mut self, n: usize, fds: Vec<OwnedFd>) -> Result<Option<Frame>, FrameError> {
        self.fds.extend(fds);
        if self.fds.len() > MAX_FDS {
            let count = self.fds.len();
            self.reset();
            return Err(FrameError::TooManyFds {
                count,
                max: MAX_FDS,
            });
        }
        if n == 0 {
            let truncated = !self.is_idle();
            let (received, expected) = self.progress();
            self.reset();
            return Err(if truncated {
                FrameError::Truncated { received, expected }
            } else {
                FrameError::Closed
            });
        }
        match self.payload_len {
            None => {
                self.header_have += n;
                if self.header_have < HEADER_LEN {
                    return Ok(None);
                }
                let len = u32::from_le_bytes(self.header) as usize;
                if len > self.max_len {
                    self.reset();
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.max_len,
                    });
                }
                self.payload_len = Some(len);
                self.payload = vec![0; len];
                self.payload_have = 0;
            }
            Some(_) => self.payload_have += n,
        }
        if self.payload_len == Some(self.payload_have) {
            let frame = Frame {
                payload: std::mem::take(&mut self.payload),
                fds: std::mem::take(&mut self.fds),
            };
            self.reset();
            return Ok(Some(frame));
        }
        Ok(None)
    }

    fn progress(&self) -> (usize, usize) {
        match self.payload_len {
            None => (self.header_have, HEADER_LEN),
            Some(len) => (HEADER_LEN + self.payload_have, HEADER_LEN + len),
        }
    }

    fn reset(&mut self) {
        self.header_have = 0;
        self.payload_len = None;
        self.payload = Vec::new();
        self.payload_have = 0;
        self.fds.clear();
    }
}

/// Receives bytes into `buf`, appending descriptors that came with them to `fds`.
///
/// Works on blocking and non-blocking sockets alike (a non-blocking socket with nothing to
/// read returns `WouldBlock`). Descriptors are received close-on-exec.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    crate::sys::recv_with_fds(sock, buf, fds)
}

/// Sends bytes with descriptors attached; returns how many bytes went out.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    crate::sys::send_with_fds(sock, buf, fds)
}

fn remaining(deadline: Instant, total: Duration) -> Result<Duration, FrameError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(FrameError::TimedOut(total))
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one whole frame from a blocking socket; the whole frame must arrive within `timeout`.
pub fn read_frame(
    sock: &UnixStream,
    timeout: Duration,
    max_len: usize,
) -> Result<Frame, FrameError> {
    let deadline = Instant::now() + timeout;
    let mut asm = FrameAssembler::new(max_len);
    loop {
        sock.set_read_timeout(Some(remaining(deadline, timeout)?))?;
        let mut fds = Vec::new();
        let n = match recv_with_fds(sock.as_fd(), asm.read_buf(), &mut fds) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(FrameError::TimedOut(timeout)),
            Err(e) => return Err(e.into()),
        };
        if let Some(frame) = asm.advance(n, fds)? {
            return Ok(frame);
        }
    }
}

/// Writes one whole frame (prefix included in `bytes`) to a blocking socket within `timeout`.
pub fn write_frame(
    sock: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<(), FrameError> {
    if fds.len() > MAX_FDS {
        return Err(FrameError::TooManyFds {
            count: fds.len(),
            max: MAX_FDS,
        });
    }
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    while sent < bytes.len() {
        sock.set_write_timeout(Some(remaining(deadline, timeout)?))?;
        let attach = if sent == 0 { fds } else { &[] };
        match send_with_fds(sock.as_fd(), &bytes[sent..], attach) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(FrameError::TimedOut(timeout)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Encodes and sends `msg` with `fds` on a blocking socket.
pub fn send_message<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<(), FrameError> {
    write_frame(sock, &encode_json(msg)?, fds, timeout)
}

/// Receives and decodes one message and its descriptors from a blocking socket.
pub fn recv_message<T: DeserializeOwned>(
    sock: &UnixStream,
    timeout: Duration,
) -> Result<(T, Vec<OwnedFd>), FrameError> {
    let frame = read_frame(sock, timeout, MAX_FRAME_LEN)?;
    Ok((decode_json(&frame.payload)?, frame.fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn feed(asm: &mut FrameAssembler, mut bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let buf = asm.read_buf();
            let n = buf.len().min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if let Some(f) = asm.advance(n, Vec::new())? {
                out.push(f);
            }
        }
        Ok(out)
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let mut wire = encode_json(&"first").unwrap();
        wire.extend(encode_json(&[1, 2, 3]).unwrap());
        for split in 0..wire.len() {
            let mut asm = FrameAssembler::new(MAX_FRAME_LEN);
            let mut frames = feed(&mut asm, &wire[..split]).unwrap();
            frames.extend(feed(&mut asm, &wire[split..]).unwrap());
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].payload, b"\"first\"");
            assert_eq!(frames[1].payload, b"[1,2,3]");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut asm = FrameAssembler::new(16);
        let err = feed(&mut asm, &17u32.to_le_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 17, max: 16 }));
        let mut asm = FrameAssembler::new(MAX_FRAME_LEN);
        let err = feed(&mut asm, &u32::MAX.to_le_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn eof_between_and_inside_frames_are_told_apart() {
        let mut asm = FrameAssembler::new(MAX_FRAME_LEN);
        assert!(matches!(
            asm.advance(0, Vec::new()),
            Err(FrameError::Closed)
        ));
        feed(&mut asm, &[5, 0, 0, 0, b'x']).unwrap();
        let err = asm.advance(0, Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                received: 5,
                expected: 9
            }
        ));
        assert!(err.is_disconnect());
    }

    #[test]
    fn blocking_round_trip_carries_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"payload").unwrap();
        send_message(&a, &"with fd", &[file.as_fd()], Duration::from_secs(1)).unwrap();
        let (msg, fds): (String, _) = recv_message(&b, Duration::from_secs(1)).unwrap();
        assert_eq!(msg, "with fd");
        assert_eq!(fds.len(), 1);
        let meta = std::fs::File::from(fds.into_iter().next().unwrap())
            .metadata()
            .unwrap();
        assert_eq!(meta.len(), 7);
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let err = read_frame(&a, Duration::from_millis(50), MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, FrameError::TimedOut(_)));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_slow_trickle_cannot_extend_the_deadline() {
        let (a, b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            // One byte every 20 ms: each read succeeds, but the frame never completes in time.
            for byte in [200u8, 0, 0, 0, b'x', b'y', b'z'] {
                if (&b).write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let err = read_frame(&a, Duration::from_millis(60), MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, FrameError::TimedOut(_)), "{err}");
        drop(a);
        writer.join().unwrap();
    }
}
