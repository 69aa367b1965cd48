//! The session registry: sessions, their channels and event rules, and the current session.
//!
//! Pure bookkeeping with no I/O besides creating a session's (empty) trace directory, so that
//! every rule of DESIGN.md "Sessions" is checked here and unit-tested: names, the
//! never-overwrite rule, the current session, state transitions.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use drtrace_proto::control::{
    ChannelConfig, ChannelInfo, CreateSession, DEFAULT_CHANNEL, Domain, EventRule, EventRuleInfo,
    OutputLocation, SessionInfo, SessionState, TraceStats,
};
use drtrace_proto::error::{ErrorCode, WireError};
use drtrace_proto::names::{check_event_pattern, check_name};
use uuid::Uuid;

/// Most sessions one daemon holds.
pub(crate) const MAX_SESSIONS: usize = 256;
/// Most event rules one channel holds.
pub(crate) const MAX_RULES_PER_CHANNEL: usize = 1024;

fn err(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError::new(code, message)
}

/// A channel in a session.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) config: ChannelConfig,
    pub(crate) enabled: bool,
    pub(crate) rules: Vec<EventRuleInfo>,
}

/// A tracing session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Identifies the session to apps and the consumer for this daemon's lifetime.
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) uuid: Uuid,
    pub(crate) output: PathBuf,
    pub(crate) state: SessionState,
    /// True once the session has been started: channels are fixed from then on.
    pub(crate) ever_started: bool,
    pub(crate) created_unix_ms: u64,
    pub(crate) channels: Vec<Channel>,
    pub(crate) stats: Option<TraceStats>,
}

impl Session {
    fn info(&self, current: bool) -> SessionInfo {
        SessionInfo {
            name: self.name.clone(),
            uuid: self.uuid,
            output: self.output.clone(),
            state: self.state,
            current,
            created_unix_ms: self.created_unix_ms,
            channels: self
                .channels
                .iter()
                .map(|c| ChannelInfo {
                    config: c.config.clone(),
                    enabled: c.enabled,
                    events: c.rules.clone(),
                })
                .collect(),
            stats: self.stats.clone(),
        }
    }

    fn channel_mut(&mut self, domain: Domain, name: &str) -> Option<&mut Channel> {
        self.channels
            .iter_mut()
            .find(|c| c.config.domain == domain && c.config.name == name)
    }
}

/// All sessions of the daemon's user.
#[derive(Debug)]
pub(crate) struct Registry {
    user_name: String,
    next_id: u64,
    sessions: Vec<Session>,
    current: Option<String>,
}

impl Registry {
    pub(crate) fn new(user_name: String) -> Self {
        Self {
            user_name,
            next_id: 1,
            sessions: Vec::new(),
            current: None,
        }
    }

    pub(crate) fn current_name(&self) -> Option<&str> {
        self.current.as_deref()
    }

