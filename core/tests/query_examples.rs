//! The worked examples of SPEC §6.13, rows 1–32, against the reference client `api/api-1`.
//!
//! Rows 1–28 exercise parsing and [`Query::matches`]. Rows 29–32 are about `application` and
//! `optional`: the application filter and the `optional` fallback are applied by the registry
//! (SPEC §6.8 steps 2–5), not by the query module, so for those rows this file checks the parsed
//! fields and runs a minimal model of those steps over a one-client cluster.

use std::collections::BTreeMap;

use ganglion_core::Value;
use ganglion_core::query::{AppFilter, Document, Query, QueryLimits};

/// A client's metadata: each top-level key with its value and whether it is declared `version`.
struct Client {
    application_id: &'static str,
    restricted: bool,
    metadata: BTreeMap<String, (Value, bool)>,
}

impl Document for Client {
    fn top(&self, key: &str) -> Option<(&Value, bool)> {
        self.metadata.get(key).map(|(v, versioned)| (v, *versioned))
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).expect("test JSON")
}

/// The reference client of SPEC §6.13, with the reserved keys of §5.3 as ganglion sets them.
fn reference_client() -> Client {
    let user = [
        ("region", r#""eu-west""#, false),
        ("load", "42", false),
        ("cpu", "0.5", false),
        ("version", r#""1.10.0""#, true),
        ("tags", r#"["gpu", "ssd", 3]"#, false),
        ("beta", "true", false),
        (
            "limits",
            r#"{"rps": 100, "zones": ["a", "b"], "0": "zero"}"#,
            false,
        ),
        ("key2", "7", false),
        ("a/b", r#""slash""#, false),
    ];
    let reserved = [
        ("last_heartbeat_time", "1700000000000", false),
        ("restricted", "false", false),
        ("encoding", r#""json""#, false),
        ("ip", r#""127.0.0.1""#, false),
        ("namespace", "null", false),
        ("receive_client_updates", "false", false),
    ];
    Client {
        application_id: "api",
        restricted: false,
        metadata: user
            .into_iter()
            .chain(reserved)
            .map(|(k, v, versioned)| (k.to_owned(), (json(v), versioned)))
            .collect(),
    }
}

fn parse(query: &str) -> Query {
    Query::parse(&json(query), QueryLimits::default())
        .unwrap_or_else(|e| panic!("{query} should parse: {e}"))
}

/// Whether the reference client is in the match set `M` of SPEC §6.8 steps 1–5 for a cluster
/// made of that client alone. A model of the registry's job, enough for rows 29–32.
fn in_match_set(query: &Query, cluster: &[&Client]) -> bool {
    let candidates: Vec<&Client> = cluster
        .iter()
        .copied()
        .filter(|c| query.restricted || !c.restricted)
        .filter(|c| match &query.application {
            AppFilter::Any => true,
            AppFilter::Exact(app) => c.application_id == app,
            AppFilter::Nothing => false,
        })
        .collect();
    let matched = candidates.iter().filter(|c| query.matches(**c)).count();
    if matched == 0 && query.optional {
        !candidates.is_empty()
    } else {
        matched > 0
    }
}

/// Rows whose query is `{"application": "api", "ops": [<element>]}`: (row, element, match).
const ROWS: &[(u32, &str, bool)] = &[
    (
        1,
        r#"{"path":"/region","op":"$eq","to":{"value":"eu-west"}}"#,
        true,
    ),
    (
        2,
        r#"{"path":"/load","op":"$eq","to":{"value":42.0}}"#,
        true,
    ),
    (
        3,
        r#"{"path":"/load","op":"$gt","to":{"value":"10"}}"#,
        false,
    ),
    (
        4,
        r#"{"path":"/region","op":"$gt","to":{"value":5}}"#,
        false,
    ),
    (
        5,
        r#"{"path":"/version","op":"$gt","to":{"value":"1.9.0"}}"#,
        true,
    ),
    (
        6,
        r#"{"path":"/version","op":"$gte","to":{"value":"1.10.0-rc.1"}}"#,
        true,
    ),
    (
        7,
        r#"{"path":"/tags","op":"$contains","to":{"value":"gpu"}}"#,
        true,
    ),
    (8, r#"{"path":"/tags/2","op":"$eq","to":{"value":3}}"#, true),
    (
        9,
        r#"{"path":"/limits/0","op":"$eq","to":{"value":"zero"}}"#,
        true,
    ),
    (10, r#"{"path":"/key2","op":"$eq","to":{"value":7}}"#, true),
    (
        11,
        r#"{"path":"/a~1b","op":"$eq","to":{"value":"slash"}}"#,
        true,
    ),
    (
        12,
        r#"{"path":"/missing","op":"$ne","to":{"value":1}}"#,
        true,
    ),
    (
        13,
        r#"{"path":"/missing","op":"$eq","to":{"value":null}}"#,
        false,
    ),
    (
        14,
        r#"{"path":"/region","op":"$in","to":{"value":["us-east","eu-west"]}}"#,
        true,
    ),
    (
        16,
        r#"{"op":"$or","with":[{"path":"/missing","op":"$eq","to":{"value":1}},{"path":"/beta","op":"$eq","to":{"value":true}}]}"#,
        true,
    ),
    (17, r#"{"op":"$and","with":[]}"#, true),
    (18, r#"{"op":"$or","with":[]}"#, false),
    (19, r#"{"op":"$nor","with":[]}"#, true),
    (20, r#"{"load":{"$gte":40,"$lt":50}}"#, true),
    (
        21,
        r#"{"path":"/load","op":"$lt","to":{"path":"/limits/rps","default":0}}"#,
        true,
    ),
    (
        22,
        r#"{"path":"/load","op":"$lt","to":{"path":"/limits/burst","default":10}}"#,
        false,
    ),
    (
        23,
        r#"{"path":"/beta","op":"$eq","to":{"value":"true"}}"#,
        false,
    ),
    (
        24,
        r#"{"path":"/tags","op":"$eq","to":{"value":["gpu","ssd",3.0]}}"#,
        true,
    ),
    (
        25,
        r#"{"path":"/region","op":"$contains","to":{"value":"eu"}}"#,
        false,
    ),
    (
        26,
        r#"{"path":"/tags","op":"$ncontains","to":{"value":"tpu"}}"#,
        true,
    ),
    (27, r#"{"path":"/cpu","op":"$lte","to":{"value":1}}"#, true),
    (
        28,
        r#"{"path":"/restricted","op":"$eq","to":{"value":false}}"#,
        true,
    ),
];

#[test]
fn rows_1_to_28_give_the_stated_result() {
    let client = reference_client();
    for &(row, element, expected) in ROWS {
        let query = parse(&format!(r#"{{"application":"api","ops":[{element}]}}"#));
        assert_eq!(
            query.application,
            AppFilter::Exact("api".into()),
            "row {row}"
        );
        assert_eq!(query.matches(&client), expected, "row {row}: {element}");
        assert_eq!(
            in_match_set(&query, &[&client]),
            expected,
            "row {row} through §6.8"
        );
    }
}

#[test]
fn row_15_in_with_a_scalar_operand_is_an_invalid_query() {
    let query = json(
        r#"{"application":"api","ops":[{"path":"/region","op":"$in","to":{"value":"eu-west"}}]}"#,
    );
    assert_eq!(
        Query::parse(&query, QueryLimits::default()).map_err(|e| e.reason),
        Err("$in: operand must be a list".to_owned())
    );
}

#[test]
fn row_29_a_different_application_does_not_match() {
    let query = parse(r#"{"application":"web","ops":[]}"#);
    assert_eq!(query.application, AppFilter::Exact("web".into()));
    assert!(!query.optional);
    // Empty ops hold for everyone; it is the application filter that excludes api-1.
    assert!(query.matches(&reference_client()));
    assert!(!in_match_set(&query, &[&reference_client()]));
}

#[test]
fn row_30_optional_falls_back_to_the_application_only() {
    let query = parse(r#"{"application":"web","optional":true,"ops":[]}"#);
    assert_eq!(query.application, AppFilter::Exact("web".into()));
    assert!(query.optional);
    assert!(!in_match_set(&query, &[&reference_client()]));
}

#[test]
fn row_31_optional_true_string_falls_back_to_the_whole_application() {
    let query = parse(
        r#"{"application":"api","optional":"true","ops":[{"path":"/load","op":"$gt","to":{"value":1000}}]}"#,
    );
    assert!(query.optional);
    assert!(!query.matches(&reference_client()));
    assert!(in_match_set(&query, &[&reference_client()]));
}

#[test]
fn row_32_a_non_string_application_matches_nothing() {
    let query = parse(r#"{"application":["api"],"ops":[]}"#);
    assert_eq!(query.application, AppFilter::Nothing);
    assert!(!in_match_set(&query, &[&reference_client()]));
}

#[test]
fn restricted_clients_are_excluded_unless_asked_for() {
    let mut client = reference_client();
    client.restricted = true;
    assert!(!in_match_set(
        &parse(r#"{"application":"api"}"#),
        &[&client]
    ));
    assert!(in_match_set(
        &parse(r#"{"application":"api","restricted":"true"}"#),
        &[&client]
    ));
}
