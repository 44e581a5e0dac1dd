//! `Router::inject` (SPEC §2.3 "Fire-and-forget injection"): a SEND, BROADCAST or QUEUE from a
//! sender that is not a client, answered with exactly one frame.

mod support;

use std::sync::Arc;

use ganglion_core::auth::Auth;
use ganglion_core::frame::{Encoding, Out, OutFrame, op};
use ganglion_core::queue::MemoryStore;
use ganglion_core::session::{Conn, Transport};
use ganglion_core::{Envelope, Outcome, Router, RouterConfig, Value};
use serde_json::json;
use support::Recorder;

fn router() -> Router {
    Router::new(
        RouterConfig::default(),
        Auth::new(None, 10),
        Arc::new(MemoryStore::default()),
    )
    .expect("router")
}

fn envelope(frame: serde_json::Value) -> Envelope {
    Envelope::from_value(serde_json::from_value(frame).expect("data model")).expect("envelope")
}

/// A registered client and what it receives; ready is already taken.
fn client(router: &Router, app: &str, id: &str) -> (Conn, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let conn = Conn::new(
        Transport::Websocket,
        Encoding::Json,
        Some("127.0.0.1".parse().unwrap()),
        recorder.clone(),
    );
    let identify = envelope(json!({"op": 1, "d": {"application_id": app, "client_id": id}}));
    assert!(matches!(
        router.handle(&conn, identify, None),
        Outcome::Identified
    ));
    assert_eq!(recorder.take()[0].op, op::READY);
    (conn, recorder)
}

fn inject(router: &Router, t: &str, d: serde_json::Value) -> Vec<OutFrame> {
    let reply = Arc::new(Recorder::default());
    let completion = router.inject(
        envelope(json!({"op": 4, "t": t, "d": d})),
        None,
        reply.clone(),
    );
    assert!(completion.is_none(), "only QUEUE completes later");
    reply.take()
}

fn result(t: &'static str, nonce: Value, recipients: i64) -> (Option<String>, Out) {
    (
        Some("DISPATCH_RESULT".to_owned()),
        Out::Map(vec![
            ("t", Out::str(t)),
            ("nonce", Out::Value(nonce)),
            ("recipients", Out::Int(recipients)),
        ]),
    )
}

fn t_and_d(frame: &OutFrame) -> (Option<String>, Out) {
    (frame.t.as_ref().map(|t| t.to_string()), frame.d.clone())
}

#[test]
fn an_injected_send_reaches_one_client_and_reports_one_recipient() {
    let router = router();
    let (_a, a) = client(&router, "app", "a");
    let (_b, b) = client(&router, "app", "b");
    let answer = inject(
        &router,
        "SEND",
        json!({"target": {"application": "app"}, "nonce": 5, "payload": "hi"}),
    );
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].op, op::DISPATCH);
    assert_eq!(t_and_d(&answer[0]), result("SEND", Value::Int(5), 1));
    let delivered = a.take().len() + b.take().len();
    assert_eq!(delivered, 1);
}

#[test]
fn an_injected_broadcast_counts_every_recipient() {
    let router = router();
    let clients: Vec<_> = (0..3)
        .map(|i| client(&router, "app", &format!("c{i}")))
        .collect();
    let answer = inject(
        &router,
        "BROADCAST",
        json!({"target": {"application": "app"}, "payload": 1}),
    );
    assert_eq!(t_and_d(&answer[0]), result("BROADCAST", Value::Null, 3));
    for (_, recorder) in &clients {
        let frames = recorder.take();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].t.as_deref(), Some("BROADCAST"));
    }
}

#[test]
fn a_droppable_injection_without_a_match_reports_zero_recipients() {
    let router = router();
    let answer = inject(
        &router,
        "SEND",
        json!({"target": {"application": "nobody", "droppable": true}, "nonce": "n", "payload": 1}),
    );
    assert_eq!(
        t_and_d(&answer[0]),
        result("SEND", Value::String("n".into()), 0)
    );
}

#[test]
fn injection_errors_are_the_op_3_a_client_would_get() {
    let router = router();
    let answer = inject(
        &router,
        "SEND",
        json!({"target": {"application": "nobody"}, "payload": 1}),
    );
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].op, op::INVALID);
    let Out::Map(d) = &answer[0].d else {
        panic!("op 3 d is a map")
    };
    assert_eq!(d[0], ("error", Out::str("no_route")));
}

#[test]
fn another_event_is_an_invalid_dispatch_payload_with_nothing_echoed() {
    let router = router();
    for t in ["QUERY_NODES", "UPDATE_METADATA", "QUEUE_ACK", "send"] {
        let answer = inject(&router, t, json!({"target": {}, "payload": 1}));
        assert_eq!(answer.len(), 1, "{t}");
        assert_eq!(answer[0].op, op::INVALID);
        assert_eq!(
            answer[0].d,
            Out::Map(vec![
                ("error", Out::str("invalid dispatch payload")),
                ("extra_info", Out::Null),
            ]),
            "{t}"
        );
    }
}

#[tokio::test]
async fn an_injected_queue_is_confirmed_once_stored() {
    let router = router();
    let reply = Arc::new(Recorder::default());
    let completion = router
        .inject(
            envelope(json!({"op": 4, "t": "QUEUE",
                            "d": {"queue": "jobs", "target": {"application": "w"}, "nonce": 1, "payload": 2}})),
            None,
            reply.clone(),
        )
        .expect("a QUEUE completes once durable");
    completion.await.expect("the journal answers");
    let answer = reply.take();
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].t.as_deref(), Some("QUEUE_CONFIRM"));
}
