//! `OutFrame` → MessagePack bytes (SPEC §2.6, outbound).
//!
//! Two passes over the frame: the first computes the exact length (cheap: lengths and integer
//! magnitudes only, no string bytes are read), the second writes into a buffer of exactly that
//! capacity, which `Bytes` then takes over without copying.
//!
//! Every string is the str family, never bin: singyeong-py decodes with `raw=False` and would
//! see `bytes` otherwise. Every map has str keys. Integers take the smallest family that holds
//! them, floats are always float 64.

use bytes::Bytes;
use ganglion_core::frame::TraceContext;
use ganglion_core::{Encoding, Out, OutFrame, RawValue, Value};

use super::marker::*;

pub(crate) fn encode(frame: &OutFrame) -> Bytes {
    let len = frame_len(frame);
    let mut buf = Vec::with_capacity(len);
    write_frame(frame, &mut buf);
    debug_assert_eq!(buf.len(), len, "msgpack size pass and write pass disagree");
    Bytes::from(buf)
}

// === write ===

fn write_frame(frame: &OutFrame, buf: &mut Vec<u8>) {
    write_map_header(4 + usize::from(frame.trace.is_some()), buf);
    // Key order is free; op, d, t, ts is the SPEC example's order, byte for byte.
    write_str("op", buf);
    write_uint(u64::from(frame.op), buf);
    write_str("d", buf);
    write_out(&frame.d, buf);
    write_str("t", buf);
    match &frame.t {
        Some(t) => write_str(t, buf),
        None => buf.push(NIL),
    }
    write_str("ts", buf);
    write_uint(frame.ts, buf);
    if let Some(trace) = &frame.trace {
        write_str("trace", buf);
        write_trace(trace, buf);
    }
}

fn write_trace(trace: &TraceContext, buf: &mut Vec<u8>) {
    write_map_header(1 + usize::from(trace.tracestate.is_some()), buf);
    write_str("traceparent", buf);
    write_str(&trace.traceparent, buf);
    if let Some(state) = &trace.tracestate {
        write_str("tracestate", buf);
        write_str(state, buf);
    }
}

fn write_out(out: &Out, buf: &mut Vec<u8>) {
    match out {
        Out::Null => buf.push(NIL),
        Out::Bool(b) => write_bool(*b, buf),
        Out::Int(i) => write_int(*i, buf),
        Out::Str(s) => write_str(s, buf),
        Out::Value(v) => write_value(v, buf),
        // In normal form it is already exactly what `write_value` would write.
        Out::Raw(raw) if passes_through(raw) => buf.extend_from_slice(&raw.bytes),
        Out::Raw(raw) => write_value(&raw.value(), buf),
        Out::Map(entries) => {
            write_map_header(entries.len(), buf);
            for (key, value) in entries {
                write_str(key, buf);
                write_out(value, buf);
            }
        }
        Out::BinMap(entries) => {
            write_map_header(entries.len(), buf);
            for (key, value) in entries {
                write_str(key, buf);
                write_out(value, buf);
            }
        }
        Out::List(items) => {
            write_array_header(items.len(), buf);
            for item in items {
                write_out(item, buf);
            }
        }
    }
}

fn write_value(value: &Value, buf: &mut Vec<u8>) {
    match value {
        Value::Null => buf.push(NIL),
        Value::Bool(b) => write_bool(*b, buf),
        Value::Int(i) => write_int(*i, buf),
        Value::UInt(u) => write_uint(*u, buf),
        Value::Float(f) => {
            buf.push(FLOAT64);
            buf.extend_from_slice(&f.to_be_bytes());
        }
        Value::String(s) => write_str(s, buf),
        Value::Array(items) => {
            write_array_header(items.len(), buf);
            for item in items {
                write_value(item, buf);
            }
        }
        Value::Object(map) => {
            write_map_header(map.len(), buf);
            for (key, value) in map {
                write_str(key, buf);
                write_value(value, buf);
            }
        }
    }
}

/// MessagePack client data in normal form is copied as it came.
fn passes_through(raw: &RawValue) -> bool {
    raw.normal && raw.encoding == Encoding::Msgpack
}

fn write_bool(b: bool, buf: &mut Vec<u8>) {
    buf.push(if b { TRUE } else { FALSE });
}

fn write_uint(n: u64, buf: &mut Vec<u8>) {
    if let Ok(b) = u8::try_from(n) {
        if b > 0x7f {
            buf.push(UINT8);
        }
        buf.push(b);
    } else if let Ok(h) = u16::try_from(n) {
        buf.push(UINT16);
        buf.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        buf.push(UINT32);
        buf.extend_from_slice(&w.to_be_bytes());
    } else {
        buf.push(UINT64);
        buf.extend_from_slice(&n.to_be_bytes());
    }
}

