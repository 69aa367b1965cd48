//! What `drtrace-demo` emits (see `demo/src/main.rs`), and checks of traces of it read back
//! as text lines, babeltrace2's or `drtrace view`'s (which look alike).
//!
//! One process, one thread, `--iterations N`: `demo_app:start` and `demo_app:finish` once,
//! and per iteration `seq` in `0..N`: `demo_app:iteration { thread = 0, seq, pid }`,
//! `demo_types:ints { ..., c = seq, d = seq, ..., h = -seq }`, `demo_types:floats { x =
//! seq * 0.5, y = seq * 0.25, even }`, `demo_types:text { msg, raw }` and
//! `demo_http:request { id = seq, path = "/item/0", ok, elapsed_us = seq * 10 }`.

use std::collections::BTreeMap;

/// Events per iteration.
pub(crate) const EVENTS_PER_ITERATION: u64 = 5;

/// Events one single-threaded demo process of `iterations` emits.
pub(crate) fn events_for(iterations: u64) -> u64 {
    2 + iterations * EVENTS_PER_ITERATION
}

/// One event line: `[time] (+delta) host provider:event: { cpu_id = N }, { fields }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// `provider:event`.
    pub(crate) name: String,
    /// Everything after the name's `: `.
    pub(crate) payload: String,
}

impl Line {
    /// Splits a line up; `None` if it is not an event line.
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix('[')?;
        let (_, rest) = rest.split_once("] (")?;
        let (_, rest) = rest.split_once(") ")?;
        let (head, payload) = rest.split_once(": {")?;
        let name = head.split_whitespace().last()?.to_owned();
        Some(Self {
            name,
            payload: format!("{{{payload}"),
        })
    }

    /// The text of a scalar field (a quoted string keeps its quotes).
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        let p = &self.payload;
        let at = [format!("{{ {name} = "), format!(", {name} = ")]
            .iter()
            .find_map(|key| p.find(key.as_str()).map(|i| i + key.len()))?;
        let value = &p[at..];
        if value.starts_with('"') {
            let mut escaped = false;
            for (i, c) in value.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => return Some(&value[..=i]),
                    _ => escaped = false,
                }
            }
            return None;
        }
        let end = value.find([',', ' ']).unwrap_or(value.len());
        Some(&value[..end])
    }

    /// A field as an integer; panics (naming the line) if it is absent or not one.
    pub(crate) fn int(&self, name: &str) -> i128 {
        self.field(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no integer field {name} in {self:?}"))
    }
}

/// Parses every line; panics on one that is not an event line.
pub(crate) fn parse_lines(text: &str, who: &str) -> Vec<Line> {
    text.lines()
        .map(|l| Line::parse(l).unwrap_or_else(|| panic!("{who} printed a non-event line: {l}")))
        .collect()
}

fn sorted(mut v: Vec<i128>) -> Vec<i128> {
    v.sort_unstable();
    v
}

/// Checks that `lines` (from `who`) are exactly the events of one single-threaded demo
/// process of `iterations`, with the right field values.
pub(crate) fn check_demo_lines(lines: &[Line], iterations: u64, who: &str) {
    let n = i128::from(iterations);
    let mut by_name: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for l in lines {
        by_name.entry(l.name.as_str()).or_default().push(l);
    }
    let counts: BTreeMap<&str, usize> = by_name.iter().map(|(k, v)| (*k, v.len())).collect();
    let per_iteration = usize::try_from(iterations).unwrap();
    let expected: BTreeMap<&str, usize> = [
        ("demo_app:start", 1),
        ("demo_app:finish", 1),
        ("demo_app:iteration", per_iteration),
        ("demo_types:ints", per_iteration),
        ("demo_types:floats", per_iteration),
        ("demo_types:text", per_iteration),
        ("demo_http:request", per_iteration),
    ]
    .into_iter()
    .filter(|(_, c)| *c > 0)
    .collect();
    assert_eq!(counts, expected, "{who}: events per name");
    assert_eq!(
        u64::try_from(lines.len()).unwrap(),
        events_for(iterations),
        "{who}: event count"
    );
    let all = |name: &str| by_name.get(name).cloned().unwrap_or_default();
    let start = all("demo_app:start")[0];
    let pid = start.int("pid");
    assert_eq!(start.int("threads"), 1, "{who}: {start:?}");
    assert_eq!(start.int("iterations"), n, "{who}: {start:?}");
    let finish = all("demo_app:finish")[0];
    assert_eq!(finish.int("pid"), pid, "{who}: {finish:?}");
    assert_eq!(
        finish.int("events"),
        i128::from(events_for(iterations)),
        "{who}: {finish:?}"
    );
    let seqs: Vec<i128> = (0..n).collect();
    let iteration = all("demo_app:iteration");
    for l in &iteration {
        assert_eq!(l.int("thread"), 0, "{who}: {l:?}");
        assert_eq!(l.int("pid"), pid, "{who}: {l:?}");
    }
    assert_eq!(
        sorted(iteration.iter().map(|l| l.int("seq")).collect()),
        seqs,
        "{who}: demo_app:iteration seq values"
    );
    let ints = all("demo_types:ints");
    for l in &ints {
        let d = l.int("d");
        assert_eq!(l.int("c"), d, "{who}: {l:?}");
        assert_eq!(l.int("h"), -d, "{who}: {l:?}");
    }
    assert_eq!(
        sorted(ints.iter().map(|l| l.int("d")).collect()),
        seqs,
        "{who}: demo_types:ints d values"
    );
    let requests = all("demo_http:request");
    for l in &requests {
        let id = l.int("id");
        assert_eq!(l.int("elapsed_us"), id * 10, "{who}: {l:?}");
        assert_eq!(l.field("path"), Some("\"/item/0\""), "{who}: {l:?}");
    }
    assert_eq!(
        sorted(requests.iter().map(|l| l.int("id")).collect()),
        seqs,
        "{who}: demo_http:request id values"
    );
    // y = seq * 0.25 prints exactly in %g for these small values: compare in quarters.
    let quarters: Vec<i128> = all("demo_types:floats")
        .iter()
        .map(|l| {
            let y: f64 = l
                .field("y")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{who}: no float y in {l:?}"));
            #[allow(clippy::cast_possible_truncation, reason = "small exact values")]
            let q = (y * 4.0).round() as i128;
            q
        })
        .collect();
    assert_eq!(sorted(quarters), seqs, "{who}: demo_types:floats y values");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_fields_parse() {
        let l = Line::parse(
            "[08:17:55.142306654] (+?.?????????) vm demo_http:request: { cpu_id = 1 }, { id = 3, path = \"/a, \\\"b\", ok = true, elapsed_us = 30 }",
        )
        .unwrap();
        assert_eq!(l.name, "demo_http:request");
        assert_eq!(l.int("id"), 3);
        assert_eq!(l.int("cpu_id"), 1);
        assert_eq!(l.field("path"), Some("\"/a, \\\"b\""));
        assert_eq!(l.int("elapsed_us"), 30);
        assert_eq!(l.field("nope"), None);
        assert!(Line::parse("WARNING: something").is_none());
    }
}
