//! The NATS bridge (SPEC §2.3; lifecycle §4; failed-auth key §4.4; `invalid connect request`
//! §13.1; trace headers §11), against a real `nats-server` that each test starts on a free
//! loopback port.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use ganglion_gateway::{Config, Gateway};
use ganglion_tests::assert::{assert_envelope, expect_op3, key_set, keys};
use ganglion_tests::nats::{NatsClient, NatsServer, encode, inject, inject_with_headers, request};
use ganglion_tests::{Enc, TcpClient, TestGateway, meta, now_ms, patience};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

const PREFIX: &str = "ganglion";

async fn start() -> TestGateway {
    TestGateway::start_with_nats(|_| {}).await
}

fn is_session_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// The JSON op 8 a malformed connect request gets (SPEC §2.3, §13.1).
fn expect_invalid_connect_request(payload: &[u8], what: &str) {
    let frame: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
        panic!(
            "{what}: the answer is JSON ({e}): {:?}",
            String::from_utf8_lossy(payload)
        )
    });
    assert_envelope(&frame);
    assert_eq!(
        frame,
        json!({"op": 8, "d": {"error": "invalid connect request", "extra_info": null},
               "t": null, "ts": frame["ts"]}),
        "{what}"
    );
}

/// The exact DISPATCH_RESULT of an injection.
fn expect_result(answer: &Value, t: &str, nonce: Value, recipients: u64) {
    assert_envelope(answer);
    assert_eq!(
        answer,
        &json!({"op": 4, "t": "DISPATCH_RESULT",
                "d": {"t": t, "nonce": nonce, "recipients": recipients},
                "ts": answer["ts"]}),
    );
}

/// `op 3 invalid dispatch payload` with a null `extra_info`: an injection that is not a JSON
/// SEND, BROADCAST or QUEUE.
fn expect_invalid_injection(answer: &Value, what: &str) {
    assert_envelope(answer);
    assert_eq!(
        answer,
        &json!({"op": 3, "t": null,
                "d": {"error": "invalid dispatch payload", "extra_info": null},
                "ts": answer["ts"]}),
        "{what}"
    );
}

fn body(value: Value) -> Bytes {
    Bytes::from(value.to_string())
}