fn write_int(n: i64, buf: &mut Vec<u8>) {
    // Non-negative integers use the uint families, as every MessagePack encoder does.
    if let Ok(u) = u64::try_from(n) {
        write_uint(u, buf);
    } else if let Ok(b) = i8::try_from(n) {
        // -32..=-1 is a negative fixint: the marker byte is the value itself.
        if b < -32 {
            buf.push(INT8);
        }
        buf.extend_from_slice(&b.to_be_bytes());
    } else if let Ok(h) = i16::try_from(n) {
        buf.push(INT16);
        buf.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = i32::try_from(n) {
        buf.push(INT32);
        buf.extend_from_slice(&w.to_be_bytes());
    } else {
        buf.push(INT64);
        buf.extend_from_slice(&n.to_be_bytes());
    }
}

fn write_str(s: &str, buf: &mut Vec<u8>) {
    let len = s.len();
    match u8::try_from(len) {
        Ok(n @ 0..=31) => buf.push(FIXSTR | n),
        Ok(n) => buf.extend_from_slice(&[STR8, n]),
        Err(_) => write_len16_or_32(len, STR16, STR32, buf),
    }
    buf.extend_from_slice(s.as_bytes());
}

fn write_array_header(len: usize, buf: &mut Vec<u8>) {
    match u8::try_from(len) {
        Ok(n @ 0..=15) => buf.push(FIXARRAY | n),
        _ => write_len16_or_32(len, ARRAY16, ARRAY32, buf),
    }
}

fn write_map_header(len: usize, buf: &mut Vec<u8>) {
    match u8::try_from(len) {
        Ok(n @ 0..=15) => buf.push(FIXMAP | n),
        _ => write_len16_or_32(len, MAP16, MAP32, buf),
    }
}

fn write_len16_or_32(len: usize, m16: u8, m32: u8, buf: &mut Vec<u8>) {
    if let Ok(n) = u16::try_from(len) {
        buf.push(m16);
        buf.extend_from_slice(&n.to_be_bytes());
    } else {
        buf.push(m32);
        buf.extend_from_slice(&len32(len).to_be_bytes());
    }
}

/// MessagePack cannot express a length of 4 GiB or more. Nothing ganglion sends comes close:
/// client data is bounded by the inbound frame limit (`gateway.max_frame_bytes`, 1 MiB by
/// default) and ganglion's own maps and lists are small, so reaching this is a bug, not input.
fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("a MessagePack length must fit in 32 bits")
}

// === size ===

// Each function below mirrors its `write_*` counterpart above; `encode` checks they agree.

fn frame_len(frame: &OutFrame) -> usize {
    let trace = frame.trace.as_ref().map_or(0, |trace| {
        str_len("trace")
            + 1
            + str_len("traceparent")
            + str_len(&trace.traceparent)
            + trace
                .tracestate
                .as_ref()
                .map_or(0, |state| str_len("tracestate") + str_len(state))
    });
    1 + str_len("op")
        + uint_len(u64::from(frame.op))
        + str_len("d")
        + out_len(&frame.d)
        + str_len("t")
        + frame.t.as_ref().map_or(1, |t| str_len(t))
        + str_len("ts")
        + uint_len(frame.ts)
        + trace
}

fn out_len(out: &Out) -> usize {
    match out {
        Out::Null | Out::Bool(_) => 1,
        Out::Int(i) => int_len(*i),
        Out::Str(s) => str_len(s),
        Out::Value(v) => value_len(v),
        Out::Raw(raw) if passes_through(raw) => raw.bytes.len(),
        Out::Raw(raw) => value_len(&raw.value()),
        Out::Map(entries) => {
            container_header_len(entries.len())
                + entries
                    .iter()
                    .map(|(k, v)| str_len(k) + out_len(v))
                    .sum::<usize>()
        }
        Out::BinMap(entries) => {
            container_header_len(entries.len())
                + entries
                    .iter()
                    .map(|(k, v)| str_len(k) + out_len(v))
                    .sum::<usize>()
        }
        Out::List(items) => {
            container_header_len(items.len()) + items.iter().map(out_len).sum::<usize>()
        }
    }
}

fn value_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 1,
        Value::Int(i) => int_len(*i),
        Value::UInt(u) => uint_len(*u),
        Value::Float(_) => 9,
        Value::String(s) => str_len(s),
        Value::Array(items) => {
            container_header_len(items.len()) + items.iter().map(value_len).sum::<usize>()
        }
        Value::Object(map) => {
            container_header_len(map.len())
                + map
                    .iter()
                    .map(|(k, v)| str_len(k) + value_len(v))
                    .sum::<usize>()
        }
    }
}

