//! The connection lifecycle, seen from real websocket clients (SPEC §2.1, §3.3, §4): the
//! handshake and frame rules of the transport, hello, identify and its validation,
//! authentication and the failed-auth limit, restricted clients, heartbeats and deadlines, the
//! closing sequences, slow consumers and drain.
//!
//! Every scenario whose frames depend on the encoding runs over JSON and MessagePack.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ganglion_tests::{Client, Enc, TestGateway, meta, now_ms, patience};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

// === helpers ===

/// Polls `check` every 20 ms until it holds, and fails after `patience()`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + patience();
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Receives the next data message, checks that its websocket kind is the encoding's and, for
/// MessagePack, that it only uses the families ganglion may send (§2.6); returns it decoded.
async fn recv_checked(client: &mut Client) -> Value {
    match client.next_message().await {
        Some(Message::Text(text)) => {
            assert_eq!(
                client.encoding,
                Enc::Json,
                "a text message on a msgpack connection: {text}"
            );
            serde_json::from_str(&text).expect("a JSON frame")
        }
        Some(Message::Binary(bytes)) => {
            assert_eq!(
                client.encoding,
                Enc::Msgpack,
                "a binary message on a JSON connection"
            );
            check_msgpack(&bytes);
            rmp_serde::from_slice(&bytes).expect("a msgpack frame")
        }
        other => panic!("expected a data message, got {other:?}"),
    }
}

