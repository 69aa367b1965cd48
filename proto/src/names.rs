//! Validation of names that become paths or metadata identifiers.
//!
//! Session names name a directory, so they must never escape it: no `/`, no `.`/`..`, no
//! leading dot or dash, and only characters that need no quoting in a shell.

use thiserror::Error;

/// Longest accepted session or channel name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// A name that was refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct NameError(String);

impl NameError {
    pub(crate) fn new(msg: String) -> Self {
        Self(msg)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '@' | ':')
}

/// Checks a session or channel name (`what` names it in the error).
pub fn check_name(what: &str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::new(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::new(format!(
            "{what} name is {} bytes long, more than the limit of {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(NameError::new(format!(
            "{what} name '{name}' must not start with '.' or '-'"
        )));
    }
    if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(NameError::new(format!(
            "{what} name '{}' contains {bad:?}; use letters, digits and _ - . + @ :",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// Checks an identifier used in trace metadata: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
pub fn check_identifier(what: &str, ident: &str) -> Result<(), NameError> {
    let mut chars = ident.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || ident.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(NameError::new(format!(
            "{what} name '{}' is not an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 128 bytes)",
            ident.escape_debug()
        )));
    }
    Ok(())
}

/// Checks an event-name pattern: `provider:event` where either part may use `*` wildcards.
pub fn check_event_pattern(pattern: &str) -> Result<(), NameError> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 257
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*'));
    if !ok {
        return Err(NameError::new(format!(
            "event pattern '{}' is not valid: use provider:event, letters, digits, _ and * wildcards",
            pattern.escape_debug()
        )));
    }
    Ok(())
}

/// Matches `name` against a pattern where `*` matches any run of characters (including `:`).
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Iterative glob with backtracking to the last star: linear in practice, no recursion.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_cannot_escape_their_directory() {
        for bad in [
            "", ".", "..", "../x", "a/b", ".hidden", "-rf", "a b", "a\0b",
        ] {
            assert!(check_name("session", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["s", "alice.0b5e", "my-session_2", "x@host:1"] {
            check_name("session", good).unwrap();
        }
        assert!(check_name("session", &"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn wildcards_match_like_a_glob() {
        assert!(wildcard_match("*", "demo:tick"));
        assert!(wildcard_match("demo:*", "demo:tick"));
        assert!(wildcard_match("*:tick", "demo:tick"));
        assert!(wildcard_match("d*o:t*k", "demo:tick"));
        assert!(!wildcard_match("demo:*", "demos:tick"));
        assert!(!wildcard_match("demo:tic", "demo:tick"));
        assert!(wildcard_match("demo:tick", "demo:tick"));
        assert!(wildcard_match("a*b*c", "aXbYbc"));
        assert!(!wildcard_match("a*b*c", "aXbYb"));
    }

    #[test]
    fn patterns_are_restricted() {
        check_event_pattern("demo:*").unwrap();
        assert!(check_event_pattern("demo:$x").is_err());
        assert!(check_event_pattern("").is_err());
    }
}
