//! Single-process behaviour: record encoding, flush, discard and overwrite accounting,
//! wake-ups, stuck and slow writers, re-attaching readers, multi-threaded writers.
#![cfg(not(loom))]

mod common;

use common::{SEQ_PAYLOAD, StreamCheck, decode, write_seq};
use drtrace_ringbuf::{
    ClockSource, CreateError, Layout, LayoutError, Mode, PacketInfo, Reader, StuckReport, Writer,
    create_buffer, string_len,
};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn layout(subbuf_size: u32, num_subbuf: u32, mode: Mode) -> Layout {
    Layout {
        subbuf_size,
        num_subbuf,
        mode,
    }
}

fn buffer(l: Layout, clock: ClockSource) -> (OwnedFd, Writer, Reader) {
    let fd = create_buffer(&l, clock, "test").unwrap();
    let w = Writer::map(&fd, None).unwrap();
    let r = Reader::map(&fd, None).unwrap();
    (fd, w, r)
}

/// Reads every available packet into `check`; returns the (writer, seq) pairs read.
fn drain(r: &mut Reader, check: &mut StreamCheck) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut got = Vec::new();
    while let Some(info) = r.read_packet(&mut out).unwrap() {
        got.extend(check.packet(&info, &out));
    }
    got
}

/// The stream's final lost count: the last packet's, or the final empty packet's.
fn final_lost(r: &mut Reader, check: &StreamCheck) -> u64 {
    r.final_packet()
        .map_or(check.last_discarded, |p| p.events_discarded_total)
}

#[test]
fn headers_follow_the_format() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Discard), ClockSource::Monotonic);
    let mut ts = Vec::new();
    for (id, len) in [(0u32, 3usize), (30, 0), (31, 2), (1000, 1), (7, 8)] {
        let mut s = w.reserve(id, len).unwrap();
        ts.push(s.timestamp());
        s.put_bytes(&vec![id.to_le_bytes()[0]; len]);
        s.commit();
    }
    assert!(r.flush());
    let mut out = Vec::new();
    let info = r.read_packet(&mut out).unwrap().unwrap();
    assert_eq!(info.records, 5);
    assert_eq!(info.seq_num, 0);
    assert_eq!(info.events_discarded_total, 0);
    assert_eq!(info.timestamp_begin, ts[0]);
    assert!(info.timestamp_end >= ts[4]);
    // Compact (4 + 3), compact (4), extended (13 + 2), extended (13 + 1), compact (4 + 8).
    assert_eq!(out.len(), 7 + 4 + 15 + 14 + 12);
    assert_eq!(info.content_size, out.len() as u64);
    let first = u32::from_le_bytes(out[0..4].try_into().unwrap());
    assert_eq!(first & 31, 0);
    assert_eq!(u64::from(first >> 5), ts[0] & ((1 << 27) - 1));
    assert_eq!(out[11], 31);
    assert_eq!(u32::from_le_bytes(out[12..16].try_into().unwrap()), 31);
    assert_eq!(u64::from_le_bytes(out[16..24].try_into().unwrap()), ts[2]);
    let recs = decode(&info, &out, |id| match id {
        0 => 3,
        30 => 0,
        31 => 2,
        1000 => 1,
        _ => 8,
    })
    .unwrap();
    let ids: Vec<u32> = recs.iter().map(|r| r.id).collect();
    assert_eq!(ids, [0, 30, 31, 1000, 7]);
    let got: Vec<u64> = recs.iter().map(|r| r.ts).collect();
    assert_eq!(got, ts);
    assert_eq!(recs[3].payload, [0xe8]);
}

