//! Decoding field values from bits, driven by resolved [`FieldClass`]es.
//!
//! Sequence lengths and variant tags name fields decoded earlier: the decoder keeps the
//! structures under construction on a stack (innermost last) so a relative name is looked up
//! from the innermost structure outwards, and absolute names (`trace.packet.header.x`,
//! `stream.event.header.x`, ...) are looked up in the scopes already decoded for this packet
//! and event ([`Roots`]).

use super::bits::Bits;
use super::{DecodeError, Value};
use crate::record::rebuild_timestamp;
use crate::tsdl::{EnumClass, FieldClass, IntClass, StructClass};

/// Most elements a non-byte array or sequence may have: bounds the memory one record can
/// make the reader allocate, whatever the metadata and data claim.
pub(crate) const MAX_ARRAY_LEN: u64 = 1 << 22;

/// The dynamic scopes of CTF, in decoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    PacketHeader = 0,
    PacketContext = 1,
    EventHeader = 2,
    StreamEventContext = 3,
    EventContext = 4,
}

const ROOT_PREFIXES: [(&str, Root); 5] = [
    ("trace.packet.header.", Root::PacketHeader),
    ("stream.packet.context.", Root::PacketContext),
    ("stream.event.header.", Root::EventHeader),
    ("stream.event.context.", Root::StreamEventContext),
    ("event.context.", Root::EventContext),
];

/// Scopes decoded so far in the current packet and event.
#[derive(Debug, Default)]
pub(crate) struct Roots {
    values: [Option<Value>; 5],
}

impl Roots {
    pub(crate) fn set(&mut self, root: Root, value: Option<Value>) {
        self.values[root as usize] = value;
    }

    pub(crate) fn get(&self, root: Root) -> Option<&Value> {
        self.values[root as usize].as_ref()
    }

    pub(crate) fn take(&mut self, root: Root) -> Option<Value> {
        self.values[root as usize].take()
    }
}

/// The displayed name of a member: without one leading `_`, as babeltrace2 shows it.
pub(crate) fn display_name(name: &str) -> &str {
    name.strip_prefix('_').unwrap_or(name)
}

fn same_name(a: &str, b: &str) -> bool {
    a == b || display_name(a) == display_name(b)
}

/// A structure being decoded: its members so far, in class order (hidden ones included,
/// so indices match `class.members`).
struct Frame<'c> {
    class: &'c StructClass,
    values: Vec<(String, Value)>,
}

/// Decodes one scope. `clock` is the stream's current clock value: every clock-mapped
/// integer read updates it (CTF's rule for rebuilding narrow timestamps).
pub(crate) struct Decoder<'c, 'r> {
    frames: Vec<Frame<'c>>,
    roots: &'r Roots,
    pub(crate) clock: u64,
    /// Whether a `event.fields.` path refers to the outermost structure being decoded.
    in_fields: bool,
}

impl<'c, 'r> Decoder<'c, 'r> {
    pub(crate) fn new(roots: &'r Roots, clock: u64, in_fields: bool) -> Self {
        Self {
            frames: Vec::new(),
            roots,
            clock,
            in_fields,
        }
    }

