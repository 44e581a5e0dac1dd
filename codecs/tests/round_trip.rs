//! What ganglion encodes decodes to the same data model value, in every encoding, and inbound
//! numbers keep their kind (SPEC §2.4–§2.7).

use std::borrow::Cow;

use ganglion_codecs::{MAX_NESTING, decode, encode};
use ganglion_core::frame::TraceContext;
use ganglion_core::{Encoding, Map, Out, OutFrame, Value};
use proptest::prelude::*;

const ENCODINGS: [Encoding; 3] = Encoding::ALL;

fn frame(d: Out) -> OutFrame {
    OutFrame {
        op: 4,
        t: Some(Cow::Borrowed("SEND")),
        d,
        ts: 1_700_000_000_000,
        trace: None,
    }
}

/// Encodes `d` inside a frame, decodes the frame and returns its `d`.
fn round_trip(encoding: Encoding, d: Out) -> Value {
    let bytes = encode(encoding, &frame(d)).expect("supported encoding");
    let Ok(Value::Object(mut envelope)) = decode(encoding, &bytes) else {
        panic!("{encoding}: own output does not decode: {bytes:02x?}");
    };
    envelope.remove("d").expect("d is always present")
}

/// `{"v": value}` as sent by a client, decoded.
fn inbound_json(value: &str) -> Value {
    let text = format!("{{\"v\":{value}}}");
    let Ok(Value::Object(mut map)) = decode(Encoding::Json, text.as_bytes()) else {
        panic!("{text} does not decode");
    };
    map.remove("v").expect("v")
}

/// The data model value an `Out` tree stands for.
fn out_value(out: &Out) -> Value {
    match out {
        Out::Null => Value::Null,
        Out::Bool(b) => Value::Bool(*b),
        Out::Int(i) => Value::Int(*i),
        Out::Str(s) => Value::from(&**s),
        Out::Value(v) => v.clone(),
        Out::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), out_value(v)))
                .collect(),
        ),
        Out::BinMap(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), out_value(v)))
                .collect(),
        ),
        Out::List(items) => Value::Array(items.iter().map(out_value).collect()),
        Out::Raw(raw) => raw.value(),
    }
}

fn every_kind() -> Value {
    Value::Object(Map::from([
        ("null".to_owned(), Value::Null),
        ("true".to_owned(), Value::Bool(true)),
        ("false".to_owned(), Value::Bool(false)),
        ("zero".to_owned(), Value::Int(0)),
        ("int".to_owned(), Value::Int(-123_456)),
        ("i64_min".to_owned(), Value::Int(i64::MIN)),
        ("i64_max".to_owned(), Value::Int(i64::MAX)),
        ("u64_max".to_owned(), Value::from_u64(u64::MAX)),
        ("one_float".to_owned(), Value::Float(1.0)),
        ("neg_zero".to_owned(), Value::Float(-0.0)),
        ("float".to_owned(), Value::Float(-2.5e-300)),
        ("big_float".to_owned(), Value::Float(f64::MAX)),
        ("tiny_float".to_owned(), Value::Float(5e-324)),
        ("empty".to_owned(), Value::from("")),
        (
            "string".to_owned(),
            Value::from("héllo \"wörld\"\n\t\\ \u{0} \u{1f} \u{7f} \u{2028} 🦀"),
        ),
        ("long".to_owned(), Value::from("x".repeat(70_000))),
        ("array".to_owned(), Value::Array(vec![])),
        (
            "nested".to_owned(),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Null]),
                Value::Object(Map::from([("k".to_owned(), Value::Float(0.5))])),
            ]),
        ),
        ("object".to_owned(), Value::Object(Map::new())),
        (
            "odd keys".to_owned(),
            Value::Object(Map::from([
                (String::new(), Value::Int(1)),
                ("\"\\\n".to_owned(), Value::Int(2)),
                ("ключ".to_owned(), Value::Int(3)),
            ])),
        ),
    ]))
}

#[test]
fn every_kind_of_value_survives_a_round_trip_in_every_encoding() {
    let value = every_kind();
    for encoding in ENCODINGS {
        assert_eq!(
            round_trip(encoding, Out::Value(value.clone())),
            value,
            "{encoding}"
        );
    }
}

