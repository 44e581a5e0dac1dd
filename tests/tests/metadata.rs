//! Metadata conformance (SPEC §5, §7.2; checklist items 29–35): validation with its exact
//! per-key messages and precedence, atomicity, synchronous visibility, merge and replace, and
//! the size limit, over JSON and MessagePack against a real node.

use std::collections::BTreeSet;

use ganglion_core::metadata::UpdateStrategy;
use ganglion_tests::assert::keys;
use ganglion_tests::{Client, Enc, TestGateway, meta};
use serde_json::{Map, Value, json};

const RESERVED: [&str; 6] = [
    "last_heartbeat_time",
    "restricted",
    "encoding",
    "ip",
    "namespace",
    "receive_client_updates",
];

// === helpers ===

/// Asserts that the next frame is exactly op 3 `invalid metadata` with `extra_info` and nothing
/// else is pending.
async fn expect_invalid_metadata(client: &mut Client, extra_info: Value) {
    let frames = client.sync().await;
    assert_eq!(frames.len(), 1, "one op 3 expected, got {frames:?}");
    let frame = &frames[0];
    assert_eq!(
        *frame,
        json!({"op": 3, "t": null, "ts": frame["ts"],
               "d": {"error": "invalid metadata", "extra_info": extra_info}})
    );
    assert!(frame["ts"].is_u64(), "{frame}");
}

/// The client objects QUERY_NODES returns for `query`.
async fn query_nodes(client: &mut Client, query: Value) -> Vec<Value> {
    client.dispatch("QUERY_NODES", query).await;
    let frame = client.recv().await;
    assert_eq!(frame["t"], "QUERY_NODES", "{frame}");
    frame["d"]["nodes"].as_array().expect("nodes").clone()
}

/// `app/client`'s object, as QUERY_NODES shows it to `asker`.
async fn client_object(asker: &mut Client, app: &str, client: &str) -> Value {
    let nodes = query_nodes(
        asker,
        json!({"application": app,
               "ops": [{"path": "/encoding", "op": "$ne", "to": {"value": null}}]}),
    )
    .await;
    nodes
        .into_iter()
        .find(|n| n["client_id"] == client)
        .unwrap_or_else(|| panic!("{app}/{client} is registered"))
}

/// The user-defined part of a client object's `metadata` and `metadata_types`.
fn user_metadata(object: &Value) -> (Value, Value) {
    let strip = |v: &Value| {
        let mut map: Map<String, Value> = v.as_object().expect("object").clone();
        for key in RESERVED {
            assert!(map.remove(key).is_some(), "reserved key {key} present: {v}");
        }
        Value::Object(map)
    };
    (strip(&object["metadata"]), strip(&object["metadata_types"]))
}

/// Whether a SEND from `sender` with these `ops` reaches `receiver` (true) or gets `no_route`
/// (false).
async fn routes(sender: &mut Client, receiver: &mut Client, app: &str, ops: Value) -> bool {
    let target = json!({"application": app, "ops": ops});
    sender
        .dispatch(
            "SEND",
            json!({"target": target, "nonce": "probe", "payload": "p"}),
        )
        .await;
    let to_sender = sender.sync().await;
    let to_receiver = receiver.sync().await;
    match (to_sender.as_slice(), to_receiver.as_slice()) {
        ([], [delivery]) => {
            assert_eq!(
                delivery["d"],
                json!({"target": null, "nonce": "probe", "payload": "p"})
            );
            true
        }
        ([op3], []) => {
            assert_eq!(op3["d"]["error"], "no_route", "{op3}");
            false
        }
        other => panic!("unexpected frames: {other:?}"),
    }
}

fn eq(path: &str, value: Value) -> Value {
    json!([{"path": path, "op": "$eq", "to": {"value": value}}])
}

fn nested_list(depth: usize) -> Value {
    let mut value = json!(0);
    for _ in 0..depth {
        value = json!([value]);
    }
    value
}

fn nested_map(depth: usize) -> Value {
    let mut value = json!(0);
    for _ in 0..depth {
        value = json!({"m": value});
    }
    value
}