    pub(crate) fn decode(
        &mut self,
        class: &'c FieldClass,
        bits: &mut Bits<'_>,
    ) -> Result<Value, DecodeError> {
        match class {
            FieldClass::Int(i) => {
                bits.align(i.align)?;
                let raw = bits.read(i.size, i.byte_order)?;
                self.tick(i, raw);
                Ok(int_value(i, raw))
            }
            FieldClass::Float(f) => {
                bits.align(f.align)?;
                let raw = bits.read(f.size(), f.byte_order)?;
                Ok(Value::F64(if f.size() == 32 {
                    f64::from(f32::from_bits(u32::try_from(raw).unwrap_or(0)))
                } else {
                    f64::from_bits(raw)
                }))
            }
            FieldClass::String(_) => {
                bits.align(8)?;
                let s = bits.cstring()?;
                Ok(Value::Str(String::from_utf8_lossy(s).into_owned()))
            }
            FieldClass::Enum(e) => {
                bits.align(e.container.align)?;
                let raw = bits.read(e.container.size, e.container.byte_order)?;
                self.tick(&e.container, raw);
                Ok(enum_value(e, raw))
            }
            FieldClass::Struct(s) => {
                bits.align(s.align)?;
                self.frames.push(Frame {
                    class: s,
                    values: Vec::with_capacity(s.members.len()),
                });
                for m in &s.members {
                    let v = self.decode(&m.class, bits)?;
                    if let Some(f) = self.frames.last_mut() {
                        f.values.push((display_name(&m.name).to_owned(), v));
                    }
                }
                let mut values = self.frames.pop().ok_or(DecodeError::Internal)?.values;
                if s.members.iter().any(|m| m.hidden) {
                    let mut hidden = s.members.iter().map(|m| m.hidden);
                    values.retain(|_| !hidden.next().unwrap_or(false));
                }
                Ok(Value::Struct(values))
            }
            FieldClass::Variant(v) => {
                let tag = v.tag.as_deref().ok_or(DecodeError::UntaggedVariant)?;
                let tag_value = self
                    .lookup(tag)
                    .ok_or_else(|| DecodeError::MissingReference {
                        what: "variant tag",
                        path: tag.to_owned(),
                    })?;
                let Value::Enum { label, value } = tag_value else {
                    return Err(DecodeError::TagNotEnum {
                        path: tag.to_owned(),
                    });
                };
                let option = label
                    .as_deref()
                    .and_then(|l| v.options.iter().find(|o| same_name(&o.name, l)))
                    .ok_or_else(|| DecodeError::NoVariantOption {
                        value: *value,
                        label: label.clone(),
                    })?;
                let inner = self.decode(&option.class, bits)?;
                Ok(Value::Variant {
                    option: display_name(&option.name).to_owned(),
                    value: Box::new(inner),
                })
            }
            FieldClass::Array { element, length } => self.array(element, *length, bits),
            FieldClass::Sequence { element, length } => {
                let n = self
                    .lookup(length)
                    .ok_or_else(|| DecodeError::MissingReference {
                        what: "sequence length",
                        path: length.clone(),
                    })?
                    .as_u64()
                    .ok_or_else(|| DecodeError::BadLength {
                        path: length.clone(),
                    })?;
                self.array(element, n, bits)
            }
        }
    }

    fn tick(&mut self, class: &IntClass, raw: u64) {
        if class.clock.is_some() {
            self.clock = rebuild_timestamp(self.clock, raw, class.size);
        }
    }

    fn array(
        &mut self,
        element: &'c FieldClass,
        length: u64,
        bits: &mut Bits<'_>,
    ) -> Result<Value, DecodeError> {
        bits.align(element.align())?;
        let min = element.min_bits();
        let fits = match min {
            0 => length <= MAX_ARRAY_LEN,
            min => length <= bits.remaining() / min,
        };
        if !fits {
            return Err(DecodeError::LengthTooLarge {
                length,
                available_bits: bits.remaining(),
            });
        }
        let byte_elements = match element {
            FieldClass::Int(i) if i.size == 8 && i.align % 8 == 0 && i.clock.is_none() => Some(i),
            _ => None,
        };
        if let Some(i) = byte_elements {
            let bytes = bits.bytes(length)?;
            return Ok(match i.encoding {
                // Characters: a string up to the first NUL, as babeltrace2 shows them.
                crate::tsdl::Encoding::Utf8 | crate::tsdl::Encoding::Ascii => {
                    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                    Value::Str(String::from_utf8_lossy(&bytes[..end]).into_owned())
                }
                crate::tsdl::Encoding::None if !i.signed => Value::Bytes(bytes.to_vec()),
                crate::tsdl::Encoding::None => Value::Array(
                    bytes
                        .iter()
                        .map(|&b| Value::I64(i64::from(b as i8)))
                        .collect(),
                ),
            });
        }
        if length > MAX_ARRAY_LEN {
            return Err(DecodeError::LengthTooLarge {
                length,
                available_bits: bits.remaining(),
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(length.min(4096)).unwrap_or(0));
        for _ in 0..length {
            out.push(self.decode(element, bits)?);
        }
        Ok(Value::Array(out))
    }

    /// The value at `path`: relative names from the innermost structure outwards, then
    /// absolute scope prefixes.
    fn lookup(&self, path: &str) -> Option<&Value> {
        for (prefix, root) in ROOT_PREFIXES {
            if let Some(rest) = path.strip_prefix(prefix) {
                return descend(self.roots.get(root)?, rest);
            }
        }
        if let Some(rest) = path.strip_prefix("event.fields.") {
            if !self.in_fields {
                return None;
            }
            let frame = self.frames.first()?;
            return frame_lookup(frame, rest);
        }
        self.frames.iter().rev().find_map(|f| frame_lookup(f, path))
    }
}

fn frame_lookup<'v>(frame: &'v Frame<'_>, path: &str) -> Option<&'v Value> {
    let (first, rest) = match path.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (path, None),
    };
    let index = frame.class.members[..frame.values.len()]
        .iter()
        .position(|m| m.name == first)
        .or_else(|| {
            frame.class.members[..frame.values.len()]
                .iter()
                .position(|m| same_name(&m.name, first))
        })?;
    let (_, value) = frame.values.get(index)?;
    match rest {
        Some(rest) => descend(value, rest),
        None => Some(value),
    }
}

fn descend<'v>(mut value: &'v Value, path: &str) -> Option<&'v Value> {
    for part in path.split('.') {
        while let Value::Variant { value: inner, .. } = value {
            value = inner;
        }
        let Value::Struct(members) = value else {
            return None;
        };
        value = members
            .iter()
            .find(|(n, _)| same_name(n, part))
            .map(|(_, v)| v)?;
    }
    Some(value)
}

