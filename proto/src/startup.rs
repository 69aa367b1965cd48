//! The one line a daemon started with `--detach` writes to its standard output, so the
//! process that spawned it learns the outcome without sleeping or polling.
//!
//! ```text
//! ready <pid>        listening and answering
//! running <pid>      another daemon already serves this socket (the starter exits 0)
//! error <message>    start-up failed (the starter exits non-zero)
//! ```

/// The outcome of a daemon's start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// This daemon is listening and answering.
    Ready {
        /// Its pid.
        pid: i32,
    },
    /// Another live daemon already serves the socket.
    AlreadyRunning {
        /// That daemon's pid.
        pid: i32,
    },
    /// Start-up failed.
    Failed {
        /// Why, one line.
        message: String,
    },
}

impl Readiness {
    /// The line to write, newline included.
    pub fn to_line(&self) -> String {
        match self {
            Readiness::Ready { pid } => format!("ready {pid}\n"),
            Readiness::AlreadyRunning { pid } => format!("running {pid}\n"),
            Readiness::Failed { message } => {
                format!("error {}\n", message.replace(['\n', '\r'], " "))
            }
        }
    }

    /// Parses a line written by [`to_line`](Self::to_line).
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (word, rest) = line.split_once(' ')?;
        match word {
            "ready" => Some(Readiness::Ready {
                pid: rest.parse().ok()?,
            }),
            "running" => Some(Readiness::AlreadyRunning {
                pid: rest.parse().ok()?,
            }),
            "error" => Some(Readiness::Failed {
                message: rest.to_owned(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for r in [
            Readiness::Ready { pid: 12 },
            Readiness::AlreadyRunning { pid: 7 },
            Readiness::Failed {
                message: "socket owned by uid 1001".into(),
            },
        ] {
            assert_eq!(Readiness::parse(&r.to_line()), Some(r));
        }
        assert_eq!(
            Readiness::Failed {
                message: "a\nb".into()
            }
            .to_line(),
            "error a b\n"
        );
        assert_eq!(Readiness::parse("garbage"), None);
        assert_eq!(Readiness::parse("ready x"), None);
    }
}
