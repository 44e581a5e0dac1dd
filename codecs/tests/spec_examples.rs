//! The SPEC's own examples (§2.5, §2.6, §2.7, §3.1), byte for byte.

use std::borrow::Cow;

use ganglion_codecs::{FrameKind, codec, decode, encode, frame_kind};
use ganglion_core::frame::{TraceContext, op};
use ganglion_core::{Encoding, Map, Out, OutFrame, Outgoing, Value};

const HELLO_JSON: &str = r#"{"op":0,"d":{"heartbeat_interval":45000},"t":null,"ts":1700000000000}"#;

/// SPEC §2.6, with the spaces taken out.
const HELLO_MSGPACK_HEX: &str =
    "84 a2 6f70 00  a1 64 81 b2 6865617274626561745f696e74657276616c cd afc8
                                    a1 74 c0  a2 7473 cf 0000018bcfe56800";

/// SPEC §2.7: `#{d => #{<<"heartbeat_interval">> => 45000}, op => 0, t => nil, ts => 1700000000000}`
/// in the key order Erlang writes.
const HELLO_ETF_HEX: &str = "83 74 00000004
   77 01 64            74 00000001 6d 00000012 6865617274626561745f696e74657276616c 62 0000afc8
   77 02 6f70          61 00
   77 01 74            77 03 6e696c
   77 02 7473          6e 06 00 0068e5cf8b01";

fn hello() -> OutFrame {
    OutFrame {
        op: op::HELLO,
        t: None,
        // SPEC §2.7: hello's `d` is one of the hand-built maps with binary keys.
        d: Out::BinMap(vec![(Cow::Borrowed("heartbeat_interval"), Out::Int(45000))]),
        ts: 1_700_000_000_000,
        trace: None,
    }
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(pair, 16).expect("hex digit pair")
        })
        .collect()
}

fn hello_value() -> Value {
    Value::Object(Map::from([
        ("op".to_owned(), Value::Int(0)),
        (
            "d".to_owned(),
            Value::Object(Map::from([(
                "heartbeat_interval".to_owned(),
                Value::Int(45000),
            )])),
        ),
        ("t".to_owned(), Value::Null),
        ("ts".to_owned(), Value::Int(1_700_000_000_000)),
    ]))
}

#[test]
fn json_hello_is_the_spec_text_exactly() {
    let bytes = encode(Encoding::Json, &hello()).expect("json is supported");
    assert_eq!(std::str::from_utf8(&bytes), Ok(HELLO_JSON));
}

#[test]
fn msgpack_hello_is_the_spec_bytes_exactly() {
    let bytes = encode(Encoding::Msgpack, &hello()).expect("msgpack is supported");
    assert_eq!(&bytes[..], &hex(HELLO_MSGPACK_HEX)[..]);
    assert_eq!(
        &bytes[..8],
        [0x84, 0xa2, b'o', b'p', 0x00, 0xa1, b'd', 0x81],
        "envelope order op, d, t, ts"
    );
    assert_eq!(&bytes[bytes.len() - 9..], hex("cf 0000018bcfe56800"));
}

#[test]
fn etf_hello_is_the_spec_bytes_exactly() {
    let bytes = encode(Encoding::Etf, &hello()).expect("etf is supported");
    assert_eq!(&bytes[..], &hex(HELLO_ETF_HEX)[..]);
}

#[test]
fn the_spec_hellos_decode_to_the_same_value() {
    assert_eq!(
        decode(Encoding::Json, HELLO_JSON.as_bytes()),
        Ok(hello_value())
    );
    assert_eq!(
        decode(Encoding::Msgpack, &hex(HELLO_MSGPACK_HEX)),
        Ok(hello_value())
    );
    assert_eq!(
        decode(Encoding::Etf, &hex(HELLO_ETF_HEX)),
        Ok(hello_value())
    );
}

#[test]
fn codec_objects_and_free_functions_agree() {
    for encoding in Encoding::ALL {
        let codec = codec(encoding).expect("supported");
        let bytes = codec.encode(&hello());
        assert_eq!(Ok(bytes.clone()), encode(encoding, &hello()));
        assert_eq!(codec.decode(&bytes), Ok(hello_value()));
        assert_eq!(decode(encoding, &bytes), Ok(hello_value()));
    }
}