#[test]
fn compact_header_gives_way_when_the_high_timestamp_bits_change() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Discard), ClockSource::Monotonic);
    let mut ts = Vec::new();
    for i in 0..3 {
        if i == 2 {
            // 2^27 ns is 134 ms: the high bits differ from the previous record's.
            std::thread::sleep(Duration::from_millis(140));
        }
        let mut s = w.reserve(1, 1).unwrap();
        ts.push(s.timestamp());
        s.put_u8(i);
    }
    r.flush();
    let mut out = Vec::new();
    let info = r.read_packet(&mut out).unwrap().unwrap();
    assert_eq!(
        out.len(),
        5 + 5 + 14,
        "third record needs the extended header"
    );
    let recs = decode(&info, &out, |_| 1).unwrap();
    assert_eq!(recs.iter().map(|r| r.ts).collect::<Vec<_>>(), ts);
}

#[test]
fn flush_closes_only_a_partial_sub_buffer() {
    let (_fd, w, mut r) = buffer(layout(4096, 4, Mode::Discard), ClockSource::Tsc);
    let mut out = Vec::new();
    assert!(!r.flush(), "nothing written");
    assert!(r.read_packet(&mut out).unwrap().is_none());
    assert!(r.drained());
    write_seq(&w, 1, 1, 0);
    assert!(!r.has_data());
    assert!(!r.drained());
    assert!(r.flush());
    assert!(!r.flush(), "already closed");
    assert!(r.has_data());
    let info = r.read_packet(&mut out).unwrap().unwrap();
    assert_eq!(info.records, 1);
    assert!(r.drained());
    // The next record starts a new packet.
    write_seq(&w, 1, 1, 1);
    r.flush();
    let info2 = r.read_packet(&mut out).unwrap().unwrap();
    assert_eq!(info2.seq_num, 1);
    assert!(info2.timestamp_begin >= info.timestamp_end);
}

#[test]
fn oversized_payload_is_dropped_and_counted() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Discard), ClockSource::Monotonic);
    assert_eq!(w.max_payload(), 4096 - 14);
    assert!(w.reserve(1, 4096).is_none());
    assert!(w.reserve(1, usize::MAX).is_none());
    let s = w.reserve(1, w.max_payload()).expect("largest payload fits");
    drop(s);
    assert_eq!(w.events_discarded(), 2);
    r.flush();
    let mut out = Vec::new();
    let info = r.read_packet(&mut out).unwrap().unwrap();
    assert_eq!(info.records, 1);
    assert_eq!(info.events_discarded_total, 2);
    assert_eq!(out.len(), 4 + 4096 - 14);
}

#[test]
fn dropped_slot_commits_a_zero_filled_record() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Discard), ClockSource::Monotonic);
    // Stale bytes in the data area must not leak into the payload.
    for _ in 0..2 {
        let mut s = w.reserve(2, 12).unwrap();
        s.put_bytes(&[0xff; 12]);
    }
    r.flush();
    let mut out = Vec::new();
    r.read_packet(&mut out).unwrap().unwrap();
    for _ in 0..300 {
        let mut s = w.reserve(2, 12).unwrap();
        s.put_u32(0xabcd);
        // Too large for what is left: ignored, leaves the rest zero.
        s.put_bytes(&[1; 9]);
        assert_eq!(s.remaining(), 8);
    }
    r.flush();
    let mut total = 0;
    while let Some(info) = r.read_packet(&mut out).unwrap() {
        for rec in decode(&info, &out, |_| 12).unwrap() {
            assert_eq!(rec.payload[..4], 0xabcdu32.to_le_bytes());
            assert_eq!(rec.payload[4..], [0; 8]);
            total += 1;
        }
    }
    assert_eq!(total, 300);
}