fn uint_len(n: u64) -> usize {
    match n {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn int_len(n: i64) -> usize {
    match u64::try_from(n) {
        Ok(u) => uint_len(u),
        Err(_) if n >= -32 => 1,
        Err(_) if n >= i64::from(i8::MIN) => 2,
        Err(_) if n >= i64::from(i16::MIN) => 3,
        Err(_) if n >= i64::from(i32::MIN) => 5,
        Err(_) => 9,
    }
}

fn str_len(s: &str) -> usize {
    let header = match s.len() {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    };
    header + s.len()
}

fn container_header_len(len: usize) -> usize {
    match len {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_bytes(value: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        write_value(value, &mut buf);
        assert_eq!(buf.len(), value_len(value), "size pass for {value:?}");
        buf
    }

    #[test]
    fn integers_use_the_smallest_family_that_holds_them() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (255, &[0xcc, 0xff]),
            (256, &[0xcd, 0x01, 0x00]),
            (65535, &[0xcd, 0xff, 0xff]),
            (65536, &[0xce, 0, 1, 0, 0]),
            (4_294_967_295, &[0xce, 0xff, 0xff, 0xff, 0xff]),
            (4_294_967_296, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            (
                i64::MAX,
                &[0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
            (-1, &[0xff]),
            (-32, &[0xe0]),
            (-33, &[0xd0, 0xdf]),
            (-128, &[0xd0, 0x80]),
            (-129, &[0xd1, 0xff, 0x7f]),
            (-32768, &[0xd1, 0x80, 0x00]),
            (-32769, &[0xd2, 0xff, 0xff, 0x7f, 0xff]),
            (i64::from(i32::MIN), &[0xd2, 0x80, 0, 0, 0]),
            (
                i64::from(i32::MIN) - 1,
                &[0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
            ),
            (i64::MIN, &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for &(n, expected) in cases {
            assert_eq!(value_bytes(&Value::Int(n)), expected, "{n}");
        }
        assert_eq!(
            value_bytes(&Value::UInt(u64::MAX)),
            [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn floats_are_always_float64() {
        assert_eq!(
            value_bytes(&Value::Float(1.5)),
            [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(value_bytes(&Value::Float(1.0))[0], FLOAT64);
    }

    #[test]
    fn strings_are_always_the_str_family() {
        for (len, header) in [
            (0, &[0xa0][..]),
            (31, &[0xbf]),
            (32, &[0xd9, 32]),
            (255, &[0xd9, 0xff]),
            (256, &[0xda, 0x01, 0x00]),
            (65535, &[0xda, 0xff, 0xff]),
            (65536, &[0xdb, 0, 1, 0, 0]),
        ] {
            let s = "s".repeat(len);
            let bytes = value_bytes(&Value::String(s.clone()));
            assert_eq!(&bytes[..header.len()], header, "length {len}");
            assert_eq!(&bytes[header.len()..], s.as_bytes());
        }
    }

    #[test]
    fn container_headers_use_the_smallest_family() {
        for (len, header) in [
            (0, &[0x90][..]),
            (15, &[0x9f]),
            (16, &[0xdc, 0, 16]),
            (65535, &[0xdc, 0xff, 0xff]),
            (65536, &[0xdd, 0, 1, 0, 0]),
        ] {
            let bytes = value_bytes(&Value::Array(vec![Value::Null; len]));
            assert_eq!(&bytes[..header.len()], header, "array of {len}");
        }
        for (len, header) in [
            (0, &[0x80][..]),
            (15, &[0x8f]),
            (16, &[0xde, 0, 16]),
            (65536, &[0xdf, 0, 1, 0, 0]),
        ] {
            let map = (0..len).map(|i| (i.to_string(), Value::Null)).collect();
            let bytes = value_bytes(&Value::Object(map));
            assert_eq!(&bytes[..header.len()], header, "map of {len}");
        }
    }

    #[test]
    fn ganglion_maps_are_str_keyed_maps() {
        let out = Out::List(vec![
            Out::Map(vec![("a", Out::Bool(true))]),
            Out::BinMap(vec![("a".into(), Out::Bool(false))]),
        ]);
        let mut buf = Vec::new();
        write_out(&out, &mut buf);
        assert_eq!(buf, [0x92, 0x81, 0xa1, b'a', 0xc3, 0x81, 0xa1, b'a', 0xc2]);
        assert_eq!(buf.len(), out_len(&out));
    }
}
