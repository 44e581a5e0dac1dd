//! Query and dispatch conformance (SPEC §6, §7; checklist items 36–48): SEND, BROADCAST,
//! QUERY_NODES, `no_route`, `invalid query`, consistent hashing, selectors and the CLIENT_*
//! events, each over JSON and MessagePack, against a real node.
//!
//! "Nothing arrived" is always proven with [`Client::sync`]: a heartbeat's ack is ordered after
//! every frame queued for the connection before it.

use std::collections::{BTreeMap, BTreeSet};

use ganglion_tests::assert::{assert_envelope, expect_op3, key_set, keys};
use ganglion_tests::{Client, Enc, TestGateway, meta, now_ms};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

// === helpers ===

/// Asserts a delivered op 4 `t` with `{"target": null, "nonce", "payload"}` and returns the
/// nonce and the payload.
fn expect_delivery(frame: &Value, t: &str) -> (Value, Value) {
    assert_envelope(frame);
    assert_eq!(frame["op"], 4, "expected a {t} delivery, got {frame}");
    assert_eq!(frame["t"], t, "delivery t: {frame}");
    assert_eq!(
        keys(&frame["d"]),
        key_set(&["target", "nonce", "payload"]),
        "delivery d keys: {frame}"
    );
    assert_eq!(frame["d"]["target"], Value::Null, "target is null: {frame}");
    (frame["d"]["nonce"].clone(), frame["d"]["payload"].clone())
}

/// Every SEND/BROADCAST delivery pending for `client` (proven complete by a heartbeat), as
/// their nonces.
async fn pending_nonces(client: &mut Client, t: &str) -> Vec<Value> {
    client
        .sync()
        .await
        .iter()
        .map(|frame| expect_delivery(frame, t).0)
        .collect()
}

/// Identifies with metadata.
async fn identify_meta(
    gw: &TestGateway,
    enc: Enc,
    app: &str,
    client: &str,
    metadata: Value,
) -> Client {
    gw.identify_with(
        enc,
        json!({"application_id": app, "client_id": client, "metadata": metadata}),
    )
    .await
}

/// A subscriber to CLIENT_CONNECTED/CLIENT_DISCONNECTED, used to learn that a client's cleanup
/// has happened (the event is emitted by cleanup itself).
async fn watcher(gw: &TestGateway, enc: Enc) -> Client {
    let mut w = gw
        .identify_with(
            enc,
            json!({"application_id": "watch", "client_id": format!("watcher-{}", enc.name()),
                   "receive_client_updates": true}),
        )
        .await;
    let own = w.recv().await;
    expect_delivery(&own, "CLIENT_CONNECTED");
    w
}

/// Reads the watcher's events until `app/client` has disconnected.
async fn await_disconnect(watcher: &mut Client, app: &str, client: &str) {
    loop {
        let frame = watcher.recv().await;
        let (_, payload) =
            expect_delivery(&frame, frame["t"].as_str().unwrap_or("CLIENT_DISCONNECTED"));
        if frame["t"] == "CLIENT_DISCONNECTED"
            && payload == json!({"app": app, "client_id": client})
        {
            return;
        }
    }
}

// === item 36: SEND delivery shape ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_delivers_target_null_nonce_and_payload_and_the_sender_gets_nothing() {
    for enc in Enc::ALL {
        // A node per encoding: the identity `test-app-1/client-1` is the original's.
        let gw = TestGateway::start().await;
        let mut receiver = gw.identify(enc, "test-app-1", "client-1").await;
        let mut sender = gw
            .identify(enc, &format!("sender-app-{}", enc.name()), "sender")
            .await;
        for ops in [json!([]), Value::Null] {
            let before = now_ms();
            sender
                .dispatch(
                    "SEND",
                    json!({"target": {"application": "test-app-1", "optional": true, "ops": ops},
                           "payload": {}, "nonce": "1"}),
                )
                .await;
            let frame = receiver.recv().await;
            let after = now_ms();
            assert_eq!(
                frame,
                json!({"op": 4, "t": "SEND", "d": {"target": null, "nonce": "1", "payload": {}},
                       "ts": frame["ts"]}),
                "{enc:?} ops={ops}"
            );
            let ts = frame["ts"].as_u64().expect("integer ts");
            assert!(
                before <= ts && ts <= after,
                "ts {ts} is between {before} and {after}"
            );
            sender.expect_nothing().await;
            receiver.expect_nothing().await;
        }
        receiver.close().await;
        sender.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_the_sender_itself_when_it_is_the_only_match() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("solo-{}", enc.name());
        let mut solo = gw.identify(enc, &app, "me").await;
        for t in ["SEND", "BROADCAST"] {
            solo.dispatch(
                t,
                json!({"target": {"application": app}, "nonce": {"n": [1, 2.5]}, "payload": [null, true]}),
            )
            .await;
            let frame = solo.recv().await;
            let (nonce, payload) = expect_delivery(&frame, t);
            assert_eq!(nonce, json!({"n": [1, 2.5]}), "{enc:?} {t}");
            assert_eq!(payload, json!([null, true]), "{enc:?} {t}");
            solo.expect_nothing().await;
        }
        solo.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_and_nonce_pass_through_untouched_with_floats_kept_floats() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("echo-{}", enc.name());
        let mut receiver = gw.identify(enc, &app, "r").await;
        let mut sender = gw
            .identify(enc, &format!("sender-app-{}", enc.name()), "s")
            .await;
        let payloads = [
            json!({"x": 1.0, "i": 1, "neg": -1, "half": 0.5, "big": 1e300, "tiny": -1e-300}),
            json!({"nested": {"list": [1.0, 2, [3.0, {"deep": -0.25}]], "s": "é \"q\" \\ \n"}}),
            json!(null),
            json!("just a string"),
            json!(42),
            json!(2.0),
            json!([]),
            json!({"": "", "u64": u64::MAX, "i64": i64::MIN}),
        ];
        let nonces = [
            json!(null),
            json!(7),
            json!(-7),
            json!(7.0),
            json!("n"),
            json!({"a": 1}),
            json!([1, "x"]),
            json!(true),
        ];
        for (payload, nonce) in payloads.iter().zip(&nonces) {
            sender
                .dispatch(
                    "SEND",
                    json!({"target": {"application": app}, "nonce": nonce, "payload": payload}),
                )
                .await;
            let frame = receiver.recv().await;
            let (got_nonce, got_payload) = expect_delivery(&frame, "SEND");
            assert_eq!(&got_nonce, nonce, "{enc:?}");
            assert_eq!(&got_payload, payload, "{enc:?}");
        }
        // No nonce at all: the delivery still carries the key, as null.
        sender
            .dispatch(
                "SEND",
                json!({"target": {"application": app}, "payload": 1}),
            )
            .await;
        let frame = receiver.recv().await;
        assert_eq!(expect_delivery(&frame, "SEND"), (Value::Null, json!(1)));
        // Unknown members of d (`sender`) and of the envelope are ignored.
        sender
            .send(json!({"op": 4, "t": "SEND", "sender": "x", "ts": 5,
                         "d": {"target": {"application": app}, "payload": 2, "sender": "me"}}))
            .await;
        let frame = receiver.recv().await;
        assert_eq!(expect_delivery(&frame, "SEND"), (Value::Null, json!(2)));
        sender.expect_nothing().await;
        receiver.expect_nothing().await;
        receiver.close().await;
        sender.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_from_one_client_to_another_arrive_in_order() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("fifo-{}", enc.name());
        let mut receiver = gw.identify(enc, &app, "r").await;
        let mut sender = gw
            .identify(enc, &format!("sender-app-{}", enc.name()), "s")
            .await;
        for i in 0..200 {
            let t = if i % 2 == 0 { "SEND" } else { "BROADCAST" };
            sender
                .dispatch(
                    t,
                    json!({"target": {"application": app}, "nonce": i, "payload": null}),
                )
                .await;
        }
        for i in 0..200 {
            let frame = receiver.recv().await;
            let t = if i % 2 == 0 { "SEND" } else { "BROADCAST" };
            assert_eq!(expect_delivery(&frame, t).0, json!(i), "{enc:?}");
        }
        receiver.expect_nothing().await;
        sender.expect_nothing().await;
    }
}

