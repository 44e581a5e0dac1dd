//! The JSON fast path for SEND and BROADCAST (`decode_envelope_bytes` keeping `d`'s members in
//! wire form) must be invisible: the same frames accepted and refused — with the same error —
//! as by the full decoder, the same values, and the same bytes on the wire for every recipient
//! encoding.
//!
//! Frames are written by a test writer that departs, at random, from the text ganglion's
//! encoder writes (whitespace, key order, escapes, number forms), so both the copied-as-is path
//! (normal form) and the decode-then-encode path run.

use std::fmt::Write as _;

mod support;

use bytes::Bytes;
use ganglion_codecs::{Codec, Etf, Json, Msgpack};
use ganglion_core::{Map, Out, Value};
use proptest::prelude::*;
use support::{Choices, delivered, same_meaning};

fn value() -> impl Strategy<Value = Value> {
    support::value("[a-z/\"\\\\\\n\\u{1}\\u{1f}\\u{7f}\\u{e9}\\u{1f600} ]{0,40}")
}

/// Writes a little whitespace where ganglion writes none, now and then.
fn space(choices: &mut Choices, out: &mut String) {
    if choices.depart() {
        out.push_str(" \n\t\r");
    }
}

/// Writes `value` as JSON text that means it, in a form chosen by `choices`.
fn write(value: &Value, choices: &mut Choices, out: &mut String) {
    match value {
        Value::Int(0) if choices.depart() => out.push_str("-0"),
        Value::Float(f) if choices.depart() => {
            let _ = write!(out, "{f:e}");
        }
        Value::String(s) => write_str(s, choices, out),
        Value::Array(items) => {
            out.push('[');
            space(choices, out);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    space(choices, out);
                }
                write(item, choices, out);
                space(choices, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            space(choices, out);
            let mut entries: Vec<_> = map.iter().collect();
            if choices.depart() {
                entries.reverse();
            }
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    space(choices, out);
                }
                write_str(key, choices, out);
                space(choices, out);
                out.push(':');
                space(choices, out);
                write(value, choices, out);
                space(choices, out);
            }
            out.push('}');
        }
        other => other.write_json(out),
    }
}

/// A string, each character written as ganglion writes it or, at random, escaped otherwise.
fn write_str(s: &str, choices: &mut Choices, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if choices.depart() {
            match c {
                '/' => out.push_str("\\/"),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04X}");
                    }
                }
            }
        } else {
            let mut one = String::new();
            ganglion_core::value::write_json_str(c.encode_utf8(&mut [0; 4]), &mut one);
            out.push_str(&one[1..one.len() - 1]);
        }
    }
    out.push('"');
}

fn encoded(value: &Value, choices: &mut Choices) -> String {
    let mut out = String::new();
    write(value, choices, &mut out);
    out
}

/// A SEND/BROADCAST frame: `members` of `d` in the given order, each already written.
fn frame(t: &str, members: &[(&str, String)]) -> Bytes {
    let d: Vec<String> = members
        .iter()
        .map(|(key, value)| format!("\"{key}\":{value}"))
        .collect();
    Bytes::from(format!(
        "{{\"op\":4,\"t\":\"{t}\",\"d\":{{{}}}}}",
        d.join(",")
    ))
}

/// Both decoders agree on `bytes`: both refuse it with the same error, or both accept it with
/// the same meaning.
fn agree(bytes: &Bytes) -> Result<(), TestCaseError> {
    let fast = Json.decode_envelope_bytes(bytes, 1 << 20);
    let full = Json.decode_envelope(bytes, 1 << 20);
    match (fast, full) {
        (Ok(fast), Ok(full)) => same_meaning(fast, full),
        (Err(fast), Err(full)) => {
            prop_assert_eq!(fast.to_string(), full.to_string());
            Ok(())
        }
        (fast, full) => Err(TestCaseError::fail(format!("{fast:?} / {full:?}"))),
    }
}

