//! What the reader yields: decoded values and events.

use std::sync::Arc;

use drtrace_proto::event::LogLevel;

use super::TraceSource;

/// A decoded field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An unsigned integer.
    U64(u64),
    /// A signed integer.
    I64(i64),
    /// A float (binary32 values are widened exactly).
    F64(f64),
    /// A boolean: drtrace's `enum : uint8_t { "false" = 0, "true" = 1 }` holding 0 or 1.
    Bool(bool),
    /// A string (invalid UTF-8 is replaced with U+FFFD).
    Str(String),
    /// A sequence of unsigned bytes (drtrace's `bytes` type).
    Bytes(Vec<u8>),
    /// An array or a sequence of anything else.
    Array(Vec<Value>),
    /// An enumeration: the first matching label, if any, and the integer.
    Enum {
        /// The label whose range holds the value.
        label: Option<String>,
        /// The integer value.
        value: i128,
    },
    /// A structure's members, in order.
    Struct(Vec<(String, Value)>),
    /// A variant: the selected option and its value.
    Variant {
        /// The selected option's name.
        option: String,
        /// Its value.
        value: Box<Value>,
    },
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer, enum or bool.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) => u64::try_from(*v).ok(),
            Value::Enum { value, .. } => u64::try_from(*value).ok(),
            Value::Bool(b) => Some(u64::from(*b)),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer, enum or bool in `i64`'s range.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::U64(v) => i64::try_from(*v).ok(),
            Value::I64(v) => Some(*v),
            Value::Enum { value, .. } => i64::try_from(*value).ok(),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The member `name` of a structure (or of a variant's selected structure).
    pub fn member(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            Value::Variant { value, .. } => value.member(name),
            _ => None,
        }
    }
}

/// One event record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Nanoseconds from the clock's origin (the Unix epoch for drtrace traces).
    pub timestamp_ns: i64,
    /// The raw clock value, rebuilt to 64 bits.
    pub clock_cycles: u64,
    /// The event class name: `provider:event` for drtrace events.
    pub name: String,
    /// The level declared in the metadata, if any.
    pub loglevel: Option<LogLevel>,
    /// The stream class id (the channel's index).
    pub stream_id: u64,
    /// The channel: the stream file's name without its `_<cpu>` suffix.
    pub channel: String,
    /// The CPU (the packet context's `cpu_id`, else the header's `stream_instance_id`).
    pub cpu: Option<u32>,
    /// The trace (metadata file) the event comes from.
    pub trace: Arc<TraceSource>,
    /// Stream and event context fields, if the metadata declares any.
    pub context: Vec<(String, Value)>,
    /// The payload, in declaration order, names without their leading `_`.
    pub fields: Vec<(String, Value)>,
}

impl Event {
    /// The payload field `name`.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The trace's domain: `ust`, `kernel`, or whatever its `env.domain` says.
    pub fn domain(&self) -> &str {
        &self.trace.domain
    }
}

/// The TSDL log level (babeltrace2's scale, which drtrace writes) as a [`LogLevel`]: 0 to
/// 6 are syslog's, and babeltrace2's debug sub-levels 7 to 14 are all debug.
pub(crate) fn loglevel_from_tsdl(level: i64) -> Option<LogLevel> {
    match level {
        0..=6 => LogLevel::from_u8(u8::try_from(level).ok()?),
        7..=14 => Some(LogLevel::Debug),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::tsdl_loglevel;

    #[test]
    fn accessors() {
        assert_eq!(Value::I64(-1).as_u64(), None);
        assert_eq!(Value::U64(u64::MAX).as_i64(), None);
        assert_eq!(
            Value::Enum {
                label: None,
                value: 3
            }
            .as_u64(),
            Some(3)
        );
        let s = Value::Struct(vec![("a".into(), Value::Str("x".into()))]);
        assert_eq!(s.member("a").and_then(Value::as_str), Some("x"));
        let v = Value::Variant {
            option: "o".into(),
            value: Box::new(s),
        };
        assert!(v.member("a").is_some());
        assert!(v.member("b").is_none());
    }

    #[test]
    fn loglevels_round_trip() {
        for level in LogLevel::ALL {
            assert_eq!(loglevel_from_tsdl(tsdl_loglevel(level).into()), Some(level));
        }
        assert_eq!(loglevel_from_tsdl(10), Some(LogLevel::Debug));
        assert_eq!(loglevel_from_tsdl(15), None);
        assert_eq!(loglevel_from_tsdl(-1), None);
    }
}
