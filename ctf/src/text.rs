//! A one-line text rendering of events, close to babeltrace2's default `pretty` output so
//! that `drtrace view` reads like `babeltrace2 <trace>`:
//!
//! ```text
//! [HH:MM:SS.nnnnnnnnn] (+S.nnnnnnnnn) hostname provider:event: { cpu_id = 0 }, { a = 1, s = "x" }
//! ```
//!
//! Per-PID traces show `hostname:procname:(vpid)` where babeltrace2 does.
//!
//! Differences from babeltrace2, on purpose: times are printed in UTC (babeltrace2 uses the
//! local time zone unless given `--clock-gmt`), booleans print as `true`/`false` (babeltrace2
//! shows the enum, `( "true" : container = 1 )`), byte sequences print without their separate
//! length field, and integers always print in decimal.

use std::fmt::Write as _;

use crate::metadata::EnvValue;
use crate::reader::{Event, Value};

/// Formats events one line each, keeping the previous timestamp for the `(+delta)`.
#[derive(Debug, Default, Clone)]
pub struct TextFormatter {
    last_ns: Option<i64>,
}

impl TextFormatter {
    /// A formatter that has seen no event yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The line for `event` (without a newline).
    pub fn format(&mut self, event: &Event) -> String {
        let mut out = String::with_capacity(128);
        out.push('[');
        out.push_str(&time_of_day(event.timestamp_ns));
        out.push_str("] (");
        match self.last_ns {
            Some(last) => {
                let delta = i128::from(event.timestamp_ns) - i128::from(last);
                let sign = if delta < 0 { '-' } else { '+' };
                let delta = delta.unsigned_abs();
                let _ = write!(
                    out,
                    "{sign}{}.{:09}",
                    delta / 1_000_000_000,
                    delta % 1_000_000_000
                );
            }
            None => out.push_str("+?.?????????"),
        }
        out.push_str(") ");
        self.last_ns = Some(event.timestamp_ns);
        // babeltrace2's trace fields: `hostname:procname:(vpid)`, each only if present.
        let md = &event.trace.metadata;
        let mut any = false;
        if let Some(host) = event.trace.hostname() {
            out.push_str(host);
            any = true;
        }
        if let Some(procname) = md.env_str("procname") {
            if any {
                out.push(':');
            }
            out.push_str(procname);
            any = true;
        }
        if let Some(EnvValue::Int(vpid)) = md.env("vpid") {
            if any {
                out.push(':');
            }
            let _ = write!(out, "({vpid})");
            any = true;
        }
        if any {
            out.push(' ');
        }
        out.push_str(&event.name);
        out.push_str(": ");
        if let Some(cpu) = event.cpu {
            let _ = write!(out, "{{ cpu_id = {cpu} }}, ");
        }
        if !event.context.is_empty() {
            write_members(&mut out, &event.context);
            out.push_str(", ");
        }
        write_members(&mut out, &event.fields);
        out
    }
}

/// `HH:MM:SS.nnnnnnnnn` in UTC for nanoseconds since the epoch.
fn time_of_day(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{nanos:09}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// A value as babeltrace2 prints it (see the module docs for the differences).
pub fn format_value(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_members(out: &mut String, members: &[(String, Value)]) {
    if members.is_empty() {
        out.push_str("{ }");
        return;
    }
    out.push_str("{ ");
    for (i, (name, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str(" = ");
        write_value(out, v);
    }
    out.push_str(" }");
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::U64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::I64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::F64(v) => out.push_str(&format_g(*v)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Str(s) => {
            out.push('"');
            escape_into(out, s);
            out.push('"');
        }
        Value::Bytes(b) => write_list(out, b.iter().map(|b| Value::U64(u64::from(*b)))),
        Value::Array(items) => write_list(out, items.iter().cloned()),
        Value::Enum { label, value } => {
            out.push_str("( ");
            match label {
                Some(l) => {
                    out.push('"');
                    escape_into(out, l);
                    out.push('"');
                }
                None => out.push_str("<unknown>"),
            }
            let _ = write!(out, " : container = {value} )");
        }
        Value::Struct(members) => write_members(out, members),
        Value::Variant { option, value } => {
            let _ = write!(out, "{{ {option} = ");
            write_value(out, value);
            out.push_str(" }");
        }
    }
}

fn write_list(out: &mut String, items: impl Iterator<Item = Value>) {
    out.push('[');
    for (i, v) in items.enumerate() {
        out.push_str(if i > 0 { ", " } else { " " });
        let _ = write!(out, "[{i}] = ");
        write_value(out, &v);
    }
    out.push_str(" ]");
}

/// babeltrace2's string escaping: C escapes for quotes, backslash, `?` and control
/// characters, `\xNN` for other control bytes.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '?' => out.push_str("\\?"),
            '\0' => out.push_str("\\0"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{1b}' => out.push_str("\\e"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// C's `%g`: six significant digits, fixed or exponent notation by magnitude, trailing
/// zeros removed.
pub(crate) fn format_g(v: f64) -> String {
    if v.is_nan() {
        return if v.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if v.is_infinite() {
        return if v < 0.0 { "-inf" } else { "inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // The exponent after rounding to six significant digits decides the notation.
    let sci = format!("{v:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        trim_zeros(&format!("{v:.decimals$}")).to_owned()
    } else {
        format!(
            "{}e{}{:02}",
            trim_zeros(mantissa),
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        )
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_g() {
        for (v, s) in [
            (1.5, "1.5"),
            (0.1, "0.1"),
            (100.0, "100"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (-2.5e-300, "-2.5e-300"),
            (1e100, "1e+100"),
            (999999.5, "1e+06"),
            (1.23456789, "1.23457"),
            (0.0, "0"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(format_g(v), s, "{v}");
        }
    }

    #[test]
    fn values_like_babeltrace2() {
        assert_eq!(
            format_value(&Value::Str("a\"b\t?\u{1}".into())),
            "\"a\\\"b\\t\\?\\x01\""
        );
        assert_eq!(
            format_value(&Value::Array(vec![Value::I64(-1), Value::U64(2)])),
            "[ [0] = -1, [1] = 2 ]"
        );
        assert_eq!(format_value(&Value::Array(vec![])), "[ ]");
        assert_eq!(format_value(&Value::Bytes(vec![7])), "[ [0] = 7 ]");
        assert_eq!(
            format_value(&Value::Enum {
                label: Some("x".into()),
                value: 3
            }),
            "( \"x\" : container = 3 )"
        );
        assert_eq!(
            format_value(&Value::Enum {
                label: None,
                value: -3
            }),
            "( <unknown> : container = -3 )"
        );
        assert_eq!(
            format_value(&Value::Struct(vec![("a".into(), Value::Bool(true))])),
            "{ a = true }"
        );
        assert_eq!(format_value(&Value::Struct(vec![])), "{ }");
        assert_eq!(
            format_value(&Value::Variant {
                option: "o".into(),
                value: Box::new(Value::F64(0.5))
            }),
            "{ o = 0.5 }"
        );
    }

    #[test]
    fn times_of_day() {
        assert_eq!(time_of_day(1_700_000_005_000_000_010), "22:13:25.000000010");
        assert_eq!(time_of_day(-1), "23:59:59.999999999");
        assert_eq!(time_of_day(0), "00:00:00.000000000");
    }
}