#[test]
fn json_frames_are_text_and_msgpack_and_etf_frames_binary() {
    assert_eq!(frame_kind(Encoding::Json), FrameKind::Text);
    assert_eq!(frame_kind(Encoding::Msgpack), FrameKind::Binary);
    assert_eq!(frame_kind(Encoding::Etf), FrameKind::Binary);
}

#[test]
fn every_outbound_frame_has_the_four_envelope_keys() {
    let frames = [
        OutFrame::new(op::INVALID, Out::Null),
        OutFrame::dispatch("SEND", Out::Null),
        OutFrame::new(op::HEARTBEAT_ACK, Out::BinMap(vec![])),
    ];
    for frame in &frames {
        for encoding in Encoding::ALL {
            let bytes = encode(encoding, frame).expect("supported");
            let decoded = decode(encoding, &bytes).expect("own output decodes");
            let map = decoded.as_object().expect("object");
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            assert_eq!(keys, ["d", "op", "t", "ts"], "{encoding} {frame:?}");
        }
    }
}

#[test]
fn t_is_null_except_on_dispatch() {
    let json = |frame: &OutFrame| encode(Encoding::Json, frame).expect("json");
    let bytes = json(&OutFrame {
        ts: 1,
        ..OutFrame::new(op::READY, Out::Null)
    });
    assert_eq!(&bytes[..], br#"{"op":2,"d":null,"t":null,"ts":1}"#);
    let bytes = json(&OutFrame {
        ts: 1,
        ..OutFrame::dispatch("SEND", Out::Null)
    });
    assert_eq!(&bytes[..], br#"{"op":4,"d":null,"t":"SEND","ts":1}"#);
}

#[test]
fn trace_is_written_only_when_present() {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let with_state = OutFrame {
        ts: 1,
        ..OutFrame::dispatch("SEND", Out::Null).with_trace(Some(TraceContext {
            traceparent: traceparent.to_owned(),
            tracestate: Some("congo=t61rcWkgMzE".to_owned()),
        }))
    };
    let bytes = encode(Encoding::Json, &with_state).expect("json");
    assert_eq!(
        std::str::from_utf8(&bytes),
        Ok(concat!(
            r#"{"op":4,"d":null,"t":"SEND","ts":1,"trace":{"traceparent":"#,
            r#""00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","#,
            r#""tracestate":"congo=t61rcWkgMzE"}}"#
        ))
    );

    let without_state = OutFrame {
        trace: Some(TraceContext {
            traceparent: traceparent.to_owned(),
            tracestate: None,
        }),
        ..with_state.clone()
    };
    for encoding in Encoding::ALL {
        let decoded = decode(encoding, &encode(encoding, &without_state).expect("ok"))
            .expect("own output decodes");
        let trace = decoded.as_object().and_then(|m| m.get("trace"));
        assert_eq!(
            trace,
            Some(&Value::Object(Map::from([(
                "traceparent".to_owned(),
                Value::from(traceparent)
            )]))),
            "{encoding}"
        );
        let decoded = decode(encoding, &encode(encoding, &with_state).expect("ok"))
            .expect("own output decodes");
        let state = decoded
            .as_object()
            .and_then(|m| m.get("trace"))
            .and_then(Value::as_object)
            .and_then(|t| t.get("tracestate"));
        assert_eq!(state, Some(&Value::from("congo=t61rcWkgMzE")), "{encoding}");
    }
}

#[test]
fn a_frame_for_one_recipient_encodes_to_the_same_bytes_without_keeping_them() {
    let one = Outgoing::for_one(hello());
    for encoding in Encoding::ALL {
        let codec = codec(encoding).expect("supported");
        let first = codec.encode_once(&one);
        let second = codec.encode_once(&one);
        assert_eq!(first, codec.encode(&hello()), "{encoding}");
        assert_eq!(second, first, "{encoding}");
        assert_ne!(first.as_ptr(), second.as_ptr(), "{encoding}: not kept");
    }
}

#[test]
fn a_fanned_out_frame_is_encoded_once_per_encoding() {
    let outgoing = Outgoing::new(hello());
    for encoding in Encoding::ALL {
        let codec = codec(encoding).expect("supported");
        let first = codec.encode_once(&outgoing);
        let second = codec.encode_once(&outgoing);
        assert_eq!(first.as_ptr(), second.as_ptr(), "{encoding}: shared bytes");
        assert_eq!(first, codec.encode(&hello()));
    }
}
