//! A TSDL (CTF 1.8 metadata) parser: a tokenizer and a recursive-descent parser that
//! resolves type aliases as it goes and yields a [`Metadata`]: the trace, env, clocks, stream
//! classes and event classes, with every field type fully resolved into a [`FieldClass`].
//!
//! It covers what drtrace writes and what CTF producers commonly write: `typealias`,
//! `typedef`, named and anonymous `struct`/`variant`/`enum`, `integer` (any size from 1 to
//! 64 bits, any alignment, either byte order, clock mapping), `floating_point` (32 and 64
//! bits), `string`, fixed arrays (also multi-dimensional) and sequences. Unknown attributes
//! and unknown top-level blocks (`callsite`, ...) are skipped, as CTF asks of readers.
//! Nesting is limited to [`MAX_DEPTH`] levels so hostile metadata cannot exhaust the stack.

mod lexer;
mod parser;

use std::collections::BTreeMap;

use thiserror::Error;
use uuid::Uuid;

pub use crate::metadata::EnvValue;

/// Deepest nesting of types (and blocks) the parser accepts.
pub const MAX_DEPTH: usize = 64;
/// Most type nodes (members, options, elements) that copying aliases may create in all: a
/// small metadata file must not expand into gigabytes of types.
pub const MAX_COPIED_NODES: usize = 1 << 21;

/// Metadata text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {message}")]
pub struct TsdlError {
    /// The line (from 1) where the problem was found.
    pub line: u32,
    /// What is wrong.
    pub message: String,
}

impl TsdlError {
    pub(crate) fn new(line: u32, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

/// Parses TSDL text into a [`Metadata`].
///
/// ```
/// let md = drtrace_ctf::tsdl::parse(
///     "/* CTF 1.8 */
///      typealias integer { size = 32; align = 8; signed = false; } := uint32_t;
///      trace { major = 1; minor = 8; byte_order = le; };
///      stream { id = 0; };
///      event { name = \"a:b\"; id = 3; stream_id = 0; fields := struct { uint32_t _x; }; };",
/// )
/// .unwrap();
/// assert_eq!(md.streams[&0].events[&3].name, "a:b");
/// ```
pub fn parse(text: &str) -> Result<Metadata, TsdlError> {
    let tokens = lexer::tokenize(text)?;
    parser::Parser::new(tokens).parse()
}

/// Byte order of an integer or float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Least significant byte first; bit fields fill from the least significant bit.
    Little,
    /// Most significant byte first; bit fields fill from the most significant bit.
    Big,
}

/// Character encoding of a string, or of an integer (a character).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Not text.
    None,
    /// UTF-8.
    Utf8,
    /// ASCII.
    Ascii,
}

/// An `integer` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IntClass {
    /// Width in bits, 1 to 64.
    pub size: u32,
    /// Alignment in bits (a power of two).
    pub align: u32,
    /// Two's complement signed.
    pub signed: bool,
    /// Byte order (a `native` order is resolved to the trace's).
    pub byte_order: ByteOrder,
    /// Preferred display base: 2, 8, 10 or 16.
    pub base: u32,
    /// Text encoding, when the integer is a character.
    pub encoding: Encoding,
    /// The clock whose value this integer updates (`map = clock.NAME.value`).
    pub clock: Option<String>,
}

/// A `floating_point` type (binary32 or binary64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FloatClass {
    /// Exponent digits: 8 or 11.
    pub exp_dig: u32,
    /// Mantissa digits including the implicit bit: 24 or 53.
    pub mant_dig: u32,
    /// Alignment in bits.
    pub align: u32,
    /// Byte order.
    pub byte_order: ByteOrder,
}

impl FloatClass {
    /// Total width in bits.
    pub fn size(&self) -> u32 {
        self.exp_dig + self.mant_dig
    }
}

/// One label of an `enum`, covering `low..=high`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnumMapping {
    /// The label.
    pub label: String,
    /// Lowest value mapped.
    pub low: i128,
    /// Highest value mapped.
    pub high: i128,
}

/// An `enum` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnumClass {
    /// The integer that holds the value.
    pub container: IntClass,
    /// Labels in declaration order.
    pub mappings: Vec<EnumMapping>,
}

impl EnumClass {
    /// The first label whose range holds `value`.
    pub fn label(&self, value: i128) -> Option<&str> {
        self.mappings
            .iter()
            .find(|m| m.low <= value && value <= m.high)
            .map(|m| m.label.as_str())
    }
}

/// A named member of a structure, or an option of a variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// The name as written in the metadata (readers show it without one leading `_`).
    pub name: String,
    /// Its type.
    pub class: FieldClass,
    /// True for the length of a sequence that follows in the same structure: the sequence
    /// carries its length, so decoded values leave this member out.
    pub hidden: bool,
}