// === item 37–39: the original's routing tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_map_metadata_are_reachable_by_contains_and_index_paths() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("test-app-{}", enc.name());
        let mut target = identify_meta(
            &gw,
            enc,
            &app,
            "client-1",
            json!({"test": meta("list", json!([1, 2, 3, 4, 5]))}),
        )
        .await;
        let mut sender = gw
            .identify(enc, &format!("sender-app-{}", enc.name()), "s")
            .await;
        let send = |op: &str, path: &str, value: Value| {
            json!({"target": {"application": app, "ops": [{"path": path, "op": op, "to": {"value": value}}]},
                   "nonce": path, "payload": "p"})
        };
        for (op, path) in [("$contains", "/test"), ("$eq", "/test/0")] {
            sender.dispatch("SEND", send(op, path, json!(1))).await;
            let frame = target.recv().await;
            assert_eq!(expect_delivery(&frame, "SEND"), (json!(path), json!("p")));
        }
        target
            .update_metadata(json!({"test": meta("map", json!({"key": [1, 2, 3, 4, 5]}))}))
            .await;
        sender
            .dispatch("SEND", send("$eq", "/test/key/0", json!(1)))
            .await;
        let frame = target.recv().await;
        assert_eq!(
            expect_delivery(&frame, "SEND"),
            (json!("/test/key/0"), json!("p"))
        );
        // A map is not an array: `$contains` no longer matches.
        let no_match = send("$contains", "/test", json!(1));
        sender.dispatch("SEND", no_match.clone()).await;
        let info = expect_op3(&sender.recv().await, "no_route");
        assert_eq!(
            info,
            json!({"t": "SEND", "nonce": "/test", "target": no_match["target"]})
        );
        sender.expect_nothing().await;
        target.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn and_operator_and_a_min_selector_deliver_to_the_matching_client() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("test-app-{}", enc.name());
        let mut target = identify_meta(
            &gw,
            enc,
            &app,
            "client-1",
            json!({"test": meta("integer", 15)}),
        )
        .await;
        let mut sender = gw
            .identify(enc, &format!("sender-app-{}", enc.name()), "s")
            .await;
        sender
            .dispatch(
                "SEND",
                json!({"target": {"application": app, "ops": [{"op": "$and", "with": [
                    {"path": "/test", "op": "$gt", "to": {"value": 10}},
                    {"path": "/test", "op": "$lt", "to": {"value": 20}}]}]},
                    "nonce": "and", "payload": {}}),
            )
            .await;
        let frame = target.recv().await;
        assert_eq!(expect_delivery(&frame, "SEND").0, "and");

        target
            .update_metadata(json!({"test": meta("integer", 1)}))
            .await;
        sender
            .dispatch(
                "SEND",
                json!({"target": {"application": app,
                                  "ops": [{"path": "/test", "op": "$eq", "to": {"value": 1}}],
                                  "selector": {"$min": "test"}},
                       "nonce": "min", "payload": {}}),
            )
            .await;
        let frame = target.recv().await;
        assert_eq!(expect_delivery(&frame, "SEND").0, "min");
        sender.expect_nothing().await;
        target.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_payload_routes_to_the_client_whose_key_matches() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("test-{}", enc.name());
        let mut wanted = identify_meta(
            &gw,
            enc,
            &app,
            "wanted",
            json!({"key": meta("string", "value")}),
        )
        .await;
        let mut other = identify_meta(
            &gw,
            enc,
            &app,
            "other",
            json!({"key": meta("string", "nope")}),
        )
        .await;
        let mut sender = gw
            .identify(enc, &format!("sender-app-{}", enc.name()), "s")
            .await;
        for _ in 0..10 {
            sender
                .dispatch(
                    "SEND",
                    json!({"target": {"application": app,
                                      "ops": [{"path": "/key", "op": "$eq", "to": {"value": "value"}}]},
                           "payload": "test"}),
                )
                .await;
        }
        sender.expect_nothing().await;
        let got = wanted.sync().await;
        assert_eq!(got.len(), 10, "{enc:?}: {got:?}");
        for frame in &got {
            assert_eq!(expect_delivery(frame, "SEND"), (Value::Null, json!("test")));
        }
        other.expect_nothing().await;
    }
}

// === item 40: the worked examples of SPEC §6.13 ===

