//! Timestamps: the TSC where it is invariant and calibrated, CLOCK_MONOTONIC otherwise.
//!
//! The clock kind of a buffer is fixed when the session daemon creates it and stored in the
//! header; every writer of that buffer reads the same clock, inside its reservation loop.
//!
//! # Ordering
//!
//! [`read`] is an *ordered* read: on x86_64 `rdtscp`, which cannot execute before the load
//! of the write position that precedes it in the reserve loop. That is what makes "reserve order == timestamp order" hold across CPUs: a writer
//! whose compare-and-swap follows another's has loaded that other's position, and only then
//! reads the clock. (CLOCK_MONOTONIC in the vDSO already orders its own TSC read.)
//!
//! # Converting TSC values
//!
//! [`calibrate_tsc`] fits `mono_ns = offset_ns + tsc * 1e9 / freq_hz` from bracketed samples
//! and refuses a TSC that is not invariant or whose fit is poor. The metadata writer puts
//! `freq_hz` and the offset into the CTF clock class.

use std::time::{Duration, Instant};

/// Which clock timestamps a buffer's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockSource {
    /// The CPU's time-stamp counter (x86_64 `rdtsc`), in cycles. Use only after
    /// [`calibrate_tsc`] succeeded; on other architectures it reads CLOCK_MONOTONIC.
    Tsc,
    /// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
    Monotonic,
}

impl ClockSource {
    /// The value stored in the buffer header.
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            ClockSource::Tsc => 1,
            ClockSource::Monotonic => 2,
        }
    }

    /// Parses the header value written by [`ClockSource::to_raw`].
    pub(crate) fn from_raw(raw: u32) -> Option<ClockSource> {
        match raw {
            1 => Some(ClockSource::Tsc),
            2 => Some(ClockSource::Monotonic),
            _ => None,
        }
    }
}

/// Reads `source` (ordered, see the module docs).
#[inline]
pub fn read(source: ClockSource) -> u64 {
    match source {
        ClockSource::Tsc => tsc(),
        ClockSource::Monotonic => monotonic_ns(),
    }
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC is always supported,
    // so the call only writes `ts` (it cannot fail on Linux).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Ordered TSC read: `rdtscp`.
///
/// The reservation reads the clock after loading the write position, and the record's
/// timestamp must not be older than the one it follows: `rdtscp` waits until every earlier
/// instruction has executed and every earlier load is globally visible, which is the
/// ordering needed, and measured here as cheaper than `lfence; rdtsc` (17.2 against 17.8 ns
/// alone, and 2-4 ns less in the emit path, where the fence also drained the pipeline).
#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    let mut aux = 0u32;
    // SAFETY: `rdtscp` is present: `tsc_invariant`, which decides whether a buffer may use
    // the TSC clock at all, requires the CPU's `rdtscp` flag; Linux allows it in user mode
    // (CR4.TSD is clear). It only writes `aux`, a local.
    unsafe { core::arch::x86_64::__rdtscp(&mut aux) }
}

/// Without a TSC, the TSC clock reads CLOCK_MONOTONIC.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn tsc() -> u64 {
    monotonic_ns()
}

/// True when the TSC can be a clock: x86_64, `/proc/cpuinfo` lists `constant_tsc`
/// (fixed rate across frequency changes), `nonstop_tsc` (keeps counting in deep C-states)
/// and `rdtscp` (the ordered read the writers use) on every CPU, and the kernel's current clocksource is `tsc` (it found the
/// counters synchronized across CPUs and has not marked them unstable since).
pub fn tsc_invariant() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    // The kernel checks TSC synchronization across CPUs at boot and keeps watching it; if
    // it switched to another clocksource, the TSC is not one clock for all CPUs.
    let kernel_trusts_tsc =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .is_ok_and(|s| s.trim() == "tsc");
    cpuinfo_has_invariant_tsc(&cpuinfo) && kernel_trusts_tsc
}

