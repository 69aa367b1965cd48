//! Tracepoint descriptions: what an application declares and registers, and what the
//! metadata of a trace is generated from.
//!
//! A description is data the daemon receives from an untrusted application, so every
//! description is checked with [`EventDescription::validate`] before it is used.

use serde::{Deserialize, Serialize};

use crate::names::{NameError, check_identifier};

/// Most fields one event may declare.
pub const MAX_FIELDS: usize = 64;

/// Severity of an event, syslog's scale: lower is more severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum LogLevel {
    /// The system is unusable.
    Emergency = 0,
    /// Action must be taken immediately.
    Alert = 1,
    /// Critical conditions.
    Critical = 2,
    /// Error conditions.
    Error = 3,
    /// Warning conditions.
    Warning = 4,
    /// Normal but significant.
    Notice = 5,
    /// Informational (the default for events that declare no level).
    Info = 6,
    /// Debug-level messages.
    Debug = 7,
}

impl LogLevel {
    /// Every level, most severe first.
    pub const ALL: [LogLevel; 8] = [
        LogLevel::Emergency,
        LogLevel::Alert,
        LogLevel::Critical,
        LogLevel::Error,
        LogLevel::Warning,
        LogLevel::Notice,
        LogLevel::Info,
        LogLevel::Debug,
    ];

    /// The lowercase name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Emergency => "emergency",
            LogLevel::Alert => "alert",
            LogLevel::Critical => "critical",
            LogLevel::Error => "error",
            LogLevel::Warning => "warning",
            LogLevel::Notice => "notice",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }

    /// The level with this numeric value (0 = emergency ... 7 = debug).
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value)).copied()
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        if let Ok(n) = lower.parse::<u8>() {
            return Self::from_u8(n).ok_or_else(|| format!("log level {n} is out of range 0-7"));
        }
        Self::ALL
            .iter()
            .copied()
            .find(|l| l.as_str() == lower || (lower == "warn" && *l == LogLevel::Warning))
            .ok_or_else(|| {
                format!(
                    "unknown log level '{s}' (expected one of: {})",
                    Self::ALL.map(LogLevel::as_str).join(", ")
                )
            })
    }
}

/// The type of one event field, and so its encoding in the trace.
///
/// Integers and floats are little-endian and byte-aligned; `String` is UTF-8 ending in a
/// NUL byte; `Bytes` is a `u32` length followed by that many bytes; `Bool` is one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// A boolean stored as one byte, 0 or 1.
    Bool,
    /// A UTF-8 string, NUL-terminated in the trace.
    String,
    /// A byte sequence, `u32` length-prefixed in the trace.
    Bytes,
}

impl FieldType {
    /// The encoded size for fixed-size types, `None` for strings and byte sequences.
    pub fn fixed_size(self) -> Option<usize> {
        Some(match self {
            FieldType::U8 | FieldType::I8 | FieldType::Bool => 1,
            FieldType::U16 | FieldType::I16 => 2,
            FieldType::U32 | FieldType::I32 | FieldType::F32 => 4,
            FieldType::U64 | FieldType::I64 | FieldType::F64 => 8,
            FieldType::String | FieldType::Bytes => return None,
        })
    }
}

/// One field of an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldDescription {
    /// The field's name: an identifier (`[A-Za-z_][A-Za-z0-9_]*`).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldType,
}

/// A tracepoint as declared by an application: `provider:name`, its level and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventDescription {
    /// The provider (a group of events, usually one per library or module).
    pub provider: String,
    /// The event's name within the provider.
    pub name: String,
    /// Its severity.
    pub loglevel: LogLevel,
    /// Its fields, in the order they are written.
    pub fields: Vec<FieldDescription>,
}

impl EventDescription {
    /// The full name, `provider:name`, which event rules match against.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.provider, self.name)
    }

    /// Checks names, field count and duplicate field names.
    pub fn validate(&self) -> Result<(), NameError> {
        check_identifier("provider", &self.provider)?;
        check_identifier("event", &self.name)?;
        if self.fields.len() > MAX_FIELDS {
            return Err(NameError::new(format!(
                "event {} declares {} fields, more than the limit of {MAX_FIELDS}",
                self.full_name(),
                self.fields.len()
            )));
        }
        for (i, field) in self.fields.iter().enumerate() {
            check_identifier("field", &field.name)?;
            if self.fields[..i].iter().any(|f| f.name == field.name) {
                return Err(NameError::new(format!(
                    "event {} declares field '{}' twice",
                    self.full_name(),
                    field.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(fields: &[(&str, FieldType)]) -> EventDescription {
        EventDescription {
            provider: "demo".into(),
            name: "tick".into(),
            loglevel: LogLevel::Info,
            fields: fields
                .iter()
                .map(|(n, t)| FieldDescription {
                    name: (*n).into(),
                    ty: *t,
                })
                .collect(),
        }
    }

    #[test]
    fn duplicate_fields_are_rejected() {
        let d = desc(&[("a", FieldType::U8), ("a", FieldType::U64)]);
        assert!(d.validate().unwrap_err().to_string().contains("twice"));
        assert!(desc(&[("a", FieldType::U8)]).validate().is_ok());
    }

    #[test]
    fn bad_identifiers_are_rejected() {
        let mut d = desc(&[("1abc", FieldType::U8)]);
        assert!(d.validate().is_err());
        d.fields.clear();
        d.provider = "my provider".into();
        assert!(d.validate().is_err());
    }

    #[test]
    fn log_levels_parse_by_name_and_number() {
        assert_eq!("warn".parse::<LogLevel>().unwrap(), LogLevel::Warning);
        assert_eq!("DEBUG".parse::<LogLevel>().unwrap(), LogLevel::Debug);
        assert_eq!("3".parse::<LogLevel>().unwrap(), LogLevel::Error);
        assert!("9".parse::<LogLevel>().is_err());
        assert!(
            "loud"
                .parse::<LogLevel>()
                .unwrap_err()
                .contains("expected one of")
        );
    }
}
