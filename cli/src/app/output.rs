//! Printing results: plain text for people, or one JSON document per command.
//!
//! JSON documents are `{"type": T, "data": D}` on one line; `T` names the shape of `D`
//! (`session`, `sessions`, `destroyed`, `status`, `daemon_status`, `daemon_stopped`, `apps`,
//! `kernel_events`, `record`), so a reader dispatches on `type` and skips types it does not
//! know.

use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use drtrace_proto::control::{
    AppInfo, BufferMode, BufferOwnership, ChannelInfo, DaemonStatus, Domain, LogLevelFilter,
    SessionInfo, SessionState,
};
use drtrace_proto::event::{EventDescription, FieldType};
use drtrace_proto::hello::DaemonInfo;
use serde::Serialize;

use super::AppError;
use super::record::RecordDoc;
use crate::client::DaemonKind;
use crate::size::format_size;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
}

/// `data` of a `daemon_status` document.
#[derive(Serialize)]
struct DaemonState<'a> {
    running: bool,
    socket: &'a Path,
    daemon: Option<&'a DaemonStatus>,
}

/// `data` of a `daemon_stopped` document.
#[derive(Serialize)]
struct DaemonStopped<'a> {
    was_running: bool,
    pid: Option<u32>,
    socket: &'a Path,
}

pub(super) struct Printer<'a> {
    out: &'a mut dyn Write,
    json: bool,
    daemon: DaemonKind,
}

fn state_word(state: SessionState) -> &'static str {
    match state {
        SessionState::Active => "active",
        SessionState::Inactive => "inactive",
    }
}

fn ago(created_unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!("{} s ago", now.saturating_sub(created_unix_ms) / 1000)
}

fn filter_text(filter: Option<LogLevelFilter>) -> String {
    match filter {
        None => String::new(),
        Some(LogLevelFilter::AtLeast(l)) => format!(" (loglevel {l} or more severe)"),
        Some(LogLevelFilter::Exactly(l)) => format!(" (loglevel exactly {l})"),
    }
}

fn channel_line(c: &ChannelInfo) -> String {
    let cfg = &c.config;
    let mode = match cfg.mode {
        BufferMode::Discard => "discard",
        BufferMode::Overwrite => "overwrite",
    };
    let state = if c.enabled { "enabled" } else { "disabled" };
    if cfg.domain == Domain::Kernel {
        // Buffer sharing and the switch timer do not apply to the kernel's buffers.
        return format!(
            "{} [{state}]: {mode} mode, {} x {} sub-buffers per CPU",
            cfg.name,
            cfg.num_subbuf,
            format_size(cfg.subbuf_size),
        );
    }
    let buffers = match cfg.buffers {
        BufferOwnership::PerUid => "per-uid",
        BufferOwnership::PerPid => "per-pid",
    };
    let timer = match cfg.switch_timer_ms {
        0 => "switch timer off".to_owned(),
        ms => format!("switch timer {ms} ms"),
    };
    format!(
        "{} [{state}]: {mode} mode, {buffers} buffers, {} x {} sub-buffers per CPU, {timer}",
        cfg.name,
        cfg.num_subbuf,
        format_size(cfg.subbuf_size),
    )
}

/// A field type as `list -u` shows it (the names of `drtrace`'s JSON and of Rust).
fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::U8 => "u8",
        FieldType::U16 => "u16",
        FieldType::U32 => "u32",
        FieldType::U64 => "u64",
        FieldType::I8 => "i8",
        FieldType::I16 => "i16",
        FieldType::I32 => "i32",
        FieldType::I64 => "i64",
        FieldType::F32 => "f32",
        FieldType::F64 => "f64",
        FieldType::Bool => "bool",
        FieldType::String => "string",
        FieldType::Bytes => "bytes",
    }
}