/// The fast path taken for a SEND whose payload is `payload` (target null).
fn fast_payload(payload: &str) -> ganglion_core::RawValue {
    let send = frame(
        "SEND",
        &[("target", "null".into()), ("payload", payload.into())],
    );
    Json.decode_envelope_bytes(&send, 1 << 20)
        .unwrap_or_else(|e| panic!("{payload} decodes: {e}"))
        .fast
        .unwrap_or_else(|| panic!("{payload} takes the fast path"))
        .payload
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The test writer writes what it means to.
    #[test]
    fn test_writer_is_faithful(v in value(), seed in 1u64.., canonical in any::<bool>()) {
        let mut choices = Choices((!canonical).then_some(seed));
        let text = format!("{{\"v\":{}}}", encoded(&v, &mut choices));
        let Ok(Value::Object(mut map)) = Json.decode(text.as_bytes()) else {
            return Err(TestCaseError::fail(format!("does not decode: {text}")));
        };
        prop_assert_eq!(map.remove("v"), Some(v));
    }

    /// A well-formed SEND or BROADCAST takes the fast path; its members decode to what was
    /// sent, and every encoding writes the payload exactly as if it had been decoded on arrival.
    #[test]
    fn fast_members_mean_what_was_sent(
        target in value(),
        payload in value(),
        nonce in prop::option::of(value()),
        extra in prop::option::of(value()),
        broadcast in any::<bool>(),
        seed in 1u64..,
        canonical in any::<bool>(),
    ) {
        let mut choices = Choices((!canonical).then_some(seed));
        let members = support::members(&target, &payload, &nonce, &extra, |v| {
            encoded(v, &mut choices)
        });
        let t = if broadcast { "BROADCAST" } else { "SEND" };
        let bytes = frame(t, &members);
        let normal = support::fast_members_mean(&Json, &bytes, &target, &payload, &nonce)?;
        // What ganglion's encoder writes is normal form, floats aside (never normal here),
        // so it is copied as it came.
        if canonical && !payload.to_json().contains(['.', 'e']) {
            prop_assert!(normal, "{}", members[0].1);
        }
        agree(&bytes)?;
    }

    /// Damaged SEND frames (a byte changed, the frame cut short, or bytes inserted) are
    /// accepted and refused alike, with the same meaning or error — also right after the
    /// intact frame, whose target the fast path then recognises by its bytes instead of
    /// checking it again.
    #[test]
    fn damaged_frames_agree(
        target in value(),
        payload in value(),
        seed in 1u64..,
        at in any::<prop::sample::Index>(),
        byte in prop_oneof![
            Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'),
            Just(b','), Just(b':'), Just(b' '), Just(b'-'), Just(b'0'), Just(b'.'),
            Just(b'e'), Just(b'u'), Just(0x01), Just(0xff), any::<u8>(),
        ],
        how in 0..3u8,
    ) {
        let mut choices = Choices(Some(seed));
        let members = [
            ("target", encoded(&target, &mut choices)),
            ("payload", encoded(&payload, &mut choices)),
        ];
        let intact = frame("SEND", &members);
        agree(&intact)?;
        agree(&support::damaged(&intact, at, byte, how))?;
    }
}

