//! Parsing tracefs format descriptions: `events/<sys>/<event>/format`, `events/header_page`
//! and `events/header_event`.
//!
//! An event's `format` file lists its fields as C declarations with their byte offset and
//! size in the event's data, and whether they are signed:
//!
//! ```text
//! name: sched_switch
//! ID: 372
//! format:
//!     field:unsigned short common_type;    offset:0;    size:2;    signed:0;
//!     ...
//!     field:char prev_comm[16];    offset:8;    size:16;    signed:0;
//!     field:__data_loc char[] filename;    offset:8;    size:4;    signed:0;
//!
//! print fmt: "prev_comm=%s ...", REC->prev_comm, ...
//! ```
//!
//! Each field is classified into a [`FieldKind`] that says how to decode it. The sizes in the
//! file win over the C type (`field:int dfd; size:8` is a 64-bit value on this kernel), and
//! a field that fits no known shape becomes [`FieldKind::Bytes`] of its size: one odd field
//! never makes a whole event unusable.
//!
//! Dynamic fields (`__data_loc` and `__rel_loc`) hold a `u32` descriptor in the fixed part:
//! the payload's offset in the low 16 bits and its length in bytes in the high 16 bits. The
//! offset of `__data_loc` counts from the start of the event's data; that of `__rel_loc`
//! from the end of the descriptor field itself.

use std::fmt;

use thiserror::Error;

use crate::page::PageLayout;

/// A format description could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// A required line (`name:`, `ID:`, a header field) is absent.
    #[error("format has no {what}")]
    Missing {
        /// What was looked for.
        what: &'static str,
    },
    /// A line does not have the expected shape.
    #[error("line {line}: {reason}: {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
        /// The line.
        text: String,
    },
    /// `header_page` describes a page this parser cannot read.
    #[error("unsupported page layout: {reason}")]
    UnsupportedLayout {
        /// What is unsupported.
        reason: String,
    },
    /// `header_event` describes an event header other than the one this crate decodes.
    #[error("unsupported event header: {reason}")]
    UnsupportedEventHeader {
        /// What differs.
        reason: String,
    },
}

/// An event's full name, `system:event` as `available_events` and `set_event` write it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventName {
    /// The subsystem (`sched`, `syscalls`, ...): the directory under `events/`.
    pub system: String,
    /// The event (`sched_switch`): the directory under `events/<system>/`.
    pub event: String,
}

impl EventName {
    /// Builds a name from its two parts.
    pub fn new(system: impl Into<String>, event: impl Into<String>) -> Self {
        Self {
            system: system.into(),
            event: event.into(),
        }
    }

    /// Parses `system:event`; `None` when there is no colon or a part is empty.
    ///
    /// ```
    /// use drtrace_ftrace::format::EventName;
    /// let n = EventName::parse("sched:sched_switch").unwrap();
    /// assert_eq!((n.system.as_str(), n.event.as_str()), ("sched", "sched_switch"));
    /// assert!(EventName::parse("sched_switch").is_none());
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        let (system, event) = s.trim().split_once(':')?;
        if system.is_empty() || event.is_empty() {
            return None;
        }
        Some(Self::new(system, event))
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.system, self.event)
    }
}

/// An integer's shape: width, signedness, and whether viewers should show it in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntType {
    /// Bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Two's complement when true.
    pub signed: bool,
    /// A pointer (`void *`, `const char *`): shown in base 16.
    pub hex: bool,
}

impl IntType {
    /// Width in bytes as a `usize`.
    pub fn bytes(self) -> usize {
        usize::from(self.size)
    }
}

/// How a field's bytes are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// A scalar integer of the field's size.
    Int(IntType),
    /// `char name[N]`: a string of at most `len` bytes, ending at the first NUL.
    CharArray {
        /// `N`, the field's size.
        len: usize,
    },
    /// `T name[N]` for an integer `T`: `len` elements.
    Array {
        /// The element type.
        elem: IntType,
        /// The element count.
        len: usize,
    },
    /// `__data_loc char[] name` or `__rel_loc char[] name`: a string elsewhere in the event.
    DynString {
        /// `__rel_loc`: the offset counts from the end of the descriptor field.
        relative: bool,
    },
    /// `__data_loc T[] name` (or `__rel_loc`, or a `__data_loc` of a non-array type, read as
    /// bytes): a variable number of elements elsewhere in the event.
    DynArray {
        /// The element type (`u8` for anything that is not an integer array).
        elem: IntType,
        /// `__rel_loc`: the offset counts from the end of the descriptor field.
        relative: bool,
    },
    /// `char name[]` with size 0: a string running from the field's offset to the end of
    /// the event (ftrace's own `print` events).
    TrailingString,
    /// `T name[]` with size 0: elements from the field's offset to the end of the event.
    TrailingArray {
        /// The element type.
        elem: IntType,
    },
    /// Anything else: the field's raw bytes.
    Bytes {
        /// The field's size.
        len: usize,
    },
}

