//! ETF over real websockets (SPEC §2.7, §4.4; checklist items 4 and 11): the key typing of
//! every kind of frame ganglion sends, ETF alongside JSON, restricted clients, and malformed
//! terms, and the `trace` object (SPEC §11) on a delivery.
//!
//! The test client encodes and decodes with the `eetf` crate, not with ganglion's codec, so a
//! bug in the codec cannot hide behind the same bug here. Decoded frames are shown as JSON with
//! the key types kept visible: an **atom** key `op` reads as `":op"`, a **binary** key
//! `client_id` as `"client_id"`. Sent frames use the same convention: a key written `":op"`
//! goes out as an atom, any other as a binary. Atom *values* other than `nil`/`true`/`false`
//! are outside the outbound table, so reading one fails the test.

use std::collections::HashMap;
use std::io::Write as _;

use eetf::{Atom, BigInteger, Binary, FixInteger, Float, List, Map, Term, Tuple};
use futures_util::{SinkExt, StreamExt};
use ganglion_tests::{Enc, TestGateway, meta, now_ms, patience};
use hyper::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

// === the test client's ETF, on eetf ===

/// JSON → ETF: `":name"` keys are atoms, other keys binaries; null/booleans are atoms.
fn to_term(value: &Value) -> Term {
    match value {
        Value::Null => Atom::from("nil").into(),
        Value::Bool(b) => Atom::from(if *b { "true" } else { "false" }).into(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(i) => FixInteger::from(i).into(),
                    Err(_) => BigInteger::from(i).into(),
                }
            } else if let Some(u) = n.as_u64() {
                BigInteger::from(u).into()
            } else {
                let f = n.as_f64().expect("a JSON number is an integer or a float");
                Float::try_from(f).expect("finite").into()
            }
        }
        Value::String(s) => Binary::from(s.as_bytes()).into(),
        Value::Array(items) => List::from(items.iter().map(to_term).collect::<Vec<_>>()).into(),
        Value::Object(map) => Map::from(
            map.iter()
                .map(|(k, v)| (key_term(k), to_term(v)))
                .collect::<HashMap<_, _>>(),
        )
        .into(),
    }
}

fn key_term(key: &str) -> Term {
    match key.strip_prefix(':') {
        Some(name) => Atom::from(name).into(),
        None => Binary::from(key.as_bytes()).into(),
    }
}

/// ETF → JSON, failing on anything the outbound table does not allow.
fn from_term(term: Term) -> Value {
    match term {
        Term::Atom(atom) => match atom.name.as_str() {
            "nil" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => panic!("ganglion sent the atom value `{other}`; only nil/true/false exist"),
        },
        Term::FixInteger(i) => json!(i.value),
        Term::BigInteger(big) => i64::try_from(&big.value)
            .map(Value::from)
            .or_else(|_| u64::try_from(&big.value).map(Value::from))
            .unwrap_or_else(|_| panic!("an integer outside the data model: {big}")),
        Term::Float(f) => json!(f.value),
        Term::Binary(b) => Value::String(String::from_utf8(b.bytes).expect("binaries are UTF-8")),
        Term::List(list) => Value::Array(list.elements.into_iter().map(from_term).collect()),
        Term::Map(map) => Value::Object(
            map.map
                .into_iter()
                .map(|(k, v)| (key_name(k), from_term(v)))
                .collect(),
        ),
        other => panic!("outside the outbound table (SPEC §2.7): {other:?}"),
    }
}

fn key_name(key: Term) -> String {
    match key {
        Term::Atom(atom) => format!(":{}", atom.name),
        Term::Binary(b) => String::from_utf8(b.bytes).expect("binary keys are UTF-8"),
        other => panic!("a map key that is neither an atom nor a binary: {other:?}"),
    }
}

fn encode_term(term: &Term) -> Vec<u8> {
    let mut bytes = Vec::new();
    term.encode(&mut bytes).expect("eetf encodes");
    bytes
}

fn decode_frame(bytes: &[u8]) -> Value {
    assert_eq!(
        bytes.first(),
        Some(&131),
        "a frame starts with the version byte"
    );
    let term =
        Term::decode(bytes).unwrap_or_else(|e| panic!("eetf cannot decode {bytes:02x?}: {e}"));
    from_term(term)
}

/// The envelope a client sends, with binary keys as singyeong's clients do.
fn frame(op: u8, t: Option<&str>, d: Value) -> Value {
    json!({"op": op, "t": t, "d": d, "ts": now_ms()})
}

fn dispatch(t: &str, d: Value) -> Value {
    frame(4, Some(t), d)
}