/// Text at the edges of what the scanner checks by itself: accepted or refused exactly as the
/// full decoder does, with the same error.
#[test]
fn edge_cases_agree() {
    let payloads = [
        "1e400",
        "-1e400",
        "1e-400",
        "123456789012345678901234567890",
        &"9".repeat(400),
        "01",
        "-",
        "-a",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\ud83d\\ude00\"",
        "\"\\u00zz\"",
        "\"\\x\"",
        "\"\u{1}\"",
        "\"\\u0000\"",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "tru",
        "nulls",
        "[[[[[[[[[[]]]]]]]]]]",
        &format!("{}{}", "[".repeat(124), "]".repeat(124)),
        &format!("{}{}", "[".repeat(125), "]".repeat(125)),
        &format!("{}{}", "[".repeat(126), "]".repeat(126)),
    ];
    for payload in payloads {
        let send = frame(
            "SEND",
            &[("target", "null".into()), ("payload", payload.into())],
        );
        agree(&send).unwrap_or_else(|e| panic!("{payload}: {e}"));
        let mut invalid_utf8 = send.to_vec();
        invalid_utf8.insert(invalid_utf8.len() - 3, 0xc3);
        agree(&Bytes::from(invalid_utf8)).unwrap_or_else(|e| panic!("{payload}: {e}"));
    }
    // The top level and `d` as well.
    for text in [
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2}} x",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2},}",
        "{\"op\":4.0,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2}}",
        "{\"op\":-0,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2}}",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2},\"op\":7}",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2},\"d\":5}",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2},\"t\":\"QUEUE\"}",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1}}",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{}}",
        "{\"op\":4,\"t\":\"SEND\",\"d\":[]}",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2},\"ts\":-0,\"trace\":{\"traceparent\":\"x\"}}",
        " \n{ \"op\" : 4 , \"t\" : \"BROADCAST\" , \"d\" : { \"target\" : 1 , \"payload\" : 2 } } \r\n",
        "{\"op\":4,\"t\":\"SEND\",\"d\":{\"target\":1,\"payload\":2,\"payload\":3}}",
        "[\"SEND\"]",
        "{\"SEND\":4}",
        "",
    ] {
        agree(&Bytes::from(text)).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

#[test]
fn the_last_repeated_member_wins() {
    let send = frame(
        "SEND",
        &[
            ("target", "1".into()),
            ("payload", "2".into()),
            ("payload", "3".into()),
            ("target", "4".into()),
        ],
    );
    let fast = Json
        .decode_envelope_bytes(&send, 1 << 20)
        .unwrap()
        .fast
        .unwrap();
    assert_eq!(fast.target.value(), Value::Int(4));
    assert_eq!(fast.payload.value(), Value::Int(3));
}

#[test]
fn other_frames_are_decoded_in_full() {
    let members = [("target", "\"q\"".to_owned()), ("payload", "1".to_owned())];
    // Not SEND or BROADCAST: QUEUE keeps its payload as a value for the journal.
    let queue = frame("QUEUE", &members);
    let envelope = Json.decode_envelope_bytes(&queue, 1 << 20).unwrap();
    assert!(envelope.fast.is_none());
    assert_eq!(
        envelope.d,
        Value::Object(Map::from([
            ("target".to_owned(), Value::from("q")),
            ("payload".to_owned(), Value::Int(1)),
        ]))
    );
    // Without a payload, the router's `invalid dispatch payload` echoes `d`: it must be there.
    let no_payload = frame("SEND", &members[..1]);
    let envelope = Json.decode_envelope_bytes(&no_payload, 1 << 20).unwrap();
    assert!(envelope.fast.is_none());
    assert!(envelope.d.as_object().unwrap().contains_key("target"));
}

/// A target seen before is recognised by its bytes; one that differs in a byte, or continues
/// past them, is checked in full and refused as the full decoder refuses it.
#[test]
fn a_repeated_target_is_recognised_and_anything_else_is_checked() {
    let target = r#"{"application":"chat","ops":[]}"#;
    let good = frame(
        "SEND",
        &[("target", target.into()), ("payload", "\"hi\"".into())],
    );
    for _ in 0..3 {
        let envelope = Json.decode_envelope_bytes(&good, 1 << 20).expect("decodes");
        let fast = envelope.fast.expect("the fast path");
        assert_eq!(&fast.target.bytes[..], target.as_bytes());
        assert!(fast.target.normal);
    }
    let number = frame("SEND", &[("target", "12".into()), ("payload", "1".into())]);
    let envelope = Json.decode_envelope_bytes(&number, 1 << 20).unwrap();
    assert_eq!(envelope.fast.unwrap().target.value(), Value::Int(12));
    // Starts with the remembered `12` but is another number, or no number at all.
    for (longer, value) in [("123", Some(Value::Int(123))), ("12x", None)] {
        let bytes = frame(
            "SEND",
            &[("target", longer.into()), ("payload", "1".into())],
        );
        let envelope = Json.decode_envelope_bytes(&bytes, 1 << 20);
        assert_eq!(
            envelope.ok().map(|e| e.fast.unwrap().target.value()),
            value,
            "{longer}"
        );
        agree(&bytes).unwrap();
    }
    // A target not in normal form (keys out of order) keeps that answer when repeated.
    let odd = frame(
        "SEND",
        &[
            ("target", r#"{"ops":[],"application":"chat"}"#.into()),
            ("payload", "1".into()),
        ],
    );
    for _ in 0..2 {
        let envelope = Json.decode_envelope_bytes(&odd, 1 << 20).expect("decodes");
        assert!(!envelope.fast.expect("the fast path").target.normal);
    }
}

/// Which text is normal form, and whichever it is, the payload is delivered as if decoded on
/// arrival.
#[test]
fn normal_form_cases() {
    let cases = [
        ("0", true),
        ("-1", true),
        ("123456789012345678", true),
        ("-123456789012345678", true),
        ("1234567890123456789", true),
        ("18446744073709551615", true),
        ("-9223372036854775808", true),
        ("18446744073709551616", false),
        ("-9223372036854775809", false),
        ("-0", false),
        ("1.5", false),
        ("1e3", false),
        ("true", true),
        ("null", true),
        ("\"plain \u{e9}\u{1f600}\"", true),
        ("\"q\\\"b\\\\n\\nr\\rt\\tb\\bf\\f\"", true),
        ("\"\\u0001\\u001f\"", true),
        ("\"\\u001F\"", false),
        ("\"\\/\"", false),
        ("\"\\u0041\"", false),
        ("\"\\u000a\"", false),
        ("\"\\ud83d\\ude00\"", false),
        ("[]", true),
        ("{}", true),
        ("[1,2]", true),
        ("[1, 2]", false),
        ("[ ]", false),
        ("{\"a\":1,\"b\":[{}]}", true),
        ("{\"b\":1,\"a\":2}", false),
        ("{\"a\":1,\"a\":2}", false),
        ("{\"a\" :1}", false),
        ("{\"\\/\":1}", false),
    ];
    for (payload, normal) in cases {
        let raw = fast_payload(payload);
        assert_eq!(raw.normal, normal, "{payload}");
        let value = raw.value();
        for codec in [&Json as &dyn Codec, &Msgpack, &Etf] {
            assert_eq!(
                delivered(codec, Out::Raw(raw.clone())),
                delivered(codec, Out::Value(value.clone())),
                "{payload} to {codec:?}"
            );
        }
    }
}