enum Expect {
    Match,
    NoMatch,
    Invalid(&'static str),
}

/// Rows 1–32. Rows 1–28 are `ops` elements of `{"application": "api", "ops": [<element>]}`;
/// rows 29–32 are whole queries.
fn worked_examples() -> Vec<(u32, Value, Expect)> {
    use Expect::*;
    let elements: [(u32, &str, Expect); 28] = [
        (
            1,
            r#"{"path":"/region","op":"$eq","to":{"value":"eu-west"}}"#,
            Match,
        ),
        (
            2,
            r#"{"path":"/load","op":"$eq","to":{"value":42.0}}"#,
            Match,
        ),
        (
            3,
            r#"{"path":"/load","op":"$gt","to":{"value":"10"}}"#,
            NoMatch,
        ),
        (
            4,
            r#"{"path":"/region","op":"$gt","to":{"value":5}}"#,
            NoMatch,
        ),
        (
            5,
            r#"{"path":"/version","op":"$gt","to":{"value":"1.9.0"}}"#,
            Match,
        ),
        (
            6,
            r#"{"path":"/version","op":"$gte","to":{"value":"1.10.0-rc.1"}}"#,
            Match,
        ),
        (
            7,
            r#"{"path":"/tags","op":"$contains","to":{"value":"gpu"}}"#,
            Match,
        ),
        (
            8,
            r#"{"path":"/tags/2","op":"$eq","to":{"value":3}}"#,
            Match,
        ),
        (
            9,
            r#"{"path":"/limits/0","op":"$eq","to":{"value":"zero"}}"#,
            Match,
        ),
        (10, r#"{"path":"/key2","op":"$eq","to":{"value":7}}"#, Match),
        (
            11,
            r#"{"path":"/a~1b","op":"$eq","to":{"value":"slash"}}"#,
            Match,
        ),
        (
            12,
            r#"{"path":"/missing","op":"$ne","to":{"value":1}}"#,
            Match,
        ),
        (
            13,
            r#"{"path":"/missing","op":"$eq","to":{"value":null}}"#,
            NoMatch,
        ),
        (
            14,
            r#"{"path":"/region","op":"$in","to":{"value":["us-east","eu-west"]}}"#,
            Match,
        ),
        (
            15,
            r#"{"path":"/region","op":"$in","to":{"value":"eu-west"}}"#,
            Invalid("$in: operand must be a list"),
        ),
        (
            16,
            r#"{"op":"$or","with":[{"path":"/missing","op":"$eq","to":{"value":1}},{"path":"/beta","op":"$eq","to":{"value":true}}]}"#,
            Match,
        ),
        (17, r#"{"op":"$and","with":[]}"#, Match),
        (18, r#"{"op":"$or","with":[]}"#, NoMatch),
        (19, r#"{"op":"$nor","with":[]}"#, Match),
        (20, r#"{"load":{"$gte":40,"$lt":50}}"#, Match),
        (
            21,
            r#"{"path":"/load","op":"$lt","to":{"path":"/limits/rps","default":0}}"#,
            Match,
        ),
        (
            22,
            r#"{"path":"/load","op":"$lt","to":{"path":"/limits/burst","default":10}}"#,
            NoMatch,
        ),
        (
            23,
            r#"{"path":"/beta","op":"$eq","to":{"value":"true"}}"#,
            NoMatch,
        ),
        (
            24,
            r#"{"path":"/tags","op":"$eq","to":{"value":["gpu","ssd",3.0]}}"#,
            Match,
        ),
        (
            25,
            r#"{"path":"/region","op":"$contains","to":{"value":"eu"}}"#,
            NoMatch,
        ),
        (
            26,
            r#"{"path":"/tags","op":"$ncontains","to":{"value":"tpu"}}"#,
            Match,
        ),
        (27, r#"{"path":"/cpu","op":"$lte","to":{"value":1}}"#, Match),
        (
            28,
            r#"{"path":"/restricted","op":"$eq","to":{"value":false}}"#,
            Match,
        ),
    ];
    let queries: [(u32, &str, Expect); 4] = [
        (29, r#"{"application":"web","ops":[]}"#, NoMatch),
        (
            30,
            r#"{"application":"web","optional":true,"ops":[]}"#,
            NoMatch,
        ),
        (
            31,
            r#"{"application":"api","optional":"true","ops":[{"path":"/load","op":"$gt","to":{"value":1000}}]}"#,
            Match,
        ),
        (32, r#"{"application":["api"],"ops":[]}"#, NoMatch),
    ];
    let parse = |text: &str| -> Value { serde_json::from_str(text).expect("row JSON") };
    let mut rows: Vec<(u32, Value, Expect)> = elements
        .into_iter()
        .map(|(row, element, expect)| {
            (
                row,
                json!({"application": "api", "ops": [parse(element)]}),
                expect,
            )
        })
        .collect();
    rows.extend(
        queries
            .into_iter()
            .map(|(row, query, expect)| (row, parse(query), expect)),
    );
    rows
}

fn reference_metadata() -> Value {
    json!({
        "region":  meta("string", "eu-west"),
        "load":    meta("integer", 42),
        "cpu":     meta("float", 0.5),
        "version": meta("version", "1.10.0"),
        "tags":    meta("list", json!(["gpu", "ssd", 3])),
        "beta":    meta("boolean", true),
        "limits":  meta("map", json!({"rps": 100, "zones": ["a", "b"], "0": "zero"})),
        "key2":    meta("integer", 7),
        "a/b":     meta("string", "slash"),
    })
}

/// Sends each row's target as a SEND from a probe against the reference client of SPEC §6.13
/// and checks the stated result, with a node per encoding (the identity `api/api-1` is fixed).
async fn check_against_the_reference_client(rows: &[(u32, Value, Expect)]) {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut reference = identify_meta(&gw, enc, "api", "api-1", reference_metadata()).await;
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "sender")
            .await;
        for (row, target, expect) in rows {
            let payload = json!({"row": row, "f": 1.0});
            sender
                .dispatch(
                    "SEND",
                    json!({"target": target, "nonce": row, "payload": payload}),
                )
                .await;
            // The sender's heartbeat proves the SEND was routed; the reference's then proves
            // whether a delivery was queued for it.
            let to_sender = sender.sync().await;
            let to_reference = reference.sync().await;
            let context = format!(
                "{enc:?} row {row} {target}: sender got {to_sender:?}, reference got {to_reference:?}"
            );
            match expect {
                Expect::Match => {
                    assert!(to_sender.is_empty(), "{context}");
                    assert_eq!(to_reference.len(), 1, "{context}");
                    let (nonce, got) = expect_delivery(&to_reference[0], "SEND");
                    assert_eq!((nonce, got), (json!(row), payload), "{context}");
                }
                Expect::NoMatch => {
                    assert!(to_reference.is_empty(), "{context}");
                    assert_eq!(to_sender.len(), 1, "{context}");
                    let info = expect_op3(&to_sender[0], "no_route");
                    assert_eq!(
                        info,
                        json!({"t": "SEND", "nonce": row, "target": target}),
                        "{context}"
                    );
                }
                Expect::Invalid(reason) => {
                    assert!(to_reference.is_empty(), "{context}");
                    assert_eq!(to_sender.len(), 1, "{context}");
                    let info = expect_op3(&to_sender[0], "invalid query");
                    assert_eq!(info, json!({"reason": reason, "nonce": row}), "{context}");
                }
            }
        }
        sender.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worked_example_of_the_spec_gives_its_stated_result_as_a_send_target() {
    let rows = worked_examples();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=32).collect::<Vec<_>>()
    );
    check_against_the_reference_client(&rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_operands_and_legacy_forms_follow_the_spec_against_the_reference_client() {
    use Expect::*;
    let elements: Vec<(Value, Expect)> = vec![
        // Array indexes must be canonical and in bounds; otherwise the path is MISSING.
        (
            json!({"path": "/tags/1", "op": "$eq", "to": {"value": "ssd"}}),
            Match,
        ),
        (
            json!({"path": "/tags/01", "op": "$eq", "to": {"value": "ssd"}}),
            NoMatch,
        ),
        (
            json!({"path": "/tags/3", "op": "$eq", "to": {"value": null}}),
            NoMatch,
        ),
        (
            json!({"path": "/tags/-", "op": "$ne", "to": {"value": 1}}),
            Match,
        ),
        (
            json!({"path": "/tags/01", "op": "$nin", "to": {"value": ["ssd"]}}),
            Match,
        ),
        (
            json!({"path": "/limits/zones/1", "op": "$eq", "to": {"value": "b"}}),
            Match,
        ),
        (
            json!({"path": "/region/0", "op": "$ne", "to": {"value": "e"}}),
            Match,
        ),
        (
            json!({"path": "/a/b", "op": "$eq", "to": {"value": "slash"}}),
            NoMatch,
        ),
        // `$contains` only looks into arrays; `$ncontains` negates it exactly.
        (
            json!({"path": "/limits", "op": "$contains", "to": {"value": "rps"}}),
            NoMatch,
        ),
        (
            json!({"path": "/limits", "op": "$ncontains", "to": {"value": "rps"}}),
            Match,
        ),
        (
            json!({"path": "/tags", "op": "$contains", "to": {"value": 3.0}}),
            Match,
        ),
        // Deep equality of maps, numbers numerically.
        (
            json!({"path": "/limits", "op": "$eq", "to": {"value":
            {"rps": 100.0, "zones": ["a", "b"], "0": "zero"}}}),
            Match,
        ),
        (
            json!({"path": "/limits", "op": "$eq", "to": {"value": {"rps": 100}}}),
            NoMatch,
        ),
        // `value` wins over `path`; a path operand keeps its version typing.
        (
            json!({"path": "/load", "op": "$eq", "to": {"value": 42, "path": "/missing"}}),
            Match,
        ),
        (
            json!({"path": "/key2", "op": "$lt", "to": {"path": "/load"}}),
            Match,
        ),
        (
            json!({"path": "/region", "op": "$in", "to": {"path": "/load"}}),
            NoMatch,
        ),
        (
            json!({"path": "/region", "op": "$nin", "to": {"path": "/load"}}),
            Match,
        ),
        (
            json!({"path": "/region", "op": "$in", "to": {"path": "/missing", "default": ["eu-west"]}}),
            Match,
        ),
        // Versions: prerelease ordering and build metadata.
        (
            json!({"path": "/version", "op": "$lt", "to": {"value": "1.10.1-alpha"}}),
            Match,
        ),
        (
            json!({"path": "/version", "op": "$eq", "to": {"value": "1.10.0+sha.5"}}),
            Match,
        ),
        (
            json!({"path": "/version", "op": "$gt", "to": {"value": "1.10.0-rc.1"}}),
            Match,
        ),
        (
            json!({"path": "/version", "op": "$lte", "to": {"value": "1.10.0-zzz"}}),
            NoMatch,
        ),
        // Reserved keys.
        (
            json!({"path": "/encoding", "op": "$in", "to": {"value": ["json", "msgpack"]}}),
            Match,
        ),
        (
            json!({"path": "/ip", "op": "$eq", "to": {"value": "127.0.0.1"}}),
            Match,
        ),
        (
            json!({"path": "/namespace", "op": "$eq", "to": {"value": null}}),
            Match,
        ),
        (
            json!({"path": "/receive_client_updates", "op": "$eq", "to": {"value": false}}),
            Match,
        ),
        (
            json!({"path": "/last_heartbeat_time", "op": "$gt", "to": {"value": 1_600_000_000_000_u64}}),
            Match,
        ),
        // The legacy form in all its shapes.
        (
            json!({"load": {"$and": [{"$gt": 10}, {"$lt": 20}]}}),
            NoMatch,
        ),
        (json!({"load": {"$and": [{"$gt": 40}, {"$lt": 50}]}}), Match),
        (json!({"load": {"$or": [{"$eq": 1}, {"$eq": 42}]}}), Match),
        (json!({"load": {"$nor": [{"$eq": 1}, {"$eq": 2}]}}), Match),
        (
            json!({"region": {"$in": ["eu-west", "eu-north"]}, "beta": {"$eq": true}}),
            Match,
        ),
        (
            json!({"region": {"$in": ["eu-west"]}, "beta": {"$eq": false}}),
            NoMatch,
        ),
        (
            json!({"$or": [{"region": {"$eq": "us"}}, {"beta": {"$eq": true}}]}),
            Match,
        ),
        (
            json!({"$nor": [{"region": {"$eq": "us"}}, {"path": "/beta", "op": "$eq", "to": {"value": false}}]}),
            Match,
        ),
        (json!({"$and": []}), Match),
        (json!({"a/b": {"$eq": "slash"}}), Match),
        (
            json!({"tags": {"$contains": "gpu", "$ncontains": "tpu"}}),
            Match,
        ),
        (json!({"version": {"$gt": "1.9.0"}}), Match),
        (json!({"op": {"$eq": 1}}), NoMatch),
        (json!({"missing": {"$ne": 1}}), Match),
        (json!({"$foo": 1}), Invalid("op: unknown operator '$foo'")),
    ];
    let rows: Vec<(u32, Value, Expect)> = elements
        .into_iter()
        .enumerate()
        .map(|(i, (element, expect))| {
            (
                100 + i as u32,
                json!({"application": "api", "ops": [element]}),
                expect,
            )
        })
        .collect();
    check_against_the_reference_client(&rows).await;
}

// === item 41, 42: no_route and invalid query ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_echoes_the_target_verbatim_and_droppable_silences_it() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "sender")
            .await;
        let target = json!({"application": "none",
                            "ops": [{"path": "/a", "op": "$eq", "to": {"value": 1}}]});
        sender
            .dispatch(
                "SEND",
                json!({"target": target, "nonce": "n1", "payload": {}}),
            )
            .await;
        let frame = sender.recv().await;
        assert_eq!(
            frame,
            json!({"op": 3, "t": null, "ts": frame["ts"],
                   "d": {"error": "no_route",
                         "extra_info": {"t": "SEND", "nonce": "n1", "target": target}}}),
            "{enc:?}"
        );
        sender.expect_nothing().await;

        // The echo is the query as sent: unknown keys, floats, a selector, odd flag values.
        let odd = json!({"application": "none", "ops": null, "x-unknown": [1.0, {"k": null}],
                         "selector": {"$max": "/load"}, "key": 5, "restricted": "yes",
                         "optional": 1, "droppable": "false"});
        for t in ["SEND", "BROADCAST"] {
            sender
                .dispatch(t, json!({"target": odd, "payload": null}))
                .await;
            let info = expect_op3(&sender.recv().await, "no_route");
            assert_eq!(
                info,
                json!({"t": t, "nonce": null, "target": odd}),
                "{enc:?} {t}"
            );
        }

        for droppable in [json!("true"), json!(true)] {
            let mut dropped = target.clone();
            dropped["droppable"] = droppable;
            for t in ["SEND", "BROADCAST"] {
                sender
                    .dispatch(t, json!({"target": dropped, "nonce": "n1", "payload": {}}))
                    .await;
            }
            sender.expect_nothing().await;
        }
        sender.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_target_gets_invalid_query_with_the_nonce_and_the_connection_stays_open() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("api-{}", enc.name());
        let mut sender = gw.identify(enc, &app, "sender").await;
        let cases = [
            (
                json!(7),
                json!({"path": "/x", "op": "$in", "to": {"value": 5}}),
                "$in: operand must be a list",
            ),
            (
                json!({"n": 1}),
                json!({"path": "x", "op": "$eq", "to": {"value": 5}}),
                "path: must start with `/`, got: 'x'",
            ),
            (
                json!(null),
                json!({"path": "/x", "op": "$nin", "to": {"value": "a"}}),
                "$nin: operand must be a list",
            ),
        ];
        for (nonce, element, reason) in &cases {
            for t in ["SEND", "BROADCAST"] {
                sender
                    .dispatch(
                        t,
                        json!({"target": {"application": app, "ops": [element]},
                               "nonce": nonce, "payload": 1}),
                    )
                    .await;
                let frame = sender.recv().await;
                assert_eq!(
                    frame,
                    json!({"op": 3, "t": null, "ts": frame["ts"],
                           "d": {"error": "invalid query",
                                 "extra_info": {"reason": reason, "nonce": nonce}}}),
                    "{enc:?} {t}"
                );
            }
        }
        // Still open and still routing: the sender matches its own application.
        sender
            .dispatch(
                "SEND",
                json!({"target": {"application": app}, "nonce": 1, "payload": 2}),
            )
            .await;
        let frame = sender.recv().await;
        assert_eq!(expect_delivery(&frame, "SEND"), (json!(1), json!(2)));
        sender.expect_nothing().await;
    }
}

// === item 43: BROADCAST ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_match_exactly_once_including_the_sender() {
    let gw = TestGateway::start().await;
    // Mixed encodings in one application: each recipient gets the frame in its own encoding.
    let mut clients = vec![
        gw.identify(Enc::Json, "fan", "f-json").await,
        gw.identify(Enc::Msgpack, "fan", "f-msgpack").await,
        gw.identify(Enc::Json, "fan", "f-json-2").await,
    ];
    let mut outsider = gw.identify(Enc::Msgpack, "other", "o").await;
    let payload = json!({"reload": true, "f": 1.0, "list": [1, 1.5, "x"]});
    for sender in 0..clients.len() {
        clients[sender]
            .dispatch(
                "BROADCAST",
                json!({"target": {"application": "fan", "ops": []}, "payload": payload}),
            )
            .await;
        // The sender first: its heartbeat's ack proves the BROADCAST was handled, and so every
        // delivery queued, before the others' heartbeats (other connections are not ordered
        // with it).
        let order = std::iter::once(sender).chain((0..clients.len()).filter(|i| *i != sender));
        for i in order {
            let frames = clients[i].sync().await;
            assert_eq!(frames.len(), 1, "one BROADCAST each: {frames:?}");
            assert_eq!(
                expect_delivery(&frames[0], "BROADCAST"),
                (Value::Null, payload.clone())
            );
        }
        outsider.expect_nothing().await;
    }

    // `key` is ignored without a selector: still everyone.
    outsider
        .dispatch(
            "BROADCAST",
            json!({"target": {"application": "fan", "key": "user-42"}, "nonce": "k", "payload": 0}),
        )
        .await;
    outsider.expect_nothing().await;
    for client in &mut clients {
        assert_eq!(pending_nonces(client, "BROADCAST").await, vec![json!("k")]);
    }

    // A selector makes it a single recipient.
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .update_metadata(json!({"load": meta("integer", i as i64)}))
            .await;
    }
    outsider
        .dispatch(
            "BROADCAST",
            json!({"target": {"application": "fan", "selector": {"$max": "load"}},
                   "nonce": "max", "payload": 0}),
        )
        .await;
    outsider.expect_nothing().await;
    let counts: Vec<Vec<Value>> = {
        let mut counts = Vec::new();
        for client in &mut clients {
            counts.push(pending_nonces(client, "BROADCAST").await);
        }
        counts
    };
    assert_eq!(counts, vec![vec![], vec![], vec![json!("max")]]);
}

// === item 44: consistent hashing ===

/// How many SENDs each named client has pending; every pending frame must be a SEND.
async fn tally(clients: &mut BTreeMap<&'static str, Client>) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (name, client) in clients.iter_mut() {
        counts.insert(*name, pending_nonces(client, "SEND").await.len());
    }
    counts
}

/// Sends `n` SENDs with `key` to application `svc` and returns who received them.
async fn send_keyed(
    sender: &mut Client,
    clients: &mut BTreeMap<&'static str, Client>,
    key: &str,
    n: usize,
) -> BTreeMap<&'static str, usize> {
    for i in 0..n {
        sender
            .dispatch(
                "SEND",
                json!({"target": {"application": "svc", "key": key, "ops": []}, "nonce": i, "payload": key}),
            )
            .await;
    }
    sender.expect_nothing().await;
    tally(clients).await
}

/// The single client that received all `n`, asserting nobody else got any.
fn sole_winner(counts: &BTreeMap<&'static str, usize>, n: usize) -> &'static str {
    let winners: Vec<&'static str> = counts
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one recipient: {counts:?}");
    assert_eq!(counts[winners[0]], n, "it got every message: {counts:?}");
    winners[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_key_picks_the_same_client_while_the_match_set_is_stable() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut watch = watcher(&gw, enc).await;
        let mut clients: BTreeMap<&'static str, Client> = BTreeMap::new();
        for name in ["a", "b", "c", "d", "e"] {
            clients.insert(name, gw.identify(enc, "svc", name).await);
        }
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "sender")
            .await;

        let counts = send_keyed(&mut sender, &mut clients, "user-42", 100).await;
        let winner = sole_winner(&counts, 100);
        // Among a–d the vectors make `a` the winner; adding `e` can only move the key to `e`.
        assert!(winner == "a" || winner == "e", "{enc:?}: winner {winner}");

        // `c` never wins while `a` is there: removing it changes nothing.
        clients.remove("c").expect("c").close().await;
        await_disconnect(&mut watch, "svc", "c").await;
        let counts = send_keyed(&mut sender, &mut clients, "user-42", 100).await;
        assert_eq!(sole_winner(&counts, 100), winner, "{enc:?}");

        // Removing the winner moves every message to exactly one other client.
        clients.remove(winner).expect("winner").close().await;
        await_disconnect(&mut watch, "svc", winner).await;
        let counts = send_keyed(&mut sender, &mut clients, "user-42", 100).await;
        let next = sole_winner(&counts, 100);
        assert_ne!(next, winner);
        let allowed: &[&str] = if winner == "e" { &["a"] } else { &["b", "e"] };
        assert!(allowed.contains(&next), "{enc:?}: {winner} → {next}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_hashing_follows_the_spec_test_vectors() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut watch = watcher(&gw, enc).await;
        let mut clients: BTreeMap<&'static str, Client> = BTreeMap::new();
        for name in ["a", "b", "c", "d"] {
            clients.insert(name, gw.identify(enc, "svc", name).await);
        }
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "sender")
            .await;
        for (key, expected) in [("user-42", "a"), ("order-7", "d"), ("", "b")] {
            let counts = send_keyed(&mut sender, &mut clients, key, 20).await;
            assert_eq!(sole_winner(&counts, 20), expected, "{enc:?} key {key:?}");
        }
        // A non-string key is no key: the choice is random, but still exactly one recipient.
        sender
            .dispatch(
                "SEND",
                json!({"target": {"application": "svc", "key": 42}, "payload": 0}),
            )
            .await;
        sender.expect_nothing().await;
        let counts = tally(&mut clients).await;
        sole_winner(&counts, 1);

        clients.remove("c").expect("c").close().await;
        await_disconnect(&mut watch, "svc", "c").await;
        let counts = send_keyed(&mut sender, &mut clients, "user-42", 20).await;
        assert_eq!(sole_winner(&counts, 20), "a", "{enc:?}");

        clients.remove("a").expect("a").close().await;
        await_disconnect(&mut watch, "svc", "a").await;
        let counts = send_keyed(&mut sender, &mut clients, "user-42", 20).await;
        assert_eq!(sole_winner(&counts, 20), "b", "{enc:?}");
        let counts = send_keyed(&mut sender, &mut clients, "order-7", 20).await;
        assert_eq!(sole_winner(&counts, 20), "d", "{enc:?}");

        clients.remove("d").expect("d").close().await;
        await_disconnect(&mut watch, "svc", "d").await;
        let counts = send_keyed(&mut sender, &mut clients, "order-7", 20).await;
        assert_eq!(sole_winner(&counts, 20), "b", "{enc:?}");
    }
}

// === item 45: selectors ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_pick_min_max_and_nearest_average_and_skip_clients_without_the_key() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("sel-{}", enc.name());
        let mut clients: BTreeMap<&'static str, Client> = BTreeMap::new();
        for (name, load) in [
            ("l10", Some(10)),
            ("l20", Some(20)),
            ("l60", Some(60)),
            ("none", None),
        ] {
            let metadata = match load {
                Some(load) => json!({"load": meta("integer", load)}),
                None => json!({"other": meta("integer", 0)}),
            };
            clients.insert(name, identify_meta(&gw, enc, &app, name, metadata).await);
        }
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "sender")
            .await;
        let cases = [
            (json!({"$min": "load"}), "l10"),
            (json!({"$max": "load"}), "l60"),
            (json!({"$avg": "load"}), "l20"),
            (json!({"$min": "/load"}), "l10"),
            (json!({"$max": "/load"}), "l60"),
            (json!({"$avg": "/load"}), "l20"),
        ];
        for (selector, expected) in &cases {
            for i in 0..10 {
                sender
                    .dispatch(
                        "SEND",
                        json!({"target": {"application": app, "selector": selector},
                               "nonce": i, "payload": null}),
                    )
                    .await;
            }
            sender.expect_nothing().await;
            let counts = tally(&mut clients).await;
            assert_eq!(
                sole_winner(&counts, 10),
                *expected,
                "{enc:?} selector {selector}"
            );
        }

        // QUERY_NODES with a selector answers with the one best client.
        sender
            .dispatch(
                "QUERY_NODES",
                json!({"application": app, "selector": {"$max": "load"}}),
            )
            .await;
        let reply = sender.recv().await;
        let nodes = reply["d"]["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 1, "{reply}");
        assert_eq!(nodes[0]["client_id"], "l60");

        // A selector key no matching client has: no match.
        for key in ["nokey", "/other/x", "other"] {
            let target = json!({"application": app, "selector": {"$min": key},
                                "ops": [{"path": "/load", "op": "$gte", "to": {"value": 0}}]});
            sender
                .dispatch(
                    "SEND",
                    json!({"target": target, "nonce": "s", "payload": 1}),
                )
                .await;
            let info = expect_op3(&sender.recv().await, "no_route");
            assert_eq!(info, json!({"t": "SEND", "nonce": "s", "target": target}));
        }
        sender.expect_nothing().await;
        for client in clients.values_mut() {
            client.expect_nothing().await;
        }
    }
}

// === item 46: QUERY_NODES ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_nodes_answers_the_asker_with_client_objects_and_its_nonce() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("api-{}", enc.name());
        let mut member = identify_meta(
            &gw,
            enc,
            &app,
            "api-1",
            json!({"load": meta("integer", 42), "x": meta("float", 1), "cpu": meta("float", 0.5)}),
        )
        .await;
        let mut asker = gw
            .identify(enc, &format!("asker-{}", enc.name()), "q")
            .await;
        asker
            .dispatch("QUERY_NODES", json!({"application": app, "nonce": "q1"}))
            .await;
        let frame = asker.recv().await;
        assert_envelope(&frame);
        assert_eq!(
            (&frame["op"], &frame["t"]),
            (&json!(4), &json!("QUERY_NODES"))
        );
        assert_eq!(keys(&frame["d"]), key_set(&["nonce", "nodes"]), "{frame}");
        assert_eq!(frame["d"]["nonce"], "q1");
        let nodes = frame["d"]["nodes"].as_array().expect("nodes array");
        assert_eq!(nodes.len(), 1, "{frame}");
        let node = &nodes[0];
        assert_eq!(
            keys(node),
            key_set(&[
                "app_id",
                "client_id",
                "metadata",
                "metadata_types",
                "socket_ip",
                "queues",
                "node"
            ])
        );
        assert_eq!(node["app_id"], app.as_str());
        assert_eq!(node["client_id"], "api-1");
        assert_eq!(node["socket_ip"], "127.0.0.1");
        assert_eq!(node["queues"], json!([]));
        assert_eq!(node["node"], "test-node");
        let metadata = &node["metadata"];
        assert!(metadata["last_heartbeat_time"].is_u64(), "{metadata}");
        assert_eq!(
            *metadata,
            json!({"load": 42, "x": 1.0, "cpu": 0.5,
                   "last_heartbeat_time": metadata["last_heartbeat_time"],
                   "restricted": false, "encoding": enc.name(), "ip": "127.0.0.1",
                   "namespace": null, "receive_client_updates": false})
        );
        assert_eq!(
            node["metadata_types"],
            json!({"load": "integer", "x": "float", "cpu": "float",
                   "last_heartbeat_time": "integer", "restricted": "boolean",
                   "encoding": "string", "ip": "string", "namespace": "string",
                   "receive_client_updates": "boolean"})
        );

