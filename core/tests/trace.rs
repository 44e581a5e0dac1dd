//! Trace context in the router (SPEC §11): the context handed to `Router::handle` or
//! `Router::inject` is what every op 4 frame the dispatch causes carries; queue deliveries
//! carry a child of the stored one. No exporter is installed here, so ganglion's spans get
//! random ids.

mod support;

use std::sync::Arc;

use ganglion_core::auth::Auth;
use ganglion_core::frame::{Encoding, OutFrame, TraceContext, op};
use ganglion_core::queue::{MemoryStore, QueueConfig};
use ganglion_core::session::{Conn, Transport};
use ganglion_core::trace::TraceParent;
use ganglion_core::{Envelope, Outcome, Router, RouterConfig};
use serde_json::json;
use support::Recorder;

/// What ganglion's dispatch span hands to the router: a child of the sender's context.
fn context() -> TraceContext {
    TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01".into(),
        tracestate: Some("congo=t61rcWkgMzE".into()),
    }
}

fn router(queue: QueueConfig) -> Router {
    Router::new(
        RouterConfig {
            queue,
            ..RouterConfig::default()
        },
        Auth::new(None, 10),
        Arc::new(MemoryStore::default()),
    )
    .expect("router")
}

fn envelope(frame: serde_json::Value) -> Envelope {
    Envelope::from_value(serde_json::from_value(frame).expect("data model")).expect("envelope")
}

fn client(router: &Router, app: &str, id: &str) -> (Conn, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let conn = Conn::new(Transport::Websocket, Encoding::Json, None, recorder.clone());
    let identify = envelope(json!({"op": 1, "d": {"application_id": app, "client_id": id}}));
    assert!(matches!(
        router.handle(&conn, identify, None),
        Outcome::Identified
    ));
    assert_eq!(recorder.take()[0].op, op::READY);
    (conn, recorder)
}

fn dispatch(
    router: &Router,
    conn: &Conn,
    t: &str,
    d: serde_json::Value,
    trace: Option<TraceContext>,
) -> Outcome {
    router.handle(conn, envelope(json!({"op": 4, "t": t, "d": d})), trace)
}

async fn settle(outcome: Outcome) {
    if let Outcome::Pending(completion) = outcome {
        completion.await.expect("the journal answers");
    }
}

#[test]
fn send_and_broadcast_deliveries_carry_the_dispatch_context() {
    let router = router(QueueConfig::default());
    let (sender, _) = client(&router, "a", "sender");
    let (_b1, inbox1) = client(&router, "b", "1");
    let (_b2, inbox2) = client(&router, "b", "2");
    for t in ["SEND", "BROADCAST"] {
        dispatch(
            &router,
            &sender,
            t,
            json!({"target": {"application": "b"}, "payload": 1}),
            Some(context()),
        );
    }
    let delivered: Vec<OutFrame> = inbox1.take().into_iter().chain(inbox2.take()).collect();
    assert_eq!(delivered.len(), 3, "one SEND and two BROADCAST deliveries");
    for frame in delivered {
        assert_eq!(frame.trace, Some(context()), "{:?}", frame.t);
    }
}

#[test]
fn the_query_nodes_reply_carries_the_dispatch_context() {
    let router = router(QueueConfig::default());
    let (asker, inbox) = client(&router, "a", "asker");
    dispatch(
        &router,
        &asker,
        "QUERY_NODES",
        json!({"application": "a"}),
        Some(context()),
    );
    let reply = inbox.take();
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].t.as_deref(), Some("QUERY_NODES"));
    assert_eq!(reply[0].trace, Some(context()));
}

#[test]
fn without_a_context_no_frame_carries_trace() {
    let router = router(QueueConfig::default());
    let (sender, inbox) = client(&router, "a", "sender");
    let (_b, delivered) = client(&router, "b", "1");
    dispatch(
        &router,
        &sender,
        "SEND",
        json!({"target": {"application": "b"}, "payload": 1}),
        None,
    );
    dispatch(
        &router,
        &sender,
        "QUERY_NODES",
        json!({"application": "b"}),
        None,
    );
    let frames: Vec<OutFrame> = delivered.take().into_iter().chain(inbox.take()).collect();
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| f.trace.is_none()), "{frames:?}");
}

