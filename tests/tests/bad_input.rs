//! Bad input (SPEC §2.1, §2.4–§2.6, §3.3, §6.12, §7.8, §13): undecodable frames, wrong frame
//! kinds, oversize and deeply nested frames, unknown opcodes and event types, malformed `d`
//! for every known event, invalid queries of every reason, and a seeded fuzzer.
//!
//! After every bad input a [`Witness`] proves the node still serves other clients: a SEND
//! round trip between a long-lived bystander and a freshly identified client.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::SinkExt;
use ganglion_tests::assert::{expect_op3, key_set, keys};
use ganglion_tests::{Client, Enc, TestGateway, meta};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const UNRECOVERABLE: &str = "decode: payload: unrecoverable";
const MAX_FRAME_BYTES: usize = 1_048_576;

// === helpers ===

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A fresh, unique name, so clients of different cases never collide.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// Sends `frame` and asserts that exactly one op 3 `error` comes back (proven by a heartbeat),
/// so the connection is still open; returns its `extra_info`.
async fn expect_only_op3(client: &mut Client, frame: Value, error: &str) -> Value {
    client.send(frame.clone()).await;
    let replies = client.sync().await;
    assert_eq!(
        replies.len(),
        1,
        "{:?}: one op 3 for {frame}, got {replies:?}",
        client.encoding
    );
    expect_op3(&replies[0], error)
}

/// The op 8 `d` for a decode error: the error string and a string or null `extra_info`.
fn assert_unrecoverable(d: &Value, context: &str) {
    assert_eq!(keys(d), key_set(&["error", "extra_info"]), "{context}: {d}");
    assert!(
        d["extra_info"].is_string() || d["extra_info"].is_null(),
        "{context}: extra_info is a string or null: {d}"
    );
}

/// A connected client, identified with a unique identity when `identified`.
async fn victim(gw: &TestGateway, enc: Enc, identified: bool) -> Client {
    if identified {
        gw.identify(enc, &unique("victim-app"), "victim").await
    } else {
        gw.connect(enc).await.0
    }
}

/// Sends one raw websocket message, ignoring a send error: the node may already have closed.
async fn send_raw_lenient(client: &mut Client, message: Message) {
    let _ = client.ws.send(message).await;
}

/// A text message whose payload need not be valid UTF-8.
fn raw_text(bytes: impl Into<Vec<u8>>) -> Message {
    Message::Frame(Frame::message(bytes.into(), OpCode::Data(Data::Text), true))
}

/// The message `enc` carries raw frame bytes in.
fn raw_message(enc: Enc, bytes: Vec<u8>) -> Message {
    match enc {
        Enc::Json => raw_text(bytes),
        Enc::Msgpack => Message::binary(bytes),
    }
}

fn msgpack(frame: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(frame).expect("msgpack")
}

/// Stands for raw bytes in a frame given to [`msgpack_with`].
const RAW: &str = "@@RAW@@";

/// `frame` in MessagePack with the string [`RAW`] replaced by `raw`, which can be anything,
/// including bytes outside the data model.
fn msgpack_with(frame: &Value, raw: &[u8]) -> Vec<u8> {
    let bytes = msgpack(frame);
    let mut marker = vec![0xa0 | RAW.len() as u8];
    marker.extend_from_slice(RAW.as_bytes());
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_slice())
        .expect("the placeholder is in the frame");
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(raw);
    out.extend_from_slice(&bytes[at + marker.len()..]);
    out
}

fn nested_list(depth: usize) -> Value {
    let mut value = json!(0);
    for _ in 0..depth {
        value = json!([value]);
    }
    value
}

/// Proves the node still works: a long-lived bystander and a new client exchange SENDs.
struct Witness {
    bystander: Client,
    app: String,
    checks: usize,
}

impl Witness {
    async fn new(gw: &TestGateway) -> Witness {
        let app = unique("bystander");
        Witness {
            bystander: gw.identify(Enc::Json, &app, "b").await,
            app,
            checks: 0,
        }
    }

    async fn check(&mut self, gw: &TestGateway, context: &str) {
        self.checks += 1;
        let enc = Enc::ALL[self.checks % 2];
        let fresh_app = unique("fresh");
        let mut fresh = gw.identify(enc, &fresh_app, "f").await;
        let nonce = json!({"check": self.checks});
        fresh
            .dispatch(
                "SEND",
                json!({"target": {"application": self.app}, "nonce": nonce, "payload": 1.0}),
            )
            .await;
        let got = self.bystander.recv().await;
        assert_eq!(
            got["d"],
            json!({"target": null, "nonce": nonce, "payload": 1.0}),
            "after {context}"
        );
        self.bystander
            .dispatch(
                "SEND",
                json!({"target": {"application": fresh_app}, "nonce": nonce, "payload": [2]}),
            )
            .await;
        let got = fresh.recv().await;
        assert_eq!(
            got["d"],
            json!({"target": null, "nonce": nonce, "payload": [2]}),
            "after {context}"
        );
        fresh.expect_nothing().await;
        self.bystander.expect_nothing().await;
        fresh.close().await;
    }
}

/// Opens a connection (identified or not), sends `message`, and expects op 8 `error` and close
/// `code`; returns the op 8 `d`.
async fn expect_fatal_for(
    gw: &TestGateway,
    enc: Enc,
    identified: bool,
    message: Message,
    error: &str,
    code: u16,
) -> Value {
    let mut client = victim(gw, enc, identified).await;
    send_raw_lenient(&mut client, message).await;
    client.expect_fatal(error, code).await
}

