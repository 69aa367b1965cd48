//! Property tests: whatever bytes a peer sends, frame assembly and message decoding end in a
//! frame, a clean error or a request for more bytes, and never panic or allocate past the cap.

use drtrace_proto::app::{AppMessage, AppRequest};
use drtrace_proto::consumer::{ConsumerMessage, ConsumerRequest};
use drtrace_proto::control::{ControlReply, ControlRequest};
use drtrace_proto::frame::{FrameAssembler, FrameError, decode_json, encode_json};
use drtrace_proto::hello::{Hello, HelloReply};
use drtrace_proto::kernel::{KernelReply, KernelRequest};
use proptest::prelude::*;

/// Feeds `bytes` in chunks of the given sizes; returns the frames and the first error.
fn feed(max: usize, bytes: &[u8], chunks: &[usize]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut asm = FrameAssembler::new(max);
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let want = (*sizes.next().unwrap_or(&1)).max(1);
        let buf = asm.read_buf();
        assert!(buf.len() <= max.max(4), "never asks for more than a frame");
        let n = buf.len().min(want).min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        match asm.advance(n, Vec::new()) {
            Ok(Some(f)) => {
                assert!(f.payload.len() <= max);
                frames.push(f.payload);
            }
            Ok(None) => {}
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

fn decode_everything(payload: &[u8]) {
    // Each decoder must fail cleanly on garbage; the results do not matter.
    let _ = decode_json::<Hello>(payload);
    let _ = decode_json::<HelloReply>(payload);
    let _ = decode_json::<ControlRequest>(payload);
    let _ = decode_json::<ControlReply>(payload);
    let _ = decode_json::<AppMessage>(payload);
    let _ = decode_json::<AppRequest>(payload);
    let _ = decode_json::<ConsumerRequest>(payload);
    let _ = decode_json::<ConsumerMessage>(payload);
    let _ = decode_json::<KernelRequest>(payload);
    let _ = decode_json::<KernelReply>(payload);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                chunks in proptest::collection::vec(1usize..64, 1..8),
                                max in 0usize..2048) {
        let (frames, err) = feed(max, &bytes, &chunks);
        for f in &frames {
            decode_everything(f);
        }
        if let Some(FrameError::TooLarge { len, max: cap }) = err {
            prop_assert!(len > cap);
        }
    }

    #[test]
    fn random_payloads_in_valid_frames_decode_or_fail_cleanly(
        payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut wire = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        wire.extend_from_slice(&payload);
        let (frames, err) = feed(1 << 20, &wire, &[7]);
        prop_assert!(err.is_none());
        prop_assert_eq!(frames.len(), 1);
        decode_everything(&frames[0]);
    }

    #[test]
    fn mutated_real_messages_never_panic(flip in 0usize..200, value in any::<u8>()) {
        let msg = ControlRequest::DestroySession {
            target: drtrace_proto::control::SessionTarget::Named("s1".into()),
        };
        let mut wire = encode_json(&msg).unwrap();
        let i = flip % wire.len();
        wire[i] = value;
        let (frames, _) = feed(1 << 20, &wire, &[3, 1, 5]);
        for f in &frames {
            decode_everything(f);
        }
    }
}