#[test]
fn typed_puts_are_little_endian() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Discard), ClockSource::Monotonic);
    let s = "héllo\0ignored";
    let len = 1 + 2 + 4 + 8 + 1 + 2 + 4 + 8 + 4 + 8 + 1 + string_len(s) + 3;
    let mut slot = w.reserve(9, len).unwrap();
    slot.put_u8(1)
        .put_u16(0x0203)
        .put_u32(0x0405_0607)
        .put_u64(0x0809_0a0b_0c0d_0e0f)
        .put_i8(-1)
        .put_i16(-2)
        .put_i32(-3)
        .put_i64(-4)
        .put_f32(1.5)
        .put_f64(-2.25)
        .put_bool(true)
        .put_str(s)
        .put_bytes(b"xyz");
    assert_eq!(slot.remaining(), 0);
    slot.commit();
    r.flush();
    let mut out = Vec::new();
    let info = r.read_packet(&mut out).unwrap().unwrap();
    let rec = &decode(&info, &out, |_| len).unwrap()[0];
    let mut want = vec![1u8, 3, 2, 7, 6, 5, 4];
    want.extend(0x0809_0a0b_0c0d_0e0fu64.to_le_bytes());
    want.push(0xff);
    want.extend((-2i16).to_le_bytes());
    want.extend((-3i32).to_le_bytes());
    want.extend((-4i64).to_le_bytes());
    want.extend(1.5f32.to_le_bytes());
    want.extend((-2.25f64).to_le_bytes());
    want.push(1);
    want.extend("héllo".as_bytes());
    want.push(0);
    want.extend(b"xyz");
    assert_eq!(rec.payload, want);
}

#[test]
fn tiny_discard_buffer_accounts_for_every_event() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Discard), ClockSource::Tsc);
    let mut emitted = 0u64;
    let mut written = 0u64;
    for seq in 0..1000 {
        emitted += 1;
        written += u64::from(write_seq(&w, 5, 1, seq));
    }
    // Both sub-buffers full (24-byte records, at least one byte of padding each).
    assert!(
        (2 * (4095 / 33)..=2 * (4095 / 24)).contains(&written),
        "{written}"
    );
    assert_eq!(w.events_discarded(), emitted - written);
    let mut check = StreamCheck::default();
    r.flush();
    let got = drain(&mut r, &mut check);
    assert_eq!(got.len() as u64, written);
    // The reader freed the buffer: writing works again.
    for seq in 1000..1010 {
        emitted += 1;
        assert!(write_seq(&w, 100, 1, seq));
    }
    r.flush();
    let more = drain(&mut r, &mut check);
    assert_eq!(more.len(), 10);
    assert_eq!(more[0], (1, 1000));
    assert_eq!(check.records + final_lost(&mut r, &check), emitted);
}

#[test]
fn final_packet_carries_drops_after_the_last_packet() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Discard), ClockSource::Monotonic);
    for seq in 0..500 {
        write_seq(&w, 1, 1, seq);
    }
    let mut check = StreamCheck::default();
    r.flush();
    drain(&mut r, &mut check);
    assert!(r.final_packet().is_none(), "the last packet has the total");
    let lost_then = check.last_discarded;
    assert!(lost_then > 0);
    // Drops after the last packet (here: payloads too large) reach only the final packet.
    for _ in 0..100 {
        assert!(w.reserve(1, 1 << 20).is_none());
    }
    drain(&mut r, &mut check);
    let fin = r.final_packet().expect("drops after the last packet");
    assert_eq!(fin.records, 0);
    assert_eq!(fin.content_size, 0);
    assert_eq!(fin.events_discarded_total, lost_then + 100);
    assert!(fin.timestamp_begin >= check.last_end);
    assert_eq!(fin.seq_num, check.last_seq_num.unwrap() + 1);
    assert_eq!(check.records + fin.events_discarded_total, 600);
    assert!(r.final_packet().is_none(), "nothing new since");
    assert_eq!(r.events_discarded_total(), fin.events_discarded_total);
}

