//! `OutFrame` → ETF bytes (SPEC §2.7, outbound).
//!
//! Two passes over the frame, as for MessagePack: the first computes the exact length, the
//! second writes into a buffer of exactly that capacity. The term is never compressed.
//!
//! Key typing: the envelope and `trace` have atom keys, every [`Out::Map`] has atom keys, every
//! [`Out::BinMap`] and every object inside an [`Out::Value`] has binary keys. Which maps are
//! which is decided where core builds them; this file only honours the distinction. Atoms are
//! SMALL_ATOM_UTF8_EXT, strings BINARY_EXT, null/true/false the atoms `nil`/`true`/`false`.

use bytes::Bytes;
use ganglion_core::frame::TraceContext;
use ganglion_core::{Out, OutFrame, Value};

use super::tag::*;

pub(crate) fn encode(frame: &OutFrame) -> Bytes {
    let len = frame_len(frame);
    let mut buf = Vec::with_capacity(len);
    buf.push(VERSION);
    write_frame(frame, &mut buf);
    debug_assert_eq!(buf.len(), len, "etf size pass and write pass disagree");
    Bytes::from(buf)
}

// === write ===

fn write_frame(frame: &OutFrame, buf: &mut Vec<u8>) {
    write_map_header(4 + usize::from(frame.trace.is_some()), buf);
    // Key order is free; this is the order Erlang itself writes a small map in (atoms sort by
    // name: d, op, t, trace, ts), so the SPEC's example hello comes out byte for byte.
    write_atom("d", buf);
    write_out(&frame.d, buf);
    write_atom("op", buf);
    write_uint(u64::from(frame.op), buf);
    write_atom("t", buf);
    match &frame.t {
        Some(t) => write_binary(t, buf),
        None => write_atom("nil", buf),
    }
    if let Some(trace) = &frame.trace {
        write_atom("trace", buf);
        write_trace(trace, buf);
    }
    write_atom("ts", buf);
    write_uint(frame.ts, buf);
}

fn write_trace(trace: &TraceContext, buf: &mut Vec<u8>) {
    write_map_header(1 + usize::from(trace.tracestate.is_some()), buf);
    write_atom("traceparent", buf);
    write_binary(&trace.traceparent, buf);
    if let Some(state) = &trace.tracestate {
        write_atom("tracestate", buf);
        write_binary(state, buf);
    }
}

fn write_out(out: &Out, buf: &mut Vec<u8>) {
    match out {
        Out::Null => write_atom("nil", buf),
        Out::Bool(b) => write_bool(*b, buf),
        Out::Int(i) => write_int(*i, buf),
        Out::Str(s) => write_binary(s, buf),
        Out::Value(v) => write_value(v, buf),
        Out::Raw(raw) => write_value(&raw.value(), buf),
        Out::Map(entries) => {
            write_map_header(entries.len(), buf);
            for (key, value) in entries {
                write_atom(key, buf);
                write_out(value, buf);
            }
        }
        Out::BinMap(entries) => {
            write_map_header(entries.len(), buf);
            for (key, value) in entries {
                write_binary(key, buf);
                write_out(value, buf);
            }
        }
        Out::List(items) => {
            write_list_header(items.len(), buf);
            for item in items {
                write_out(item, buf);
            }
            write_list_tail(buf);
        }
    }
}

/// Client data: binary keys at every depth.
fn write_value(value: &Value, buf: &mut Vec<u8>) {
    match value {
        Value::Null => write_atom("nil", buf),
        Value::Bool(b) => write_bool(*b, buf),
        Value::Int(i) => write_int(*i, buf),
        Value::UInt(u) => write_uint(*u, buf),
        Value::Float(f) => {
            buf.push(NEW_FLOAT);
            buf.extend_from_slice(&f.to_be_bytes());
        }
        Value::String(s) => write_binary(s, buf),
        Value::Array(items) => {
            write_list_header(items.len(), buf);
            for item in items {
                write_value(item, buf);
            }
            write_list_tail(buf);
        }
        Value::Object(map) => {
            write_map_header(map.len(), buf);
            for (key, value) in map {
                write_binary(key, buf);
                write_value(value, buf);
            }
        }
    }
}

