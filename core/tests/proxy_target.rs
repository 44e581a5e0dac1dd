//! `Router::proxy_target` (SPEC §9.5 "Choosing the client", §9.7 "Target address"): the SEND
//! recipient rule of §6.8 over the clients that have an address.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ganglion_core::auth::Auth;
use ganglion_core::frame::Encoding;
use ganglion_core::query::{Query, QueryLimits};
use ganglion_core::queue::MemoryStore;
use ganglion_core::session::{Conn, Discard, Transport};
use ganglion_core::{Envelope, Outcome, Router, RouterConfig, Value};
use serde_json::json;

fn router(password: Option<&str>) -> Router {
    Router::new(
        RouterConfig::default(),
        Auth::new(password.map(str::to_owned), 10),
        Arc::new(MemoryStore::default()),
    )
    .expect("router")
}

fn value(json: serde_json::Value) -> Value {
    serde_json::from_value(json).expect("data model value")
}

/// Identifies a client over `transport` from `peer` with the identify `d` given; the
/// connection is returned so that it stays registered.
fn identify(
    router: &Router,
    transport: Transport,
    peer: Option<&str>,
    d: serde_json::Value,
) -> Conn {
    let peer: Option<IpAddr> = peer.map(|p| p.parse().expect("peer address"));
    let conn = Conn::new(transport, Encoding::Json, peer, Arc::new(Discard));
    let envelope = Envelope::from_value(value(json!({"op": 1, "d": d}))).expect("envelope");
    assert!(
        matches!(router.handle(&conn, envelope, None), Outcome::Identified),
        "identify {d}"
    );
    conn
}

fn ws(router: &Router, app: &str, id: &str, ip: Option<&str>, metadata: serde_json::Value) -> Conn {
    let mut d = json!({"application_id": app, "client_id": id, "metadata": metadata});
    if let Some(ip) = ip {
        d["ip"] = json!(ip);
    }
    identify(router, Transport::Websocket, Some("10.1.2.3"), d)
}

fn query(q: serde_json::Value) -> Query {
    Query::parse(&value(q), QueryLimits::default()).expect("valid query")
}

#[test]
fn the_target_is_the_identify_ip_or_else_the_formatted_peer_address() {
    let router = router(None);
    let _a = ws(
        &router,
        "with-ip",
        "a",
        Some("http://127.0.0.1:8080"),
        json!({}),
    );
    let _b = ws(&router, "without-ip", "b", None, json!({}));
    let _c = identify(
        &router,
        Transport::Websocket,
        Some("2001:db8::1"),
        json!({"application_id": "v6", "client_id": "c"}),
    );
    assert_eq!(
        router.proxy_target(&query(json!({"application": "with-ip"}))),
        Some("http://127.0.0.1:8080".to_owned())
    );
    assert_eq!(
        router.proxy_target(&query(json!({"application": "without-ip"}))),
        Some("10.1.2.3".to_owned())
    );
    assert_eq!(
        router.proxy_target(&query(json!({"application": "v6"}))),
        Some("2001:0db8:0000:0000:0000:0000:0000:0001".to_owned())
    );
}

#[test]
fn a_client_without_any_address_is_never_a_target() {
    let router = router(None);
    let _nats = identify(
        &router,
        Transport::Nats,
        None,
        json!({"application_id": "svc", "client_id": "nats"}),
    );
    assert_eq!(
        router.proxy_target(&query(json!({"application": "svc"}))),
        None
    );
    let _ws = ws(&router, "svc", "ws", Some("http://10.0.0.9"), json!({}));
    for _ in 0..50 {
        assert_eq!(
            router.proxy_target(&query(json!({"application": "svc"}))),
            Some("http://10.0.0.9".to_owned())
        );
    }
}