// === undecodable frames (items 5, 6; SPEC §2.4–§2.6) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_non_object_tops_are_unrecoverable() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let texts: &[&str] = &[
        "abc",
        "",
        "   ",
        "{",
        "}",
        "[1,2]",
        "[]",
        "1",
        "-1.5",
        "null",
        "true",
        "\"a string\"",
        r#"{"op":1,}"#,
        r#"{"op":1} trailing"#,
        r#"{"op":5}{"op":5}"#,
        r#"{'op':5}"#,
        r#"{op:5}"#,
        r#"{"op" 5}"#,
        r#"{"op":05}"#,
        r#"{"op":5,"d":NaN}"#,
        r#"{"op":5,"d":Infinity}"#,
        r#"{"op":5,"d":1e400}"#,
        r#"{"op":5,"d":-1e400}"#,
        r#"{"op":5,"d":"\ud800"}"#,
        "{\"op\":5,\"d\":\"raw \u{1} control\"}",
        r#"{"op":5,"d":"bad \x escape"}"#,
        r#"{"op":5,"d":[1,2}"#,
        "{\"op\":5,\"d\":[1,2]",
    ];
    for identified in [false, true] {
        for text in texts {
            let d = expect_fatal_for(
                &gw,
                Enc::Json,
                identified,
                Message::text(*text),
                UNRECOVERABLE,
                1008,
            )
            .await;
            let context = format!("json {text:?} (identified: {identified})");
            assert_unrecoverable(&d, &context);
            witness.check(&gw, &context).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_msgpack_and_values_outside_the_data_model_are_unrecoverable() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    // Inside any `d`, and inside a SEND's payload, which MessagePack checks without decoding.
    let send = json!({"op": 4, "t": "SEND", "d": {"target": {"application": "x"}, "payload": RAW}});
    for frame in [json!({"op": 5, "d": RAW}), send] {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("truncated map", vec![0x81]),
            ("truncated key", vec![0x81, 0xa2, b'o']),
            ("never-used marker", vec![0xc1]),
            ("array top", vec![0x92, 0x01, 0x02]),
            ("integer top", vec![0x05]),
            ("string top", vec![0xa1, b'x']),
            ("nil top", vec![0xc0]),
            ("trailing bytes", vec![0x80, 0x00]),
            ("integer key", vec![0x81, 0x01, 0x05]),
            ("nil key", vec![0x81, 0xc0, 0x05]),
            ("array key", vec![0x81, 0x90, 0x05]),
            ("marker c1 as value", msgpack_with(&frame, &[0xc1])),
            ("fixext1", msgpack_with(&frame, &[0xd4, 0x01, 0x00])),
            (
                "timestamp 32",
                msgpack_with(&frame, &[0xd6, 0xff, 0x65, 0x00, 0x00, 0x00]),
            ),
            (
                "timestamp 64",
                msgpack_with(&frame, &[0xd7, 0xff, 0, 0, 0, 0, 0x65, 0, 0, 0]),
            ),
            (
                "fixext16",
                msgpack_with(&frame, &[&[0xd8, 0x05][..], &[0; 16]].concat()),
            ),
            (
                "ext8",
                msgpack_with(&frame, &[0xc7, 0x02, 0x07, 0xaa, 0xbb]),
            ),
            (
                "ext16",
                msgpack_with(&frame, &[0xc8, 0x00, 0x01, 0x07, 0xaa]),
            ),
            (
                "ext32",
                msgpack_with(&frame, &[0xc9, 0x00, 0x00, 0x00, 0x01, 0x07, 0xaa]),
            ),
            (
                "bin not UTF-8",
                msgpack_with(&frame, &[0xc4, 0x02, 0xc3, 0x28]),
            ),
            (
                "bin16 not UTF-8",
                msgpack_with(&frame, &[0xc5, 0x00, 0x01, 0xff]),
            ),
            ("str not UTF-8", msgpack_with(&frame, &[0xa2, 0xc3, 0x28])),
            ("str8 not UTF-8", msgpack_with(&frame, &[0xd9, 0x01, 0xfe])),
            (
                "key not UTF-8",
                msgpack_with(&frame, &[0x81, 0xa1, 0xff, 0x01]),
            ),
            (
                "bin key not UTF-8",
                msgpack_with(&frame, &[0x81, 0xc4, 0x01, 0xff, 0x01]),
            ),
            (
                "float64 NaN",
                msgpack_with(&frame, &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0]),
            ),
            (
                "float64 +inf",
                msgpack_with(&frame, &[0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0]),
            ),
            (
                "float32 -inf",
                msgpack_with(&frame, &[0xca, 0xff, 0x80, 0x00, 0x00]),
            ),
            (
                "float32 NaN",
                msgpack_with(&frame, &[0xca, 0x7f, 0xc0, 0x00, 0x00]),
            ),
            (
                "huge declared array",
                msgpack_with(&frame, &[0xdd, 0xff, 0xff, 0xff, 0xff]),
            ),
            (
                "huge declared map",
                msgpack_with(&frame, &[0xdf, 0xff, 0xff, 0xff, 0xff]),
            ),
            (
                "huge declared str",
                msgpack_with(&frame, &[0xdb, 0xff, 0xff, 0xff, 0xff, b'x']),
            ),
            (
                "truncated uint64",
                msgpack_with(&frame, &[0xcf, 0x00, 0x01]),
            ),
        ];
        for identified in [false, true] {
            for (name, bytes) in &cases {
                let d = expect_fatal_for(
                    &gw,
                    Enc::Msgpack,
                    identified,
                    Message::binary(bytes.clone()),
                    UNRECOVERABLE,
                    1008,
                )
                .await;
                let context = format!("msgpack {name} in {frame} (identified: {identified})");
                assert_unrecoverable(&d, &context);
                witness.check(&gw, &context).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_json_text_message_is_unrecoverable() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let cases: &[&[u8]] = &[
        b"{\"op\":5,\"d\":\"\xff\"}",
        b"{\"op\":5,\"d\":\"\xc3\x28\"}",
        b"{\"op\":5,\"d\":\"\xed\xa0\x80\"}",
        b"{\"op\":5,\"d\":\"\xe2\x82\"}",
        b"\xfe\xff",
    ];
    for identified in [false, true] {
        for bytes in cases {
            let d = expect_fatal_for(
                &gw,
                Enc::Json,
                identified,
                raw_text(*bytes),
                UNRECOVERABLE,
                1008,
            )
            .await;
            let context = format!("text {bytes:02x?} (identified: {identified})");
            assert_unrecoverable(&d, &context);
            witness.check(&gw, &context).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_message_of_the_wrong_kind_names_the_kind_and_the_encoding() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let frame = json!({"op": 5, "d": {}});
    for identified in [false, true] {
        for (enc, message, error) in [
            (
                Enc::Json,
                Message::binary(frame.to_string().into_bytes()),
                "decode: payload: invalid websocket opcode/encoding combo: {binary, json}",
            ),
            (
                Enc::Json,
                Message::binary(msgpack(&frame)),
                "decode: payload: invalid websocket opcode/encoding combo: {binary, json}",
            ),
            (
                Enc::Msgpack,
                Message::text(frame.to_string()),
                "decode: payload: invalid websocket opcode/encoding combo: {text, msgpack}",
            ),
        ] {
            let d = expect_fatal_for(&gw, enc, identified, message, error, 1008).await;
            assert_eq!(d, json!({"error": error, "extra_info": null}));
            witness
                .check(&gw, &format!("{error} (identified: {identified})"))
                .await;
        }
    }
}

/// A text message is the wrong kind on a msgpack connection whatever its bytes, including
/// bytes that are not UTF-8 (a MessagePack frame sent with the wrong opcode, say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_on_a_msgpack_connection_is_the_wrong_kind_even_when_it_is_not_utf8() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let error = "decode: payload: invalid websocket opcode/encoding combo: {text, msgpack}";
    let not_utf8 = msgpack(&json!({"op": 5, "d": {"n": 200}}));
    assert!(std::str::from_utf8(&not_utf8).is_err());
    for identified in [false, true] {
        let d = expect_fatal_for(
            &gw,
            Enc::Msgpack,
            identified,
            raw_text(not_utf8.clone()),
            error,
            1008,
        )
        .await;
        assert_eq!(d, json!({"error": error, "extra_info": null}));
        witness
            .check(
                &gw,
                &format!("non-UTF-8 text on msgpack (identified: {identified})"),
            )
            .await;
    }
}

// === size and nesting limits (item 7; SPEC §2.1, §2.4, §5.6) ===

/// A SEND to `app` whose encoded size in `enc` is exactly `size` bytes, and the length of its
/// payload string.
fn send_of_size(enc: Enc, app: &str, size: usize) -> (Vec<u8>, usize) {
    let frame = |len: usize| {
        json!({"op": 4, "t": "SEND",
               "d": {"target": {"application": app}, "payload": "x".repeat(len)}})
    };
    let encode = |len: usize| match enc {
        Enc::Json => frame(len).to_string().into_bytes(),
        Enc::Msgpack => msgpack(&frame(len)),
    };
    // Past 65 535 bytes the string header no longer changes size, so the size is linear in
    // the payload length from there on.
    let base = 100_000;
    let len = size - encode(base).len() + base;
    let bytes = encode(len);
    assert_eq!(bytes.len(), size);
    (bytes, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_one_byte_over_the_limit_is_payload_too_large_with_close_1009() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    for enc in Enc::ALL {
        for identified in [false, true] {
            let (bytes, _) = send_of_size(enc, "nobody", MAX_FRAME_BYTES + 1);
            let d = expect_fatal_for(
                &gw,
                enc,
                identified,
                raw_message(enc, bytes),
                "payload too large",
                1009,
            )
            .await;
            assert_eq!(
                d,
                json!({"error": "payload too large", "extra_info": {"limit": 1_048_576}})
            );
            witness
                .check(&gw, &format!("{enc:?} oversize (identified: {identified})"))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_exactly_the_limit_is_accepted_and_delivered() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    for enc in Enc::ALL {
        let app = unique("exact");
        let mut client = gw.identify(enc, &app, "c").await;
        let (bytes, len) = send_of_size(enc, &app, MAX_FRAME_BYTES);
        client.send_raw(raw_message(enc, bytes)).await;
        let frame = client.recv().await;
        assert_eq!(
            frame["d"],
            json!({"target": null, "nonce": null, "payload": "x".repeat(len)}),
            "{enc:?}"
        );
        client.expect_nothing().await;
        client.close().await;
        witness.check(&gw, &format!("{enc:?} exact size")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_reassembled_and_the_limit_applies_to_the_whole_message() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let fragments = |bytes: Vec<u8>, kind: Data, parts: usize| -> Vec<Message> {
        let step = bytes.len().div_ceil(parts);
        let chunks: Vec<Vec<u8>> = bytes.chunks(step).map(<[u8]>::to_vec).collect();
        let last = chunks.len() - 1;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                let opcode = if i == 0 { kind } else { Data::Continue };
                Message::Frame(Frame::message(chunk, OpCode::Data(opcode), i == last))
            })
            .collect()
    };
    for enc in Enc::ALL {
        let kind = match enc {
            Enc::Json => Data::Text,
            Enc::Msgpack => Data::Binary,
        };
        // A small message in three fragments works.
        let app = unique("frag");
        let mut client = gw.identify(enc, &app, "c").await;
        let frame = json!({"op": 4, "t": "SEND",
                           "d": {"target": {"application": app}, "nonce": "frag", "payload": "ok"}});
        let bytes = match enc {
            Enc::Json => frame.to_string().into_bytes(),
            Enc::Msgpack => msgpack(&frame),
        };
        for message in fragments(bytes, kind, 3) {
            client.send_raw(message).await;
        }
        let got = client.recv().await;
        assert_eq!(
            got["d"],
            json!({"target": null, "nonce": "frag", "payload": "ok"})
        );
        client.expect_nothing().await;

        // Fragments that are each small but add up to one byte over the limit.
        let (bytes, _) = send_of_size(enc, &app, MAX_FRAME_BYTES + 1);
        for message in fragments(bytes, kind, 4) {
            send_raw_lenient(&mut client, message).await;
        }
        let d = client.expect_fatal("payload too large", 1009).await;
        assert_eq!(d["extra_info"], json!({"limit": 1_048_576}));
        witness
            .check(&gw, &format!("{enc:?} fragmented oversize"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_nested_127_levels_deep_is_delivered_and_128_levels_are_unrecoverable() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    for enc in Enc::ALL {
        let app = unique("deep");
        let mut client = gw.identify(enc, &app, "c").await;
        // The frame object is level 1 and `d` level 2, so a payload of 125 nested lists makes
        // 127 levels in all.
        let payload = nested_list(125);
        client
            .dispatch(
                "SEND",
                json!({"target": {"application": app}, "payload": payload}),
            )
            .await;
        let got = client.recv().await;
        assert_eq!(got["d"]["payload"], payload, "{enc:?}");
        client.expect_nothing().await;

        // One more level: 128.
        client
            .dispatch(
                "SEND",
                json!({"target": {"application": app}, "payload": nested_list(126)}),
            )
            .await;
        let d = client.expect_fatal(UNRECOVERABLE, 1008).await;
        assert_unrecoverable(&d, &format!("{enc:?} 128 levels"));
        witness.check(&gw, &format!("{enc:?} 128 levels")).await;

        // Far deeper, before identify, in a key that is not even looked at.
        let (mut unidentified, _) = gw.connect(enc).await;
        unidentified
            .send(json!({"op": 1, "x": nested_list(1000)}))
            .await;
        let d = unidentified.expect_fatal(UNRECOVERABLE, 1008).await;
        assert_unrecoverable(&d, &format!("{enc:?} 1000 levels"));
        witness.check(&gw, &format!("{enc:?} 1000 levels")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_nested_deeper_than_32_levels_is_invalid_metadata_and_the_connection_stays_open() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    for enc in Enc::ALL {
        let app = unique("deep-meta");
        let mut client = gw.identify(enc, &app, "c").await;
        for depth in [33, 60, 120] {
            let info = expect_only_op3(
                &mut client,
                json!({"op": 4, "t": "UPDATE_METADATA",
                       "d": {"deep": meta("list", nested_list(depth))}}),
                "invalid metadata",
            )
            .await;
            assert_eq!(
                info,
                json!({"deep": "deep: value nested too deeply (max depth 32)"})
            );
        }
        client
            .update_metadata(json!({"deep": meta("list", nested_list(32))}))
            .await;
        witness
            .check(&gw, &format!("{enc:?} deep UPDATE_METADATA"))
            .await;

        // At identify the same value is fatal.
        let (mut other, _) = gw.connect(enc).await;
        other
            .send(json!({"op": 1, "d": {"application_id": unique("deep-id"), "client_id": "c",
                                        "metadata": {"deep": meta("map", json!({"a": nested_list(40)}))}}}))
            .await;
        let d = other.expect_fatal("initial metadata: invalid", 1008).await;
        assert_eq!(
            d["extra_info"],
            json!({"deep": "deep: value nested too deeply (max depth 32)"})
        );
        witness.check(&gw, &format!("{enc:?} deep identify")).await;
    }
}

// === numbers (SPEC §2.4–§2.6) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_numbers_are_integers_only_without_fraction_or_exponent_and_within_range() {
    let gw = TestGateway::start().await;
    let app = unique("numbers");
    let mut client = gw.identify(Enc::Json, &app, "c").await;
    let cases: Vec<(&str, Value)> = vec![
        ("0", json!(0)),
        ("-0", json!(0)),
        ("100", json!(100)),
        ("1e2", json!(100.0)),
        ("1E2", json!(100.0)),
        ("100.0", json!(100.0)),
        ("-1.5e-3", json!(-0.0015)),
        ("18446744073709551615", json!(u64::MAX)),
        (
            "18446744073709551616",
            json!(18_446_744_073_709_551_616.0_f64),
        ),
        ("-9223372036854775808", json!(i64::MIN)),
        (
            "-9223372036854775809",
            json!(-9_223_372_036_854_775_809.0_f64),
        ),
        ("1e308", json!(1e308)),
        ("5e-324", json!(5e-324)),
    ];
    for (literal, expected) in &cases {
        let text = format!(
            r#"{{"op":4,"t":"SEND","d":{{"target":{{"application":"{app}"}},"payload":{literal}}}}}"#
        );
        client.send_raw(Message::text(text)).await;
        let got = client.recv().await;
        assert_eq!(&got["d"]["payload"], expected, "literal {literal}");
    }
    client.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_integer_float_and_string_families_all_decode() {
    let gw = TestGateway::start().await;
    let app = unique("families");
    let mut client = gw.identify(Enc::Msgpack, &app, "c").await;
    let frame =
        json!({"op": 4, "t": "SEND", "d": {"target": {"application": app}, "payload": RAW}});
    let cases: Vec<(&str, Vec<u8>, Value)> = vec![
        ("uint8", vec![0xcc, 0xff], json!(255)),
        ("uint64 small", vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 7], json!(7)),
        (
            "uint64 max",
            vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            json!(u64::MAX),
        ),
        (
            "int64 min",
            vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
            json!(i64::MIN),
        ),
        ("int8", vec![0xd0, 0xfe], json!(-2)),
        ("negative fixint", vec![0xff], json!(-1)),
        ("float32", vec![0xca, 0x3f, 0xc0, 0x00, 0x00], json!(1.5)),
        (
            "float64 integral",
            vec![0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0],
            json!(1.0),
        ),
        ("bin UTF-8", vec![0xc4, 0x03, b'a', 0xc3, 0xa9], json!("aé")),
        ("bin16", vec![0xc5, 0x00, 0x01, b'z'], json!("z")),
        ("str8", vec![0xd9, 0x02, b'h', b'i'], json!("hi")),
        (
            "map16 with bin key",
            vec![0xde, 0x00, 0x01, 0xc4, 0x01, b'k', 0xc3],
            json!({"k": true}),
        ),
        (
            "array32",
            vec![0xdd, 0, 0, 0, 2, 0xc0, 0xc2],
            json!([null, false]),
        ),
    ];
    for (name, raw, expected) in &cases {
        client
            .send_raw(Message::binary(msgpack_with(&frame, raw)))
            .await;
        let got = client.recv().await;
        assert_eq!(&got["d"]["payload"], expected, "{name}");
    }
    // The opcode itself may use any integer family, and a top-level map16 is a map.
    let heartbeat = [
        0xde, 0x00, 0x02, 0xa2, b'o', b'p', 0xcf, 0, 0, 0, 0, 0, 0, 0, 5, 0xa1, b'd', 0x80,
    ];
    client.send_raw(Message::binary(heartbeat.to_vec())).await;
    assert_eq!(client.recv().await["op"], 6);
    client.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_takes_its_last_value() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = unique("dup");
        let mut client = gw.identify(enc, &app, "c").await;
        // `op` 4 then 5: a heartbeat, not a dispatch.
        let json_text = format!(
            r#"{{"op":4,"t":"SEND","d":{{"target":{{"application":"{app}"}},"payload":1}},"op":5}}"#
        );
        let bytes = match enc {
            Enc::Json => json_text.into_bytes(),
            Enc::Msgpack => {
                let mut bytes = vec![0x84, 0xa2, b'o', b'p', 0x04, 0xa1, b't'];
                bytes.extend(msgpack(&json!("SEND")));
                bytes.extend([0xa1, b'd']);
                bytes.extend(msgpack(
                    &json!({"target": {"application": app}, "payload": 1}),
                ));
                bytes.extend([0xa2, b'o', b'p', 0x05]);
                bytes
            }
        };
        client.send_raw(raw_message(enc, bytes)).await;
        let frame = client.recv().await;
        assert_eq!(frame["op"], 6, "{enc:?}: {frame}");
        client.expect_nothing().await;
    }
}

// === opcodes (SPEC §3.3) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_non_integer_opcodes_are_gated_like_any_other_op() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let unknown: Vec<Value> = vec![
        json!(9),
        json!(-1),
        json!(256),
        json!(260),
        json!("4"),
        json!("1"),
        json!(4.0),
        json!(1.0),
        json!(4.5),
        json!(null),
        json!(true),
        json!([4]),
        json!({"op": 4}),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e30),
    ];
    for enc in Enc::ALL {
        for op in &unknown {
            let frame = json!({"op": op, "t": "SEND",
                               "d": {"client_id": "x", "application_id": "y",
                                     "target": {}, "payload": 1}});
            for identified in [false, true] {
                let mut client = victim(&gw, enc, identified).await;
                client.send(frame.clone()).await;
                let error = if identified {
                    "invalid client op nil"
                } else {
                    "sent payload with non-identify opcode without identifying first"
                };
                let d = client.expect_fatal(error, 1008).await;
                assert_eq!(d, json!({"error": error, "extra_info": null}), "op {op}");
                witness
                    .check(&gw, &format!("{enc:?} op {op} (identified: {identified})"))
                    .await;
            }
        }
        // A missing `op` is unknown too.
        let mut client = victim(&gw, enc, true).await;
        client.send(json!({"t": "SEND", "d": {}})).await;
        client.expect_fatal("invalid client op nil", 1008).await;
    }
    // JSON literals that no serde_json value can carry: beyond u64, they are floats.
    for text in [
        r#"{"op":18446744073709551616}"#,
        r#"{"op":4e0}"#,
        r#"{"op":40e-1}"#,
    ] {
        let mut client = victim(&gw, Enc::Json, true).await;
        client.send_raw(Message::text(text)).await;
        client.expect_fatal("invalid client op nil", 1008).await;
        witness.check(&gw, text).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_opcodes_from_an_identified_client_are_named_in_the_error() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    for enc in Enc::ALL {
        for (op, name) in [
            (0, ":hello"),
            (1, ":identify"),
            (2, ":ready"),
            (3, ":invalid"),
            (6, ":heartbeat_ack"),
            (7, ":goodbye"),
            (8, ":error"),
        ] {
            let mut client = victim(&gw, enc, true).await;
            client.send(json!({"op": op, "d": {}})).await;
            let error = format!("invalid client op {name}");
            let d = client.expect_fatal(&error, 1008).await;
            assert_eq!(d, json!({"error": error, "extra_info": null}));
            witness.check(&gw, &format!("{enc:?} op {op}")).await;
        }
    }
}

// === event types and `d` shapes (SPEC §7.1, §7.8) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_non_string_event_types_get_invalid_dispatch_payload_echoing_the_frame() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let types: Vec<Option<Value>> = vec![
        Some(json!("FOO")),
        Some(json!("")),
        Some(json!("send")),
        Some(json!("Send")),
        Some(json!(" SEND")),
        Some(json!("SEND ")),
        Some(json!("QUEUE_CONFIRM")),
        Some(json!("CLIENT_CONNECTED")),
        Some(json!("CLIENT_DISCONNECTED")),
        Some(json!("UPDATE_METADATA\u{0}")),
        Some(json!("плагин")),
        Some(json!(null)),
        None,
        Some(json!(5)),
        Some(json!(-1)),
        Some(json!(5.5)),
        Some(json!(true)),
        Some(json!([])),
        Some(json!(["SEND"])),
        Some(json!({"t": "SEND"})),
    ];
    for enc in Enc::ALL {
        let app = unique("t");
        let mut client = gw.identify(enc, &app, "c").await;
        let d = json!({"target": {"application": app}, "payload": 1, "nonce": 2});
        for (i, t) in types.iter().enumerate() {
            let mut frame = json!({"op": 4, "d": d});
            if let Some(t) = t {
                frame["t"] = t.clone();
            }
            // Odd `ts` values are echoed as received.
            let ts = [
                json!(null),
                json!(123),
                json!(1.5),
                json!("x"),
                json!({"a": [1]}),
            ][i % 5]
                .clone();
            if !ts.is_null() {
                frame["ts"] = ts.clone();
            }
            let info = expect_only_op3(&mut client, frame, "invalid dispatch payload").await;
            assert_eq!(
                info,
                json!({"op": 4, "t": t.clone().unwrap_or(Value::Null), "ts": ts, "d": d}),
                "{enc:?} t {t:?}"
            );
        }
        witness.check(&gw, &format!("{enc:?} unknown t")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_d_of_every_wrong_type_for_each_known_event_gets_op_3_and_the_connection_stays_open() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let wrong: Vec<Option<Value>> = vec![
        None,
        Some(json!(null)),
        Some(json!(true)),
        Some(json!(false)),
        Some(json!(0)),
        Some(json!(-1)),
        Some(json!(1.5)),
        Some(json!(u64::MAX)),
        Some(json!("")),
        Some(json!("SEND")),
        Some(json!([])),
        Some(json!([1, {"target": {}, "payload": 1}])),
    ];
    for enc in Enc::ALL {
        let app = unique("d");
        let mut client = gw.identify(enc, &app, "c").await;
        for t in ["UPDATE_METADATA", "SEND", "BROADCAST", "QUERY_NODES"] {
            for d in &wrong {
                let mut frame = json!({"op": 4, "t": t});
                if let Some(d) = d {
                    frame["d"] = d.clone();
                }
                let echoed = d.clone().unwrap_or(Value::Null);
                if t == "QUERY_NODES" {
                    // QUERY_NODES's `d` is the query itself.
                    let info = expect_only_op3(&mut client, frame, "invalid query").await;
                    assert_eq!(
                        info,
                        json!({"reason": "query: must be an object", "nonce": null}),
                        "{enc:?} {t} d={echoed}"
                    );
                } else {
                    let info =
                        expect_only_op3(&mut client, frame, "invalid dispatch payload").await;
                    assert_eq!(
                        info,
                        json!({"op": 4, "t": t, "ts": null, "d": echoed}),
                        "{enc:?} {t} d={echoed}"
                    );
                }
            }
        }
        // SEND and BROADCAST need both `target` and `payload`.
        for t in ["SEND", "BROADCAST"] {
            for d in [
                json!({}),
                json!({"target": {"application": app}}),
                json!({"target": {"application": app}, "nonce": 1, "sender": "x"}),
                json!({"payload": 1}),
                json!({"payload": null, "nonce": "n"}),
                json!({"Target": {"application": app}, "Payload": 1}),
            ] {
                let frame = json!({"op": 4, "t": t, "ts": 9, "d": d});
                let info = expect_only_op3(&mut client, frame, "invalid dispatch payload").await;
                assert_eq!(
                    info,
                    json!({"op": 4, "t": t, "ts": 9, "d": d}),
                    "{enc:?} {t}"
                );
            }
            // A present `target` that is not an object is an invalid query.
            for target in [
                json!(null),
                json!(5),
                json!("api"),
                json!([app]),
                json!(true),
            ] {
                let frame = json!({"op": 4, "t": t,
                                   "d": {"target": target, "payload": 1, "nonce": [t]}});
                let info = expect_only_op3(&mut client, frame, "invalid query").await;
                assert_eq!(
                    info,
                    json!({"reason": "query: must be an object", "nonce": [t]}),
                    "{enc:?} {t} target {target}"
                );
            }
        }
        // Still open and healthy.
        client
            .dispatch(
                "SEND",
                json!({"target": {"application": app}, "payload": "alive"}),
            )
            .await;
        assert_eq!(client.recv().await["d"]["payload"], "alive");
        witness.check(&gw, &format!("{enc:?} wrong d")).await;
    }
}

// === invalid queries (SPEC §6.12) ===

fn cmp(path: Value, op: &str, to: Value) -> Value {
    json!({"path": path, "op": op, "to": to})
}

fn nested_and(levels: usize) -> Value {
    let mut element = cmp(json!("/x"), "$ne", json!({"value": 1}));
    for _ in 0..levels {
        element = json!({"op": "$and", "with": [element]});
    }
    element
}

fn nested_v1_or(levels: usize) -> Value {
    let mut element = json!({"x": {"$ne": 1}});
    for _ in 0..levels {
        element = json!({"$or": [element]});
    }
    element
}

/// Each target (with `application` filled in) and the one reason it is invalid for.
fn invalid_queries() -> Vec<(Value, String)> {
    let ok = json!({"value": 1});
    let mut cases: Vec<(Value, String)> = Vec::new();
    let mut ops = |elements: Value, reason: &str| {
        cases.push((json!({"ops": elements}), reason.to_owned()));
    };
    for bad in [json!(5), json!("x"), json!({}), json!(true)] {
        ops(bad, "ops: must be a list");
    }
    for bad in [json!(5), json!([]), json!("$eq"), json!(null)] {
        ops(json!([bad.clone()]), "op: must be an object");
        ops(
            json!([{"op": "$or", "with": [bad]}]),
            "op: must be an object",
        );
    }
    ops(
        json!([cmp(json!("/a"), "$foo", ok.clone())]),
        "op: unknown operator '$foo'",
    );
    ops(
        json!([cmp(json!("/a"), "$EQ", ok.clone())]),
        "op: unknown operator '$EQ'",
    );
    ops(
        json!([cmp(json!("/a"), "", ok.clone())]),
        "op: unknown operator ''",
    );
    ops(
        json!([{"load": {"$foo": 1}}]),
        "op: unknown operator '$foo'",
    );
    ops(json!([{"$eq": 1}]), "op: unknown operator '$eq'");
    ops(
        json!([{"load": {"$gte": 1, "$bar": 2}}]),
        "op: unknown operator '$bar'",
    );
    ops(json!([{}]), "op: empty operator object");
    ops(
        json!([{"op": "$and", "with": [{}]}]),
        "op: empty operator object",
    );
    for bad in [json!(5), json!({}), json!([1]), json!(null), json!("x")] {
        ops(
            json!([{"load": bad}]),
            "op: value for 'load' must be an object of operators",
        );
    }
    for (field, wrap) in [("path", false), ("to.path", true)] {
        let element = |p: Option<Value>| -> Value {
            if wrap {
                let mut to = json!({});
                if let Some(p) = p {
                    to["path"] = p;
                }
                json!({"path": "/a", "op": "$eq", "to": to})
            } else {
                let mut e = json!({"op": "$eq", "to": {"value": 1}});
                if let Some(p) = p {
                    e["path"] = p;
                }
                e
            }
        };
        if !wrap {
            ops(json!([element(None)]), &format!("{field}: must not be nil"));
        }
        ops(
            json!([element(Some(json!(null)))]),
            &format!("{field}: must not be nil"),
        );
        ops(
            json!([element(Some(json!(5)))]),
            &format!("{field}: must be a string"),
        );
        ops(
            json!([element(Some(json!(["/a"])))]),
            &format!("{field}: must be a string"),
        );
        ops(
            json!([element(Some(json!("")))]),
            &format!("{field}: must not be empty"),
        );
        ops(
            json!([element(Some(json!("x")))]),
            &format!("{field}: must start with `/`, got: 'x'"),
        );
        ops(
            json!([element(Some(json!("a/b")))]),
            &format!("{field}: must start with `/`, got: 'a/b'"),
        );
        for p in ["/a~2", "/a~", "/~x/b"] {
            ops(
                json!([element(Some(json!(p)))]),
                &format!("{field}: invalid escape sequence, got: '{p}'"),
            );
        }
    }
    ops(
        json!([{"path": "/a", "op": "$eq"}]),
        "to: must be an object",
    );
    for bad in [json!(5), json!([1]), json!(null), json!("v")] {
        ops(
            json!([cmp(json!("/a"), "$eq", bad)]),
            "to: must be an object",
        );
    }
    for bad in [json!({}), json!({"default": 1}), json!({"type": "integer"})] {
        ops(
            json!([cmp(json!("/a"), "$eq", bad)]),
            "to: must contain 'value' or 'path'",
        );
    }
    ops(json!([{"op": "$and"}]), "with: must be a list");
    for bad in [json!(5), json!({}), json!(null)] {
        ops(json!([{"op": "$or", "with": bad}]), "with: must be a list");
    }
    ops(json!([{"$or": 5}]), "with: must be a list");
    ops(json!([{"load": {"$and": 5}}]), "with: must be a list");
    for op in ["$in", "$nin"] {
        for bad in [json!("x"), json!(5), json!({"a": 1}), json!(null)] {
            ops(
                json!([cmp(json!("/a"), op, json!({"value": bad}))]),
                &format!("{op}: operand must be a list"),
            );
        }
        ops(
            json!([{"load": {op: 5}}]),
            &format!("{op}: operand must be a list"),
        );
    }
    ops(
        json!([nested_and(33)]),
        "query: nested too deeply (max depth 32)",
    );
    ops(
        json!([nested_v1_or(33)]),
        "query: nested too deeply (max depth 32)",
    );

    let shape = "selector: must be an object with exactly one of $min, $max, $avg";
    for bad in [
        json!(5),
        json!("$min"),
        json!([]),
        json!({}),
        json!({"$min": "a", "$max": "b"}),
        json!({"$foo": "a"}),
        json!({"min": "a"}),
    ] {
        cases.push((json!({"selector": bad}), shape.to_owned()));
    }
    for bad in [
        json!({"$min": ""}),
        json!({"$max": 5}),
        json!({"$avg": null}),
        json!({"$avg": ["a"]}),
    ] {
        cases.push((
            json!({"selector": bad}),
            "selector: key must be a non-empty string".to_owned(),
        ));
    }
    cases.push((
        json!({"selector": {"$min": "/a~2"}}),
        "selector: invalid escape sequence, got: '/a~2'".to_owned(),
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_error_reason_is_op_3_invalid_query_with_the_nonce() {
    let gw = TestGateway::start().await;
    let mut witness = Witness::new(&gw).await;
    let cases = invalid_queries();
    let nonces = [
        json!("n"),
        json!(7),
        json!(null),
        json!({"id": [1.5]}),
        json!(-3),
    ];
    for enc in Enc::ALL {
        let app = unique("q");
        let mut client = gw.identify(enc, &app, "c").await;
        for (i, (query, reason)) in cases.iter().enumerate() {
            let mut target = query.clone();
            target["application"] = json!(app);
            let nonce = &nonces[i % nonces.len()];
            for t in ["SEND", "BROADCAST"] {
                let frame = json!({"op": 4, "t": t,
                                   "d": {"target": target, "nonce": nonce, "payload": 1}});
                let info = expect_only_op3(&mut client, frame, "invalid query").await;
                assert_eq!(
                    info,
                    json!({"reason": reason, "nonce": nonce}),
                    "{enc:?} {t} {target}"
                );
            }
            let mut d = target.clone();
            d["nonce"] = nonce.clone();
            let info = expect_only_op3(
                &mut client,
                json!({"op": 4, "t": "QUERY_NODES", "d": d}),
                "invalid query",
            )
            .await;
            assert_eq!(
                info,
                json!({"reason": reason, "nonce": nonce}),
                "{enc:?} QUERY_NODES {d}"
            );
        }
        // The non-object query, through SEND.
        let info = expect_only_op3(
            &mut client,
            json!({"op": 4, "t": "SEND", "d": {"target": [], "nonce": 1, "payload": 1}}),
            "invalid query",
        )
        .await;
        assert_eq!(
            info,
            json!({"reason": "query: must be an object", "nonce": 1})
        );

        // Exactly at the nesting limit the query is fine, and routes to the sender itself.
        for element in [nested_and(32), nested_v1_or(32)] {
            client
                .dispatch(
                    "SEND",
                    json!({"target": {"application": app, "ops": [element]}, "payload": "deep"}),
                )
                .await;
            assert_eq!(client.recv().await["d"]["payload"], "deep");
        }
        client.expect_nothing().await;
        witness
            .check(&gw, &format!("{enc:?} invalid queries"))
            .await;
    }
}

// === the fuzzer ===

/// xorshift64*: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const FUZZ_KEYS: &[&str] = &[
    "op",
    "d",
    "t",
    "ts",
    "target",
    "payload",
    "nonce",
    "application",
    "ops",
    "path",
    "to",
    "value",
    "with",
    "selector",
    "$min",
    "$avg",
    "key",
    "droppable",
    "optional",
    "restricted",
    "type",
    "client_id",
    "application_id",
    "metadata",
    "auth",
    "ip",
    "namespace",
    "receive_client_updates",
    "default",
    "$eq",
    "$in",
    "$or",
    "load",
    "",
];

const FUZZ_STRINGS: &[&str] = &[
    "SEND",
    "BROADCAST",
    "QUERY_NODES",
    "UPDATE_METADATA",
    "integer",
    "float",
    "string",
    "list",
    "map",
    "boolean",
    "version",
    "1.0.0",
    "/load",
    "/",
    "~",
    "/a~2",
    "$eq",
    "$in",
    "$or",
    "$and",
    "$nor",
    "$gt",
    "$contains",
    "",
    "fz",
    "a b",
    "é",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth >= 4 { 6 } else { 8 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => rng
            .pick(&[
                json!(0),
                json!(1),
                json!(-1),
                json!(4),
                json!(5),
                json!(9),
                json!(i64::MIN),
                json!(u64::MAX),
            ])
            .clone(),
        3 => rng
            .pick(&[
                json!(1.5),
                json!(-0.0),
                json!(1e300),
                json!(4.0),
                json!(0.1),
            ])
            .clone(),
        4 | 5 => json!(rng.pick(FUZZ_STRINGS)),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(5))
                .map(|_| {
                    (
                        rng.pick(FUZZ_KEYS).to_string(),
                        random_value(rng, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// Replaces one randomly chosen node of `value` (or adds a member) with a random value.
fn mutate_tree(rng: &mut Rng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() && rng.below(3) > 0 => {
            let key = map
                .keys()
                .nth(rng.below(map.len()))
                .cloned()
                .unwrap_or_default();
            if let Some(child) = map.get_mut(&key) {
                mutate_tree(rng, child);
            }
        }
        Value::Object(map) if rng.below(2) == 0 => {
            map.insert(rng.pick(FUZZ_KEYS).to_string(), random_value(rng, 1));
        }
        Value::Array(items) if !items.is_empty() && rng.below(3) > 0 => {
            let i = rng.below(items.len());
            mutate_tree(rng, &mut items[i]);
        }
        _ => *value = random_value(rng, 1),
    }
}

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let at = if bytes.is_empty() {
            0
        } else {
            rng.below(bytes.len())
        };
        match rng.below(6) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 => bytes.insert(
                at,
                *rng.pick(&[0xc1, 0xd4, 0xc4, 0xdd, b'{', b'"', b'\\', 0xff, 0x00]),
            ),
            2 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            4 if !bytes.is_empty() => {
                let end = (at + rng.below(8)).min(bytes.len());
                let slice = bytes[at..end].to_vec();
                bytes.splice(at..at, slice);
            }
            _ => {
                if let Some(b) = bytes.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
}

/// Valid frames the fuzzer starts its mutations from.
fn corpus(app: &str, client: &str) -> Vec<Value> {
    vec![
        json!({"op": 1, "d": {"application_id": app, "client_id": client,
                             "metadata": {"load": meta("integer", 3)}}}),
        json!({"op": 5, "d": {"client_id": client}}),
        json!({"op": 4, "t": "SEND", "d": {"target": {"application": app, "ops": [
            {"path": "/load", "op": "$lt", "to": {"value": 10}}]}, "nonce": 1, "payload": {"x": 1.5}}}),
        json!({"op": 4, "t": "BROADCAST", "d": {"target": {"application": app,
            "selector": {"$min": "load"}, "key": "k"}, "payload": [1, 2]}}),
        json!({"op": 4, "t": "QUERY_NODES", "d": {"application": app, "nonce": "q",
            "ops": [{"op": "$or", "with": [{"load": {"$in": [1, 3]}}]}]}}),
        json!({"op": 4, "t": "UPDATE_METADATA", "d": {"load": meta("integer", 4),
            "v": meta("version", "1.0.0"), "m": meta("map", json!({"a": [1]}))}}),
    ]
}

/// One connection's worth of deterministic garbage: usually a valid identify first, so that
/// the mutations reach the dispatch handlers, then mostly structural mutations (which still
/// decode), with byte-level mutations and random bytes mixed in.
fn fuzz_script(rng: &mut Rng, enc: Enc, app: &str, client: &str) -> Vec<Message> {
    let corpus = corpus(app, client);
    let encode = |frame: &Value| match enc {
        Enc::Json => frame.to_string().into_bytes(),
        Enc::Msgpack => msgpack(frame),
    };
    let mut script = Vec::new();
    if rng.below(5) > 0 {
        script.push(enc.message(&corpus[0]));
    }
    for _ in 0..=rng.below(12) {
        let message = match rng.below(10) {
            0 => {
                let len = rng.below(64);
                let bytes = rng.bytes(len);
                match rng.below(3) {
                    0 => Message::binary(bytes),
                    1 => Message::text(String::from_utf8_lossy(&bytes).into_owned()),
                    _ => raw_text(bytes),
                }
            }
            1 => {
                let mut bytes = encode(rng.pick(&corpus));
                mutate_bytes(rng, &mut bytes);
                raw_message(enc, bytes)
            }
            2 | 3 => enc.message(rng.pick(&corpus[1..])),
            _ => {
                let mut frame = rng.pick(&corpus[1..]).clone();
                for _ in 0..=rng.below(3) {
                    // Mostly inside `d`, sometimes anywhere in the envelope.
                    match frame.get_mut("d") {
                        Some(d) if rng.below(4) > 0 => mutate_tree(rng, d),
                        _ => mutate_tree(rng, &mut frame),
                    }
                }
                enc.message(&frame)
            }
        };
        script.push(message);
    }
    script
}

/// Plays a script, closes, and checks every frame the node sent back.
async fn play(gw: &TestGateway, enc: Enc, script: Vec<Message>) {
    let mut client = gw.connect_raw(enc).await;
    for message in script {
        if client.ws.send(message).await.is_err() {
            break;
        }
    }
    let _ = client.ws.close(None).await;
    let closed = client.closed().await;
    for (i, frame) in closed.frames.iter().enumerate() {
        assert_eq!(
            keys(frame),
            key_set(&["op", "d", "t", "ts"]),
            "envelope: {frame}"
        );
        assert!(
            frame["op"].as_u64().is_some_and(|op| op <= 8),
            "op: {frame}"
        );
        if frame["op"] == 8 {
            assert_ne!(frame["d"]["error"], "internal server error", "{frame}");
            assert_eq!(i, closed.frames.len() - 1, "op 8 is the last frame");
        }
    }
    assert_ne!(closed.code, Some(1011), "no internal error close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_and_mutated_frames_never_break_the_node() {
    const CONNECTIONS: usize = 96;
    const CONCURRENCY: usize = 8;
    let gw = TestGateway::start().await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let scripts: Vec<(Enc, Vec<Message>)> = (0..CONNECTIONS)
        .map(|i| {
            let enc = Enc::ALL[i % 2];
            let app = format!("fuzz-{}", i % 5);
            (enc, fuzz_script(&mut rng, enc, &app, &format!("fz-{i}")))
        })
        .collect();
    let total: usize = scripts.iter().map(|(_, s)| s.len()).sum();
    assert!(total < 1500, "bounded: {total} messages");
    let gw = std::sync::Arc::new(gw);
    let mut scripts = scripts.into_iter();
    loop {
        let batch: Vec<(Enc, Vec<Message>)> = scripts.by_ref().take(CONCURRENCY).collect();
        if batch.is_empty() {
            break;
        }
        let tasks: Vec<_> = batch
            .into_iter()
            .map(|(enc, script)| {
                let gw = gw.clone();
                tokio::spawn(async move { play(&gw, enc, script).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("a fuzz connection finished cleanly");
        }
    }
    // The witness comes afterwards: mutated targets may address every application.
    let mut witness = Witness::new(&gw).await;
    witness.check(&gw, "the fuzzer").await;
    let health = gw.http(Method::GET, "/healthz", &[], "").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));
}
