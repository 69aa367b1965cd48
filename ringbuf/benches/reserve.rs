//! Micro benchmark: `cargo bench -p drtrace-ringbuf`.
//!
//! Measures reserve + one 8-byte payload + commit, in ns per event, with plain `Instant`
//! loops (no criterion). Each case runs 11 repetitions and prints the median and the
//! spread, and how many reservations were refused (dropped). Overwrite mode is used where
//! no reader runs, so only contention could refuse one.

fn main() {
    // The loom build has no mapped buffers to measure.
    #[cfg(not(loom))]
    bench::main();
}

#[cfg(not(loom))]
mod bench {
    use drtrace_ringbuf::{ClockSource, Layout, Mode, Reader, Writer, create_buffer};
    use std::hint::black_box;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;

    const ITERS: u64 = 2_000_000;
    const REPS: usize = 11;

    fn writer(mode: Mode, clock: ClockSource) -> (std::os::fd::OwnedFd, Writer) {
        let layout = Layout {
            subbuf_size: 1 << 20,
            num_subbuf: 4,
            mode,
        };
        let fd = create_buffer(&layout, clock, "bench").unwrap();
        let w = Writer::map(&fd, None).unwrap();
        (fd, w)
    }

    /// Reservations refused so far (all benchmark threads).
    static REFUSED: AtomicU64 = AtomicU64::new(0);

    /// One timed loop; returns ns per event.
    fn events(w: &Writer, n: u64) -> f64 {
        let mut refused = 0;
        let t = Instant::now();
        for i in 0..n {
            if let Some(mut s) = w.reserve(5, 8) {
                s.put_u64(black_box(i));
                s.commit();
            } else {
                refused += 1;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        REFUSED.fetch_add(refused, Ordering::Relaxed);
        ns
    }

    fn report(label: &str, mut samples: Vec<f64>) {
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        let refused = REFUSED.swap(0, Ordering::Relaxed);
        println!(
            "{label:<52} median {median:6.1} ns/op   min {:6.1}   max {:6.1}   refused {refused}",
            samples[0],
            samples[samples.len() - 1]
        );
    }

    /// `threads` writers, each on its own buffer or all on one.
    fn threaded(label: &str, clock: ClockSource, threads: usize, shared: bool) {
        let bufs: Vec<_> = (0..if shared { 1 } else { threads })
            .map(|_| writer(Mode::Overwrite, clock))
            .collect();
        let barrier = Barrier::new(threads);
        let mut samples = Vec::new();
        for _ in 0..REPS {
            let per_thread: Vec<f64> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        let w = &bufs[if shared { 0 } else { t }].1;
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            events(w, ITERS)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            samples.push(per_thread.iter().sum::<f64>() / per_thread.len() as f64);
        }
        report(label, samples);
    }

    /// One writer in discard mode while a reader thread drains the buffer (refusals are
    /// events dropped because the reader fell behind).
    fn with_reader(label: &str, clock: ClockSource) {
        let (fd, w) = writer(Mode::Discard, clock);
        let mut r = Reader::map(&fd, None).unwrap();
        let stop = AtomicBool::new(false);
        let mut samples = Vec::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut out = Vec::with_capacity(1 << 20);
                while !stop.load(Ordering::Relaxed) {
                    if r.read_packet(&mut out).unwrap().is_none() {
                        std::thread::yield_now();
                    }
                }
            });
            for _ in 0..REPS {
                samples.push(events(&w, ITERS));
            }
            stop.store(true, Ordering::Relaxed);
        });
        report(label, samples);
    }

    pub(crate) fn main() {
        // `cargo bench` passes `--bench`; a filter argument is not supported (all cases run).
        println!("reserve + put_u64 + commit, {ITERS} events x {REPS} runs");
        threaded("1 thread, tsc", ClockSource::Tsc, 1, false);
        threaded(
            "1 thread, clock_gettime(MONOTONIC)",
            ClockSource::Monotonic,
            1,
            false,
        );
        threaded(
            "2 threads, one buffer each (per-cpu), tsc",
            ClockSource::Tsc,
            2,
            false,
        );
        threaded(
            "2 threads, one shared buffer (contended), tsc",
            ClockSource::Tsc,
            2,
            true,
        );
        with_reader(
            "1 thread, discard mode, reader draining, tsc",
            ClockSource::Tsc,
        );
        let t = Instant::now();
        let n = 10_000_000;
        let mut acc = 0u64;
        for _ in 0..n {
            acc = acc.wrapping_add(drtrace_ringbuf::clock::read(ClockSource::Tsc));
        }
        black_box(acc);
        println!(
            "{:<52} {:6.1} ns/op",
            "(reference: clock::read(Tsc), rdtscp)",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
