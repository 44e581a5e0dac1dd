//! JSON (SPEC §2.5): text frames, compact output, floats that stay floats.
//!
//! Decoding is serde_json into core's `Value` (whose `Deserialize` impl already applies the data
//! model: last duplicate key wins, NaN and infinities refused, integer literals beyond `u64`
//! become floats). Encoding is hand-written straight into one pre-sized buffer with core's JSON
//! writers, so there is one escaping routine in the project and no intermediate tree.

use bytes::Bytes;
use ganglion_core::frame::TraceContext;
use ganglion_core::value::{write_json_int, write_json_str};
use ganglion_core::{Encoding, Envelope, Out, OutFrame, RawValue, Value};

use crate::{Codec, DecodeError};

mod scan;

/// The JSON codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

// === impl Json ===

impl Codec for Json {
    fn encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        decode(bytes)
    }

    fn decode_envelope(&self, bytes: &[u8], _max: usize) -> Result<Envelope, DecodeError> {
        decode_envelope(bytes)
    }

    fn decode_envelope_bytes(&self, frame: &Bytes, _max: usize) -> Result<Envelope, DecodeError> {
        match scan::routed(frame) {
            Some(envelope) => Ok(envelope),
            None => decode_envelope(frame),
        }
    }

    fn encode(&self, frame: &OutFrame) -> Bytes {
        encode(frame)
    }
}

// === decode ===

pub(crate) fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let text = object_text(bytes)?;
    // serde_json's default recursion limit is what enforces `MAX_NESTING` here (see its docs).
    match serde_json::from_slice::<Value>(&text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(DecodeError::new("the top-level value is not an object")),
        Err(e) => Err(DecodeError::new(e.to_string())),
    }
}

/// The text of a frame that may be an object, ready for serde_json: a non-object is refused
/// from its first byte instead of after parsing, say, a megabyte of array, and integer `-0`s
/// are rewritten (see [`integer_negative_zeros`]).
fn object_text(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, DecodeError> {
    let first = bytes
        .iter()
        .enumerate()
        .find(|(_, b)| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    match first {
        None => return Err(DecodeError::new("empty payload")),
        Some((_, b'{')) => {}
        Some((at, _)) => {
            return Err(DecodeError::at("the top-level value is not an object", at));
        }
    }
    Ok(match integer_negative_zeros(bytes) {
        Some(rewritten) => rewritten.into(),
        None => bytes.into(),
    })
}

/// A frame straight into an [`Envelope`]: top-level member names are matched as borrowed
/// strings instead of becoming a map with owned keys. Every value, known member or not, is
/// decoded into the data model, so a frame is refused or accepted exactly as by [`decode`].
pub(crate) fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    use serde::Deserializer as _;
    let text = object_text(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(&text);
    let envelope = de
        .deserialize_map(EnvelopeVisitor)
        .and_then(|envelope| de.end().map(|()| envelope));
    envelope.map_err(|e| DecodeError::new(e.to_string()))
}

/// The top-level members ganglion reads.
enum Member {
    Op,
    D,
    T,
    Ts,
    Trace,
    Other,
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Member, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Member;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }

            fn visit_str<E>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "op" => Member::Op,
                    "d" => Member::D,
                    "t" => Member::T,
                    "ts" => Member::Ts,
                    "trace" => Member::Trace,
                    _ => Member::Other,
                })
            }
        }
        de.deserialize_identifier(Name)
    }
}

struct EnvelopeVisitor;

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let (mut op, mut d, mut t, mut ts, mut trace) = (
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        );
        while let Some(member) = map.next_key::<Member>()? {
            let value: Value = map.next_value()?;
            // A repeated member: the last occurrence wins (SPEC §2.4).
            match member {
                Member::Op => op = value,
                Member::D => d = value,
                Member::T => t = value,
                Member::Ts => ts = value,
                Member::Trace => trace = value,
                Member::Other => {}
            }
        }
        Ok(Envelope::from_parts(&op, d, t, ts, trace))
    }
}

/// serde_json reads the literal `-0` as the float `-0.0`. It has no fraction and no exponent and
/// its value fits the integer range, so it is the integer 0 (SPEC §2.5). This rewrites every
/// such literal outside strings to ` 0`, of the same length so error offsets do not move, and
/// answers `None` (no copy) for the usual frame without one.
fn integer_negative_zeros(bytes: &[u8]) -> Option<Vec<u8>> {
    if !bytes.windows(2).any(|w| w == b"-0") {
        return None;
    }
    let mut rewritten: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-'
            && bytes.get(i + 1) == Some(&b'0')
            // `-0.5`, `-0e1` are floats; `-01` is invalid and left for serde_json to refuse.
            && !matches!(bytes.get(i + 2), Some(b'0'..=b'9' | b'.' | b'e' | b'E'))
        {
            rewritten.get_or_insert_with(|| bytes.to_vec())[i] = b' ';
        }
    }
    rewritten
}

// === encode ===