/// One field of a format file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// The C type as written, without the name and array brackets (`unsigned long`,
    /// `__data_loc char[]`, `const char *`).
    pub type_text: String,
    /// The array part as written (`[16]`, `[]`), or empty.
    pub array_text: String,
    /// Byte offset in the event's data.
    pub offset: usize,
    /// Size in bytes in the fixed part of the event.
    pub size: usize,
    /// The `signed:` flag.
    pub signed: bool,
    /// How to decode it.
    pub kind: FieldKind,
}

/// A parsed `events/<sys>/<event>/format` file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventFormat {
    /// The subsystem; format files do not say it, so it comes from the caller (the
    /// directory the file was read from).
    pub system: String,
    /// `name:`.
    pub name: String,
    /// `ID:`: the value of `common_type` in this event's records.
    pub id: u32,
    /// The fields shared by every event (`common_type`, `common_flags`,
    /// `common_preempt_count`, `common_pid`), in file order.
    pub common_fields: Vec<Field>,
    /// The event's own fields, in file order.
    pub fields: Vec<Field>,
}

impl EventFormat {
    /// Parses a format file's text; `system` is the directory it came from.
    ///
    /// ```
    /// use drtrace_ftrace::format::{EventFormat, FieldKind};
    /// let text = "name: sched_process_exec\nID: 365\nformat:\n\
    ///     \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
    ///     \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
    ///     \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\n\
    ///     print fmt: \"filename=%s\", __get_str(filename)\n";
    /// let f = EventFormat::parse("sched", text).unwrap();
    /// assert_eq!(f.id, 365);
    /// assert_eq!(f.common_fields.len(), 2);
    /// assert_eq!(f.fields[0].kind, FieldKind::DynString { relative: false });
    /// ```
    pub fn parse(system: &str, text: &str) -> Result<Self, FormatError> {
        let mut name = None;
        let mut id = None;
        let mut common_fields = Vec::new();
        let mut fields = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("name:") {
                name = Some(rest.trim().to_owned());
            } else if let Some(rest) = trimmed.strip_prefix("ID:") {
                id = Some(
                    rest.trim()
                        .parse::<u32>()
                        .map_err(|_| FormatError::BadLine {
                            line: i + 1,
                            reason: "ID is not a number",
                            text: line.to_owned(),
                        })?,
                );
            } else if trimmed.starts_with("field:") {
                let field = parse_field_line(i + 1, line)?;
                // The kernel prefixes the shared fields with `common_`; they come first.
                if field.name.starts_with("common_") && fields.is_empty() {
                    common_fields.push(field);
                } else {
                    fields.push(field);
                }
            } else if trimmed.starts_with("print fmt:") {
                break;
            }
        }
        Ok(Self {
            system: system.to_owned(),
            name: name.ok_or(FormatError::Missing { what: "name line" })?,
            id: id.ok_or(FormatError::Missing { what: "ID line" })?,
            common_fields,
            fields,
        })
    }

    /// `system:name`.
    pub fn full_name(&self) -> EventName {
        EventName::new(&self.system, &self.name)
    }

    /// The common field `name` (e.g. `common_pid`).
    pub fn common_field(&self, name: &str) -> Option<&Field> {
        self.common_fields.iter().find(|f| f.name == name)
    }

    /// The event field `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Parses one `field:...;offset:N;size:N;signed:N;` line.
