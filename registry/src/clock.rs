//! Clocks and times: the engine's clock choice (below), and the boot id, realtime offset and
//! dates that every trace's metadata needs.
//!
//! The session daemon's clock choice, made once at start-up and written into every buffer
//! header (which the writers read) and every metadata file (which the viewers read).
//!
//! The TSC costs 12 ns to read here against 33 ns for `clock_gettime`, so it is used when it
//! is invariant and its calibration against CLOCK_MONOTONIC is good; the metadata's clock
//! then has the TSC's frequency and an offset that maps it onto CLOCK_MONOTONIC, keeping one
//! clock domain with the kernel. `DRTRACE_CLOCK=monotonic` forces `clock_gettime`.

use drtrace_ctf::metadata::ClockInfo;
use drtrace_ringbuf::ClockSource;
use nix::time::{ClockId, clock_gettime};
use std::time::SystemTime;

use uuid::Uuid;

/// Environment variable forcing the clock: `monotonic` or `tsc`.
pub(crate) const ENV_CLOCK: &str = "DRTRACE_CLOCK";

/// The chosen clock and how its cycles map to CLOCK_MONOTONIC.
#[derive(Debug, Clone)]
pub(crate) struct ClockSetup {
    pub(crate) source: ClockSource,
    freq: u64,
    offset_ns: i64,
    precision: u64,
    boot_id: Uuid,
}

impl ClockSetup {
    /// Calibrates the TSC, falling back to CLOCK_MONOTONIC nanoseconds.
    pub(crate) fn detect() -> Self {
        let boot_id = boot_id();
        let forced = std::env::var(ENV_CLOCK).unwrap_or_default();
        if forced != "monotonic" {
            if let Some(cal) = drtrace_ringbuf::clock::calibrate_tsc() {
                log::info!(
                    "clock: TSC at {} Hz, calibrated against CLOCK_MONOTONIC",
                    cal.freq_hz
                );
                return Self {
                    source: ClockSource::Tsc,
                    freq: cal.freq_hz,
                    offset_ns: cal.offset_ns,
                    precision: cal.freq_hz / 1_000_000,
                    boot_id,
                };
            }
            if forced == "tsc" {
                log::warn!("clock: the TSC is not usable here; using CLOCK_MONOTONIC");
            }
        }
        log::info!("clock: CLOCK_MONOTONIC nanoseconds");
        Self {
            source: ClockSource::Monotonic,
            freq: 1_000_000_000,
            offset_ns: 0,
            precision: 1,
            boot_id,
        }
    }

    /// The metadata clock, with CLOCK_REALTIME - CLOCK_MONOTONIC sampled now.
    pub(crate) fn clock_info(&self) -> ClockInfo {
        ClockInfo {
            boot_id: self.boot_id,
            freq: self.freq,
            offset_ns: self.offset_ns,
            mono_to_realtime_ns: mono_to_realtime_ns(),
            precision: self.precision.max(1),
        }
    }
}

fn ns(id: ClockId) -> i128 {
    clock_gettime(id)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0)
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, from the tightest of a few bracketed samples.
pub fn mono_to_realtime_ns() -> i64 {
    let mut best: Option<(i128, i128)> = None;
    for _ in 0..5 {
        let m0 = ns(ClockId::CLOCK_MONOTONIC);
        let r = ns(ClockId::CLOCK_REALTIME);
        let m1 = ns(ClockId::CLOCK_MONOTONIC);
        let width = m1 - m0;
        let offset = r - (m0 + m1) / 2;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
    }
    best.and_then(|(_, o)| i64::try_from(o).ok()).unwrap_or(0)
}

/// The boot id, the uuid of the clock shared by userspace and kernel traces.
pub fn boot_id() -> Uuid {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
        .unwrap_or_else(Uuid::nil)
}

/// `YYYYmmdd<sep>HHMMSS<suffix>` in UTC.
pub fn compact_utc(t: SystemTime, sep: &str, suffix: &str) -> String {
    let iso = drtrace_daemon::logging::utc_timestamp(t); // YYYY-MM-DDTHH:MM:SS.mmmZ
    let date: String = iso[..10].chars().filter(|c| *c != '-').collect();
    let time: String = iso[11..19].chars().filter(|c| *c != ':').collect();
    format!("{date}{sep}{time}{suffix}")
}