fn write_bool(b: bool, buf: &mut Vec<u8>) {
    write_atom(if b { "true" } else { "false" }, buf);
}

fn write_uint(n: u64, buf: &mut Vec<u8>) {
    if let Ok(b) = u8::try_from(n) {
        buf.extend_from_slice(&[SMALL_INTEGER, b]);
    } else if let Ok(w) = i32::try_from(n) {
        buf.push(INTEGER);
        buf.extend_from_slice(&w.to_be_bytes());
    } else {
        write_big(false, n, buf);
    }
}

fn write_int(n: i64, buf: &mut Vec<u8>) {
    if let Ok(u) = u64::try_from(n) {
        write_uint(u, buf);
    } else if let Ok(w) = i32::try_from(n) {
        buf.push(INTEGER);
        buf.extend_from_slice(&w.to_be_bytes());
    } else {
        write_big(true, n.unsigned_abs(), buf);
    }
}

/// SMALL_BIG_EXT: digit count, sign, then the magnitude's significant bytes, little-endian.
fn write_big(negative: bool, magnitude: u64, buf: &mut Vec<u8>) {
    let digits = big_digits(magnitude);
    buf.extend_from_slice(&[SMALL_BIG, digits as u8, u8::from(negative)]);
    buf.extend_from_slice(&magnitude.to_le_bytes()[..digits]);
}

/// How many bytes the magnitude takes (1..=8; Erlang never writes a big integer of 0 digits).
fn big_digits(magnitude: u64) -> usize {
    let bits = 64 - magnitude.leading_zeros() as usize;
    bits.div_ceil(8).max(1)
}

