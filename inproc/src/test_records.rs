//! A reader for the records of docs/format.md, for the unit and integration tests (which
//! include this file by path): header, then the payload
//! decoded from the event's field types.

use drtrace_proto::event::FieldType;

/// A decoded field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U(u64),
    I(i64),
    F(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: u32,
    /// The full timestamp (rebuilt from the previous one for compact headers).
    pub timestamp: u64,
    /// True for the 13-byte extended header.
    pub extended: bool,
    pub fields: Vec<Value>,
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err(format!(
            "record truncated: need {n} bytes, {} left",
            buf.len()
        ));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn le<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], String> {
    Ok(take(buf, N)?.try_into().expect("length checked"))
}

/// Decodes every record of one packet's content. `fields_of(id)` gives the layout of an
/// event id; `begin` is the packet's `timestamp_begin`.
pub fn decode(
    mut buf: &[u8],
    begin: u64,
    fields_of: impl Fn(u32) -> Option<Vec<FieldType>>,
) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut prev = begin;
    while !buf.is_empty() {
        let first = buf[0];
        let (id, timestamp, extended) = if first & 0x1f == 31 {
            take(&mut buf, 1)?;
            let id = u32::from_le_bytes(le(&mut buf)?);
            let ts = u64::from_le_bytes(le(&mut buf)?);
            (id, ts, true)
        } else {
            let word = u32::from_le_bytes(le(&mut buf)?);
            let low = u64::from(word >> 5);
            let mut ts = (prev & !0x7ff_ffff) | low;
            if ts < prev {
                ts += 1 << 27;
            }
            (word & 0x1f, ts, false)
        };
        prev = timestamp;
        let types = fields_of(id).ok_or_else(|| format!("unknown event id {id}"))?;
        let mut fields = Vec::new();
        for ty in types {
            fields.push(match ty {
                FieldType::U8 => Value::U(u64::from(le::<1>(&mut buf)?[0])),
                FieldType::U16 => Value::U(u64::from(u16::from_le_bytes(le(&mut buf)?))),
                FieldType::U32 => Value::U(u64::from(u32::from_le_bytes(le(&mut buf)?))),
                FieldType::U64 => Value::U(u64::from_le_bytes(le(&mut buf)?)),
                FieldType::I8 => Value::I(i64::from(i8::from_le_bytes(le(&mut buf)?))),
                FieldType::I16 => Value::I(i64::from(i16::from_le_bytes(le(&mut buf)?))),
                FieldType::I32 => Value::I(i64::from(i32::from_le_bytes(le(&mut buf)?))),
                FieldType::I64 => Value::I(i64::from_le_bytes(le(&mut buf)?)),
                FieldType::F32 => Value::F(f64::from(f32::from_le_bytes(le(&mut buf)?))),
                FieldType::F64 => Value::F(f64::from_le_bytes(le(&mut buf)?)),
                FieldType::Bool => Value::Bool(le::<1>(&mut buf)?[0] != 0),
                FieldType::String => {
                    let end = buf
                        .iter()
                        .position(|b| *b == 0)
                        .ok_or("string without NUL")?;
                    let s = String::from_utf8(take(&mut buf, end)?.to_vec())
                        .map_err(|e| e.to_string())?;
                    take(&mut buf, 1)?;
                    Value::Str(s)
                }
                FieldType::Bytes => {
                    let len = u32::from_le_bytes(le(&mut buf)?) as usize;
                    Value::Bytes(take(&mut buf, len)?.to_vec())
                }
            });
        }
        out.push(Record {
            id,
            timestamp,
            extended,
            fields,
        });
    }
    Ok(out)
}