#[test]
fn op_3_answers_never_carry_trace() {
    let router = router(QueueConfig::default());
    let (sender, inbox) = client(&router, "a", "sender");
    dispatch(
        &router,
        &sender,
        "SEND",
        json!({"target": {"application": "nobody"}, "payload": 1}),
        Some(context()),
    );
    let answer = inbox.take();
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].op, op::INVALID);
    assert_eq!(answer[0].trace, None);
}

#[test]
fn an_injected_dispatch_result_carries_the_context() {
    let router = router(QueueConfig::default());
    let (_b, delivered) = client(&router, "b", "1");
    let reply = Arc::new(Recorder::default());
    let completion = router.inject(
        envelope(
            json!({"op": 4, "t": "SEND", "d": {"target": {"application": "b"}, "payload": 1}}),
        ),
        Some(context()),
        reply.clone(),
    );
    assert!(completion.is_none());
    let answer = reply.take();
    assert_eq!(answer[0].t.as_deref(), Some("DISPATCH_RESULT"));
    assert_eq!(answer[0].trace, Some(context()));
    assert_eq!(delivered.take()[0].trace, Some(context()));
}

/// The delivery's context: same trace id, flags and `tracestate` as the stored one, with the
/// delivery span's id as parent id.
fn assert_child_of(delivery: &TraceContext, stored: &TraceContext) -> u64 {
    let (child, parent) = (delivery.parent().unwrap(), stored.parent().unwrap());
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.flags, parent.flags);
    assert_ne!(child.parent_id, parent.parent_id, "a span of its own");
    assert_eq!(delivery.tracestate, stored.tracestate);
    child.parent_id
}

#[tokio::test]
async fn queue_confirms_carry_the_context_and_each_delivery_a_child_of_it() {
    // Every sweep times out the delivery, then returns it to the FIFO.
    let router = router(QueueConfig {
        ack_timeout_ms: 0,
        dlq_time_ms: 0,
        ..QueueConfig::default()
    });
    let (producer, producer_inbox) = client(&router, "p", "producer");
    let (consumer, consumer_inbox) = client(&router, "w", "worker");
    settle(dispatch(
        &router,
        &producer,
        "QUEUE",
        json!({"queue": "jobs", "target": {"application": "w"}, "payload": 1}),
        Some(context()),
    ))
    .await;
    let confirm = producer_inbox.take();
    assert_eq!(confirm[0].t.as_deref(), Some("QUEUE_CONFIRM"));
    assert_eq!(confirm[0].trace, Some(context()));

    let request = json!({"queue": "jobs"});
    dispatch(&router, &consumer, "QUEUE_REQUEST", request.clone(), None);
    let first = consumer_inbox.take();
    assert_eq!(first.len(), 1);
    let first_span = assert_child_of(first[0].trace.as_ref().unwrap(), &context());

    router.queues().sweep();
    router.queues().sweep();
    dispatch(&router, &consumer, "QUEUE_REQUEST", request, None);
    let again = consumer_inbox.take();
    assert_eq!(again.len(), 1, "redelivered after the ack timeout");
    let second_span = assert_child_of(again[0].trace.as_ref().unwrap(), &context());
    assert_ne!(first_span, second_span, "each delivery is its own span");
}

#[test]
fn a_queued_message_without_context_is_delivered_without_trace() {
    let router = router(QueueConfig::default());
    let (consumer, consumer_inbox) = client(&router, "w", "worker");
    dispatch(
        &router,
        &consumer,
        "QUEUE_REQUEST",
        json!({"queue": "jobs"}),
        None,
    );
    let reply = Arc::new(Recorder::default());
    let completion = router
        .inject(
            envelope(json!({"op": 4, "t": "QUEUE",
                            "d": {"queue": "jobs", "target": {"application": "w"}, "payload": 1}})),
            None,
            reply.clone(),
        )
        .expect("a QUEUE completes once durable");
    wait_for(completion);
    assert_eq!(reply.take()[0].trace, None);
    let delivered = consumer_inbox.take();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].trace, None);
}

#[test]
fn the_traceparent_ganglion_writes_is_the_one_it_parses() {
    let parent = TraceParent {
        trace_id: 1,
        parent_id: 2,
        flags: 0,
    };
    let text = parent.to_string();
    assert_eq!(
        text,
        "00-00000000000000000000000000000001-0000000000000002-00"
    );
    assert_eq!(TraceParent::parse(&text), Some(parent));
}

/// Waits for a completion without a runtime (the journal runs on its own thread).
fn wait_for(completion: tokio::sync::oneshot::Receiver<()>) {
    completion.blocking_recv().expect("the journal answers");
}