        // Nothing matches: an empty list, never no_route, even when droppable is false.
        for (query, nonce) in [
            (json!({"application": "nobody", "nonce": 5}), json!(5)),
            (
                json!({"application": app, "droppable": false,
                       "ops": [{"path": "/load", "op": "$gt", "to": {"value": 100}}]}),
                Value::Null,
            ),
        ] {
            asker.dispatch("QUERY_NODES", query).await;
            let frame = asker.recv().await;
            assert_eq!(
                frame,
                json!({"op": 4, "t": "QUERY_NODES", "ts": frame["ts"],
                       "d": {"nonce": nonce, "nodes": []}})
            );
        }

        // `key` is ignored: every match is listed; the asker itself can be listed.
        asker
            .dispatch(
                "QUERY_NODES",
                json!({"key": "user-42", "nonce": {"deep": [1.5]},
                       "ops": [{"path": "/encoding", "op": "$eq", "to": {"value": enc.name()}}]}),
            )
            .await;
        let frame = asker.recv().await;
        assert_eq!(frame["d"]["nonce"], json!({"deep": [1.5]}));
        let ids: BTreeSet<&str> = frame["d"]["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["client_id"].as_str().expect("client_id"))
            .collect();
        assert!(
            ids.contains("api-1") && ids.contains("q"),
            "{enc:?}: {ids:?}"
        );

        // An invalid query: op 3 with the nonce, and the connection stays open.
        asker
            .dispatch(
                "QUERY_NODES",
                json!({"application": app, "ops": 5, "nonce": "bad"}),
            )
            .await;
        let info = expect_op3(&asker.recv().await, "invalid query");
        assert_eq!(
            info,
            json!({"reason": "ops: must be a list", "nonce": "bad"})
        );
        asker.expect_nothing().await;
        member.expect_nothing().await;
        member.close().await;
        asker.close().await;
    }
}