/// `131, 80, <size>, <zlib>`: a compressed term, `term` without its version byte.
fn compressed(term: &[u8], declared: u32) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(term).expect("compress");
    let mut bytes = vec![131, 80];
    bytes.extend_from_slice(&declared.to_be_bytes());
    bytes.extend_from_slice(&encoder.finish().expect("compress"));
    bytes
}

// === the ETF websocket client ===

struct EtfClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What ended a connection: the frames before the close, and the close code.
struct Closed {
    frames: Vec<Value>,
    code: Option<u16>,
}

impl EtfClient {
    /// Opens `?encoding=etf` and returns the client with the hello's raw bytes.
    async fn connect(gw: &TestGateway) -> (EtfClient, Vec<u8>) {
        let (ws, _) = connect_async_with_config(gw.ws_url("?encoding=etf"), None, true)
            .await
            .expect("websocket handshake");
        let mut client = EtfClient { ws };
        let hello = client.recv_bytes().await;
        (client, hello)
    }

    /// Connects and identifies with `d` (binary keys unless written `":key"`); returns the
    /// client and the ready frame.
    async fn identify_with(gw: &TestGateway, d: Value) -> (EtfClient, Value) {
        let (mut client, _) = EtfClient::connect(gw).await;
        client.send(&frame(1, None, d)).await;
        let ready = client.recv().await;
        assert_eq!(ready[":op"], 2, "identify answered with ready: {ready}");
        (client, ready)
    }

    async fn identify(gw: &TestGateway, app: &str, client_id: &str) -> EtfClient {
        EtfClient::identify_with(gw, json!({"application_id": app, "client_id": client_id}))
            .await
            .0
    }

    async fn send(&mut self, frame: &Value) {
        self.send_term(&to_term(frame)).await;
    }

    async fn send_term(&mut self, term: &Term) {
        self.send_bytes(encode_term(term)).await;
    }

    async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    async fn dispatch(&mut self, t: &str, d: Value) {
        self.send(&dispatch(t, d)).await;
    }