    pub(crate) fn infos(&self) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .map(|s| s.info(self.current.as_deref() == Some(s.name.as_str())))
            .collect()
    }

    pub(crate) fn info(&self, name: &str) -> Result<SessionInfo, WireError> {
        let s = self.get(name)?;
        Ok(s.info(self.current.as_deref() == Some(name)))
    }

    /// Resolves an optional session name to an existing session's name.
    pub(crate) fn resolve(&self, name: Option<&str>) -> Result<String, WireError> {
        match name {
            Some(n) => self.get(n).map(|s| s.name.clone()),
            None => self.current.clone().ok_or_else(|| {
                err(
                    ErrorCode::NoCurrentSession,
                    "no current session: create one with `drtrace create` or name a session",
                )
            }),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Session, WireError> {
        self.sessions
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| not_found(name))
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Result<&mut Session, WireError> {
        self.sessions
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| not_found(name))
    }

    /// Creates a session and its (empty) trace directory, and makes it current.
    pub(crate) fn create(&mut self, req: CreateSession) -> Result<SessionInfo, WireError> {
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(err(
                ErrorCode::InvalidState,
                format!("this daemon already holds {MAX_SESSIONS} sessions; destroy some first"),
            ));
        }
        let uuid = Uuid::new_v4();
        let name = match req.name {
            Some(name) => {
                check_name("session", &name)
                    .map_err(|e| err(ErrorCode::InvalidName, e.to_string()))?;
                name
            }
            None => format!("{}.{uuid}", self.user_name),
        };
        if self.sessions.iter().any(|s| s.name == name) {
            return Err(err(
                ErrorCode::SessionExists,
                format!("session '{name}' already exists"),
            ));
        }
        let output = match req.output {
            OutputLocation::Dir(dir) => dir,
            OutputLocation::Under(parent) => parent.join(&name),
        };
        if !output.is_absolute() {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("output directory {} is not absolute", output.display()),
            ));
        }
        if let Some(other) = self.sessions.iter().find(|s| s.output == output) {
            return Err(err(
                ErrorCode::OutputExists,
                format!(
                    "session '{}' already writes to {}; nothing is overwritten",
                    other.name,
                    output.display()
                ),
            ));
        }
        create_trace_dir(&output)?;
        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let id = self.next_id;
        self.next_id += 1;
        self.sessions.push(Session {
            id,
            name: name.clone(),
            uuid,
            output,
            state: SessionState::Inactive,
            ever_started: false,
            created_unix_ms,
            channels: Vec::new(),
            stats: None,
        });
        self.current = Some(name.clone());
        self.info(&name)
    }

    pub(crate) fn set_current(&mut self, name: &str) -> Result<SessionInfo, WireError> {
        self.get(name)?;
        self.current = Some(name.to_owned());
        self.info(name)
    }

    /// Removes a session from the registry (the caller has stopped it and flushed its
    /// trace); removes its directory only if nothing was ever written there.
    pub(crate) fn remove(&mut self, name: &str) -> Result<SessionInfo, WireError> {
        let info = self.info(name)?;
        self.sessions.retain(|s| s.name != name);
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
        // Only an empty directory goes: remove_dir refuses anything with content.
        let _ = std::fs::remove_dir(&info.output);
        Ok(info)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.sessions.iter().map(|s| s.name.clone()).collect()
    }

    pub(crate) fn set_state(&mut self, name: &str, state: SessionState) -> Result<(), WireError> {
        let s = self.get_mut(name)?;
        match (s.state, state) {
            (SessionState::Active, SessionState::Active) => Err(err(
                ErrorCode::InvalidState,
                format!("session '{name}' is already started"),
            )),
            (SessionState::Inactive, SessionState::Inactive) => Err(err(
                ErrorCode::InvalidState,
                format!("session '{name}' is not started"),
            )),
            (_, new) => {
                s.state = new;
                if new == SessionState::Active {
                    s.ever_started = true;
                }
                Ok(())
            }
        }
    }

    /// Creates a channel, or re-enables a disabled one.
    pub(crate) fn enable_channel(
        &mut self,
        session: &str,
        config: ChannelConfig,
    ) -> Result<(), WireError> {
        check_channel(&config)?;
        let s = self.get_mut(session)?;
        if let Some(ch) = s.channel_mut(config.domain, &config.name) {
            if ch.enabled {
                return Err(err(
                    ErrorCode::ChannelExists,
                    format!(
                        "channel '{}' already exists and is enabled in session '{session}'",
                        config.name
                    ),
                ));
            }
            ch.enabled = true;
            return Ok(());
        }
        add_channel(s, config)
    }

    pub(crate) fn disable_channel(
        &mut self,
        session: &str,
        domain: Domain,
        name: &str,
    ) -> Result<(), WireError> {
        let s = self.get_mut(session)?;
        let ch = s
            .channel_mut(domain, name)
            .ok_or_else(|| channel_not_found(name, session))?;
        if !ch.enabled {
            return Err(err(
                ErrorCode::InvalidState,
                format!("channel '{name}' of session '{session}' is already disabled"),
            ));
        }
        ch.enabled = false;
        Ok(())
    }

    /// Adds or re-enables event rules, creating the default channel when none is named.
    pub(crate) fn enable_events(
        &mut self,
        session: &str,
        channel: Option<&str>,
        domain: Domain,
        rules: Vec<EventRule>,
    ) -> Result<(), WireError> {
        if rules.is_empty() {
            return Err(err(ErrorCode::InvalidArgument, "no event name given"));
        }
        for rule in &rules {
            check_event_pattern(&rule.pattern)
                .map_err(|e| err(ErrorCode::InvalidName, e.to_string()))?;
        }
        let s = self.get_mut(session)?;
        kernel_rules_open(s, domain)?;
        let channel_name = channel.unwrap_or(DEFAULT_CHANNEL);
        if s.channel_mut(domain, channel_name).is_none() {
            if channel.is_some() {
                return Err(channel_not_found(channel_name, session));
            }
            add_channel(s, ChannelConfig::new(DEFAULT_CHANNEL, domain))?;
        }
        let ch = s
            .channel_mut(domain, channel_name)
            .ok_or_else(|| channel_not_found(channel_name, session))?;
        for rule in rules {
            let count = ch.rules.len();
            match ch.rules.iter_mut().find(|r| r.rule == rule) {
                Some(existing) => existing.enabled = true,
                None if count >= MAX_RULES_PER_CHANNEL => {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!(
                            "channel '{channel_name}' already has {MAX_RULES_PER_CHANNEL} event rules"
                        ),
                    ));
                }
                None => ch.rules.push(EventRuleInfo {
                    rule,
                    enabled: true,
                }),
            }
        }
        Ok(())
    }

    /// Disables every rule whose pattern is one of `patterns` (`*` alone disables all).
    pub(crate) fn disable_events(
        &mut self,
        session: &str,
        channel: Option<&str>,
        domain: Domain,
        patterns: &[String],
    ) -> Result<(), WireError> {
        let s = self.get_mut(session)?;
        kernel_rules_open(s, domain)?;
        let channel_name = channel.unwrap_or(DEFAULT_CHANNEL);
        let ch = s
            .channel_mut(domain, channel_name)
            .ok_or_else(|| channel_not_found(channel_name, session))?;
        for pattern in patterns {
            let mut found = false;
            for r in ch
                .rules
                .iter_mut()
                .filter(|r| pattern == "*" || &r.rule.pattern == pattern)
            {
                r.enabled = false;
                found = true;
            }
            if !found {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "no event rule '{pattern}' in channel '{channel_name}' of session '{session}'"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn not_found(name: &str) -> WireError {
    err(
        ErrorCode::SessionNotFound,
        format!("session '{name}' not found"),
    )
}

fn channel_not_found(name: &str, session: &str) -> WireError {
    err(
        ErrorCode::ChannelNotFound,
        format!("channel '{name}' not found in session '{session}'"),
    )
}

/// Kernel events are enabled in the tracefs instance when the session first starts; later
/// changes would need a new instance and new metadata, so they are refused.
fn kernel_rules_open(s: &Session, domain: Domain) -> Result<(), WireError> {
    if domain == Domain::Kernel && s.ever_started {
        return Err(err(
            ErrorCode::InvalidState,
            format!(
                "kernel events of session '{}' are fixed since its first start; enable kernel \
                 events before `drtrace start`, or use a new session",
                s.name
            ),
        ));
    }
    Ok(())
}

fn add_channel(s: &mut Session, config: ChannelConfig) -> Result<(), WireError> {
    if s.ever_started {
        return Err(err(
            ErrorCode::InvalidState,
            format!(
                "cannot add channel '{}' to session '{}' after it has been started; \
                 enable channels before `drtrace start`",
                config.name, s.name
            ),
        ));
    }
    // One tracefs instance serves a session's kernel side, and an instance's events cannot
    // be split among buffers: so one kernel channel per session.
    if config.domain == Domain::Kernel {
        if let Some(other) = s
            .channels
            .iter()
            .find(|c| c.config.domain == Domain::Kernel)
        {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "session '{}' already has kernel channel '{}'; a session has one kernel \
                     channel",
                    s.name, other.config.name
                ),
            ));
        }
    }
    s.channels.push(Channel {
        config,
        enabled: true,
        rules: Vec::new(),
    });
    Ok(())
}

