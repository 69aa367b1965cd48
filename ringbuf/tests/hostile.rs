//! Property tests: a hostile writer scribbles over the shared memory (header, control lines,
//! data) at any point; the reader and honest writers must never panic, hang or read out of
//! bounds, and packets they return stay within the sub-buffer size.
#![cfg(not(loom))]

use drtrace_ringbuf::{ClockSource, Layout, Mode, Reader, Writer, create_buffer};
use proptest::prelude::*;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// One scribble: where (a kind of target plus raw offset) and what.
#[derive(Debug, Clone)]
enum Scribble {
    /// Any bytes anywhere in the file.
    Bytes(u64, Vec<u8>),
    /// A whole 64-bit word into a control field: header lines or a slot line.
    Word(u64, u64),
}

fn scribble() -> impl Strategy<Value = Scribble> {
    prop_oneof![
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(o, b)| Scribble::Bytes(o, b)),
        (any::<u64>(), any::<u64>()).prop_map(|(o, v)| Scribble::Word(o, v)),
        // Plausible words: small counts and flags near the real encoding.
        (any::<u64>(), 0u64..1 << 30).prop_map(|(o, v)| Scribble::Word(o, v)),
    ]
}

/// Control-field offsets: write line, lost, reader line, and the slot lines.
fn control_offsets(num_subbuf: u64) -> Vec<u64> {
    let mut v = vec![128, 136, 256, 384, 392, 400];
    for j in 0..num_subbuf {
        for f in 0..4 {
            v.push(512 + j * 128 + f * 8);
        }
    }
    v
}

fn apply(file: &File, size: u64, ctl: &[u64], s: &Scribble) {
    match s {
        Scribble::Bytes(o, b) => {
            let off = o % size;
            let len = b.len().min(usize::try_from(size - off).unwrap());
            file.write_at(&b[..len], off).unwrap();
        }
        Scribble::Word(o, v) => {
            let off = ctl[usize::try_from(o % ctl.len() as u64).unwrap()];
            file.write_at(&v.to_le_bytes(), off).unwrap();
        }
    }
}

fn setup(mode: Mode) -> (OwnedFd, File, Layout) {
    let layout = Layout {
        subbuf_size: 4096,
        num_subbuf: 4,
        mode,
    };
    let fd = create_buffer(&layout, ClockSource::Monotonic, "hostile").unwrap();
    let file = File::from(fd.try_clone().unwrap());
    (fd, file, layout)
}

/// Exercises every reader and writer entry point once.
fn poke(r: &mut Reader, w: &Writer, out: &mut Vec<u8>, sub: usize) {
    for _ in 0..12 {
        match r.read_packet(out) {
            Ok(Some(info)) => {
                assert!(out.len() < sub);
                assert_eq!(info.content_size, out.len() as u64);
            }
            Ok(None) => break,
            Err(_) => assert!(out.is_empty()),
        }
    }
    let _ = r.has_data();
    let _ = r.drained();
    if !r.arm_wakeup() {
        let _ = r.wait(Duration::ZERO);
    }
    r.disarm_wakeup();
    let now = Instant::now();
    let _ = r.check_stuck(now, Duration::ZERO, true);
    let _ = r.check_stuck(now, Duration::ZERO, true);
    let _ = r.events_discarded_total();
    for i in 0..40u32 {
        if let Some(mut s) = w.reserve(i % 40, (i as usize * 7) % 50) {
            s.put_u64(u64::from(i)).put_bytes(&[0xab; 30]);
        }
    }
    let _ = r.flush();
    let _ = r.final_packet();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn reader_and_writers_survive_a_hostile_writer(
        overwrite in any::<bool>(),
        honest in 0u32..1500,
        rounds in proptest::collection::vec(proptest::collection::vec(scribble(), 0..12), 1..5),
    ) {
        let (fd, file, layout) = setup(if overwrite { Mode::Overwrite } else { Mode::Discard });
        let size = layout.buffer_size();
        let ctl = control_offsets(u64::from(layout.num_subbuf));
        let w = Writer::map(&fd, None).unwrap();
        let mut r = Reader::map(&fd, None).unwrap();
        for i in 0..honest {
            if let Some(mut s) = w.reserve(i % 64, 8) {
                s.put_u64(u64::from(i));
            }
        }
        let mut out = Vec::new();
        for round in &rounds {
            for s in round {
                apply(&file, size, &ctl, s);
            }
            poke(&mut r, &w, &mut out, 4096);
        }
        // A reader mapped after the damage is either refused or works the same way.
        if let Ok(mut r2) = Reader::map(&fd, None) {
            poke(&mut r2, &w, &mut out, 4096);
        }
    }

    #[test]
    fn mapping_a_damaged_header_fails_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), 1..64),
        at in 0u64..128,
    ) {
        let (fd, file, _) = setup(Mode::Discard);
        file.write_at(&bytes, at).unwrap();
        let reader = Reader::map(&fd, None);
        let writer = Writer::map(&fd, None);
        prop_assert_eq!(reader.is_ok(), writer.is_ok());
        if let (Ok(mut r), Ok(w)) = (reader, writer) {
            // Accepted: it must describe a valid layout matching the file.
            r.layout().validate().unwrap();
            let mut out = Vec::new();
            let sub = usize::try_from(r.layout().subbuf_size).unwrap();
            poke(&mut r, &w, &mut out, sub);
        }
    }
}

#[test]
fn writes_outside_the_header_keep_a_mapped_layout() {
    // The reader copies the geometry at map time: rewriting it later changes nothing.
    let (fd, file, layout) = setup(Mode::Discard);
    let w = Writer::map(&fd, None).unwrap();
    let mut r = Reader::map(&fd, None).unwrap();
    file.write_at(&1u32.to_le_bytes(), 16).unwrap(); // subbuf_size
    file.write_at(&1024u32.to_le_bytes(), 20).unwrap(); // num_subbuf
    for i in 0..500u64 {
        if let Some(mut s) = w.reserve(1, 8) {
            s.put_u64(i);
        }
    }
    r.flush();
    let mut out = Vec::new();
    let mut records = 0;
    while let Some(info) = r.read_packet(&mut out).unwrap() {
        records += info.records;
    }
    assert_eq!(r.layout(), layout);
    assert_eq!(records + r.events_discarded_total(), 500);
    assert!(
        Reader::map(&fd, None).is_err(),
        "a new mapping sees the damage"
    );
}
