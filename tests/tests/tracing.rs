//! Trace context and span export (SPEC §11, §9.7, §2.3): one trace from the sender, through
//! ganglion's spans, to each receiver, checked against an in-process OTLP receiver (gRPC, and
//! HTTP/protobuf) and the frames and HTTP requests the receivers get.
//!
//! Each test installs the process-wide subscriber and tracer, so this file relies on
//! `cargo nextest`'s process per test.

use std::net::SocketAddr;

use async_nats::HeaderMap as NatsHeaders;
use axum::http::HeaderMap;
use ganglion_gateway::Config;
use ganglion_gateway::config::SamplerKind;
use ganglion_gateway::telemetry::{self, TelemetryGuard};
use ganglion_tests::assert::{assert_envelope, key_set, keys};
use ganglion_tests::{Client, Enc, OtlpReceiver, ReceivedSpan, TestGateway, patience, temp_dir};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE";

// === helpers ===

/// Installs the subscriber with span export to `receiver` (or none) and the given sampler.
fn init_telemetry(receiver: Option<&OtlpReceiver>, sampler: SamplerKind) -> TelemetryGuard {
    let mut config = Config::default();
    if let Some(receiver) = receiver {
        receiver.export_to(&mut config.tracing);
    }
    config.tracing.service_name = "ganglion-under-test".to_owned();
    config.tracing.sampler = sampler;
    config.node.id = Some("test-node".to_owned());
    telemetry::init(&config).expect("telemetry starts")
}

/// `trace` as a client sends it.
fn trace(traceparent: &str, tracestate: Option<&str>) -> Value {
    match tracestate {
        Some(state) => json!({"traceparent": traceparent, "tracestate": state}),
        None => json!({"traceparent": traceparent}),
    }
}

fn send_to(application: &str, payload: Value) -> Value {
    json!({"target": {"application": application}, "payload": payload})
}

/// An op 4 frame with `trace`.
fn traced(t: &str, d: Value, trace: Value) -> Value {
    json!({"op": 4, "t": t, "d": d, "trace": trace})
}

/// The three fields of a `traceparent` that ganglion wrote.
struct Parts {
    trace_id: String,
    parent_id: String,
    flags: String,
}

/// The `trace` of a frame: exactly `traceparent` (and `tracestate` when expected), well formed.
fn trace_of(frame: &Value, tracestate: Option<&str>) -> Parts {
    let trace = frame
        .get("trace")
        .unwrap_or_else(|| panic!("the frame carries trace: {frame}"));
    let expected_keys: &[&str] = match tracestate {
        Some(_) => &["traceparent", "tracestate"],
        None => &["traceparent"],
    };
    assert_eq!(keys(trace), key_set(expected_keys), "{frame}");
    if let Some(state) = tracestate {
        assert_eq!(trace["tracestate"], state, "tracestate copied unchanged");
    }
    parse(trace["traceparent"].as_str().expect("a string traceparent"))
}

fn parse(traceparent: &str) -> Parts {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    assert_eq!(fields[1].len(), 32, "{traceparent}");
    assert_eq!(fields[2].len(), 16, "{traceparent}");
    assert_ne!(fields[2], "0000000000000000", "{traceparent}");
    Parts {
        trace_id: fields[1].to_owned(),
        parent_id: fields[2].to_owned(),
        flags: fields[3].to_owned(),
    }
}

/// The one span named `name` with attribute `key` = `value`.
fn one<'a>(spans: &'a [ReceivedSpan], name: &str, key: &str, value: Value) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == name && s.attr(key) == value)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name} span with {key} = {value}: {spans:#?}"
    );
    found[0]
}

fn count(spans: &[ReceivedSpan], name: &str) -> usize {
    spans.iter().filter(|s| s.name == name).count()
}

/// A frame without `trace`: exactly the four envelope keys.
fn assert_untraced(frame: &Value) {
    assert_envelope(frame);
}

// === cost ===

