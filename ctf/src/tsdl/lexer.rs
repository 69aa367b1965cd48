//! The TSDL tokenizer: C-like words, integer, string and character literals, and
//! punctuation; comments are skipped.

use super::TsdlError;

/// One token's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// An identifier or keyword; which one is decided by the parser.
    Word(String),
    /// An integer (or character) literal, without its sign.
    Int(u64),
    /// A string literal, escapes resolved.
    Str(String),
    /// Punctuation: `{ } ( ) [ ] ; , : = . < > - + * := ... ->`.
    Punct(&'static str),
}

/// A token and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) line: u32,
}

const PUNCTS: [&str; 17] = [
    ":=", "...", "->", "{", "}", "(", ")", "[", "]", ";", ",", ":", "=", ".", "<", ">", "-",
];

/// Splits `text` into tokens.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, TsdlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0usize;
    let mut line = 1u32;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line = line.saturating_add(1);
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let start = line;
                let end = text[i + 2..]
                    .find("*/")
                    .ok_or_else(|| TsdlError::new(start, "unterminated comment"))?;
                let comment = &text[i..i + 2 + end + 2];
                line = line.saturating_add(count_lines(comment));
                i += 2 + end + 2;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Word(text[start..i].to_owned()),
                    line,
                });
            }
            c if c.is_ascii_digit() => {
                let (value, len) = integer(&bytes[i..], line)?;
                out.push(Token {
                    tok: Tok::Int(value),
                    line,
                });
                i += len;
            }
            b'"' => {
                let start = line;
                let (s, len, newlines) = string(&text[i..], start)?;
                out.push(Token {
                    tok: Tok::Str(s),
                    line: start,
                });
                line = line.saturating_add(newlines);
                i += len;
            }
            b'\'' => {
                let (s, len, _) = quoted(&text[i..], '\'', line)?;
                let mut chars = s.chars();
                let value = match (chars.next(), chars.next()) {
                    (Some(ch), None) => u64::from(u32::from(ch)),
                    _ => return Err(TsdlError::new(line, "bad character literal")),
                };
                out.push(Token {
                    tok: Tok::Int(value),
                    line,
                });
                i += len;
            }
            _ => {
                let p = PUNCTS
                    .iter()
                    .chain(["+", "*"].iter())
                    .find(|p| bytes[i..].starts_with(p.as_bytes()))
                    .ok_or_else(|| {
                        let ch = text[i..].chars().next().unwrap_or('?');
                        TsdlError::new(line, format!("unexpected character {ch:?}"))
                    })?;
                out.push(Token {
                    tok: Tok::Punct(p),
                    line,
                });
                i += p.len();
            }
        }
    }
    Ok(out)
}

fn count_lines(s: &str) -> u32 {
    u32::try_from(s.bytes().filter(|&b| b == b'\n').count()).unwrap_or(u32::MAX)
}

/// An integer literal: decimal, `0x` hexadecimal or `0` octal, with optional `u`/`l`
/// suffixes. Returns the value and the bytes consumed.
fn integer(b: &[u8], line: u32) -> Result<(u64, usize), TsdlError> {
    let (radix, start) = if b.len() > 1 && b[0] == b'0' && (b[1] == b'x' || b[1] == b'X') {
        (16, 2)
    } else if b.len() > 1 && b[0] == b'0' && b[1].is_ascii_digit() {
        (8, 1)
    } else {
        (10, 0)
    };
    let mut end = start;
    while end < b.len() && (b[end] as char).is_digit(radix) {
        end += 1;
    }
    if end == start {
        return Err(TsdlError::new(line, "integer literal has no digits"));
    }
    // Only ASCII digits were accepted above, so this is valid UTF-8.
    let digits = std::str::from_utf8(&b[start..end]).unwrap_or("");
    let value = u64::from_str_radix(digits, radix)
        .map_err(|_| TsdlError::new(line, format!("integer literal {digits} is out of range")))?;
    while end < b.len() && matches!(b[end], b'u' | b'U' | b'l' | b'L') {
        end += 1;
    }
    if end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
        return Err(TsdlError::new(line, "bad integer literal"));
    }
    Ok((value, end))
}

/// A string literal starting at `s[0] == '"'`: the value, bytes consumed and newlines in it.
fn string(s: &str, line: u32) -> Result<(String, usize, u32), TsdlError> {
    quoted(s, '"', line)
}

fn quoted(s: &str, quote: char, line: u32) -> Result<(String, usize, u32), TsdlError> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1).peekable();
    let mut newlines = 0u32;
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, i + c.len_utf8(), newlines)),
            '\\' => {
                let (_, e) = chars
                    .next()
                    .ok_or_else(|| TsdlError::new(line, "unterminated literal"))?;
                let ch = match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'v' => '\u{b}',
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            match chars.peek() {
                                Some((_, d @ '0'..='7')) => {
                                    v = v * 8 + d.to_digit(8).unwrap_or(0);
                                    chars.next();
                                }
                                _ => break,
                            }
                        }
                        char::from_u32(v).unwrap_or('\u{fffd}')
                    }
                    'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while let Some((_, d)) = chars.peek() {
                            match d.to_digit(16) {
                                Some(x) if n < 2 => {
                                    v = v * 16 + x;
                                    n += 1;
                                    chars.next();
                                }
                                _ => break,
                            }
                        }
                        if n == 0 {
                            return Err(TsdlError::new(line, "\\x escape without digits"));
                        }
                        char::from_u32(v).unwrap_or('\u{fffd}')
                    }
                    other => other,
                };
                out.push(ch);
            }
            '\n' => {
                newlines = newlines.saturating_add(1);
                out.push('\n');
            }
            c => out.push(c),
        }
    }
    Err(TsdlError::new(line, "unterminated literal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn words_numbers_punctuation() {
        assert_eq!(
            toks("typealias integer { size = 0x1b; } := uint27_t; x...y -> 017 10UL"),
            vec![
                Tok::Word("typealias".into()),
                Tok::Word("integer".into()),
                Tok::Punct("{"),
                Tok::Word("size".into()),
                Tok::Punct("="),
                Tok::Int(27),
                Tok::Punct(";"),
                Tok::Punct("}"),
                Tok::Punct(":="),
                Tok::Word("uint27_t".into()),
                Tok::Punct(";"),
                Tok::Word("x".into()),
                Tok::Punct("..."),
                Tok::Word("y".into()),
                Tok::Punct("->"),
                Tok::Int(15),
                Tok::Int(10),
            ]
        );
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            toks(r#""a\"b\\c\n\101\x42" 'z'"#),
            vec![Tok::Str("a\"b\\c\nAB".into()), Tok::Int(u64::from(b'z'))]
        );
    }

    #[test]
    fn comments_are_skipped_and_lines_counted() {
        let t = tokenize("/* CTF 1.8 */\n// x\n/* a\nb */ word").unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].line, 4);
    }

    #[test]
    fn errors_name_the_line() {
        let e = tokenize("a\n\"open").unwrap_err();
        assert_eq!(e.to_string(), "line 2: unterminated literal");
        assert!(tokenize("/* never closed").is_err());
        assert!(
            tokenize("a @ b")
                .unwrap_err()
                .to_string()
                .contains("unexpected character '@'")
        );
        assert!(tokenize("99999999999999999999999").is_err());
        assert!(tokenize("12abc").is_err());
        assert!(tokenize("'ab'").is_err());
    }
}