fn parse_field_line(line_no: usize, line: &str) -> Result<Field, FormatError> {
    let bad = |reason| FormatError::BadLine {
        line: line_no,
        reason,
        text: line.to_owned(),
    };
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once(':') else {
            return Err(bad("a part has no colon"));
        };
        let value = value.trim();
        match key.trim() {
            "field" => decl = Some(value),
            "offset" => offset = Some(value.parse::<usize>().map_err(|_| bad("bad offset"))?),
            "size" => size = Some(value.parse::<usize>().map_err(|_| bad("bad size"))?),
            "signed" => signed = value != "0",
            // Newer kernels may add keys; they do not change the layout.
            _ => {}
        }
    }
    let decl = decl.ok_or_else(|| bad("no field declaration"))?;
    let offset = offset.ok_or_else(|| bad("no offset"))?;
    let size = size.ok_or_else(|| bad("no size"))?;
    let (type_text, name, array_text) =
        split_declaration(decl).ok_or_else(|| bad("no field name"))?;
    let kind = classify(&type_text, &array_text, size, signed);
    Ok(Field {
        name,
        type_text,
        array_text,
        offset,
        size,
        signed,
        kind,
    })
}

/// Splits `unsigned long args[6]` into (`unsigned long`, `args`, `[6]`).
fn split_declaration(decl: &str) -> Option<(String, String, String)> {
    let decl = decl.trim();
    let (head, array) = match decl.strip_suffix(']') {
        Some(_) => {
            let open = decl.rfind('[')?;
            (&decl[..open], &decl[open..])
        }
        None => (decl, ""),
    };
    let head = head.trim_end();
    let name_start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &head[name_start..];
    if name.is_empty() {
        return None;
    }
    Some((
        head[..name_start].trim().to_owned(),
        name.to_owned(),
        array.to_owned(),
    ))
}

/// Decides how a field is decoded from its type text, array part, size and signedness.
fn classify(type_text: &str, array_text: &str, size: usize, signed: bool) -> FieldKind {
    let bytes = FieldKind::Bytes { len: size };
    for (prefix, relative) in [("__data_loc", false), ("__rel_loc", true)] {
        if let Some(rest) = type_text.strip_prefix(prefix) {
            if size != 4 {
                return bytes;
            }
            let rest = rest.trim();
            return match rest.strip_suffix("[]") {
                Some(elem) if is_char(elem) => FieldKind::DynString { relative },
                Some(elem) => FieldKind::DynArray {
                    elem: named_int(elem).unwrap_or(U8),
                    relative,
                },
                None => FieldKind::DynArray { elem: U8, relative },
            };
        }
    }
    if let Some(inner) = array_text
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
    {
        let inner = inner.trim();
        if inner.is_empty() {
            // A flexible array member: it runs to the end of the event.
            if size != 0 {
                return bytes;
            }
            if is_char(type_text) {
                return FieldKind::TrailingString;
            }
            return match named_int(type_text) {
                Some(elem) => FieldKind::TrailingArray { elem },
                None => FieldKind::TrailingArray { elem: U8 },
            };
        }
        if is_char(type_text) {
            return FieldKind::CharArray { len: size };
        }
        // The count may be a macro name on some kernels; the size then decides.
        let elem_size = match inner.parse::<usize>() {
            Ok(0) => return bytes,
            Ok(n) if size % n == 0 => size / n,
            Ok(_) => return bytes,
            Err(_) => match named_int(type_text) {
                Some(t) => t.bytes(),
                None => return bytes,
            },
        };
        let Some(elem) = int_of_size(elem_size, signed, is_pointer(type_text)) else {
            return bytes;
        };
        if size % elem_size != 0 {
            return bytes;
        }
        return FieldKind::Array {
            elem,
            len: size / elem_size,
        };
    }
    match int_of_size(size, signed, is_pointer(type_text)) {
        Some(t) => FieldKind::Int(t),
        None => bytes,
    }
}

const U8: IntType = IntType {
    size: 1,
    signed: false,
    hex: false,
};

fn int_of_size(size: usize, signed: bool, hex: bool) -> Option<IntType> {
    match size {
        1 | 2 | 4 | 8 => Some(IntType {
            size: u8::try_from(size).ok()?,
            signed: signed && !hex,
            hex,
        }),
        _ => None,
    }
}

fn is_pointer(type_text: &str) -> bool {
    type_text.contains('*')
}

/// `char`, `const char`, `signed char`: text, not numbers (`unsigned char` and `u8` are
/// numbers).
fn is_char(type_text: &str) -> bool {
    let t = type_text.trim();
    let t = t.strip_prefix("const ").unwrap_or(t).trim();
    matches!(t, "char" | "signed char")
}