fn int_value(class: &IntClass, raw: u64) -> Value {
    if class.signed {
        Value::I64(sign_extend(raw, class.size))
    } else {
        Value::U64(raw)
    }
}

fn sign_extend(raw: u64, size: u32) -> i64 {
    let shift = 64 - size.clamp(1, 64);
    ((raw << shift) as i64) >> shift
}

fn enum_value(class: &EnumClass, raw: u64) -> Value {
    let value = if class.container.signed {
        i128::from(sign_extend(raw, class.container.size))
    } else {
        i128::from(raw)
    };
    if is_bool(class) && (value == 0 || value == 1) {
        return Value::Bool(value == 1);
    }
    Value::Enum {
        label: class.label(value).map(str::to_owned),
        value,
    }
}

/// drtrace's boolean: an 8-bit unsigned enum of exactly `false = 0` and `true = 1`.
fn is_bool(class: &EnumClass) -> bool {
    let c = &class.container;
    c.size == 8
        && !c.signed
        && matches!(class.mappings.as_slice(),
            [f, t] if f.label == "false" && (f.low, f.high) == (0, 0)
                && t.label == "true" && (t.low, t.high) == (1, 1))
}

/// The last member named `id` in decoding order (a variant's nested `id` overrides the
/// outer one): the event id of CTF event headers such as drtrace's and LTTng's.
pub(crate) fn find_event_id(header: &Value) -> Option<u64> {
    let mut found = None;
    walk_id(header, &mut found);
    found
}