/// With export off, per-message spans (target `ganglion::trace`) and spans under the log level
/// are never built: the subscriber says so at the callsite, before any span exists. (A layer
/// left as `None` once made the registry build every span for nobody: a fifth of a routing
/// core.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_off_no_span_is_built_that_nobody_records() {
    let _telemetry = init_telemetry(None, SamplerKind::ParentBasedAlwaysOn);
    let dispatch = tracing::info_span!(target: "ganglion::trace", "dispatch");
    assert!(
        dispatch.is_disabled(),
        "per-message spans are off without export"
    );
    if std::env::var_os("RUST_LOG").is_none() {
        // The default log level is info.
        let frame = tracing::debug_span!("frame");
        assert!(frame.is_disabled(), "debug spans are off at level info");
        let connection = tracing::info_span!("connection");
        assert!(
            !connection.is_disabled(),
            "info spans are built for the logs"
        );
    }
}

// === SEND ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_with_a_traceparent_is_one_trace_from_the_sender_through_ganglion_to_the_receiver() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Msgpack, "receivers", "b").await;

    a.send(traced(
        "SEND",
        send_to("receivers", json!({"x": 1})),
        trace(PARENT, Some(TRACESTATE)),
    ))
    .await;
    let delivery = b.recv().await;
    assert_eq!(delivery["t"], "SEND");
    assert_eq!(delivery["d"]["payload"], json!({"x": 1}));
    let carried = trace_of(&delivery, Some(TRACESTATE));
    assert_eq!(carried.trace_id, TRACE_ID, "the sender's trace");
    assert_eq!(carried.flags, "01", "the sender's flags");
    assert_ne!(
        carried.parent_id, PARENT_ID,
        "ganglion's span is the parent"
    );

    let spans = receiver
        .wait_for(&telemetry, "the SEND span", |s| count(s, "SEND") == 1)
        .await;
    let send = one(&spans, "SEND", "t", json!("SEND"));
    assert_eq!(send.trace_id, TRACE_ID);
    assert_eq!(
        send.parent_span_id, PARENT_ID,
        "a child of the sender's span"
    );
    assert_eq!(
        send.span_id, carried.parent_id,
        "the delivery's parent is the exported span"
    );
    assert_eq!(send.service, "ganglion-under-test");
    assert_eq!(send.attr("app"), "senders");
    assert_eq!(send.attr("client"), "a");
    assert_eq!(send.attr("transport"), "ws");
    assert_eq!(send.attr("outcome"), "delivered");
    assert_eq!(send.attr("matches"), 1);
    assert_eq!(send.attr("recipients"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_and_a_query_nodes_reply_carry_the_same_child_context() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b1 = gw.identify(Enc::Json, "receivers", "b1").await;
    let mut b2 = gw.identify(Enc::Msgpack, "receivers", "b2").await;

    a.send(traced(
        "BROADCAST",
        send_to("receivers", json!("all")),
        trace(PARENT, None),
    ))
    .await;
    let (one_copy, other_copy) = (b1.recv().await, b2.recv().await);
    let first = trace_of(&one_copy, None);
    let second = trace_of(&other_copy, None);
    assert_eq!(first.trace_id, TRACE_ID);
    assert_eq!(first.parent_id, second.parent_id, "one dispatch, one span");

    a.send(traced(
        "QUERY_NODES",
        json!({"application": "receivers", "nonce": 7}),
        trace(PARENT, None),
    ))
    .await;
    let reply = a.recv().await;
    assert_eq!(reply["t"], "QUERY_NODES");
    let answered = trace_of(&reply, None);
    assert_eq!(answered.trace_id, TRACE_ID);

    let spans = receiver
        .wait_for(&telemetry, "the BROADCAST and QUERY_NODES spans", |s| {
            count(s, "BROADCAST") == 1 && count(s, "QUERY_NODES") == 1
        })
        .await;
    let broadcast = one(&spans, "BROADCAST", "t", json!("BROADCAST"));
    assert_eq!(broadcast.span_id, first.parent_id);
    assert_eq!(broadcast.parent_span_id, PARENT_ID);
    assert_eq!(broadcast.attr("matches"), 2);
    assert_eq!(broadcast.attr("recipients"), 2);
    let query = one(&spans, "QUERY_NODES", "t", json!("QUERY_NODES"));
    assert_eq!(query.span_id, answered.parent_id);
    assert_eq!(query.parent_span_id, PARENT_ID);
    assert_eq!(query.attr("matches"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_protobuf_receiver_too() {
    let receiver = OtlpReceiver::http().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;

    a.send(traced(
        "SEND",
        send_to("receivers", json!(1)),
        trace(PARENT, Some(TRACESTATE)),
    ))
    .await;
    let carried = trace_of(&b.recv().await, Some(TRACESTATE));

    let spans = receiver
        .wait_for(&telemetry, "the SEND span over HTTP", |s| {
            count(s, "SEND") == 1
        })
        .await;
    let send = one(&spans, "SEND", "t", json!("SEND"));
    assert_eq!(send.trace_id, TRACE_ID);
    assert_eq!(send.parent_span_id, PARENT_ID);
    assert_eq!(send.span_id, carried.parent_id);
    assert_eq!(send.service, "ganglion-under-test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_spans_record_the_outcome() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::AlwaysOn);
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".to_owned())).await;
    let _ok = gw
        .identify_with(
            Enc::Json,
            json!({"application_id": "svc", "client_id": "ok", "auth": "s3cret"}),
        )
        .await;
    let (mut restricted, _) = gw.connect(Enc::Json).await;
    restricted
        .send(json!({"op": 1, "d": {"application_id": "svc", "client_id": "guest"}}))
        .await;
    assert_eq!(restricted.recv().await["d"]["restricted"], true);
    let (mut rejected, _) = gw.connect(Enc::Json).await;
    rejected
        .send(json!({"op": 1, "d": {"application_id": "svc"}}))
        .await;
    rejected.closed().await;

    let spans = receiver
        .wait_for(&telemetry, "three identify spans", |s| {
            count(s, "identify") == 3
        })
        .await;
    let ok = one(&spans, "identify", "client", json!("ok"));
    assert_eq!(ok.attr("outcome"), "ok");
    assert_eq!(ok.attr("app"), "svc");
    assert_eq!(ok.parent_span_id, "", "a root of its own");
    let guest = one(&spans, "identify", "client", json!("guest"));
    assert_eq!(guest.attr("outcome"), "restricted");
    let failed = one(&spans, "identify", "outcome", json!("rejected"));
    assert_eq!(failed.attr("reason"), "invalid_identify");
}

// === queues ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_round_trip_continues_the_producers_trace_through_confirm_delivery_and_redelivery()
{
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start_with(|c| {
        c.queue.ack_timeout_ms = 300;
        c.queue.dlq_time_ms = 0;
        c.queue.sweep_interval_ms = 25;
    })
    .await;
    let mut producer = gw.identify(Enc::Json, "producers", "p").await;
    let mut consumer = gw.identify(Enc::Msgpack, "workers", "w").await;

    let job = json!({"queue": "jobs", "target": {"application": "workers"}, "nonce": "q1",
                     "payload": "work"});
    producer
        .send(traced("QUEUE", job, trace(PARENT, Some(TRACESTATE))))
        .await;
    let confirm = producer.recv().await;
    assert_eq!(confirm["t"], "QUEUE_CONFIRM");
    let confirmed = trace_of(&confirm, Some(TRACESTATE));
    assert_eq!(confirmed.trace_id, TRACE_ID);
    let id = confirm["d"]["id"].clone();

    let request = json!({"queue": "jobs"});
    consumer.dispatch("QUEUE_REQUEST", request.clone()).await;
    let first = consumer.recv().await;
    assert_eq!(first["d"]["payload"]["id"], id);
    let delivered = trace_of(&first, Some(TRACESTATE));
    assert_eq!(delivered.trace_id, TRACE_ID);
    // No ack: after the ack timeout the message comes back to the consumer waiting again.
    consumer.dispatch("QUEUE_REQUEST", request).await;
    let second = consumer.recv().await;
    assert_eq!(second["d"]["payload"]["id"], id, "redelivered");
    let redelivered = trace_of(&second, Some(TRACESTATE));
    assert_eq!(redelivered.trace_id, TRACE_ID);
    assert_ne!(redelivered.parent_id, delivered.parent_id);
    let consumer_span = "cccccccccccccccc";
    consumer
        .send(traced(
            "QUEUE_ACK",
            json!({"queue": "jobs", "id": id}),
            trace(&format!("00-{TRACE_ID}-{consumer_span}-01"), None),
        ))
        .await;
    consumer.sync().await;

    let spans = receiver
        .wait_for(&telemetry, "the queue spans", |s| {
            count(s, "QUEUE") == 1
                && count(s, "queue.confirm") == 1
                && count(s, "queue.deliver") == 2
                && count(s, "QUEUE_ACK") == 1
        })
        .await;
    let queue = one(&spans, "QUEUE", "t", json!("QUEUE"));
    assert_eq!(queue.trace_id, TRACE_ID);
    assert_eq!(queue.parent_span_id, PARENT_ID);
    assert_eq!(queue.span_id, confirmed.parent_id, "the confirm's parent");
    assert_eq!(queue.attr("queue"), "jobs");
    let stored = one(&spans, "queue.confirm", "id", id.clone());
    assert_eq!(stored.parent_span_id, queue.span_id);
    assert_eq!(stored.attr("outcome"), "confirmed");
    for (attempt, carried) in [(1, &delivered), (2, &redelivered)] {
        let deliver = one(&spans, "queue.deliver", "delivery", json!(attempt));
        assert_eq!(deliver.trace_id, TRACE_ID);
        assert_eq!(
            deliver.parent_span_id, queue.span_id,
            "a child of the QUEUE"
        );
        assert_eq!(deliver.span_id, carried.parent_id, "the delivery's parent");
        assert_eq!(deliver.attr("id"), id);
        assert_eq!(deliver.attr("queue"), "jobs");
        assert_eq!(deliver.attr("app"), "workers");
        assert_eq!(deliver.attr("client"), "w");
    }
    let ack = one(&spans, "QUEUE_ACK", "t", json!("QUEUE_ACK"));
    assert_eq!(ack.parent_span_id, consumer_span, "the consumer's span");
    assert_eq!(ack.attr("id"), id);
    assert_eq!(ack.attr("outcome"), "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_messages_context_survives_a_restart() {
    let _telemetry = init_telemetry(None, SamplerKind::ParentBasedAlwaysOn);
    let data_dir = temp_dir("tracing-restart");
    let config = |dir: std::path::PathBuf| move |c: &mut Config| c.queue.data_dir = dir;
    let gw = TestGateway::start_with(config(data_dir.clone())).await;
    let mut producer = gw.identify(Enc::Json, "producers", "p").await;
    let job = json!({"queue": "jobs", "target": {"application": "workers"}, "payload": 1});
    producer
        .send(traced("QUEUE", job, trace(PARENT, Some(TRACESTATE))))
        .await;
    let confirm = producer.recv().await;
    let confirmed = trace_of(&confirm, Some(TRACESTATE));

    // A graceful stop that keeps the store's directory (the handle would remove it).
    let mut gw = gw;
    gw.data_dir = temp_dir("tracing-restart-decoy");
    let drained = tokio::spawn(gw.drain());
    producer.closed().await;
    drained.await.expect("drained");

    let gw = TestGateway::start_with(config(data_dir.clone())).await;
    let mut consumer = gw.identify(Enc::Json, "workers", "w").await;
    consumer
        .dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}))
        .await;
    let delivery = consumer.recv().await;
    assert_eq!(delivery["d"]["payload"]["id"], confirm["d"]["id"]);
    let delivered = trace_of(&delivery, Some(TRACESTATE));
    assert_eq!(delivered.trace_id, TRACE_ID);
    assert_eq!(delivered.flags, "01");
    assert_ne!(delivered.parent_id, confirmed.parent_id, "a delivery span");
    drop(gw);
    let _ = std::fs::remove_dir_all(&data_dir);
}

// === the proxy ===

/// An HTTP backend that reports the trace headers of every request it answers.
async fn trace_backend() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(Option<String>, Option<String>)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (seen, requests) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let seen = seen.clone();
        async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let _ = seen.send((header("traceparent"), header("tracestate")));
            "backend"
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, requests)
}

async fn next_request(
    requests: &mut mpsc::UnboundedReceiver<(Option<String>, Option<String>)>,
) -> (Option<String>, Option<String>) {
    tokio::time::timeout(patience(), requests.recv())
        .await
        .expect("the backend got a request in time")
        .expect("the backend runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_request_carries_ganglions_proxy_span_as_the_upstream_traceparent() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start().await;
    let (backend, mut requests) = trace_backend().await;
    let _service = gw
        .identify_with(
            Enc::Json,
            json!({"application_id": "svc", "client_id": "s", "ip": format!("http://{backend}")}),
        )
        .await;

    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy/svc/hello",
            &[("traceparent", PARENT), ("tracestate", TRACESTATE)],
            "",
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let (traceparent, tracestate) = next_request(&mut requests).await;
    let transparent = parse(&traceparent.expect("a traceparent upstream"));
    assert_eq!(transparent.trace_id, TRACE_ID);
    assert_eq!(transparent.flags, "01");
    assert_ne!(transparent.parent_id, PARENT_ID);
    assert_eq!(tracestate.as_deref(), Some(TRACESTATE));

    // The JSON form's own headers are the parent when the request itself has none.
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    let other_parent = "b7ad6b7169203331";
    let body = json!({"method": "POST", "route": "/json", "query": {"application": "svc"},
                      "body": {"a": 1},
                      "headers": {"traceparent": format!("00-{other_trace}-{other_parent}-01")}});
    let response = gw
        .http(Method::POST, "/api/v1/proxy", &[], body.to_string())
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let (traceparent, tracestate) = next_request(&mut requests).await;
    let json_form = parse(&traceparent.expect("a traceparent upstream"));
    assert_eq!(json_form.trace_id, other_trace);
    assert_ne!(json_form.parent_id, other_parent);
    assert_eq!(tracestate, None);

    let spans = receiver
        .wait_for(&telemetry, "two proxy spans", |s| {
            count(s, "proxy GET") == 1 && count(s, "proxy POST") == 1
        })
        .await;
    let get = one(&spans, "proxy GET", "form", json!("transparent"));
    assert_eq!(get.trace_id, TRACE_ID);
    assert_eq!(
        get.parent_span_id, PARENT_ID,
        "a child of the caller's span"
    );
    assert_eq!(get.span_id, transparent.parent_id, "the upstream's parent");
    assert_eq!(get.attr("method"), "GET");
    assert_eq!(get.attr("host"), "127.0.0.1");
    assert_eq!(get.attr("status"), 200);
    let post = one(&spans, "proxy POST", "form", json!("json"));
    assert_eq!(post.trace_id, other_trace);
    assert_eq!(post.parent_span_id, other_parent);
    assert_eq!(post.span_id, json_form.parent_id);
}

// === NATS injection ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_injection_continues_the_trace_of_its_headers() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start_with_nats(|_| {}).await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;
    let injector = gw.nats_server().client().await;
    let mut headers = NatsHeaders::new();
    headers.insert("traceparent", PARENT);
    headers.insert("tracestate", TRACESTATE);
    let body = json!({"t": "SEND", "d": send_to("receivers", json!("from nats"))});
    let answer = ganglion_tests::nats::inject_with_headers(
        &injector,
        &gw.nats_prefix,
        headers,
        body.to_string().into(),
    )
    .await;
    assert_eq!(answer["t"], "DISPATCH_RESULT");
    let answered = trace_of(&answer, Some(TRACESTATE));
    let delivered = trace_of(&b.recv().await, Some(TRACESTATE));
    assert_eq!(delivered.parent_id, answered.parent_id);

    let spans = receiver
        .wait_for(&telemetry, "the injected SEND span", |s| {
            count(s, "SEND") == 1
        })
        .await;
    let send = one(&spans, "SEND", "transport", json!("nats"));
    assert_eq!(send.trace_id, TRACE_ID);
    assert_eq!(send.parent_span_id, PARENT_ID);
    assert_eq!(send.span_id, delivered.parent_id);
    assert_eq!(send.attr("recipients"), 1);
}

// === without an inbound context ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_inbound_context_a_sampling_node_starts_a_trace_that_the_frames_carry() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::AlwaysOn);
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;

    a.dispatch("SEND", send_to("receivers", json!("untraced")))
        .await;
    let started = trace_of(&b.recv().await, None);
    assert_eq!(started.flags, "01");
    // An invalid context counts as none.
    a.send(traced(
        "SEND",
        send_to("receivers", json!("invalid")),
        trace("00-garbage", None),
    ))
    .await;
    let restarted = trace_of(&b.recv().await, None);
    assert_ne!(restarted.trace_id, started.trace_id, "a trace per dispatch");

    let spans = receiver
        .wait_for(&telemetry, "two root SEND spans", |s| count(s, "SEND") == 2)
        .await;
    for carried in [&started, &restarted] {
        let root = spans
            .iter()
            .find(|s| s.name == "SEND" && s.trace_id == carried.trace_id)
            .unwrap_or_else(|| panic!("a SEND span in trace {}: {spans:#?}", carried.trace_id));
        assert_eq!(root.parent_span_id, "", "ganglion's span is the root");
        assert_eq!(root.span_id, carried.parent_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_samples_nothing_starts_no_trace_but_continues_an_inbound_one() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::AlwaysOff);
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;

    a.dispatch("SEND", send_to("receivers", json!(1))).await;
    assert_untraced(&b.recv().await);
    a.send(traced(
        "SEND",
        send_to("receivers", json!(2)),
        trace(PARENT, Some(TRACESTATE)),
    ))
    .await;
    let carried = trace_of(&b.recv().await, Some(TRACESTATE));
    assert_eq!(carried.trace_id, TRACE_ID);
    assert_eq!(
        carried.flags, "01",
        "the sender's flags, whatever ganglion records"
    );
    assert_ne!(carried.parent_id, PARENT_ID);

    a.sync().await;
    telemetry.flush().await;
    assert_eq!(
        receiver.spans(),
        Vec::new(),
        "nothing sampled, nothing exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceidratio_records_the_traces_whose_ids_fall_under_the_ratio_and_frames_carry_a_child_of_every_one()
 {
    let receiver = OtlpReceiver::grpc().await;
    let mut config = Config::default();
    receiver.export_to(&mut config.tracing);
    config.tracing.sampler = SamplerKind::TraceIdRatio;
    config.tracing.sampler_arg = Some(0.5);
    let telemetry = telemetry::init(&config).expect("telemetry starts");
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;
    // The decision reads the low 63 bits of the trace id, whatever the sender's flags.
    let kept = "0af7651916cd43dd0000000000000001";
    let dropped = "0af7651916cd43ddffffffffffffffff";
    for trace_id in [dropped, kept] {
        a.send(traced(
            "SEND",
            send_to("receivers", json!(trace_id)),
            trace(&format!("00-{trace_id}-{PARENT_ID}-01"), None),
        ))
        .await;
        let carried = trace_of(&b.recv().await, None);
        assert_eq!(carried.trace_id, trace_id);
        assert_eq!(carried.flags, "01");
        assert_ne!(carried.parent_id, PARENT_ID);
    }
    a.sync().await;
    let spans = receiver
        .wait_for(&telemetry, "the kept SEND span", |s| count(s, "SEND") == 1)
        .await;
    let send = one(&spans, "SEND", "t", json!("SEND"));
    assert_eq!(send.trace_id, kept);
    assert!(
        spans.iter().all(|s| s.trace_id != dropped),
        "nothing of the dropped trace: {spans:#?}"
    );
}

// === export off ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_off_every_frame_still_carries_a_child_of_the_inbound_context() {
    let telemetry = init_telemetry(None, SamplerKind::ParentBasedAlwaysOn);
    assert!(!telemetry.exporting());
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Msgpack, "receivers", "b").await;
    // Not sampled, and a tracestate no W3C parser would accept: both travel unchanged.
    let unsampled = format!("00-{TRACE_ID}-{PARENT_ID}-00");
    let odd_state = "  k1=v1 ,, not a=valid list=entry  ";

    a.send(traced(
        "SEND",
        send_to("receivers", json!("s")),
        trace(&unsampled, Some(odd_state)),
    ))
    .await;
    let send = trace_of(&b.recv().await, Some(odd_state));
    a.send(traced(
        "BROADCAST",
        send_to("receivers", json!("b")),
        trace(&unsampled, Some(odd_state)),
    ))
    .await;
    let broadcast = trace_of(&b.recv().await, Some(odd_state));
    a.send(traced(
        "QUERY_NODES",
        json!({"application": "receivers"}),
        trace(&unsampled, Some(odd_state)),
    ))
    .await;
    let query = trace_of(&a.recv().await, Some(odd_state));
    let job = json!({"queue": "jobs", "target": {"application": "receivers"}, "payload": "q"});
    a.send(traced("QUEUE", job, trace(&unsampled, Some(odd_state))))
        .await;
    let confirm = trace_of(&a.recv().await, Some(odd_state));
    b.dispatch("QUEUE_REQUEST", json!({"queue": "jobs"})).await;
    let delivery = trace_of(&b.recv().await, Some(odd_state));

    let all = [&send, &broadcast, &query, &confirm, &delivery];
    for carried in all {
        assert_eq!(carried.trace_id, TRACE_ID);
        assert_eq!(carried.flags, "00");
        assert_ne!(carried.parent_id, PARENT_ID);
    }
    let mut span_ids: Vec<&str> = all.iter().map(|c| c.parent_id.as_str()).collect();
    span_ids.sort_unstable();
    span_ids.dedup();
    assert_eq!(
        span_ids.len(),
        5,
        "a span id of ganglion's per dispatch and delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_absent_trace_is_ignored_and_never_answered_with_op_3_or_op_8() {
    let _telemetry = init_telemetry(None, SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;
    let invalid = [
        Value::Null,
        json!(PARENT),
        json!(42),
        json!([PARENT]),
        json!({}),
        json!({"tracestate": TRACESTATE}),
        json!({"traceparent": 5}),
        json!({"traceparent": null}),
        json!({"traceparent": PARENT.to_uppercase()}),
        json!({"traceparent": format!("00-{}-{PARENT_ID}-01", "0".repeat(32))}),
        json!({"traceparent": format!("00-{TRACE_ID}-{}-01", "0".repeat(16))}),
        json!({"traceparent": format!("01-{TRACE_ID}-{PARENT_ID}-01")}),
        json!({"traceparent": format!("{PARENT}-extra")}),
        json!({"traceparent": format!("00-{TRACE_ID}-{PARENT_ID}-1")}),
        json!({"traceparent": ""}),
    ];
    for (n, bad) in invalid.iter().enumerate() {
        a.send(traced("SEND", send_to("receivers", json!(n)), bad.clone()))
            .await;
        let delivery = b.recv().await;
        assert_eq!(delivery["d"]["payload"], json!(n));
        assert_untraced(&delivery);
    }
    let job = json!({"queue": "jobs", "target": {"application": "receivers"}, "payload": 1});
    a.send(traced("QUEUE", job, json!({"traceparent": "nope"})))
        .await;
    assert_untraced(&a.recv().await);
    a.dispatch("SEND", send_to("receivers", json!("absent")))
        .await;
    assert_untraced(&b.recv().await);
    a.expect_nothing().await;
    b.expect_nothing().await;
}

// === the pipeline ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_spans_are_exported_when_the_node_shuts_down() {
    let receiver = OtlpReceiver::grpc().await;
    let telemetry = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let gw = TestGateway::start().await;
    let mut a = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;
    a.send(traced(
        "SEND",
        send_to("receivers", json!(1)),
        trace(PARENT, None),
    ))
    .await;
    let carried = trace_of(&b.recv().await, None);
    a.sync().await;
    let drained = tokio::spawn(gw.drain());
    a.closed().await;
    b.closed().await;
    drained.await.expect("drained");
    // No flush: shutting down exports what the batch processor still holds.
    telemetry.shutdown().await;
    let spans = receiver.spans();
    let send = one(&spans, "SEND", "t", json!("SEND"));
    assert_eq!(send.span_id, carried.parent_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_init_in_the_same_process_keeps_the_first_pipeline() {
    let receiver = OtlpReceiver::grpc().await;
    let first = init_telemetry(Some(&receiver), SamplerKind::ParentBasedAlwaysOn);
    let second = init_telemetry(None, SamplerKind::ParentBasedAlwaysOn);
    assert!(first.exporting());
    assert!(!second.exporting());
    let gw = TestGateway::start().await;
    let mut a: Client = gw.identify(Enc::Json, "senders", "a").await;
    let mut b = gw.identify(Enc::Json, "receivers", "b").await;
    a.send(traced(
        "SEND",
        send_to("receivers", json!(1)),
        trace(PARENT, None),
    ))
    .await;
    let carried = trace_of(&b.recv().await, None);
    let spans = receiver
        .wait_for(&first, "the SEND span", |s| count(s, "SEND") == 1)
        .await;
    assert_eq!(
        one(&spans, "SEND", "t", json!("SEND")).span_id,
        carried.parent_id
    );
}
