//! Every invalid-query reason of SPEC §6.12, byte for byte, each from a query with one error.

use ganglion_core::Value;
use ganglion_core::query::{Query, QueryLimits};

fn reason(query: &str) -> String {
    let value: Value = serde_json::from_str(query).expect("test JSON");
    match Query::parse(&value, QueryLimits::default()) {
        Ok(q) => panic!("{query} should be invalid, parsed as {q:?}"),
        Err(e) => e.reason,
    }
}

/// A query whose only element is `element`.
fn element_reason(element: &str) -> String {
    reason(&format!(r#"{{"application": "api", "ops": [{element}]}}"#))
}

#[test]
fn a_query_that_is_not_an_object_is_rejected() {
    for q in ["[]", "null", "5", r#""x""#] {
        assert_eq!(reason(q), "query: must be an object");
    }
}

#[test]
fn ops_must_be_a_list_or_null() {
    for ops in ["5", "{}", r#""[]""#, "true"] {
        assert_eq!(
            reason(&format!(r#"{{"ops": {ops}}}"#)),
            "ops: must be a list"
        );
    }
}

#[test]
fn every_element_must_be_an_object() {
    for e in ["5", "null", "[]", r#""$eq""#] {
        assert_eq!(element_reason(e), "op: must be an object");
    }
    assert_eq!(
        element_reason(r#"{"op": "$or", "with": [1]}"#),
        "op: must be an object"
    );
}

#[test]
fn unknown_operators_are_named() {
    assert_eq!(
        element_reason(r#"{"path": "/a", "op": "$regex", "to": {"value": 1}}"#),
        "op: unknown operator '$regex'"
    );
    assert_eq!(
        element_reason(r#"{"op": "", "with": []}"#),
        "op: unknown operator ''"
    );
    // v1: `$eq` directly in an element is misplaced; `$foo` is unknown anywhere.
    assert_eq!(
        element_reason(r#"{"$eq": 1}"#),
        "op: unknown operator '$eq'"
    );
    assert_eq!(
        element_reason(r#"{"load": {"$foo": 1}}"#),
        "op: unknown operator '$foo'"
    );
    assert_eq!(
        element_reason(r#"{"load": {"gt": 1}}"#),
        "op: unknown operator 'gt'"
    );
}

#[test]
fn v1_shape_errors_have_their_own_reasons() {
    assert_eq!(element_reason("{}"), "op: empty operator object");
    for bad in ["{}", "5", "[]", "null", r#""$eq""#] {
        assert_eq!(
            element_reason(&format!(r#"{{"load": {bad}}}"#)),
            "op: value for 'load' must be an object of operators"
        );
    }
    assert_eq!(
        element_reason(r#"{"load": {"$and": [{"$gt": 1}, {}]}}"#),
        "op: value for 'load' must be an object of operators"
    );
    assert_eq!(
        element_reason(r#"{"$or": [{}]}"#),
        "op: empty operator object"
    );
}

#[test]
fn path_errors_carry_the_field_name() {
    let cases = [
        (
            r#"{"op": "$eq", "to": {"value": 1}}"#,
            "path: must not be nil",
        ),
        (
            r#"{"path": null, "op": "$eq", "to": {"value": 1}}"#,
            "path: must not be nil",
        ),
        (
            r#"{"path": 1, "op": "$eq", "to": {"value": 1}}"#,
            "path: must be a string",
        ),
        (
            r#"{"path": "", "op": "$eq", "to": {"value": 1}}"#,
            "path: must not be empty",
        ),
        (
            r#"{"path": "x", "op": "$eq", "to": {"value": 1}}"#,
            "path: must start with `/`, got: 'x'",
        ),
        (
            r#"{"path": "/a~2", "op": "$eq", "to": {"value": 1}}"#,
            "path: invalid escape sequence, got: '/a~2'",
        ),
        (
            r#"{"path": "/a", "op": "$eq", "to": {"path": null}}"#,
            "to.path: must not be nil",
        ),
        (
            r#"{"path": "/a", "op": "$eq", "to": {"path": []}}"#,
            "to.path: must be a string",
        ),
        (
            r#"{"path": "/a", "op": "$eq", "to": {"path": ""}}"#,
            "to.path: must not be empty",
        ),
        (
            r#"{"path": "/a", "op": "$eq", "to": {"path": "b"}}"#,
            "to.path: must start with `/`, got: 'b'",
        ),
        (
            r#"{"path": "/a", "op": "$eq", "to": {"path": "/~"}}"#,
            "to.path: invalid escape sequence, got: '/~'",
        ),
    ];
    for (element, expected) in cases {
        assert_eq!(element_reason(element), expected, "{element}");
    }
}

#[test]
fn to_must_be_an_object_with_value_or_path() {
    for to in ["", r#", "to": null"#, r#", "to": 5"#, r#", "to": [1]"#] {
        assert_eq!(
            element_reason(&format!(r#"{{"path": "/a", "op": "$eq"{to}}}"#)),
            "to: must be an object"
        );
    }
    assert_eq!(
        element_reason(r#"{"path": "/a", "op": "$eq", "to": {"default": 1}}"#),
        "to: must contain 'value' or 'path'"
    );
}

#[test]
fn logical_operators_need_a_with_list() {
    for with in ["", r#", "with": null"#, r#", "with": {}"#, r#", "with": 1"#] {
        assert_eq!(
            element_reason(&format!(r#"{{"op": "$and"{with}}}"#)),
            "with: must be a list"
        );
    }
}

#[test]
fn in_and_nin_need_a_literal_list() {
    assert_eq!(
        element_reason(r#"{"path": "/region", "op": "$in", "to": {"value": "eu-west"}}"#),
        "$in: operand must be a list"
    );
    assert_eq!(
        element_reason(r#"{"path": "/region", "op": "$nin", "to": {"value": {"a": 1}}}"#),
        "$nin: operand must be a list"
    );
    assert_eq!(
        element_reason(r#"{"x": {"$in": 5}}"#),
        "$in: operand must be a list"
    );
    assert_eq!(
        element_reason(r#"{"x": {"$nin": null}}"#),
        "$nin: operand must be a list"
    );
    // With `to.path` the operand is only known at evaluation time, so it parses.
    let ok: Value = serde_json::from_str(
        r#"{"ops": [{"path": "/a", "op": "$in", "to": {"path": "/b", "default": 5}}]}"#,
    )
    .expect("test JSON");
    assert!(Query::parse(&ok, QueryLimits::default()).is_ok());
}

#[test]
fn selector_errors_are_exact() {
    let shape = "selector: must be an object with exactly one of $min, $max, $avg";
    for sel in [
        "5",
        r#""load""#,
        "[]",
        "{}",
        r#"{"$min": "a", "$max": "b"}"#,
        r#"{"$median": "a"}"#,
        r#"{"min": "a"}"#,
    ] {
        assert_eq!(reason(&format!(r#"{{"selector": {sel}}}"#)), shape, "{sel}");
    }
    for key in ["\"\"", "5", "null", "[\"a\"]"] {
        assert_eq!(
            reason(&format!(r#"{{"selector": {{"$max": {key}}}}}"#)),
            "selector: key must be a non-empty string"
        );
    }
    assert_eq!(
        reason(r#"{"selector": {"$avg": "/a~x"}}"#),
        "selector: invalid escape sequence, got: '/a~x'"
    );
    // Without a leading `/`, `~` is just a character of a literal key.
    let ok: Value = serde_json::from_str(r#"{"selector": {"$avg": "a~x"}}"#).expect("test JSON");
    assert!(Query::parse(&ok, QueryLimits::default()).is_ok());
}

#[test]
fn nesting_beyond_max_depth_is_rejected_with_the_configured_number() {
    fn nested(levels: usize) -> String {
        let mut element = r#"{"path": "/a", "op": "$eq", "to": {"value": 1}}"#.to_owned();
        for _ in 0..levels {
            element = format!(r#"{{"op": "$or", "with": [{element}]}}"#);
        }
        format!(r#"{{"ops": [{element}]}}"#)
    }
    let parse = |levels: usize, max_depth: usize| {
        let value: Value = serde_json::from_str(&nested(levels)).expect("test JSON");
        Query::parse(&value, QueryLimits { max_depth }).map_err(|e| e.reason)
    };
    assert!(parse(32, 32).is_ok());
    assert_eq!(
        parse(33, 32).err().as_deref(),
        Some("query: nested too deeply (max depth 32)")
    );
    assert!(parse(5, 5).is_ok());
    assert_eq!(
        parse(6, 5).err().as_deref(),
        Some("query: nested too deeply (max depth 5)")
    );
    // v1 logical operators count too.
    let v1: Value = serde_json::from_str(r#"{"ops": [{"$or": [{"a": {"$and": [{"$eq": 1}]}}]}]}"#)
        .expect("test JSON");
    assert!(Query::parse(&v1, QueryLimits { max_depth: 2 }).is_ok());
    assert_eq!(
        Query::parse(&v1, QueryLimits { max_depth: 1 }).map_err(|e| e.reason),
        Err("query: nested too deeply (max depth 1)".to_owned())
    );
}

#[test]
fn unknown_keys_are_ignored_everywhere() {
    let value: Value = serde_json::from_str(
        r#"{"nonce": "q1", "extra": [1], "ops": [
            {"path": "/a", "op": "$eq", "to": {"value": 1, "type": "integer"}, "comment": "x"},
            {"op": "$and", "with": [], "path": 5}
        ]}"#,
    )
    .expect("test JSON");
    assert!(Query::parse(&value, QueryLimits::default()).is_ok());
}