fn check_channel(c: &ChannelConfig) -> Result<(), WireError> {
    check_name("channel", &c.name).map_err(|e| err(ErrorCode::InvalidName, e.to_string()))?;
    let layout = drtrace_ringbuf::Layout {
        subbuf_size: c.subbuf_size,
        num_subbuf: c.num_subbuf,
        mode: drtrace_ringbuf::Mode::Discard,
    };
    layout.validate().map_err(|e| {
        err(
            ErrorCode::InvalidArgument,
            format!("channel '{}': {e}", c.name),
        )
    })?;
    Ok(())
}

/// Creates the session's trace directory; an existing one is never reused.
fn create_trace_dir(dir: &Path) -> Result<(), WireError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            err(
                ErrorCode::Io,
                format!("cannot create {}: {e}", parent.display()),
            )
        })?;
    }
    // create_dir (not create_dir_all) fails if the directory exists, which makes the
    // never-overwrite check and the creation one atomic step.
    std::fs::create_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            err(
                ErrorCode::OutputExists,
                format!(
                    "trace directory {} already exists; nothing is overwritten (choose another \
                     session name or --output)",
                    dir.display()
                ),
            )
        } else {
            err(
                ErrorCode::Io,
                format!("cannot create trace directory {}: {e}", dir.display()),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drtrace_proto::control::{BufferMode, LogLevelFilter};
    use drtrace_proto::event::LogLevel;

    fn create(
        reg: &mut Registry,
        name: Option<&str>,
        home: &Path,
    ) -> Result<SessionInfo, WireError> {
        reg.create(CreateSession {
            name: name.map(str::to_owned),
            output: OutputLocation::Under(home.to_owned()),
        })
    }

    #[test]
    fn default_names_are_user_dot_uuid_and_become_current() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::new("alice".into());
        let info = create(&mut reg, None, home.path()).unwrap();
        assert_eq!(info.name, format!("alice.{}", info.uuid));
        assert!(info.current);
        assert!(info.output.is_dir());
        assert_eq!(reg.resolve(None).unwrap(), info.name);
    }

    #[test]
    fn names_and_directories_are_never_reused() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::new("alice".into());
        create(&mut reg, Some("s1"), home.path()).unwrap();
        let e = create(&mut reg, Some("s1"), home.path()).unwrap_err();
        assert_eq!(e.code, ErrorCode::SessionExists);
        std::fs::create_dir(home.path().join("s2")).unwrap();
        std::fs::write(home.path().join("s2/keep"), b"old trace").unwrap();
        let e = create(&mut reg, Some("s2"), home.path()).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutputExists);
        assert_eq!(
            std::fs::read(home.path().join("s2/keep")).unwrap(),
            b"old trace"
        );
        let e = create(&mut reg, Some("../evil"), home.path()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidName);
    }

    #[test]
    fn destroying_the_current_session_leaves_none() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::new("u".into());
        create(&mut reg, Some("a"), home.path()).unwrap();
        create(&mut reg, Some("b"), home.path()).unwrap();
        assert_eq!(reg.current_name(), Some("b"));
        reg.set_current("a").unwrap();
        reg.remove("a").unwrap();
        assert_eq!(reg.current_name(), None);
        assert_eq!(
            reg.resolve(None).unwrap_err().code,
            ErrorCode::NoCurrentSession
        );
        // The empty directory of a session that recorded nothing is removed with it.
        assert!(!home.path().join("a").exists());
    }

    #[test]
    fn state_transitions_are_checked() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::new("u".into());
        create(&mut reg, Some("s"), home.path()).unwrap();
        let e = reg.set_state("s", SessionState::Inactive).unwrap_err();
        assert!(e.message.contains("not started"));
        reg.set_state("s", SessionState::Active).unwrap();
        assert!(reg.set_state("s", SessionState::Active).is_err());
        reg.set_state("s", SessionState::Inactive).unwrap();
        let e = reg
            .enable_channel("s", ChannelConfig::new("late", Domain::User))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidState);
    }

    #[test]
    fn events_go_to_the_default_channel_and_toggle() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::new("u".into());
        create(&mut reg, Some("s"), home.path()).unwrap();
        let rule = EventRule {
            pattern: "demo:*".into(),
            loglevel: Some(LogLevelFilter::AtLeast(LogLevel::Warning)),
        };
        reg.enable_events("s", None, Domain::User, vec![rule.clone()])
            .unwrap();
        reg.enable_events("s", None, Domain::User, vec![rule.clone()])
            .unwrap();
        let info = reg.info("s").unwrap();
        assert_eq!(info.channels.len(), 1);
        assert_eq!(info.channels[0].config.name, DEFAULT_CHANNEL);
        assert_eq!(info.channels[0].events.len(), 1);
        reg.disable_events("s", None, Domain::User, &["demo:*".into()])
            .unwrap();
        assert!(!reg.info("s").unwrap().channels[0].events[0].enabled);
        let e = reg
            .disable_events("s", None, Domain::User, &["other:*".into()])
            .unwrap_err();
        assert!(e.message.contains("no event rule"));
        let e = reg
            .enable_events("s", Some("nope"), Domain::User, vec![rule])
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelNotFound);
    }

    #[test]
    fn channel_parameters_are_validated() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::new("u".into());
        create(&mut reg, Some("s"), home.path()).unwrap();
        let mut c = ChannelConfig::new("c", Domain::User);
        c.subbuf_size = 5000;
        assert!(reg.enable_channel("s", c.clone()).is_err());
        c.subbuf_size = 4096;
        c.num_subbuf = 1;
        assert!(reg.enable_channel("s", c.clone()).is_err());
        c.num_subbuf = 2;
        c.mode = BufferMode::Overwrite;
        reg.enable_channel("s", c.clone()).unwrap();
        assert_eq!(
            reg.enable_channel("s", c.clone()).unwrap_err().code,
            ErrorCode::ChannelExists
        );
        reg.disable_channel("s", Domain::User, "c").unwrap();
        reg.enable_channel("s", c).unwrap();
        assert!(reg.info("s").unwrap().channels[0].enabled);
    }
}