// === item 29: synchronous visibility ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_visible_to_the_very_next_frame_of_the_same_client() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("test-app-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        // Back to back, without waiting: the SEND is processed after the update.
        a.dispatch("UPDATE_METADATA", json!({"test": meta("integer", 10)}))
            .await;
        a.dispatch(
            "SEND",
            json!({"target": {"application": app, "ops": eq("/test", json!(10))},
                   "nonce": 1, "payload": "hi"}),
        )
        .await;
        let frame = a.recv().await;
        assert_eq!(
            frame,
            json!({"op": 4, "t": "SEND", "ts": frame["ts"],
                   "d": {"target": null, "nonce": 1, "payload": "hi"}})
        );
        a.expect_nothing().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_visible_to_another_client_without_any_delay() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("test-app-1-{}", enc.name());
        let mut a = gw.identify(enc, &app, "client-1").await;
        let mut b = gw
            .identify(enc, &format!("other-app-{}", enc.name()), "client-2")
            .await;
        let ops = eq("/test", json!(10));
        assert!(!routes(&mut b, &mut a, &app, ops.clone()).await);
        // The update is applied before A's next frame (the heartbeat of `update_metadata`), so
        // B's SEND right after must see it; no sleep anywhere.
        a.update_metadata(json!({"test": meta("integer", 10)}))
            .await;
        assert!(routes(&mut b, &mut a, &app, ops.clone()).await);
        a.update_metadata(json!({"test": meta("integer", 11)}))
            .await;
        assert!(!routes(&mut b, &mut a, &app, ops).await);
        assert!(routes(&mut b, &mut a, &app, eq("/test", json!(11))).await);
    }
}

// === item 30: float accepts integers; version validation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_entry_accepts_an_integer_and_stores_a_float() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("f-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        let mut b = gw
            .identify(enc, &format!("other-app-{}", enc.name()), "b")
            .await;
        a.update_metadata(json!({"x": meta("float", 1)})).await;
        assert!(routes(&mut b, &mut a, &app, eq("/x", json!(1.0))).await);
        assert!(routes(&mut b, &mut a, &app, eq("/x", json!(1))).await);

        let object = client_object(&mut b, &app, "a").await;
        assert_eq!(
            user_metadata(&object),
            (json!({"x": 1.0}), json!({"x": "float"}))
        );
        let http = gw.query(json!({"application": app})).await;
        assert_eq!(http.len(), 1);
        assert_eq!(http[0]["metadata"]["x"], json!(1.0));
        assert_eq!(http[0]["metadata_types"]["x"], "float");

        a.dispatch("UPDATE_METADATA", json!({"v": meta("version", "1.0")}))
            .await;
        expect_invalid_metadata(
            &mut a,
            json!({"v": "v: value fails validation for 'version'"}),
        )
        .await;
    }
}

// === item 31: the SPEC §5.4 example ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_example_update_gets_exactly_its_op_3_and_stores_nothing() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("ex-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        a.dispatch(
            "UPDATE_METADATA",
            json!({"a": {"type": "nope", "value": 1},
                   "ip": {"type": "string", "value": "x"},
                   "n": {"type": "integer", "value": 1.5},
                   "ok": {"type": "string", "value": "fine"}}),
        )
        .await;
        expect_invalid_metadata(
            &mut a,
            json!({"a": "a: type 'nope' doesn't exist",
                   "ip": "ip: forbidden metadata key",
                   "n": "n: value fails validation for 'integer'"}),
        )
        .await;
        let object = client_object(&mut a, &app, "a").await;
        assert_eq!(user_metadata(&object), (json!({}), json!({})));
        assert_eq!(object["metadata"]["ip"], "127.0.0.1", "ip untouched");
    }
}

// === item 32: malformed entries ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_entry_gets_op_3_and_the_connection_stays_open() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("m-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        a.dispatch("UPDATE_METADATA", json!({"a": 5})).await;
        expect_invalid_metadata(
            &mut a,
            json!({"a": "a: malformed entry (expected an object with 'type' and 'value')"}),
        )
        .await;
        // Still open, still accepting updates.
        a.update_metadata(json!({"a": meta("integer", 5)})).await;
        let object = client_object(&mut a, &app, "a").await;
        assert_eq!(user_metadata(&object).0, json!({"a": 5}));
    }
}