#[test]
fn a_restricted_client_is_reached_at_its_peer_address_when_the_query_admits_it() {
    let router = router(Some("s3cret"));
    let _r = identify(
        &router,
        Transport::Websocket,
        Some("10.9.9.9"),
        json!({"application_id": "svc", "client_id": "r", "ip": "http://ignored"}),
    );
    assert_eq!(
        router.proxy_target(&query(json!({"application": "svc"}))),
        None
    );
    assert_eq!(
        router.proxy_target(&query(json!({"application": "svc", "restricted": true}))),
        Some("10.9.9.9".to_owned())
    );
}

#[test]
fn without_a_key_every_matching_client_is_chosen_sometimes() {
    let router = router(None);
    let _clients: Vec<Conn> = ["a", "b", "c"]
        .iter()
        .map(|id| ws(&router, "svc", id, Some(&format!("http://{id}")), json!({})))
        .collect();
    let q = query(json!({"application": "svc"}));
    let seen: HashSet<String> = (0..300).filter_map(|_| router.proxy_target(&q)).collect();
    let expected: HashSet<String> = ["http://a", "http://b", "http://c"]
        .map(str::to_owned)
        .into();
    assert_eq!(seen, expected);
}

#[test]
fn a_key_picks_the_rendezvous_winner_of_spec_6_10() {
    let router = router(None);
    let _clients: Vec<Conn> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| ws(&router, "svc", id, Some(&format!("http://{id}")), json!({})))
        .collect();
    for _ in 0..20 {
        assert_eq!(
            router.proxy_target(&query(json!({"application": "svc", "key": "user-42"}))),
            Some("http://a".to_owned())
        );
        assert_eq!(
            router.proxy_target(&query(json!({"application": "svc", "key": "order-7"}))),
            Some("http://d".to_owned())
        );
        assert_eq!(
            router.proxy_target(&query(json!({"application": "svc", "key": ""}))),
            Some("http://b".to_owned())
        );
    }
}

#[test]
fn optional_falls_back_and_the_selector_applies() {
    let router = router(None);
    let _low = ws(
        &router,
        "svc",
        "low",
        Some("http://low"),
        json!({"load": {"type": "integer", "value": 10}}),
    );
    let _high = ws(
        &router,
        "svc",
        "high",
        Some("http://high"),
        json!({"load": {"type": "integer", "value": 90}}),
    );
    let nobody = json!([{"path": "/load", "op": "$gt", "to": {"value": 1000}}]);
    assert_eq!(
        router.proxy_target(&query(json!({"application": "svc", "ops": nobody}))),
        None
    );
    let fallback = query(json!({"application": "svc", "ops": nobody, "optional": true}));
    assert!(router.proxy_target(&fallback).is_some());
    for (selector, expected) in [("$min", "http://low"), ("$max", "http://high")] {
        assert_eq!(
            router.proxy_target(&query(
                json!({"application": "svc", "selector": {selector: "load"}})
            )),
            Some(expected.to_owned()),
            "{selector}"
        );
    }
}

#[test]
fn clients_without_an_address_are_not_candidates_for_the_selector_or_optional() {
    let router = router(None);
    // The least loaded client is a NATS session without `ip`, which the proxy cannot reach.
    let _nats = identify(
        &router,
        Transport::Nats,
        None,
        json!({"application_id": "svc", "client_id": "nats",
               "metadata": {"load": {"type": "integer", "value": 1}}}),
    );
    let _ws = ws(
        &router,
        "svc",
        "ws",
        Some("http://ws"),
        json!({"load": {"type": "integer", "value": 50}}),
    );
    assert_eq!(
        router.proxy_target(&query(
            json!({"application": "svc", "selector": {"$min": "load"}})
        )),
        Some("http://ws".to_owned())
    );
    let nobody = json!([{"path": "/load", "op": "$gt", "to": {"value": 1000}}]);
    let fallback = query(json!({"application": "svc", "ops": nobody, "optional": true}));
    for _ in 0..50 {
        assert_eq!(router.proxy_target(&fallback), Some("http://ws".to_owned()));
    }
}
