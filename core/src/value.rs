//! The protocol's data model (SPEC §2.4): every frame, whatever its encoding, is decoded into a
//! [`Value`] and encoded from one.
//!
//! Integers and floats are distinct kinds (metadata type checks need that), but wherever values
//! are compared they compare as numbers, exactly: `10 == 10.0`, and a 64-bit integer is never
//! pushed through a lossy `f64` conversion.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// An object: string keys, unique, order not significant.
pub type Map = BTreeMap<String, Value>;

/// Every decoder refuses a frame whose containers nest this deep (127 levels are accepted, as
/// serde_json's own limit allows), so recursive code over values (comparison, encoding,
/// validation) can never exhaust the stack.
pub const MAX_DECODE_DEPTH: usize = 128;

/// One value of the data model.
///
/// Invariant: [`Value::UInt`] only holds values above `i64::MAX`; everything that fits an `i64`
/// is a [`Value::Int`]. Use [`Value::from_u64`] to keep it. [`Value::Float`] is always finite.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

/// A number of the data model, normalised so that mathematically equal numbers have one form.
///
/// Used as an index key: `Num::of(&Value::Float(10.0)) == Num::of(&Value::Int(10))`.
#[derive(Debug, Clone, Copy)]
pub enum Num {
    I(i64),
    U(u64),
    F(f64),
}

// === impl Value ===