// === item 47: unknown and malformed dispatches ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_dispatch_or_a_send_without_payload_gets_invalid_dispatch_payload() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("d-{}", enc.name());
        let mut client = gw.identify(enc, &app, "c").await;
        client
            .dispatch("FOO", json!({"anything": "as received"}))
            .await;
        let frame = client.recv().await;
        assert_eq!(
            frame,
            json!({"op": 3, "t": null, "ts": frame["ts"],
                   "d": {"error": "invalid dispatch payload",
                         "extra_info": {"op": 4, "t": "FOO", "ts": null,
                                        "d": {"anything": "as received"}}}}),
            "{enc:?}"
        );
        // `ts` is echoed as received.
        client
            .send(json!({"op": 4, "t": "CLIENT_CONNECTED", "ts": 123, "d": [1.0]}))
            .await;
        let info = expect_op3(&client.recv().await, "invalid dispatch payload");
        assert_eq!(
            info,
            json!({"op": 4, "t": "CLIENT_CONNECTED", "ts": 123, "d": [1.0]})
        );

        for t in ["SEND", "BROADCAST"] {
            let d = json!({"target": {"application": app}, "nonce": "x"});
            client.dispatch(t, d.clone()).await;
            let info = expect_op3(&client.recv().await, "invalid dispatch payload");
            assert_eq!(info, json!({"op": 4, "t": t, "ts": null, "d": d}));
            let d = json!({"payload": 1});
            client.dispatch(t, d.clone()).await;
            let info = expect_op3(&client.recv().await, "invalid dispatch payload");
            assert_eq!(info, json!({"op": 4, "t": t, "ts": null, "d": d}));
        }
        // The connection stays open and keeps routing.
        client
            .dispatch(
                "SEND",
                json!({"target": {"application": app}, "payload": null}),
            )
            .await;
        let frame = client.recv().await;
        assert_eq!(expect_delivery(&frame, "SEND"), (Value::Null, Value::Null));
        client.expect_nothing().await;
    }
}

// === item 48: CLIENT_CONNECTED / CLIENT_DISCONNECTED ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_each_connect_and_disconnect_exactly_once_and_others_see_nothing() {
    for enc in Enc::ALL {
        let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".into())).await;
        let mut subscriber = gw
            .identify_with(
                enc,
                json!({"application_id": "watch", "client_id": "sub", "auth": "s3cret",
                       "receive_client_updates": true}),
            )
            .await;
        // A subscriber gets its own CLIENT_CONNECTED, after its ready.
        let own = subscriber.recv().await;
        assert_eq!(
            own,
            json!({"op": 4, "t": "CLIENT_CONNECTED", "ts": own["ts"],
                   "d": {"target": null, "nonce": null,
                         "payload": {"app": "watch", "client_id": "sub"}}})
        );

        // A restricted client that asks for updates gets none, and is announced itself.
        let (mut restricted, _) = gw.connect(enc).await;
        restricted
            .send(
                json!({"op": 1, "d": {"application_id": "watch", "client_id": "restricted",
                                        "receive_client_updates": true}}),
            )
            .await;
        let ready = restricted.recv().await;
        assert_eq!(
            ready["d"],
            json!({"client_id": "restricted", "restricted": true})
        );
        // `"true"` as a string is not an opt-in.
        let mut stringly = gw
            .identify_with(
                enc,
                json!({"application_id": "watch", "client_id": "stringly", "auth": "s3cret",
                       "receive_client_updates": "true"}),
            )
            .await;

        let (mut api2, _) = gw.connect(enc).await;
        api2.send(
            json!({"op": 1, "d": {"application_id": "api", "client_id": "api-2",
                                        "auth": "s3cret"}}),
        )
        .await;
        assert_eq!(api2.recv().await["op"], 2);
        // A client op it may not send: op 8, and cleanup emits CLIENT_DISCONNECTED.
        api2.send(json!({"op": 2, "d": {}})).await;
        api2.expect_fatal("invalid client op :ready", 1008).await;

        let mut events = Vec::new();
        for _ in 0..4 {
            let frame = subscriber.recv().await;
            let (nonce, payload) = expect_delivery(&frame, frame["t"].as_str().unwrap_or(""));
            assert_eq!(nonce, Value::Null);
            events.push((frame["t"].clone(), payload));
        }
        assert_eq!(
            events,
            vec![
                (
                    json!("CLIENT_CONNECTED"),
                    json!({"app": "watch", "client_id": "restricted"})
                ),
                (
                    json!("CLIENT_CONNECTED"),
                    json!({"app": "watch", "client_id": "stringly"})
                ),
                (
                    json!("CLIENT_CONNECTED"),
                    json!({"app": "api", "client_id": "api-2"})
                ),
                (
                    json!("CLIENT_DISCONNECTED"),
                    json!({"app": "api", "client_id": "api-2"})
                ),
            ],
            "{enc:?}"
        );
        subscriber.expect_nothing().await;
        restricted.expect_nothing().await;
        stringly.expect_nothing().await;

        // A client that closes normally is announced once as well; it does not hear itself go.
        stringly.close().await;
        let frame = subscriber.recv().await;
        assert_eq!(
            expect_delivery(&frame, "CLIENT_DISCONNECTED").1,
            json!({"app": "watch", "client_id": "stringly"})
        );
        subscriber.expect_nothing().await;
        restricted.expect_nothing().await;
    }
}