pub(crate) fn encode(frame: &OutFrame) -> Bytes {
    let mut buf = String::with_capacity(frame_len_hint(frame));
    // Key order is free (SPEC §2.5); op, d, t, ts matches the SPEC's examples.
    buf.push_str("{\"op\":");
    write_json_int(frame.op, &mut buf);
    buf.push_str(",\"d\":");
    write_out(&frame.d, &mut buf);
    buf.push_str(",\"t\":");
    match &frame.t {
        Some(t) => write_json_str(t, &mut buf),
        None => buf.push_str("null"),
    }
    buf.push_str(",\"ts\":");
    write_json_int(frame.ts, &mut buf);
    if let Some(trace) = &frame.trace {
        buf.push_str(",\"trace\":");
        write_trace(trace, &mut buf);
    }
    buf.push('}');
    Bytes::from(buf)
}

impl Json {
    /// The compact JSON text of one outbound node: HTTP bodies reuse the client objects and
    /// error shapes the gateway sends, written by the same code.
    pub fn to_text(out: &Out) -> String {
        let mut buf = String::with_capacity(out_len_hint(out));
        write_out(out, &mut buf);
        buf
    }
}

fn write_out(out: &Out, buf: &mut String) {
    match out {
        Out::Null => buf.push_str("null"),
        Out::Bool(true) => buf.push_str("true"),
        Out::Bool(false) => buf.push_str("false"),
        Out::Int(i) => write_json_int(*i, buf),
        Out::Str(s) => write_json_str(s, buf),
        Out::Value(v) => v.write_json(buf),
        Out::Raw(raw) => match passes_through(raw) {
            Some(text) => buf.push_str(text),
            None => raw.value().write_json(buf),
        },
        Out::Map(entries) => write_object(entries.iter().map(|(k, v)| (*k, v)), buf),
        Out::BinMap(entries) => write_object(entries.iter().map(|(k, v)| (&**k, v)), buf),
        Out::List(items) => {
            buf.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    buf.push(',');
                }
                write_out(item, buf);
            }
            buf.push(']');
        }
    }
}

/// The text of client data kept in JSON normal form: exactly what writing its value would give.
fn passes_through(raw: &RawValue) -> Option<&str> {
    if raw.encoding == Encoding::Json && raw.normal {
        std::str::from_utf8(&raw.bytes).ok()
    } else {
        None
    }
}

fn write_object<'a>(entries: impl Iterator<Item = (&'a str, &'a Out)>, buf: &mut String) {
    buf.push('{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            buf.push(',');
        }
        write_json_str(key, buf);
        buf.push(':');
        write_out(value, buf);
    }
    buf.push('}');
}

fn write_trace(trace: &TraceContext, buf: &mut String) {
    buf.push_str("{\"traceparent\":");
    write_json_str(&trace.traceparent, buf);
    if let Some(state) = &trace.tracestate {
        buf.push_str(",\"tracestate\":");
        write_json_str(state, buf);
    }
    buf.push('}');
}

// === size hint ===

// The hint sizes the output buffer so a frame is written without reallocating. It is exact
// except where exactness would cost a second pass over string bytes or a float formatting: it
// assumes strings need no escapes and reserves the longest float text. Being a little off only
// costs one reallocation or a few spare bytes.

/// `{"op":` `,"d":` `,"t":` `,"ts":` `}`.
const ENVELOPE_LEN: usize = 6 + 5 + 5 + 6 + 1;
/// `-2.2250738585072014e-308` is as long as Rust's shortest round-trip `f64` text gets.
const FLOAT_LEN: usize = 24;

fn frame_len_hint(frame: &OutFrame) -> usize {
    let t = frame.t.as_ref().map_or(4, |t| str_len_hint(t));
    let trace = frame.trace.as_ref().map_or(0, |trace| {
        // `,"trace":` `{"traceparent":` … `,"tracestate":` … `}`
        9 + 15
            + str_len_hint(&trace.traceparent)
            + trace
                .tracestate
                .as_ref()
                .map_or(0, |state| 14 + str_len_hint(state))
            + 1
    });
    ENVELOPE_LEN
        + uint_len(u64::from(frame.op))
        + out_len_hint(&frame.d)
        + t
        + uint_len(frame.ts)
        + trace
}

fn out_len_hint(out: &Out) -> usize {
    match out {
        Out::Null | Out::Bool(true) => 4,
        Out::Bool(false) => 5,
        Out::Int(i) => int_len(*i),
        Out::Str(s) => str_len_hint(s),
        Out::Value(v) => value_len_hint(v),
        // A hint only: about as long as its binary form.
        Out::Raw(raw) => raw.bytes.len(),
        Out::Map(entries) => object_len_hint(entries.iter().map(|(k, v)| (k.len(), v))),
        Out::BinMap(entries) => object_len_hint(entries.iter().map(|(k, v)| (k.len(), v))),
        Out::List(items) => {
            2 + items.len().saturating_sub(1) + items.iter().map(out_len_hint).sum::<usize>()
        }
    }
}

fn object_len_hint<'a>(entries: impl ExactSizeIterator<Item = (usize, &'a Out)>) -> usize {
    let separators = entries.len().saturating_sub(1);
    // `"key":value` per entry.
    2 + separators + entries.map(|(k, v)| k + 3 + out_len_hint(v)).sum::<usize>()
}