/// Asserts that `frame` is `{"op": op, "d": d, "t": null, "ts": <now>}` and nothing else.
fn assert_frame(frame: &Value, op: u8, d: Value) {
    let ts = frame["ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("`ts` is not an integer: {frame}"));
    assert!(
        ts.abs_diff(now_ms()) <= 5_000,
        "`ts` {ts} is not the current time: {frame}"
    );
    assert_eq!(
        *frame,
        json!({"op": op, "d": d, "t": null, "ts": ts}),
        "unexpected frame"
    );
}

/// Checks one outbound MessagePack frame: a map whose strings are all of the str family, with
/// no ext types, float 64 only, and integers in their smallest family.
fn check_msgpack(bytes: &[u8]) {
    assert!(
        matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
        "the top level is not a map: {bytes:02x?}"
    );
    let end = walk_msgpack(bytes, 0);
    assert_eq!(end, bytes.len(), "bytes after the frame: {bytes:02x?}");
}

/// Walks one MessagePack value at `at`; returns the offset after it.
fn walk_msgpack(b: &[u8], at: usize) -> usize {
    let be = |from: usize, n: usize| -> u64 {
        b[from..from + n]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    };
    let len = |from: usize, n: usize| -> usize { usize::try_from(be(from, n)).expect("length") };
    let byte = b[at];
    match byte {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => at + 1,
        0x80..=0x8f => walk_map(b, at + 1, usize::from(byte & 0x0f)),
        0x90..=0x9f => walk_list(b, at + 1, usize::from(byte & 0x0f)),
        0xa0..=0xbf => at + 1 + usize::from(byte & 0x1f),
        0xd9 => at + 2 + len(at + 1, 1),
        0xda => at + 3 + len(at + 1, 2),
        0xdb => at + 5 + len(at + 1, 4),
        0xcc..=0xcf => {
            let n = 1usize << (byte - 0xcc);
            let v = be(at + 1, n);
            let smaller = [0x7f, 0xff, 0xffff, 0xffff_ffff][usize::from(byte - 0xcc)];
            assert!(
                v > smaller,
                "{v} is not in its smallest family ({byte:#04x})"
            );
            at + 1 + n
        }
        0xd0..=0xd3 => {
            let n = 1usize << (byte - 0xd0);
            let raw = be(at + 1, n);
            let v = match n {
                1 => i64::from(raw as u8 as i8),
                2 => i64::from(raw as u16 as i16),
                4 => i64::from(raw as u32 as i32),
                _ => raw as i64,
            };
            let smaller = [-33, -129, -32_769, i64::from(i32::MIN) - 1][usize::from(byte - 0xd0)];
            assert!(
                v <= smaller,
                "{v} is not in its smallest family ({byte:#04x})"
            );
            at + 1 + n
        }
        0xcb => at + 9,
        0xca => panic!("float 32 at {at}: ganglion writes float 64"),
        0xdc => walk_list(b, at + 3, len(at + 1, 2)),
        0xdd => walk_list(b, at + 5, len(at + 1, 4)),
        0xde => walk_map(b, at + 3, len(at + 1, 2)),
        0xdf => walk_map(b, at + 5, len(at + 1, 4)),
        0xc4..=0xc6 => panic!("bin family at {at}: strings must be str"),
        other => panic!("ext or unused byte {other:#04x} at {at}"),
    }
}

fn walk_map(b: &[u8], mut at: usize, entries: usize) -> usize {
    for _ in 0..entries {
        assert!(
            matches!(b[at], 0xa0..=0xbf | 0xd9..=0xdb),
            "map key at {at} is not a str ({:#04x})",
            b[at]
        );
        at = walk_msgpack(b, at);
        at = walk_msgpack(b, at);
    }
    at
}

fn walk_list(b: &[u8], mut at: usize, items: usize) -> usize {
    for _ in 0..items {
        at = walk_msgpack(b, at);
    }
    at
}

/// Connects, sends identify with `d` and returns the client with the ready frame.
async fn identify_raw(gw: &TestGateway, enc: Enc, d: Value) -> (Client, Value) {
    let (mut client, _) = gw.connect(enc).await;
    client.send(json!({"op": 1, "d": d})).await;
    let ready = recv_checked(&mut client).await;
    (client, ready)
}

/// Expects op 8 `error` with `extra_info`, and then the close `code`.
async fn expect_op8(client: &mut Client, error: &str, extra_info: Value, code: u16) {
    let d = client.expect_fatal(error, code).await;
    assert_eq!(
        d,
        json!({"error": error, "extra_info": extra_info}),
        "op 8 `d`"
    );
}

/// The message of `frame` in `enc`, sent as is.
fn encoded(enc: Enc, frame: &Value) -> Vec<u8> {
    match enc {
        Enc::Json => frame.to_string().into_bytes(),
        Enc::Msgpack => rmp_serde::to_vec_named(frame).expect("msgpack"),
    }
}

/// A data message of the encoding's kind carrying `bytes`.
fn data_message(enc: Enc, bytes: Vec<u8>) -> Message {
    match enc {
        Enc::Json => Message::text(String::from_utf8(bytes).expect("UTF-8")),
        Enc::Msgpack => Message::binary(bytes),
    }
}

/// A heartbeat frame padded with a string `d` to exactly `size` bytes in `enc`.
fn heartbeat_of_size(enc: Enc, size: usize) -> Vec<u8> {
    let mut pad = size;
    loop {
        let bytes = encoded(enc, &json!({"op": 5, "d": "x".repeat(pad)}));
        if bytes.len() == size {
            return bytes;
        }
        pad = pad + size - bytes.len();
    }
}

/// The clients of `application` in `POST /api/v1/query` (restricted ones too when asked).
async fn clients_of(gw: &TestGateway, application: &str) -> Vec<Value> {
    gw.query(json!({"application": application})).await
}

// === transport (§2.1) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_without_an_encoding_parameter_speaks_json_and_starts_with_hello() {
    let gw = TestGateway::start().await;
    let (ws, response) = connect_async(gw.ws_url(""))
        .await
        .expect("the handshake succeeds");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut client = Client {
        ws,
        encoding: Enc::Json,
    };
    let hello = recv_checked(&mut client).await;
    assert_frame(&hello, 0, json!({"heartbeat_interval": 45000}));
    let ts = hello["ts"].as_u64().unwrap_or_default();
    assert!(
        ts.abs_diff(now_ms()) <= 1000,
        "hello `ts` {ts} is not now±1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_msgpack_hello_is_a_binary_map_with_str_keys_and_a_nil_t() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect_raw(Enc::Msgpack).await;
    let Some(Message::Binary(bytes)) = client.next_message().await else {
        panic!("the msgpack hello is not a binary message");
    };
    check_msgpack(&bytes);
    assert_eq!(bytes[0], 0x84, "a map of exactly four entries");
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"\xa2op\x00"), "`op` 0 as str key and fixint");
    assert!(has(b"\xa1t\xc0"), "`t` as str key and nil");
    assert!(
        has(b"\xa1d\x81\xb2heartbeat_interval\xcd\xaf\xc8"),
        "`d` is {{\"heartbeat_interval\": 45000}} with a str key and uint 16"
    );
    assert!(has(b"\xa2ts\xcf"), "`ts` as str key and uint 64");
    let hello: Value = rmp_serde::from_slice(&bytes).expect("msgpack");
    assert_frame(&hello, 0, json!({"heartbeat_interval": 45000}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_encoding_parameter_gets_403_and_no_upgrade() {
    let gw = TestGateway::start().await;
    for query in [
        "?encoding=xml",
        "?encoding=JSON",
        "?encoding=Msgpack",
        "?encoding=",
        "?encoding=json+",
        "?encoding=msgpack&encoding=jsonx",
    ] {
        match connect_async(gw.ws_url(query)).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), StatusCode::FORBIDDEN, "{query}");
            }
            Err(other) => panic!("{query}: expected HTTP 403, got {other}"),
            Ok(_) => panic!("{query}: the connection was upgraded"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encoding_parameter_is_form_decoded_and_its_last_occurrence_wins() {
    let gw = TestGateway::start().await;
    for (query, binary) in [
        ("?encoding=xml&encoding=msgpack", true),
        ("?encoding=msgpack&encoding=json", false),
        ("?vsn=2.0.0&encoding=%6Dsgpack", true),
        ("?encoding=%6Ason&vsn=1", false),
        ("?vsn=1", false),
    ] {
        let (mut ws, _) = connect_async(gw.ws_url(query))
            .await
            .unwrap_or_else(|e| panic!("{query}: handshake failed: {e}"));
        let hello = timeout(patience(), ws.next()).await.expect("hello in time");
        match hello {
            Some(Ok(Message::Binary(_))) => assert!(binary, "{query}: expected JSON"),
            Some(Ok(Message::Text(_))) => assert!(!binary, "{query}: expected msgpack"),
            other => panic!("{query}: expected hello, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_message_of_the_wrong_kind_is_fatal() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        for identified in [false, true] {
            let mut client = if identified {
                gw.identify(enc, "kind", enc.name()).await
            } else {
                gw.connect(enc).await.0
            };
            let (wrong, kind) = match enc {
                Enc::Json => (Message::binary(b"{\"op\":5}".to_vec()), "binary"),
                Enc::Msgpack => (Message::text("{\"op\":5}"), "text"),
            };
            client.send_raw(wrong).await;
            let error = format!(
                "decode: payload: invalid websocket opcode/encoding combo: {{{kind}, {}}}",
                enc.name()
            );
            expect_op8(&mut client, &error, Value::Null, 1008).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_fatal() {
    let gw = TestGateway::start().await;
    let cases: Vec<(Enc, Vec<u8>)> = vec![
        (Enc::Json, b"abc".to_vec()),
        (Enc::Json, b"[1,2]".to_vec()),
        (Enc::Json, b"5".to_vec()),
        (Enc::Json, b"".to_vec()),
        (Enc::Json, b"{\"op\":5".to_vec()),
        (Enc::Json, b"{\"op\":1e999}".to_vec()),
        // garbage, an array, an integer key, an ext type, bin that is not UTF-8, NaN
        (Enc::Msgpack, vec![0xc1]),
        (Enc::Msgpack, vec![0x92, 0x01, 0x02]),
        (Enc::Msgpack, vec![0x81, 0x01, 0x02]),
        (Enc::Msgpack, vec![0x81, 0xa2, b'o', b'p', 0xd4, 0x01, 0x00]),
        (Enc::Msgpack, vec![0x81, 0xa2, b'o', b'p', 0xc4, 0x01, 0xff]),
        (
            Enc::Msgpack,
            vec![0x81, 0xa2, b'o', b'p', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
        ),
    ];
    for (enc, bytes) in cases {
        let (mut client, _) = gw.connect(enc).await;
        let message = match enc {
            Enc::Json => Message::text(String::from_utf8(bytes.clone()).expect("UTF-8")),
            Enc::Msgpack => Message::binary(bytes.clone()),
        };
        client.send_raw(message).await;
        let d = client
            .expect_fatal("decode: payload: unrecoverable", 1008)
            .await;
        assert!(
            d["extra_info"].is_null() || d["extra_info"].is_string(),
            "{bytes:02x?}: `extra_info` is a string or null: {d}"
        );
        assert_eq!(d.as_object().map(|d| d.len()), Some(2), "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_frame_bytes_is_fatal_with_1009_and_one_at_the_limit_is_not() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let mut client = gw.identify(enc, "big-in", enc.name()).await;
        client
            .send_raw(data_message(enc, heartbeat_of_size(enc, 1_048_576)))
            .await;
        let ack = client.recv().await;
        assert_eq!(
            ack["op"], 6,
            "{enc:?}: a 1 048 576-byte heartbeat is accepted"
        );

        // The server may stop reading early, so the send itself may fail.
        let _ = client
            .ws
            .send(data_message(enc, heartbeat_of_size(enc, 1_048_577)))
            .await;
        expect_op8(
            &mut client,
            "payload too large",
            json!({"limit": 1_048_576}),
            1009,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_reassembled_and_limited_on_their_whole_size() {
    let gw = TestGateway::start_with(|c| c.gateway.max_frame_bytes = 1000).await;
    for enc in Enc::ALL {
        let kind = match enc {
            Enc::Json => Data::Text,
            Enc::Msgpack => Data::Binary,
        };
        let (mut client, _) = gw.connect(enc).await;
        let identify = encoded(
            enc,
            &json!({"op": 1, "d": {"application_id": "frag", "client_id": enc.name()}}),
        );
        let (a, rest) = identify.split_at(5);
        let (b, c) = rest.split_at(7);
        for (part, opcode, fin) in [
            (a, kind, false),
            (b, Data::Continue, false),
            (c, Data::Continue, true),
        ] {
            let frame = Frame::message(Bytes::copy_from_slice(part), OpCode::Data(opcode), fin);
            client.send_raw(Message::Frame(frame)).await;
        }
        let ready = recv_checked(&mut client).await;
        assert_frame(
            &ready,
            2,
            json!({"client_id": enc.name(), "restricted": false}),
        );

        // Two fragments of 600 bytes: each is under the limit, the message is not.
        let big = heartbeat_of_size(enc, 1200);
        let (a, b) = big.split_at(600);
        let _ = client
            .ws
            .send(Message::Frame(Frame::message(
                Bytes::copy_from_slice(a),
                OpCode::Data(kind),
                false,
            )))
            .await;
        let _ = client
            .ws
            .send(Message::Frame(Frame::message(
                Bytes::copy_from_slice(b),
                OpCode::Data(Data::Continue),
                true,
            )))
            .await;
        expect_op8(
            &mut client,
            "payload too large",
            json!({"limit": 1000}),
            1009,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_with_their_data_in_every_state_and_pongs_are_ignored() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let (mut client, _) = gw.connect(enc).await;
        client
            .send_raw(Message::Pong(Bytes::from_static(b"unsolicited")))
            .await;
        for (state, data) in [("before identify", "x"), ("after identify", "y")] {
            client
                .send_raw(Message::Ping(Bytes::copy_from_slice(data.as_bytes())))
                .await;
            let reply = timeout(patience(), client.ws.next())
                .await
                .expect("a pong in time");
            match reply {
                Some(Ok(Message::Pong(got))) => {
                    assert_eq!(&got[..], data.as_bytes(), "{enc:?} {state}: pong data");
                }
                other => panic!("{enc:?} {state}: expected a pong, got {other:?}"),
            }
            if state == "before identify" {
                // The connection stayed open: identify still works.
                client
                    .send(
                        json!({"op": 1, "d": {"application_id": "ping", "client_id": enc.name()}}),
                    )
                    .await;
                let ready = recv_checked(&mut client).await;
                assert_eq!(ready["op"], 2, "{ready}");
            }
        }
        client.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_with_its_code_and_the_client_is_unregistered() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        for code in [1000u16, 4005] {
            let id = format!("{}-{code}", enc.name());
            let mut client = gw.identify(enc, "closer", &id).await;
            client
                .ws
                .close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: "bye".into(),
                }))
                .await
                .expect("close sent");
            let closed = client.closed().await;
            assert_eq!(closed.code, Some(code), "{enc:?}: the close code is echoed");
            assert!(closed.frames.is_empty(), "{:?}", closed.frames);
            eventually("the closed client leaves the registry", || async {
                clients_of(&gw, "closer")
                    .await
                    .iter()
                    .all(|c| c["client_id"] != id.as_str())
            })
            .await;
        }
    }
}

// === identify (§4.3) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_is_answered_with_ready_in_the_connections_encoding() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("test-app-1-{}", enc.name());
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"client_id": "client-1", "application_id": app}, "t": null, "ts": now_ms()}))
            .await;
        let ready = recv_checked(&mut client).await;
        assert_frame(
            &ready,
            2,
            json!({"client_id": "client-1", "restricted": false}),
        );
        let found = clients_of(&gw, &app).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0]["metadata"]["encoding"], enc.name());
        assert_eq!(found[0]["metadata"]["restricted"], false);
        client.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_address_is_the_default_ip_and_an_advertised_ip_replaces_it() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("ip-{}", enc.name());
        let _plain = gw.identify(enc, &app, "plain").await;
        let _null = gw
            .identify_with(
                enc,
                json!({"application_id": app, "client_id": "null", "ip": null}),
            )
            .await;
        let _advertised = gw
            .identify_with(
                enc,
                json!({"application_id": app, "client_id": "advertised", "ip": "http://10.0.0.5:8080"}),
            )
            .await;
        let found = clients_of(&gw, &app).await;
        let ip_of = |id: &str| {
            let client = found
                .iter()
                .find(|c| c["client_id"] == id)
                .unwrap_or_else(|| panic!("{id} not found in {found:?}"));
            assert_eq!(client["metadata_types"]["ip"], "string");
            assert_eq!(client["metadata"]["encoding"], enc.name());
            assert_eq!(client["socket_ip"], client["metadata"]["ip"], "{client}");
            client["socket_ip"].clone()
        };
        assert_eq!(ip_of("plain"), "127.0.0.1");
        assert_eq!(ip_of("null"), "127.0.0.1");
        assert_eq!(ip_of("advertised"), "http://10.0.0.5:8080");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_peer_is_shown_as_eight_zero_padded_groups() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        eprintln!("skipping: IPv6 loopback is unavailable on this machine ({e})");
        return;
    }
    let gw = TestGateway::start_with(|c| c.listen = "[::1]:0".to_owned()).await;
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    for enc in Enc::ALL {
        let app = format!("v6-{}", enc.name());
        let _client = gw.identify(enc, &app, "c").await;
        let found = clients_of(&gw, &app).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0]["metadata"]["ip"],
            "0000:0000:0000:0000:0000:0000:0000:0001"
        );
        assert_eq!(
            found[0]["socket_ip"],
            "0000:0000:0000:0000:0000:0000:0000:0001"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_peer_of_a_dual_stack_listener_is_shown_in_ipv4_form() {
    if let Err(e) = std::net::TcpListener::bind("[::]:0") {
        eprintln!("skipping: IPv6 is unavailable on this machine ({e})");
        return;
    }
    let gw = TestGateway::start_with(|c| c.listen = "[::]:0".to_owned()).await;
    let port = gw.addr.port();
    for enc in Enc::ALL {
        let app = format!("mapped-{}", enc.name());
        let url = format!(
            "ws://127.0.0.1:{port}/gateway/websocket?encoding={}",
            enc.name()
        );
        let (ws, _) = connect_async(url).await.expect("handshake over IPv4");
        let mut client = Client { ws, encoding: enc };
        let hello = client.recv().await;
        assert_eq!(hello["op"], 0);
        client
            .send(json!({"op": 1, "d": {"application_id": app, "client_id": "c"}}))
            .await;
        assert_eq!(client.recv().await["op"], 2);
        let found = clients_of(&gw, &app).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0]["socket_ip"], "127.0.0.1");
        assert_eq!(found[0]["metadata"]["ip"], "127.0.0.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_frame_but_identify_before_identify_is_fatal() {
    let gw = TestGateway::start().await;
    let frames = [
        json!({"op": 5, "d": {"client_id": "c"}}),
        json!({"op": 4, "t": "SEND", "d": {"target": {"application": "a"}, "payload": {}}}),
        json!({"op": 0, "d": null}),
        json!({"op": 2, "d": null}),
        json!({"op": 8, "d": null}),
        json!({"op": 9, "d": null}),
        json!({"d": {"application_id": "a", "client_id": "c"}}),
        json!({"op": "1", "d": {"application_id": "a", "client_id": "c"}}),
        json!({"op": 1.0, "d": {"application_id": "a", "client_id": "c"}}),
    ];
    for enc in Enc::ALL {
        for frame in &frames {
            let (mut client, _) = gw.connect(enc).await;
            client.send(frame.clone()).await;
            expect_op8(
                &mut client,
                "sent payload with non-identify opcode without identifying first",
                Value::Null,
                1008,
            )
            .await;
        }
        assert!(
            clients_of(&gw, "a").await.is_empty(),
            "nothing was registered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_validation_failures_are_fatal_with_exact_errors() {
    let gw = TestGateway::start().await;
    let long = "x".repeat(256);
    let cases = [
        (
            json!({"client_id": "", "application_id": "app"}),
            "client_id: must not be empty",
            Value::Null,
        ),
        (
            json!({"client_id": "a b", "application_id": "app"}),
            "client_id: must not contain whitespace or control characters",
            Value::Null,
        ),
        (
            json!({"client_id": "a\u{7}b", "application_id": "app"}),
            "client_id: must not contain whitespace or control characters",
            Value::Null,
        ),
        (
            json!({"client_id": "a\u{a0}b", "application_id": "app"}),
            "client_id: must not contain whitespace or control characters",
            Value::Null,
        ),
        (
            json!({"client_id": long, "application_id": "app"}),
            "client_id: must be at most 255 bytes",
            Value::Null,
        ),
        (
            json!({"application_id": "app"}),
            "client_id: is required",
            Value::Null,
        ),
        (
            json!({"client_id": null, "application_id": "app"}),
            "client_id: is required",
            Value::Null,
        ),
        (
            json!({"client_id": ["c"], "application_id": "app"}),
            "client_id: must be a string",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": long}),
            "application_id: must be at most 255 bytes",
            Value::Null,
        ),
        (
            json!({"client_id": "c"}),
            "application_id: is required",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": 5}),
            "application_id: must be a string",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": ""}),
            "application_id: must not be empty",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": "a\tb"}),
            "application_id: must not contain whitespace or control characters",
            Value::Null,
        ),
        (json!([]), "decode: payload: unrecoverable", Value::Null),
        (
            json!("identify"),
            "decode: payload: unrecoverable",
            Value::Null,
        ),
        (Value::Null, "decode: payload: unrecoverable", Value::Null),
        (
            json!({"client_id": "c", "application_id": "app", "ip": 5}),
            "ip: must be a string",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": "app", "ip": {"host": "x"}}),
            "ip: must be a string",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": "app", "metadata": 5}),
            "initial metadata: invalid",
            json!({"metadata": "metadata: must be an object"}),
        ),
        // The checks run in the order of the table: the first failure is reported.
        (
            json!({"client_id": "", "application_id": 5}),
            "client_id: must not be empty",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": "", "ip": 5}),
            "application_id: must not be empty",
            Value::Null,
        ),
        (
            json!({"client_id": "c", "application_id": "app", "ip": 5, "metadata": 5}),
            "ip: must be a string",
            Value::Null,
        ),
    ];
    for enc in Enc::ALL {
        for (d, error, extra_info) in &cases {
            let (mut client, _) = gw.connect(enc).await;
            client.send(json!({"op": 1, "d": d})).await;
            expect_op8(&mut client, error, extra_info.clone(), 1008).await;
        }
        // Absent `d` is null, which is not an object.
        let (mut client, _) = gw.connect(enc).await;
        client.send(json!({"op": 1})).await;
        expect_op8(
            &mut client,
            "decode: payload: unrecoverable",
            Value::Null,
            1008,
        )
        .await;
    }
    assert!(gw.query(json!({})).await.is_empty(), "nothing registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_exactly_255_bytes_are_accepted() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        // 127 two-byte characters and one more byte: 255 bytes, 128 characters.
        let id = format!(
            "{}{}",
            "é".repeat(127),
            if enc == Enc::Json { "j" } else { "m" }
        );
        assert_eq!(id.len(), 255);
        let app = "a".repeat(255);
        let (_client, ready) =
            identify_raw(&gw, enc, json!({"client_id": id, "application_id": app})).await;
        assert_frame(&ready, 2, json!({"client_id": id, "restricted": false}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_initial_metadata_is_fatal_with_a_message_per_key() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(
                json!({"op": 1, "d": {"client_id": "c", "application_id": "meta",
                "metadata": {"a": {"type": "integer", "value": "x"}, "ok": meta("integer", 1)}}}),
            )
            .await;
        expect_op8(
            &mut client,
            "initial metadata: invalid",
            json!({"a": "a: value fails validation for 'integer'"}),
            1008,
        )
        .await;
    }
    assert!(clients_of(&gw, "meta").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_identity_is_refused_and_the_registered_client_is_unaffected() {
    let gw = TestGateway::start().await;
    let mut first = gw.identify(Enc::Json, "app", "c1").await;
    for enc in Enc::ALL {
        let (mut second, _) = gw.connect(enc).await;
        second
            .send(json!({"op": 1, "d": {"application_id": "app", "client_id": "c1"}}))
            .await;
        expect_op8(
            &mut second,
            "c1: already registered for app app",
            Value::Null,
            1008,
        )
        .await;
    }
    first.expect_nothing().await;
    let found = clients_of(&gw, "app").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["metadata"]["encoding"], "json", "still the first");

    // The same client id in another application is another identity.
    let (_other, ready) = identify_raw(
        &gw,
        Enc::Msgpack,
        json!({"application_id": "other", "client_id": "c1"}),
    )
    .await;
    assert_frame(&ready, 2, json!({"client_id": "c1", "restricted": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_simultaneous_identifies_with_one_identity_exactly_one_succeeds() {
    let gw = TestGateway::start().await;
    let mut winners = Vec::new();
    for round in 0..20 {
        let id = format!("r{round}");
        let (mut a, _) = gw.connect(Enc::Json).await;
        let (mut b, _) = gw.connect(Enc::Msgpack).await;
        let identify = json!({"op": 1, "d": {"application_id": "race", "client_id": id}});
        tokio::join!(a.send(identify.clone()), b.send(identify.clone()));
        let (first_a, first_b) = tokio::join!(a.recv(), b.recv());
        let duplicate =
            json!({"error": format!("{id}: already registered for app race"), "extra_info": null});
        match (first_a["op"].as_u64(), first_b["op"].as_u64()) {
            (Some(2), Some(8)) => {
                assert_eq!(first_b["d"], duplicate);
                winners.push(a);
            }
            (Some(8), Some(2)) => {
                assert_eq!(first_a["d"], duplicate);
                winners.push(b);
            }
            _ => panic!("round {round}: expected one ready and one op 8: {first_a} / {first_b}"),
        }
    }
    assert_eq!(clients_of(&gw, "race").await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_a_client_may_not_send_after_identify_are_fatal() {
    let gw = TestGateway::start().await;
    let cases = [
        (
            json!({"op": 1, "d": {"application_id": "gate", "client_id": "SELF"}}),
            "invalid client op :identify",
        ),
        (
            json!({"op": 1, "d": {"application_id": "gate", "client_id": "someone-else"}}),
            "invalid client op :identify",
        ),
        (json!({"op": 0, "d": null}), "invalid client op :hello"),
        (json!({"op": 2, "d": null}), "invalid client op :ready"),
        (json!({"op": 3, "d": null}), "invalid client op :invalid"),
        (
            json!({"op": 6, "d": null}),
            "invalid client op :heartbeat_ack",
        ),
        (json!({"op": 7, "d": null}), "invalid client op :goodbye"),
        (json!({"op": 8, "d": null}), "invalid client op :error"),
        (json!({"op": 9, "d": null}), "invalid client op nil"),
        (json!({"op": -1, "d": null}), "invalid client op nil"),
        (json!({"op": 256, "d": null}), "invalid client op nil"),
        (
            json!({"op": "4", "t": "SEND", "d": null}),
            "invalid client op nil",
        ),
        (
            json!({"op": 4.0, "t": "SEND", "d": null}),
            "invalid client op nil",
        ),
        (json!({"t": "SEND", "d": null}), "invalid client op nil"),
    ];
    for enc in Enc::ALL {
        for (i, (frame, error)) in cases.iter().enumerate() {
            let id = format!("{}-{i}", enc.name());
            let mut client = gw.identify(enc, "gate", &id).await;
            let mut frame = frame.clone();
            if frame["d"]["client_id"] == "SELF" {
                frame["d"]["client_id"] = json!(id);
            }
            client.send(frame).await;
            expect_op8(&mut client, error, Value::Null, 1008).await;
        }
    }
    // Re-identify neither leaves the first registration behind nor creates a second one.
    let left = clients_of(&gw, "gate").await;
    assert!(left.is_empty(), "{left:?}");
}

// === authentication (§4.4) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_every_client_is_unrestricted_whatever_it_sends() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        for (i, auth) in [json!("anything"), json!(123), json!(null), json!({"a": 1})]
            .into_iter()
            .enumerate()
        {
            let id = format!("{}-{i}", enc.name());
            let (_client, ready) = identify_raw(
                &gw,
                enc,
                json!({"application_id": "open", "client_id": id, "auth": auth}),
            )
            .await;
            assert_frame(&ready, 2, json!({"client_id": id, "restricted": false}));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_password_only_the_exact_string_is_unrestricted() {
    for enc in Enc::ALL {
        let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".to_owned())).await;
        let cases = [
            (Some(json!("s3cret")), false),
            (None, true),
            (Some(json!(null)), true),
            (Some(json!("nope")), true),
            (Some(json!("S3CRET")), true),
            (Some(json!(123)), true),
            (Some(json!(["s3cret"])), true),
        ];
        for (i, (auth, restricted)) in cases.into_iter().enumerate() {
            let id = format!("c{i}");
            let mut d = json!({"application_id": "locked", "client_id": id});
            if let Some(auth) = &auth {
                d["auth"] = auth.clone();
            }
            let (mut client, ready) = identify_raw(&gw, enc, d).await;
            assert_frame(
                &ready,
                2,
                json!({"client_id": id, "restricted": restricted}),
            );
            client.expect_nothing().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_failed_auth_identifies_lock_the_source_out_of_identify_and_http() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".to_owned())).await;
    let mut restricted = Vec::new();
    for i in 0..10 {
        let enc = Enc::ALL[i % 2];
        let id = format!("bad-{i}");
        let (client, ready) = identify_raw(
            &gw,
            enc,
            json!({"application_id": "guess", "client_id": id, "auth": "bad"}),
        )
        .await;
        assert_frame(&ready, 2, json!({"client_id": id, "restricted": true}));
        restricted.push(client);
    }
    for enc in Enc::ALL {
        // Even the right password is refused while the source is over the limit.
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "guess", "client_id": "good", "auth": "s3cret"}}))
            .await;
        expect_op8(
            &mut client,
            "too many failed auth attempts",
            Value::Null,
            1008,
        )
        .await;

        // Validation comes before the limit (check 13 before 14) ...
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "guess", "client_id": "good", "auth": "s3cret", "metadata": 5}}))
            .await;
        expect_op8(
            &mut client,
            "initial metadata: invalid",
            json!({"metadata": "metadata: must be an object"}),
            1008,
        )
        .await;

        // ... and the limit before the duplicate check (14 before 15).
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "guess", "client_id": "bad-0", "auth": "s3cret"}}))
            .await;
        expect_op8(
            &mut client,
            "too many failed auth attempts",
            Value::Null,
            1008,
        )
        .await;

        // Identifies without a credential are not affected.
        for d in [
            json!({"application_id": "guess", "client_id": format!("anon-{}", enc.name())}),
            json!({"application_id": "guess", "client_id": format!("null-{}", enc.name()), "auth": null}),
        ] {
            let (_client, ready) = identify_raw(&gw, enc, d.clone()).await;
            assert_frame(
                &ready,
                2,
                json!({"client_id": d["client_id"], "restricted": true}),
            );
        }
    }

    // The HTTP API shares the limit: a request with a credential from this IP gets 429.
    let too_many = json!({"status": "error", "error": "too many failed auth attempts"});
    for credential in ["bad", "s3cret", "Bearer s3cret"] {
        let response = gw
            .http(
                Method::POST,
                "/api/v1/query",
                &[("authorization", credential)],
                "{}",
            )
            .await;
        assert_eq!(
            response.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{credential}"
        );
        assert_eq!(response.json(), too_many);
    }
    let response = gw.http(Method::POST, "/api/v1/query", &[], "{}").await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.json(),
        json!({"status": "error", "error": "not authorized"})
    );
    for client in &mut restricted {
        client.expect_nothing().await;
    }
}

// === restricted clients (§4.4) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_client_may_only_heartbeat_and_update_its_metadata() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".to_owned())).await;
    for enc in Enc::ALL {
        let app = format!("r-{}", enc.name());
        let (mut client, ready) =
            identify_raw(&gw, enc, json!({"application_id": app, "client_id": "r"})).await;
        assert_frame(&ready, 2, json!({"client_id": "r", "restricted": true}));

        let send = json!({"target": {"application": app}, "nonce": 1, "payload": {}});
        for (t, d, shown) in [
            (json!("SEND"), send.clone(), "SEND"),
            (json!("BROADCAST"), send.clone(), "BROADCAST"),
            (
                json!("QUERY_NODES"),
                json!({"application": app}),
                "QUERY_NODES",
            ),
            (json!("QUEUE"), json!({"queue": "q"}), "QUEUE"),
            (json!("FOO"), json!({}), "FOO"),
            (json!(null), json!({}), ""),
            (json!(5), json!({}), ""),
        ] {
            client.send(json!({"op": 4, "t": t, "d": d})).await;
            let invalid = recv_checked(&mut client).await;
            assert_frame(
                &invalid,
                3,
                json!({"error": format!("invalid dispatch type {shown} (are you restricted?)")}),
            );
        }

        let ack = client.sync().await;
        assert!(
            ack.is_empty(),
            "a heartbeat is answered with op 6 only: {ack:?}"
        );
        client
            .update_metadata(json!({"load": meta("integer", 3)}))
            .await;
        let found = gw
            .http(
                Method::POST,
                "/api/v1/query",
                &[("authorization", "s3cret")],
                json!({"application": app, "restricted": true}).to_string(),
            )
            .await
            .json();
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
        assert_eq!(found[0]["metadata"]["load"], 3);

        // A restricted client cannot re-identify either.
        client
            .send(
                json!({"op": 1, "d": {"application_id": app, "client_id": "r", "auth": "s3cret"}}),
            )
            .await;
        expect_op8(
            &mut client,
            "invalid client op :identify",
            Value::Null,
            1008,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_client_has_no_ip_no_updates_and_is_hidden_from_default_queries() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".to_owned())).await;
    for enc in Enc::ALL {
        let app = format!("hidden-{}", enc.name());
        let (_client, ready) = identify_raw(
            &gw,
            enc,
            json!({"application_id": app, "client_id": "h", "ip": "http://x", "receive_client_updates": true}),
        )
        .await;
        assert_frame(&ready, 2, json!({"client_id": "h", "restricted": true}));
        let authorized = [("authorization", "s3cret")];
        let visible = gw
            .http(
                Method::POST,
                "/api/v1/query",
                &authorized,
                json!({"application": app}).to_string(),
            )
            .await;
        assert_eq!(visible.status, StatusCode::OK);
        assert_eq!(visible.json(), json!([]), "hidden without `restricted`");

        let found = gw
            .http(
                Method::POST,
                "/api/v1/query",
                &authorized,
                json!({"application": app, "restricted": true}).to_string(),
            )
            .await
            .json();
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
        let client = &found[0];
        assert_eq!(client["socket_ip"], Value::Null);
        assert_eq!(client["metadata"]["ip"], Value::Null);
        assert_eq!(client["metadata"]["restricted"], true);
        assert_eq!(client["metadata"]["receive_client_updates"], false);
    }
}

// === heartbeats and deadlines (§4.6, §4.7) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_is_acked_with_the_connections_client_id_and_refreshes_last_heartbeat_time() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut client = gw.identify(enc, "hb", "c1").await;
        let last_heartbeat = |found: Vec<Value>| {
            found[0]["metadata"]["last_heartbeat_time"]
                .as_u64()
                .expect("an integer")
        };
        let mut previous = last_heartbeat(clients_of(&gw, "hb").await);
        for d in [
            Some(json!({"client_id": "c1"})),
            Some(json!({"client_id": "someone-else"})),
            Some(json!("junk")),
            None,
        ] {
            // Let the millisecond clock move on, so a refresh is visible.
            while now_ms() <= previous {
                sleep(Duration::from_millis(1)).await;
            }
            let before = now_ms();
            let mut frame = json!({"op": 5});
            if let Some(d) = d {
                frame["d"] = d;
            }
            client.send(frame).await;
            let ack = recv_checked(&mut client).await;
            assert_frame(&ack, 6, json!({"client_id": "c1"}));
            let after = now_ms();
            let refreshed = last_heartbeat(clients_of(&gw, "hb").await);
            assert!(
                refreshed > previous && (before..=after).contains(&refreshed),
                "{enc:?}: last_heartbeat_time {refreshed} after {previous}, sent at {before}..{after}"
            );
            previous = refreshed;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_sent_right_after_identify_is_acked_after_ready() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let (mut client, _) = gw.connect(enc).await;
        let identify = json!({"op": 1, "d": {"application_id": "eager", "client_id": enc.name()}});
        let heartbeat = json!({"op": 5, "d": {"client_id": enc.name()}});
        client.ws.feed(enc.message(&identify)).await.expect("feed");
        client.ws.feed(enc.message(&heartbeat)).await.expect("feed");
        client.ws.flush().await.expect("flush");
        let ready = recv_checked(&mut client).await;
        assert_frame(
            &ready,
            2,
            json!({"client_id": enc.name(), "restricted": false}),
        );
        let ack = recv_checked(&mut client).await;
        assert_frame(&ack, 6, json!({"client_id": enc.name()}));
        client.expect_nothing().await;

        // Heartbeats need not wait for their acks: five at once get five acks.
        for _ in 0..5 {
            client.ws.feed(enc.message(&heartbeat)).await.expect("feed");
        }
        client.ws.flush().await.expect("flush");
        for _ in 0..5 {
            let ack = recv_checked(&mut client).await;
            assert_frame(&ack, 6, json!({"client_id": enc.name()}));
        }
        client.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_gets_heartbeat_took_too_long_after_one_and_a_half_intervals() {
    let gw = TestGateway::start_with(|c| c.gateway.heartbeat_interval_ms = 400).await;
    for enc in Enc::ALL {
        let (mut client, hello) = gw.connect(enc).await;
        assert_eq!(hello["d"], json!({"heartbeat_interval": 400}));
        let identified = Instant::now();
        client
            .send(json!({"op": 1, "d": {"application_id": "silent", "client_id": enc.name()}}))
            .await;
        assert_eq!(recv_checked(&mut client).await["op"], 2);
        let op8 = recv_checked(&mut client).await;
        let elapsed = identified.elapsed();
        assert_frame(
            &op8,
            8,
            json!({"error": "heartbeat took too long", "extra_info": null}),
        );
        assert!(
            elapsed >= Duration::from_millis(550),
            "{enc:?}: op 8 after {elapsed:?}, before 1.5 × 400 ms"
        );
        // The client was unregistered before its op 8: the identity is free at once.
        let (mut again, ready) = identify_raw(
            &gw,
            enc,
            json!({"application_id": "silent", "client_id": enc.name()}),
        )
        .await;
        assert_eq!(ready["op"], 2, "{ready}");
        let closed = client.closed().await;
        assert!(closed.frames.is_empty(), "{:?}", closed.frames);
        assert_eq!(closed.code, Some(1008));
        again.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_heartbeat_timeout_replaces_the_default() {
    let gw = TestGateway::start_with(|c| c.gateway.heartbeat_timeout_ms = Some(300)).await;
    for enc in Enc::ALL {
        let (mut client, hello) = gw.connect(enc).await;
        assert_eq!(hello["d"], json!({"heartbeat_interval": 45000}));
        let identified = Instant::now();
        client
            .send(json!({"op": 1, "d": {"application_id": "short", "client_id": enc.name()}}))
            .await;
        assert_eq!(recv_checked(&mut client).await["op"], 2);
        expect_op8(&mut client, "heartbeat took too long", Value::Null, 1008).await;
        assert!(identified.elapsed() >= Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_client_alive_but_dispatches_and_pings_do_not() {
    let timeout_ms = 1000;
    let gw = TestGateway::start_with(|c| {
        c.gateway.heartbeat_interval_ms = 400;
        c.gateway.heartbeat_timeout_ms = Some(timeout_ms);
    })
    .await;
    for enc in Enc::ALL {
        let mut client = gw.identify(enc, "alive", enc.name()).await;
        // Heartbeats every 200 ms for twice the timeout: each is acked, nothing else comes.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2 * timeout_ms) {
            sleep(Duration::from_millis(200)).await;
            client.expect_nothing().await;
        }
        let last_heartbeat = Instant::now();

        // Then only dispatches and pings: the deadline still runs from the last heartbeat.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let give_up = Instant::now() + patience();
        let op8 = loop {
            tokio::select! {
                _ = tick.tick() => {
                    let update = json!({"op": 4, "t": "UPDATE_METADATA", "d": {"n": meta("integer", 1)}});
                    let _ = client.ws.send(enc.message(&update)).await;
                    let _ = client.ws.send(Message::Ping(Bytes::from_static(b"p"))).await;
                }
                message = client.ws.next() => match message {
                    Some(Ok(Message::Pong(_))) => {}
                    Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(&text).expect("JSON"),
                    Some(Ok(Message::Binary(bytes))) => break rmp_serde::from_slice::<Value>(&bytes).expect("msgpack"),
                    other => panic!("{enc:?}: expected op 8, got {other:?}"),
                },
                () = sleep_until(give_up) => panic!("{enc:?}: dispatches and pings kept the client alive"),
            }
        };
        let elapsed = last_heartbeat.elapsed();
        assert_eq!(
            op8["d"],
            json!({"error": "heartbeat took too long", "extra_info": null})
        );
        assert!(
            elapsed >= Duration::from_millis(timeout_ms - 50),
            "{enc:?}: op 8 {elapsed:?} after the last heartbeat"
        );
        assert_eq!(client.closed().await.code, Some(1008));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_identify_deadline_exceeded() {
    let gw = TestGateway::start_with(|c| c.gateway.identify_timeout_ms = 300).await;
    for enc in Enc::ALL {
        let start = Instant::now();
        let (mut client, _) = gw.connect(enc).await;
        // A ping is not an identify.
        client
            .send_raw(Message::Ping(Bytes::from_static(b"x")))
            .await;
        expect_op8(&mut client, "identify deadline exceeded", Value::Null, 1008).await;
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(250),
            "{enc:?}: op 8 after {elapsed:?}, before the 300 ms deadline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identify_deadline_ends_with_identify() {
    let gw = TestGateway::start_with(|c| c.gateway.identify_timeout_ms = 300).await;
    for enc in Enc::ALL {
        let start = Instant::now();
        let mut client = gw.identify(enc, "prompt", enc.name()).await;
        // Waiting on the clock itself: the identify deadline passes twice over.
        sleep_until(start + Duration::from_millis(700)).await;
        client.expect_nothing().await;
    }
}

// === closing (§4.8) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_client_is_unregistered_before_its_op_8_is_sent() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("redial-{}", enc.name());
        let mut client = gw.identify(enc, &app, "c").await;
        client.send(json!({"op": 2, "d": null})).await;
        let op8 = recv_checked(&mut client).await;
        assert_frame(
            &op8,
            8,
            json!({"error": "invalid client op :ready", "extra_info": null}),
        );
        // The close has not been read yet; the registration is already gone.
        assert!(clients_of(&gw, &app).await.is_empty());
        let (mut again, ready) =
            identify_raw(&gw, enc, json!({"application_id": app, "client_id": "c"})).await;
        assert_frame(&ready, 2, json!({"client_id": "c", "restricted": false}));
        assert_eq!(client.closed().await.code, Some(1008));
        again.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_reason_is_the_op_8_error_cut_to_123_bytes_at_a_character_boundary() {
    let gw = TestGateway::start().await;
    let id = format!("{}a", "é".repeat(127));
    let _first = gw.identify(Enc::Json, "app", &id).await;
    for enc in Enc::ALL {
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "app", "client_id": id}}))
            .await;
        let reason = loop {
            match client.next_message().await {
                Some(Message::Close(Some(frame))) => break frame.reason.to_string(),
                Some(Message::Close(None)) | None => panic!("{enc:?}: no close frame"),
                Some(_) => {}
            }
        };
        // 61 two-byte characters are 122 bytes; the 62nd would cross byte 123.
        assert_eq!(reason, "é".repeat(61), "{enc:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_queued_before_a_fatal_frame_precede_its_op_8_and_later_frames_are_discarded() {
    let gw = TestGateway::start().await;
    let mut sink = gw.identify(Enc::Json, "sink", "r").await;
    for enc in Enc::ALL {
        let mut client = gw.identify(enc, "source", enc.name()).await;
        let send = json!({"op": 4, "t": "SEND", "d": {"target": {"application": "sink"}, "nonce": null, "payload": "late"}});
        for frame in [
            json!({"op": 5, "d": null}),
            json!({"op": 7, "d": null}),
            send,
            json!({"op": 5, "d": null}),
        ] {
            client.ws.feed(enc.message(&frame)).await.expect("feed");
        }
        client.ws.flush().await.expect("flush");
        let closed = client.closed().await;
        assert_eq!(closed.frames.len(), 2, "{:?}", closed.frames);
        assert_frame(&closed.frames[0], 6, json!({"client_id": enc.name()}));
        assert_frame(
            &closed.frames[1],
            8,
            json!({"error": "invalid client op :goodbye", "extra_info": null}),
        );
        assert_eq!(closed.code, Some(1008));
        // The SEND after the fatal frame was never routed.
        sink.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_unregisters_each_client_then_says_goodbye_and_closes_with_1001() {
    let gw = TestGateway::start().await;
    let addr = gw.addr;
    let mut clients = Vec::new();
    for enc in Enc::ALL {
        clients.push(gw.identify(enc, "drain", enc.name()).await);
    }
    let (mut unidentified, _) = gw.connect(Enc::Json).await;
    let drained = gw.drain_in_background();

    for client in &mut clients {
        let goodbye = recv_checked(client).await;
        assert_frame(&goodbye, 7, json!({"reason": "draining"}));
        // SPEC §4.8 promises that a client re-dialling with the same identity as soon as op 7
        // arrives is not refused as a duplicate. On a single node that is draining, a re-dial
        // cannot reach an identify (new upgrades get 503), so what is observable is the cause
        // of that guarantee: when op 7 arrives, the client is no longer registered. The HTTP
        // API keeps answering until every session has ended, and this one has not: the
        // client has not read the close frame, so it has not answered it.
        // (`client_id` is not a query field, so the answer is filtered here.)
        let name = client.encoding.name();
        let found = query_at(addr, json!({"application": "drain"})).await;
        let still = found
            .as_array()
            .expect("an array")
            .iter()
            .any(|c| c["client_id"] == name);
        assert!(!still, "{name} is still registered at its goodbye: {found}");
    }
    for client in &mut clients {
        let closed = client.closed().await;
        assert!(closed.frames.is_empty(), "{:?}", closed.frames);
        assert_eq!(closed.code, Some(1001));
        answer_close(client).await;
    }
    // A connection that never identified is not a client, so no goodbye frame is promised to
    // it (none is asserted), but the node still closes it as a shutdown: 1001.
    let closed = unidentified.closed().await;
    assert_eq!(closed.code, Some(1001), "{:?}", closed.frames);
    answer_close(&mut unidentified).await;
    timeout(patience(), drained)
        .await
        .expect("the drain completes once every connection closed")
        .expect("the drain task");
}

/// Sends the reply to a close frame the server sent. Tungstenite queues it when the close is
/// read and writes it on the next read, which `Client::closed` does not make; without it the
/// node waits `gateway.close_timeout_ms` for each connection before a drain can end.
async fn answer_close(client: &mut Client) {
    let _ = timeout(patience(), client.ws.next()).await;
}

/// `POST /api/v1/query` on a node whose `TestGateway` was consumed by a drain.
async fn query_at(addr: std::net::SocketAddr, query: Value) -> Value {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("http://{addr}/api/v1/query"))
        .body(Full::new(Bytes::from(query.to_string())))
        .expect("request");
    let response = timeout(patience(), client.request(request))
        .await
        .expect("an HTTP answer in time")
        .expect("an HTTP answer");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

// === slow consumers (§4.9) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_the_outbound_bound_is_delivered_to_a_reading_client() {
    let gw = TestGateway::start_with(|c| c.gateway.outbound_buffer_bytes = 64 * 1024).await;
    let mut sender = gw.identify(Enc::Json, "big-sender", "s").await;
    for enc in Enc::ALL {
        let app = format!("big-out-{}", enc.name());
        let mut receiver = gw.identify(enc, &app, "r").await;
        let payload = "x".repeat(300_000);
        sender
            .dispatch(
                "BROADCAST",
                json!({"target": {"application": app}, "nonce": null, "payload": payload}),
            )
            .await;
        let delivered = recv_checked(&mut receiver).await;
        assert_eq!(delivered["op"], 4);
        assert_eq!(delivered["t"], "BROADCAST");
        assert_eq!(
            delivered["d"]["payload"].as_str().map(str::len),
            Some(300_000)
        );
        receiver.expect_nothing().await;
        sender.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_as_a_slow_consumer() {
    let gw = TestGateway::start_with(|c| c.gateway.outbound_buffer_bytes = 64 * 1024).await;
    let mut sender = gw.identify(Enc::Json, "firehose", "s").await;
    for enc in Enc::ALL {
        let app = format!("slow-{}", enc.name());
        let mut slow = gw.identify(enc, &app, "slow").await;
        let payload = "x".repeat(32 * 1024);
        let broadcast = json!({"op": 4, "t": "BROADCAST", "d": {
            "target": {"application": app, "droppable": true}, "nonce": null, "payload": payload}});

        // `slow` reads nothing while 1 MiB batches are broadcast to it, until the kernel
        // buffers are full, its queue passes the bound and it leaves the registry.
        let mut sent = 0usize;
        loop {
            for _ in 0..32 {
                sender
                    .ws
                    .feed(Message::text(broadcast.to_string()))
                    .await
                    .expect("feed");
            }
            sender.ws.flush().await.expect("flush");
            sent += 32;
            assert!(sender.sync().await.is_empty(), "droppable: no op 3");
            if clients_of(&gw, &app).await.is_empty() {
                break;
            }
            assert!(
                sent < 4096,
                "{enc:?}: still registered after {sent} frames of 32 KiB"
            );
        }

        // Now it reads: broadcasts that made it into the socket, then op 8 and close 1008.
        // Observed: the op 8 and the close do arrive. The writer was blocked on the full socket
        // while the session unregistered the client; once the client reads, the writer
        // finishes its batch and writes the final op 8 within `gateway.close_timeout_ms`.
        let closed = slow.closed().await;
        let (last, before) = closed
            .frames
            .split_last()
            .unwrap_or_else(|| panic!("{enc:?}: no frame before the close"));
        assert!(
            before.iter().all(|f| f["op"] == 4 && f["t"] == "BROADCAST"),
            "only broadcasts precede the op 8"
        );
        assert!(before.len() < sent, "some broadcasts were dropped");
        assert_eq!(
            last["d"],
            json!({"error": "slow consumer", "extra_info": null}),
            "{enc:?}: the last frame: op {}",
            last["op"]
        );
        assert_eq!(last["op"], 8);
        assert_eq!(closed.code, Some(1008));
    }
}