#[test]
fn overwrite_mode_keeps_the_newest_records() {
    let (_fd, w, mut r) = buffer(layout(4096, 4, Mode::Overwrite), ClockSource::Tsc);
    let n = 100_000u64;
    for seq in 0..n {
        assert!(write_seq(&w, 3, 1, seq), "overwrite mode never drops");
    }
    r.flush();
    let mut check = StreamCheck::default();
    let got = drain(&mut r, &mut check);
    assert!(got.len() >= 3 * 4095 / 24, "only {} records", got.len());
    let first = got[0].1;
    for (i, &(_, seq)) in got.iter().enumerate() {
        assert_eq!(seq, first + i as u64, "newest records, contiguous");
    }
    assert_eq!(got.last().unwrap().1, n - 1);
    // 100 000 records of 24 bytes fill about 590 sub-buffers.
    assert!(
        check.last_seq_num.unwrap() > 500,
        "gaps count overwritten packets"
    );
    assert_eq!(check.records + final_lost(&mut r, &check), n);
}

#[test]
fn overwrite_reader_keeps_up_between_laps() {
    let (_fd, w, mut r) = buffer(layout(4096, 2, Mode::Overwrite), ClockSource::Monotonic);
    let mut check = StreamCheck::default();
    let mut seq = 0;
    for round in 0..50 {
        for _ in 0..(round % 7) * 40 {
            write_seq(&w, 3, 1, seq);
            seq += 1;
        }
        drain(&mut r, &mut check);
    }
    r.flush();
    drain(&mut r, &mut check);
    assert_eq!(check.records + final_lost(&mut r, &check), seq);
}

#[test]
fn writers_wake_the_reader_only_when_it_waits() {
    let l = layout(4096, 4, Mode::Discard);
    let fd = create_buffer(&l, ClockSource::Monotonic, "wake").unwrap();
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap();
    let efd = OwnedFd::from(efd);
    let w = Writer::map(&fd, Some(efd.try_clone().unwrap())).unwrap();
    let mut r = Reader::map(&fd, Some(efd.try_clone().unwrap())).unwrap();
    let counter = |fd: &OwnedFd| {
        let mut buf = [0u8; 8];
        nix::unistd::read(fd, &mut buf).map(|_| u64::from_ne_bytes(buf))
    };
    let fill_one = |start: u64| {
        // 4096 / 24 = 170 records fill a sub-buffer; one more switches and completes it.
        for seq in start..start + 171 {
            assert!(write_seq(&w, 1, 1, seq));
        }
    };
    fill_one(0);
    assert_eq!(counter(&efd), Err(nix::errno::Errno::EAGAIN), "not armed");
    assert!(r.arm_wakeup(), "a complete sub-buffer is already there");
    r.disarm_wakeup();
    let mut out = Vec::new();
    while r.read_packet(&mut out).unwrap().is_some() {}
    assert!(!r.arm_wakeup(), "nothing complete");
    fill_one(171);
    fill_one(342);
    assert_eq!(counter(&efd), Ok(1), "one wake-up for two completions");
    r.disarm_wakeup();
    assert!(r.wait(Duration::from_millis(1)).unwrap());
    while r.read_packet(&mut out).unwrap().is_some() {}

    // A reader blocked in wait() is woken by a writer on another thread.
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            fill_one(513);
            done.store(true, Ordering::SeqCst);
        });
        let t = Instant::now();
        let mut woke = false;
        while t.elapsed() < Duration::from_secs(10) && !woke {
            woke = r.wait(Duration::from_secs(10)).unwrap();
        }
        assert!(woke);
        assert!(t.elapsed() < Duration::from_secs(5), "woken by the eventfd");
    });
    assert!(done.load(Ordering::SeqCst));
}

/// Fills sub-buffers behind a reservation that is never committed.
fn write_past(w: &Writer, seq: &mut u64, n: u64) -> u64 {
    let mut written = 0;
    for _ in 0..n {
        written += u64::from(write_seq(w, 1, 2, *seq));
        *seq += 1;
    }
    written
}