fn write_binary(s: &str, buf: &mut Vec<u8>) {
    buf.push(BINARY);
    buf.extend_from_slice(&len32(s.len()).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Atoms are names ganglion chose (`&'static str` keys, `nil`, `true`, `false`), all far
/// shorter than the 255 bytes of SMALL_ATOM_UTF8_EXT.
fn write_atom(name: &str, buf: &mut Vec<u8>) {
    let len = u8::try_from(name.len()).expect("an atom ganglion writes is under 256 bytes");
    buf.extend_from_slice(&[SMALL_ATOM_UTF8, len]);
    buf.extend_from_slice(name.as_bytes());
}

fn write_map_header(len: usize, buf: &mut Vec<u8>) {
    buf.push(MAP);
    buf.extend_from_slice(&len32(len).to_be_bytes());
}

/// LIST_EXT's header; an empty list is NIL_EXT alone, written by [`write_list_tail`].
fn write_list_header(len: usize, buf: &mut Vec<u8>) {
    if len > 0 {
        buf.push(LIST);
        buf.extend_from_slice(&len32(len).to_be_bytes());
    }
}

/// The NIL_EXT tail of a proper list, which is also the whole of an empty one.
fn write_list_tail(buf: &mut Vec<u8>) {
    buf.push(NIL);
}

/// ETF cannot express a length of 4 GiB or more. Nothing ganglion sends comes close: client
/// data is bounded by the inbound frame limit (`gateway.max_frame_bytes`, 1 MiB by default) and
/// ganglion's own maps and lists are small, so reaching this is a bug, not input.
fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("an ETF length must fit in 32 bits")
}

// === size ===

// Each function below mirrors its `write_*` counterpart above; `encode` checks they agree.

fn frame_len(frame: &OutFrame) -> usize {
    let trace = frame.trace.as_ref().map_or(0, |trace| {
        atom_len("trace")
            + MAP_HEADER
            + atom_len("traceparent")
            + binary_len(&trace.traceparent)
            + trace
                .tracestate
                .as_ref()
                .map_or(0, |state| atom_len("tracestate") + binary_len(state))
    });
    1 + MAP_HEADER
        + atom_len("d")
        + out_len(&frame.d)
        + atom_len("op")
        + uint_len(u64::from(frame.op))
        + atom_len("t")
        + frame.t.as_ref().map_or(atom_len("nil"), |t| binary_len(t))
        + trace
        + atom_len("ts")
        + uint_len(frame.ts)
}

const MAP_HEADER: usize = 5;
const LIST_HEADER: usize = 5;

fn out_len(out: &Out) -> usize {
    match out {
        Out::Null => atom_len("nil"),
        Out::Bool(b) => bool_len(*b),
        Out::Int(i) => int_len(*i),
        Out::Str(s) => binary_len(s),
        Out::Value(v) => value_len(v),
        Out::Raw(raw) => value_len(&raw.value()),
        Out::Map(entries) => {
            MAP_HEADER
                + entries
                    .iter()
                    .map(|(k, v)| atom_len(k) + out_len(v))
                    .sum::<usize>()
        }
        Out::BinMap(entries) => {
            MAP_HEADER
                + entries
                    .iter()
                    .map(|(k, v)| binary_len(k) + out_len(v))
                    .sum::<usize>()
        }
        Out::List(items) => list_len(items.len()) + items.iter().map(out_len).sum::<usize>(),
    }
}

fn value_len(value: &Value) -> usize {
    match value {
        Value::Null => atom_len("nil"),
        Value::Bool(b) => bool_len(*b),
        Value::Int(i) => int_len(*i),
        Value::UInt(u) => uint_len(*u),
        Value::Float(_) => 9,
        Value::String(s) => binary_len(s),
        Value::Array(items) => list_len(items.len()) + items.iter().map(value_len).sum::<usize>(),
        Value::Object(map) => {
            MAP_HEADER
                + map
                    .iter()
                    .map(|(k, v)| binary_len(k) + value_len(v))
                    .sum::<usize>()
        }
    }
}

/// The header and tail of a list of `len` items.
fn list_len(len: usize) -> usize {
    if len == 0 { 1 } else { LIST_HEADER + 1 }
}

fn bool_len(b: bool) -> usize {
    atom_len(if b { "true" } else { "false" })
}

fn uint_len(n: u64) -> usize {
    match n {
        0..=0xff => 2,
        0x100..=0x7fff_ffff => 5,
        _ => 3 + big_digits(n),
    }
}

fn int_len(n: i64) -> usize {
    match u64::try_from(n) {
        Ok(u) => uint_len(u),
        Err(_) if i32::try_from(n).is_ok() => 5,
        Err(_) => 3 + big_digits(n.unsigned_abs()),
    }
}

fn binary_len(s: &str) -> usize {
    5 + s.len()
}

fn atom_len(name: &str) -> usize {
    2 + name.len()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn the_size_pass_matches_the_write_pass() {
        let values = [
            Value::Null,
            Value::Bool(false),
            Value::Int(-1),
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Float(1.5),
            Value::from("héllo"),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(300), Value::Array(vec![])]),
            Value::Object([("k".to_owned(), Value::Int(1 << 40))].into()),
        ];
        for value in values {
            let mut buf = Vec::new();
            write_value(&value, &mut buf);
            assert_eq!(buf.len(), value_len(&value), "{value:?}");
        }
        let out = Out::List(vec![
            Out::Map(vec![("a", Out::Bool(true)), ("b", Out::Int(70_000))]),
            Out::BinMap(vec![(Cow::Borrowed("c"), Out::str("d"))]),
            Out::List(vec![]),
            Out::Null,
        ]);
        let mut buf = Vec::new();
        write_out(&out, &mut buf);
        assert_eq!(buf.len(), out_len(&out));
    }

    #[test]
    fn big_integers_take_only_their_significant_bytes() {
        assert_eq!(big_digits(0), 1);
        assert_eq!(big_digits(0xff), 1);
        assert_eq!(big_digits(0x100), 2);
        assert_eq!(big_digits(1 << 31), 4);
        assert_eq!(big_digits(u64::MAX), 8);
    }
}