impl Value {
    /// An unsigned integer, kept in the canonical form of the invariant.
    pub fn from_u64(n: u64) -> Value {
        match i64::try_from(n) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(n),
        }
    }

    /// A float, or `None` when it is NaN or infinite (outside the data model).
    pub fn from_f64(f: f64) -> Option<Value> {
        f.is_finite().then_some(Value::Float(f))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::UInt(_) | Value::Float(_))
    }

    /// The value as a number, if it is one.
    pub fn as_num(&self) -> Option<Num> {
        match *self {
            Value::Int(i) => Some(Num::I(i)),
            Value::UInt(u) => Some(Num::U(u)),
            Value::Float(f) => Some(Num::F(f)),
            _ => None,
        }
    }

    /// The value as `f64` (lossy for large integers); for averages.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// SPEC §5.6: a scalar has depth 0; an array or object 1 + the deepest member.
    pub fn depth(&self) -> usize {
        match self {
            Value::Array(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(Value::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether the value nests deeper than `max` (cheaper than [`Value::depth`] on deep input:
    /// it stops descending at the limit).
    pub fn deeper_than(&self, max: usize) -> bool {
        match self {
            Value::Array(items) => max == 0 || items.iter().any(|v| v.deeper_than(max - 1)),
            Value::Object(map) => max == 0 || map.values().any(|v| v.deeper_than(max - 1)),
            _ => false,
        }
    }

    /// The name of the value's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::UInt(_) => "integer",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The compact JSON text of the value. Floats always keep a fraction or exponent, so they
    /// decode as floats again (SPEC §2.5).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    /// Appends the compact JSON text of the value to `out`.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Int(i) => write_json_int(*i, out),
            Value::UInt(u) => write_json_int(*u, out),
            Value::Float(f) => write_json_float(*f, out),
            Value::String(s) => write_json_str(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_str(k, out);
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// Length in bytes of [`Value::to_json`], without building the string for scalars.
    pub fn json_len(&self) -> usize {
        match self {
            Value::Null => 4,
            Value::Bool(true) => 4,
            Value::Bool(false) => 5,
            Value::String(s) => json_str_len(s),
            Value::Array(items) => {
                2 + items.iter().map(Value::json_len).sum::<usize>() + items.len().saturating_sub(1)
            }
            Value::Object(map) => {
                2 + map
                    .iter()
                    .map(|(k, v)| json_str_len(k) + 1 + v.json_len())
                    .sum::<usize>()
                    + map.len().saturating_sub(1)
            }
            Value::Int(i) => decimal_len(i.unsigned_abs()) + usize::from(*i < 0),
            Value::UInt(u) => decimal_len(*u),
            Value::Float(_) => self.to_json().len(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u64> for Value {
    fn from(u: u64) -> Self {
        Value::from_u64(u)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Object(m)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Writes a finite float so that it reads back as a float: `1.0`, `0.5`, `1e300`.
pub fn write_json_float(f: f64, out: &mut String) {
    // `{:?}` is the shortest round-trip form and always has a `.` or an exponent.
    let _ = write!(out, "{f:?}");
}

/// Writes an integer as JSON text (itoa: no `core::fmt` machinery on the hot path).
pub fn write_json_int(n: impl itoa::Integer, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Writes a JSON string literal with the minimal escapes (`"`, `\`, control characters).
pub fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    // Most strings need no escape: one pass that the compiler vectorises (a fold without an
    // early exit), then a single copy.
    let plain = !s.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.push_str(s);
        out.push('"');
        return;
    }
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

// === impl Num ===

const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

impl Num {
    /// The canonical form: an integral float that fits an integer becomes that integer, and
    /// `-0.0` becomes `0`.
    pub fn canonical(self) -> Num {
        match self {
            Num::F(f) if f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) => {
                Num::I(f as i64)
            }
            Num::F(f) if f.fract() == 0.0 && (TWO_POW_63..TWO_POW_64).contains(&f) => {
                Num::U(f as u64)
            }
            Num::U(u) => match i64::try_from(u) {
                Ok(i) => Num::I(i),
                Err(_) => Num::U(u),
            },
            other => other,
        }
    }

    /// Exact numeric order; floats are finite, so the order is total.
    pub fn cmp_exact(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::I(a), Num::I(b)) => a.cmp(&b),
            (Num::U(a), Num::U(b)) => a.cmp(&b),
            // Floats are finite, so `partial_cmp` always answers; -0.0 equals 0.0.
            (Num::F(a), Num::F(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Num::I(a), Num::U(b)) => cmp_i_u(a, b),
            (Num::U(a), Num::I(b)) => cmp_i_u(b, a).reverse(),
            (Num::I(a), Num::F(b)) => cmp_i_f(a, b),
            (Num::F(a), Num::I(b)) => cmp_i_f(b, a).reverse(),
            (Num::U(a), Num::F(b)) => cmp_u_f(a, b),
            (Num::F(a), Num::U(b)) => cmp_u_f(b, a).reverse(),
        }
    }
}

fn cmp_i_u(a: i64, b: u64) -> Ordering {
    match u64::try_from(a) {
        Ok(a) => a.cmp(&b),
        Err(_) => Ordering::Less,
    }
}

fn cmp_i_f(a: i64, b: f64) -> Ordering {
    if b >= TWO_POW_63 {
        return Ordering::Less;
    }
    if b < -TWO_POW_63 {
        return Ordering::Greater;
    }
    let t = b.trunc();
    // `t` lies in [-2^63, 2^63), so the conversion is exact.
    match a.cmp(&(t as i64)) {
        Ordering::Equal => t.partial_cmp(&b).unwrap_or(Ordering::Equal),
        o => o,
    }
}

fn cmp_u_f(a: u64, b: f64) -> Ordering {
    if b >= TWO_POW_64 {
        return Ordering::Less;
    }
    if b < 0.0 {
        return Ordering::Greater;
    }
    let t = b.trunc();
    match a.cmp(&(t as u64)) {
        Ordering::Equal => t.partial_cmp(&b).unwrap_or(Ordering::Equal),
        o => o,
    }
}

impl PartialEq for Num {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_exact(*other) == Ordering::Equal
    }
}

impl Eq for Num {}

impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Num {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_exact(*other)
    }
}

impl std::hash::Hash for Num {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Equal numbers must hash alike, so hash the canonical form.
        match self.canonical() {
            Num::I(i) => (0u8, i).hash(state),
            Num::U(u) => (1u8, u).hash(state),
            Num::F(f) => (2u8, f.to_bits()).hash(state),
        }
    }
}

// === serde ===

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a value of the ganglion data model")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from_u64(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Value::from_f64(v).ok_or_else(|| E::custom("NaN and infinite floats are not allowed"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Value, E> {
        std::str::from_utf8(v)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| E::custom("binary data is not valid UTF-8"))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(de)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        // A repeated key: the last occurrence wins (SPEC §2.4), which is what insert does.
        while let Some((k, v)) = access.next_entry::<String, Value>()? {
            map.insert(k, v);
        }
        Ok(Value::Object(map))
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => ser.serialize_unit(),
            Value::Bool(b) => ser.serialize_bool(*b),
            Value::Int(i) => ser.serialize_i64(*i),
            Value::UInt(u) => ser.serialize_u64(*u),
            Value::Float(f) => ser.serialize_f64(*f),
            Value::String(s) => ser.serialize_str(s),
            Value::Array(items) => {
                let mut seq = ser.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut m = ser.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_floats_compare_exactly() {
        assert_eq!(Num::I(10), Num::F(10.0));
        assert!(Num::I(i64::MAX) < Num::F(TWO_POW_63));
        assert!(Num::I(9_007_199_254_740_993) > Num::F(9_007_199_254_740_992.0));
        assert!(Num::U(u64::MAX) < Num::F(TWO_POW_64));
        assert!(Num::U(u64::MAX) > Num::F(1e19));
        assert!(Num::I(-1) < Num::U(u64::MAX));
        assert_eq!(Num::F(-0.0), Num::F(0.0));
        assert_eq!(Num::F(-0.0), Num::I(0));
        assert!(Num::I(1) > Num::F(0.5));
        assert!(Num::I(-1) < Num::F(-0.5));
    }

    #[test]
    fn canonical_form_unifies_equal_numbers() {
        assert!(matches!(Num::F(3.0).canonical(), Num::I(3)));
        assert!(matches!(Num::F(-0.0).canonical(), Num::I(0)));
        assert!(matches!(Num::F(1.5).canonical(), Num::F(_)));
        assert!(matches!(
            Num::F(1e19).canonical(),
            Num::U(10_000_000_000_000_000_000)
        ));
    }

    #[test]
    fn json_text_keeps_floats_floats() {
        let v = Value::Array(vec![
            Value::Float(1.0),
            Value::Float(0.5),
            Value::Int(-3),
            Value::Int(i64::MIN),
            Value::Int(0),
            Value::from_u64(u64::MAX),
            Value::String("a\"b\\c\n\u{1}é".into()),
        ]);
        assert_eq!(
            v.to_json(),
            r#"[1.0,0.5,-3,-9223372036854775808,0,18446744073709551615,"a\"b\\c\n\u0001é"]"#
        );
        assert_eq!(v.json_len(), v.to_json().len());
    }

    #[test]
    fn depth_counts_containers() {
        let v = Value::Array(vec![Value::Object(Map::from([(
            "a".to_owned(),
            Value::Array(vec![]),
        )]))]);
        assert_eq!(v.depth(), 3);
        assert!(v.deeper_than(2));
        assert!(!v.deeper_than(3));
        assert_eq!(Value::Int(1).depth(), 0);
    }
}