/// A `struct` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StructClass {
    /// Alignment in bits: the largest of `align(N)` and the members' alignments.
    pub align: u32,
    /// Members in order.
    pub members: Vec<Member>,
}

/// A `variant` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VariantClass {
    /// Where the selecting enum is (a name or dotted path); required before decoding.
    pub tag: Option<String>,
    /// The options; the one whose name is the tag's label is decoded.
    pub options: Vec<Member>,
}

/// A field type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldClass {
    /// `integer`.
    Int(IntClass),
    /// `floating_point`.
    Float(FloatClass),
    /// `string`: NUL-terminated.
    String(Encoding),
    /// `enum`.
    Enum(EnumClass),
    /// `struct`.
    Struct(StructClass),
    /// `variant`.
    Variant(VariantClass),
    /// A fixed-length array.
    Array {
        /// Element type.
        element: Box<FieldClass>,
        /// Number of elements.
        length: u64,
    },
    /// A sequence whose length is another field's value.
    Sequence {
        /// Element type.
        element: Box<FieldClass>,
        /// Where the length is (a name or dotted path).
        length: String,
    },
}

impl FieldClass {
    /// Alignment in bits before a value of this type (a variant's comes from its
    /// selected option, so it reports 1).
    pub fn align(&self) -> u32 {
        match self {
            FieldClass::Int(i) => i.align,
            FieldClass::Float(f) => f.align,
            FieldClass::String(_) => 8,
            FieldClass::Enum(e) => e.container.align,
            FieldClass::Struct(s) => s.align,
            FieldClass::Variant(_) => 1,
            FieldClass::Array { element, .. } | FieldClass::Sequence { element, .. } => {
                element.align()
            }
        }
    }

    /// Levels of nesting: 1 for a leaf type.
    pub fn depth(&self) -> usize {
        1 + match self {
            FieldClass::Struct(s) => s.members.iter().map(|m| m.class.depth()).max().unwrap_or(0),
            FieldClass::Variant(v) => v.options.iter().map(|m| m.class.depth()).max().unwrap_or(0),
            FieldClass::Array { element, .. } | FieldClass::Sequence { element, .. } => {
                element.depth()
            }
            _ => 0,
        }
    }

    /// Type nodes in this type, itself included.
    pub fn nodes(&self) -> usize {
        1 + match self {
            FieldClass::Struct(s) => s.members.iter().map(|m| m.class.nodes()).sum(),
            FieldClass::Variant(v) => v.options.iter().map(|m| m.class.nodes()).sum(),
            FieldClass::Array { element, .. } | FieldClass::Sequence { element, .. } => {
                element.nodes()
            }
            FieldClass::Enum(e) => e.mappings.len(),
            _ => 0,
        }
    }

    /// Fewest bits a value can take, not counting alignment; used to refuse arrays whose
    /// claimed length cannot fit in the bytes that are left.
    pub fn min_bits(&self) -> u64 {
        match self {
            FieldClass::Int(i) => u64::from(i.size),
            FieldClass::Float(f) => u64::from(f.size()),
            FieldClass::String(_) => 8,
            FieldClass::Enum(e) => u64::from(e.container.size),
            FieldClass::Struct(s) => s
                .members
                .iter()
                .fold(0u64, |acc, m| acc.saturating_add(m.class.min_bits())),
            FieldClass::Variant(v) => v
                .options
                .iter()
                .map(|o| o.class.min_bits())
                .min()
                .unwrap_or(0),
            FieldClass::Array { element, length } => element.min_bits().saturating_mul(*length),
            FieldClass::Sequence { .. } => 0,
        }
    }
}

/// A `clock` block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClockClass {
    /// Its name, which integers refer to with `map = clock.NAME.value`.
    pub name: String,
    /// Its uuid: clocks with equal uuids are the same clock.
    pub uuid: Option<Uuid>,
    /// Free text.
    pub description: Option<String>,
    /// Frequency in Hz (1e9 when absent).
    pub freq: u64,
    /// Seconds from the origin to cycle 0.
    pub offset_s: i64,
    /// Cycles added to `offset_s`.
    pub offset: u64,
    /// Uncertainty in cycles.
    pub precision: u64,
    /// Whether the origin is absolute (the Unix epoch).
    pub absolute: bool,
}