// === match sets: operator semantics over many clients (SPEC §6.5–§6.8) ===

/// The names of the clients a BROADCAST with `ops` reaches (empty on `no_route`).
async fn broadcast_set(
    sender: &mut Client,
    clients: &mut BTreeMap<&'static str, Client>,
    app: &str,
    ops: Value,
) -> BTreeSet<&'static str> {
    let target = json!({"application": app, "ops": ops});
    sender
        .dispatch("BROADCAST", json!({"target": target, "payload": 0}))
        .await;
    let replies = sender.sync().await;
    match replies.as_slice() {
        [] => {}
        [op3] => {
            expect_op3(op3, "no_route");
        }
        other => panic!("unexpected replies to {target}: {other:?}"),
    }
    let mut reached = BTreeSet::new();
    for (name, client) in clients.iter_mut() {
        match pending_nonces(client, "BROADCAST").await.len() {
            0 => {}
            1 => {
                reached.insert(*name);
            }
            n => panic!("{name} got {n} copies of one BROADCAST"),
        }
    }
    assert_eq!(
        reached.is_empty(),
        !replies.is_empty(),
        "no_route exactly when nobody matched: {target}"
    );
    reached
}

fn cmp(path: &str, op: &str, value: Value) -> Value {
    json!([{"path": path, "op": op, "to": {"value": value}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_sets_follow_the_operator_table_across_many_clients_and_updates() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("ix-{}", enc.name());
        let mut watch = watcher(&gw, enc).await;
        let definitions: [(&'static str, Value); 5] = [
            (
                "c1",
                json!({"v": meta("version", "1.0.0"), "load": meta("integer", 10),
                       "tags": meta("list", json!(["a", 1])), "region": meta("string", "eu"),
                       "s": meta("string", "1.0.0")}),
            ),
            (
                "c2",
                json!({"v": meta("version", "1.0.0+build.7"), "load": meta("float", 10.0),
                       "tags": meta("list", json!(["b"])), "region": meta("string", "us")}),
            ),
            (
                "c3",
                json!({"v": meta("version", "1.10.0-rc.1"), "load": meta("integer", 20),
                       "tags": meta("list", json!([]))}),
            ),
            (
                "c4",
                json!({"v": meta("version", "2.0.0"), "load": meta("integer", u64::MAX),
                       "tags": meta("list", json!([[1]])), "region": meta("integer", 5)}),
            ),
            ("c5", json!({"other": meta("boolean", true)})),
        ];
        let mut clients: BTreeMap<&'static str, Client> = BTreeMap::new();
        for (name, metadata) in definitions {
            clients.insert(name, identify_meta(&gw, enc, &app, name, metadata).await);
        }
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "sender")
            .await;
        let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
        let cases: Vec<(Value, BTreeSet<&'static str>)> = vec![
            // Versions: precedence, build metadata ignored, pre-releases below releases.
            (cmp("/v", "$eq", json!("1.0.0")), set(&["c1", "c2"])),
            (cmp("/v", "$eq", json!("1.0.0+other")), set(&["c1", "c2"])),
            (cmp("/v", "$lte", json!("1.0.0")), set(&["c1", "c2"])),
            (cmp("/v", "$lt", json!("1.10.0")), set(&["c1", "c2", "c3"])),
            (cmp("/v", "$gt", json!("1.9.0")), set(&["c3", "c4"])),
            (cmp("/v", "$ne", json!("1.0.0")), set(&["c3", "c4", "c5"])),
            (cmp("/v", "$in", json!(["2.0.0+x", "9.9.9"])), set(&["c4"])),
            (
                cmp("/v", "$nin", json!(["1.0.0"])),
                set(&["c3", "c4", "c5"]),
            ),
            // A plain string is compared by bytes, even when it looks like a version.
            (cmp("/s", "$eq", json!("1.0.0+x")), set(&[])),
            (cmp("/s", "$eq", json!("1.0.0")), set(&["c1"])),
            // Numbers: integers and floats compare numerically and exactly.
            (cmp("/load", "$eq", json!(10)), set(&["c1", "c2"])),
            (cmp("/load", "$eq", json!(10.0)), set(&["c1", "c2"])),
            (cmp("/load", "$gt", json!(10)), set(&["c3", "c4"])),
            (cmp("/load", "$gte", json!(u64::MAX)), set(&["c4"])),
            (
                cmp("/load", "$lt", json!(1e300)),
                set(&["c1", "c2", "c3", "c4"]),
            ),
            (
                cmp("/load", "$gte", json!(18_446_744_073_709_551_616.0_f64)),
                set(&[]),
            ),
            (cmp("/load", "$gt", json!("5")), set(&[])),
            // Lists.
            (cmp("/tags", "$contains", json!(1)), set(&["c1"])),
            (cmp("/tags", "$contains", json!(1.0)), set(&["c1"])),
            (cmp("/tags", "$contains", json!([1])), set(&["c4"])),
            (
                cmp("/tags", "$ncontains", json!("a")),
                set(&["c2", "c3", "c4", "c5"]),
            ),
            (cmp("/tags", "$eq", json!([])), set(&["c3"])),
            (cmp("/tags/0", "$eq", json!("b")), set(&["c2"])),
            (cmp("/tags/0/0", "$eq", json!(1)), set(&["c4"])),
            // No cross-kind ordering; `$in` compares like `$eq`.
            (cmp("/region", "$gt", json!(4)), set(&["c4"])),
            (
                cmp("/region", "$in", json!(["eu", 5.0])),
                set(&["c1", "c4"]),
            ),
            (cmp("/region", "$gte", json!("")), set(&["c1", "c2"])),
            // Legacy form, logical operators, path operands.
            (
                json!([{"load": {"$gte": 10, "$lt": 20}}]),
                set(&["c1", "c2"]),
            ),
            (
                json!([{"op": "$nor", "with": cmp("/load", "$eq", json!(10))}]),
                set(&["c3", "c4", "c5"]),
            ),
            (
                json!([{"op": "$or", "with": [cmp("/region", "$eq", json!("us"))[0].clone(),
                                                cmp("/tags", "$contains", json!(1))[0].clone()]}]),
                set(&["c1", "c2"]),
            ),
            (
                json!([{"path": "/load", "op": "$lt", "to": {"path": "/nothing", "default": 15}}]),
                set(&["c1", "c2"]),
            ),
            (
                json!([{"path": "/v", "op": "$eq", "to": {"path": "/s"}}]),
                set(&["c1"]),
            ),
            (
                json!([{"path": "/other", "op": "$in", "to": {"path": "/tags", "default": [true]}}]),
                set(&["c5"]),
            ),
            // Sent again after the updates below: the sender's repeated target must be
            // matched again, not answered from before.
            (cmp("/load", "$gt", json!(25)), set(&["c4"])),
        ];
        for (ops, expected) in &cases {
            let got = broadcast_set(&mut sender, &mut clients, &app, ops.clone()).await;
            assert_eq!(&got, expected, "{enc:?} ops {ops}");
        }

        // Updates move clients in and out of the match sets at once.
        clients
            .get_mut("c1")
            .expect("c1")
            .update_metadata(json!({"load": meta("integer", 30)}))
            .await;
        clients
            .get_mut("c2")
            .expect("c2")
            .update_metadata(json!({"load": meta("string", "10")}))
            .await;
        for (ops, expected) in [
            (cmp("/load", "$gt", json!(25)), set(&["c1", "c4"])),
            (cmp("/load", "$eq", json!(10)), set(&[])),
            (cmp("/load", "$eq", json!("10")), set(&["c2"])),
            (cmp("/load", "$gt", json!(25)), set(&["c1", "c4"])),
            (
                cmp("/load", "$ne", json!(30)),
                set(&["c2", "c3", "c4", "c5"]),
            ),
            (cmp("/v", "$gt", json!("1.9.0")), set(&["c3", "c4"])),
        ] {
            let got = broadcast_set(&mut sender, &mut clients, &app, ops.clone()).await;
            assert_eq!(got, expected, "{enc:?} after updates, ops {ops}");
        }

        // A client that leaves stops matching.
        clients.remove("c3").expect("c3").close().await;
        await_disconnect(&mut watch, &app, "c3").await;
        let got = broadcast_set(
            &mut sender,
            &mut clients,
            &app,
            cmp("/v", "$gt", json!("1.9.0")),
        )
        .await;
        assert_eq!(got, set(&["c4"]), "{enc:?} after c3 left");
        let got = broadcast_set(&mut sender, &mut clients, &app, json!([])).await;
        assert_eq!(got, set(&["c1", "c2", "c4", "c5"]), "{enc:?}");
    }
}

// === more of SPEC §6.8: restricted, application, optional with selectors, ties ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_clients_match_only_queries_that_include_them() {
    for enc in Enc::ALL {
        let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".into())).await;
        let (mut restricted, _) = gw.connect(enc).await;
        restricted
            .send(json!({"op": 1, "d": {"application_id": "guarded", "client_id": "r"}}))
            .await;
        assert_eq!(restricted.recv().await["d"]["restricted"], true);
        let mut sender = gw
            .identify_with(
                enc,
                json!({"application_id": "probe", "client_id": "s", "auth": "s3cret"}),
            )
            .await;
        for flag in [
            json!(null),
            json!(false),
            json!("false"),
            json!(1),
            json!("True"),
        ] {
            let target = json!({"application": "guarded", "restricted": flag});
            sender
                .dispatch("SEND", json!({"target": target, "payload": 1}))
                .await;
            let info = expect_op3(&sender.recv().await, "no_route");
            assert_eq!(info["target"], target, "{enc:?}");
        }
        for flag in [json!(true), json!("true")] {
            sender
                .dispatch(
                    "SEND",
                    json!({"target": {"application": "guarded", "restricted": flag},
                           "nonce": flag, "payload": 1}),
                )
                .await;
            let frame = restricted.recv().await;
            assert_eq!(expect_delivery(&frame, "SEND"), (flag.clone(), json!(1)));
        }
        // QUERY_NODES follows the same rule.
        sender
            .dispatch("QUERY_NODES", json!({"application": "guarded"}))
            .await;
        assert_eq!(sender.recv().await["d"]["nodes"], json!([]));
        sender
            .dispatch(
                "QUERY_NODES",
                json!({"application": "guarded", "restricted": true}),
            )
            .await;
        let nodes = sender.recv().await["d"]["nodes"].clone();
        assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
        assert_eq!(nodes[0]["metadata"]["restricted"], true);
        assert_eq!(nodes[0]["socket_ip"], Value::Null);
        sender.expect_nothing().await;
        restricted.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_or_absent_application_matches_every_application() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let mark = format!("mark-{}", enc.name());
        let mut clients: BTreeMap<&'static str, Client> = BTreeMap::new();
        for (name, app) in [("x", "app-x"), ("y", "app-y"), ("z", "app-z")] {
            let app = format!("{app}-{}", enc.name());
            let metadata = if name == "z" {
                json!({})
            } else {
                json!({"mark": meta("string", mark.clone())})
            };
            clients.insert(name, identify_meta(&gw, enc, &app, name, metadata).await);
        }
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "s")
            .await;
        for application in [Some(json!(null)), None] {
            let mut target = json!({"ops": cmp("/mark", "$eq", json!(mark))});
            if let Some(application) = application {
                target["application"] = application;
            }
            sender
                .dispatch("BROADCAST", json!({"target": target, "payload": 0}))
                .await;
            sender.expect_nothing().await;
            let mut reached = BTreeSet::new();
            for (name, client) in clients.iter_mut() {
                if pending_nonces(client, "BROADCAST").await.len() == 1 {
                    reached.insert(*name);
                }
            }
            assert_eq!(reached, BTreeSet::from(["x", "y"]), "{enc:?} {target}");
        }
        // Application ids match exactly and case-sensitively.
        let target = json!({"application": format!("APP-X-{}", enc.name())});
        sender
            .dispatch("SEND", json!({"target": target, "payload": 0}))
            .await;
        expect_op3(&sender.recv().await, "no_route");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_optional_fallback_is_not_applied_again_after_the_selector() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("opt-{}", enc.name());
        let mut a =
            identify_meta(&gw, enc, &app, "a", json!({"region": meta("string", "eu")})).await;
        let mut b = identify_meta(&gw, enc, &app, "b", json!({"load": meta("string", "10")})).await;
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "s")
            .await;
        // Nobody is in `us`: the fallback is the whole application, where nobody has a numeric
        // `load` (a string does not take part), so the selector leaves nothing.
        let target = json!({"application": app, "optional": true, "selector": {"$max": "load"},
                            "ops": cmp("/region", "$eq", json!("us"))});
        sender
            .dispatch("SEND", json!({"target": target, "nonce": 1, "payload": 0}))
            .await;
        let info = expect_op3(&sender.recv().await, "no_route");
        assert_eq!(info, json!({"t": "SEND", "nonce": 1, "target": target}));
        // Without the selector the fallback delivers to one of the two.
        let target = json!({"application": app, "optional": true,
                            "ops": cmp("/region", "$eq", json!("us"))});
        sender
            .dispatch("SEND", json!({"target": target, "payload": 0}))
            .await;
        sender.expect_nothing().await;
        let got =
            pending_nonces(&mut a, "SEND").await.len() + pending_nonces(&mut b, "SEND").await.len();
        assert_eq!(got, 1, "{enc:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_ties_are_broken_by_the_key_for_send_and_broadcast() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut clients: BTreeMap<&'static str, Client> = BTreeMap::new();
        // All four tie on `tie`; `a`, `c` and `d` tie on `$avg` of `load` (mean 15, 5 away).
        for (name, load) in [("a", 10), ("b", 30), ("c", 10), ("d", 10)] {
            let metadata = json!({"load": meta("integer", load), "tie": meta("integer", 1)});
            clients.insert(name, identify_meta(&gw, enc, "svc", name, metadata).await);
        }
        let mut sender = gw
            .identify(enc, &format!("probe-{}", enc.name()), "s")
            .await;
        for (t, selector, key, expected) in [
            ("SEND", json!({"$min": "tie"}), "user-42", "a"),
            ("BROADCAST", json!({"$min": "tie"}), "user-42", "a"),
            ("SEND", json!({"$max": "tie"}), "order-7", "d"),
            ("BROADCAST", json!({"$max": "tie"}), "order-7", "d"),
            ("BROADCAST", json!({"$min": "tie"}), "", "b"),
            ("SEND", json!({"$avg": "load"}), "user-42", "a"),
            ("SEND", json!({"$avg": "load"}), "order-7", "d"),
        ] {
            for _ in 0..10 {
                sender
                    .dispatch(
                        t,
                        json!({"target": {"application": "svc", "selector": selector, "key": key},
                               "payload": 0}),
                    )
                    .await;
            }
            sender.expect_nothing().await;
            let mut counts = BTreeMap::new();
            for (name, client) in clients.iter_mut() {
                counts.insert(*name, pending_nonces(client, t).await.len());
            }
            assert_eq!(
                sole_winner(&counts, 10),
                expected,
                "{enc:?} {t} {selector} {key:?}"
            );
        }
        // Only `c` and `d` tie on `$min` of `load` once `a` is at 20; `order-7` prefers `d`.
        clients
            .get_mut("a")
            .expect("a")
            .update_metadata(json!({"load": meta("integer", 20)}))
            .await;
        sender
            .dispatch(
                "SEND",
                json!({"target": {"application": "svc", "selector": {"$min": "load"},
                                  "key": "order-7"}, "payload": 0}),
            )
            .await;
        sender.expect_nothing().await;
        assert_eq!(
            pending_nonces(clients.get_mut("d").expect("d"), "SEND")
                .await
                .len(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_identifies_are_not_announced_and_every_subscriber_hears_each_event_once() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut subscribers = Vec::new();
        for name in ["s1", "s2"] {
            let mut s = gw
                .identify_with(
                    enc,
                    json!({"application_id": "watch", "client_id": name,
                           "receive_client_updates": true}),
                )
                .await;
            // Each hears its own CLIENT_CONNECTED, and s1 hears s2's.
            let own = s.recv().await;
            assert_eq!(
                expect_delivery(&own, "CLIENT_CONNECTED").1["client_id"],
                name
            );
            subscribers.push(s);
        }
        let frame = subscribers[0].recv().await;
        assert_eq!(
            expect_delivery(&frame, "CLIENT_CONNECTED").1["client_id"],
            "s2"
        );

        let mut first = gw.identify(enc, "api", "dup").await;
        // A duplicate identity and an invalid identify never register: no events.
        let (mut dup, _) = gw.connect(enc).await;
        dup.send(json!({"op": 1, "d": {"application_id": "api", "client_id": "dup"}}))
            .await;
        dup.expect_fatal("dup: already registered for app api", 1008)
            .await;
        let (mut invalid, _) = gw.connect(enc).await;
        invalid
            .send(json!({"op": 1, "d": {"application_id": "api", "client_id": "a b"}}))
            .await;
        invalid
            .expect_fatal(
                "client_id: must not contain whitespace or control characters",
                1008,
            )
            .await;
        first.send(json!({"op": 0, "d": {}})).await;
        first.expect_fatal("invalid client op :hello", 1008).await;
        for s in &mut subscribers {
            let events: Vec<(Value, Value)> = s
                .sync()
                .await
                .iter()
                .map(|f| {
                    (
                        f["t"].clone(),
                        expect_delivery(f, f["t"].as_str().unwrap_or("")).1,
                    )
                })
                .collect();
            assert_eq!(
                events,
                vec![
                    (
                        json!("CLIENT_CONNECTED"),
                        json!({"app": "api", "client_id": "dup"})
                    ),
                    (
                        json!("CLIENT_DISCONNECTED"),
                        json!({"app": "api", "client_id": "dup"})
                    ),
                ],
                "{enc:?}"
            );
        }
    }
}

// === MessagePack outbound (SPEC §2.6) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_deliveries_use_str_strings_float64_and_the_smallest_integer_family() {
    let gw = TestGateway::start().await;
    let mut client = gw.identify(Enc::Msgpack, "mp-out", "c").await;
    // Only values for which exactly one family is smallest.
    let payload = json!([
        0,
        127,
        128,
        255,
        65535,
        4_294_967_295_u64,
        u64::MAX,
        -1,
        -32,
        -33,
        -128,
        -129,
        -32768,
        -2_147_483_648_i64,
        i64::MIN,
        1.0,
        -0.5,
        "s",
        null,
        true
    ]);
    let mut expected: Vec<u8> = vec![0xdc, 0x00, 20];
    expected.extend([0x00, 0x7f, 0xcc, 0x80, 0xcc, 0xff, 0xcd, 0xff, 0xff]);
    expected.extend([0xce, 0xff, 0xff, 0xff, 0xff]);
    expected.extend([0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    expected.extend([
        0xff, 0xe0, 0xd0, 0xdf, 0xd0, 0x80, 0xd1, 0xff, 0x7f, 0xd1, 0x80, 0x00,
    ]);
    expected.extend([0xd2, 0x80, 0x00, 0x00, 0x00]);
    expected.extend([0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend([0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    expected.extend([0xcb, 0xbf, 0xe0, 0, 0, 0, 0, 0, 0]);
    expected.extend([0xa1, b's', 0xc0, 0xc3]);
    client
        .dispatch(
            "SEND",
            json!({"target": {"application": "mp-out"}, "nonce": "n", "payload": payload}),
        )
        .await;
    let Some(Message::Binary(bytes)) = client.next_message().await else {
        panic!("a binary delivery");
    };
    assert!(
        bytes
            .windows(expected.len())
            .any(|w| w == expected.as_slice()),
        "the payload's exact bytes {expected:02x?} are in {:02x?}",
        &bytes[..]
    );
    // Envelope and `d` keys are str, as is the string `t`.
    for key in ["op", "d", "t", "ts", "target", "nonce", "payload", "SEND"] {
        let mut str_key = vec![0xa0 | key.len() as u8];
        str_key.extend_from_slice(key.as_bytes());
        assert!(
            bytes
                .windows(str_key.len())
                .any(|w| w == str_key.as_slice()),
            "{key} as a fixstr in {:02x?}",
            &bytes[..]
        );
    }
    let decoded: Value = rmp_serde::from_slice(&bytes).expect("msgpack");
    assert_eq!(decoded["d"]["payload"], payload);
    client.expect_nothing().await;
}

/// A MessagePack SEND or BROADCAST keeps `d`'s members in wire form on the way through
/// (docs/architecture.md, "the fast path"). Whatever families the sender chose, recipients of
/// every encoding get what they would get had it been decoded on arrival, and the errors echo
/// the decoded values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_members_in_any_family_are_delivered_as_their_values() {
    let gw = TestGateway::start().await;
    let mut json_recipient = gw.identify(Enc::Json, "raw", "j").await;
    let mut msgpack_recipient = gw.identify(Enc::Msgpack, "raw", "m").await;
    let mut sender = gw.identify(Enc::Msgpack, "raw-sender", "s").await;

    /// `{"op": 4, "t": t, "d": {"target": .., "nonce": .., "payload": ..}}`, members as given.
    fn frame(t: &str, target: &[u8], nonce: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![
            0x83,
            0xa2,
            b'o',
            b'p',
            0x04,
            0xa1,
            b't',
            0xa0 | t.len() as u8,
        ];
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(&[0xa1, b'd', 0x83]);
        for (key, value) in [("target", target), ("nonce", nonce), ("payload", payload)] {
            out.push(0xa0 | key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(value);
        }
        out
    }
    // {"application": "raw"}: a map16 header and a bin key.
    let target = [
        &[0xde, 0x00, 0x01, 0xc4, 11][..],
        b"application",
        &[0xa3],
        b"raw",
    ]
    .concat();
    // 9 as a uint16.
    let nonce = [0xcd, 0x00, 0x09];
    // [1 as uint16, "b" as bin, 1.5 as float32, {"b": 1, "a": 2} (keys out of order)]
    let odd = [
        &[
            0x94, 0xcd, 0x00, 0x01, 0xc4, 0x01, b'b', 0xca, 0x3f, 0xc0, 0x00, 0x00,
        ][..],
        &[0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x02],
    ]
    .concat();
    // {"k": [-33, 1.5, "normal"]} exactly as ganglion writes it.
    let normal = [
        &[
            0x81, 0xa1, b'k', 0x93, 0xd0, 0xdf, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
        ][..],
        &[0xa6],
        b"normal",
    ]
    .concat();
    let cases = [
        (
            odd,
            json!([1, "b", 1.5, {"a": 2, "b": 1}]),
            [0x94, 0x01, 0xa1, b'b', 0xcb, 0x3f, 0xf8].to_vec(),
        ),
        (normal.clone(), json!({"k": [-33, 1.5, "normal"]}), normal),
    ];
    for (payload, expected, expected_bytes) in cases {
        sender
            .send_raw(Message::binary(frame(
                "BROADCAST",
                &target,
                &nonce,
                &payload,
            )))
            .await;
        assert_eq!(
            expect_delivery(&json_recipient.recv().await, "BROADCAST"),
            (json!(9), expected.clone())
        );
        let Some(Message::Binary(bytes)) = msgpack_recipient.next_message().await else {
            panic!("a binary delivery");
        };
        assert!(
            bytes
                .windows(expected_bytes.len())
                .any(|w| w == expected_bytes.as_slice()),
            "{expected_bytes:02x?} in {:02x?}",
            &bytes[..]
        );
        let decoded: Value = rmp_serde::from_slice(&bytes).expect("msgpack");
        assert_eq!(expect_delivery(&decoded, "BROADCAST"), (json!(9), expected));
    }

    // Nobody matches: the echo is the target's value, the nonce's value.
    let nowhere = [&[0x81, 0xc4, 11][..], b"application", &[0xa4], b"none"].concat();
    sender
        .send_raw(Message::binary(frame("SEND", &nowhere, &nonce, &[0xc0])))
        .await;
    assert_eq!(
        expect_op3(&sender.recv().await, "no_route"),
        json!({"t": "SEND", "nonce": 9, "target": {"application": "none"}})
    );
    // Not a query: `invalid query` with the nonce.
    sender
        .send_raw(Message::binary(frame("SEND", &[0x07], &nonce, &[0xc0])))
        .await;
    assert_eq!(
        expect_op3(&sender.recv().await, "invalid query")["nonce"],
        9
    );
    // Damaged inside the payload: the connection is closed as for any undecodable frame.
    let mut damaged = frame("SEND", &target, &nonce, &[0x92, 0x01]);
    damaged.push(0xc1);
    sender.send_raw(Message::binary(damaged)).await;
    sender
        .expect_fatal("decode: payload: unrecoverable", 1008)
        .await;
    json_recipient.expect_nothing().await;
    msgpack_recipient.expect_nothing().await;
}

/// The JSON fast path end to end: a payload written in any JSON text reaches a JSON recipient
/// exactly as ganglion writes its value (compact, keys sorted, the last repeated key, its own
/// escapes) and a MessagePack recipient as that value; text already in that form arrives as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_payload_text_in_any_form_is_delivered_as_its_value() {
    let gw = TestGateway::start().await;
    let mut json_rx = gw.identify(Enc::Json, "fp", "j").await;
    let mut msgpack_rx = gw.identify(Enc::Msgpack, "fp", "m").await;
    let mut sender = gw.identify(Enc::Json, "fp-sender", "s").await;
    // (as sent, as ganglion writes its value)
    let payloads = [
        (r#"{"b": 1, "a" :[ 1 ,2 ]}"#, r#"{"a":[1,2],"b":1}"#),
        (r#""\u0041\/\u00e9\n""#, r#""A/é\n""#),
        ("-0", "0"),
        ("1E2", "100.0"),
        (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
        (r#""\ud83d\ude00""#, "\"\u{1f600}\""),
        (
            r#"{"k":"v","n":[true,null,-5]}"#,
            r#"{"k":"v","n":[true,null,-5]}"#,
        ),
    ];
    for (sent, written) in payloads {
        let frame = format!(
            r#"{{"op":4,"t":"BROADCAST","d":{{"target":{{"application":"fp"}},"payload":{sent}}}}}"#
        );
        sender.send_raw(Message::Text(frame.into())).await;
        let Some(Message::Text(got)) = json_rx.next_message().await else {
            panic!("{sent}: no text delivery");
        };
        assert!(
            got.contains(&format!(r#""payload":{written}}}"#)),
            "{sent}: {got}"
        );
        let (_, payload) = expect_delivery(&msgpack_rx.recv().await, "BROADCAST");
        assert_eq!(
            payload,
            serde_json::from_str::<Value>(written).unwrap(),
            "{sent}"
        );
    }
    sender.expect_nothing().await;
}
