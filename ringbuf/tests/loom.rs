//! loom models of the ring's concurrency protocol, on the real `ring.rs` code.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p drtrace-ringbuf --release --test loom`.
//! Sub-buffers are 16 bytes (2 of them): a record is a 4-byte compact header plus a 1-byte
//! payload `writer << 4 | seq`, so three fill a sub-buffer and the fourth switches.
#![cfg(loom)]

use drtrace_ringbuf::Mode;
use drtrace_ringbuf::PacketInfo;
use drtrace_ringbuf::model::{DataKind, ModelReader, ModelRing};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::thread;
use std::collections::HashMap;

const SUB_SHIFT: u32 = 4;
const NUM_SHIFT: u32 = 1;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Writes record `seq` of `writer` (event id 1, or 40 for an extended header); true if
/// not dropped.
fn write(ring: &ModelRing, writer: u8, seq: u8, extended: bool) -> bool {
    match ring.reserve(if extended { 40 } else { 1 }, 1) {
        Some(mut s) => {
            assert!(s.put(&[writer << 4 | seq]));
            s.commit();
            true
        }
        None => false,
    }
}

/// Decodes a packet (format.md headers, 1-byte payloads) into (writer, seq) pairs,
/// checking timestamps never decrease and stay within the packet's bounds.
fn decode(info: &PacketInfo, bytes: &[u8]) -> Vec<(u8, u8)> {
    let mut prev = info.timestamp_begin;
    let mut i = 0;
    let mut recs = Vec::new();
    while i < bytes.len() {
        let (ts, hdr) = if bytes[i] == 31 {
            (
                u64::from_le_bytes(bytes[i + 5..i + 13].try_into().unwrap()),
                13,
            )
        } else {
            let w = u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
            let mut ts = (prev & !((1 << 27) - 1)) | u64::from(w >> 5);
            if ts < prev {
                ts += 1 << 27;
            }
            (ts, 4)
        };
        assert!(ts >= prev, "timestamps go back in a packet");
        prev = ts;
        let p = bytes[i + hdr];
        recs.push((p >> 4, p & 15));
        i += hdr + 1;
    }
    assert_eq!(recs.len() as u64, info.records);
    assert!(prev <= info.timestamp_end);
    recs
}

/// Everything the reader got, checked for order and duplicates.
#[derive(Default)]
struct Got {
    records: u64,
    last: HashMap<u8, u8>,
    last_seq_num: Option<u64>,
    last_lost: u64,
    last_end: u64,
}

impl Got {
    fn read_all(&mut self, ring: &ModelRing, r: &mut ModelReader, limit: usize) {
        let mut out = Vec::new();
        for _ in 0..limit {
            match r.read_packet(ring, &mut out).unwrap() {
                Some(info) => self.packet(&info, &out),
                None => return,
            }
        }
    }

    fn packet(&mut self, info: &PacketInfo, out: &[u8]) {
        if let Some(prev) = self.last_seq_num {
            assert!(info.seq_num > prev);
        }
        self.last_seq_num = Some(info.seq_num);
        assert!(info.events_discarded_total >= self.last_lost);
        self.last_lost = info.events_discarded_total;
        assert!(
            info.timestamp_begin >= self.last_end,
            "packets overlap in time"
        );
        self.last_end = info.timestamp_end;
        for (w, seq) in decode(info, out) {
            if let Some(&l) = self.last.get(&w) {
                assert!(seq > l, "writer {w}: {seq} after {l}");
            }
            self.last.insert(w, seq);
            self.records += 1;
        }
    }

    /// Final flush and drain; returns recorded + discarded.
    fn finish(&mut self, ring: &ModelRing, r: &mut ModelReader) -> u64 {
        ring.flush();
        self.read_all(ring, r, 8);
        assert!(r.drained(ring));
        let lost = r
            .final_packet(ring)
            .map_or(self.last_lost, |p| p.events_discarded_total);
        assert_eq!(lost, ring.lost());
        self.records + lost
    }
}

#[test]
fn reserve_commit_consume_with_a_switch() {
    model(|| {
        let ring = Arc::new(ModelRing::new(
            SUB_SHIFT,
            NUM_SHIFT,
            Mode::Discard,
            DataKind::Exclusive,
        ));
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let ring = ring.clone();
                thread::spawn(move || {
                    // Writer 1's second record is extended: it cannot share a sub-buffer
                    // with three compact ones, so a switch always happens.
                    write(&ring, w, 0, false);
                    write(&ring, w, 1, w == 1);
                })
            })
            .collect();
        let reader = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut r = ring.reader();
                let mut got = Got::default();
                got.read_all(&ring, &mut r, 2);
                (r, got)
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        let (mut r, mut got) = reader.join().unwrap();
        assert_eq!(got.finish(&ring, &mut r), 4);
    });
}

