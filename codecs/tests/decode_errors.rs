//! Every way an inbound frame can fall outside the data model (SPEC §2.4–§2.7) is a
//! `DecodeError`, never a panic and never a partial value.

use ganglion_codecs::{MAX_NESTING, decode};
use ganglion_core::{Encoding, Value};

fn json(text: &[u8]) -> Result<Value, String> {
    decode(Encoding::Json, text).map_err(|e| e.to_string())
}

fn msgpack(bytes: &[u8]) -> Result<Value, String> {
    decode(Encoding::Msgpack, bytes).map_err(|e| e.to_string())
}

fn etf(bytes: &[u8]) -> Result<Value, String> {
    decode(Encoding::Etf, bytes).map_err(|e| e.to_string())
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

// === JSON ===

#[test]
fn json_top_level_must_be_an_object() {
    for text in ["[1,2]", "1", "\"s\"", "null", "true", " [ ]"] {
        let detail = refused(json(text.as_bytes()));
        assert!(detail.contains("not an object"), "{text}: {detail}");
    }
}

#[test]
fn json_that_is_not_json_is_refused() {
    for text in [
        "abc",
        "{abc}",
        "{'a':1}",
        "{\"a\":NaN}",
        "{\"a\":Infinity}",
        "{\"a\":01}",
    ] {
        refused(json(text.as_bytes()));
    }
}

#[test]
fn json_empty_input_is_refused() {
    assert_eq!(refused(json(b"")), "empty payload");
    assert_eq!(refused(json(b" \r\n\t")), "empty payload");
}

#[test]
fn json_numbers_overflowing_binary64_are_refused() {
    refused(json(br#"{"a":1e400}"#));
    refused(json(br#"{"a":-1e400}"#));
}

#[test]
fn json_strings_must_be_unicode() {
    refused(json(b"{\"a\":\"\xff\"}"));
    refused(json(br#"{"a":"\ud800"}"#));
}

#[test]
fn json_truncated_frames_are_refused() {
    let frame = br#"{"op":4,"t":"SEND","d":{"payload":[1,2.5,"x",{"k":null}]}}"#;
    assert!(json(frame).is_ok());
    for end in 0..frame.len() {
        refused(json(&frame[..end]));
    }
}

#[test]
fn json_trailing_garbage_is_refused() {
    refused(json(br#"{"a":1} x"#));
    refused(json(br#"{"a":1}{}"#));
    assert!(json(b"{\"a\":1} \n").is_ok(), "trailing whitespace is fine");
}

// === MessagePack ===

#[test]
fn msgpack_top_level_must_be_a_map() {
    for bytes in [
        &[0x92, 0x01, 0x02][..],
        &[0x01],
        &[0xa1, b'a'],
        &[0xc0],
        b"abc",
    ] {
        let detail = refused(msgpack(bytes));
        assert!(detail.contains("not a map"), "{bytes:02x?}: {detail}");
    }
    assert_eq!(refused(msgpack(b"")), "empty payload");
}

#[test]
fn msgpack_nan_and_infinities_are_refused() {
    for float in [
        &[0xca, 0x7f, 0xc0, 0x00, 0x00][..],
        &[0xca, 0x7f, 0x80, 0x00, 0x00],
        &[0xca, 0xff, 0x80, 0x00, 0x00],
        &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
        &[0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0],
    ] {
        let mut bytes = vec![0x81, 0xa1, b'f'];
        bytes.extend_from_slice(float);
        let detail = refused(msgpack(&bytes));
        assert!(detail.contains("NaN"), "{float:02x?}: {detail}");
    }
}

#[test]
fn msgpack_ext_types_including_timestamps_are_refused() {
    for ext in [
        // timestamp 32, 64 and 96
        &[0xd6, 0xff, 0, 0, 0, 0][..],
        &[0xd7, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0xc7, 12, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        // application ext types of every size family
        &[0xd4, 1, 0],
        &[0xd5, 1, 0, 0],
        &[0xd8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0xc8, 0, 1, 1, 0],
        &[0xc9, 0, 0, 0, 1, 1, 0],
    ] {
        let mut bytes = vec![0x81, 0xa1, b'e'];
        bytes.extend_from_slice(ext);
        let detail = refused(msgpack(&bytes));
        assert!(detail.contains("extension"), "{ext:02x?}: {detail}");
    }
}

#[test]
fn msgpack_bin_and_str_must_be_utf8() {
    refused(msgpack(&[0x81, 0xa1, b'b', 0xc4, 0x02, 0xc3, 0x28]));
    refused(msgpack(&[0x81, 0xa1, b's', 0xa2, 0xc3, 0x28]));
    refused(msgpack(&[0x81, 0xc4, 0x01, 0xff, 0xc0]));
}

#[test]
fn msgpack_map_keys_must_be_strings() {
    for key in [
        &[0x01][..],
        &[0xc0],
        &[0xc3],
        &[0x90],
        &[0x80],
        &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        let mut bytes = vec![0x81];
        bytes.extend_from_slice(key);
        bytes.push(0x01);
        let detail = refused(msgpack(&bytes));
        assert!(detail.contains("key"), "{key:02x?}: {detail}");
    }
}

#[test]
fn msgpack_the_reserved_marker_is_refused() {
    refused(msgpack(&[0x81, 0xa1, b'x', 0xc1]));
}

#[test]
fn msgpack_truncated_frames_are_refused() {
    let frame = [
        0x83, 0xa2, b'o', b'p', 0x04, 0xa1, b't', 0xa4, b'S', b'E', b'N', b'D', 0xa1, b'd', 0x94,
        0xcd, 0x01, 0x00, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xc4, 0x01, b'x', 0x81, 0xa1, b'k',
        0xc0,
    ];
    assert!(msgpack(&frame).is_ok());
    for end in 0..frame.len() {
        refused(msgpack(&frame[..end]));
    }
}

#[test]
fn msgpack_trailing_bytes_are_refused() {
    let detail = refused(msgpack(&[0x80, 0x00]));
    assert!(detail.contains("trailing"), "{detail}");
    refused(msgpack(&[0x81, 0xa1, b'a', 0x01, 0x80]));
}

// === nesting ===

fn nested_json(depth: usize) -> Vec<u8> {
    // An object holding `depth - 1` nested arrays: `depth` containers in all.
    let mut text = String::from("{\"a\":");
    text.push_str(&"[".repeat(depth - 1));
    text.push_str(&"]".repeat(depth - 1));
    text.push('}');
    text.into_bytes()
}

fn nested_msgpack(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x81, 0xa1, b'a'];
    bytes.extend(std::iter::repeat_n(0x91, depth - 2));
    bytes.push(0x90);
    bytes
}

/// `#{a => [[…[]…]]}` with `depth` containers in all; the innermost is NIL_EXT.
fn nested_etf(depth: usize) -> Vec<u8> {
    let mut bytes = vec![131, 116, 0, 0, 0, 1, 119, 1, b'a'];
    for _ in 0..depth - 2 {
        bytes.extend_from_slice(&[108, 0, 0, 0, 1]);
    }
    bytes.push(106);
    bytes.extend(std::iter::repeat_n(106, depth - 2));
    bytes
}

/// The same with tuples, which ETF also decodes to arrays.
fn nested_etf_tuples(depth: usize) -> Vec<u8> {
    let mut bytes = vec![131, 116, 0, 0, 0, 1, 119, 1, b'a'];
    for _ in 0..depth - 2 {
        bytes.extend_from_slice(&[104, 1]);
    }
    bytes.extend_from_slice(&[104, 0]);
    bytes
}

#[test]
fn nesting_up_to_the_limit_decodes_in_every_encoding() {
    let json = json(&nested_json(MAX_NESTING)).expect("json at the limit");
    assert_eq!(json.depth(), MAX_NESTING);
    let msgpack = msgpack(&nested_msgpack(MAX_NESTING)).expect("msgpack at the limit");
    assert_eq!(msgpack, json);
    assert_eq!(etf(&nested_etf(MAX_NESTING)), Ok(json.clone()));
    assert_eq!(etf(&nested_etf_tuples(MAX_NESTING)), Ok(json));
}

#[test]
fn nesting_one_past_the_limit_is_refused_in_every_encoding() {
    refused(json(&nested_json(MAX_NESTING + 1)));
    let detail = refused(msgpack(&nested_msgpack(MAX_NESTING + 1)));
    assert!(detail.contains("nested too deeply"), "{detail}");
    refused(json(&nested_json(MAX_NESTING + 2)));
    refused(msgpack(&nested_msgpack(MAX_NESTING + 2)));
    for bytes in [
        nested_etf(MAX_NESTING + 1),
        nested_etf_tuples(MAX_NESTING + 1),
    ] {
        let detail = refused(etf(&bytes));
        assert!(detail.contains("nested too deeply"), "{detail}");
    }
}

#[test]
fn absurd_nesting_is_refused_without_exhausting_the_stack() {
    refused(json(&nested_json(100_000)));
    refused(msgpack(&nested_msgpack(100_000)));
    refused(etf(&nested_etf(100_000)));
    refused(etf(&nested_etf_tuples(100_000)));
}
