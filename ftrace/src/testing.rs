//! Test support (feature `test-support`): ftrace events decoded straight from their pages,
//! and the line babeltrace2 prints for each, so that tests of this crate and of the
//! consumer can check a converted trace against babeltrace2 without a second converter.
//! Also the guards kernel tests share. These helpers panic on bad input: they are for
//! fixtures, not for data from outside.

use std::path::Path;
use std::process::Command;

use drtrace_ctf::reader::Value;

use crate::ctf::EventCatalog;
use crate::format::{EventFormat, FieldKind};
use crate::page::{LostEvents, Page, PageLayout};
use crate::tracefs::Instance;

/// One event decoded straight from the pages.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    /// The CPU whose buffer held it.
    pub cpu: u32,
    /// Its timestamp (the buffer's clock).
    pub timestamp: u64,
    /// Its CTF event name.
    pub name: String,
    /// Its fields as a CTF reader shows them.
    pub fields: Vec<(String, Value)>,
}

impl DecodedEvent {
    /// The field `name`.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Decodes every event of `pages`, panicking on a malformed page or an unknown event;
/// returns the events and the pages' lost-event reports.
pub fn decode_pages<P: AsRef<[u8]>>(
    catalog: &EventCatalog,
    layout: &PageLayout,
    cpu: u32,
    pages: impl IntoIterator<Item = P>,
) -> (Vec<DecodedEvent>, Vec<LostEvents>) {
    let mut out = Vec::new();
    let mut lost = Vec::new();
    for (i, bytes) in pages.into_iter().enumerate() {
        let page = Page::parse(layout, bytes.as_ref())
            .unwrap_or_else(|e| panic!("cpu {cpu} page {i}: {e}"));
        lost.push(page.lost);
        for event in page.events() {
            let event = event.unwrap_or_else(|e| panic!("cpu {cpu} page {i}: {e}"));
            let (ev, fields) = catalog
                .decode(event.data)
                .unwrap_or_else(|| panic!("cpu {cpu} page {i}: unknown event at {}", event.offset));
            out.push(DecodedEvent {
                cpu,
                timestamp: event.timestamp,
                name: ev.name.clone(),
                fields,
            });
        }
    }
    (out, lost)
}

/// The line `babeltrace2 --clock-cycles` prints for `event`, without the time delta (see
/// [`without_delta`]), in a trace whose hostname is `testhost`.
pub fn bt2_line(event: &DecodedEvent, catalog: &EventCatalog) -> String {
    let format = &catalog
        .events()
        .iter()
        .find(|e| e.name == event.name)
        .unwrap_or_else(|| panic!("{} is not in the catalog", event.name))
        .format;
    let mut fields: Vec<String> = Vec::new();
    for (n, v) in &event.fields {
        // babeltrace2 shows a sequence's length member, which the drtrace reader hides.
        if is_sequence(format, n) {
            let len = match v {
                Value::Bytes(b) => b.len(),
                Value::Array(a) => a.len(),
                other => panic!("{n} is not a sequence: {other:?}"),
            };
            fields.push(format!("{n}_length = {len}"));
        }
        fields.push(format!("{n} = {}", bt2_value(v, is_hex(format, n))));
    }
    format!(
        "[{:020}] testhost {}: {{ cpu_id = {} }}, {{ {} }}",
        event.timestamp,
        event.name,
        event.cpu,
        fields.join(", ")
    )
}

/// `[123] (+45) rest` → `[123] rest`.
pub fn without_delta(line: &str) -> String {
    match (line.find("] ("), line.find(") ")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &line[..a + 2], &line[b + 2..]),
        _ => line.to_owned(),
    }
}

/// Whether a field of `format` is shown in hex by babeltrace2 (pointers).
fn is_hex(format: &EventFormat, field: &str) -> bool {
    format
        .common_fields
        .iter()
        .chain(&format.fields)
        .find(|f| f.name == field)
        .is_some_and(|f| match f.kind {
            FieldKind::Int(t) => t.hex,
            FieldKind::Array { elem, .. } | FieldKind::DynArray { elem, .. } => elem.hex,
            _ => false,
        })
}

/// Whether a field of `format` becomes a CTF sequence (with a length member).
fn is_sequence(format: &EventFormat, field: &str) -> bool {
    format
        .common_fields
        .iter()
        .chain(&format.fields)
        .find(|f| f.name == field)
        .is_some_and(|f| {
            matches!(
                f.kind,
                FieldKind::DynArray { .. } | FieldKind::TrailingArray { .. }
            )
        })
}

/// A value as babeltrace2's `pretty` sink prints it.
fn bt2_value(v: &Value, hex: bool) -> String {
    match v {
        Value::U64(n) if hex => format!("0x{n:X}"),
        Value::U64(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::Str(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Bytes(b) => bt2_list(b.iter().map(|x| x.to_string())),
        Value::Array(a) => bt2_list(a.iter().map(|x| bt2_value(x, hex))),
        other => panic!("no babeltrace2 rendering for {other:?}"),
    }
}

fn bt2_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items
        .enumerate()
        .map(|(i, s)| format!("[{i}] = {s}"))
        .collect();
    if items.is_empty() {
        "[ ]".into()
    } else {
        format!("[ {} ]", items.join(", "))
    }
}

/// `babeltrace2 --clock-cycles <dir>` in UTC (`bt`: the binary): its stdout lines and its
/// stderr; panics with both if it fails or reports an error.
pub fn run_babeltrace2_cycles(bt: &Path, dir: &Path) -> (Vec<String>, String) {
    let out = Command::new(bt)
        .arg("--clock-cycles")
        .arg(dir)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bt.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && !stderr.contains("ERROR"),
        "babeltrace2 {} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        dir.display(),
        out.status
    );
    (stdout.lines().map(str::to_owned).collect(), stderr)
}

/// Whether a kernel test may run: root is needed. Under CI (`CI` set) its absence is a
/// failure naming what is missing; elsewhere the test is skipped with the reason.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (to mount tracefs and create ftrace instances); CI runs as root"
    );
    eprintln!("skipping {test}: needs root to mount tracefs and create ftrace instances");
    false
}

/// Removes an instance when dropped, on success and failure alike. Drop it after its
/// readers; a reader still closing gets two seconds.
#[derive(Debug)]
pub struct InstanceGuard(pub Instance);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        for _ in 0..100 {
            match self.0.remove() {
                Ok(()) => return,
                Err(e) => {
                    if !self.0.path().exists() {
                        return;
                    }
                    eprintln!("removing {}: {e}", self.0.name());
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }
}