#[test]
fn flush_races_writers() {
    model(|| {
        let ring = Arc::new(ModelRing::new(
            SUB_SHIFT,
            NUM_SHIFT,
            Mode::Discard,
            DataKind::Exclusive,
        ));
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                for seq in 0..3 {
                    write(&ring, 0, seq, false);
                }
            })
        };
        let reader = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut r = ring.reader();
                let mut got = Got::default();
                ring.flush();
                got.read_all(&ring, &mut r, 2);
                (r, got)
            })
        };
        writer.join().unwrap();
        let (mut r, mut got) = reader.join().unwrap();
        assert_eq!(got.finish(&ring, &mut r), 3);
    });
}

#[test]
fn a_waiting_reader_is_always_woken() {
    model(|| {
        let ring = Arc::new(ModelRing::new(
            SUB_SHIFT,
            NUM_SHIFT,
            Mode::Discard,
            DataKind::Exclusive,
        ));
        let slept = Arc::new(AtomicBool::new(false));
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                // The fourth record switches sub-buffers: sub-buffer 0 completes.
                for seq in 0..4 {
                    write(&ring, 0, seq, false);
                }
            })
        };
        let reader = {
            let (ring, slept) = (ring.clone(), slept.clone());
            thread::spawn(move || {
                let r = ring.reader();
                if !r.arm_wakeup(&ring) {
                    // It would sleep on the eventfd now.
                    slept.store(true, Ordering::SeqCst);
                } else {
                    r.disarm_wakeup(&ring);
                }
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        let wakes = ring.wakes();
        assert!(wakes <= 1, "one wake-up per arming");
        if slept.load(Ordering::SeqCst) {
            assert_eq!(
                wakes, 1,
                "the reader slept and the completion did not wake it"
            );
        }
    });
}

#[test]
fn overwrite_reader_never_accepts_a_torn_packet() {
    model(|| {
        let ring = Arc::new(ModelRing::new(
            SUB_SHIFT,
            NUM_SHIFT,
            Mode::Overwrite,
            DataKind::Racy,
        ));
        let emitted = 7u8;
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                // Seven records: three per sub-buffer, so the writer laps sub-buffer 0.
                for seq in 0..emitted {
                    assert!(write(&ring, 0, seq, false), "overwrite mode never drops");
                }
            })
        };
        let reader = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut r = ring.reader();
                let mut got = Got::default();
                got.read_all(&ring, &mut r, 2);
                (r, got)
            })
        };
        writer.join().unwrap();
        let (mut r, mut got) = reader.join().unwrap();
        assert_eq!(got.finish(&ring, &mut r), u64::from(emitted));
    });
}

#[test]
fn a_released_slow_writer_cannot_corrupt_the_next_lap() {
    model(|| {
        let ring = Arc::new(ModelRing::new(
            SUB_SHIFT,
            NUM_SHIFT,
            Mode::Discard,
            DataKind::Exclusive,
        ));
        // Record 0 is reserved and held; records 1..=3 move past sub-buffer 0.
        let slow = ring.reserve(1, 1).unwrap();
        for seq in 1..4 {
            assert!(write(&ring, 1, seq, false));
        }
        let released = Arc::new(AtomicU64::new(0));
        let reader = {
            let (ring, released) = (ring.clone(), released.clone());
            thread::spawn(move || {
                let mut r = ring.reader();
                let mut got = Got::default();
                r.release_stuck(&ring);
                let rep = r.release_stuck(&ring);
                released.store(u64::from(rep.released), Ordering::SeqCst);
                got.read_all(&ring, &mut r, 2);
                (r, got)
            })
        };
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                // The third one needs sub-buffer 0's slot again (lap 1).
                for seq in 4..7 {
                    write(&ring, 1, seq, false);
                }
            })
        };
        // The slow writer finishes while the others go on.
        let mut slow = slow;
        assert!(slow.put(&[0xee]));
        slow.commit();
        writer.join().unwrap();
        let (mut r, mut got) = reader.join().unwrap();
        assert_eq!(got.finish(&ring, &mut r), 7);
        if released.load(Ordering::SeqCst) == 1 {
            assert!(
                !got.last.contains_key(&0xe),
                "a released record was delivered"
            );
        }
    });
}