fn walk_id(value: &Value, found: &mut Option<u64>) {
    match value {
        Value::Struct(members) => {
            for (name, v) in members {
                if name == "id" {
                    if let Some(id) = v.as_u64() {
                        *found = Some(id);
                    }
                }
                walk_id(v, found);
            }
        }
        Value::Variant { value, .. } => walk_id(value, found),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdl::{self, FieldClass};

    fn fields_class(body: &str) -> FieldClass {
        let md = tsdl::parse(&format!(
            "typealias integer {{ size = 8; align = 8; signed = false; }} := uint8_t;
             typealias integer {{ size = 32; align = 8; signed = false; }} := uint32_t;
             typealias integer {{ size = 16; align = 8; signed = true; }} := int16_t;
             trace {{ major = 1; minor = 8; byte_order = le; }};
             event {{ name = e; fields := struct {{ {body} }}; }};"
        ))
        .unwrap();
        md.streams[&0].events[&0].fields.clone().unwrap()
    }

    fn decode(body: &str, data: &[u8]) -> Result<Value, DecodeError> {
        let class = fields_class(body);
        let roots = Roots::default();
        let mut d = Decoder::new(&roots, 0, true);
        let mut bits = Bits::new(data, 0, data.len() as u64 * 8);
        d.decode(&class, &mut bits)
    }

    #[test]
    fn integers_strings_and_sequences() {
        let v = decode(
            "uint8_t _a; int16_t _b; string _s; uint32_t _n_length; uint8_t _n[_n_length]; int16_t arr[2];",
            &[7, 0xfe, 0xff, b'h', 0, 2, 0, 0, 0, 9, 8, 1, 0, 0xff, 0xff],
        )
        .unwrap();
        assert_eq!(
            v,
            Value::Struct(vec![
                ("a".into(), Value::U64(7)),
                ("b".into(), Value::I64(-2)),
                ("s".into(), Value::Str("h".into())),
                ("n".into(), Value::Bytes(vec![9, 8])),
                (
                    "arr".into(),
                    Value::Array(vec![Value::I64(1), Value::I64(-1)])
                ),
            ])
        );
    }

    #[test]
    fn bools_enums_and_variants() {
        let body = "enum : uint8_t { \"false\" = 0, \"true\" = 1 } _b;
                    enum : uint8_t { A = 0, B = 1 ... 3 } tag;
                    variant <tag> { uint8_t A; string B; } v;";
        let v = decode(body, &[1, 2, b'x', 0]).unwrap();
        assert_eq!(v.member("b"), Some(&Value::Bool(true)));
        assert_eq!(
            v.member("tag"),
            Some(&Value::Enum {
                label: Some("B".into()),
                value: 2
            })
        );
        assert_eq!(
            v.member("v"),
            Some(&Value::Variant {
                option: "B".into(),
                value: Box::new(Value::Str("x".into()))
            })
        );
        // a boolean byte of 2 is not a boolean; it stays visible as an unlabeled enum
        let v = decode(body, &[2, 0, 5]).unwrap();
        assert_eq!(
            v.member("b"),
            Some(&Value::Enum {
                label: None,
                value: 2
            })
        );
        // tag 4 has no label: no option to decode
        assert!(matches!(
            decode(body, &[0, 4, 0]),
            Err(DecodeError::NoVariantOption { value: 4, .. })
        ));
    }

    #[test]
    fn lying_lengths_are_refused_before_allocating() {
        let body = "uint32_t n; uint32_t d[n];";
        let e = decode(body, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::LengthTooLarge {
                length: 0xffff_ffff,
                ..
            }
        ));
        let body = "uint32_t n; uint8_t d[n];";
        assert!(decode(body, &[0xff, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(matches!(
            decode("uint8_t d[missing];", &[0]),
            Err(DecodeError::MissingReference { .. })
        ));
        assert!(matches!(
            decode("string s;", b"abc"),
            Err(DecodeError::UnterminatedString { .. })
        ));
    }

    #[test]
    fn absolute_paths_and_nested_lookups() {
        let body = "uint8_t n; struct { uint8_t d[n]; uint8_t e[event.fields.n]; } inner;";
        let v = decode(body, &[2, 1, 2, 3, 4]).unwrap();
        assert_eq!(
            v.member("inner"),
            Some(&Value::Struct(vec![
                ("d".into(), Value::Bytes(vec![1, 2])),
                ("e".into(), Value::Bytes(vec![3, 4])),
            ]))
        );
        // n is not hidden: the sequences that use it are not its siblings
        assert_eq!(v.member("n"), Some(&Value::U64(2)));
    }

    #[test]
    fn clock_mapped_fields_rebuild_the_clock() {
        let md = tsdl::parse(
            "trace { major = 1; minor = 8; byte_order = le; };
             clock { name = c; };
             event { name = e; fields := struct {
                 integer { size = 8; align = 8; map = clock.c.value; } t;
             }; };",
        )
        .unwrap();
        let class = md.streams[&0].events[&0].fields.clone().unwrap();
        let roots = Roots::default();
        let mut d = Decoder::new(&roots, 0x1f0, true);
        let data = [0x05];
        d.decode(&class, &mut Bits::new(&data, 0, 8)).unwrap();
        assert_eq!(d.clock, 0x205);
    }

    #[test]
    fn event_id_prefers_the_nested_id() {
        let compact = Value::Struct(vec![
            (
                "id".into(),
                Value::Enum {
                    label: Some("compact".into()),
                    value: 4,
                },
            ),
            (
                "v".into(),
                Value::Variant {
                    option: "compact".into(),
                    value: Box::new(Value::Struct(vec![("timestamp".into(), Value::U64(1))])),
                },
            ),
        ]);
        assert_eq!(find_event_id(&compact), Some(4));
        let extended = Value::Struct(vec![
            (
                "id".into(),
                Value::Enum {
                    label: Some("extended".into()),
                    value: 31,
                },
            ),
            (
                "v".into(),
                Value::Variant {
                    option: "extended".into(),
                    value: Box::new(Value::Struct(vec![("id".into(), Value::U64(900))])),
                },
            ),
        ]);
        assert_eq!(find_event_id(&extended), Some(900));
        assert_eq!(find_event_id(&Value::Struct(vec![])), None);
        assert_eq!(sign_extend(0b100, 3), -4);
        assert_eq!(sign_extend(u64::MAX, 64), -1);
    }
}