#[test]
fn integers_at_the_ends_of_the_range_keep_their_value_and_kind() {
    for value in [
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::from_u64(i64::MAX as u64 + 1),
        Value::from_u64(u64::MAX),
    ] {
        for encoding in ENCODINGS {
            assert_eq!(
                round_trip(encoding, Out::Value(value.clone())),
                value,
                "{encoding}"
            );
        }
    }
}

#[test]
fn ganglion_built_trees_decode_to_the_values_they_stand_for() {
    let out = Out::Map(vec![
        ("error", Out::str("invalid dispatch payload")),
        (
            "extra_info",
            Out::Map(vec![
                ("op", Out::Int(4)),
                ("t", Out::Null),
                ("ok", Out::Bool(true)),
                ("neg", Out::Int(-40_000)),
                (
                    "d",
                    Out::Value(Value::Array(vec![Value::Float(1.0), Value::from("x")])),
                ),
            ]),
        ),
        (
            "bin",
            Out::BinMap(vec![(
                Cow::Owned("key".to_owned()),
                Out::List(vec![Out::Null]),
            )]),
        ),
        ("list", Out::List(vec![])),
    ]);
    let expected = out_value(&out);
    for encoding in ENCODINGS {
        assert_eq!(round_trip(encoding, out.clone()), expected, "{encoding}");
    }
}

#[test]
fn json_floats_are_written_as_floats_and_read_back_as_floats() {
    let bytes = encode(Encoding::Json, &frame(Out::Value(Value::Float(1.0)))).expect("json");
    assert!(
        std::str::from_utf8(&bytes).is_ok_and(|text| text.contains(r#""d":1.0,"#)),
        "{bytes:?}"
    );
    assert_eq!(
        round_trip(Encoding::Json, Out::Value(Value::Float(1.0))),
        Value::Float(1.0)
    );
    assert_eq!(
        round_trip(Encoding::Json, Out::Value(Value::Float(1e300))),
        Value::Float(1e300)
    );
}

#[test]
fn json_number_literals_are_integers_only_without_fraction_or_exponent() {
    assert_eq!(inbound_json("1"), Value::Int(1));
    assert_eq!(inbound_json("1.0"), Value::Float(1.0));
    assert_eq!(inbound_json("1e2"), Value::Float(100.0));
    assert_eq!(inbound_json("1E2"), Value::Float(100.0));
    assert_eq!(inbound_json("-1.5e-3"), Value::Float(-0.0015));
    assert_eq!(inbound_json("-9223372036854775808"), Value::Int(i64::MIN));
    assert_eq!(inbound_json("18446744073709551615"), Value::UInt(u64::MAX));
}

#[test]
fn json_integer_literals_beyond_the_integer_range_are_floats() {
    assert_eq!(
        inbound_json("18446744073709551616"),
        Value::Float(18_446_744_073_709_551_616.0)
    );
    assert_eq!(
        inbound_json("-9223372036854775809"),
        Value::Float(-9_223_372_036_854_775_809.0)
    );
}

#[test]
fn msgpack_floats_stay_floats() {
    let bytes = encode(Encoding::Msgpack, &frame(Out::Value(Value::Float(1.0)))).expect("ok");
    let float64_one = [0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0];
    assert!(bytes.windows(9).any(|w| w == float64_one), "{bytes:02x?}");
    assert_eq!(
        round_trip(Encoding::Msgpack, Out::Value(Value::Float(1.0))),
        Value::Float(1.0)
    );
}

#[test]
fn a_repeated_key_keeps_its_last_value_in_json() {
    let value = decode(Encoding::Json, br#"{"a":1,"b":{"c":1,"c":[2]},"a":"last"}"#);
    let expected = Value::Object(Map::from([
        ("a".to_owned(), Value::from("last")),
        (
            "b".to_owned(),
            Value::Object(Map::from([(
                "c".to_owned(),
                Value::Array(vec![Value::Int(2)]),
            )])),
        ),
    ]));
    assert_eq!(value, Ok(expected));
}

#[test]
fn a_repeated_key_keeps_its_last_value_in_msgpack() {
    // {"a": 1, "a": 2, "b": {"c": 1, "c" (as bin): 3}}
    let bytes = [
        0x83, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02, 0xa1, b'b', 0x82, 0xa1, b'c', 0x01, 0xc4, 0x01,
        b'c', 0x03,
    ];
    let expected = Value::Object(Map::from([
        ("a".to_owned(), Value::Int(2)),
        (
            "b".to_owned(),
            Value::Object(Map::from([("c".to_owned(), Value::Int(3))])),
        ),
    ]));
    assert_eq!(decode(Encoding::Msgpack, &bytes), Ok(expected));
}

#[test]
fn a_payload_nested_to_the_limit_round_trips_inside_a_frame() {
    // The envelope is one level, so `d` may nest one less than the limit.
    let mut d = Value::Array(vec![]);
    for _ in 1..MAX_NESTING - 1 {
        d = Value::Array(vec![d]);
    }
    assert_eq!(d.depth(), MAX_NESTING - 1);
    for encoding in ENCODINGS {
        assert_eq!(round_trip(encoding, Out::Value(d.clone())), d, "{encoding}");
    }
}

// === properties ===

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64;
    prop_oneof![
        (f64::POSITIVE | f64::NEGATIVE | f64::NORMAL | f64::SUBNORMAL | f64::ZERO),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::MIN_POSITIVE),
        Just(-0.0),
        Just(1.0),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
        finite_f64().prop_map(Value::Float),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8).prop_map(Value::Object),
        ]
    })
}