/// True when every `flags` line of a `/proc/cpuinfo` text has the invariant-TSC flags and
/// `rdtscp`.
fn cpuinfo_has_invariant_tsc(cpuinfo: &str) -> bool {
    let mut seen = false;
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != "flags" {
            continue;
        }
        seen = true;
        let mut flags = value.split_whitespace();
        let has = |f: &str, flags: &mut std::str::SplitWhitespace<'_>| flags.any(|x| x == f);
        if !has("constant_tsc", &mut flags.clone())
            || !has("nonstop_tsc", &mut flags.clone())
            || !has("rdtscp", &mut flags)
        {
            return false;
        }
    }
    seen
}

/// A fitted line from TSC cycles to CLOCK_MONOTONIC nanoseconds:
/// `mono_ns = offset_ns + tsc * 1e9 / freq_hz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscCalibration {
    /// TSC frequency in Hz (the CTF clock's `freq`).
    pub freq_hz: u64,
    /// CLOCK_MONOTONIC nanoseconds at TSC value 0 (may be negative).
    pub offset_ns: i64,
    /// Largest distance between a sample and the fitted line, in nanoseconds.
    pub max_residual_ns: u64,
    /// Samples the fit used.
    pub samples: u32,
}

impl TscCalibration {
    /// Converts a TSC value to CLOCK_MONOTONIC nanoseconds (saturating at 0 and `u64::MAX`).
    pub fn tsc_to_mono_ns(&self, tsc: u64) -> u64 {
        let ns = i128::from(self.offset_ns)
            + i128::from(tsc) * 1_000_000_000 / i128::from(self.freq_hz.max(1));
        u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
    }
}

/// Number of sample points of a calibration.
const CAL_POINTS: usize = 24;
/// Time between sample points (24 points: about 30 ms in all).
const CAL_SPACING: Duration = Duration::from_micros(1250);
/// Brackets tried per point; the narrowest is kept.
const CAL_TRIES: usize = 8;
/// A bracket wider than this (a preemption in the middle) is not used.
const CAL_MAX_BRACKET_NS: u64 = 20_000;
/// Fewest usable points for a fit.
const CAL_MIN_POINTS: usize = 12;
/// A fit with a sample farther than this from the line is refused.
const CAL_MAX_RESIDUAL_NS: u64 = 5_000;