#[test]
fn killed_writer_is_released_after_the_timeout_only_if_a_writer_died() {
    let (_fd, w, mut r) = buffer(layout(4096, 4, Mode::Discard), ClockSource::Monotonic);
    let mut check = StreamCheck::default();
    let mut seq = 0;
    write_past(&w, &mut seq, 10);
    // A writer "dies" between reserve and commit: its slot is never committed.
    std::mem::forget(w.reserve(1, SEQ_PAYLOAD).unwrap());
    write_past(&w, &mut seq, 1000);
    let emitted = 10 + 1 + 1000;
    assert!(
        drain(&mut r, &mut check).is_empty(),
        "sub-buffer 0 never completes"
    );
    let t0 = Instant::now();
    let timeout = Duration::from_millis(100);
    assert_eq!(r.check_stuck(t0, timeout, true), StuckReport::default());
    assert_eq!(
        r.check_stuck(t0 + 2 * timeout, timeout, false),
        StuckReport::default(),
        "all writers alive: never released"
    );
    assert_eq!(
        r.check_stuck(t0 + timeout / 2, timeout, true),
        StuckReport::default(),
        "not stuck for long enough"
    );
    let rep = r.check_stuck(t0 + timeout, timeout, true);
    assert_eq!(rep.released, 1);
    // Sub-buffer 0 held the 10 records before the dead one and those after it that fit.
    let in_sb0 = (4095 - 10 * 24 - 24) / 24 + 10;
    assert_eq!(rep.events_lost, in_sb0 + 1);
    let got = drain(&mut r, &mut check);
    assert!(!got.is_empty());
    assert_eq!(got[0], (2, in_sb0));
    // Packet 0 is missing; 1 and 2 were read; sub-buffer 3 is open (full, it cannot
    // switch into sub-buffer 0's slot, a hole until the dead writer's commit arrives).
    assert_eq!(check.last_seq_num, Some(2));
    // Writers go on, skipping the dead sub-buffer's memory.
    write_past(&w, &mut seq, 2000);
    r.flush();
    drain(&mut r, &mut check);
    assert_eq!(check.records + final_lost(&mut r, &check), emitted + 2000);
}

#[test]
fn reader_skips_a_hole_at_the_write_position() {
    let (_fd, w, mut r) = buffer(layout(4096, 4, Mode::Discard), ClockSource::Monotonic);
    let mut check = StreamCheck::default();
    let mut seq = 0;
    write_past(&w, &mut seq, 10);
    std::mem::forget(w.reserve(1, SEQ_PAYLOAD).unwrap());
    write_past(&w, &mut seq, 1000);
    let t0 = Instant::now();
    r.check_stuck(t0, Duration::ZERO, true);
    assert_eq!(r.check_stuck(t0, Duration::ZERO, true).released, 1);
    // Sub-buffer 4 (slot 0) becomes a hole; sub-buffer 5 (slot 1) is not read yet: dropped.
    assert!(!write_seq(&w, 1, 2, seq));
    seq += 1;
    // The write position now sits right before the hole.
    assert!(r.flush());
    drain(&mut r, &mut check);
    assert!(r.drained(), "the hole at the write position is skipped");
    assert!(write_seq(&w, 1, 2, seq));
    seq += 1;
    assert!(!r.drained());
    r.flush();
    let got = drain(&mut r, &mut check);
    assert_eq!(got, [(2, seq - 1)]);
    assert!(r.drained());
    assert_eq!(check.records + final_lost(&mut r, &check), seq + 1);
}

