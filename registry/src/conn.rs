//! One peer connection on the event loop: frames in and out, each bounded by a timeout.
//!
//! Waiting for a peer to *start* a frame may take as long as the connection's role allows
//! (an idle control client, an app waiting for sessions); once the first byte of a frame has
//! arrived, the whole frame must arrive within [`FRAME_TIMEOUT`]. A slow or silent peer thus
//! costs one idle task, never the loop or other clients.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use drtrace_proto::creds::PeerCred;
use drtrace_proto::frame::{
    Frame, FrameAssembler, FrameError, MAX_FDS, MAX_FRAME_LEN, decode_json, encode_json,
    recv_with_fds, send_with_fds,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use smol::{Async, Timer};

/// Time allowed for a whole frame once its first byte arrived, and for a whole reply to be
/// written.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected peer: frames in and out, each bounded by a timeout.
#[derive(Debug)]
pub struct Conn {
    stream: Async<UnixStream>,
    asm: FrameAssembler,
    /// The peer's credentials, as the kernel recorded them.
    pub cred: PeerCred,
}

/// Runs `fut`, or fails with `TimedOut` after `limit`.
pub async fn with_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, FrameError>>,
) -> Result<T, FrameError> {
    smol::future::or(fut, async {
        Timer::after(limit).await;
        Err(FrameError::TimedOut(limit))
    })
    .await
}

impl Conn {
    /// Wraps a connected, non-blocking stream and its peer's credentials.
    pub fn new(stream: Async<UnixStream>, cred: PeerCred) -> Self {
        Self {
            stream,
            asm: FrameAssembler::new(MAX_FRAME_LEN),
            cred,
        }
    }

    /// Receives one frame: waits up to `idle` (forever if `None`) for it to start, then up to
    /// [`FRAME_TIMEOUT`] for the rest.
    pub async fn recv_frame(&mut self, idle: Option<Duration>) -> Result<Frame, FrameError> {
        if self.asm.is_idle() {
            let readable = async { self.stream.readable().await.map_err(FrameError::from) };
            match idle {
                Some(limit) => with_timeout(limit, readable).await?,
                None => readable.await?,
            }
        }
        let Self { stream, asm, .. } = self;
        with_timeout(FRAME_TIMEOUT, async {
            loop {
                let mut fds: Vec<OwnedFd> = Vec::new();
                let n = stream
                    .read_with(|s| recv_with_fds(s.as_fd(), asm.read_buf(), &mut fds))
                    .await?;
                if let Some(frame) = asm.advance(n, fds)? {
                    return Ok(frame);
                }
            }
        })
        .await
    }

    /// Receives and decodes one message.
    pub async fn recv<T: DeserializeOwned>(
        &mut self,
        idle: Option<Duration>,
    ) -> Result<(T, Vec<OwnedFd>), FrameError> {
        let frame = self.recv_frame(idle).await?;
        Ok((decode_json(&frame.payload)?, frame.fds))
    }

    /// Encodes and sends one message with descriptors, within [`FRAME_TIMEOUT`].
    pub async fn send<T: Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), FrameError> {
        if fds.len() > MAX_FDS {
            return Err(FrameError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS,
            });
        }
        let bytes = encode_json(msg)?;
        with_timeout(FRAME_TIMEOUT, async {
            let mut sent = 0;
            while sent < bytes.len() {
                let attach = if sent == 0 { fds } else { &[] };
                sent += self
                    .stream
                    .write_with(|s| send_with_fds(s.as_fd(), &bytes[sent..], attach))
                    .await?;
            }
            Ok(())
        })
        .await
    }
}
