//! A small line logger behind the `log` facade.
//!
//! Daemons log to `<state dir>/drtrace/<name>.log` (the `directories` crate's state
//! directory: `$XDG_STATE_HOME`, or `~/.local/state`) or to the file given with `--log-file`;
//! `-` means standard error. Lines look like
//! `2026-11-27T07:11:36.123Z INFO  sessiond[4242] listening on /tmp/ltt-sessiond-alice`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a daemon named `name` logs by default, if the user has a state directory.
pub fn default_log_file(name: &str) -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "drtrace")?;
    Some(dirs.state_dir()?.join(format!("{name}.log")))
}

enum Sink {
    File(File),
    Stderr,
}

struct LineLogger {
    name: &'static str,
    pid: u32,
    level: log::LevelFilter,
    sink: Mutex<Sink>,
}

impl log::Log for LineLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} {:<5} {}[{}] {}\n",
            utc_timestamp(SystemTime::now()),
            record.level(),
            self.name,
            self.pid,
            record.args()
        );
        // A poisoned lock only means another thread panicked mid-write; keep logging.
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        // Logging must never take the daemon down: a full disk loses log lines, not service.
        let _ = match &mut *sink {
            Sink::File(f) => f.write_all(line.as_bytes()),
            Sink::Stderr => io::stderr().write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match &mut *sink {
            Sink::File(f) => f.flush(),
            Sink::Stderr => io::stderr().flush(),
        };
    }
}

/// Installs the logger for the daemon `name`, writing to `path` (`-` = stderr); returns the
/// file it writes to. Creates the parent directory (mode 0700) if needed.
pub fn init(
    name: &'static str,
    path: &Path,
    level: log::LevelFilter,
) -> io::Result<Option<PathBuf>> {
    let (sink, file) = if path == Path::new("-") {
        (Sink::Stderr, None)
    } else {
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        (Sink::File(f), Some(path.to_owned()))
    };
    let logger = LineLogger {
        name,
        pid: std::process::id(),
        level,
        sink: Mutex::new(sink),
    };
    log::set_boxed_logger(Box::new(logger))
        .map_err(|_| io::Error::other("a logger is already installed"))?;
    log::set_max_level(level);
    Ok(file)
}

use std::os::unix::fs::DirBuilderExt;

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_763_496_123);
        assert_eq!(utc_timestamp(t), "2026-11-27T07:11:36.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