#[test]
fn slow_writer_declared_dead_never_corrupts_a_later_lap() {
    let (_fd, w, mut r) = buffer(layout(4096, 4, Mode::Discard), ClockSource::Tsc);
    let mut check = StreamCheck::default();
    let mut seq = 0u64;
    let mut emitted = 0u64;
    write_past(&w, &mut seq, 5);
    let mut slow = w.reserve(1, SEQ_PAYLOAD).unwrap();
    emitted += 6;
    write_past(&w, &mut seq, 300);
    emitted += 300;
    let t0 = Instant::now();
    r.check_stuck(t0, Duration::ZERO, true);
    let rep = r.check_stuck(t0, Duration::ZERO, true);
    assert_eq!(rep.released, 1, "wrongly declared dead");
    // Many laps while the slow writer sleeps.
    for _ in 0..20 {
        write_past(&w, &mut seq, 500);
        emitted += 500;
        drain(&mut r, &mut check);
    }
    // It wakes up and writes into the memory it reserved, then commits.
    slow.put_u32(0xeeee_eeee).put_u64(u64::MAX).put_u64(0);
    slow.commit();
    for _ in 0..20 {
        write_past(&w, &mut seq, 500);
        emitted += 500;
        drain(&mut r, &mut check);
    }
    r.flush();
    drain(&mut r, &mut check);
    assert!(!check.per_writer.contains_key(&0xeeee_eeee));
    assert_eq!(check.records + final_lost(&mut r, &check), emitted);
    // Its late commit completed the quarantined sub-buffer: all 4 are usable again.
    let mut packets = 0;
    let mut out = Vec::new();
    while write_seq(&w, 1, 2, seq) {
        seq += 1;
        emitted += 1;
    }
    emitted += 1;
    r.flush();
    while let Some(info) = r.read_packet(&mut out).unwrap() {
        check.packet(&info, &out);
        packets += 1;
    }
    assert_eq!(packets, 4);
    assert_eq!(check.records + final_lost(&mut r, &check), emitted);
}

#[test]
fn a_new_reader_resumes_where_the_last_one_stopped() {
    let l = layout(4096, 4, Mode::Discard);
    let fd = create_buffer(&l, ClockSource::Monotonic, "reattach").unwrap();
    let w = Writer::map(&fd, None).unwrap();
    let mut check = StreamCheck::default();
    let mut seq = 0;
    write_past(&w, &mut seq, 400);
    {
        let mut r = Reader::map(&fd, None).unwrap();
        let mut out = Vec::new();
        let info = r.read_packet(&mut out).unwrap().unwrap();
        check.packet(&info, &out);
    }
    let mut r = Reader::map(&fd, None).unwrap();
    r.flush();
    drain(&mut r, &mut check);
    assert_eq!(check.last_seq_num, Some(2));
    assert_eq!(check.records, 400);
}

#[test]
fn threads_share_a_discard_buffer_exactly() {
    threaded_exact(Mode::Discard, ClockSource::Tsc, 4096, 20_000);
    threaded_exact(Mode::Discard, ClockSource::Monotonic, 16384, 20_000);
}

#[test]
fn threads_share_an_overwrite_buffer_exactly() {
    threaded_exact(Mode::Overwrite, ClockSource::Tsc, 4096, 20_000);
    threaded_exact(Mode::Overwrite, ClockSource::Monotonic, 16384, 20_000);
}

/// Three writer threads and a concurrent reader; checks order, timestamps and totals.
fn threaded_exact(mode: Mode, clock: ClockSource, subbuf_size: u32, per_thread: u64) {
    let l = layout(subbuf_size, 4, mode);
    let (_fd, w, r) = buffer(l, clock);
    let writers_done = AtomicBool::new(false);
    let threads = 3u32;
    let (mut r, check) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut r = r;
            let mut check = StreamCheck::default();
            while !writers_done.load(Ordering::SeqCst) {
                drain(&mut r, &mut check);
                std::thread::yield_now();
            }
            r.flush();
            drain(&mut r, &mut check);
            (r, check)
        });
        let writers: Vec<_> = (0..threads)
            .map(|t| {
                let w = &w;
                s.spawn(move || {
                    for seq in 0..per_thread {
                        write_seq(w, if seq % 3 == 0 { 200 } else { 4 }, t, seq);
                    }
                })
            })
            .collect();
        for h in writers {
            h.join().unwrap();
        }
        writers_done.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    assert!(r.drained());
    let lost = final_lost(&mut r, &check);
    assert!(check.records > 0);
    assert_eq!(
        check.records + lost,
        per_thread * u64::from(threads),
        "{mode:?} {clock:?}"
    );
}