fn value_len_hint(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Int(i) => int_len(*i),
        Value::UInt(u) => uint_len(*u),
        Value::Float(_) => FLOAT_LEN,
        Value::String(s) => str_len_hint(s),
        Value::Array(items) => {
            2 + items.len().saturating_sub(1) + items.iter().map(value_len_hint).sum::<usize>()
        }
        Value::Object(map) => {
            2 + map.len().saturating_sub(1)
                + map
                    .iter()
                    .map(|(k, v)| k.len() + 3 + value_len_hint(v))
                    .sum::<usize>()
        }
    }
}

fn str_len_hint(s: &str) -> usize {
    s.len() + 2
}

fn uint_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn int_len(n: i64) -> usize {
    usize::from(n < 0) + uint_len(n.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use ganglion_core::Map;
    use ganglion_core::value::write_json_float;

    use super::*;

    fn frame(d: Out) -> OutFrame {
        OutFrame {
            op: 3,
            t: None,
            d,
            ts: 42,
            trace: None,
        }
    }

    #[test]
    fn integer_text_lengths_are_exact() {
        for n in [0, 9, 10, 99, 100, i64::MAX, -1, -10, i64::MIN] {
            assert_eq!(int_len(n), n.to_string().len(), "{n}");
        }
        for n in [0, 1, 9, 10, u64::MAX] {
            assert_eq!(uint_len(n), n.to_string().len(), "{n}");
        }
    }

    #[test]
    fn the_size_hint_is_exact_for_frames_without_floats_or_escapes() {
        let d = Out::Map(vec![
            ("error", Out::str("no")),
            ("extra_info", Out::Null),
            ("flag", Out::Bool(false)),
            ("n", Out::Int(-12)),
            ("list", Out::List(vec![Out::Int(1), Out::Bool(true)])),
            (
                "bin",
                Out::BinMap(vec![(Cow::Borrowed("k"), Out::List(vec![]))]),
            ),
            (
                "data",
                Out::Value(Value::Object(Map::from([
                    ("a".to_owned(), Value::from_u64(u64::MAX)),
                    ("b".to_owned(), Value::Array(vec![Value::Null, "x".into()])),
                ]))),
            ),
        ]);
        let mut f = frame(d);
        f.t = Some("SEND".into());
        f.trace = Some(TraceContext {
            traceparent: "00-ab-cd-01".to_owned(),
            tracestate: Some("k=v".to_owned()),
        });
        assert_eq!(frame_len_hint(&f), encode(&f).len());
        f.trace = None;
        f.t = None;
        assert_eq!(frame_len_hint(&f), encode(&f).len());
    }

    #[test]
    fn the_size_hint_covers_every_float() {
        for f in [
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            5e-324,
            -1e-7,
        ] {
            let mut text = String::new();
            write_json_float(f, &mut text);
            assert!(text.len() <= FLOAT_LEN, "{text}");
        }
    }

    #[test]
    fn ganglion_maps_and_client_values_are_written_alike() {
        let bytes = encode(&frame(Out::List(vec![
            Out::Map(vec![("a", Out::Int(1))]),
            Out::BinMap(vec![(Cow::Borrowed("a"), Out::Int(1))]),
            Out::Value(Value::Object(Map::from([("a".to_owned(), Value::Int(1))]))),
        ])));
        assert_eq!(
            &bytes[..],
            br#"{"op":3,"d":[{"a":1},{"a":1},{"a":1}],"t":null,"ts":42}"#
        );
    }

    #[test]
    fn keys_and_strings_are_escaped() {
        let bytes = encode(&frame(Out::BinMap(vec![(
            Cow::Borrowed("q\"\n"),
            Out::str("\u{1}\\"),
        )])));
        assert_eq!(
            &bytes[..],
            br#"{"op":3,"d":{"q\"\n":"\u0001\\"},"t":null,"ts":42}"#
        );
    }

    #[test]
    fn the_literal_minus_zero_is_the_integer_zero() {
        let decoded = decode(br#"{"a":-0,"b":[-0, -0.0, -0e0, "-0", "\"-0"],"c":-0}"#).unwrap();
        let expected: Value =
            serde_json::from_str(r#"{"a":0,"b":[0, -0.0, -0.0, "-0", "\"-0"],"c":0}"#).unwrap();
        assert_eq!(decoded, expected);
        if let Value::Object(map) = &decoded {
            assert_eq!(map["a"], Value::Int(0));
            assert!(matches!(&map["b"], Value::Array(items) if items[1] == Value::Float(-0.0)));
        }
        assert!(decode(br#"{"a":-01}"#).is_err());
        assert_eq!(integer_negative_zeros(br#"{"a":"x-0"}"#), None);
    }

    #[test]
    fn a_non_object_is_refused_at_its_first_byte() {
        let err = decode(b"  [1]").unwrap_err();
        assert_eq!(err.offset(), Some(2));
        assert_eq!(decode(b" \n").unwrap_err().detail(), "empty payload");
    }
}