/// The element type named by a C type, for dynamic arrays, whose format line gives only
/// the 4-byte descriptor's size. `long` and pointers are 8 bytes: the kernels this runs on
/// are 64-bit (the page parser checks the same through `header_page`).
fn named_int(type_text: &str) -> Option<IntType> {
    let t = type_text.trim();
    let t = t.strip_prefix("const ").unwrap_or(t).trim();
    if is_pointer(t) {
        return int_of_size(8, false, true);
    }
    let (size, signed) = match t {
        "u8" | "__u8" | "uint8_t" | "unsigned char" | "bool" => (1, false),
        "s8" | "__s8" | "int8_t" | "char" | "signed char" => (1, true),
        "u16" | "__u16" | "uint16_t" | "unsigned short" | "__be16" | "__le16" => (2, false),
        "s16" | "__s16" | "int16_t" | "short" => (2, true),
        "u32" | "__u32" | "uint32_t" | "unsigned int" | "unsigned" | "__be32" | "__le32"
        | "gfp_t" | "dev_t" => (4, false),
        "s32" | "__s32" | "int32_t" | "int" | "pid_t" => (4, true),
        "u64" | "__u64" | "uint64_t" | "unsigned long" | "unsigned long long" | "size_t"
        | "__be64" | "__le64" => (8, false),
        "s64" | "__s64" | "int64_t" | "long" | "long long" | "ssize_t" | "loff_t" => (8, true),
        _ => return None,
    };
    int_of_size(size, signed, false)
}

/// Fields of `events/header_page`, which describe a ring-buffer page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderPage {
    /// `timestamp`: offset and size.
    pub timestamp: (usize, usize),
    /// `commit`: offset and size.
    pub commit: (usize, usize),
    /// `data`: offset and size.
    pub data: (usize, usize),
}

impl HeaderPage {
    /// Parses `events/header_page`:
    ///
    /// ```text
    ///     field: u64 timestamp;    offset:0;    size:8;    signed:0;
    ///     field: local_t commit;    offset:8;    size:8;    signed:1;
    ///     field: int overwrite;    offset:8;    size:1;    signed:1;
    ///     field: char data;    offset:16;    size:4080;    signed:0;
    /// ```
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut timestamp = None;
        let mut commit = None;
        let mut data = None;
        for (i, line) in text.lines().enumerate() {
            if !line.trim().starts_with("field:") {
                continue;
            }
            let f = parse_field_line(i + 1, line)?;
            let slot = match f.name.as_str() {
                "timestamp" => &mut timestamp,
                "commit" => &mut commit,
                "data" => &mut data,
                _ => continue,
            };
            *slot = Some((f.offset, f.size));
        }
        Ok(Self {
            timestamp: timestamp.ok_or(FormatError::Missing {
                what: "timestamp field",
            })?,
            commit: commit.ok_or(FormatError::Missing {
                what: "commit field",
            })?,
            data: data.ok_or(FormatError::Missing { what: "data field" })?,
        })
    }

    /// The page layout the page parser uses, after checking it is one it can read.
    pub fn layout(&self) -> Result<PageLayout, FormatError> {
        let unsupported = |reason: String| FormatError::UnsupportedLayout { reason };
        if self.timestamp != (0, 8) {
            return Err(unsupported(format!(
                "timestamp at {:?}, expected offset 0 size 8",
                self.timestamp
            )));
        }
        let (commit_offset, commit_size) = self.commit;
        if commit_offset != 8 || !(commit_size == 4 || commit_size == 8) {
            return Err(unsupported(format!(
                "commit at {:?}, expected offset 8 size 4 or 8",
                self.commit
            )));
        }
        let (data_offset, data_size) = self.data;
        if data_offset < commit_offset + commit_size {
            return Err(unsupported(format!(
                "data at {data_offset} overlaps the header"
            )));
        }
        let page_size = data_offset
            .checked_add(data_size)
            .filter(|&s| s <= PageLayout::MAX_PAGE_SIZE)
            .ok_or_else(|| unsupported(format!("page of {data_offset}+{data_size} bytes")))?;
        Ok(PageLayout {
            page_size,
            commit_size,
            data_offset,
        })
    }
}