#[test]
fn invalid_layouts_are_refused_at_creation() {
    let err = create_buffer(&layout(4096, 3, Mode::Discard), ClockSource::Tsc, "x").unwrap_err();
    assert!(matches!(
        err,
        CreateError::Layout(LayoutError::NumSubbufNotPowerOfTwo(3))
    ));
}

#[test]
fn writer_and_reader_are_thread_safe_types() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Writer>();
    fn send<T: Send>() {}
    send::<Reader>();
    let _ = PacketInfo {
        timestamp_begin: 0,
        timestamp_end: 0,
        content_size: 0,
        records: 0,
        events_discarded_total: 0,
        seq_num: 0,
    };
}

/// Pins the shared-memory ABI (header.rs): offsets and encodings other processes rely on.
#[test]
fn header_golden_bytes() {
    use std::os::unix::fs::FileExt;
    let l = layout(4096, 2, Mode::Discard);
    let fd = create_buffer(&l, ClockSource::Monotonic, "golden").unwrap();
    let file = std::fs::File::from(fd.try_clone().unwrap());
    let bytes = |off: u64, len: usize| {
        let mut b = vec![0; len];
        file.read_exact_at(&mut b, off).unwrap();
        b
    };
    let u64_at = |off| u64::from_le_bytes(bytes(off, 8).try_into().unwrap());
    assert_eq!(file.metadata().unwrap().len(), 4096 + 2 * 4096);
    let mut ident = Vec::new();
    ident.extend(b"DRTRRING");
    for v in [1u32, 4096, 4096, 2, 1, 2] {
        ident.extend(v.to_le_bytes());
    }
    ident.extend(12288u64.to_le_bytes());
    assert_eq!(bytes(0, 40), ident);
    assert!(
        bytes(40, 4096 - 40).iter().all(|&b| b == 0),
        "counters start at 0"
    );

    let w = Writer::map(&fd, None).unwrap();
    let mut s = w.reserve(3, 8).unwrap();
    let ts = s.timestamp();
    s.put_u64(0x1122_3344_5566_7788);
    s.commit();
    assert_eq!(u64_at(128), 12, "write_pos");
    assert_eq!(u64_at(136), ts, "last_ts");
    // Commit word of slot 0: 12 bytes in bits 0..13, one record from bit 13.
    assert_eq!(u64_at(512), 1 << 13 | 12);
    assert_eq!(u64_at(520), ts, "ts_begin");
    let low = u32::try_from(ts & 0x7ff_ffff).unwrap();
    assert_eq!(bytes(4096, 4), (3 | low << 5).to_le_bytes());
    assert_eq!(bytes(4100, 8), 0x1122_3344_5566_7788u64.to_le_bytes());

    let mut r = Reader::map(&fd, None).unwrap();
    r.flush();
    assert_eq!(
        u64_at(128),
        4096,
        "flush moved write_pos to the next sub-buffer"
    );
    assert_eq!(u64_at(512), 1 << 13 | 4096, "padding committed");
    assert!(u64_at(528) >= ts, "ts_end");
    assert_eq!(u64_at(536), 12, "content_end");
    let mut out = Vec::new();
    r.read_packet(&mut out).unwrap().unwrap();
    assert_eq!(
        u64_at(512),
        1 << 24 | 1 << 13 | 4096,
        "CONSUMED is bit 2*12"
    );
    assert_eq!(u64_at(392), 1, "read_pos");
    assert_eq!(u64_at(400), 1, "read_seq");
    assert!(w.reserve(1, 1 << 20).is_none());
    assert_eq!(u64_at(256), 1, "lost");
}
