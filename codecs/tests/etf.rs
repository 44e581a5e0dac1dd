//! ETF (SPEC §2.7): the inbound tag table, the outbound table and its key typing, integer
//! boundaries, compressed terms, and properties. The SPEC's hello bytes are in
//! `spec_examples.rs`; what every encoding shares (round trips, nesting) is in `round_trip.rs`
//! and `decode_errors.rs`.

use std::borrow::Cow;
use std::io::Write as _;

use ganglion_codecs::{Codec, Etf, decode, decode_limited, encode};
use ganglion_core::frame::TraceContext;
use ganglion_core::{Encoding, Map, Out, OutFrame, Value};
use proptest::prelude::*;

// === helpers ===

const VERSION: u8 = 131;

/// A frame `#{k => <term>}`, the key an atom.
fn in_map(term: &[u8]) -> Vec<u8> {
    let mut bytes = vec![VERSION, 116, 0, 0, 0, 1, 119, 1, b'k'];
    bytes.extend_from_slice(term);
    bytes
}

/// Decodes `#{k => <term>}` and returns the term's value.
fn decode_one(term: &[u8]) -> Result<Value, String> {
    match decode(Encoding::Etf, &in_map(term)) {
        Ok(Value::Object(mut map)) => Ok(map.remove("k").expect("k")),
        Ok(other) => panic!("not an object: {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

#[track_caller]
fn refused(result: Result<Value, String>) -> String {
    match result {
        Ok(value) => panic!("decoded {value:?}"),
        Err(detail) => {
            assert!(!detail.is_empty(), "the error has a human-readable detail");
            detail
        }
    }
}

fn etf(bytes: &[u8]) -> Result<Value, String> {
    decode(Encoding::Etf, bytes).map_err(|e| e.to_string())
}

fn obj<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn small_big(negative: bool, digits: &[u8]) -> Vec<u8> {
    let mut bytes = vec![110, digits.len() as u8, u8::from(negative)];
    bytes.extend_from_slice(digits);
    bytes
}

fn large_big(negative: bool, digits: &[u8]) -> Vec<u8> {
    let mut bytes = vec![111];
    bytes.extend_from_slice(&(digits.len() as u32).to_be_bytes());
    bytes.push(u8::from(negative));
    bytes.extend_from_slice(digits);
    bytes
}

fn binary(s: &[u8]) -> Vec<u8> {
    let mut bytes = vec![109];
    bytes.extend_from_slice(&(s.len() as u32).to_be_bytes());
    bytes.extend_from_slice(s);
    bytes
}

fn frame(d: Out) -> OutFrame {
    OutFrame {
        op: 4,
        t: Some(Cow::Borrowed("SEND")),
        d,
        ts: 1,
        trace: None,
    }
}

fn encode_etf(frame: &OutFrame) -> Vec<u8> {
    encode(Encoding::Etf, frame).expect("etf").to_vec()
}

/// The bytes of `d` inside an encoded frame: the envelope writes `d` first, right after
/// `131, MAP_EXT <arity>, SMALL_ATOM_UTF8 "d"`.
fn d_bytes(d: Out) -> Vec<u8> {
    let bytes = encode_etf(&frame(d));
    assert_eq!(&bytes[..9], [VERSION, 116, 0, 0, 0, 4, 119, 1, b'd']);
    let tail = [
        119, 2, b'o', b'p', 97, 4, 119, 1, b't', 109, 0, 0, 0, 4, b'S', b'E', b'N', b'D', 119, 2,
        b't', b's', 97, 1,
    ];
    assert_eq!(&bytes[bytes.len() - tail.len()..], tail);
    bytes[9..bytes.len() - tail.len()].to_vec()
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

/// `131, 80, <declared size>, <zlib of term>`, where `term` has no version byte.
fn compressed(term: &[u8], declared: u32) -> Vec<u8> {
    let mut bytes = vec![VERSION, 80];
    bytes.extend_from_slice(&declared.to_be_bytes());
    bytes.extend_from_slice(&zlib(term));
    bytes
}

// === inbound: the tag table ===

#[test]
fn every_integer_tag_decodes_to_an_integer() {
    let cases: Vec<(Vec<u8>, Value)> = vec![
        (vec![97, 0], Value::Int(0)),
        (vec![97, 255], Value::Int(255)),
        (vec![98, 0, 0, 1, 0], Value::Int(256)),
        (
            vec![98, 0x7f, 0xff, 0xff, 0xff],
            Value::Int(i64::from(i32::MAX)),
        ),
        (vec![98, 0x80, 0, 0, 0], Value::Int(i64::from(i32::MIN))),
        (vec![98, 0xff, 0xff, 0xff, 0xff], Value::Int(-1)),
        (small_big(false, &[1]), Value::Int(1)),
        (small_big(true, &[1]), Value::Int(-1)),
        (small_big(false, &[]), Value::Int(0)),
        (small_big(true, &[0]), Value::Int(0)),
        (small_big(false, &[0, 0, 0, 0x80]), Value::Int(1 << 31)),
        (small_big(false, &[0xff; 7]), Value::Int((1 << 56) - 1)),
        (
            small_big(false, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Value::Int(i64::MAX),
        ),
        (
            small_big(false, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
            Value::UInt(1 << 63),
        ),
        (small_big(false, &[0xff; 8]), Value::UInt(u64::MAX)),
        (
            small_big(true, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Value::Int(-i64::MAX),
        ),
        (
            small_big(true, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
            Value::Int(i64::MIN),
        ),
        // Leading (high-order) zero digits change nothing.
        (
            small_big(false, &[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Value::Int(5),
        ),
        (
            small_big(
                false,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
            ),
            Value::UInt(u64::MAX),
        ),
        (large_big(false, &[7]), Value::Int(7)),
        (large_big(false, &[0xff; 8]), Value::UInt(u64::MAX)),
        (
            large_big(true, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
            Value::Int(i64::MIN),
        ),
        (large_big(true, &[]), Value::Int(0)),
    ];
    for (term, expected) in cases {
        assert_eq!(decode_one(&term), Ok(expected), "{term:02x?}");
    }
}

#[test]
fn integers_outside_the_data_model_range_are_refused() {
    let out_of_range = [
        // 2^64
        small_big(false, &[0, 0, 0, 0, 0, 0, 0, 0, 1]),
        // -(2^63 + 1)
        small_big(true, &[1, 0, 0, 0, 0, 0, 0, 0x80]),
        // -(2^64 - 1)
        small_big(true, &[0xff; 8]),
        large_big(false, &[0, 0, 0, 0, 0, 0, 0, 0, 1]),
        large_big(true, &[0xff; 300]),
    ];
    for term in out_of_range {
        let detail = refused(decode_one(&term));
        assert!(
            detail.contains("outside the range"),
            "{term:02x?}: {detail}"
        );
    }
    let detail = refused(decode_one(&small_big_with_sign(2, &[1])));
    assert!(detail.contains("sign"), "{detail}");
}

fn small_big_with_sign(sign: u8, digits: &[u8]) -> Vec<u8> {
    let mut bytes = vec![110, digits.len() as u8, sign];
    bytes.extend_from_slice(digits);
    bytes
}

#[test]
fn floats_decode_from_both_float_tags() {
    let mut new_float = vec![70];
    new_float.extend_from_slice(&1.5f64.to_be_bytes());
    assert_eq!(decode_one(&new_float), Ok(Value::Float(1.5)));
    let mut negative_zero = vec![70];
    negative_zero.extend_from_slice(&(-0.0f64).to_be_bytes());
    let Ok(Value::Float(zero)) = decode_one(&negative_zero) else {
        panic!("-0.0 is a float");
    };
    assert!(zero == 0.0 && zero.is_sign_negative());

    // FLOAT_EXT: the 31-byte "%.20e" text Erlang wrote before NEW_FLOAT_EXT.
    for (text, expected) in [
        ("1.50000000000000000000e+00", 1.5),
        ("-2.50000000000000000000e-03", -0.0025),
        ("1.00000000000000000000e+300", 1e300),
        ("0.00000000000000000000e+00", 0.0),
        ("42", 42.0),
    ] {
        let mut term = vec![99];
        term.extend_from_slice(text.as_bytes());
        term.resize(32, 0);
        assert_eq!(decode_one(&term), Ok(Value::Float(expected)), "{text}");
    }
    // Without a NUL, all 31 bytes are the text.
    let mut term = vec![99];
    term.extend_from_slice(b"1.0000000000000000000000000e+00");
    assert_eq!(term.len(), 32);
    assert_eq!(decode_one(&term), Ok(Value::Float(1.0)));
}

#[test]
fn nan_infinities_and_non_decimal_float_text_are_refused() {
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut term = vec![70];
        term.extend_from_slice(&f.to_be_bytes());
        let detail = refused(decode_one(&term));
        assert!(detail.contains("NaN and infinite"), "{f}: {detail}");
    }
    for text in [
        "inf", "NaN", "infinity", "", "1.0 ", "0x10", "1e400", "-1e400", "abc",
    ] {
        let mut term = vec![99];
        term.extend_from_slice(text.as_bytes());
        term.resize(32, 0);
        refused(decode_one(&term));
    }
}

#[test]
fn binaries_are_strings_and_must_be_utf8() {
    assert_eq!(decode_one(&binary(b"")), Ok(Value::from("")));
    assert_eq!(
        decode_one(&binary("héllo 🦀".as_bytes())),
        Ok(Value::from("héllo 🦀"))
    );
    let detail = refused(decode_one(&binary(&[0xc3, 0x28])));
    assert!(detail.contains("UTF-8"), "{detail}");
    refused(decode_one(&binary(&[0xed, 0xa0, 0x80])));
}

#[test]
fn atoms_of_every_tag_become_null_booleans_or_strings() {
    let atom = |tag: u8, name: &[u8]| -> Vec<u8> {
        let mut bytes = vec![tag];
        match tag {
            100 | 118 => bytes.extend_from_slice(&(name.len() as u16).to_be_bytes()),
            _ => bytes.push(name.len() as u8),
        }
        bytes.extend_from_slice(name);
        bytes
    };
    for tag in [100, 115, 118, 119] {
        assert_eq!(decode_one(&atom(tag, b"nil")), Ok(Value::Null), "{tag}");
        assert_eq!(decode_one(&atom(tag, b"true")), Ok(Value::Bool(true)));
        assert_eq!(decode_one(&atom(tag, b"false")), Ok(Value::Bool(false)));
        assert_eq!(decode_one(&atom(tag, b"ok")), Ok(Value::from("ok")));
        assert_eq!(decode_one(&atom(tag, b"")), Ok(Value::from("")));
        // Names are exact: these are ordinary atoms.
        assert_eq!(decode_one(&atom(tag, b"Nil")), Ok(Value::from("Nil")));
        assert_eq!(decode_one(&atom(tag, b"null")), Ok(Value::from("null")));
        assert_eq!(decode_one(&atom(tag, b"True")), Ok(Value::from("True")));
    }
    // ATOM_EXT and SMALL_ATOM_EXT are Latin-1; the _UTF8 tags are UTF-8.
    assert_eq!(decode_one(&atom(100, &[b'c', 0xe9])), Ok(Value::from("cé")));
    assert_eq!(decode_one(&atom(115, &[0xff])), Ok(Value::from("ÿ")));
    assert_eq!(
        decode_one(&atom(119, "cé".as_bytes())),
        Ok(Value::from("cé"))
    );
    assert_eq!(
        decode_one(&atom(118, "🦀".as_bytes())),
        Ok(Value::from("🦀"))
    );
    let detail = refused(decode_one(&atom(119, &[b'c', 0xe9])));
    assert!(detail.contains("UTF-8"), "{detail}");
    refused(decode_one(&atom(118, &[0xff])));
    // Long atom names (up to ATOM_EXT's 16-bit length) are just strings.
    let long = vec![b'a'; 1000];
    assert_eq!(
        decode_one(&atom(118, &long)),
        Ok(Value::from("a".repeat(1000)))
    );
}

#[test]
fn lists_strings_and_tuples_are_arrays() {
    assert_eq!(decode_one(&[106]), Ok(Value::Array(vec![])));
    assert_eq!(
        decode_one(&[108, 0, 0, 0, 2, 97, 1, 119, 3, b'n', b'i', b'l', 106]),
        Ok(Value::Array(vec![Value::Int(1), Value::Null]))
    );
    assert_eq!(
        decode_one(&[108, 0, 0, 0, 0, 106]),
        Ok(Value::Array(vec![])),
        "a LIST_EXT of no elements is a proper empty list"
    );
    // STRING_EXT: a list of bytes, i.e. of small integers.
    assert_eq!(
        decode_one(&[107, 0, 3, b'a', 0, 255]),
        Ok(Value::Array(vec![
            Value::Int(97),
            Value::Int(0),
            Value::Int(255)
        ]))
    );
    assert_eq!(decode_one(&[107, 0, 0]), Ok(Value::Array(vec![])));
    // Tuples are lossy: they come back as lists.
    assert_eq!(
        decode_one(&[104, 2, 119, 2, b'o', b'k', 97, 7]),
        Ok(Value::Array(vec![Value::from("ok"), Value::Int(7)]))
    );
    assert_eq!(decode_one(&[104, 0]), Ok(Value::Array(vec![])));
    assert_eq!(
        decode_one(&[105, 0, 0, 0, 1, 106]),
        Ok(Value::Array(vec![Value::Array(vec![])]))
    );
}

#[test]
fn map_keys_may_be_binaries_or_atoms_at_every_depth() {
    // #{op => 1, <<"d">> => #{client_id => <<"c">>, <<"meta">> => #{nested => [#{deep => nil}]}}}
    let mut bytes = vec![VERSION, 116, 0, 0, 0, 2, 119, 2, b'o', b'p', 97, 1];
    bytes.extend(binary(b"d"));
    bytes.extend([116, 0, 0, 0, 2, 100, 0, 9]);
    bytes.extend(b"client_id");
    bytes.extend(binary(b"c"));
    bytes.extend(binary(b"meta"));
    bytes.extend([116, 0, 0, 0, 1, 115, 6]);
    bytes.extend(b"nested");
    bytes.extend([108, 0, 0, 0, 1, 116, 0, 0, 0, 1, 118, 0, 4]);
    bytes.extend(b"deep");
    bytes.extend([119, 3, b'n', b'i', b'l', 106]);
    let expected = obj([
        ("op", Value::Int(1)),
        (
            "d",
            obj([
                ("client_id", Value::from("c")),
                (
                    "meta",
                    obj([("nested", Value::Array(vec![obj([("deep", Value::Null)])]))]),
                ),
            ]),
        ),
    ]);
    assert_eq!(etf(&bytes), Ok(expected));
}

#[test]
fn atom_keys_named_nil_true_or_false_are_strings_like_any_key() {
    let mut bytes = vec![VERSION, 116, 0, 0, 0, 3];
    for name in [&b"nil"[..], b"true", b"false"] {
        bytes.extend([119, name.len() as u8]);
        bytes.extend(name);
        bytes.extend([97, 1]);
    }
    assert_eq!(
        etf(&bytes),
        Ok(obj([
            ("nil", Value::Int(1)),
            ("true", Value::Int(1)),
            ("false", Value::Int(1)),
        ]))
    );
}

#[test]
fn a_repeated_key_keeps_its_last_value_even_across_key_types() {
    // #{a => 1, <<"a">> => 2}: both are the key "a" in the data model.
    let mut bytes = vec![VERSION, 116, 0, 0, 0, 2, 119, 1, b'a', 97, 1];
    bytes.extend(binary(b"a"));
    bytes.extend([97, 2]);
    assert_eq!(etf(&bytes), Ok(obj([("a", Value::Int(2))])));
}

#[test]
fn map_keys_of_other_types_are_refused() {
    for key in [
        vec![97, 1],
        vec![106],
        vec![104, 0],
        vec![116, 0, 0, 0, 0],
        vec![107, 0, 1, b'a'],
        vec![108, 0, 0, 0, 1, 97, 1, 106],
        {
            let mut f = vec![70];
            f.extend_from_slice(&1.0f64.to_be_bytes());
            f
        },
        small_big(false, &[1]),
    ] {
        let mut bytes = vec![VERSION, 116, 0, 0, 0, 1];
        bytes.extend(&key);
        bytes.extend([97, 1]);
        let detail = refused(etf(&bytes));
        assert!(
            detail.contains("not a binary or an atom"),
            "{key:02x?}: {detail}"
        );
    }
    // A binary key must be UTF-8 too.
    let mut bytes = vec![VERSION, 116, 0, 0, 0, 1];
    bytes.extend(binary(&[0xff]));
    bytes.extend([97, 1]);
    refused(etf(&bytes));
}

// === inbound: what is refused ===

#[test]
fn the_version_byte_is_required() {
    assert_eq!(refused(etf(b"")), "empty payload");
    for bytes in [&[116, 0, 0, 0, 0][..], &[130, 116, 0, 0, 0, 0], b"{}"] {
        let detail = refused(etf(bytes));
        assert!(
            detail.contains("version byte 131"),
            "{bytes:02x?}: {detail}"
        );
    }
    assert!(refused(etf(&[VERSION])).contains("truncated"));
}

#[test]
fn the_top_level_term_must_be_a_map() {
    for term in [
        &[106][..],
        &[108, 0, 0, 0, 1, 97, 1, 106],
        &[104, 0],
        &[97, 1],
        &[109, 0, 0, 0, 0],
        &[119, 3, b'n', b'i', b'l'],
        &[107, 0, 0],
    ] {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(term);
        let detail = refused(etf(&bytes));
        assert!(detail.contains("not a map"), "{term:02x?}: {detail}");
    }
}

#[test]
fn terms_outside_the_data_model_are_refused() {
    let node = [119, 4, b'n', b'@', b'h', b'x'];
    let with_node = |tag: u8, rest: &[u8]| -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&node);
        bytes.extend_from_slice(rest);
        bytes
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "PID_EXT",
            with_node(103, &[0, 0, 0, 1, 0, 0, 0, 0, 0]),
            "pids",
        ),
        (
            "NEW_PID_EXT",
            with_node(88, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            "pids",
        ),
        ("PORT_EXT", with_node(102, &[0, 0, 0, 1, 0]), "ports"),
        (
            "NEW_PORT_EXT",
            with_node(89, &[0, 0, 0, 1, 0, 0, 0, 0]),
            "ports",
        ),
        (
            "V4_PORT_EXT",
            with_node(120, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            "ports",
        ),
        (
            "REFERENCE_EXT",
            with_node(101, &[0, 0, 0, 1, 0]),
            "references",
        ),
        (
            "NEW_REFERENCE_EXT",
            vec![114, 0, 1, 119, 1, b'n', 0, 0, 0, 0, 1],
            "references",
        ),
        (
            "NEWER_REFERENCE_EXT",
            vec![90, 0, 1, 119, 1, b'n', 0, 0, 0, 0, 0, 0, 0, 1],
            "references",
        ),
        ("FUN_EXT", vec![117, 0, 0, 0, 0], "funs"),
        ("NEW_FUN_EXT", vec![112, 0, 0, 0, 0], "funs"),
        (
            "EXPORT_EXT",
            vec![113, 119, 1, b'm', 119, 1, b'f', 97, 0],
            "exports",
        ),
        (
            "BIT_BINARY_EXT",
            vec![77, 0, 0, 0, 1, 3, 0xe0],
            "bit binaries",
        ),
        ("LOCAL_EXT", vec![121, 0, 0], "LOCAL_EXT"),
        ("ATOM_CACHE_REF", vec![82, 0], "atom cache"),
        (
            "improper list",
            vec![108, 0, 0, 0, 1, 97, 1, 97, 2],
            "improper list",
        ),
        (
            "list with a list tail",
            vec![108, 0, 0, 0, 1, 97, 1, 108, 0, 0, 0, 1, 97, 2, 106],
            "improper list",
        ),
        (
            "list with a string tail",
            vec![108, 0, 0, 0, 1, 97, 1, 107, 0, 1, 2],
            "improper list",
        ),
        (
            "nested compressed term",
            vec![80, 0, 0, 0, 1, 0x78, 0x9c],
            "only allowed at the top level",
        ),
        ("nested version byte", vec![VERSION, 97, 1], "version byte"),
        ("unknown tag 0", vec![0], "unknown ETF tag"),
        ("unknown tag 255", vec![255], "unknown ETF tag"),
        ("unknown tag 'D'", vec![68], "unknown ETF tag"),
    ];
    for (name, term, expected) in cases {
        let detail = refused(decode_one(&term));
        assert!(detail.contains(expected), "{name}: {detail}");
    }
}

#[test]
fn every_tag_byte_either_decodes_or_is_refused() {
    for tag in 0..=255u8 {
        let _ = decode_one(&[tag]);
        let _ = decode_one(&[tag, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}

#[test]
fn errors_point_at_the_offending_tag() {
    // #{a => 1, b => <pid>}: the pid tag is at byte 15.
    let mut bytes = vec![VERSION, 116, 0, 0, 0, 2, 119, 1, b'a', 97, 1, 119, 1, b'b'];
    bytes.push(103);
    let err = decode(Encoding::Etf, &bytes).unwrap_err();
    assert_eq!(err.offset(), Some(14));
    let err = decode(Encoding::Etf, &in_map(&[98, 0, 1])).unwrap_err();
    assert_eq!((err.detail(), err.offset()), ("truncated input", Some(10)));
}

#[test]
fn truncated_frames_are_refused_at_every_cut() {
    let frame = encode_etf(&OutFrame {
        trace: Some(TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: Some("a=b".to_owned()),
        }),
        ..frame(Out::Value(obj([
            ("list", Value::Array(vec![Value::Int(-70_000), Value::Null])),
            ("f", Value::Float(0.5)),
            ("big", Value::UInt(u64::MAX)),
            ("s", Value::from("x")),
        ])))
    });
    assert!(etf(&frame).is_ok());
    for end in 0..frame.len() {
        refused(etf(&frame[..end]));
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let detail = refused(etf(&[VERSION, 116, 0, 0, 0, 0, 0]));
    assert!(detail.contains("trailing"), "{detail}");
    refused(etf(&[VERSION, 116, 0, 0, 0, 0, VERSION, 116, 0, 0, 0, 0]));
}

#[test]
fn a_declared_length_beyond_the_input_is_truncation_not_an_allocation() {
    for term in [
        &[108, 0xff, 0xff, 0xff, 0xff][..],
        &[116, 0xff, 0xff, 0xff, 0xff],
        &[105, 0xff, 0xff, 0xff, 0xff],
        &[109, 0xff, 0xff, 0xff, 0xff],
        &[111, 0xff, 0xff, 0xff, 0xff, 0],
        &[107, 0xff, 0xff],
        &[118, 0xff, 0xff],
    ] {
        let detail = refused(decode_one(term));
        assert!(detail.contains("truncated"), "{term:02x?}: {detail}");
    }
}

// === compressed terms ===

/// `#{<<"op">> => 1, <<"d">> => <<"xxxx…">>}` without the version byte: compresses well.
fn compressible_term(len: usize) -> Vec<u8> {
    let mut term = vec![116, 0, 0, 0, 2];
    term.extend(binary(b"op"));
    term.extend([97, 1]);
    term.extend(binary(b"d"));
    term.extend(binary(&vec![b'x'; len]));
    term
}

#[test]
fn a_compressed_term_is_inflated_and_decoded() {
    let term = compressible_term(10_000);
    let bytes = compressed(&term, term.len() as u32);
    assert!(bytes.len() < 200, "the test term compresses");
    let expected = obj([
        ("op", Value::Int(1)),
        ("d", Value::from("x".repeat(10_000))),
    ]);
    assert_eq!(etf(&bytes), Ok(expected.clone()));
    assert_eq!(Etf.decode(&bytes), Ok(expected));
}

#[test]
fn a_compressed_term_counts_its_inflated_size_against_the_frame_limit() {
    let term = compressible_term(10_000);
    let bytes = compressed(&term, term.len() as u32);
    assert!(decode_limited(Encoding::Etf, &bytes, term.len()).is_ok());
    assert_eq!(
        Etf.decode_limited(&bytes, term.len()),
        decode(Encoding::Etf, &bytes)
    );
    let err = decode_limited(Encoding::Etf, &bytes, term.len() - 1).unwrap_err();
    assert!(err.detail().contains("frame size limit"), "{err}");
    // The default limit is the default gateway.max_frame_bytes.
    let big = compressible_term(Etf::DEFAULT_MAX_INFLATED_BYTES);
    let detail = refused(etf(&compressed(&big, big.len() as u32)));
    assert!(detail.contains("frame size limit"), "{detail}");
    // JSON and MessagePack have nothing to inflate; the limit changes nothing for them.
    assert!(decode_limited(Encoding::Json, b"{}", 0).is_ok());
}

#[test]
fn a_zip_bomb_is_refused_without_inflating_it() {
    // 16 MiB of zeros compress to about 16 KiB.
    let bomb = zlib(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 << 10);
    // Declared honestly: over the limit, refused before inflating anything.
    let mut bytes = vec![VERSION, 80];
    bytes.extend_from_slice(&(16u32 << 20).to_be_bytes());
    bytes.extend_from_slice(&bomb);
    let detail = refused(etf(&bytes));
    assert!(detail.contains("frame size limit"), "{detail}");
    // Declared as small: refused as soon as the stream overruns the declared size.
    for declared in [0u32, 10, 1 << 20] {
        bytes[2..6].copy_from_slice(&declared.to_be_bytes());
        let detail = refused(etf(&bytes));
        assert!(
            detail.contains("beyond its declared size"),
            "{declared}: {detail}"
        );
    }
    // The largest declared size is refused by the limit whatever the stream.
    bytes[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(refused(etf(&bytes)).contains("frame size limit"));
}

#[test]
fn malformed_compressed_terms_are_refused() {
    let term = compressible_term(100);
    let good = compressed(&term, term.len() as u32);
    assert!(etf(&good).is_ok());

    let short = compressed(&term, term.len() as u32 + 1);
    assert!(refused(etf(&short)).contains("less than its declared size"));
    let long = compressed(&term, term.len() as u32 - 1);
    assert!(refused(etf(&long)).contains("beyond its declared size"));

    for end in 2..good.len() {
        refused(etf(&good[..end]));
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(refused(etf(&trailing)).contains("trailing bytes"));

    let mut garbage = good[..6].to_vec();
    garbage.extend_from_slice(b"not zlib at all");
    assert!(refused(etf(&garbage)).contains("zlib"));
    let mut raw_deflate = good[..6].to_vec();
    raw_deflate.extend_from_slice(&good[8..]);
    refused(etf(&raw_deflate));

    // The inflated term follows the same rules as an uncompressed one.
    let list = [108, 0, 0, 0, 1, 97, 1, 106];
    assert!(refused(etf(&compressed(&list, list.len() as u32))).contains("not a map"));
    let versioned = [VERSION, 116, 0, 0, 0, 0];
    refused(etf(&compressed(&versioned, versioned.len() as u32)));
    let nested = compressed(&[116, 0, 0, 0, 0], 5);
    refused(etf(&compressed(&nested[1..], (nested.len() - 1) as u32)));
    let with_pid = [116, 0, 0, 0, 1, 119, 1, b'p', 103];
    refused(etf(&compressed(&with_pid, with_pid.len() as u32)));
    let trailing_inside = [116, 0, 0, 0, 0, 106];
    assert!(refused(etf(&compressed(&trailing_inside, 6))).contains("trailing"));
}

// === outbound: the table and key typing ===

#[test]
fn integers_use_the_smallest_tag_that_holds_them() {
    let cases: Vec<(Value, Vec<u8>)> = vec![
        (Value::Int(0), vec![97, 0]),
        (Value::Int(255), vec![97, 255]),
        (Value::Int(256), vec![98, 0, 0, 1, 0]),
        (Value::Int(-1), vec![98, 0xff, 0xff, 0xff, 0xff]),
        (
            Value::Int(i64::from(i32::MAX)),
            vec![98, 0x7f, 0xff, 0xff, 0xff],
        ),
        (Value::Int(i64::from(i32::MIN)), vec![98, 0x80, 0, 0, 0]),
        (
            Value::Int(i64::from(i32::MAX) + 1),
            small_big(false, &[0, 0, 0, 0x80]),
        ),
        (
            Value::Int(i64::from(i32::MIN) - 1),
            small_big(true, &[1, 0, 0, 0x80]),
        ),
        (Value::Int(1 << 32), small_big(false, &[0, 0, 0, 0, 1])),
        (
            Value::Int(1_700_000_000_000),
            small_big(false, &[0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01]),
        ),
        (
            Value::Int(i64::MAX),
            small_big(false, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        ),
        (
            Value::Int(i64::MIN),
            small_big(true, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
        ),
        (
            Value::UInt(1 << 63),
            small_big(false, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
        ),
        (Value::UInt(u64::MAX), small_big(false, &[0xff; 8])),
    ];
    for (value, expected) in cases {
        assert_eq!(d_bytes(Out::Value(value.clone())), expected, "{value:?}");
        assert_eq!(
            decode_one(&expected),
            Ok(value.clone()),
            "{value:?} reads back"
        );
    }
    assert_eq!(d_bytes(Out::Int(300)), [98, 0, 0, 1, 44]);
    assert_eq!(d_bytes(Out::Int(-300)), [98, 0xff, 0xff, 0xfe, 0xd4]);
}

#[test]
fn scalars_use_the_outbound_table() {
    assert_eq!(d_bytes(Out::Null), [119, 3, b'n', b'i', b'l']);
    assert_eq!(d_bytes(Out::Value(Value::Null)), [119, 3, b'n', b'i', b'l']);
    assert_eq!(d_bytes(Out::Bool(true)), [119, 4, b't', b'r', b'u', b'e']);
    assert_eq!(
        d_bytes(Out::Value(Value::Bool(false))),
        [119, 5, b'f', b'a', b'l', b's', b'e']
    );
    let mut float = vec![70];
    float.extend_from_slice(&1.0f64.to_be_bytes());
    assert_eq!(d_bytes(Out::Value(Value::Float(1.0))), float);
    assert_eq!(d_bytes(Out::str("hé")), binary("hé".as_bytes()));
    assert_eq!(d_bytes(Out::Value(Value::from(""))), binary(b""));
}

#[test]
fn arrays_are_proper_lists_and_the_empty_array_is_nil() {
    assert_eq!(d_bytes(Out::List(vec![])), [106]);
    assert_eq!(d_bytes(Out::Value(Value::Array(vec![]))), [106]);
    assert_eq!(
        d_bytes(Out::List(vec![Out::Int(1), Out::List(vec![])])),
        [108, 0, 0, 0, 2, 97, 1, 106, 106]
    );
    assert_eq!(
        d_bytes(Out::Value(Value::Array(vec![Value::Int(1)]))),
        [108, 0, 0, 0, 1, 97, 1, 106]
    );
}

#[test]
fn ganglion_maps_have_atom_keys_and_client_data_binary_keys_at_every_depth() {
    // Out::Map { a => Out::BinMap { <<"b">> => Out::Value {<<"c">> => {<<"e">> => 1}} } }
    let d = Out::Map(vec![(
        "a",
        Out::BinMap(vec![(
            Cow::Borrowed("b"),
            Out::Value(obj([("c", obj([("e", Value::Int(1))]))])),
        )]),
    )]);
    let mut expected = vec![116, 0, 0, 0, 1, 119, 1, b'a', 116, 0, 0, 0, 1];
    expected.extend(binary(b"b"));
    expected.extend([116, 0, 0, 0, 1]);
    expected.extend(binary(b"c"));
    expected.extend([116, 0, 0, 0, 1]);
    expected.extend(binary(b"e"));
    expected.extend([97, 1]);
    assert_eq!(d_bytes(d), expected);

    // An Out::Map below client data keeps atom keys: typing follows who built the map.
    let d = Out::List(vec![Out::Map(vec![("x", Out::Value(obj([])))])]);
    assert_eq!(
        d_bytes(d),
        [
            108, 0, 0, 0, 1, 116, 0, 0, 0, 1, 119, 1, b'x', 116, 0, 0, 0, 0, 106
        ]
    );
}

#[test]
fn the_envelope_and_trace_have_atom_keys_in_erlangs_order() {
    let with_trace = OutFrame {
        op: 4,
        t: Some(Cow::Borrowed("SEND")),
        d: Out::Null,
        ts: 2,
        trace: Some(TraceContext {
            traceparent: "tp".to_owned(),
            tracestate: Some("ts".to_owned()),
        }),
    };
    let mut expected = vec![VERSION, 116, 0, 0, 0, 5];
    expected.extend([119, 1, b'd', 119, 3, b'n', b'i', b'l']);
    expected.extend([119, 2, b'o', b'p', 97, 4]);
    expected.extend([119, 1, b't']);
    expected.extend(binary(b"SEND"));
    expected.extend([119, 5, b't', b'r', b'a', b'c', b'e', 116, 0, 0, 0, 2]);
    expected.extend([119, 11]);
    expected.extend(b"traceparent");
    expected.extend(binary(b"tp"));
    expected.extend([119, 10]);
    expected.extend(b"tracestate");
    expected.extend(binary(b"ts"));
    expected.extend([119, 2, b't', b's', 97, 2]);
    assert_eq!(encode_etf(&with_trace), expected);

    let without_state = OutFrame {
        trace: Some(TraceContext {
            traceparent: "tp".to_owned(),
            tracestate: None,
        }),
        ..with_trace
    };
    let bytes = encode_etf(&without_state);
    let mut trace = vec![
        119, 5, b't', b'r', b'a', b'c', b'e', 116, 0, 0, 0, 1, 119, 11,
    ];
    trace.extend(b"traceparent");
    assert!(
        bytes.windows(trace.len()).any(|w| w == trace),
        "{bytes:02x?}"
    );
    assert!(!bytes.windows(10).any(|w| w == b"tracestate"));
}

#[test]
fn the_codec_object_is_the_free_functions() {
    let frame = frame(Out::Value(obj([("a", Value::Int(1))])));
    let codec = ganglion_codecs::codec(Encoding::Etf).expect("etf");
    assert_eq!(codec.encoding(), Encoding::Etf);
    assert_eq!(Ok(codec.encode(&frame)), encode(Encoding::Etf, &frame));
    assert_eq!(Etf.encode(&frame), codec.encode(&frame));
    let bytes = Etf.encode(&frame);
    assert_eq!(codec.decode(&bytes), decode(Encoding::Etf, &bytes));
}

// === round trips ===

/// Encodes `value` as client data inside a frame and decodes the frame's `d`.
fn round_trip(value: &Value) -> Value {
    let bytes = encode_etf(&frame(Out::Value(value.clone())));
    match etf(&bytes) {
        Ok(Value::Object(mut map)) => map.remove("d").expect("d"),
        other => panic!("own output does not decode: {other:?}"),
    }
}

#[test]
fn every_kind_of_value_round_trips() {
    let values = [
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(255),
        Value::Int(256),
        Value::Int(-1),
        Value::Int(i64::from(i32::MAX) + 1),
        Value::Int(i64::from(i32::MIN) - 1),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::UInt(u64::MAX),
        Value::Float(0.1),
        Value::Float(-0.0),
        Value::Float(f64::MAX),
        Value::Float(5e-324),
        Value::from(""),
        Value::from("nil"),
        Value::from("true"),
        Value::from("🦀 \u{0}"),
        Value::Array(vec![]),
        Value::Array(vec![Value::Array(vec![]), Value::Null]),
        obj([]),
        obj([
            ("", Value::Int(1)),
            ("nested", obj([("k", Value::Array(vec![obj([])]))])),
        ]),
    ];
    for value in values {
        let back = round_trip(&value);
        assert_eq!(back, value);
        if let (Value::Float(a), Value::Float(b)) = (&back, &value) {
            assert_eq!(a.to_bits(), b.to_bits(), "bit for bit");
        }
    }
}

#[test]
fn strings_that_name_atoms_stay_strings() {
    // "nil" is written as a binary, so it reads back as the string, not as null.
    assert_eq!(d_bytes(Out::Value(Value::from("nil"))), binary(b"nil"));
}

// === properties ===

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64;
    prop_oneof![
        (f64::POSITIVE | f64::NEGATIVE | f64::NORMAL | f64::SUBNORMAL | f64::ZERO),
        Just(-0.0),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-300i64..300).prop_map(Value::Int),
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

/// An arbitrary term from the inbound table, as bytes, with the value it decodes to.
fn arb_term() -> impl Strategy<Value = (Vec<u8>, Value)> {
    let atom = "[a-z_]{0,12}".prop_map(|name| {
        let mut bytes = vec![115, name.len() as u8];
        bytes.extend(name.as_bytes());
        let value = match name.as_str() {
            "nil" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(name),
        };
        (bytes, value)
    });
    let leaf = prop_oneof![
        atom,
        any::<u8>().prop_map(|n| (vec![97, n], Value::Int(i64::from(n)))),
        any::<i32>().prop_map(|n| {
            let mut bytes = vec![98];
            bytes.extend(n.to_be_bytes());
            (bytes, Value::Int(i64::from(n)))
        }),
        (any::<bool>(), any::<u64>(), 0usize..3)
            .prop_map(|(negative, magnitude, pad)| {
                let mut digits = magnitude.to_le_bytes().to_vec();
                digits.extend(std::iter::repeat_n(0, pad));
                let value = if negative {
                    0i64.checked_sub_unsigned(magnitude).map(Value::Int)
                } else {
                    Some(Value::from_u64(magnitude))
                };
                (small_big(negative, &digits), value.unwrap_or(Value::Null))
            })
            .prop_filter("in range", |(_, v)| !v.is_null()),
        any::<String>().prop_map(|s| (binary(s.as_bytes()), Value::String(s))),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(|bytes| {
            let mut term = vec![107];
            term.extend((bytes.len() as u16).to_be_bytes());
            term.extend(&bytes);
            let value = bytes.iter().map(|&b| Value::Int(i64::from(b))).collect();
            (term, Value::Array(value))
        }),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| {
                let mut bytes = vec![104, items.len() as u8];
                let mut values = Vec::new();
                for (b, v) in items {
                    bytes.extend(b);
                    values.push(v);
                }
                (bytes, Value::Array(values))
            }),
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| {
                if items.is_empty() {
                    return (vec![106], Value::Array(vec![]));
                }
                let mut bytes = vec![108];
                bytes.extend((items.len() as u32).to_be_bytes());
                let mut values = Vec::new();
                for (b, v) in items {
                    bytes.extend(b);
                    values.push(v);
                }
                bytes.push(106);
                (bytes, Value::Array(values))
            }),
            prop::collection::vec(("[a-z]{0,4}", any::<bool>(), inner), 0..6).prop_map(|entries| {
                let mut bytes = vec![116];
                bytes.extend((entries.len() as u32).to_be_bytes());
                let mut map = Map::new();
                for (key, atom_key, (b, v)) in entries {
                    if atom_key {
                        bytes.extend([119, key.len() as u8]);
                        bytes.extend(key.as_bytes());
                    } else {
                        bytes.extend(binary(key.as_bytes()));
                    }
                    bytes.extend(b);
                    map.insert(key, v);
                }
                (bytes, Value::Object(map))
            }),
        ]
    })
}

proptest! {
    #[test]
    fn any_value_round_trips(value in arb_value()) {
        prop_assert_eq!(round_trip(&value), value);
    }

    #[test]
    fn any_inbound_term_decodes_to_its_value((term, value) in arb_term()) {
        prop_assert_eq!(decode_one(&term), Ok(value.clone()));
        // And the same frame compressed.
        let frame = in_map(&term);
        let inflated = &frame[1..];
        let mut bytes = vec![VERSION, 80];
        bytes.extend((inflated.len() as u32).to_be_bytes());
        bytes.extend(zlib(inflated));
        prop_assert_eq!(
            etf(&bytes),
            Ok(obj([("k", value)]))
        );
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = etf(&bytes);
    }

    #[test]
    fn decoding_arbitrary_map_shaped_terms_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![VERSION, 116];
        bytes.extend_from_slice(&body);
        let _ = etf(&bytes);
    }

    #[test]
    fn decoding_arbitrary_compressed_terms_never_panics(
        size in any::<u32>(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![VERSION, 80];
        bytes.extend(size.to_be_bytes());
        bytes.extend(zlib(&body));
        let _ = etf(&bytes);
        bytes.truncate(6);
        bytes.extend(&body);
        let _ = etf(&bytes);
    }

    #[test]
    fn decoding_mutated_valid_terms_never_panics(
        (term, _) in arb_term(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = in_map(&term);
        for (at, byte) in &edits {
            let at = at.index(bytes.len());
            bytes[at] = *byte;
        }
        let _ = etf(&bytes);
        let _ = etf(&bytes[..cut.index(bytes.len())]);
    }
}

#[test]
fn the_fuzzing_seeds_decode_and_the_compressed_seed_equals_the_plain_one() {
    let hello: &[u8] = include_bytes!("../fuzz/seeds/etf_decode/hello");
    let identify: &[u8] = include_bytes!("../fuzz/seeds/etf_decode/identify");
    let send: &[u8] = include_bytes!("../fuzz/seeds/etf_decode/send");
    let compressed: &[u8] = include_bytes!("../fuzz/seeds/etf_decode/send_compressed");
    assert!(etf(hello).is_ok());
    assert!(etf(identify).is_ok());
    let send = etf(send).expect("the SEND seed decodes");
    assert_eq!(etf(compressed), Ok(send.clone()));
    let payload = &send.as_object().expect("object")["d"]
        .as_object()
        .expect("d")["payload"];
    assert_eq!(
        payload,
        &obj([
            ("n", Value::Int(1)),
            ("i", Value::Int(-70_000)),
            ("b", Value::UInt(u64::MAX)),
            ("m", Value::Int(i64::MIN)),
            ("f", Value::Float(1.5)),
            ("s", Value::from("héllo")),
            ("a", Value::from("ok")),
            ("t", Value::Array(vec![Value::from("error"), Value::Int(7)])),
            (
                "str",
                Value::Array(vec![Value::Int(97), Value::Int(98), Value::Int(99)])
            ),
            (
                "l",
                Value::Array(vec![
                    Value::Null,
                    Value::Bool(true),
                    Value::Bool(false),
                    Value::Array(vec![])
                ])
            ),
            ("old", Value::Float(1.5)),
            ("lt", Value::Array(vec![Value::Int(2)])),
            ("la", Value::Null),
            ("u", Value::from("")),
        ])
    );
}