// === opening a session ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_request_is_answered_with_a_hello_carrying_a_32_hex_session_id() {
    let gw = start().await;
    let mut ids = Vec::new();
    for enc in Enc::ALL {
        let before = now_ms();
        let (mut client, hello) = gw.connect_nats(enc).await;
        assert_envelope(&hello);
        assert_eq!(
            hello,
            json!({"op": 0, "d": {"heartbeat_interval": 45000, "session": client.session},
                   "t": null, "ts": hello["ts"]}),
            "{enc:?}"
        );
        assert!(is_session_id(&client.session), "{}", client.session);
        let ts = hello["ts"].as_u64().expect("ts");
        assert!(before <= ts && ts <= now_ms());
        // The hello was the reply to the request: the first frame on the inbox is ready.
        client
            .send(json!({"op": 1, "d": {"application_id": "hello", "client_id": enc.name()}}))
            .await;
        let ready = client.recv().await;
        assert_eq!(
            ready,
            json!({"op": 2, "d": {"client_id": enc.name(), "restricted": false},
                   "t": null, "ts": ready["ts"]}),
            "{enc:?}"
        );
        ids.push(client.session.clone());
    }
    assert_ne!(ids[0], ids[1], "every session has its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_request_without_an_encoding_opens_a_json_session() {
    let gw = start().await;
    let nats = gw.nats_server().client().await;
    for request_body in [
        json!({"inbox": "svc.inbox.a"}),
        json!({"inbox": "svc.inbox.b", "encoding": null}),
    ] {
        let inbox_subject = request_body["inbox"].as_str().unwrap().to_owned();
        let mut inbox = nats.subscribe(inbox_subject).await.unwrap();
        let reply = request(
            &nats,
            format!("{PREFIX}.connect"),
            body(request_body.clone()),
        )
        .await;
        let hello: Value = serde_json::from_slice(&reply.payload).expect("a JSON hello");
        assert_eq!(hello["op"], 0);
        let session = hello["d"]["session"].as_str().unwrap().to_owned();
        nats.publish(
            format!("{PREFIX}.session.{session}"),
            body(json!({"op": 1, "d": {"application_id": "noenc", "client_id": session}})),
        )
        .await
        .unwrap();
        let ready = timeout(patience(), inbox.next()).await.unwrap().unwrap();
        let ready: Value = serde_json::from_slice(&ready.payload).expect("a JSON ready");
        assert_eq!(ready["op"], 2, "{request_body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etf_session_gets_an_etf_hello_whose_d_keys_are_binaries() {
    use eetf::Term;
    let gw = start().await;
    let nats = gw.nats_server().client().await;
    let reply = request(
        &nats,
        format!("{PREFIX}.connect"),
        body(json!({"inbox": "etf.inbox", "encoding": "etf"})),
    )
    .await;
    assert_eq!(reply.payload.first(), Some(&131), "an ETF term");
    let Term::Map(envelope) = Term::decode(&reply.payload[..]).expect("ETF") else {
        panic!("the hello is a map");
    };
    let mut d = None;
    for (key, value) in envelope.map {
        let Term::Atom(key) = key else {
            panic!("envelope keys are atoms: {key:?}")
        };
        if key.name == "d" {
            d = Some(value);
        }
    }
    let Some(Term::Map(d)) = d else {
        panic!("hello d is a map")
    };
    let mut d_keys: Vec<String> = d
        .map
        .into_iter()
        .map(|(key, value)| match (key, value) {
            (Term::Binary(key), Term::Binary(session)) => {
                assert!(is_session_id(std::str::from_utf8(&session.bytes).unwrap()));
                String::from_utf8(key.bytes).unwrap()
            }
            (Term::Binary(key), _) => String::from_utf8(key.bytes).unwrap(),
            (key, _) => panic!("hello d keys are binaries (SPEC §2.7): {key:?}"),
        })
        .collect();
    d_keys.sort();
    assert_eq!(d_keys, ["heartbeat_interval", "session"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_requests_get_the_json_op_8_and_open_no_session() {
    let gw = start().await;
    let server = gw.nats_server();
    let nats = server.client().await;
    let connect = format!("{PREFIX}.connect");
    // The first request also creates the client's reply subscription: count after it.
    let first = request(&nats, connect.clone(), Bytes::new()).await;
    expect_invalid_connect_request(&first.payload, "an empty body");
    let baseline = server.subscriptions().await;
    let cases: Vec<(&str, Bytes)> = vec![
        ("text", Bytes::from_static(b"inbox")),
        ("a JSON array", body(json!([{"inbox": "a"}]))),
        ("a JSON string", body(json!("a.b"))),
        ("no inbox", body(json!({"encoding": "json"}))),
        ("a null inbox", body(json!({"inbox": null}))),
        ("a number inbox", body(json!({"inbox": 5}))),
        ("an empty inbox", body(json!({"inbox": ""}))),
        ("a * wildcard", body(json!({"inbox": "svc.*"}))),
        ("a > wildcard", body(json!({"inbox": "svc.>"}))),
        ("a space", body(json!({"inbox": "svc inbox"}))),
        ("an empty token", body(json!({"inbox": "svc..inbox"}))),
        ("a trailing dot", body(json!({"inbox": "svc."}))),
        (
            "an inbox under the prefix",
            body(json!({"inbox": format!("{PREFIX}.session.x")})),
        ),
        (
            "an unknown encoding",
            body(json!({"inbox": "svc.a", "encoding": "xml"})),
        ),
        (
            "an encoding in capitals",
            body(json!({"inbox": "svc.a", "encoding": "JSON"})),
        ),
        (
            "a non-string encoding",
            body(json!({"inbox": "svc.a", "encoding": 1})),
        ),
        (
            "a MessagePack body",
            Bytes::from(rmp_serde::to_vec_named(&json!({"inbox": "svc.a"})).unwrap()),
        ),
    ];
    for (what, request_body) in cases {
        let reply = request(&nats, connect.clone(), request_body).await;
        expect_invalid_connect_request(&reply.payload, what);
    }
    // A session would have subscribed to its subject before the reply was published.
    assert_eq!(server.subscriptions().await, baseline, "no session opened");
    // The count does see a session: one for its inbox, one for its subject.
    let (_client, _) = NatsClient::open(nats.clone(), PREFIX, Enc::Json).await;
    assert_eq!(server.subscriptions().await, baseline + 2);
}

// === lifecycle (SPEC §4, as on the websocket) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_heartbeat_of_a_nats_session_gets_an_ack_with_its_client_id() {
    let gw = start().await;
    for enc in Enc::ALL {
        let mut client = gw.identify_nats(enc, "beat", enc.name()).await;
        for _ in 0..3 {
            client
                .send(json!({"op": 5, "d": {"client_id": enc.name()}}))
                .await;
        }
        for _ in 0..3 {
            let ack = client.recv().await;
            assert_eq!(
                ack,
                json!({"op": 6, "d": {"client_id": enc.name()}, "t": null, "ts": ack["ts"]})
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_session_that_does_not_identify_in_time_gets_op_8_and_loses_its_subject() {
    let gw = TestGateway::start_with_nats(|c| c.gateway.identify_timeout_ms = 300).await;
    let started = Instant::now();
    let (mut client, _) = gw.connect_nats(Enc::Msgpack).await;
    let d = client.expect_fatal("identify deadline exceeded").await;
    assert_eq!(
        d,
        json!({"error": "identify deadline exceeded", "extra_info": null})
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_session_without_heartbeats_gets_op_8_and_is_unregistered() {
    let gw = TestGateway::start_with_nats(|c| c.gateway.heartbeat_timeout_ms = Some(300)).await;
    let mut client = gw.identify_nats(Enc::Json, "silent", "c").await;
    let d = client.expect_fatal("heartbeat took too long").await;
    assert_eq!(
        d,
        json!({"error": "heartbeat took too long", "extra_info": null})
    );
    // Cleanup runs before the op 8 is sent (SPEC §4.8).
    assert_eq!(
        gw.query(json!({"application": "silent"})).await,
        Vec::<Value>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_message_closes_the_session_and_unregisters_the_client() {
    let gw = start().await;
    let mut watcher = gw
        .identify_with(
            Enc::Json,
            json!({"application_id": "watch", "client_id": "w", "receive_client_updates": true}),
        )
        .await;
    // A subscriber hears of its own arrival too.
    assert_eq!(
        watcher.recv().await["d"]["payload"],
        json!({"app": "watch", "client_id": "w"})
    );
    let client = gw.identify_nats(Enc::Json, "leaving", "c").await;
    let connected = watcher.recv().await;
    assert_eq!(connected["t"], "CLIENT_CONNECTED");
    assert_eq!(
        connected["d"]["payload"],
        json!({"app": "leaving", "client_id": "c"})
    );
    client.close().await;
    let disconnected = watcher.recv().await;
    assert_eq!(disconnected["t"], "CLIENT_DISCONNECTED");
    assert_eq!(
        disconnected["d"]["payload"],
        json!({"app": "leaving", "client_id": "c"})
    );
    assert_eq!(
        gw.query(json!({"application": "leaving"})).await,
        Vec::<Value>::new()
    );
    // The identity is free again.
    let mut again = gw.identify_nats(Enc::Json, "leaving", "c").await;
    again.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_session_subject_ends_that_session_only() {
    let gw = start().await;
    let mut bystander = gw.identify_nats(Enc::Json, "garbage", "bystander").await;
    for (enc, bytes) in [
        (Enc::Json, Bytes::from_static(b"{not json")),
        (Enc::Json, Bytes::from_static(b"[1,2]")),
        (Enc::Msgpack, Bytes::from_static(b"\xc1\xc1")),
        (Enc::Msgpack, Bytes::from_static(b"{\"op\":1}")),
    ] {
        let mut client = gw.identify_nats(enc, "garbage", "victim").await;
        client.send_bytes(bytes.clone()).await;
        client.expect_fatal("decode: payload: unrecoverable").await;
        // Later messages to the subject are dropped: nobody listens any more.
        client.wait_unsubscribed().await;
    }
    bystander.expect_nothing().await;
}

// === routing between NATS sessions and other transports ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_broadcast_cross_between_nats_sessions_and_websockets_both_ways() {
    let gw = start().await;
    for enc in Enc::ALL {
        let app = format!("cross-{}", enc.name());
        let mut ws = gw
            .identify_with(
                Enc::Json,
                json!({"application_id": app, "client_id": "ws",
                       "metadata": {"side": meta("string", "ws")}}),
            )
            .await;
        let mut nats = NatsClient::identify_with(
            &gw.nats_server().url(),
            PREFIX,
            enc,
            json!({"application_id": app, "client_id": "nats",
                   "metadata": {"side": meta("string", "nats")}}),
        )
        .await;
        let to = |side: &str| json!({"application": app, "ops": [{"path": "/side", "op": "$eq", "to": {"value": side}}]});
        let payload = json!({"text": "hé", "n": 1.5, "list": [1, null, true], "map": {"k": "v"}});
        ws.dispatch(
            "SEND",
            json!({"target": to("nats"), "nonce": "w2n", "payload": payload}),
        )
        .await;
        let got = nats.recv().await;
        assert_eq!(
            got,
            json!({"op": 4, "t": "SEND", "ts": got["ts"],
                   "d": {"target": null, "nonce": "w2n", "payload": payload}})
        );
        nats.dispatch(
            "SEND",
            json!({"target": to("ws"), "nonce": "n2w", "payload": payload}),
        )
        .await;
        let got = ws.recv().await;
        assert_eq!(
            got["d"],
            json!({"target": null, "nonce": "n2w", "payload": payload})
        );
        nats.dispatch(
            "BROADCAST",
            json!({"target": {"application": app}, "nonce": "b", "payload": 1}),
        )
        .await;
        for got in [ws.recv().await, nats.recv().await] {
            assert_eq!(got["t"], "BROADCAST");
            assert_eq!(got["d"]["nonce"], "b");
        }
        ws.expect_nothing().await;
        nats.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_nodes_lists_nats_sessions_with_a_null_ip_unless_identify_names_one() {
    let gw = start().await;
    let url = gw.nats_server().url();
    let _plain = NatsClient::identify_with(
        &url,
        PREFIX,
        Enc::Msgpack,
        json!({"application_id": "qn", "client_id": "plain"}),
    )
    .await;
    let mut advertised = NatsClient::identify_with(
        &url,
        PREFIX,
        Enc::Json,
        json!({"application_id": "qn", "client_id": "advertised", "ip": "http://10.0.0.5:8080"}),
    )
    .await;
    advertised
        .dispatch("QUERY_NODES", json!({"application": "qn", "nonce": 9}))
        .await;
    let reply = advertised.recv().await;
    assert_eq!(reply["t"], "QUERY_NODES");
    assert_eq!(reply["d"]["nonce"], 9);
    let mut nodes: Vec<(String, Value, Value, Value)> = reply["d"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["client_id"].as_str().unwrap().to_owned(),
                n["socket_ip"].clone(),
                n["metadata"]["ip"].clone(),
                n["metadata"]["encoding"].clone(),
            )
        })
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        nodes,
        vec![
            (
                "advertised".to_owned(),
                json!("http://10.0.0.5:8080"),
                json!("http://10.0.0.5:8080"),
                json!("json")
            ),
            (
                "plain".to_owned(),
                Value::Null,
                Value::Null,
                json!("msgpack")
            ),
        ]
    );
}

// === authentication (SPEC §4.4: one failed-auth key, `nats`, for every NATS session) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sessions_share_the_nats_failed_auth_key_and_restricted_sessions_are_restricted() {
    let gw = TestGateway::start_with_nats(|c| {
        c.auth.password = Some("s3cret".into());
        c.auth.max_failures_per_minute = 2;
    })
    .await;
    let url = gw.nats_server().url();
    let identify = |client_id: &str, auth: Value| json!({"application_id": "auth", "client_id": client_id, "auth": auth});
    let mut good =
        NatsClient::identify_with(&url, PREFIX, Enc::Json, identify("good", json!("s3cret"))).await;
    // A wrong password restricts; each NATS connection counts against the same key.
    let mut restricted = Vec::new();
    for id in ["wrong-1", "wrong-2"] {
        let (mut client, _) = NatsClient::connect(&url, PREFIX, Enc::Json).await;
        client
            .send(json!({"op": 1, "d": identify(id, json!("nope"))}))
            .await;
        let ready = client.recv().await;
        assert_eq!(ready["d"], json!({"client_id": id, "restricted": true}));
        restricted.push(client);
    }
    restricted[0]
        .dispatch(
            "SEND",
            json!({"target": {"application": "auth"}, "payload": 1}),
        )
        .await;
    let refused = restricted[0].recv().await;
    assert_eq!(
        refused["d"],
        json!({"error": "invalid dispatch type SEND (are you restricted?)"})
    );
    // Over the limit: even the right password is refused for the `nats` key...
    let (mut third, _) = NatsClient::connect(&url, PREFIX, Enc::Msgpack).await;
    third
        .send(json!({"op": 1, "d": identify("third", json!("s3cret"))}))
        .await;
    third.expect_fatal("too many failed auth attempts").await;
    // ...an identify without auth is not affected...
    let (mut anonymous, _) = NatsClient::connect(&url, PREFIX, Enc::Json).await;
    anonymous
        .send(json!({"op": 1, "d": {"application_id": "auth", "client_id": "anon"}}))
        .await;
    assert_eq!(
        anonymous.recv().await["d"],
        json!({"client_id": "anon", "restricted": true})
    );
    // ...and a websocket from 127.0.0.1 counts under its own key.
    let (mut ws, _) = gw.connect(Enc::Json).await;
    ws.send(json!({"op": 1, "d": identify("ws", json!("s3cret"))}))
        .await;
    assert_eq!(
        ws.recv().await["d"],
        json!({"client_id": "ws", "restricted": false})
    );
    good.expect_nothing().await;
}

// === injection on <prefix>.dispatch ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_send_reaches_one_client_and_reports_one_recipient() {
    let gw = start().await;
    let mut consumer = gw.identify(Enc::Msgpack, "svc", "c1").await;
    let injector = gw.nats_server().client().await;
    let answer = inject(
        &injector,
        PREFIX,
        body(
            json!({"t": "SEND", "d": {"target": {"application": "svc"}, "nonce": "n1",
                                        "payload": {"x": [1, "two"]}}}),
        ),
    )
    .await;
    expect_result(&answer, "SEND", json!("n1"), 1);
    let got = consumer.recv().await;
    assert_eq!(
        got,
        json!({"op": 4, "t": "SEND", "ts": got["ts"],
               "d": {"target": null, "nonce": "n1", "payload": {"x": [1, "two"]}}})
    );
    consumer.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_broadcast_reports_how_many_clients_it_was_handed_to() {
    let gw = start().await;
    let mut ws = gw.identify(Enc::Json, "fan", "ws").await;
    let mut tcp = TcpClient::identify_with(
        gw.tcp_addr.unwrap(),
        Enc::Msgpack,
        json!({"application_id": "fan", "client_id": "tcp"}),
    )
    .await;
    let mut nats = gw.identify_nats(Enc::Json, "fan", "nats").await;
    let injector = gw.nats_server().client().await;
    let answer = inject(
        &injector,
        PREFIX,
        body(json!({"t": "BROADCAST", "d": {"target": {"application": "fan"}, "payload": "all"}})),
    )
    .await;
    expect_result(&answer, "BROADCAST", Value::Null, 3);
    assert_eq!(ws.recv().await["d"]["payload"], "all");
    assert_eq!(tcp.recv().await["d"]["payload"], "all");
    assert_eq!(nats.recv().await["d"]["payload"], "all");
    ws.expect_nothing().await;
    tcp.expect_nothing().await;
    nats.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_droppable_injection_without_a_match_reports_zero_recipients() {
    let gw = start().await;
    let injector = gw.nats_server().client().await;
    for t in ["SEND", "BROADCAST"] {
        let answer = inject(
            &injector,
            PREFIX,
            body(
                json!({"t": t, "d": {"target": {"application": "nobody", "droppable": true},
                                      "nonce": {"id": 1}, "payload": 1}}),
            ),
        )
        .await;
        expect_result(&answer, t, json!({"id": 1}), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_errors_are_the_op_3_a_websocket_client_would_get() {
    let gw = start().await;
    let injector = gw.nats_server().client().await;
    let answer = inject(
        &injector,
        PREFIX,
        body(
            json!({"t": "SEND", "d": {"target": {"application": "nobody"}, "nonce": "n",
                                        "payload": 1}}),
        ),
    )
    .await;
    assert_eq!(
        expect_op3(&answer, "no_route"),
        json!({"t": "SEND", "nonce": "n", "target": {"application": "nobody"}})
    );
    let answer = inject(
        &injector,
        PREFIX,
        body(
            json!({"t": "BROADCAST", "d": {"target": {"application": "a",
                      "ops": [{"path": "x", "op": "$eq", "to": {"value": 1}}]},
                    "nonce": 7, "payload": null}}),
        ),
    )
    .await;
    assert_eq!(
        expect_op3(&answer, "invalid query"),
        json!({"reason": "path: must start with `/`, got: 'x'", "nonce": 7})
    );
    // A SEND without payload: the payload error, echoing the frame as a client's would be.
    let answer = inject(
        &injector,
        PREFIX,
        body(json!({"t": "SEND", "d": {"target": {"application": "a"}}, "ts": 5})),
    )
    .await;
    assert_eq!(
        expect_op3(&answer, "invalid dispatch payload"),
        json!({"op": 4, "t": "SEND", "ts": 5, "d": {"target": {"application": "a"}}})
    );
    let answer = inject(
        &injector,
        PREFIX,
        body(
            json!({"t": "QUEUE", "d": {"queue": "", "target": {"application": "a"},
                                         "nonce": 1, "payload": 1}}),
        ),
    )
    .await;
    assert_eq!(expect_op3(&answer, "invalid queue name")["queue"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_injections_and_other_events_get_invalid_dispatch_payload_with_null_extra_info()
{
    let gw = start().await;
    let injector = gw.nats_server().client().await;
    let cases: Vec<(&str, Bytes)> = vec![
        ("an empty body", Bytes::new()),
        ("text", Bytes::from_static(b"SEND")),
        ("a JSON array", body(json!([{"t": "SEND"}]))),
        ("a JSON number", body(json!(4))),
        (
            "MessagePack",
            Bytes::from(rmp_serde::to_vec_named(&json!({"t": "SEND", "d": {}})).unwrap()),
        ),
        ("no t", body(json!({"d": {"target": {}, "payload": 1}}))),
        ("a null t", body(json!({"t": null, "d": {}}))),
        ("a number t", body(json!({"t": 4, "d": {}}))),
        ("lower case", body(json!({"t": "send", "d": {}}))),
        (
            "QUERY_NODES",
            body(json!({"t": "QUERY_NODES", "d": {"application": "a"}})),
        ),
        (
            "UPDATE_METADATA",
            body(json!({"t": "UPDATE_METADATA", "d": {}})),
        ),
        (
            "QUEUE_REQUEST",
            body(json!({"t": "QUEUE_REQUEST", "d": {"queue": "q"}})),
        ),
        (
            "QUEUE_ACK",
            body(json!({"t": "QUEUE_ACK", "d": {"queue": "q", "id": "x"}})),
        ),
    ];
    for (what, request_body) in cases {
        let answer = inject(&injector, PREFIX, request_body).await;
        expect_invalid_injection(&answer, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_queue_is_confirmed_then_delivered_to_a_websocket_consumer() {
    let gw = start().await;
    let injector = gw.nats_server().client().await;
    let answer = inject(
        &injector,
        PREFIX,
        body(
            json!({"t": "QUEUE", "d": {"queue": "jobs", "target": {"application": "workers"},
                                         "nonce": "q1", "payload": {"job": 17}}}),
        ),
    )
    .await;
    assert_envelope(&answer);
    assert_eq!(answer["op"], 4);
    assert_eq!(answer["t"], "QUEUE_CONFIRM");
    assert_eq!(
        keys(&answer["d"]),
        key_set(&["queue", "nonce", "id"]),
        "{answer}"
    );
    assert_eq!(answer["d"]["queue"], "jobs");
    assert_eq!(answer["d"]["nonce"], "q1");
    let id = answer["d"]["id"].as_str().expect("an id").to_owned();
    let mut worker = gw.identify(Enc::Json, "workers", "w1").await;
    worker
        .dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}))
        .await;
    let delivery = worker.recv().await;
    assert_eq!(
        delivery,
        json!({"op": 4, "t": "QUEUE", "ts": delivery["ts"],
               "d": {"target": null, "nonce": "q1",
                     "payload": {"queue": "jobs", "id": id, "payload": {"job": 17}}}})
    );
    worker
        .dispatch("QUEUE_ACK", json!({"queue": "jobs", "id": id}))
        .await;
    worker.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injection_without_a_reply_subject_is_routed_and_nothing_is_published_for_it() {
    let gw = start().await;
    let mut consumer = gw.identify(Enc::Json, "quiet", "c").await;
    let server = gw.nats_server();
    let monitor = server.client().await;
    let mut everything = monitor.subscribe(">").await.unwrap();
    monitor.flush().await.unwrap();
    let injector = server.client().await;
    let dispatch = format!("{PREFIX}.dispatch");
    injector
        .publish(
            dispatch.clone(),
            body(
                json!({"t": "SEND", "d": {"target": {"application": "quiet"}, "payload": "fire"}}),
            ),
        )
        .await
        .unwrap();
    injector
        .publish(dispatch.clone(), Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    assert_eq!(consumer.recv().await["d"]["payload"], "fire");
    // A fence: the bridge handles injections one after another, so anything it published for
    // the two above reaches the monitor before the answer to this one.
    let fence_reply = "fence.reply";
    let mut fence = injector.subscribe(fence_reply).await.unwrap();
    injector
        .publish_with_reply(
            dispatch.clone(),
            fence_reply,
            body(
                json!({"t": "SEND", "d": {"target": {"application": "x", "droppable": true},
                                            "payload": 0}}),
            ),
        )
        .await
        .unwrap();
    let answer = timeout(patience(), fence.next()).await.unwrap().unwrap();
    expect_result(
        &serde_json::from_slice(&answer.payload).unwrap(),
        "SEND",
        Value::Null,
        0,
    );
    let mut seen = Vec::new();
    loop {
        let message = timeout(patience(), everything.next())
            .await
            .expect("the monitor sees the fence's answer")
            .unwrap();
        seen.push(message.subject.to_string());
        if message.subject.as_str() == fence_reply {
            break;
        }
    }
    assert_eq!(seen, [dispatch.as_str(), &dispatch, &dispatch, fence_reply]);
    consumer.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injector_is_never_a_recipient_nor_a_registered_client() {
    let gw = start().await;
    let mut only = gw.identify(Enc::Json, "solo", "only").await;
    let injector = gw.nats_server().client().await;
    // Every client, restricted ones included, in every application: the injector is not one.
    let answer = inject(
        &injector,
        PREFIX,
        body(json!({"t": "BROADCAST", "d": {"target": {"restricted": true}, "payload": 1}})),
    )
    .await;
    expect_result(&answer, "BROADCAST", Value::Null, 1);
    assert_eq!(only.recv().await["d"]["payload"], 1);
    // A SEND to anyone at all always lands on the one client.
    for n in 0..5 {
        let answer = inject(
            &injector,
            PREFIX,
            body(json!({"t": "SEND", "d": {"target": {"restricted": true}, "payload": n}})),
        )
        .await;
        expect_result(&answer, "SEND", Value::Null, 1);
        assert_eq!(only.recv().await["d"]["payload"], n);
    }
    let everyone = gw.query(json!({"restricted": true})).await;
    assert_eq!(everyone.len(), 1, "{everyone:?}");
    assert_eq!(everyone[0]["client_id"], "only");
    only.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_context_in_the_body_or_in_nats_headers_is_accepted_and_a_bad_one_ignored() {
    let gw = start().await;
    let mut consumer = gw.identify(Enc::Json, "traced", "c").await;
    let injector = gw.nats_server().client().await;
    let send = json!({"target": {"application": "traced"}, "payload": "t"});
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = inject(
        &injector,
        PREFIX,
        body(json!({"t": "SEND", "d": send,
                    "trace": {"traceparent": traceparent, "tracestate": "congo=t61rcWkgMzE"}})),
    )
    .await;
    let from_body = expect_traced_result(answer, "SEND", 1);
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    headers.insert("tracestate", "congo=t61rcWkgMzE");
    let answer = inject_with_headers(
        &injector,
        PREFIX,
        headers,
        body(json!({"t": "SEND", "d": send})),
    )
    .await;
    let from_headers = expect_traced_result(answer, "SEND", 1);
    let answer = inject(
        &injector,
        PREFIX,
        body(json!({"t": "SEND", "d": send, "trace": {"traceparent": "garbage"}})),
    )
    .await;
    expect_result(&answer, "SEND", Value::Null, 1);
    for expected in [Some(from_body), Some(from_headers), None] {
        let delivery = consumer.recv().await;
        assert_eq!(delivery["d"]["payload"], "t");
        assert_eq!(delivery.get("trace").cloned(), expected, "{delivery}");
    }
    consumer.expect_nothing().await;
}

/// A DISPATCH_RESULT that continues the trace of `00-4bf92f…-00f067aa0ba902b7-01` with
/// `tracestate` copied; returns its `trace`, which the deliveries carry too.
fn expect_traced_result(mut answer: Value, t: &str, recipients: u64) -> Value {
    let trace = answer
        .as_object_mut()
        .and_then(|frame| frame.remove("trace"))
        .unwrap_or_else(|| panic!("the answer carries trace: {answer}"));
    expect_result(&answer, t, Value::Null, recipients);
    let traceparent = trace["traceparent"].as_str().expect("a traceparent");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && traceparent.ends_with("-01"),
        "same trace id and flags: {traceparent}"
    );
    assert_ne!(
        &traceparent[36..52],
        "00f067aa0ba902b7",
        "ganglion's span is the parent"
    );
    assert_eq!(trace["tracestate"], "congo=t61rcWkgMzE");
    trace
}

// === drain, restarts, limits, start-up ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_says_goodbye_on_the_inbox_and_leaves_the_connect_subject() {
    let gw = start().await;
    let mut client = gw.identify_nats(Enc::Json, "drain", "c").await;
    let nats = client.nats.clone();
    // The node drains; the NATS server lives on (it belongs to the test, not the node).
    let server = {
        let mut gw = gw;
        let server = gw.nats.take().expect("NATS server");
        let drained = gw.drain_in_background();
        let closed = client.closed().await;
        assert_eq!(closed.frames.len(), 1, "{:?}", closed.frames);
        let goodbye = &closed.frames[0];
        assert_eq!(
            goodbye,
            &json!({"op": 7, "d": {"reason": "draining"}, "t": null, "ts": goodbye["ts"]})
        );
        timeout(patience(), drained)
            .await
            .expect("drained in time")
            .unwrap();
        server
    };
    // Nobody answers connect requests any more: another node of the queue group would.
    let refused = nats
        .request(format!("{PREFIX}.connect"), body(json!({"inbox": "late"})))
        .await
        .expect_err("no bridge listens");
    assert_eq!(refused.kind(), RequestErrorKind::NoResponders);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_session_keeps_working_across_a_nats_server_restart() {
    let mut gw = start().await;
    let mut ws = gw.identify(Enc::Json, "restart-ws", "ws").await;
    let mut client = gw.identify_nats(Enc::Msgpack, "restart", "c").await;
    client.expect_nothing().await;
    gw.nats.as_mut().expect("NATS server").restart().await;
    // Core NATS is at-most-once: a frame sent while either side is still reconnecting is lost.
    // Ask until an answer comes back, each question with its own nonce...
    let deadline = Instant::now() + patience();
    for attempt in 0.. {
        assert!(
            Instant::now() < deadline,
            "the session never answered after the restart"
        );
        client
            .dispatch(
                "QUERY_NODES",
                json!({"application": "restart", "nonce": attempt}),
            )
            .await;
        if let Some(reply) = client.recv_within(Duration::from_millis(250)).await {
            assert_eq!(reply["t"], "QUERY_NODES", "{reply}");
            break;
        }
    }
    // ...then fence off late answers to earlier questions with one more.
    client
        .dispatch(
            "QUERY_NODES",
            json!({"application": "restart", "nonce": "fence"}),
        )
        .await;
    loop {
        let reply = client.recv().await;
        assert_eq!(reply["t"], "QUERY_NODES", "{reply}");
        if reply["d"]["nonce"] == "fence" {
            assert_eq!(reply["d"]["nodes"][0]["client_id"], "c");
            break;
        }
    }
    // The same session, both ways, and new sessions open as before.
    ws.dispatch(
        "SEND",
        json!({"target": {"application": "restart"}, "nonce": 1, "payload": "to nats"}),
    )
    .await;
    assert_eq!(client.recv().await["d"]["payload"], "to nats");
    client
        .dispatch(
            "SEND",
            json!({"target": {"application": "restart-ws"}, "nonce": 2, "payload": "to ws"}),
        )
        .await;
    assert_eq!(ws.recv().await["d"]["payload"], "to ws");
    client.expect_nothing().await;
    let mut fresh = gw.identify_nats(Enc::Json, "restart", "fresh").await;
    fresh.expect_nothing().await;
    assert_eq!(gw.nats_connected(), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_limit_is_the_nats_servers_max_payload_when_that_is_smaller() {
    let server = NatsServer::start_with_config("max_payload: 4096").await;
    let gw = TestGateway::start_with_nats_server(server, |_| {}).await;
    let mut ws = gw.identify(Enc::Json, "big-ws", "ws").await;
    let mut client = gw.identify_nats(Enc::Json, "small", "c").await;
    // A frame under the limit goes through.
    ws.dispatch(
        "SEND",
        json!({"target": {"application": "small"}, "payload": "x".repeat(3000)}),
    )
    .await;
    assert_eq!(
        client.recv().await["d"]["payload"].as_str().unwrap().len(),
        3000
    );
    // Inbound, NATS itself refuses anything larger than its max_payload.
    let refused = client
        .nats
        .publish(client.subject.clone(), Bytes::from(vec![b' '; 5000]))
        .await;
    assert!(
        refused.is_err(),
        "the NATS client refuses a 5000-byte frame"
    );
    // Outbound, a frame NATS cannot carry ends the session with the limit it could carry.
    ws.dispatch(
        "SEND",
        json!({"target": {"application": "small"}, "payload": "x".repeat(5000)}),
    )
    .await;
    let d = client.expect_fatal("payload too large").await;
    assert_eq!(
        d,
        json!({"error": "payload too large", "extra_info": {"limit": 4096}})
    );
    ws.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_injections_over_max_frame_bytes_are_refused() {
    let gw = TestGateway::start_with_nats(|c| c.gateway.max_frame_bytes = 1000).await;
    for enc in Enc::ALL {
        let mut client = gw.identify_nats(enc, "limit", enc.name()).await;
        let big = json!({"op": 4, "t": "SEND",
                         "d": {"target": {"application": "limit"}, "payload": "x".repeat(1500)}});
        client.send_bytes(encode(enc, &big)).await;
        let d = client.expect_fatal("payload too large").await;
        assert_eq!(
            d,
            json!({"error": "payload too large", "extra_info": {"limit": 1000}})
        );
    }
    let injector = gw.nats_server().client().await;
    let answer = inject(
        &injector,
        PREFIX,
        body(
            json!({"t": "SEND", "d": {"target": {"application": "limit", "droppable": true},
                                        "payload": "x".repeat(1500)}}),
        ),
    )
    .await;
    expect_invalid_injection(&answer, "an injection over the limit");
    // Exactly at the limit is fine.
    let mut client = gw.identify_nats(Enc::Json, "limit", "edge").await;
    let mut frame = json!({"op": 5, "d": {"pad": ""}});
    let size = encode(Enc::Json, &frame).len();
    frame["d"]["pad"] = json!("x".repeat(1000 - size));
    let bytes = encode(Enc::Json, &frame);
    assert_eq!(bytes.len(), 1000);
    client.send_bytes(bytes).await;
    assert_eq!(client.recv().await["op"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_requests_are_shared_by_the_nodes_of_a_cluster() {
    let first = start().await;
    let url = first.nats_server().url();
    let second = TestGateway::start_with(|c| c.nats.url = Some(url.clone())).await;
    let nats = first.nats_server().client().await;
    let mut clients = Vec::new();
    for i in 0..16 {
        let (mut client, _) = NatsClient::open(nats.clone(), PREFIX, Enc::Json).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "spread", "client_id": format!("c{i}")}}))
            .await;
        assert_eq!(client.recv().await["op"], 2);
        clients.push(client);
    }
    let on_first = first.query(json!({"application": "spread"})).await.len();
    let on_second = second.query(json!({"application": "spread"})).await.len();
    assert_eq!(on_first + on_second, 16, "each session lives on one node");
    assert!(
        on_first > 0 && on_second > 0,
        "the queue group spreads sessions: {on_first} and {on_second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_is_unreachable_does_not_start_and_says_where_it_looked() {
    ganglion_tests::init_logs();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (url, shown) in [
        (
            format!("nats://127.0.0.1:{port}"),
            format!("nats://127.0.0.1:{port}"),
        ),
        (
            format!("nats://user:hunter2@127.0.0.1:{port}"),
            format!("nats://***@127.0.0.1:{port}"),
        ),
    ] {
        let mut config = Config {
            listen: "127.0.0.1:0".to_owned(),
            ..Config::default()
        };
        config.tcp.listen = "127.0.0.1:0".to_owned();
        config.queue.store = ganglion_gateway::config::StoreKind::Memory;
        config.nats.url = Some(url.clone());
        let error = match Gateway::start(config, &HashMap::new()).await {
            Ok(_) => panic!("a node started without its NATS at {url}"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.starts_with(&format!("cannot connect to NATS at {shown}: ")),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }
    // Without `nats.url` the bridge is off.
    let gw = TestGateway::start().await;
    assert_eq!(gw.nats_connected(), None);
}

/// The deployment SPEC §2.3 asks for: `<prefix>.>` restricted with NATS permissions. ganglion
/// alone listens on its subjects; a service may only publish to them and read its own inboxes.
const PERMISSIONS: &str = r#"
authorization {
  users = [
    { user: ganglion, password: "gang%l1on",
      permissions: { subscribe: "ganglion.>", publish: ">" } }
    { user: billing, password: "b1lling",
      permissions: { publish: ["ganglion.connect", "ganglion.session.*", "ganglion.dispatch"],
                     subscribe: "_INBOX_billing.>" } }
  ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_logs_in_with_the_credentials_of_its_url_and_works_under_permissions() {
    let server = NatsServer::start_with_config(PERMISSIONS).await;
    let port = server.port;
    // A wrong password stops the start-up, without the password in the error.
    let mut config = Config {
        listen: "127.0.0.1:0".to_owned(),
        ..Config::default()
    };
    config.tcp.listen = String::new();
    config.queue.store = ganglion_gateway::config::StoreKind::Memory;
    config.nats.url = Some(format!("nats://ganglion:wrong@127.0.0.1:{port}"));
    let error = match Gateway::start(config, &HashMap::new()).await {
        Ok(_) => panic!("a node started with a wrong NATS password"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.starts_with(&format!(
            "cannot connect to NATS at nats://***@127.0.0.1:{port}: "
        )),
        "{error}"
    );
    assert!(!error.contains("wrong"), "{error}");
    // The right one, escaped in the URL as URLs require.
    let gw = TestGateway::start_with_nats_server(server, |c| {
        c.nats.url = Some(format!("nats://ganglion:gang%25l1on@127.0.0.1:{port}"));
    })
    .await;
    let billing = timeout(
        patience(),
        async_nats::ConnectOptions::with_user_and_password("billing".into(), "b1lling".into())
            .custom_inbox_prefix("_INBOX_billing")
            .connect(format!("nats://127.0.0.1:{port}")),
    )
    .await
    .unwrap()
    .expect("billing connects");
    let (mut client, _) = NatsClient::open(billing.clone(), PREFIX, Enc::Json).await;
    client
        .send(json!({"op": 1, "d": {"application_id": "billing", "client_id": "b1"}}))
        .await;
    assert_eq!(client.recv().await["op"], 2);
    let answer = inject(
        &billing,
        PREFIX,
        body(json!({"t": "SEND", "d": {"target": {"application": "billing"}, "payload": 1}})),
    )
    .await;
    expect_result(&answer, "SEND", Value::Null, 1);
    assert_eq!(client.recv().await["d"]["payload"], 1);
    client.expect_nothing().await;
    assert_eq!(gw.nats_connected(), Some(true));
}