fn arb_frame() -> impl Strategy<Value = OutFrame> {
    let trace = prop::option::of(
        ("[0-9a-f-]{1,60}", prop::option::of(any::<String>())).prop_map(
            |(traceparent, tracestate)| TraceContext {
                traceparent,
                tracestate,
            },
        ),
    );
    (
        any::<u8>(),
        prop::option::of(any::<String>()),
        arb_value(),
        any::<u64>(),
        trace,
    )
        .prop_map(|(op, t, d, ts, trace)| OutFrame {
            op,
            t: t.map(Cow::Owned),
            d: Out::Value(d),
            ts,
            trace,
        })
}

/// The envelope a frame decodes to.
fn envelope_value(frame: &OutFrame) -> Value {
    let mut map = Map::from([
        ("op".to_owned(), Value::Int(i64::from(frame.op))),
        ("d".to_owned(), out_value(&frame.d)),
        ("t".to_owned(), frame.t.as_deref().map(Value::from).into()),
        ("ts".to_owned(), Value::from_u64(frame.ts)),
    ]);
    if let Some(trace) = &frame.trace {
        let mut t = Map::from([("traceparent".to_owned(), Value::from(&*trace.traceparent))]);
        if let Some(state) = &trace.tracestate {
            t.insert("tracestate".to_owned(), Value::from(&**state));
        }
        map.insert("trace".to_owned(), Value::Object(t));
    }
    Value::Object(map)
}

// Case counts follow PROPTEST_CASES (default 256), so a longer soak needs no code change.
proptest! {
    #[test]
    fn any_value_round_trips_through_json(value in arb_value()) {
        prop_assert_eq!(round_trip(Encoding::Json, Out::Value(value.clone())), value);
    }

    #[test]
    fn any_value_round_trips_through_msgpack(value in arb_value()) {
        prop_assert_eq!(round_trip(Encoding::Msgpack, Out::Value(value.clone())), value);
    }

    #[test]
    fn any_frame_decodes_to_its_envelope(frame in arb_frame()) {
        let expected = envelope_value(&frame);
        for encoding in ENCODINGS {
            let bytes = encode(encoding, &frame).expect("supported");
            prop_assert_eq!(decode(encoding, &bytes), Ok(expected.clone()), "{}", encoding);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for encoding in ENCODINGS {
            let _ = decode(encoding, &bytes);
        }
    }

    #[test]
    fn decoding_arbitrary_map_shaped_msgpack_never_panics(
        header in prop_oneof![0x80u8..=0x8f, Just(0xde), Just(0xdf)],
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![header];
        bytes.extend_from_slice(&body);
        let _ = decode(Encoding::Msgpack, &bytes);
    }

    #[test]
    fn decoding_corrupted_frames_never_panics(
        value in arb_value(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        for encoding in ENCODINGS {
            let mut bytes = encode(encoding, &frame(Out::Value(value.clone())))
                .expect("supported")
                .to_vec();
            for (at, byte) in &edits {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            let _ = decode(encoding, &bytes);
            let _ = decode(encoding, &bytes[..cut.index(bytes.len())]);
        }
    }
}