impl ClockClass {
    /// Nanoseconds from the clock's origin for a clock value, computed exactly as babeltrace2
    /// does, so that both print the same nanosecond: offset and value converted separately,
    /// each as `(u64)(1e9 * (double) cycles / (double) freq)` (exact when the frequency is
    /// 1 GHz). Exact integer arithmetic would differ by one nanosecond now and then, where the
    /// double rounds across an integer. Saturates at the `i64` range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn ns_from_origin(&self, cycles: u64) -> i64 {
        let freq = self.freq.max(1);
        let to_ns = |c: u64| -> i128 {
            if freq == 1_000_000_000 {
                return i128::from(c);
            }
            // The same double arithmetic as babeltrace2's `bt_util_ns_from_value`; the casts
            // are its casts (a float-to-int `as` saturates, which is its overflow check).
            let ns = (1e9 * c as f64) / freq as f64;
            i128::from(ns as u64)
        };
        let ns = i128::from(self.offset_s) * 1_000_000_000 + to_ns(self.offset) + to_ns(cycles);
        i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
    }
}

/// An `event` block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventClass {
    /// `provider:event` for drtrace events.
    pub name: String,
    /// Its id within its stream class.
    pub id: u64,
    /// The stream class it belongs to.
    pub stream_id: u64,
    /// The TSDL log level (babeltrace2's scale), if declared.
    pub loglevel: Option<i64>,
    /// `context := ...`.
    pub context: Option<FieldClass>,
    /// `fields := ...`: the payload.
    pub fields: Option<FieldClass>,
}

/// A `stream` block and its event classes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamClass {
    /// Its id (the packet header's `stream_id`).
    pub id: u64,
    /// `packet.context := ...`.
    pub packet_context: Option<FieldClass>,
    /// `event.header := ...`.
    pub event_header: Option<FieldClass>,
    /// `event.context := ...`.
    pub event_context: Option<FieldClass>,
    /// Event classes by id.
    pub events: BTreeMap<u64, EventClass>,
}

/// Everything a metadata file declares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// CTF major version (1).
    pub major: u64,
    /// CTF minor version (8).
    pub minor: u64,
    /// The trace's uuid, which every packet header repeats.
    pub uuid: Option<Uuid>,
    /// The trace's native byte order.
    pub byte_order: ByteOrder,
    /// `packet.header := ...`.
    pub packet_header: Option<FieldClass>,
    /// The `env` block, in order.
    pub env: Vec<(String, EnvValue)>,
    /// Clock classes.
    pub clocks: Vec<ClockClass>,
    /// Stream classes by id.
    pub streams: BTreeMap<u64, StreamClass>,
}

impl Metadata {
    /// The env entry `key`.
    pub fn env(&self, key: &str) -> Option<&EnvValue> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The env entry `key` if it is a string.
    pub fn env_str(&self, key: &str) -> Option<&str> {
        match self.env(key) {
            Some(EnvValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The clock class named `name`.
    pub fn clock(&self, name: &str) -> Option<&ClockClass> {
        self.clocks.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_conversion_matches_babeltrace2_rounding() {
        let mut c = ClockClass {
            name: "c".into(),
            uuid: None,
            description: None,
            freq: 1_000_000_000,
            offset_s: 10,
            offset: 5,
            precision: 1,
            absolute: false,
        };
        assert_eq!(c.ns_from_origin(7), 10_000_000_012);
        c.freq = 3;
        c.offset = 1; // 333.33 ns, rounded down alone
        assert_eq!(
            c.ns_from_origin(1),
            10_000_000_000 + 333_333_333 + 333_333_333
        );
        c.offset_s = i64::MAX;
        assert_eq!(c.ns_from_origin(0), i64::MAX);
        c.freq = 0; // treated as 1 Hz rather than dividing by zero
        c.offset_s = 0;
        assert_eq!(c.ns_from_origin(2), 3_000_000_000);
        // A TSC clock value where babeltrace2's double arithmetic rounds up across an
        // integer that exact arithmetic stops below (10000000078771 * 1e9 / 2299998015 is
        // 4347829873570.99...): the reader must print what babeltrace2 prints.
        c.freq = 2_299_998_015;
        c.offset = 0;
        assert_eq!(c.ns_from_origin(10_000_000_078_771), 4_347_829_873_571);
    }

    #[test]
    fn enum_labels_by_range() {
        let e = EnumClass {
            container: IntClass {
                size: 8,
                align: 8,
                signed: false,
                byte_order: ByteOrder::Little,
                base: 10,
                encoding: Encoding::None,
                clock: None,
            },
            mappings: vec![
                EnumMapping {
                    label: "a".into(),
                    low: 0,
                    high: 3,
                },
                EnumMapping {
                    label: "b".into(),
                    low: 4,
                    high: 4,
                },
            ],
        };
        assert_eq!(e.label(2), Some("a"));
        assert_eq!(e.label(4), Some("b"));
        assert_eq!(e.label(5), None);
        assert_eq!(FieldClass::Enum(e).min_bits(), 8);
    }
}