/// Measures the TSC against CLOCK_MONOTONIC over about 30 ms.
///
/// Returns `None` when the TSC is not usable: not x86_64, not invariant or not trusted by
/// the kernel (see [`tsc_invariant`]), too few clean samples, an implausible frequency, or
/// a sample more than 5 µs off the fitted line.
pub fn calibrate_tsc() -> Option<TscCalibration> {
    if !tsc_invariant() {
        return None;
    }
    let mut points: Vec<(u64, u64)> = Vec::with_capacity(CAL_POINTS);
    let start = Instant::now();
    for i in 0..CAL_POINTS {
        let mut best: Option<(u64, u64, u64)> = None;
        for _ in 0..CAL_TRIES {
            let m0 = monotonic_ns();
            let t = tsc();
            let m1 = monotonic_ns();
            let width = m1.saturating_sub(m0);
            if best.is_none_or(|(w, _, _)| width < w) {
                best = Some((width, t, m0 / 2 + m1 / 2 + (m0 % 2 + m1 % 2) / 2));
            }
        }
        if let Some((width, t, mid)) = best
            && width <= CAL_MAX_BRACKET_NS
        {
            points.push((t, mid));
        }
        let due = CAL_SPACING * u32::try_from(i + 1).unwrap_or(u32::MAX);
        if let Some(rest) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    fit(&points)
}

/// Least-squares fit of `mono = a + b * tsc` over `(tsc, mono_ns)` points.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "deltas over ~30 ms are far below 2^52; results are range-checked"
)]
fn fit(points: &[(u64, u64)]) -> Option<TscCalibration> {
    if points.len() < CAL_MIN_POINTS {
        return None;
    }
    let (t0, m0) = points[0];
    let n = points.len() as f64;
    let xs: Vec<f64> = points
        .iter()
        .map(|&(t, _)| t.wrapping_sub(t0) as f64)
        .collect();
    let ys: Vec<f64> = points
        .iter()
        .map(|&(_, m)| m.wrapping_sub(m0) as f64)
        .collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let ns_per_tick = sxy / sxx;
    if !(ns_per_tick.is_finite() && ns_per_tick > 0.0) {
        return None;
    }
    let freq = 1e9 / ns_per_tick;
    if !(1e7..=2e10).contains(&freq) {
        return None;
    }
    let freq_hz = freq.round() as u64;
    // Anchor the integer line at the centroid of the samples.
    let tc = i128::from(t0) + mx.round() as i128;
    let mc = i128::from(m0) + my.round() as i128;
    let offset = mc - tc * 1_000_000_000 / i128::from(freq_hz);
    let offset_ns = i64::try_from(offset).ok()?;
    let mut cal = TscCalibration {
        freq_hz,
        offset_ns,
        max_residual_ns: 0,
        samples: u32::try_from(points.len()).ok()?,
    };
    for &(t, m) in points {
        let r = cal.tsc_to_mono_ns(t).abs_diff(m);
        cal.max_residual_ns = cal.max_residual_ns.max(r);
    }
    (cal.max_residual_ns <= CAL_MAX_RESIDUAL_NS).then_some(cal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_reads_never_go_back() {
        let mut last = monotonic_ns();
        for _ in 0..10_000 {
            let now = read(ClockSource::Monotonic);
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn tsc_reads_never_go_back_on_one_thread() {
        let mut last = read(ClockSource::Tsc);
        for _ in 0..10_000 {
            let now = read(ClockSource::Tsc);
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn cpuinfo_flags_are_required_on_every_cpu() {
        let good = "processor: 0\nflags\t: fpu tsc rdtscp constant_tsc nonstop_tsc\n";
        assert!(cpuinfo_has_invariant_tsc(good));
        let two = format!("{good}processor: 1\nflags\t: fpu tsc rdtscp constant_tsc\n");
        assert!(!cpuinfo_has_invariant_tsc(&two));
        // Without rdtscp the writers' ordered read is missing: no TSC clock.
        let no_rdtscp = "processor: 0\nflags\t: fpu tsc constant_tsc nonstop_tsc\n";
        assert!(!cpuinfo_has_invariant_tsc(no_rdtscp));
        assert!(!cpuinfo_has_invariant_tsc("processor: 0\n"));
    }

    #[test]
    fn fit_recovers_a_known_line_and_refuses_noise() {
        // 3 GHz, TSC 1e12 at mono 5e9 ns.
        let points: Vec<(u64, u64)> = (0..20u64)
            .map(|i| {
                let t = 1_000_000_000_000 + i * 3_000_000;
                (t, 5_000_000_000 + i * 1_000_000)
            })
            .collect();
        let cal = fit(&points).unwrap();
        assert_eq!(cal.freq_hz, 3_000_000_000);
        assert_eq!(cal.tsc_to_mono_ns(1_000_000_000_000), 5_000_000_000);
        assert!(cal.max_residual_ns <= 1);
        let mut noisy = points.clone();
        noisy[7].1 += 50_000;
        assert!(fit(&noisy).is_none());
        assert!(fit(&points[..5]).is_none());
    }

    #[test]
    fn calibration_tracks_clock_monotonic_when_the_tsc_is_invariant() {
        if !tsc_invariant() {
            eprintln!("skipping: no invariant TSC on this host");
            return;
        }
        // A busy host can spoil one run; three in a row cannot all be spoiled by chance.
        let cal = (0..3).find_map(|_| calibrate_tsc());
        let cal = cal.expect("invariant TSC but calibration failed three times");
        for _ in 0..5 {
            let m0 = monotonic_ns();
            let t = read(ClockSource::Tsc);
            let m1 = monotonic_ns();
            let conv = cal.tsc_to_mono_ns(t);
            assert!(
                conv + 50_000 >= m0 && conv <= m1 + 50_000,
                "{conv} not within 50 us of [{m0}, {m1}]: {cal:?}"
            );
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}