/// `provider:event [level] (field: type, ...)`.
fn event_line(e: &EventDescription) -> String {
    let fields = e
        .fields
        .iter()
        .map(|f| format!("{}: {}", f.name, type_name(f.ty)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{} [{}] ({fields})", e.full_name(), e.loglevel)
}

impl<'a> Printer<'a> {
    /// A printer for the results of `daemon`'s requests.
    pub(super) fn new(out: &'a mut dyn Write, json: bool, daemon: DaemonKind) -> Self {
        Self { out, json, daemon }
    }

    /// The output, for commands that print more than one document or line by line.
    pub(super) fn into_inner(self) -> &'a mut dyn Write {
        self.out
    }

    fn doc<T: Serialize>(&mut self, kind: &str, data: T) -> Result<(), AppError> {
        serde_json::to_writer(&mut *self.out, &Envelope { kind, data })
            .map_err(|e| AppError::Output(io::Error::from(e)))?;
        self.line("")
    }

    fn line(&mut self, text: &str) -> Result<(), AppError> {
        writeln!(self.out, "{text}").map_err(AppError::Output)
    }

    pub(super) fn finish(&mut self) -> Result<(), AppError> {
        self.out.flush().map_err(AppError::Output)
    }

    pub(super) fn created(&mut self, s: &SessionInfo) -> Result<(), AppError> {
        if self.json {
            return self.doc("session", s);
        }
        self.line(&format!("Session {} created.", s.name))?;
        self.line(&format!("Traces will be written in {}", s.output.display()))
    }

    pub(super) fn session_changed(&mut self, s: &SessionInfo, msg: &str) -> Result<(), AppError> {
        if self.json {
            return self.doc("session", s);
        }
        self.line(msg)
    }

    pub(super) fn destroyed(&mut self, list: &[SessionInfo]) -> Result<(), AppError> {
        if self.json {
            return self.doc("destroyed", list);
        }
        if list.is_empty() {
            return self.line("No session to destroy.");
        }
        for s in list {
            self.line(&format!("Session {} destroyed.", s.name))?;
        }
        Ok(())
    }

    pub(super) fn sessions(&mut self, list: &[SessionInfo]) -> Result<(), AppError> {
        if self.json {
            return self.doc("sessions", list);
        }
        if list.is_empty() {
            return self.line("No sessions. Create one with 'drtrace create'.");
        }
        self.line("Sessions (* = current):")?;
        let width = list.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for s in list {
            let mark = if s.current { '*' } else { ' ' };
            self.line(&format!(
                "{mark} {:width$}  {:8}  {}",
                s.name,
                state_word(s.state),
                s.output.display()
            ))?;
        }
        Ok(())
    }

    fn details(&mut self, s: &SessionInfo, indent: &str) -> Result<(), AppError> {
        self.line(&format!("{indent}UUID:    {}", s.uuid))?;
        self.line(&format!("{indent}Trace:   {}", s.output.display()))?;
        self.line(&format!("{indent}Created: {}", ago(s.created_unix_ms)))?;
        if s.channels.is_empty() {
            return self.line(&format!(
                "{indent}No channels yet: enable events with 'drtrace enable-event -u PATTERN' \
                 or 'drtrace enable-event -k EVENT'."
            ));
        }
        for (domain, title) in [
            (Domain::User, "Channels (userspace):"),
            (Domain::Kernel, "Channel (kernel):"),
        ] {
            let mut channels = s.channels.iter().filter(|c| c.config.domain == domain);
            let Some(first) = channels.next() else {
                continue;
            };
            self.line(&format!("{indent}{title}"))?;
            for c in std::iter::once(first).chain(channels) {
                self.line(&format!("{indent}  {}", channel_line(c)))?;
                if c.events.is_empty() {
                    self.line(&format!("{indent}    no event rules"))?;
                }
                for e in &c.events {
                    self.line(&format!(
                        "{indent}    {} [{}]{}",
                        e.rule.pattern,
                        if e.enabled { "enabled" } else { "disabled" },
                        filter_text(e.rule.loglevel)
                    ))?;
                }
            }
        }
        Ok(())
    }

    /// After a stop or destroy: each problem the daemon reported with the trace, as one
    /// `warning:` line on stderr (the JSON document carries them in `stats.errors`).
    pub(super) fn trace_warnings(&mut self, s: &SessionInfo) -> Result<(), AppError> {
        let Some(stats) = s.stats.as_ref().filter(|st| !st.errors.is_empty()) else {
            return Ok(());
        };
        if self.json {
            return Ok(());
        }
        // Our own output first, so that the warnings come after it in a shared terminal.
        self.out.flush().map_err(AppError::Output)?;
        let mut err = io::stderr().lock();
        for e in &stats.errors {
            // Nothing better to do if stderr is gone.
            let _ = writeln!(
                err,
                "warning: session {}: {}",
                s.name,
                e.replace(['\n', '\r'], " ")
            );
        }
        Ok(())
    }

    pub(super) fn session_details(&mut self, s: &SessionInfo) -> Result<(), AppError> {
        if self.json {
            return self.doc("session", s);
        }
        let current = if s.current { " (current)" } else { "" };
        self.line(&format!(
            "Session {} [{}]{current}",
            s.name,
            state_word(s.state)
        ))?;
        self.details(s, "  ")
    }

    fn daemon_lines(&mut self, st: &DaemonStatus) -> Result<(), AppError> {
        let d = &st.daemon;
        self.line(&format!(
            "Daemon:  {} pid {} (uid {}), drtrace {}, protocol {}.{}, up {} s",
            self.daemon.binary_name(),
            d.pid,
            d.uid,
            d.version,
            d.major,
            d.minor,
            st.uptime_s
        ))?;
        self.line(&format!("Socket:  {}", st.socket.display()))?;
        if let Some(log) = &st.log_file {
            self.line(&format!("Log:     {}", log.display()))?;
        }
        Ok(())
    }

    pub(super) fn status(&mut self, st: &DaemonStatus) -> Result<(), AppError> {
        if self.json {
            return self.doc("status", st);
        }
        self.daemon_lines(st)?;
        self.line(&format!("Sessions: {}", st.sessions.len()))?;
        let current = st
            .current_session
            .as_deref()
            .and_then(|name| st.sessions.iter().find(|s| s.name == name));
        match current {
            None => self.line("Current session: none"),
            Some(s) => {
                self.line(&format!(
                    "Current session: {} [{}]",
                    s.name,
                    state_word(s.state)
                ))?;
                self.details(s, "  ")
            }
        }
    }

    pub(super) fn apps(&mut self, apps: &[AppInfo]) -> Result<(), AppError> {
        if self.json {
            return self.doc("apps", apps);
        }
        if apps.is_empty() {
            return self.line(
                "No registered applications. Applications linked with drtrace register when they start.",
            );
        }
        self.line("Registered applications (userspace):")?;
        for a in apps {
            let events = match a.events.len() {
                1 => "1 event".to_owned(),
                n => format!("{n} events"),
            };
            self.line(&format!(
                "  pid {} (uid {}): {}, {events}",
                a.pid, a.uid, a.procname
            ))?;
            for e in &a.events {
                self.line(&format!("    {}", event_line(e)))?;
            }
        }
        Ok(())
    }

    pub(super) fn kernel_events(&mut self, events: &[String]) -> Result<(), AppError> {
        if self.json {
            return self.doc("kernel_events", events);
        }
        if events.is_empty() {
            return self.line("No kernel events are available.");
        }
        self.line(&format!("Kernel events ({}):", events.len()))?;
        for e in events {
            self.line(&format!("  {e}"))?;
        }
        Ok(())
    }

    pub(super) fn record(&mut self, doc: &RecordDoc<'_>) -> Result<(), AppError> {
        self.doc("record", doc)
    }

    pub(super) fn daemon_status(&mut self, st: &DaemonStatus) -> Result<(), AppError> {
        if self.json {
            return self.doc(
                "daemon_status",
                DaemonState {
                    running: true,
                    socket: &st.socket,
                    daemon: Some(st),
                },
            );
        }
        self.daemon_lines(st)?;
        self.line(&format!("Sessions: {}", st.sessions.len()))
    }

    pub(super) fn daemon_not_running(&mut self, socket: &Path) -> Result<(), AppError> {
        if self.json {
            return self.doc(
                "daemon_status",
                DaemonState {
                    running: false,
                    socket,
                    daemon: None,
                },
            );
        }
        self.line(&format!(
            "No {} running (socket {}).",
            self.daemon_word(),
            socket.display()
        ))
    }

    fn daemon_word(&self) -> &'static str {
        match self.daemon {
            DaemonKind::Sessiond => "daemon",
            DaemonKind::Broker => "broker",
        }
    }

    fn daemon_title(&self) -> &'static str {
        match self.daemon {
            DaemonKind::Sessiond => "Daemon",
            DaemonKind::Broker => "Broker",
        }
    }

    pub(super) fn daemon_stopped(
        &mut self,
        info: Option<&DaemonInfo>,
        socket: &Path,
    ) -> Result<(), AppError> {
        if self.json {
            return self.doc(
                "daemon_stopped",
                DaemonStopped {
                    was_running: info.is_some(),
                    pid: info.map(|d| d.pid),
                    socket,
                },
            );
        }
        match info {
            Some(d) => self.line(&format!("{} pid {} stopped.", self.daemon_title(), d.pid)),
            None => self.line(&format!("No {} running.", self.daemon_word())),
        }
    }
}