    /// The next non-ping message, or `None` when the stream ended.
    async fn next_message(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(patience(), self.ws.next())
                .await
                .expect("a message in time");
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn recv_bytes(&mut self) -> Vec<u8> {
        match self.next_message().await {
            Some(Message::Binary(bytes)) => bytes.to_vec(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    async fn recv(&mut self) -> Value {
        decode_frame(&self.recv_bytes().await)
    }

    /// Sends a heartbeat and returns every frame that arrived before its ack, checking the
    /// ack's key typing on the way (binary `client_id`).
    async fn sync(&mut self) -> Vec<Value> {
        self.send(&frame(5, None, json!({}))).await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame[":op"] == 6 {
                assert_envelope(&frame);
                assert_eq!(
                    keys(&frame[":d"]),
                    ["client_id"],
                    "heartbeat_ack d: {frame}"
                );
                return before;
            }
            before.push(frame);
        }
    }

    async fn expect_nothing(&mut self) {
        let pending = self.sync().await;
        assert!(pending.is_empty(), "expected nothing, got {pending:?}");
    }

    async fn closed(&mut self) -> Closed {
        let mut frames = Vec::new();
        loop {
            match self.next_message().await {
                Some(Message::Close(close)) => {
                    // Polling once more answers the server's close.
                    let _ = tokio::time::timeout(patience(), self.ws.next()).await;
                    return Closed {
                        frames,
                        code: close.map(|c| u16::from(c.code)),
                    };
                }
                Some(Message::Binary(bytes)) => frames.push(decode_frame(&bytes)),
                Some(other) => panic!("unexpected message {other:?}"),
                None => return Closed { frames, code: None },
            }
        }
    }

    /// Expects op 8 with `error` (atom keys `error` and `extra_info`), then a close with
    /// `code`; returns the op 8's `extra_info`.
    async fn expect_fatal(&mut self, error: &str, code: u16) -> Value {
        let closed = self.closed().await;
        let last = closed
            .frames
            .last()
            .unwrap_or_else(|| panic!("expected op 8 `{error}` before the close, got nothing"));
        assert_envelope(last);
        assert_eq!(last[":op"], 8, "expected op 8, got {last}");
        assert_eq!(
            keys(&last[":d"]),
            [":error", ":extra_info"],
            "op 8 d: {last}"
        );
        assert_eq!(last[":d"][":error"], error, "op 8 error: {last}");
        assert_eq!(closed.code, Some(code), "close code after `{error}`");
        last[":d"][":extra_info"].clone()
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = self.closed().await;
    }
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("expected a map, got {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Every outbound frame: atom keys `op`, `d`, `t`, `ts` (and `trace` only on op 4), an
/// integer `ts` near now.
fn assert_envelope(frame: &Value) {
    let mut keys = keys(frame);
    keys.retain(|k| *k != ":trace");
    assert_eq!(keys, [":d", ":op", ":t", ":ts"], "envelope keys: {frame}");
    let ts = frame[":ts"].as_u64().expect("ts is an integer");
    assert!(
        ts.abs_diff(now_ms()) < 60_000,
        "ts {ts} is ganglion's clock"
    );
}

/// Asserts an op 3 `error` with atom keys `error`/`extra_info`; returns `extra_info`.
fn expect_op3(frame: &Value, error: &str) -> Value {
    assert_envelope(frame);
    assert_eq!(frame[":op"], 3, "expected op 3 `{error}`, got {frame}");
    assert_eq!(frame[":t"], Value::Null, "{frame}");
    assert_eq!(
        keys(&frame[":d"]),
        [":error", ":extra_info"],
        "op 3 d: {frame}"
    );
    assert_eq!(frame[":d"][":error"], error, "{frame}");
    frame[":d"][":extra_info"].clone()
}

// === item 4: hello ===

/// SPEC §2.7's hello, as sent by ganglion (ts 1700000000000).
const HELLO_SPEC_HEX: &str = "83 74 00000004
   77 01 64            74 00000001 6d 00000012 6865617274626561745f696e74657276616c 62 0000afc8
   77 02 6f70          61 00
   77 01 74            77 03 6e696c
   77 02 7473          6e 06 00 0068e5cf8b01";

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_has_atom_envelope_keys_and_a_binary_heartbeat_interval_key() {
    let gw = TestGateway::start().await;
    let before = now_ms();
    let (mut client, bytes) = EtfClient::connect(&gw).await;
    assert_eq!(bytes[0], 131, "a binary frame starting with byte 131");
    let hello = decode_frame(&bytes);
    assert_envelope(&hello);
    assert_eq!(
        hello,
        json!({":op": 0, ":d": {"heartbeat_interval": 45000}, ":t": null, ":ts": hello[":ts"]})
    );
    let ts = hello[":ts"].as_u64().expect("ts");
    assert!(before <= ts && ts <= now_ms());
    // Byte for byte the SPEC's example, but for the 6 bytes of the clock.
    let spec = hex(HELLO_SPEC_HEX);
    assert_eq!(bytes.len(), spec.len());
    assert_eq!(bytes[..bytes.len() - 6], spec[..spec.len() - 6]);
    client
        .send(&frame(
            1,
            None,
            json!({"application_id": "a", "client_id": "c"}),
        ))
        .await;
    assert_eq!(client.recv().await[":op"], 2);
    client.close().await;
}

// === item 11: identify and ready ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etf_identify_with_binary_keys_gets_a_ready_with_binary_keys_and_encoding_etf() {
    let gw = TestGateway::start().await;
    let (mut client, ready) = EtfClient::identify_with(
        &gw,
        json!({"client_id": "client-1", "application_id": "test-app-1"}),
    )
    .await;
    assert_envelope(&ready);
    assert_eq!(
        ready,
        json!({":op": 2, ":d": {"client_id": "client-1", "restricted": false},
               ":t": null, ":ts": ready[":ts"]})
    );
    let clients = gw.query(json!({"application": "test-app-1"})).await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["metadata"]["encoding"], "etf");
    assert_eq!(clients[0]["metadata"]["restricted"], false);
    assert_eq!(clients[0]["metadata"]["ip"], "127.0.0.1");
    client.expect_nothing().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atom_keys_are_read_as_strings_at_every_depth() {
    let gw = TestGateway::start().await;
    // The way an Elixir client writes it: %{op: 1, d: %{client_id: ..., metadata: %{...}}}.
    let (mut client, _) = EtfClient::connect(&gw).await;
    client
        .send(&json!({":op": 1, ":t": null, ":d": {
            ":application_id": "atoms", ":client_id": "deep",
            ":metadata": {":load": {":type": "integer", ":value": 5},
                          ":tags": {":type": "map", ":value": {":nested": {":deeper": [1]}}}}}}))
        .await;
    let ready = client.recv().await;
    assert_eq!(
        ready[":d"],
        json!({"client_id": "deep", "restricted": false})
    );
    let clients = gw.query(json!({"application": "atoms"})).await;
    assert_eq!(clients[0]["metadata"]["load"], 5);
    assert_eq!(
        clients[0]["metadata"]["tags"],
        json!({"nested": {"deeper": [1]}})
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_identify_is_accepted() {
    let gw = TestGateway::start().await;
    let (mut client, _) = EtfClient::connect(&gw).await;
    let term = encode_term(&to_term(&frame(
        1,
        None,
        json!({"application_id": "zipped", "client_id": "z", "metadata": {"pad": meta("string", "x".repeat(5000))}}),
    )));
    let bytes = compressed(&term[1..], (term.len() - 1) as u32);
    assert!(bytes.len() < term.len() / 4, "the term compresses");
    client.send_bytes(bytes).await;
    let ready = client.recv().await;
    assert_eq!(ready[":d"], json!({"client_id": "z", "restricted": false}));
    client.close().await;
}

// === item 4: SEND, BROADCAST and the payload's keys ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_send_has_atom_keys_target_nonce_payload_and_the_payload_keeps_binary_keys() {
    let gw = TestGateway::start().await;
    let mut receiver = EtfClient::identify(&gw, "recv", "r").await;
    let mut sender = EtfClient::identify(&gw, "send", "s").await;
    let payload = json!({"x": {"y": [{"z": 1}, 2.5, null, true]}, "big": 18446744073709551615u64,
                         "neg": -9223372036854775808i64, "s": "héllo", "empty": [], "obj": {}});
    sender
        .dispatch(
            "SEND",
            json!({"target": {"application": "recv"}, "nonce": "n-1", "payload": payload}),
        )
        .await;
    let got = receiver.recv().await;
    assert_envelope(&got);
    assert_eq!(
        got,
        json!({":op": 4, ":t": "SEND", ":ts": got[":ts"],
               ":d": {":target": null, ":nonce": "n-1", ":payload": payload}})
    );

    // Atom keys and atom values a client sends are normalised: keys become binaries, atoms
    // other than nil/true/false become binaries, tuples become lists.
    let d = Term::from(Map::from([
        (key_term("target"), to_term(&json!({"application": "recv"}))),
        (key_term(":nonce"), Atom::from("my_nonce").into()),
        (
            key_term(":payload"),
            Map::from([
                (key_term(":atom_key"), Atom::from("ok").into()),
                (
                    key_term(":tuple"),
                    Tuple::from(vec![Atom::from("error").into(), FixInteger::from(7).into()])
                        .into(),
                ),
                (
                    key_term(":nested"),
                    to_term(&json!({":inner": {":k": null}})),
                ),
            ])
            .into(),
        ),
    ]));
    let send = Map::from([
        (key_term(":op"), FixInteger::from(4).into()),
        (key_term(":t"), Binary::from(&b"SEND"[..]).into()),
        (key_term(":d"), d),
    ]);
    sender.send_term(&send.into()).await;
    let got = receiver.recv().await;
    assert_eq!(
        got[":d"],
        json!({":target": null, ":nonce": "my_nonce", ":payload": {
            "atom_key": "ok", "tuple": ["error", 7], "nested": {"inner": {"k": null}}}})
    );

    sender
        .dispatch(
            "BROADCAST",
            json!({"target": {"application": "recv"}, "nonce": null, "payload": {"b": 1}}),
        )
        .await;
    let got = receiver.recv().await;
    assert_eq!(got[":t"], "BROADCAST");
    assert_eq!(
        got[":d"],
        json!({":target": null, ":nonce": null, ":payload": {"b": 1}})
    );
    sender.expect_nothing().await;
    receiver.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_context_travels_with_atom_keys_and_binary_values() {
    let gw = TestGateway::start().await;
    let mut receiver = EtfClient::identify(&gw, "recv", "r").await;
    let mut sender = EtfClient::identify(&gw, "send", "s").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // Inbound, the keys of `trace` may be atoms or binaries.
    sender
        .send(&json!({":op": 4, ":t": "SEND",
                      ":d": {"target": {"application": "recv"}, "payload": 1},
                      ":trace": {":traceparent": traceparent, "tracestate": "congo=t61rcWkgMzE"}}))
        .await;
    let got = receiver.recv().await;
    assert_envelope(&got);
    let trace = &got[":trace"];
    assert_eq!(keys(trace), [":traceparent", ":tracestate"], "{got}");
    let carried = trace[":traceparent"]
        .as_str()
        .expect("a binary traceparent");
    assert_eq!(carried[..36], traceparent[..36], "the sender's trace id");
    assert_eq!(&carried[52..], "-01", "the sender's flags");
    assert_ne!(
        carried[36..52],
        traceparent[36..52],
        "ganglion's span is the parent"
    );
    assert_eq!(trace[":tracestate"], "congo=t61rcWkgMzE");
    sender.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etf_client_and_a_json_client_exchange_send_both_ways() {
    let gw = TestGateway::start().await;
    let mut etf = EtfClient::identify(&gw, "etf-app", "e").await;
    let mut other = gw.identify(Enc::Json, "json-app", "j").await;
    let payload = json!({"n": 1, "f": 1.5, "s": "x", "l": [null, false], "o": {"k": "v"}});

    etf.dispatch(
        "SEND",
        json!({"target": {"application": "json-app"}, "nonce": 1, "payload": payload}),
    )
    .await;
    let got = other.recv().await;
    assert_eq!(
        got,
        json!({"op": 4, "t": "SEND", "ts": got["ts"],
               "d": {"target": null, "nonce": 1, "payload": payload}})
    );

    other
        .dispatch(
            "SEND",
            json!({"target": {"application": "etf-app"}, "nonce": "back", "payload": payload}),
        )
        .await;
    let got = etf.recv().await;
    assert_eq!(
        got[":d"],
        json!({":target": null, ":nonce": "back", ":payload": payload})
    );
    // A float stays a float across encodings, even when it is whole.
    other
        .dispatch(
            "SEND",
            json!({"target": {"application": "etf-app"}, "payload": {"whole": 2.0}}),
        )
        .await;
    let got = etf.recv().await;
    assert!(got[":d"][":payload"]["whole"].is_f64(), "{got}");
    etf.expect_nothing().await;
    other.expect_nothing().await;
}

// === restricted clients (SPEC §4.4) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_client_may_use_etf_and_its_dispatch_error_has_a_binary_error_key() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".into())).await;
    let (mut restricted, ready) = EtfClient::identify_with(
        &gw,
        json!({"application_id": "r-app", "client_id": "r", "auth": "wrong"}),
    )
    .await;
    assert_eq!(
        ready[":d"],
        json!({"client_id": "r", "restricted": true}),
        "{ready}"
    );
    restricted
        .dispatch("UPDATE_METADATA", json!({"load": meta("integer", 3)}))
        .await;
    restricted.expect_nothing().await;
    restricted
        .dispatch(
            "SEND",
            json!({"target": {"application": "r-app"}, "payload": 1}),
        )
        .await;
    let error = restricted.recv().await;
    assert_envelope(&error);
    assert_eq!(
        error,
        json!({":op": 3, ":t": null, ":ts": error[":ts"],
               ":d": {"error": "invalid dispatch type SEND (are you restricted?)"}})
    );
    // The connection stays open, and ETF keeps working both ways.
    restricted.expect_nothing().await;
    let response = gw
        .http(
            Method::POST,
            "/api/v1/query",
            &[("authorization", "s3cret")],
            json!({"application": "r-app", "restricted": true}).to_string(),
        )
        .await;
    let clients = response.json();
    assert_eq!(clients[0]["metadata"]["load"], 3, "{clients}");
    assert_eq!(clients[0]["metadata"]["encoding"], "etf");

    let (mut unrestricted, ready) = EtfClient::identify_with(
        &gw,
        json!({"application_id": "u-app", "client_id": "u", "auth": "s3cret"}),
    )
    .await;
    assert_eq!(ready[":d"], json!({"client_id": "u", "restricted": false}));
    unrestricted
        .dispatch(
            "SEND",
            json!({"target": {"application": "r-app", "restricted": true}, "payload": {"p": 1}}),
        )
        .await;
    let got = restricted.recv().await;
    assert_eq!(
        got[":d"],
        json!({":target": null, ":nonce": null, ":payload": {"p": 1}})
    );
    restricted.close().await;
    unrestricted.close().await;
}

// === op 3 and op 8 key typing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op3_errors_have_atom_keys_and_atom_keyed_extra_info_built_by_ganglion() {
    let gw = TestGateway::start().await;
    let mut client = EtfClient::identify(&gw, "errs", "e").await;

    // no_route: extra_info {t, nonce, target} with atom keys; the echoed target keeps binary keys.
    let target =
        json!({"application": "nobody", "ops": [{"path": "/x", "op": "$eq", "to": {"value": 1}}]});
    client
        .dispatch(
            "SEND",
            json!({"target": target, "nonce": "n", "payload": 1}),
        )
        .await;
    let extra = expect_op3(&client.recv().await, "no_route");
    assert_eq!(
        extra,
        json!({":t": "SEND", ":nonce": "n", ":target": target})
    );

    // invalid query: {reason, nonce}.
    client
        .dispatch(
            "SEND",
            json!({"target": {"application": "errs", "ops": [{"path": "/x", "op": "$nope"}]}, "nonce": 2, "payload": 1}),
        )
        .await;
    let extra = expect_op3(&client.recv().await, "invalid query");
    assert_eq!(keys(&extra), [":nonce", ":reason"], "{extra}");
    assert_eq!(extra[":nonce"], 2);
    assert!(extra[":reason"].is_string());

    // invalid dispatch payload: {op, t, ts, d} as received, d with binary keys.
    client
        .dispatch("NO_SUCH_EVENT", json!({"k": {"j": 1}}))
        .await;
    let extra = expect_op3(&client.recv().await, "invalid dispatch payload");
    assert_eq!(keys(&extra), [":d", ":op", ":t", ":ts"], "{extra}");
    assert_eq!(extra[":op"], 4);
    assert_eq!(extra[":t"], "NO_SUCH_EVENT");
    assert_eq!(extra[":d"], json!({"k": {"j": 1}}));

    // invalid metadata: extra_info maps metadata keys (binary) to messages.
    client
        .dispatch(
            "UPDATE_METADATA",
            json!({"load": {"type": "nope", "value": 1}, "ok": meta("integer", 1)}),
        )
        .await;
    let extra = expect_op3(&client.recv().await, "invalid metadata");
    assert_eq!(keys(&extra), ["load"], "{extra}");
    assert!(
        extra["load"]
            .as_str()
            .is_some_and(|m| m.starts_with("load: "))
    );

    // Queue errors: {queue, reason} and {queue, id}.
    client
        .dispatch(
            "QUEUE",
            json!({"queue": "", "target": {"application": "errs"}, "payload": 1}),
        )
        .await;
    let extra = expect_op3(&client.recv().await, "invalid queue name");
    assert_eq!(keys(&extra), [":queue", ":reason"], "{extra}");
    client
        .dispatch(
            "QUEUE_ACK",
            json!({"queue": "q", "id": "00000000-0000-4000-8000-000000000000"}),
        )
        .await;
    let extra = expect_op3(&client.recv().await, "unknown message id");
    assert_eq!(keys(&extra), [":id", ":queue"], "{extra}");

    client.expect_nothing().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op8_errors_have_atom_keys_and_initial_metadata_errors_binary_keys() {
    let gw = TestGateway::start_with(|c| c.gateway.max_frame_bytes = 4096).await;

    let mut client = EtfClient::identify(&gw, "fatal", "twice").await;
    client
        .send(&frame(
            1,
            None,
            json!({"application_id": "fatal", "client_id": "again"}),
        ))
        .await;
    let extra = client
        .expect_fatal("invalid client op :identify", 1008)
        .await;
    assert_eq!(extra, Value::Null);

    let (mut client, _) = EtfClient::connect(&gw).await;
    client
        .send(&frame(
            1,
            None,
            json!({"application_id": "fatal", "client_id": "m",
                   "metadata": {"bad": {"type": "nope", "value": 1}}}),
        ))
        .await;
    let extra = client.expect_fatal("initial metadata: invalid", 1008).await;
    assert_eq!(keys(&extra), ["bad"], "{extra}");

    let (mut client, _) = EtfClient::connect(&gw).await;
    client.send_bytes(vec![0; 4097]).await;
    let extra = client.expect_fatal("payload too large", 1009).await;
    assert_eq!(extra, json!({":limit": 4096}));

    let (mut client, _) = EtfClient::connect(&gw).await;
    client.send(&frame(5, None, json!({}))).await;
    let extra = client
        .expect_fatal(
            "sent payload with non-identify opcode without identifying first",
            1008,
        )
        .await;
    assert_eq!(extra, Value::Null);
}

// === QUERY_NODES, CLIENT_*, queues, goodbye ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_nodes_reply_has_atom_keys_and_client_data_binary_keys() {
    let gw = TestGateway::start().await;
    let (mut client, _) = EtfClient::identify_with(
        &gw,
        json!({"application_id": "nodes", "client_id": "n1",
               "metadata": {"load": meta("integer", 7), "tags": meta("map", json!({"a": {"b": 1}}))}}),
    )
    .await;
    client
        .dispatch(
            "QUERY_NODES",
            json!({"application": "nodes", "nonce": {"mine": [1]}}),
        )
        .await;
    let reply = client.recv().await;
    assert_envelope(&reply);
    assert_eq!(reply[":t"], "QUERY_NODES");
    assert_eq!(keys(&reply[":d"]), [":nodes", ":nonce"], "{reply}");
    assert_eq!(reply[":d"][":nonce"], json!({"mine": [1]}));
    let nodes = reply[":d"][":nodes"].as_array().expect("nodes is a list");
    assert_eq!(nodes.len(), 1, "{reply}");
    let node = &nodes[0];
    assert_eq!(
        keys(node),
        [
            ":app_id",
            ":client_id",
            ":metadata",
            ":metadata_types",
            ":node",
            ":queues",
            ":socket_ip"
        ],
        "{node}"
    );
    assert_eq!(node[":app_id"], "nodes");
    assert_eq!(node[":client_id"], "n1");
    assert_eq!(node[":socket_ip"], "127.0.0.1");
    assert_eq!(node[":queues"], json!([]));
    assert_eq!(node[":metadata"]["load"], 7);
    assert_eq!(node[":metadata"]["tags"], json!({"a": {"b": 1}}));
    assert_eq!(node[":metadata"]["encoding"], "etf");
    assert_eq!(node[":metadata_types"]["load"], "integer");
    assert!(
        keys(&node[":metadata"]).iter().all(|k| !k.starts_with(':')),
        "metadata keys are binaries: {node}"
    );
    client.expect_nothing().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connected_and_disconnected_payloads_have_atom_keys() {
    let gw = TestGateway::start().await;
    let (mut watcher, _) = EtfClient::identify_with(
        &gw,
        json!({"application_id": "watch", "client_id": "w", "receive_client_updates": true}),
    )
    .await;
    let own = watcher.recv().await;
    assert_envelope(&own);
    assert_eq!(
        own,
        json!({":op": 4, ":t": "CLIENT_CONNECTED", ":ts": own[":ts"],
               ":d": {":target": null, ":nonce": null,
                      ":payload": {":app": "watch", ":client_id": "w"}}})
    );
    let other = gw.identify(Enc::Json, "other", "o").await;
    let connected = watcher.recv().await;
    assert_eq!(connected[":t"], "CLIENT_CONNECTED");
    assert_eq!(
        connected[":d"][":payload"],
        json!({":app": "other", ":client_id": "o"})
    );
    other.close().await;
    let disconnected = watcher.recv().await;
    assert_eq!(
        disconnected,
        json!({":op": 4, ":t": "CLIENT_DISCONNECTED", ":ts": disconnected[":ts"],
               ":d": {":target": null, ":nonce": null,
                      ":payload": {":app": "other", ":client_id": "o"}}})
    );
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_confirms_and_deliveries_have_atom_keys() {
    let gw = TestGateway::start().await;
    let mut producer = EtfClient::identify(&gw, "producer", "p").await;
    let mut consumer = EtfClient::identify(&gw, "consumer", "c").await;
    producer
        .dispatch(
            "QUEUE",
            json!({"queue": "jobs", "target": {"application": "consumer"}, "nonce": "q-1",
                   "payload": {"job": {"id": 17}}}),
        )
        .await;
    let confirm = producer.recv().await;
    assert_envelope(&confirm);
    assert_eq!(confirm[":t"], "QUEUE_CONFIRM");
    assert_eq!(
        keys(&confirm[":d"]),
        [":id", ":nonce", ":queue"],
        "{confirm}"
    );
    assert_eq!(confirm[":d"][":queue"], "jobs");
    assert_eq!(confirm[":d"][":nonce"], "q-1");
    let id = confirm[":d"][":id"].clone();

    consumer
        .dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}))
        .await;
    let delivery = consumer.recv().await;
    assert_envelope(&delivery);
    assert_eq!(
        delivery,
        json!({":op": 4, ":t": "QUEUE", ":ts": delivery[":ts"],
               ":d": {":target": null, ":nonce": "q-1",
                      ":payload": {":queue": "jobs", ":id": id, ":payload": {"job": {"id": 17}}}}})
    );
    consumer
        .dispatch("QUEUE_ACK", json!({"queue": "jobs", "id": id}))
        .await;
    consumer.expect_nothing().await;
    producer.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_has_a_binary_reason_key() {
    let gw = TestGateway::start().await;
    let mut client = EtfClient::identify(&gw, "bye", "b").await;
    let drained = gw.drain_in_background();
    let closed = client.closed().await;
    let goodbye = closed.frames.last().expect("op 7 before the close");
    assert_envelope(goodbye);
    assert_eq!(
        goodbye,
        &json!({":op": 7, ":t": null, ":ts": goodbye[":ts"], ":d": {"reason": "draining"}})
    );
    assert_eq!(closed.code, Some(1001));
    drained.await.expect("drained");
}

// === malformed ETF ===

/// `#{<<"op">> => 1, <<"d">> => <term>}` without the version byte.
fn with_d(term: &[u8]) -> Vec<u8> {
    let mut bytes = vec![131, 116, 0, 0, 0, 2, 109, 0, 0, 0, 2, b'o', b'p', 97, 1];
    bytes.extend_from_slice(&[109, 0, 0, 0, 1, b'd']);
    bytes.extend_from_slice(term);
    bytes
}

fn malformed_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut zeros = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zeros.write_all(&vec![0u8; 8 << 20]).expect("compress");
    let zeros = zeros.finish().expect("compress");
    let mut bomb = vec![131, 80];
    bomb.extend_from_slice(&1000u32.to_be_bytes());
    bomb.extend_from_slice(&zeros);
    let mut over_limit = vec![131, 80];
    over_limit.extend_from_slice(&u32::MAX.to_be_bytes());
    over_limit.extend_from_slice(&zeros);
    vec![
        ("empty message", vec![]),
        ("no version byte", vec![116, 0, 0, 0, 0]),
        ("only the version byte", vec![131]),
        ("a top-level list", vec![131, 108, 0, 0, 0, 1, 97, 1, 106]),
        ("a top-level atom", vec![131, 119, 3, b'n', b'i', b'l']),
        (
            "truncated map",
            vec![131, 116, 0, 0, 0, 2, 119, 2, b'o', b'p'],
        ),
        ("trailing bytes", vec![131, 116, 0, 0, 0, 0, 0]),
        (
            "a pid",
            with_d(&[88, 119, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
        (
            "a reference",
            with_d(&[90, 0, 1, 119, 1, b'n', 0, 0, 0, 0, 0, 0, 0, 1]),
        ),
        ("a fun", with_d(&[112, 0, 0, 0, 0])),
        (
            "an export",
            with_d(&[113, 119, 1, b'm', 119, 1, b'f', 97, 0]),
        ),
        ("a bit binary", with_d(&[77, 0, 0, 0, 1, 3, 0xe0])),
        ("an improper list", with_d(&[108, 0, 0, 0, 1, 97, 1, 97, 2])),
        ("LOCAL_EXT", with_d(&[121, 0, 0])),
        (
            "a binary that is not UTF-8",
            with_d(&[109, 0, 0, 0, 1, 0xff]),
        ),
        (
            "an integer of 2^64",
            with_d(&[110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ),
        ("NaN", with_d(&[70, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0])),
        ("an integer key", vec![131, 116, 0, 0, 0, 1, 97, 1, 97, 1]),
        (
            "a list of 2^32-1 elements",
            with_d(&[108, 0xff, 0xff, 0xff, 0xff]),
        ),
        ("a zip bomb declared small", bomb),
        ("a compressed term over the limit", over_limit),
        (
            "a compressed term that is not zlib",
            vec![131, 80, 0, 0, 0, 6, 1, 2, 3],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_etf_gets_op8_unrecoverable_and_close_1008_and_nobody_else_is_affected() {
    let gw = TestGateway::start().await;
    let mut etf = EtfClient::identify(&gw, "bystander-etf", "e").await;
    let mut json_client = gw.identify(Enc::Json, "bystander-json", "j").await;

    for (index, (name, bytes)) in malformed_frames().into_iter().enumerate() {
        // Half of them before identify, half after: decoding comes before the state gate.
        let mut client = if index % 2 == 0 {
            EtfClient::connect(&gw).await.0
        } else {
            EtfClient::identify(&gw, "victims", &format!("v{index}")).await
        };
        client.send_bytes(bytes).await;
        let closed = client.closed().await;
        let last = closed
            .frames
            .last()
            .unwrap_or_else(|| panic!("{name}: no op 8 before the close"));
        assert_envelope(last);
        assert_eq!(last[":op"], 8, "{name}: {last}");
        assert_eq!(
            keys(&last[":d"]),
            [":error", ":extra_info"],
            "{name}: {last}"
        );
        assert_eq!(
            last[":d"][":error"], "decode: payload: unrecoverable",
            "{name}: {last}"
        );
        let detail = &last[":d"][":extra_info"];
        assert!(
            detail.is_null() || detail.as_str().is_some_and(|s| !s.is_empty()),
            "{name}: extra_info is a string or null: {last}"
        );
        assert_eq!(closed.code, Some(1008), "{name}");
    }

    // A text message on an ETF connection is the frame-kind error.
    let (mut client, _) = EtfClient::connect(&gw).await;
    client.ws.send(Message::text("{}")).await.expect("send");
    let extra = client
        .expect_fatal(
            "decode: payload: invalid websocket opcode/encoding combo: {text, etf}",
            1008,
        )
        .await;
    assert_eq!(extra, Value::Null);

    // The bystanders still work, both ways.
    etf.dispatch(
        "SEND",
        json!({"target": {"application": "bystander-json"}, "payload": "still here"}),
    )
    .await;
    assert_eq!(json_client.recv().await["d"]["payload"], "still here");
    json_client
        .dispatch(
            "SEND",
            json!({"target": {"application": "bystander-etf"}, "payload": "me too"}),
        )
        .await;
    assert_eq!(etf.recv().await[":d"][":payload"], "me too");
    etf.expect_nothing().await;
    json_client.expect_nothing().await;
    assert!(gw.query(json!({"application": "victims"})).await.is_empty());
}