// === item 33: types ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_entries_keep_their_values_and_report_their_types() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("t-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        a.update_metadata(json!({
            "s": meta("string", "hello"),
            "empty": meta("string", ""),
            "i": meta("integer", -5),
            "big": meta("integer", u64::MAX),
            "small": meta("integer", i64::MIN),
            "f": meta("float", 2.5),
            "m": meta("map", json!({"nested": [1, 2.0, {"k": null}], "s": "x"})),
            "em": meta("map", json!({})),
            "l": meta("list", json!([1, "two", 3.0, null, [true], {"k": "v"}])),
            "el": meta("list", json!([])),
            "b": meta("boolean", false),
            "v": meta("version", "1.0.0-alpha.1+build.5"),
            "vmax": meta("version", "18446744073709551615.0.0"),
            "extra": {"type": "integer", "value": 3, "ignored": [1, 2]},
        }))
        .await;
        let object = client_object(&mut a, &app, "a").await;
        assert_eq!(
            user_metadata(&object),
            (
                json!({"s": "hello", "empty": "", "i": -5, "big": u64::MAX, "small": i64::MIN,
                       "f": 2.5, "m": {"nested": [1, 2.0, {"k": null}], "s": "x"}, "em": {},
                       "l": [1, "two", 3.0, null, [true], {"k": "v"}], "el": [], "b": false,
                       "v": "1.0.0-alpha.1+build.5", "vmax": "18446744073709551615.0.0",
                       "extra": 3}),
                json!({"s": "string", "empty": "string", "i": "integer", "big": "integer",
                       "small": "integer", "f": "float", "m": "map", "em": "map", "l": "list",
                       "el": "list", "b": "boolean", "v": "version", "vmax": "version",
                       "extra": "integer"}),
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_the_wrong_type_fail_validation_with_the_type_in_the_message() {
    let gw = TestGateway::start().await;
    let cases: Vec<(&str, Value)> = vec![
        ("string", json!(1234567890)),
        ("string", json!(true)),
        ("string", json!(["a"])),
        ("integer", json!(1.0)),
        ("integer", json!("1")),
        ("integer", json!(true)),
        ("integer", json!(1.5)),
        ("float", json!("1.5")),
        ("float", json!(true)),
        ("float", json!([1.5])),
        ("version", json!("1.0")),
        ("version", json!("v1.0.0")),
        ("version", json!(" 1.0.0")),
        ("version", json!("1.0.0 ")),
        ("version", json!("01.0.0")),
        ("version", json!("1.0.0-01")),
        ("version", json!("1.0.0-")),
        ("version", json!("1.0.0+")),
        ("version", json!("1.0.0-a..b")),
        ("version", json!("18446744073709551616.0.0")),
        ("version", json!(100)),
        ("list", json!({"a": 1})),
        ("list", json!("[]")),
        ("boolean", json!("true")),
        ("boolean", json!(1)),
        ("map", json!(7)),
        ("map", json!([["k", "v"]])),
    ];
    for enc in Enc::ALL {
        let app = format!("w-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        for (ty, value) in &cases {
            a.dispatch("UPDATE_METADATA", json!({"k": meta(ty, value.clone())}))
                .await;
            expect_invalid_metadata(
                &mut a,
                json!({"k": format!("k: value fails validation for '{ty}'")}),
            )
            .await;
        }
        // null is not a valid value for any type.
        for ty in [
            "string", "integer", "float", "version", "list", "boolean", "map",
        ] {
            a.dispatch("UPDATE_METADATA", json!({"k": meta(ty, Value::Null)}))
                .await;
            expect_invalid_metadata(
                &mut a,
                json!({"k": format!("k: value fails validation for '{ty}'")}),
            )
            .await;
        }
        let object = client_object(&mut a, &app, "a").await;
        assert_eq!(user_metadata(&object), (json!({}), json!({})));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_validation_rule_has_its_exact_message_and_the_first_failing_rule_wins() {
    let gw = TestGateway::start().await;
    let malformed =
        |k: &str| format!("{k}: malformed entry (expected an object with 'type' and 'value')");
    let cases: Vec<(&str, Value, String)> = vec![
        // Rule 1: not an object, or no `type`/`value`.
        ("k", json!(5), malformed("k")),
        ("k", json!("string"), malformed("k")),
        ("k", json!(null), malformed("k")),
        ("k", json!([]), malformed("k")),
        ("k", json!({}), malformed("k")),
        ("k", json!({"type": "string"}), malformed("k")),
        ("k", json!({"value": 1}), malformed("k")),
        ("k", json!({"type": "nope"}), malformed("k")),
        ("ip", json!({"type": "string"}), malformed("ip")),
        // Rule 2: unknown type names, non-strings rendered as compact JSON.
        (
            "k",
            json!({"type": "nope", "value": 1}),
            "k: type 'nope' doesn't exist".into(),
        ),
        (
            "k",
            json!({"type": "Integer", "value": 1}),
            "k: type 'Integer' doesn't exist".into(),
        ),
        (
            "k",
            json!({"type": "", "value": 1}),
            "k: type '' doesn't exist".into(),
        ),
        (
            "k",
            json!({"type": 5, "value": 1}),
            "k: type '5' doesn't exist".into(),
        ),
        (
            "k",
            json!({"type": null, "value": 1}),
            "k: type 'null' doesn't exist".into(),
        ),
        (
            "k",
            json!({"type": ["a", 1], "value": 1}),
            r#"k: type '["a",1]' doesn't exist"#.into(),
        ),
        (
            "k",
            json!({"type": {"a": true}, "value": 1}),
            r#"k: type '{"a":true}' doesn't exist"#.into(),
        ),
        // Rule 2 comes before rule 3.
        (
            "ip",
            json!({"type": "nope", "value": 1}),
            "ip: type 'nope' doesn't exist".into(),
        ),
        // Rule 3 comes before rule 4.
        (
            "restricted",
            json!({"type": "integer", "value": "x"}),
            "restricted: forbidden metadata key".into(),
        ),
        // Rule 4 comes before rule 5.
        (
            "k",
            json!({"type": "integer", "value": nested_list(40)}),
            "k: value fails validation for 'integer'".into(),
        ),
        // Rule 5: deeper than 32.
        (
            "k",
            json!({"type": "list", "value": nested_list(33)}),
            "k: value nested too deeply (max depth 32)".into(),
        ),
        (
            "k",
            json!({"type": "map", "value": nested_map(33)}),
            "k: value nested too deeply (max depth 32)".into(),
        ),
        (
            "k",
            json!({"type": "list", "value": [1, [2, nested_map(32)]]}),
            "k: value nested too deeply (max depth 32)".into(),
        ),
    ];
    for enc in Enc::ALL {
        let app = format!("r-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        for (key, entry, message) in &cases {
            a.dispatch("UPDATE_METADATA", json!({*key: entry})).await;
            expect_invalid_metadata(&mut a, json!({*key: message})).await;
        }
        // Exactly 32 levels is fine.
        a.update_metadata(
            json!({"l": meta("list", nested_list(32)), "m": meta("map", nested_map(32))}),
        )
        .await;
        let object = client_object(&mut a, &app, "a").await;
        assert_eq!(
            user_metadata(&object).0,
            json!({"l": nested_list(32), "m": nested_map(32)})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reserved_key_is_forbidden() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("res-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        let before = client_object(&mut a, &app, "a").await;
        for key in RESERVED {
            for entry in [
                meta("string", "x"),
                meta("boolean", true),
                meta("integer", 1),
            ] {
                a.dispatch("UPDATE_METADATA", json!({key: entry})).await;
                expect_invalid_metadata(
                    &mut a,
                    json!({key: format!("{key}: forbidden metadata key")}),
                )
                .await;
            }
        }
        // All at once: one message per key.
        let update: Map<String, Value> = RESERVED
            .iter()
            .map(|k| (k.to_string(), meta("string", "x")))
            .collect();
        a.dispatch("UPDATE_METADATA", Value::Object(update)).await;
        let expected: Map<String, Value> = RESERVED
            .iter()
            .map(|k| (k.to_string(), json!(format!("{k}: forbidden metadata key"))))
            .collect();
        expect_invalid_metadata(&mut a, Value::Object(expected)).await;
        let after = client_object(&mut a, &app, "a").await;
        assert_eq!(after["metadata_types"], before["metadata_types"]);
        for key in [
            "restricted",
            "encoding",
            "ip",
            "namespace",
            "receive_client_updates",
        ] {
            assert_eq!(after["metadata"][key], before["metadata"][key], "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_is_atomic_and_reports_every_failing_key_once() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("atomic-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        let mut b = gw
            .identify(enc, &format!("other-app-{}", enc.name()), "b")
            .await;
        a.update_metadata(json!({"keep": meta("integer", 1)})).await;
        a.dispatch(
            "UPDATE_METADATA",
            json!({"keep": meta("integer", 2), "good": meta("string", "g"),
                   "bad1": meta("float", "x"), "bad2": 3, "bad3": {"type": "t", "value": 0}}),
        )
        .await;
        expect_invalid_metadata(
            &mut a,
            json!({"bad1": "bad1: value fails validation for 'float'",
                   "bad2": "bad2: malformed entry (expected an object with 'type' and 'value')",
                   "bad3": "bad3: type 't' doesn't exist"}),
        )
        .await;
        assert!(routes(&mut b, &mut a, &app, eq("/keep", json!(1))).await);
        assert!(!routes(&mut b, &mut a, &app, eq("/good", json!("g"))).await);
        let object = client_object(&mut b, &app, "a").await;
        assert_eq!(user_metadata(&object).0, json!({"keep": 1}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_string_is_a_key_and_can_be_queried() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("keys-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        let mut b = gw
            .identify(enc, &format!("other-app-{}", enc.name()), "b")
            .await;
        a.update_metadata(json!({
            "": meta("string", "empty"),
            "a/b": meta("integer", 1),
            "0": meta("integer", 2),
            "$dollar": meta("integer", 3),
            "t~ilde": meta("integer", 4),
            "ключ": meta("integer", 5),
        }))
        .await;
        for (path, value) in [
            ("/", json!("empty")),
            ("/a~1b", json!(1)),
            ("/0", json!(2)),
            ("/$dollar", json!(3)),
            ("/t~0ilde", json!(4)),
            ("/ключ", json!(5)),
        ] {
            assert!(
                routes(&mut b, &mut a, &app, eq(path, value)).await,
                "{path}"
            );
        }
        // The legacy form names a top-level key literally.
        assert!(routes(&mut b, &mut a, &app, json!([{"a/b": {"$eq": 1}}])).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_metadata_with_target_and_payload_keys_is_still_metadata() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("tp-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        let mut b = gw
            .identify(enc, &format!("other-app-{}", enc.name()), "b")
            .await;
        a.update_metadata(json!({
            "target": meta("map", json!({"application": app})),
            "payload": meta("string", "p"),
        }))
        .await;
        // Nothing was sent anywhere, and both keys are stored.
        b.expect_nothing().await;
        let object = client_object(&mut b, &app, "a").await;
        assert_eq!(
            user_metadata(&object),
            (
                json!({"target": {"application": app}, "payload": "p"}),
                json!({"target": "map", "payload": "string"})
            )
        );
    }
}

// === item 34: merge and replace ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_keeps_other_keys_and_replaces_each_updated_key_wholesale() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("merge-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        a.update_metadata(
            json!({"a": meta("integer", 1), "m": meta("map", json!({"x": 1, "y": 2}))}),
        )
        .await;
        a.update_metadata(json!({"b": meta("string", "two")})).await;
        a.update_metadata(json!({})).await;
        let object = client_object(&mut a, &app, "a").await;
        assert_eq!(
            user_metadata(&object),
            (
                json!({"a": 1, "m": {"x": 1, "y": 2}, "b": "two"}),
                json!({"a": "integer", "m": "map", "b": "string"})
            )
        );
        // A key's type and value are replaced together; maps are not deep-merged.
        a.update_metadata(
            json!({"a": meta("string", "now a string"), "m": meta("map", json!({"z": 3}))}),
        )
        .await;
        let object = client_object(&mut a, &app, "a").await;
        assert_eq!(
            user_metadata(&object),
            (
                json!({"a": "now a string", "m": {"z": 3}, "b": "two"}),
                json!({"a": "string", "m": "map", "b": "string"})
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_keeps_only_the_updated_keys_and_the_reserved_ones() {
    let gw =
        TestGateway::start_with(|c| c.metadata.update_strategy = UpdateStrategy::Replace).await;
    for enc in Enc::ALL {
        let app = format!("replace-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        let mut b = gw
            .identify(enc, &format!("other-app-{}", enc.name()), "b")
            .await;
        a.update_metadata(json!({"a": meta("integer", 1)})).await;
        a.update_metadata(json!({"b": meta("integer", 2)})).await;
        let object = client_object(&mut b, &app, "a").await;
        assert_eq!(
            user_metadata(&object),
            (json!({"b": 2}), json!({"b": "integer"}))
        );
        assert_eq!(object["metadata"]["encoding"], enc.name());
        assert_eq!(object["metadata"]["ip"], "127.0.0.1");
        assert!(!routes(&mut b, &mut a, &app, eq("/a", json!(1))).await);
        assert!(routes(&mut b, &mut a, &app, eq("/b", json!(2))).await);

        // A refused update replaces nothing.
        a.dispatch("UPDATE_METADATA", json!({"c": meta("integer", "x")}))
            .await;
        expect_invalid_metadata(
            &mut a,
            json!({"c": "c: value fails validation for 'integer'"}),
        )
        .await;
        assert!(routes(&mut b, &mut a, &app, eq("/b", json!(2))).await);

        // `{}` removes every user-defined key.
        a.update_metadata(json!({})).await;
        let object = client_object(&mut b, &app, "a").await;
        assert_eq!(user_metadata(&object), (json!({}), json!({})));
        assert_eq!(
            keys(&object["metadata"]),
            RESERVED.iter().copied().collect::<BTreeSet<_>>()
        );
        assert!(!routes(&mut b, &mut a, &app, eq("/b", json!(2))).await);
        assert!(routes(&mut b, &mut a, &app, eq("/restricted", json!(false))).await);
    }
}

// === item 35: the size limit ===

/// `{"<key>": {"type": "string", "value": "xxx…"}}` whose SPEC §5.6 size is `key.len() + len + 2`.
fn string_entry(len: usize) -> Value {
    meta("string", "x".repeat(len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_over_the_size_limit_names_every_key_of_the_update() {
    let gw = TestGateway::start().await;
    let limit = "metadata size limit exceeded (max 65536 bytes)";
    for enc in Enc::ALL {
        let app = format!("size-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        let mut b = gw
            .identify(enc, &format!("other-app-{}", enc.name()), "b")
            .await;
        // Size so far: `namespace` + `null` = 13. `base` adds 4 + 30000 + 2.
        a.update_metadata(json!({"base": string_entry(30_000)}))
            .await;
        // `more` adds 4 + 39973 + 2 and `n` adds 1 + 1: exactly 70 000 in all.
        a.dispatch(
            "UPDATE_METADATA",
            json!({"more": string_entry(39_973), "n": meta("integer", 1)}),
        )
        .await;
        expect_invalid_metadata(
            &mut a,
            json!({"more": format!("more: {limit}"), "n": format!("n: {limit}")}),
        )
        .await;
        let object = client_object(&mut b, &app, "a").await;
        assert_eq!(keys(&user_metadata(&object).0), BTreeSet::from(["base"]));

        // Rule 6 is only checked when rules 1–5 pass for every entry.
        a.dispatch(
            "UPDATE_METADATA",
            json!({"more": string_entry(39_973), "bad": meta("integer", "x")}),
        )
        .await;
        expect_invalid_metadata(
            &mut a,
            json!({"bad": "bad: value fails validation for 'integer'"}),
        )
        .await;

        // Merging over a key frees its old size: 13 + (4 + 35000 + 2) + (1 + 30000 + 2) fits,
        // though adding 35 006 bytes to the 60 022 already stored would not.
        a.update_metadata(json!({"c": string_entry(30_000)})).await;
        a.update_metadata(json!({"base": string_entry(35_000)}))
            .await;
        let object = client_object(&mut b, &app, "a").await;
        assert_eq!(
            keys(&user_metadata(&object).0),
            BTreeSet::from(["base", "c"])
        );
        a.close().await;
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_is_inclusive_and_counts_keys_values_and_namespace() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("edge-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        // 13 (`namespace`: null) + 1 + 65520 + 2 = 65536: exactly the limit.
        a.update_metadata(json!({"k": string_entry(65_520)})).await;
        a.dispatch("UPDATE_METADATA", json!({"k": string_entry(65_521)}))
            .await;
        expect_invalid_metadata(
            &mut a,
            json!({"k": "k: metadata size limit exceeded (max 65536 bytes)"}),
        )
        .await;
        // Even the smallest extra key is refused now.
        a.dispatch("UPDATE_METADATA", json!({"z": meta("boolean", true)}))
            .await;
        expect_invalid_metadata(
            &mut a,
            json!({"z": "z: metadata size limit exceeded (max 65536 bytes)"}),
        )
        .await;
        a.close().await;

        // The identify `namespace` counts too.
        let app = format!("edge-ns-{}", enc.name());
        let mut c = gw
            .identify_with(
                enc,
                json!({"application_id": app, "client_id": "c", "namespace": "nsnsns"}),
            )
            .await;
        // 9 + 8 (`"nsnsns"`) = 17, so 1 + 65516 + 2 is the most a single key can hold.
        c.update_metadata(json!({"k": string_entry(65_516)})).await;
        c.dispatch("UPDATE_METADATA", json!({"k": string_entry(65_517)}))
            .await;
        expect_invalid_metadata(
            &mut c,
            json!({"k": "k: metadata size limit exceeded (max 65536 bytes)"}),
        )
        .await;
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_and_depth_limits_follow_the_configuration() {
    let gw = TestGateway::start_with(|c| {
        c.metadata.max_bytes = 100;
        c.metadata.max_depth = 2;
    })
    .await;
    for enc in Enc::ALL {
        let app = format!("conf-{}", enc.name());
        let mut a = gw.identify(enc, &app, "a").await;
        a.dispatch(
            "UPDATE_METADATA",
            json!({"k": string_entry(100), "j": meta("integer", 1)}),
        )
        .await;
        expect_invalid_metadata(
            &mut a,
            json!({"k": "k: metadata size limit exceeded (max 100 bytes)",
                   "j": "j: metadata size limit exceeded (max 100 bytes)"}),
        )
        .await;
        a.dispatch(
            "UPDATE_METADATA",
            json!({"l": meta("list", nested_list(3))}),
        )
        .await;
        expect_invalid_metadata(
            &mut a,
            json!({"l": "l: value nested too deeply (max depth 2)"}),
        )
        .await;
        a.update_metadata(json!({"l": meta("list", nested_list(2))}))
            .await;
    }
}

// === identify: initial metadata and namespace (SPEC §4.3 check 13, §5.3, §5.4) ===

/// Identifies with `d` and expects op 8 `initial metadata: invalid` with `extra_info`.
async fn expect_initial_metadata_invalid(gw: &TestGateway, enc: Enc, d: Value, extra_info: Value) {
    let (mut client, _) = gw.connect(enc).await;
    client.send(json!({"op": 1, "d": d})).await;
    let fatal = client.expect_fatal("initial metadata: invalid", 1008).await;
    assert_eq!(
        fatal,
        json!({"error": "initial metadata: invalid", "extra_info": extra_info}),
        "{enc:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_metadata_follows_the_same_rules_and_is_fatal() {
    let gw = TestGateway::start().await;
    let limit = "metadata size limit exceeded (max 65536 bytes)";
    for enc in Enc::ALL {
        let id =
            |n: &str| json!({"application_id": format!("init-{}", enc.name()), "client_id": n});
        let with = |n: &str, extra: Value| {
            let mut d = id(n);
            for (k, v) in extra.as_object().expect("object") {
                d[k] = v.clone();
            }
            d
        };
        expect_initial_metadata_invalid(
            &gw,
            enc,
            with(
                "a",
                json!({"metadata": {"a": {"type": "nope", "value": 1},
                                          "ip": meta("string", "x"), "ok": meta("string", "y"),
                                          "m": 5}}),
            ),
            json!({"a": "a: type 'nope' doesn't exist", "ip": "ip: forbidden metadata key",
                   "m": "m: malformed entry (expected an object with 'type' and 'value')"}),
        )
        .await;
        for not_an_object in [json!(5), json!("x"), json!([]), json!(true)] {
            expect_initial_metadata_invalid(
                &gw,
                enc,
                with("b", json!({"metadata": not_an_object})),
                json!({"metadata": "metadata: must be an object"}),
            )
            .await;
        }
        expect_initial_metadata_invalid(
            &gw,
            enc,
            with("c", json!({"namespace": nested_list(33)})),
            json!({"namespace": "namespace: value nested too deeply (max depth 32)"}),
        )
        .await;
        // 9 + 2 (`""`) for the namespace leaves 65525 bytes: `k` with 65522 characters is
        // exactly at the limit. With no namespace (13 bytes for `null`) `k` and `j` are over.
        let ok = gw
            .identify_with(
                enc,
                with(
                    "d",
                    json!({"namespace": "", "metadata": {"k": string_entry(65_522)}}),
                ),
            )
            .await;
        ok.close().await;
        expect_initial_metadata_invalid(
            &gw,
            enc,
            with(
                "e",
                json!({"metadata": {"k": string_entry(65_520), "j": meta("boolean", true)}}),
            ),
            json!({"k": format!("k: {limit}"), "j": format!("j: {limit}")}),
        )
        .await;
        // A namespace that is too large by itself is reported under its own key.
        expect_initial_metadata_invalid(
            &gw,
            enc,
            with("f", json!({"namespace": "x".repeat(70_000)})),
            json!({"namespace": format!("namespace: {limit}")}),
        )
        .await;
        // `metadata: null` is no metadata.
        let fine = gw
            .identify_with(enc, with("g", json!({"metadata": null})))
            .await;
        fine.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_is_stored_as_sent_with_a_type_derived_from_its_value() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("ns-{}", enc.name());
        let mut asker = gw
            .identify(enc, &format!("asker-{}", enc.name()), "q")
            .await;
        let cases = [
            ("s", json!("prod"), "string"),
            ("i", json!(5), "integer"),
            ("f", json!(1.5), "float"),
            ("b", json!(false), "boolean"),
            ("l", json!([1, "a"]), "list"),
            ("m", json!({"a": [1.0]}), "map"),
            ("n", json!(null), "string"),
        ];
        let mut keep = Vec::new();
        for (name, namespace, ty) in &cases {
            let client = gw
                .identify_with(
                    enc,
                    json!({"application_id": app, "client_id": name, "namespace": namespace}),
                )
                .await;
            let object = client_object(&mut asker, &app, name).await;
            assert_eq!(
                object["metadata"]["namespace"], *namespace,
                "{enc:?} {name}"
            );
            assert_eq!(object["metadata_types"]["namespace"], *ty, "{enc:?} {name}");
            keep.push(client);
        }
        // Absent is null, and the namespace is queryable like any key.
        let _absent = gw.identify(enc, &app, "absent").await;
        let object = client_object(&mut asker, &app, "absent").await;
        assert_eq!(object["metadata"]["namespace"], Value::Null);
        let nodes = query_nodes(
            &mut asker,
            json!({"application": app, "ops": eq("/namespace", json!("prod"))}),
        )
        .await;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["client_id"], "s");
        let nodes = query_nodes(
            &mut asker,
            json!({"application": app, "ops": eq("/namespace/a/0", json!(1))}),
        )
        .await;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["client_id"], "m");
    }
}