/// Checks `events/header_event` against the event header [`crate::page`] decodes: a 5-bit
/// `type_len`, a 27-bit `time_delta`, padding 29, time extend 30, time stamp 31, and data
/// lengths up to 28 words in `type_len`.
pub fn check_header_event(text: &str) -> Result<(), FormatError> {
    let expect = [
        ("type_len", "5 bits"),
        ("time_delta", "27 bits"),
        ("padding", "type == 29"),
        ("time_extend", "type == 30"),
        ("time_stamp", "type == 31"),
        ("data max type_len", "== 28"),
    ];
    for (key, value) in expect {
        let found = text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.split_whitespace().collect::<Vec<_>>().join(" "))
        });
        let found = match found {
            Some(f) => f,
            // `data max type_len  == 28` has no colon.
            None => match text.lines().find(|l| l.trim().starts_with(key)) {
                Some(l) => l
                    .trim()
                    .strip_prefix(key)
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                None => {
                    return Err(FormatError::UnsupportedEventHeader {
                        reason: format!("no {key} line"),
                    });
                }
            },
        };
        if found != value {
            return Err(FormatError::UnsupportedEventHeader {
                reason: format!("{key} is {found:?}, expected {value:?}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;

print fmt: \"prev_comm=%s\", REC->prev_comm
";

    fn kind(decl: &str, size: usize, signed: bool) -> FieldKind {
        let line = format!(
            "\tfield:{decl};\toffset:8;\tsize:{size};\tsigned:{};",
            u8::from(signed)
        );
        parse_field_line(1, &line).unwrap().kind
    }

    fn int(size: u8, signed: bool) -> IntType {
        IntType {
            size,
            signed,
            hex: false,
        }
    }

    #[test]
    fn parses_sched_switch() {
        let f = EventFormat::parse("sched", SCHED_SWITCH).unwrap();
        assert_eq!(f.name, "sched_switch");
        assert_eq!(f.id, 372);
        assert_eq!(f.full_name().to_string(), "sched:sched_switch");
        let names: Vec<_> = f.common_fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid"
            ]
        );
        let comm = f.field("prev_comm").unwrap();
        assert_eq!(comm.type_text, "char");
        assert_eq!(comm.array_text, "[16]");
        assert_eq!((comm.offset, comm.size), (8, 16));
        assert_eq!(comm.kind, FieldKind::CharArray { len: 16 });
        assert_eq!(
            f.field("prev_pid").unwrap().kind,
            FieldKind::Int(int(4, true))
        );
        assert_eq!(
            f.field("prev_state").unwrap().kind,
            FieldKind::Int(int(8, true))
        );
        assert_eq!(
            f.common_field("common_pid").unwrap().kind,
            FieldKind::Int(int(4, true))
        );
    }

    #[test]
    fn classifies_every_shape() {
        // The size decides, not the C type: syscall arguments are 8 bytes whatever they say.
        assert_eq!(kind("int dfd", 8, false), FieldKind::Int(int(8, false)));
        assert_eq!(
            kind("unsigned long x", 8, false),
            FieldKind::Int(int(8, false))
        );
        assert_eq!(
            kind("const char * filename", 8, false),
            FieldKind::Int(IntType {
                size: 8,
                signed: false,
                hex: true
            })
        );
        assert_eq!(kind("bool b", 1, false), FieldKind::Int(int(1, false)));
        assert_eq!(
            kind("u8 uuid[16]", 16, false),
            FieldKind::Array {
                elem: int(1, false),
                len: 16
            }
        );
        assert_eq!(
            kind("unsigned long args[6]", 48, false),
            FieldKind::Array {
                elem: int(8, false),
                len: 6
            }
        );
        assert_eq!(
            kind("long v[3]", 24, true),
            FieldKind::Array {
                elem: int(8, true),
                len: 3
            }
        );
        assert_eq!(
            kind("char comm[TASK_COMM_LEN]", 16, false),
            FieldKind::CharArray { len: 16 }
        );
        assert_eq!(
            kind("u32 x[WIDTH]", 12, false),
            FieldKind::Array {
                elem: int(4, false),
                len: 3
            }
        );
        assert_eq!(
            kind("__data_loc char[] name", 4, false),
            FieldKind::DynString { relative: false }
        );
        assert_eq!(
            kind("__rel_loc char[] name", 4, false),
            FieldKind::DynString { relative: true }
        );
        assert_eq!(
            kind("__data_loc u64[] addrs", 4, false),
            FieldKind::DynArray {
                elem: int(8, false),
                relative: false
            }
        );
        assert_eq!(
            kind("__data_loc unsigned int[] lengths", 4, false),
            FieldKind::DynArray {
                elem: int(4, false),
                relative: false
            }
        );
        assert_eq!(
            kind("__data_loc cpumask_t mask", 4, false),
            FieldKind::DynArray {
                elem: int(1, false),
                relative: false
            }
        );
        assert_eq!(
            kind("__rel_loc struct foo[] x", 4, false),
            FieldKind::DynArray {
                elem: int(1, false),
                relative: true
            }
        );
        assert_eq!(kind("char buf[]", 0, false), FieldKind::TrailingString);
        assert_eq!(
            kind("u32 buf[]", 0, false),
            FieldKind::TrailingArray {
                elem: int(4, false)
            }
        );
        // Odd shapes become bytes rather than failing the event.
        assert_eq!(
            kind("struct in6_addr a", 16, false),
            FieldKind::Bytes { len: 16 }
        );
        assert_eq!(kind("u8 mac[6]", 7, false), FieldKind::Bytes { len: 7 });
        assert_eq!(kind("struct x y[0]", 0, false), FieldKind::Bytes { len: 0 });
        assert_eq!(
            kind("__data_loc char[] bad", 8, false),
            FieldKind::Bytes { len: 8 }
        );
        assert_eq!(kind("int odd", 3, true), FieldKind::Bytes { len: 3 });
        assert_eq!(kind("struct s v[]", 4, false), FieldKind::Bytes { len: 4 });
    }

    #[test]
    fn declaration_splitting() {
        assert_eq!(
            split_declaration("const char * filename"),
            Some(("const char *".into(), "filename".into(), String::new()))
        );
        assert_eq!(
            split_declaration("char*p"),
            Some(("char*".into(), "p".into(), String::new()))
        );
        assert_eq!(
            split_declaration("__data_loc char[] name"),
            Some(("__data_loc char[]".into(), "name".into(), String::new()))
        );
        assert_eq!(
            split_declaration("u8 x [ 4 ]"),
            Some(("u8".into(), "x".into(), "[ 4 ]".into()))
        );
        assert_eq!(split_declaration("int *"), None);
        assert_eq!(split_declaration("x]"), None);
    }

    #[test]
    fn bad_lines_are_errors() {
        let err = EventFormat::parse("s", "name: x\nID: nope\n").unwrap_err();
        assert_eq!(err.to_string(), "line 2: ID is not a number: \"ID: nope\"");
        assert_eq!(
            EventFormat::parse("s", "ID: 1\n").unwrap_err(),
            FormatError::Missing { what: "name line" }
        );
        assert!(matches!(
            EventFormat::parse("s", "name: x\nID: 1\n\tfield:int a;\toffset:x;\tsize:4;\n"),
            Err(FormatError::BadLine {
                line: 3,
                reason: "bad offset",
                ..
            })
        ));
        assert!(matches!(
            EventFormat::parse("s", "name: x\nID: 1\n\tfield:int a;\tsize:4;\n"),
            Err(FormatError::BadLine {
                reason: "no offset",
                ..
            })
        ));
    }

    #[test]
    fn header_page_layout() {
        let text = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";
        let h = HeaderPage::parse(text).unwrap();
        assert_eq!(h.commit, (8, 8));
        assert_eq!(
            h.layout().unwrap(),
            PageLayout {
                page_size: 4096,
                commit_size: 8,
                data_offset: 16
            }
        );
        let small = text.replace("size:8;\tsigned:1", "size:4;\tsigned:1");
        let small = small.replace("offset:16;\tsize:4080", "offset:12;\tsize:4084");
        assert_eq!(
            HeaderPage::parse(&small)
                .unwrap()
                .layout()
                .unwrap()
                .commit_size,
            4
        );
        let odd = text.replace("offset:16;\tsize:4080", "offset:8;\tsize:4080");
        assert!(matches!(
            HeaderPage::parse(&odd).unwrap().layout(),
            Err(FormatError::UnsupportedLayout { .. })
        ));
        assert_eq!(
            HeaderPage::parse("").unwrap_err(),
            FormatError::Missing {
                what: "timestamp field"
            }
        );
    }

    #[test]
    fn header_event_check() {
        let text = "# compressed entry header
\ttype_len    :    5 bits
\ttime_delta  :   27 bits
\tarray       :   32 bits

\tpadding     : type == 29
\ttime_extend : type == 30
\ttime_stamp : type == 31
\tdata max type_len  == 28
";
        check_header_event(text).unwrap();
        let err = check_header_event(&text.replace("== 30", "== 3")).unwrap_err();
        assert!(err.to_string().contains("time_extend"), "{err}");
        assert!(check_header_event(&text.replace("\tdata max type_len  == 28\n", "")).is_err());
    }
}
