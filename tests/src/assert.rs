//! Assertions on frames that many suites share.

use std::collections::BTreeSet;

use serde_json::Value;

/// The keys of an object.
pub fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// A set of key names, to compare with [`keys`].
pub fn key_set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// Every outbound frame has exactly `op`, `d`, `t` and `ts`, with an integer `ts`.
pub fn assert_envelope(frame: &Value) {
    assert_eq!(
        keys(frame),
        key_set(&["op", "d", "t", "ts"]),
        "envelope keys: {frame}"
    );
    assert!(frame["ts"].is_u64(), "ts is an integer: {frame}");
}

/// Asserts an op 3 with `error` and returns its `extra_info`.
pub fn expect_op3(frame: &Value, error: &str) -> Value {
    assert_envelope(frame);
    assert_eq!(frame["op"], 3, "expected op 3 `{error}`, got {frame}");
    assert_eq!(frame["t"], Value::Null, "op 3 has a null t: {frame}");
    assert_eq!(
        keys(&frame["d"]),
        key_set(&["error", "extra_info"]),
        "op 3 d: {frame}"
    );
    assert_eq!(frame["d"]["error"], error, "op 3 error: {frame}");
    frame["d"]["extra_info"].clone()
}
