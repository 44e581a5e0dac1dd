//! Queue conformance (SPEC §8, §9.9; checklist items 49–58) over real websockets in JSON and
//! MessagePack: QUEUE and its confirm, requests and deliveries, acks, the ack timeout,
//! dead-lettering and parking, the HTTP endpoints, durability across a restart, and a seeded
//! at-least-once scenario with consumers that ack, forget and reconnect.
//!
//! "Nothing arrived" is proven with [`Client::sync`]: a heartbeat's ack is ordered after every
//! frame queued for the connection before it, confirms of pipelined QUEUEs included (§3.3).
//! Timer-driven changes are awaited with [`eventually`], the only polling here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ganglion_tests::assert::{assert_envelope, expect_op3, key_set, keys};
use ganglion_tests::{Client, Enc, TestGateway, meta, now_ms, patience, temp_dir};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

// === helpers ===

/// A lowercase, hyphenated UUID version 4 (SPEC §8.1), returned as a string.
fn uuid_v4(id: &Value) -> String {
    let s = id
        .as_str()
        .unwrap_or_else(|| panic!("a message id is a string, got {id}"));
    let well_formed = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            14 => c == '4',
            19 => matches!(c, '8' | '9' | 'a' | 'b'),
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        });
    assert!(well_formed, "not a lowercase UUID v4: {s:?}");
    s.to_owned()
}

/// Asserts a QUEUE_CONFIRM whose `d` is exactly `{"queue", "nonce", "id"}`; returns the id.
fn expect_confirm(frame: &Value, queue: &str, nonce: &Value) -> String {
    assert_envelope(frame);
    let id = uuid_v4(&frame["d"]["id"]);
    assert_eq!(
        *frame,
        json!({"op": 4, "t": "QUEUE_CONFIRM", "ts": frame["ts"],
               "d": {"queue": queue, "nonce": nonce, "id": id}}),
        "a confirm for {nonce} on {queue}"
    );
    id
}

/// Asserts a QUEUE delivery in the original's shape (SPEC §8.6) and returns its id, nonce and
/// payload.
fn expect_delivery(frame: &Value, queue: &str) -> (String, Value, Value) {
    assert_envelope(frame);
    assert_eq!(
        (&frame["op"], &frame["t"]),
        (&json!(4), &json!("QUEUE")),
        "expected a QUEUE delivery, got {frame}"
    );
    assert_eq!(
        keys(&frame["d"]),
        key_set(&["target", "nonce", "payload"]),
        "{frame}"
    );
    assert_eq!(frame["d"]["target"], Value::Null, "{frame}");
    let inner = &frame["d"]["payload"];
    assert_eq!(keys(inner), key_set(&["queue", "id", "payload"]), "{frame}");
    assert_eq!(inner["queue"], queue, "{frame}");
    (
        uuid_v4(&inner["id"]),
        frame["d"]["nonce"].clone(),
        inner["payload"].clone(),
    )
}

/// The exact delivery frame of message `id` (with the frame's own `ts`).
fn delivery_of(frame: &Value, queue: &str, id: &str, nonce: Value, payload: Value) -> Value {
    json!({"op": 4, "t": "QUEUE", "ts": frame["ts"],
           "d": {"target": null, "nonce": nonce,
                 "payload": {"queue": queue, "id": id, "payload": payload}}})
}

/// Sends a QUEUE and waits for its confirm; returns the id.
async fn push(
    producer: &mut Client,
    queue: &str,
    target: Value,
    nonce: Value,
    payload: Value,
) -> String {
    producer
        .dispatch(
            "QUEUE",
            json!({"queue": queue, "target": target, "nonce": nonce, "payload": payload}),
        )
        .await;
    let frame = producer.recv().await;
    expect_confirm(&frame, queue, &nonce)
}

async fn request(client: &mut Client, queue: &str) {
    client
        .dispatch("QUEUE_REQUEST", json!({"queue": queue}))
        .await;
}

async fn cancel(client: &mut Client, queue: &str) {
    client
        .dispatch("QUEUE_REQUEST_CANCEL", json!({"queue": queue}))
        .await;
}

async fn ack(client: &mut Client, queue: &str, id: &str) {
    client
        .dispatch("QUEUE_ACK", json!({"queue": queue, "id": id}))
        .await;
}

/// Acks and proves, by the absence of any reply before a heartbeat's ack, that it was accepted.
async fn ack_accepted(client: &mut Client, queue: &str, id: &str) {
    ack(client, queue, id).await;
    let replies = client.sync().await;
    assert!(
        replies.is_empty(),
        "the ack of {id} was refused: {replies:?}"
    );
}

/// Asserts that the next frame is `unknown message id` for this queue and id.
async fn expect_unknown_id(client: &mut Client, queue: &str, id: &Value) {
    let frame = client.recv().await;
    assert_eq!(
        expect_op3(&frame, "unknown message id"),
        json!({"queue": queue, "id": id})
    );
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

/// A subscriber to CLIENT_* events: its CLIENT_DISCONNECTED is emitted by cleanup after the
/// client's queue state was released, so it tells when an identity is free again.
async fn watcher(gw: &TestGateway, enc: Enc, name: &str) -> Client {
    let mut w = gw
        .identify_with(
            enc,
            json!({"application_id": "watchers", "client_id": name,
                   "receive_client_updates": true}),
        )
        .await;
    let own = w.recv().await;
    assert_eq!(own["t"], "CLIENT_CONNECTED", "{own}");
    w
}

/// Reads the watcher's events until `app/client` has disconnected.
async fn await_disconnect(watcher: &mut Client, app: &str, client: &str) {
    loop {
        let frame = watcher.recv().await;
        assert_eq!(frame["op"], 4, "{frame}");
        if frame["t"] == "CLIENT_DISCONNECTED"
            && frame["d"]["payload"] == json!({"app": app, "client_id": client})
        {
            return;
        }
    }
}

/// The next frame, decoded; `None` once the connection has ended. No deadline: for actors
/// whose idleness is bounded by a deadline elsewhere.
async fn next_frame(client: &mut Client) -> Option<Value> {
    loop {
        match client.ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return Some(serde_json::from_str(&text).expect("JSON frame"));
            }
            Some(Ok(Message::Binary(bytes))) => {
                return Some(rmp_serde::from_slice(&bytes).expect("msgpack frame"));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
        }
    }
}

// --- HTTP ---

/// One HTTP call; asserts a JSON body and returns the status and the body.
async fn call(
    gw: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let response = gw.http(method.clone(), path, headers, "").await;
    assert_eq!(
        response
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("application/json"),
        "{method} {path}: {} {}",
        response.status,
        response.text()
    );
    (response.status, response.json())
}

/// `GET path`, expecting 200.
async fn get_ok(gw: &TestGateway, path: &str) -> Value {
    let (status, body) = call(gw, Method::GET, path, &[]).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// One queue's counts, as `GET /api/v1/queues/{queue}` answers them.
async fn stats(gw: &TestGateway, queue: &str) -> Value {
    get_ok(gw, &format!("/api/v1/queues/{queue}")).await
}

/// The expected counts of a queue: ready, in flight, dead-lettered, parked, waiting consumers.
fn counts(queue: &str, [ready, in_flight, dead, parked, waiting]: [u64; 5]) -> Value {
    json!({"name": queue, "ready": ready, "in_flight": in_flight, "dead_lettered": dead,
           "parked": parked, "waiting_consumers": waiting})
}

/// Polls `probe` every 20 ms until it yields a value, for at most [`patience`]; `Err` carries
/// what was seen instead, for the failure message. Only for timer-driven changes.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + patience();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `queue`'s counts are exactly `expected`; returns when that was first seen.
async fn counts_become(gw: &TestGateway, queue: &str, expected: [u64; 5]) -> Instant {
    let want = counts(queue, expected);
    eventually(&format!("{queue} to reach {want}"), async || {
        let seen = stats(gw, queue).await;
        if seen == want {
            Ok(Instant::now())
        } else {
            Err(seen.to_string())
        }
    })
    .await
}

/// The `queues` of the one client object of `app` over HTTP and over QUERY_NODES (asked by
/// `asker`); asserts that both agree.
async fn waiting_on(gw: &TestGateway, asker: &mut Client, app: &str) -> Value {
    let over_http = gw.query(json!({"application": app})).await;
    assert_eq!(over_http.len(), 1, "{over_http:?}");
    asker
        .dispatch("QUERY_NODES", json!({"application": app, "nonce": "w"}))
        .await;
    let frame = asker.recv().await;
    assert_eq!(frame["t"], "QUERY_NODES", "{frame}");
    let nodes = frame["d"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{frame}");
    assert_eq!(nodes[0]["queues"], over_http[0]["queues"]);
    over_http[0]["queues"].clone()
}

fn worker(ops: Value) -> Value {
    json!({"application": "worker", "ops": ops})
}

fn gpu_is(value: bool) -> Value {
    worker(json!([{"path": "/gpu", "op": "$eq", "to": {"value": value}}]))
}

/// Short timers for the timer tests: every transition within ~100 ms.
fn short_timers(ms: u64) -> impl FnOnce(&mut ganglion_gateway::Config) {
    move |c| {
        c.queue.ack_timeout_ms = ms;
        c.queue.dlq_time_ms = ms;
        c.queue.sweep_interval_ms = ms;
    }
}

// === items 49, 50: confirm, request, delivery ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_is_confirmed_with_its_queue_nonce_and_a_fresh_uuid_v4_and_counted_ready()
{
    for enc in Enc::ALL {
        // The original's names, so a node per encoding.
        let gw = TestGateway::start().await;
        let mut producer = gw.identify(enc, "producer", "p").await;
        let before = now_ms();
        producer
            .dispatch(
                "QUEUE",
                json!({"queue": "q1", "target": {"application": "test-app-1", "ops": []},
                       "nonce": null, "payload": "test!"}),
            )
            .await;
        let frame = producer.recv().await;
        let after = now_ms();
        let id = expect_confirm(&frame, "q1", &Value::Null);
        let ts = frame["ts"].as_u64().expect("ts");
        assert!(before <= ts && ts <= after, "{enc:?}: ts {ts}");
        assert_eq!(
            get_ok(&gw, "/api/v1/queues").await,
            json!({"queues": [counts("q1", [1, 0, 0, 0, 0])]}),
            "{enc:?}"
        );
        assert_eq!(stats(&gw, "q1").await, counts("q1", [1, 0, 0, 0, 0]));

        // Every message gets an id of its own, even with the same content.
        let again = push(
            &mut producer,
            "q1",
            json!({"application": "test-app-1", "ops": []}),
            Value::Null,
            json!("test!"),
        )
        .await;
        assert_ne!(id, again, "{enc:?}");
        assert_eq!(stats(&gw, "q1").await, counts("q1", [2, 0, 0, 0, 0]));
        producer.expect_nothing().await;
        producer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_no_reply_and_the_message_arrives_in_the_original_shape() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut producer = gw.identify(enc, "producer", "p").await;
        let target = json!({"application": "test-app-1", "ops": []});
        let id = push(
            &mut producer,
            "q1",
            target.clone(),
            Value::Null,
            json!("test!"),
        )
        .await;
        let mut consumer = gw.identify(enc, "test-app-1", "client-1").await;
        let before = now_ms();
        request(&mut consumer, "q1").await;
        let frame = consumer.recv().await;
        let ts = frame["ts"].as_u64().expect("ts");
        assert!(before <= ts && ts <= now_ms(), "{enc:?}: ts {ts}");
        assert_envelope(&frame);
        assert_eq!(
            frame,
            delivery_of(&frame, "q1", &id, Value::Null, json!("test!")),
            "{enc:?}"
        );
        // The delivery was the only frame: there is no direct reply to the request.
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, "q1").await, counts("q1", [0, 1, 0, 0, 0]));

        // The other order: a waiting consumer gets a message as soon as it is stored.
        request(&mut consumer, "q1").await;
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, "q1").await, counts("q1", [0, 1, 0, 0, 1]));
        let second = push(
            &mut producer,
            "q1",
            target,
            json!("p-1"),
            json!({"job": 17}),
        )
        .await;
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, "q1", &second, json!("p-1"), json!({"job": 17})),
            "{enc:?}"
        );
        consumer.expect_nothing().await;
        producer.expect_nothing().await;
        assert_eq!(stats(&gw, "q1").await, counts("q1", [0, 2, 0, 0, 0]));
        consumer.close().await;
        producer.close().await;
    }
}

// === item 51: no head-of-line blocking ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nobody_waiting_matches_stays_ready_and_does_not_block_later_ones() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut producer = gw.identify(enc, "producer", "p").await;
        let stuck = push(
            &mut producer,
            "q1",
            json!({"application": "unresolveable-app-name", "ops": []}),
            json!("m1"),
            json!(1),
        )
        .await;
        let mut consumer = gw.identify(enc, "test-app-1", "client-1").await;
        request(&mut consumer, "q1").await;
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, "q1").await, counts("q1", [1, 0, 0, 0, 1]));

        let next = push(
            &mut producer,
            "q1",
            json!({"application": "test-app-1", "ops": []}),
            json!("m2"),
            json!(2),
        )
        .await;
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, "q1", &next, json!("m2"), json!(2))
        );
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, "q1").await, counts("q1", [1, 1, 0, 0, 0]));

        // The first message was kept, in place, for a consumer it matches.
        let mut late = gw.identify(enc, "unresolveable-app-name", "c").await;
        request(&mut late, "q1").await;
        let frame = late.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, "q1", &stuck, json!("m1"), json!(1))
        );
        assert_eq!(stats(&gw, "q1").await, counts("q1", [0, 2, 0, 0, 0]));
        for client in [late, consumer, producer] {
            client.close().await;
        }
    }
}

// === item 52: ack timeout, dead-lettering, redelivery ===

/// Timing bounds of SPEC §8.7 with 100 ms timers: a transition `n` timeouts after delivery
/// happens no earlier than `n` × 100 ms and no later than `n` × (100 + 100) ms, plus the
/// checklist's 100 ms of slack.
const TIMER_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_is_dead_lettered_then_ready_again_with_the_same_id() {
    let gw = TestGateway::start_with(short_timers(TIMER_MS)).await;
    for enc in Enc::ALL {
        let q = format!("q1-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, "test-app-1", "client-1").await;
        let id = push(
            &mut producer,
            &q,
            json!({"application": "test-app-1"}),
            json!("n"),
            json!({"x": 1.5}),
        )
        .await;
        let requested = Instant::now();
        request(&mut consumer, &q).await;
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, &q, &id, json!("n"), json!({"x": 1.5}))
        );
        let seen = stats(&gw, &q).await;
        // The message cannot time out before 100 ms after its delivery, which came after
        // `requested`; later than that, the counts may already have moved on.
        if requested.elapsed() < Duration::from_millis(TIMER_MS) {
            assert_eq!(seen, counts(&q, [0, 1, 0, 0, 0]), "{enc:?}");
        }

        let dead = counts_become(&gw, &q, [0, 0, 1, 0, 0]).await;
        let dead_after = dead.duration_since(requested);
        assert!(
            dead_after >= Duration::from_millis(TIMER_MS),
            "{enc:?}: dead-lettered {dead_after:?} after the request"
        );
        // Nobody is waiting, so it stays ready at the back of the FIFO.
        let ready = counts_become(&gw, &q, [1, 0, 0, 0, 0]).await;
        let ready_after = ready.duration_since(requested);
        assert!(
            ready_after >= Duration::from_millis(2 * TIMER_MS),
            "{enc:?}: ready again {ready_after:?} after the request"
        );
        consumer.expect_nothing().await;

        request(&mut consumer, &q).await;
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, &q, &id, json!("n"), json!({"x": 1.5})),
            "{enc:?}: the redelivery keeps id, nonce and payload"
        );
        ack_accepted(&mut consumer, &q, &id).await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 0, 0]));
        consumer.close().await;
        producer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_gets_an_unacked_message_again_after_ack_timeout_plus_dlq_time() {
    let gw = TestGateway::start_with(short_timers(TIMER_MS)).await;
    for enc in Enc::ALL {
        let q = format!("q1-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, "test-app-1", "client-1").await;
        let id = push(
            &mut producer,
            &q,
            json!({"application": "test-app-1"}),
            Value::Null,
            json!("test!"),
        )
        .await;
        let requested = Instant::now();
        request(&mut consumer, &q).await;
        let first = consumer.recv().await;
        assert_eq!(expect_delivery(&first, &q).0, id);
        // Still in flight to it, the consumer asks for more: the same message comes back.
        request(&mut consumer, &q).await;
        let again = consumer.recv().await;
        let elapsed = requested.elapsed();
        assert_eq!(
            again,
            delivery_of(&again, &q, &id, Value::Null, json!("test!")),
            "{enc:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(2 * TIMER_MS),
            "{enc:?}: redelivered after {elapsed:?}, before ack timeout + dlq time"
        );
        assert!(
            elapsed <= Duration::from_millis(4 * TIMER_MS + 100),
            "{enc:?}: redelivered only after {elapsed:?}"
        );
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 1, 0, 0, 0]));
        ack_accepted(&mut consumer, &q, &id).await;
        consumer.close().await;
        producer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_from_the_last_consumer_is_accepted_while_dead_lettered_or_ready_again() {
    // A dead-letter time long enough for the dead-lettered state to be seen surely.
    let gw = TestGateway::start_with(|c| {
        c.queue.ack_timeout_ms = TIMER_MS;
        c.queue.dlq_time_ms = 3 * TIMER_MS;
        c.queue.sweep_interval_ms = 20;
    })
    .await;
    for enc in Enc::ALL {
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, "test-app-1", "client-1").await;
        for (late, state) in [("dead", [0, 0, 1, 0, 0]), ("ready", [1, 0, 0, 0, 0])] {
            let q = format!("late-{late}-{}", enc.name());
            let id = push(
                &mut producer,
                &q,
                json!({"application": "test-app-1"}),
                json!(late),
                json!(1),
            )
            .await;
            request(&mut consumer, &q).await;
            assert_eq!(expect_delivery(&consumer.recv().await, &q).0, id);
            counts_become(&gw, &q, state).await;
            ack_accepted(&mut consumer, &q, &id).await;
            assert_eq!(stats(&gw, &q).await, counts(&q, [0; 5]), "{enc:?} {late}");
            // Gone: asking again brings nothing.
            request(&mut consumer, &q).await;
            consumer.expect_nothing().await;
            cancel(&mut consumer, &q).await;
        }
        consumer.close().await;
        producer.close().await;
    }
}

// === item 53: acks ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_message_is_gone_for_good_and_only_its_consumer_could_ack_it_once() {
    let gw = TestGateway::start_with(short_timers(TIMER_MS)).await;
    for enc in Enc::ALL {
        let q = format!("q1-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, "test-app-1", "client-1").await;
        let mut other = gw.identify(enc, "test-app-1", "client-2").await;
        let target = json!({"application": "test-app-1"});
        let acked = push(&mut producer, &q, target.clone(), json!(1), json!(1)).await;
        request(&mut consumer, &q).await;
        assert_eq!(expect_delivery(&consumer.recv().await, &q).0, acked);

        // Another client, even of the same application, cannot ack it.
        ack(&mut other, &q, &acked).await;
        expect_unknown_id(&mut other, &q, &json!(acked)).await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 1, 0, 0, 0]));

        ack_accepted(&mut consumer, &q, &acked).await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 0, 0]));
        let listed = get_ok(&gw, "/api/v1/queues").await;
        for entry in listed["queues"].as_array().expect("queues") {
            if entry["name"] == q.as_str() {
                assert_eq!(*entry, counts(&q, [0, 0, 0, 0, 0]));
            }
        }
        ack(&mut consumer, &q, &acked).await;
        expect_unknown_id(&mut consumer, &q, &json!(acked)).await;

        // Never redelivered: a message left unacked after it comes back after its timeout;
        // the acked one, due back before it had it survived, does not.
        let unacked = push(&mut producer, &q, target, json!(2), json!(2)).await;
        request(&mut consumer, &q).await;
        assert_eq!(expect_delivery(&consumer.recv().await, &q).0, unacked);
        request(&mut consumer, &q).await;
        let back = consumer.recv().await;
        assert_eq!(
            expect_delivery(&back, &q).0,
            unacked,
            "{enc:?}: the acked {acked} came back"
        );
        ack_accepted(&mut consumer, &q, &unacked).await;
        other.expect_nothing().await;
        for client in [other, consumer, producer] {
            client.close().await;
        }
    }
}

// === item 54: one message per request ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_while_waiting_still_buys_exactly_one_message() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let q = format!("q1-{}", enc.name());
        let app = format!("test-app-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, &app, "client-1").await;
        request(&mut consumer, &q).await;
        request(&mut consumer, &q).await;
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 0, 1]));

        let target = json!({"application": app});
        let first = push(&mut producer, &q, target.clone(), json!("a"), json!("a")).await;
        let second = push(&mut producer, &q, target, json!("b"), json!("b")).await;
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, &q, &first, json!("a"), json!("a"))
        );
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [1, 1, 0, 0, 0]));

        request(&mut consumer, &q).await;
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, &q, &second, json!("b"), json!("b"))
        );
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 2, 0, 0, 0]));
        consumer.close().await;
        producer.close().await;
    }
}

// === item 55: longest waiting wins ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_that_has_waited_longest_gets_the_next_message() {
    let gw = TestGateway::start().await;
    let mut producer = gw.identify(Enc::Json, "producer", "p").await;
    let mut x = gw.identify(Enc::Json, "workers", "x").await;
    let mut y = gw.identify(Enc::Msgpack, "workers", "y").await;
    let target = json!({"application": "workers"});
    // X, then Y, then Y, then X: the order of requests decides, not the identity.
    for (round, first_is_x) in [(0, true), (1, false)] {
        let (first, second) = if first_is_x {
            (&mut x, &mut y)
        } else {
            (&mut y, &mut x)
        };
        request(first, "q1").await;
        first.expect_nothing().await;
        request(second, "q1").await;
        second.expect_nothing().await;
        let a = push(
            &mut producer,
            "q1",
            target.clone(),
            json!(round),
            json!("a"),
        )
        .await;
        assert_eq!(expect_delivery(&first.recv().await, "q1").0, a);
        second.expect_nothing().await;
        let b = push(
            &mut producer,
            "q1",
            target.clone(),
            json!(round),
            json!("b"),
        )
        .await;
        assert_eq!(expect_delivery(&second.recv().await, "q1").0, b);
        first.expect_nothing().await;
        ack_accepted(first, "q1", &a).await;
        ack_accepted(second, "q1", &b).await;
    }
    for client in [x, y, producer] {
        client.close().await;
    }
}

// === item 56: max_deliveries parks, replay brings back ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_parked_after_max_deliveries_missed_acks_and_replay_resets_its_count() {
    let gw = TestGateway::start_with(|c| {
        short_timers(TIMER_MS)(c);
        c.queue.max_deliveries = 2;
    })
    .await;
    for enc in Enc::ALL {
        let q = format!("q1-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, "worker", "w1").await;
        let pushed = now_ms();
        let id = push(
            &mut producer,
            &q,
            json!({"application": "worker"}),
            json!("p-1"),
            json!({"job": 17, "w": 1.0}),
        )
        .await;
        // Two deliveries, neither acked.
        for _ in 0..2 {
            request(&mut consumer, &q).await;
            assert_eq!(expect_delivery(&consumer.recv().await, &q).0, id);
        }
        counts_become(&gw, &q, [0, 0, 0, 1, 0]).await;
        let listed = get_ok(&gw, &format!("/api/v1/queues/{q}/dead")).await;
        let message = &listed["messages"][0];
        let enqueued_at = message["enqueued_at"].as_u64().expect("enqueued_at");
        let parked_at = message["parked_at"].as_u64().expect("parked_at");
        assert_eq!(
            listed,
            json!({"queue": q, "messages": [{"id": id, "nonce": "p-1",
                   "target": {"application": "worker"}, "payload": {"job": 17, "w": 1.0},
                   "deliveries": 2, "enqueued_at": enqueued_at, "parked_at": parked_at}]}),
            "{enc:?}"
        );
        // Re-queued once (after the first missed ack), parked after the second.
        assert!(
            pushed < enqueued_at && enqueued_at < parked_at && parked_at <= now_ms(),
            "{enc:?}: pushed {pushed}, enqueued_at {enqueued_at}, parked_at {parked_at}"
        );

        // Parked messages are not delivered to waiting consumers.
        request(&mut consumer, &q).await;
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 1, 1]));

        let (status, body) = call(
            &gw,
            Method::POST,
            &format!("/api/v1/queues/{q}/dead/{id}/replay"),
            &[],
        )
        .await;
        assert_eq!((status, body), (StatusCode::OK, json!({"replayed": [id]})));
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, &q, &id, json!("p-1"), json!({"job": 17, "w": 1.0}))
        );
        assert_eq!(
            get_ok(&gw, &format!("/api/v1/queues/{q}/dead")).await,
            json!({"queue": q, "messages": []})
        );
        // `deliveries` restarted from 0: it takes two more missed acks to park it again.
        request(&mut consumer, &q).await;
        assert_eq!(expect_delivery(&consumer.recv().await, &q).0, id);
        counts_become(&gw, &q, [0, 0, 0, 1, 0]).await;
        let listed = get_ok(&gw, &format!("/api/v1/queues/{q}/dead")).await;
        assert_eq!(listed["messages"][0]["deliveries"], 2, "{listed}");

        // Its last consumer may still ack it while it is parked.
        ack_accepted(&mut consumer, &q, &id).await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 0, 0]));
        consumer.close().await;
        producer.close().await;
    }
}

// === item 57: durability across a restart ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_keep_their_id_state_and_timestamps_across_a_restart() {
    let data_dir = temp_dir("queues-restart");
    let config = |dir: std::path::PathBuf| {
        move |c: &mut ganglion_gateway::Config| {
            c.queue.data_dir = dir;
            c.queue.ack_timeout_ms = TIMER_MS;
            // Dead-lettered messages stay dead for the whole test.
            c.queue.dlq_time_ms = 600_000;
            c.queue.sweep_interval_ms = 20;
            c.queue.max_deliveries = 2;
        }
    };
    let gw = TestGateway::start_with(config(data_dir.clone())).await;
    let mut producer = gw.identify(Enc::Msgpack, "producer", "p").await;
    let mut first = gw.identify(Enc::Json, "worker", "w1").await;
    let mut second = gw.identify(Enc::Msgpack, "worker", "w2").await;
    let mut watch = watcher(&gw, Enc::Json, "restart").await;
    let target = json!({"application": "worker"});
    let q = "jobs";

    // `parked`: delivered to w1, returned when w1 left, delivered to w2, timed out → parked.
    let parked = push(
        &mut producer,
        q,
        target.clone(),
        json!("p"),
        json!({"m": "p"}),
    )
    .await;
    request(&mut first, q).await;
    assert_eq!(expect_delivery(&first.recv().await, q).0, parked);
    first.close().await;
    await_disconnect(&mut watch, "worker", "w1").await;
    request(&mut second, q).await;
    assert_eq!(expect_delivery(&second.recv().await, q).0, parked);
    counts_become(&gw, q, [0, 0, 0, 1, 0]).await;
    // `dead`: delivered once, timed out → dead-lettered for ten minutes.
    let dead = push(
        &mut producer,
        q,
        target.clone(),
        json!("d"),
        json!({"m": "d"}),
    )
    .await;
    request(&mut second, q).await;
    assert_eq!(expect_delivery(&second.recv().await, q).0, dead);
    counts_become(&gw, q, [0, 0, 1, 1, 0]).await;
    // `acked`: gone before the restart. `ready`: never delivered, each nonce kind kept.
    let acked = push(
        &mut producer,
        q,
        target.clone(),
        json!("a"),
        json!({"m": "a"}),
    )
    .await;
    request(&mut second, q).await;
    assert_eq!(expect_delivery(&second.recv().await, q).0, acked);
    ack_accepted(&mut second, q, &acked).await;
    let mut ready = Vec::new();
    for nonce in [json!(null), json!(7), json!(-2.5), json!({"k": [1, "x"]})] {
        let payload = json!({"nonce was": nonce, "f": 1.0});
        let id = push(
            &mut producer,
            q,
            target.clone(),
            nonce.clone(),
            payload.clone(),
        )
        .await;
        ready.push((id, nonce, payload));
    }
    assert_eq!(stats(&gw, q).await, counts(q, [4, 0, 1, 1, 0]));
    let parked_before = get_ok(&gw, &format!("/api/v1/queues/{q}/dead")).await;

    // A graceful stop; the node's directory must outlive it, so it is detached from the
    // handle that would remove it.
    let mut gw = gw;
    gw.data_dir = temp_dir("queues-restart-decoy");
    let clients = [producer, second, watch];
    let drained = tokio::spawn(gw.drain());
    for mut client in clients {
        let closed = client.closed().await;
        assert_eq!(closed.code, Some(1001), "{:?}", closed.frames);
    }
    drained.await.expect("drained");

    let gw = TestGateway::start_with(config(data_dir.clone())).await;
    assert_eq!(stats(&gw, q).await, counts(q, [4, 0, 1, 1, 0]));
    assert_eq!(
        get_ok(&gw, &format!("/api/v1/queues/{q}/dead")).await,
        parked_before
    );
    let mut consumer = gw.identify(Enc::Msgpack, "worker", "w3").await;
    for (id, nonce, payload) in &ready {
        request(&mut consumer, q).await;
        let frame = consumer.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, q, id, nonce.clone(), payload.clone())
        );
        ack_accepted(&mut consumer, q, id).await;
    }
    // Neither the acked nor the dead-lettered message comes, nor the parked one until replayed.
    request(&mut consumer, q).await;
    consumer.expect_nothing().await;
    assert_eq!(stats(&gw, q).await, counts(q, [0, 0, 1, 1, 1]));
    let (status, body) = call(
        &gw,
        Method::POST,
        &format!("/api/v1/queues/{q}/dead/replay"),
        &[],
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"replayed": [parked]}))
    );
    let frame = consumer.recv().await;
    assert_eq!(
        frame,
        delivery_of(&frame, q, &parked, json!("p"), json!({"m": "p"}))
    );
    ack_accepted(&mut consumer, q, &parked).await;
    assert_eq!(stats(&gw, q).await, counts(q, [0, 0, 1, 0, 0]));
    consumer.close().await;
    drop(gw);
    let _ = std::fs::remove_dir_all(&data_dir);
}

// === item 58: queue names and malformed queue events ===

/// Queue names that are refused, with their reasons (SPEC §8.1). `None` omits the key.
fn bad_names() -> Vec<(Option<Value>, &'static str)> {
    vec![
        (None, "queue: is required"),
        (Some(Value::Null), "queue: is required"),
        (Some(json!(5)), "queue: must be a string"),
        (Some(json!(["q"])), "queue: must be a string"),
        (Some(json!("")), "queue: must not be empty"),
        (
            Some(json!("x".repeat(256))),
            "queue: must be at most 255 bytes",
        ),
        // 128 two-byte characters: the limit counts bytes.
        (
            Some(json!("é".repeat(128))),
            "queue: must be at most 255 bytes",
        ),
        (
            Some(json!("a b")),
            "queue: must not contain whitespace or control characters",
        ),
        (
            Some(json!("a\tb")),
            "queue: must not contain whitespace or control characters",
        ),
        (
            Some(json!("a\u{7f}b")),
            "queue: must not contain whitespace or control characters",
        ),
        (
            Some(json!("a\u{a0}b")),
            "queue: must not contain whitespace or control characters",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_name_with_a_space_is_refused_and_a_missing_nonce_is_confirmed_as_null() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let mut client = gw.identify(enc, "producer", enc.name()).await;
        client
            .dispatch(
                "QUEUE",
                json!({"queue": "a b", "target": {"application": "test-app-1"}, "payload": 1}),
            )
            .await;
        let frame = client.recv().await;
        assert_eq!(
            frame,
            json!({"op": 3, "t": null, "ts": frame["ts"],
                   "d": {"error": "invalid queue name",
                         "extra_info": {"queue": "a b",
                                        "reason": "queue: must not contain whitespace or control characters"}}}),
            "{enc:?}"
        );
        let q = format!("q1-{}", enc.name());
        client
            .dispatch(
                "QUEUE",
                json!({"queue": q, "target": {"application": "test-app-1"}, "payload": "test!"}),
            )
            .await;
        expect_confirm(&client.recv().await, &q, &Value::Null);
        client.expect_nothing().await;
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_event_refuses_an_invalid_name_with_its_reason_and_stores_nothing() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let mut client = gw.identify(enc, "test-app-1", enc.name()).await;
        for (name, reason) in bad_names() {
            for t in [
                "QUEUE",
                "QUEUE_REQUEST",
                "QUEUE_REQUEST_CANCEL",
                "QUEUE_ACK",
            ] {
                let mut d = match t {
                    "QUEUE" => json!({"target": {"application": "test-app-1"}, "payload": 1}),
                    "QUEUE_ACK" => json!({"id": "00000000-0000-4000-8000-000000000000"}),
                    _ => json!({}),
                };
                if let Some(name) = &name {
                    d["queue"] = name.clone();
                }
                client.dispatch(t, d).await;
                let frame = client.recv().await;
                assert_eq!(
                    expect_op3(&frame, "invalid queue name"),
                    json!({"queue": name.clone().unwrap_or(Value::Null), "reason": reason}),
                    "{enc:?} {t}"
                );
            }
        }
        // 255 bytes is the longest name, in bytes.
        for name in ["x".repeat(255), format!("{}x", "é".repeat(127))] {
            let id = push(
                &mut client,
                &name,
                json!({"application": "test-app-1"}),
                json!(name.len()),
                json!(1),
            )
            .await;
            request(&mut client, &name).await;
            assert_eq!(expect_delivery(&client.recv().await, &name).0, id);
            ack_accepted(&mut client, &name, &id).await;
        }
        client.expect_nothing().await;
        client.close().await;
    }
    // None of the refused events left a trace.
    assert_eq!(get_ok(&gw, "/api/v1/queues").await, json!({"queues": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queue_events_get_invalid_dispatch_payload_or_invalid_query_and_stay_connected() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let mut client = gw.identify(enc, "test-app-1", enc.name()).await;
        let malformed = [
            ("QUEUE", json!(null)),
            ("QUEUE", json!("jobs")),
            ("QUEUE", json!([1])),
            ("QUEUE", json!({"queue": "q", "payload": 1})),
            (
                "QUEUE",
                json!({"queue": "q", "target": {"application": "a"}}),
            ),
            // A missing payload is reported before a bad name.
            (
                "QUEUE",
                json!({"queue": "a b", "target": {"application": "a"}}),
            ),
            ("QUEUE_REQUEST", json!(null)),
            ("QUEUE_REQUEST", json!(["q"])),
            ("QUEUE_REQUEST_CANCEL", json!(7)),
            ("QUEUE_ACK", json!(null)),
            ("QUEUE_ACK", json!({"queue": "q"})),
            ("QUEUE_ACK", json!({"queue": "q", "id": null})),
            ("QUEUE_ACK", json!({"queue": "q", "id": 5})),
            ("QUEUE_ACK", json!({"queue": "q", "id": ["x"]})),
            // `QUEUE_CONFIRM` is sent by ganglion only.
            (
                "QUEUE_CONFIRM",
                json!({"queue": "q", "nonce": null, "id": "x"}),
            ),
        ];
        for (t, d) in malformed {
            client
                .send(json!({"op": 4, "t": t, "d": d, "ts": 42}))
                .await;
            let frame = client.recv().await;
            assert_eq!(
                expect_op3(&frame, "invalid dispatch payload"),
                json!({"op": 4, "t": t, "ts": 42, "d": d}),
                "{enc:?} {t}"
            );
        }
        // No `ts` and no `d` at all: echoed as null.
        client.send(json!({"op": 4, "t": "QUEUE_REQUEST"})).await;
        assert_eq!(
            expect_op3(&client.recv().await, "invalid dispatch payload"),
            json!({"op": 4, "t": "QUEUE_REQUEST", "ts": null, "d": null})
        );
        // An invalid target is an invalid query, with the nonce.
        for (target, reason) in [
            (json!(5), "query: must be an object"),
            (json!({"application": "a", "ops": 5}), "ops: must be a list"),
            (
                json!({"application": "a", "ops": [{"path": "gpu", "op": "$eq", "to": {"value": 1}}]}),
                "path: must start with `/`, got: 'gpu'",
            ),
        ] {
            client
                .dispatch(
                    "QUEUE",
                    json!({"queue": "q", "target": target, "nonce": {"n": 1}, "payload": 1}),
                )
                .await;
            assert_eq!(
                expect_op3(&client.recv().await, "invalid query"),
                json!({"reason": reason, "nonce": {"n": 1}}),
                "{enc:?} {target}"
            );
        }
        client.expect_nothing().await;
        client.close().await;
    }
    assert_eq!(get_ok(&gw, "/api/v1/queues").await, json!({"queues": []}));
}

// === QUEUE_CONFIRM: nonces, order, pipelining ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_and_payloads_of_every_kind_come_back_untouched_in_confirm_and_delivery() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let q = format!("kinds-{}", enc.name());
        let app = format!("kinds-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", enc.name()).await;
        let mut consumer = gw.identify(enc, &app, "c").await;
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(-7),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(7.0),
            json!(-0.25),
            json!(1e300),
            json!(""),
            json!("é \"q\" \\ \n"),
            json!([]),
            json!([1, [2.0, {"a": null}]]),
            json!({}),
            json!({"nested": {"list": [1.0, 2, "x"], "": false}}),
        ];
        for (i, nonce) in values.iter().enumerate() {
            let payload = &values[values.len() - 1 - i];
            let id = push(
                &mut producer,
                &q,
                json!({"application": app}),
                nonce.clone(),
                payload.clone(),
            )
            .await;
            request(&mut consumer, &q).await;
            let frame = consumer.recv().await;
            assert_eq!(
                frame,
                delivery_of(&frame, &q, &id, nonce.clone(), payload.clone()),
                "{enc:?}"
            );
            ack_accepted(&mut consumer, &q, &id).await;
        }
        // Unknown members of `d` are ignored; `nonce` absent is null in both frames.
        producer
            .dispatch(
                "QUEUE",
                json!({"queue": q, "target": {"application": app}, "payload": 1, "extra": true}),
            )
            .await;
        let id = expect_confirm(&producer.recv().await, &q, &Value::Null);
        request(&mut consumer, &q).await;
        let frame = consumer.recv().await;
        assert_eq!(frame, delivery_of(&frame, &q, &id, Value::Null, json!(1)));
        ack_accepted(&mut consumer, &q, &id).await;
        producer.expect_nothing().await;
        consumer.close().await;
        producer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queues_are_answered_in_order_with_errors_and_other_replies_in_their_place() {
    const BURST: usize = 600;
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let q = format!("burst-{}", enc.name());
        let app = format!("burst-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", enc.name()).await;
        // What each frame of the burst must get back, in order.
        enum Reply {
            Confirm(Value),
            BadName,
            BadQuery,
            QueryNodes(usize),
            HeartbeatAck,
        }
        let mut expected = Vec::new();
        for i in 0..BURST {
            let nonce = json!(format!("n-{i}"));
            let queue_frame = |queue: &str, target: Value| {
                json!({"op": 4, "t": "QUEUE",
                       "d": {"queue": queue, "target": target, "nonce": nonce, "payload": i}})
            };
            let (frame, reply) = match i {
                97 | 301 => (
                    queue_frame("a b", json!({"application": app})),
                    Reply::BadName,
                ),
                150 => (queue_frame(&q, json!({"ops": 1})), Reply::BadQuery),
                200 | 450 => (
                    json!({"op": 4, "t": "QUERY_NODES", "d": {"application": "nobody", "nonce": i}}),
                    Reply::QueryNodes(i),
                ),
                260 => (json!({"op": 5, "d": {}}), Reply::HeartbeatAck),
                _ => (
                    queue_frame(&q, json!({"application": app})),
                    Reply::Confirm(nonce.clone()),
                ),
            };
            producer.send(frame).await;
            expected.push(reply);
        }
        let mut ids = Vec::new();
        for (i, reply) in expected.iter().enumerate() {
            let frame = producer.recv().await;
            match reply {
                Reply::Confirm(nonce) => ids.push(expect_confirm(&frame, &q, nonce)),
                Reply::BadName => assert_eq!(
                    expect_op3(&frame, "invalid queue name"),
                    json!({"queue": "a b",
                           "reason": "queue: must not contain whitespace or control characters"}),
                    "{enc:?} frame {i}"
                ),
                Reply::BadQuery => assert_eq!(
                    expect_op3(&frame, "invalid query"),
                    json!({"reason": "ops: must be a list", "nonce": format!("n-{i}")}),
                    "{enc:?} frame {i}"
                ),
                Reply::QueryNodes(n) => assert_eq!(
                    frame,
                    json!({"op": 4, "t": "QUERY_NODES", "ts": frame["ts"],
                           "d": {"nonce": n, "nodes": []}}),
                    "{enc:?} frame {i}"
                ),
                Reply::HeartbeatAck => assert_eq!(
                    frame,
                    json!({"op": 6, "t": null, "ts": frame["ts"],
                           "d": {"client_id": enc.name()}}),
                    "{enc:?} frame {i}"
                ),
            }
        }
        producer.expect_nothing().await;
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{enc:?}: ids are unique");
        assert_eq!(
            stats(&gw, &q).await,
            counts(&q, [ids.len() as u64, 0, 0, 0, 0])
        );

        // One consumer, one target, no redeliveries: delivery order is push order.
        let mut consumer = gw.identify(enc, &app, "c").await;
        for id in &ids {
            request(&mut consumer, &q).await;
            assert_eq!(expect_delivery(&consumer.recv().await, &q).0, *id);
            ack(&mut consumer, &q, id).await;
        }
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 0, 0]));
        consumer.close().await;
        producer.close().await;
    }
}

// === routing by query ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_only_consumers_whose_metadata_matches_their_target() {
    for enc in Enc::ALL {
        let gw = TestGateway::start().await;
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut cpu = identify_meta(
            &gw,
            enc,
            "worker",
            "cpu",
            json!({"gpu": meta("boolean", false)}),
        )
        .await;
        let mut gpu = identify_meta(
            &gw,
            enc,
            "worker",
            "gpu",
            json!({"gpu": meta("boolean", true)}),
        )
        .await;
        let q = "jobs";

        // cpu waits longer, but only gpu matches.
        request(&mut cpu, q).await;
        cpu.expect_nothing().await;
        request(&mut gpu, q).await;
        gpu.expect_nothing().await;
        let for_gpu = push(
            &mut producer,
            q,
            gpu_is(true),
            json!("g"),
            json!({"job": 1}),
        )
        .await;
        let frame = gpu.recv().await;
        assert_eq!(
            frame,
            delivery_of(&frame, q, &for_gpu, json!("g"), json!({"job": 1}))
        );
        cpu.expect_nothing().await;
        // Any worker: cpu, still waiting.
        let any = push(&mut producer, q, worker(json!([])), json!("a"), json!(2)).await;
        assert_eq!(expect_delivery(&cpu.recv().await, q).0, any);
        gpu.expect_nothing().await;

        // A message for a cpu worker, with only gpu waiting, waits.
        request(&mut gpu, q).await;
        let for_cpu = push(&mut producer, q, gpu_is(false), json!("c"), json!(3)).await;
        gpu.expect_nothing().await;
        assert_eq!(stats(&gw, q).await, counts(q, [1, 2, 0, 0, 1]));
        request(&mut cpu, q).await;
        assert_eq!(expect_delivery(&cpu.recv().await, q).0, for_cpu);
        cancel(&mut gpu, q).await;

        // A metadata change makes a waiting consumer eligible at once.
        let later = push(&mut producer, q, gpu_is(true), json!("l"), json!(4)).await;
        request(&mut cpu, q).await;
        cpu.expect_nothing().await;
        cpu.dispatch("UPDATE_METADATA", json!({"gpu": meta("boolean", true)}))
            .await;
        assert_eq!(expect_delivery(&cpu.recv().await, q).0, later);
        cpu.expect_nothing().await;

        // `optional`: while some client matches the ops, only it may get the message; once
        // none is registered, the application alone decides.
        cpu.update_metadata(json!({"gpu": meta("boolean", false)}))
            .await;
        let optional = json!({"application": "worker", "optional": true,
                              "ops": [{"path": "/gpu", "op": "$eq", "to": {"value": true}}]});
        request(&mut cpu, q).await;
        let fallback = push(&mut producer, q, optional, json!("o"), json!(5)).await;
        cpu.expect_nothing().await;
        assert_eq!(stats(&gw, q).await, counts(q, [1, 4, 0, 0, 1]));
        gpu.close().await;
        assert_eq!(expect_delivery(&cpu.recv().await, q).0, fallback);
        cpu.expect_nothing().await;
        producer.expect_nothing().await;
        cpu.close().await;
        producer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_key_and_droppable_do_not_apply_to_queued_messages() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("loaded-{}", enc.name());
        let q = format!("selected-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut heavy = identify_meta(
            &gw,
            enc,
            &app,
            "heavy",
            json!({"load": meta("integer", 60)}),
        )
        .await;
        let mut light = identify_meta(
            &gw,
            enc,
            &app,
            "light",
            json!({"load": meta("integer", 10)}),
        )
        .await;
        request(&mut heavy, &q).await;
        heavy.expect_nothing().await;
        request(&mut light, &q).await;
        light.expect_nothing().await;
        let target = json!({"application": app, "selector": {"$min": "/load"}, "key": "k",
                            "droppable": true});
        // The longest waiting match gets it, not the selector's pick.
        let first = push(&mut producer, &q, target.clone(), json!(1), json!(1)).await;
        assert_eq!(expect_delivery(&heavy.recv().await, &q).0, first);
        light.expect_nothing().await;
        let second = push(&mut producer, &q, target, json!(2), json!(2)).await;
        assert_eq!(expect_delivery(&light.recv().await, &q).0, second);
        // Matching nobody, droppable or not, a message waits.
        for droppable in [true, false] {
            push(
                &mut producer,
                &q,
                json!({"application": "nobody", "droppable": droppable}),
                json!(droppable),
                json!(3),
            )
            .await;
        }
        assert_eq!(stats(&gw, &q).await, counts(&q, [2, 2, 0, 0, 0]));
        producer.expect_nothing().await;
        for client in [heavy, light, producer] {
            client.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_waiting_on_several_queues_gets_one_message_from_each() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("multi-{}", enc.name());
        let queues = [format!("m1-{}", enc.name()), format!("m2-{}", enc.name())];
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, &app, "c").await;
        for q in &queues {
            request(&mut consumer, q).await;
        }
        let mut ids = Vec::new();
        for q in queues.iter().rev() {
            for n in 0..2 {
                let id = push(
                    &mut producer,
                    q,
                    json!({"application": app}),
                    json!(n),
                    json!(n),
                )
                .await;
                ids.push((q, n, id));
            }
        }
        // One from each queue, the oldest of each; the second of each waits.
        for (q, n, id) in &ids {
            if *n == 0 {
                assert_eq!(expect_delivery(&consumer.recv().await, q).0, *id);
            }
        }
        consumer.expect_nothing().await;
        for q in &queues {
            assert_eq!(stats(&gw, q).await, counts(q, [1, 1, 0, 0, 0]));
        }
        for client in [consumer, producer] {
            client.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applications_sharing_a_queue_each_get_only_their_own_messages_in_order() {
    let gw = TestGateway::start().await;
    let mut producer = gw.identify(Enc::Json, "producer", "p").await;
    let mut a = gw.identify(Enc::Json, "app-a", "c").await;
    let mut b = gw.identify(Enc::Msgpack, "app-b", "c").await;
    let q = "shared";
    request(&mut a, q).await;
    request(&mut b, q).await;
    a.expect_nothing().await;
    b.expect_nothing().await;
    let mut sent: BTreeMap<&str, Vec<(String, Value)>> = BTreeMap::new();
    for i in 0..20 {
        let app = if i % 3 == 0 { "app-b" } else { "app-a" };
        let nonce = json!(format!("{app}-{i}"));
        let id = push(
            &mut producer,
            q,
            json!({"application": app}),
            nonce.clone(),
            json!(i),
        )
        .await;
        sent.entry(app).or_default().push((id, nonce));
    }
    for (app, consumer) in [("app-a", &mut a), ("app-b", &mut b)] {
        for (id, nonce) in &sent[app] {
            let frame = consumer.recv().await;
            let (got, got_nonce, _) = expect_delivery(&frame, q);
            assert_eq!((&got, &got_nonce), (id, nonce), "{app}");
            ack(consumer, q, id).await;
            request(consumer, q).await;
        }
        consumer.expect_nothing().await;
    }
    assert_eq!(stats(&gw, q).await, counts(q, [0, 0, 0, 0, 2]));
    for client in [a, b, producer] {
        client.close().await;
    }
}

// === disconnects and reconnects ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_to_a_consumer_that_leaves_goes_at_once_to_another_with_the_same_id() {
    // Default timers: a redelivery by the ack timer could not come before 30 s.
    let gw = TestGateway::start().await;
    for (enc, abrupt) in [
        (Enc::Json, false),
        (Enc::Msgpack, false),
        (Enc::Json, true),
        (Enc::Msgpack, true),
    ] {
        let q = format!("handover-{}-{abrupt}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut leaving = gw.identify(enc, "worker", "w1").await;
        let mut staying = gw.identify(enc, "worker", "w2").await;
        request(&mut leaving, &q).await;
        let id = push(
            &mut producer,
            &q,
            worker(json!([])),
            json!("h"),
            json!({"h": abrupt}),
        )
        .await;
        assert_eq!(expect_delivery(&leaving.recv().await, &q).0, id);
        request(&mut staying, &q).await;
        staying.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 1, 0, 0, 1]));

        let left = Instant::now();
        if abrupt {
            drop(leaving);
        } else {
            leaving.close().await;
        }
        let frame = staying.recv().await;
        let elapsed = left.elapsed();
        assert_eq!(
            frame,
            delivery_of(&frame, &q, &id, json!("h"), json!({"h": abrupt})),
            "{enc:?} abrupt={abrupt}"
        );
        assert!(
            elapsed < Duration::from_millis(15_000),
            "{enc:?}: handed over after {elapsed:?}"
        );
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 1, 0, 0, 0]));

        // Delivered to someone else since: the first consumer, back, may no longer ack it.
        let mut back = gw.identify(enc, "worker", "w1").await;
        ack(&mut back, &q, &id).await;
        expect_unknown_id(&mut back, &q, &json!(id)).await;
        ack_accepted(&mut staying, &q, &id).await;
        for client in [back, staying, producer] {
            client.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_reconnects_can_ack_what_its_previous_connection_received() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let q = format!("reconnect-{}", enc.name());
        let mut watch = watcher(&gw, enc, enc.name()).await;
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, "worker", "w1").await;
        let id = push(&mut producer, &q, worker(json!([])), json!(1), json!(1)).await;
        request(&mut consumer, &q).await;
        assert_eq!(expect_delivery(&consumer.recv().await, &q).0, id);
        // It leaves while in flight and waiting for more.
        request(&mut consumer, &q).await;
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 1, 0, 0, 1]));
        consumer.close().await;
        await_disconnect(&mut watch, "worker", "w1").await;
        // Returned to ready at once, but nobody else has received it; nobody waits any more.
        assert_eq!(stats(&gw, &q).await, counts(&q, [1, 0, 0, 0, 0]));

        let mut consumer = gw.identify(enc, "worker", "w1").await;
        ack_accepted(&mut consumer, &q, &id).await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 0, 0]));
        request(&mut consumer, &q).await;
        consumer.expect_nothing().await;
        for client in [consumer, producer, watch] {
            client.close().await;
        }
    }
}

// === restricted clients ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_clients_get_the_restricted_error_for_every_queue_event() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("secret".to_owned())).await;
    for enc in Enc::ALL {
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "r", "client_id": enc.name()}}))
            .await;
        let ready = client.recv().await;
        assert_eq!(ready["d"]["restricted"], true, "{ready}");
        let events = [
            (
                "QUEUE",
                json!({"queue": "q", "target": {"application": "r"}, "payload": 1}),
            ),
            ("QUEUE", json!({"queue": "a b"})),
            ("QUEUE", json!(null)),
            ("QUEUE_REQUEST", json!({"queue": "q"})),
            ("QUEUE_REQUEST", json!(5)),
            ("QUEUE_REQUEST_CANCEL", json!({"queue": "q"})),
            (
                "QUEUE_ACK",
                json!({"queue": "q", "id": "00000000-0000-4000-8000-000000000000"}),
            ),
            ("QUEUE_ACK", json!({"queue": "q", "id": 5})),
        ];
        // Sent back to back: each gets its own answer, in order.
        for (t, d) in &events {
            client.dispatch(t, d.clone()).await;
        }
        for (t, _) in &events {
            let frame = client.recv().await;
            assert_eq!(
                frame,
                json!({"op": 3, "t": null, "ts": frame["ts"],
                       "d": {"error": format!("invalid dispatch type {t} (are you restricted?)")}}),
                "{enc:?}"
            );
        }
        client.expect_nothing().await;
        client.close().await;
    }
    let (status, body) = call(
        &gw,
        Method::GET,
        "/api/v1/queues",
        &[("authorization", "secret")],
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"queues": []})));
}

// === client objects list the queues waited on ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_objects_list_the_queues_waited_on_in_request_order_until_cancel_or_delivery() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("lister-{}", enc.name());
        let mut asker = gw.identify(enc, "asker", enc.name()).await;
        let mut producer = gw.identify(enc, "producer", enc.name()).await;
        let mut consumer = gw.identify(enc, &app, "c").await;
        assert_eq!(waiting_on(&gw, &mut asker, &app).await, json!([]));
        for q in ["q-b", "q-a", "q-c", "q-a", "q-b"] {
            request(&mut consumer, q).await;
        }
        consumer.expect_nothing().await;
        assert_eq!(
            waiting_on(&gw, &mut asker, &app).await,
            json!(["q-b", "q-a", "q-c"])
        );

        cancel(&mut consumer, "q-a").await;
        // Cancelling what one does not wait on is no error.
        cancel(&mut consumer, "q-a").await;
        cancel(&mut consumer, "q-never").await;
        consumer.expect_nothing().await;
        assert_eq!(
            waiting_on(&gw, &mut asker, &app).await,
            json!(["q-b", "q-c"])
        );

        // A delivery ends the wait on its queue; asking again goes to the back.
        let id = push(
            &mut producer,
            "q-b",
            json!({"application": app}),
            json!(1),
            json!(1),
        )
        .await;
        assert_eq!(expect_delivery(&consumer.recv().await, "q-b").0, id);
        assert_eq!(waiting_on(&gw, &mut asker, &app).await, json!(["q-c"]));
        request(&mut consumer, "q-b").await;
        // Frames of different connections are not ordered: sync before asking.
        consumer.expect_nothing().await;
        assert_eq!(
            waiting_on(&gw, &mut asker, &app).await,
            json!(["q-c", "q-b"])
        );

        // Cancel leaves the message in flight alone: it can still be acked.
        cancel(&mut consumer, "q-b").await;
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, "q-b").await, counts("q-b", [0, 1, 0, 0, 0]));
        ack_accepted(&mut consumer, "q-b", &id).await;
        // A cancelled queue gets nothing.
        push(
            &mut producer,
            "q-a",
            json!({"application": app}),
            json!(2),
            json!(2),
        )
        .await;
        consumer.expect_nothing().await;
        assert_eq!(stats(&gw, "q-a").await, counts("q-a", [1, 0, 0, 0, 0]));

        cancel(&mut consumer, "q-c").await;
        consumer.expect_nothing().await;
        assert_eq!(waiting_on(&gw, &mut asker, &app).await, json!([]));
        // Clean up for the next encoding.
        request(&mut consumer, "q-a").await;
        let (id, _, _) = expect_delivery(&consumer.recv().await, "q-a");
        ack_accepted(&mut consumer, "q-a", &id).await;
        for client in [consumer, producer, asker] {
            client.close().await;
        }
    }
}

// === QUEUE_ACK errors ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_unknown_foreign_or_misaddressed_messages_are_refused_and_the_right_one_still_works()
 {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let q = format!("acks-{}", enc.name());
        let mut producer = gw.identify(enc, "producer", "p").await;
        let mut consumer = gw.identify(enc, "worker", "w1").await;
        let mut other = gw.identify(enc, "worker", "w2").await;
        let id = push(&mut producer, &q, worker(json!([])), json!(1), json!(1)).await;
        request(&mut consumer, &q).await;
        assert_eq!(expect_delivery(&consumer.recv().await, &q).0, id);

        for (queue, unknown) in [
            (q.clone(), "00000000-0000-4000-8000-000000000000".to_owned()),
            (q.clone(), "not-a-uuid".to_owned()),
            (q.clone(), id.to_uppercase()),
            (format!("{q}-other"), id.clone()),
        ] {
            ack(&mut consumer, &queue, &unknown).await;
            expect_unknown_id(&mut consumer, &queue, &json!(unknown)).await;
        }
        ack(&mut other, &q, &id).await;
        expect_unknown_id(&mut other, &q, &json!(id)).await;
        for d in [
            json!({"queue": q, "id": 5}),
            json!({"queue": q, "id": null}),
            json!({"queue": q}),
            json!({"queue": q, "id": {"id": id}}),
            json!([q, id]),
        ] {
            consumer.dispatch("QUEUE_ACK", d.clone()).await;
            assert_eq!(
                expect_op3(&consumer.recv().await, "invalid dispatch payload"),
                json!({"op": 4, "t": "QUEUE_ACK", "ts": null, "d": d})
            );
        }
        consumer
            .dispatch("QUEUE_ACK", json!({"queue": "a b", "id": id}))
            .await;
        assert_eq!(
            expect_op3(&consumer.recv().await, "invalid queue name"),
            json!({"queue": "a b",
                   "reason": "queue: must not contain whitespace or control characters"})
        );
        // None of that touched the message.
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 1, 0, 0, 0]));
        ack_accepted(&mut consumer, &q, &id).await;
        assert_eq!(stats(&gw, &q).await, counts(&q, [0, 0, 0, 0, 0]));
        other.expect_nothing().await;
        for client in [consumer, other, producer] {
            client.close().await;
        }
    }
}

// === HTTP endpoints (SPEC §9.9) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_statistics_list_every_queue_with_its_counts() {
    let gw = TestGateway::start().await;
    assert_eq!(get_ok(&gw, "/api/v1/queues").await, json!({"queues": []}));
    let mut producer = gw.identify(Enc::Json, "producer", "p").await;
    let mut consumer = gw.identify(Enc::Msgpack, "worker", "w").await;
    let mut idle = gw.identify(Enc::Json, "worker", "idle").await;
    for i in 0..3 {
        push(
            &mut producer,
            "backlog",
            json!({"application": "nobody"}),
            json!(i),
            json!(i),
        )
        .await;
    }
    push(&mut producer, "busy", worker(json!([])), json!(0), json!(0)).await;
    request(&mut consumer, "busy").await;
    expect_delivery(&consumer.recv().await, "busy");
    request(&mut consumer, "busy").await;
    request(&mut idle, "busy").await;
    request(&mut idle, "empty").await;
    consumer.expect_nothing().await;
    idle.expect_nothing().await;

    let listed = get_ok(&gw, "/api/v1/queues").await;
    assert_eq!(keys(&listed), key_set(&["queues"]));
    let by_name: BTreeMap<String, Value> = listed["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| (q["name"].as_str().expect("name").to_owned(), q.clone()))
        .collect();
    assert_eq!(by_name.len(), 3, "{listed}");
    assert_eq!(by_name["backlog"], counts("backlog", [3, 0, 0, 0, 0]));
    assert_eq!(by_name["busy"], counts("busy", [0, 1, 0, 0, 2]));
    assert_eq!(by_name["empty"], counts("empty", [0, 0, 0, 0, 1]));
    for (name, entry) in &by_name {
        assert_eq!(stats(&gw, name).await, *entry);
    }
    // A queue nobody has used has all counts zero.
    assert_eq!(stats(&gw, "unused").await, counts("unused", [0; 5]));
    // HEAD is accepted wherever GET is, without a body.
    let head = gw.http(Method::HEAD, "/api/v1/queues", &[], "").await;
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    for client in [consumer, idle, producer] {
        client.close().await;
    }
}

/// Parks `n` messages on `queue` (the node must have `max_deliveries` 1 and short timers):
/// pushes them pipelined, has one consumer take each once without acking, and waits until
/// all are parked. Returns the ids in push order.
async fn park(gw: &TestGateway, queue: &str, n: usize) -> Vec<String> {
    let mut producer = gw.identify(Enc::Msgpack, "parker", "p").await;
    let mut taker = gw.identify(Enc::Json, "taker", "t").await;
    for i in 0..n {
        producer
            .dispatch(
                "QUEUE",
                json!({"queue": queue, "target": {"application": "taker"},
                       "nonce": i, "payload": {"i": i}}),
            )
            .await;
    }
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(expect_confirm(&producer.recv().await, queue, &json!(i)));
    }
    // Each request is handled after the delivery the previous one caused: n requests back to
    // back buy the n messages, in order.
    for _ in 0..n {
        request(&mut taker, queue).await;
    }
    for id in &ids {
        assert_eq!(expect_delivery(&taker.recv().await, queue).0, *id);
    }
    counts_become(gw, queue, [0, 0, 0, n as u64, 0]).await;
    taker.close().await;
    producer.close().await;
    ids
}

/// The ids of a parked-message list, checking each entry's shape.
fn parked_ids(listed: &Value, queue: &str) -> Vec<String> {
    assert_eq!(keys(listed), key_set(&["queue", "messages"]), "{listed}");
    assert_eq!(listed["queue"], queue);
    listed["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_eq!(
                keys(m),
                key_set(&[
                    "id",
                    "nonce",
                    "target",
                    "payload",
                    "deliveries",
                    "enqueued_at",
                    "parked_at"
                ]),
                "{m}"
            );
            assert_eq!(m["target"], json!({"application": "taker"}));
            assert_eq!(m["payload"], json!({"i": m["nonce"]}));
            assert_eq!(m["deliveries"], 1);
            assert!(m["enqueued_at"].as_u64() <= m["parked_at"].as_u64(), "{m}");
            uuid_v4(&m["id"])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parked_list_is_oldest_first_100_by_default_and_at_most_1000() {
    let gw = TestGateway::start_with(|c| {
        short_timers(50)(c);
        c.queue.max_deliveries = 1;
    })
    .await;
    let ids = park(&gw, "big", 1001).await;
    let dead = "/api/v1/queues/big/dead";
    // Parked in delivery order, which was push order.
    let default = parked_ids(&get_ok(&gw, dead).await, "big");
    assert_eq!(default, ids[..100]);
    for (limit, expected) in [
        ("0", &ids[..0]),
        ("1", &ids[..1]),
        ("3", &ids[..3]),
        ("100", &ids[..100]),
        ("999", &ids[..999]),
        ("1000", &ids[..1000]),
        ("1001", &ids[..1000]),
        ("18446744073709551615", &ids[..1000]),
    ] {
        let listed = get_ok(&gw, &format!("{dead}?limit={limit}")).await;
        assert_eq!(parked_ids(&listed, "big"), expected, "limit={limit}");
    }
    for limit in ["-1", "abc", "1.5", ""] {
        let (status, body) = call(&gw, Method::GET, &format!("{dead}?limit={limit}"), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={limit}: {body}");
        assert_eq!(keys(&body), key_set(&["errors"]), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_messages_can_be_replayed_or_deleted_one_by_one_or_all_at_once() {
    let gw = TestGateway::start_with(|c| {
        short_timers(50)(c);
        c.queue.max_deliveries = 1;
    })
    .await;
    let ids = park(&gw, "dlq", 6).await;
    let base = "/api/v1/queues/dlq/dead";
    let not_found = json!({"code": 404, "error": "unknown message id"});

    // Replay one: it is ready again at the back of the FIFO.
    let (status, body) = call(&gw, Method::POST, &format!("{base}/{}/replay", ids[2]), &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"replayed": [ids[2]]}))
    );
    assert_eq!(stats(&gw, "dlq").await, counts("dlq", [1, 0, 0, 5, 0]));
    // Delete one.
    let (status, body) = call(&gw, Method::DELETE, &format!("{base}/{}", ids[4]), &[]).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"deleted": [ids[4]]}))
    );
    assert_eq!(stats(&gw, "dlq").await, counts("dlq", [1, 0, 0, 4, 0]));
    assert_eq!(
        parked_ids(&get_ok(&gw, base).await, "dlq"),
        [
            ids[0].clone(),
            ids[1].clone(),
            ids[3].clone(),
            ids[5].clone()
        ]
    );

    // Ids that are not parked (ready, deleted, unknown, on another queue) are 404s.
    for (queue, id) in [
        ("dlq", ids[2].as_str()),
        ("dlq", ids[4].as_str()),
        ("dlq", "00000000-0000-4000-8000-000000000000"),
        ("dlq", "not-an-id"),
        ("other", ids[0].as_str()),
    ] {
        for (method, path) in [
            (
                Method::POST,
                format!("/api/v1/queues/{queue}/dead/{id}/replay"),
            ),
            (Method::DELETE, format!("/api/v1/queues/{queue}/dead/{id}")),
        ] {
            let (status, body) = call(&gw, method.clone(), &path, &[]).await;
            assert_eq!(
                (status, &body),
                (StatusCode::NOT_FOUND, &not_found),
                "{method} {path}"
            );
        }
    }
    assert_eq!(stats(&gw, "dlq").await, counts("dlq", [1, 0, 0, 4, 0]));

    // Replay all: oldest parked first, each to the back of the FIFO.
    let (status, body) = call(&gw, Method::POST, &format!("{base}/replay"), &[]).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"replayed": [ids[0], ids[1], ids[3], ids[5]]})
        )
    );
    assert_eq!(stats(&gw, "dlq").await, counts("dlq", [5, 0, 0, 0, 0]));
    let mut taker = gw.identify(Enc::Msgpack, "taker", "t").await;
    for id in [&ids[2], &ids[0], &ids[1], &ids[3], &ids[5]] {
        request(&mut taker, "dlq").await;
        assert_eq!(expect_delivery(&taker.recv().await, "dlq").0, *id);
    }
    // Nothing left to replay.
    let (status, body) = call(&gw, Method::POST, &format!("{base}/replay"), &[]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"replayed": []})));

    // Unacked again, all five park again; purge deletes them all, and only them.
    counts_become(&gw, "dlq", [0, 0, 0, 5, 0]).await;
    let mut producer = gw.identify(Enc::Json, "producer", "p").await;
    let kept = push(
        &mut producer,
        "dlq",
        json!({"application": "nobody"}),
        json!("kept"),
        json!(0),
    )
    .await;
    let parked = parked_ids(&get_ok(&gw, base).await, "dlq");
    let (status, body) = call(&gw, Method::DELETE, base, &[]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": parked})));
    assert_eq!(stats(&gw, "dlq").await, counts("dlq", [1, 0, 0, 0, 0]));
    let (status, body) = call(&gw, Method::DELETE, base, &[]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": []})));
    let (status, body) = call(&gw, Method::DELETE, &format!("{base}/{kept}"), &[]).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found));
    producer.close().await;
    // Deleted for good: a late ack from the last consumer finds nothing.
    ack(&mut taker, "dlq", &ids[0]).await;
    expect_unknown_id(&mut taker, "dlq", &json!(ids[0])).await;
    taker.close().await;
}

/// Every queue route, for a queue name already percent-encoded.
fn queue_routes(queue: &str) -> Vec<(Method, String)> {
    let id = "00000000-0000-4000-8000-000000000000";
    vec![
        (Method::GET, format!("/api/v1/queues/{queue}")),
        (Method::GET, format!("/api/v1/queues/{queue}/dead")),
        (Method::DELETE, format!("/api/v1/queues/{queue}/dead")),
        (Method::POST, format!("/api/v1/queues/{queue}/dead/replay")),
        (
            Method::POST,
            format!("/api/v1/queues/{queue}/dead/{id}/replay"),
        ),
        (Method::DELETE, format!("/api/v1/queues/{queue}/dead/{id}")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_queue_name_in_a_path_gets_400_with_its_reason() {
    let gw = TestGateway::start().await;
    let whitespace = "queue: must not contain whitespace or control characters";
    let long = "x".repeat(256);
    for (queue, reason) in [
        ("%20", whitespace),
        ("a%20b", whitespace),
        ("a%09b", whitespace),
        ("a%7Fb", whitespace),
        ("a%C2%A0b", whitespace),
        (long.as_str(), "queue: must be at most 255 bytes"),
    ] {
        for (method, path) in queue_routes(queue) {
            let (status, body) = call(&gw, method.clone(), &path, &[]).await;
            assert_eq!(
                (status, body),
                (StatusCode::BAD_REQUEST, json!({"errors": [reason]})),
                "{method} {path}"
            );
        }
    }
    // Percent-decoded names are names like any other.
    let ok = "x".repeat(255);
    assert_eq!(stats(&gw, &ok).await, counts(&ok, [0; 5]));
    assert_eq!(stats(&gw, "a%2Fb").await, counts("a/b", [0; 5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_query_parameters_that_cannot_be_read_still_get_json_answers() {
    let gw = TestGateway::start().await;
    // Bytes that are not UTF-8 do not make a string.
    for (method, path) in queue_routes("a%FFb") {
        let (status, body) = call(&gw, method.clone(), &path, &[]).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"errors": ["queue: must be a string"]})
            ),
            "{method} {path}"
        );
    }
    // Nor an id: no message has it, unless the queue name is wrong too.
    for (queue, status, body) in [
        (
            "jobs",
            StatusCode::NOT_FOUND,
            json!({"code": 404, "error": "unknown message id"}),
        ),
        (
            "a%20b",
            StatusCode::BAD_REQUEST,
            json!({"errors": ["queue: must not contain whitespace or control characters"]}),
        ),
    ] {
        for (method, path) in [
            (
                Method::POST,
                format!("/api/v1/queues/{queue}/dead/%FF%FE/replay"),
            ),
            (
                Method::DELETE,
                format!("/api/v1/queues/{queue}/dead/%FF%FE"),
            ),
        ] {
            assert_eq!(
                call(&gw, method.clone(), &path, &[]).await,
                (status, body.clone()),
                "{method} {path}"
            );
        }
    }
    for query in ["limit=1&limit=2", "limit=%FF", "limit=1%00"] {
        let path = format!("/api/v1/queues/jobs/dead?{query}");
        let (status, body) = call(&gw, Method::GET, &path, &[]).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"errors": ["limit: must be a non-negative integer"]})
            ),
            "{path}"
        );
    }
    // A queue nobody has used is unknown (SPEC §9.9); once a consumer waits on it, it is known
    // and other query parameters are ignored.
    assert_eq!(
        call(&gw, Method::GET, "/api/v1/queues/jobs/dead", &[]).await,
        (
            StatusCode::NOT_FOUND,
            json!({"code": 404, "error": "unknown message id"})
        )
    );
    let mut consumer = gw.identify(Enc::Json, "workers", "w-params").await;
    consumer
        .dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}))
        .await;
    consumer.expect_nothing().await;
    assert_eq!(
        get_ok(&gw, "/api/v1/queues/jobs/dead?limit=5&other=x&other=y").await,
        json!({"queue": "jobs", "messages": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_endpoints_require_the_password_when_one_is_set() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("pw".to_owned())).await;
    // A waiting consumer makes the queue known, so past the check every route answers for
    // itself (an unknown queue would be a 404 everywhere).
    let mut consumer = gw
        .identify_with(
            Enc::Json,
            json!({"application_id": "workers", "client_id": "w", "auth": "pw"}),
        )
        .await;
    consumer
        .dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}))
        .await;
    consumer.expect_nothing().await;
    let mut routes = queue_routes("jobs");
    routes.push((Method::GET, "/api/v1/queues".to_owned()));
    let unauthorized = json!({"status": "error", "error": "not authorized"});
    for (method, path) in &routes {
        for headers in [&[][..], &[("authorization", "Bearer nope")][..]] {
            let (status, body) = call(&gw, method.clone(), path, headers).await;
            assert_eq!(
                (status, &body),
                (StatusCode::UNAUTHORIZED, &unauthorized),
                "{method} {path} {headers:?}"
            );
        }
        for credential in ["pw", "Bearer pw", "bearer pw"] {
            let (status, body) =
                call(&gw, method.clone(), path, &[("authorization", credential)]).await;
            // Past the check: the route's own answer (the id routes know no such message).
            let expected = if path.contains("0000-4000") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "{method} {path} {credential}: {body}");
        }
    }
}

// === at least once, never lost ===

/// splitmix64: a small seeded generator, so that a failing run can be replayed with
/// `GANGLION_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SCENARIO_SEED: u64 = 0x6761_6E67_6C69_6F6E;
const PRODUCERS: u64 = 3;
const PER_PRODUCER: u64 = 100;
const CONSUMERS: u64 = 4;
const ALO: &str = "at-least-once";
const ALO_ACK_TIMEOUT_MS: u64 = 150;
const ALO_DLQ_MS: u64 = 50;

/// What the actors of the scenario report to the referee.
#[derive(Debug)]
enum Seen {
    Confirmed {
        id: String,
        nonce: Value,
    },
    Delivered {
        id: String,
        nonce: Value,
    },
    /// An ack followed by a heartbeat whose ack came with no refusal before it.
    Accepted {
        id: String,
    },
    Refused,
    Reconnected,
}

fn alo_nonce(producer: u64, i: u64) -> Value {
    // Strings from some producers, integers from another.
    if producer == 1 {
        json!(producer * 1000 + i)
    } else {
        json!(format!("p{producer}-{i}"))
    }
}

/// One message in three is for a gpu worker; the others for any worker.
fn alo_target(producer: u64, i: u64) -> Value {
    if (producer + i).is_multiple_of(3) {
        json!({"application": "workers",
               "ops": [{"path": "/gpu", "op": "$eq", "to": {"value": true}}]})
    } else {
        json!({"application": "workers"})
    }
}

/// Pushes its messages in bursts of 1–20 pipelined QUEUEs, then reads their confirms, which
/// must come in order.
async fn alo_producer(
    gw: Arc<TestGateway>,
    p: u64,
    mut rng: Rng,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let enc = if p == 1 { Enc::Msgpack } else { Enc::Json };
    let mut client = gw.identify(enc, "producers", &format!("p{p}")).await;
    let mut i = 0;
    while i < PER_PRODUCER {
        let burst = (1 + rng.below(20)).min(PER_PRODUCER - i);
        for j in i..i + burst {
            let nonce = alo_nonce(p, j);
            client
                .dispatch(
                    "QUEUE",
                    json!({"queue": ALO, "target": alo_target(p, j), "nonce": nonce,
                           "payload": {"n": nonce}}),
                )
                .await;
        }
        for j in i..i + burst {
            let nonce = alo_nonce(p, j);
            let id = expect_confirm(&client.recv().await, ALO, &nonce);
            let _ = seen.send(Seen::Confirmed { id, nonce });
        }
        i += burst;
    }
    client.expect_nothing().await;
    client.close().await;
}

/// Why a consumer acks, which says what its verdict may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckKind {
    /// Right after the delivery built at `delivered_ts` (the frame's `ts`): it can only be
    /// refused if the message was meanwhile delivered to someone else, which takes at least
    /// ack timeout + dead-letter time.
    Prompt { delivered_ts: u64 },
    /// Held for a while, or sent after reconnecting: either verdict is possible.
    Late,
    /// The same ack again, right after a prompt one: always refused.
    Repeat,
}

/// A consumer's pending acks: each ack is followed by a heartbeat, and the heartbeat's ack
/// is its verdict (a refusal, op 3, would have come before it).
struct Verdicts {
    consumer: u64,
    pending: VecDeque<(String, AckKind)>,
    refused: HashSet<String>,
    accepted: HashSet<String>,
    seen: mpsc::UnboundedSender<Seen>,
}

impl Verdicts {
    async fn ack(&mut self, client: &mut Client, id: String, kind: AckKind) {
        ack(client, ALO, &id).await;
        client.send(json!({"op": 5, "d": {}})).await;
        self.pending.push_back((id, kind));
    }

    /// Books an op 3 or op 6; false for any other frame.
    fn book(&mut self, frame: &Value) -> bool {
        match frame["op"].as_u64() {
            Some(3) => {
                let info = expect_op3(frame, "unknown message id");
                assert_eq!(info["queue"], ALO, "{frame}");
                self.refused.insert(uuid_v4(&info["id"]));
                let _ = self.seen.send(Seen::Refused);
                true
            }
            Some(6) => {
                let (id, kind) = self.pending.pop_front().unwrap_or_else(|| {
                    panic!("c{}: a heartbeat ack nobody asked for", self.consumer)
                });
                let refused = self.refused.remove(&id);
                match kind {
                    AckKind::Prompt { delivered_ts } if refused => assert!(
                        now_ms() >= delivered_ts + ALO_ACK_TIMEOUT_MS + ALO_DLQ_MS,
                        "c{}: the prompt ack of {id} was refused {} ms after its delivery",
                        self.consumer,
                        now_ms().saturating_sub(delivered_ts)
                    ),
                    AckKind::Repeat => {
                        assert!(
                            refused,
                            "c{}: a repeated ack of {id} was accepted",
                            self.consumer
                        )
                    }
                    _ => {}
                }
                if !refused {
                    self.accepted.insert(id.clone());
                    let _ = self.seen.send(Seen::Accepted { id });
                }
                true
            }
            _ => false,
        }
    }

    /// Waits for the verdict of every ack sent. Nothing else may arrive: no request is out.
    async fn settle(&mut self, client: &mut Client) {
        while !self.pending.is_empty() {
            let frame = next_frame(client).await.expect("the connection is open");
            assert!(
                self.book(&frame),
                "c{}: {frame} without a request",
                self.consumer
            );
        }
    }
}

/// Asks for one message at a time. For each, it acks it at once (55 %), twice (5 %), forgets
/// it (15 %), holds its ack until the next delivery (10 %), or leaves with it in flight and
/// comes back with the same identity (15 %), then acks it half of those times.
async fn alo_consumer(
    gw: Arc<TestGateway>,
    k: u64,
    mut rng: Rng,
    seen: mpsc::UnboundedSender<Seen>,
    mut stop: watch::Receiver<bool>,
) {
    let enc = if k.is_multiple_of(2) {
        Enc::Json
    } else {
        Enc::Msgpack
    };
    let name = format!("c{k}");
    let identify = json!({"application_id": "workers", "client_id": name,
                          "metadata": {"gpu": meta("boolean", k < 2)}});
    let mut watch = watcher(&gw, enc, &name).await;
    let mut client = gw.identify_with(enc, identify.clone()).await;
    let mut verdicts = Verdicts {
        consumer: k,
        pending: VecDeque::new(),
        refused: HashSet::new(),
        accepted: HashSet::new(),
        seen: seen.clone(),
    };
    let mut held: Vec<String> = Vec::new();
    let mut requested = false;
    loop {
        if *stop.borrow() {
            break;
        }
        if !requested {
            request(&mut client, ALO).await;
            requested = true;
        }
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = next_frame(&mut client) => frame.expect("the connection is open"),
        };
        if verdicts.book(&frame) {
            continue;
        }
        let (id, nonce, payload) = expect_delivery(&frame, ALO);
        assert!(requested, "{name}: a delivery without a request: {frame}");
        assert!(
            !verdicts.accepted.contains(&id),
            "{name}: {id} delivered again after its ack was accepted"
        );
        assert_eq!(payload, json!({"n": nonce}), "{frame}");
        requested = false;
        let _ = seen.send(Seen::Delivered {
            id: id.clone(),
            nonce,
        });
        // A held message that came back is decided afresh; the other held acks go now.
        held.retain(|h| *h != id);
        for late in held.drain(..) {
            verdicts.ack(&mut client, late, AckKind::Late).await;
        }
        let prompt = AckKind::Prompt {
            delivered_ts: frame["ts"].as_u64().expect("ts"),
        };
        match rng.below(100) {
            0..55 => verdicts.ack(&mut client, id, prompt).await,
            55..60 => {
                verdicts.ack(&mut client, id.clone(), prompt).await;
                verdicts.ack(&mut client, id, AckKind::Repeat).await;
            }
            60..75 => {}
            75..85 => held.push(id),
            _ => {
                verdicts.settle(&mut client).await;
                if rng.below(2) == 0 {
                    client.close().await;
                } else {
                    drop(client);
                }
                await_disconnect(&mut watch, "workers", &name).await;
                client = gw.identify_with(enc, identify.clone()).await;
                let _ = seen.send(Seen::Reconnected);
                if rng.below(2) == 0 {
                    verdicts.ack(&mut client, id, AckKind::Late).await;
                }
            }
        }
    }
    client.close().await;
    watch.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_is_acked_exactly_once_despite_forgotten_late_and_repeated_acks_and_reconnects()
 {
    let seed = std::env::var("GANGLION_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SCENARIO_SEED);
    let gw = Arc::new(
        TestGateway::start_with(|c| {
            c.queue.ack_timeout_ms = ALO_ACK_TIMEOUT_MS;
            c.queue.dlq_time_ms = ALO_DLQ_MS;
            c.queue.sweep_interval_ms = 20;
        })
        .await,
    );
    let started = Instant::now();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let mut seeds = Rng(seed);
    let mut consumers = JoinSet::new();
    for k in 0..CONSUMERS {
        consumers.spawn(alo_consumer(
            gw.clone(),
            k,
            Rng(seeds.next()),
            seen_tx.clone(),
            stop_rx.clone(),
        ));
    }
    let mut producers = JoinSet::new();
    for p in 0..PRODUCERS {
        producers.spawn(alo_producer(
            gw.clone(),
            p,
            Rng(seeds.next()),
            seen_tx.clone(),
        ));
    }
    drop(seen_tx);

    let total = (PRODUCERS * PER_PRODUCER) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut confirmed: HashMap<String, Value> = HashMap::new();
    let mut delivered: HashMap<String, (Value, u64)> = HashMap::new();
    let mut accepted: HashMap<String, u64> = HashMap::new();
    let (mut refused, mut reconnects) = (0, 0);
    while !(confirmed.len() == total && confirmed.keys().all(|id| accepted.contains_key(id))) {
        let event = tokio::select! {
            event = seen.recv() => event.expect("the actors are running"),
            Some(ended) = producers.join_next(), if !producers.is_empty() => {
                if let Err(e) = ended {
                    std::panic::resume_unwind(e.into_panic());
                }
                continue;
            }
            Some(ended) = consumers.join_next() => {
                match ended {
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                    Ok(()) => panic!("a consumer stopped early"),
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let missing: Vec<&String> =
                    confirmed.keys().filter(|id| !accepted.contains_key(*id)).collect();
                panic!(
                    "seed {seed}: after 40 s, {} confirmed of {total}, {} never acked: \
                     {missing:?}; queue {}",
                    confirmed.len(),
                    missing.len(),
                    stats(&gw, ALO).await
                );
            }
        };
        match event {
            Seen::Confirmed { id, nonce } => {
                let again = confirmed.insert(id.clone(), nonce);
                assert!(again.is_none(), "seed {seed}: {id} confirmed twice");
            }
            Seen::Delivered { id, nonce } => {
                let entry = delivered.entry(id.clone()).or_insert((nonce.clone(), 0));
                assert_eq!(entry.0, nonce, "seed {seed}: {id} changed its nonce");
                entry.1 += 1;
            }
            Seen::Accepted { id } => {
                let times = accepted.entry(id.clone()).or_insert(0);
                *times += 1;
                assert_eq!(*times, 1, "seed {seed}: the ack of {id} was accepted twice");
            }
            Seen::Refused => refused += 1,
            Seen::Reconnected => reconnects += 1,
        }
    }
    // Everything is acked, so nothing is left in the queue.
    let left = stats(&gw, ALO).await;
    let waiting = left["waiting_consumers"].as_u64().expect("waiting");
    assert!(waiting <= CONSUMERS, "{left}");
    assert_eq!(left, counts(ALO, [0, 0, 0, 0, waiting]), "seed {seed}");
    stop.send(true).expect("consumers listen");
    while let Some(ended) = consumers.join_next().await {
        if let Err(e) = ended {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    let acked: BTreeSet<&String> = accepted.keys().collect();
    let stored: BTreeSet<&String> = confirmed.keys().collect();
    assert_eq!(
        acked, stored,
        "seed {seed}: acked ids are the confirmed ids"
    );
    for (id, (nonce, _)) in &delivered {
        assert_eq!(
            confirmed.get(id),
            Some(nonce),
            "seed {seed}: {id} was delivered but never confirmed"
        );
    }
    let deliveries: u64 = delivered.values().map(|(_, n)| n).sum();
    let elapsed = started.elapsed();
    eprintln!(
        "seed {seed}: {total} messages, {deliveries} deliveries ({} duplicates), \
         {refused} refused acks, {reconnects} reconnects, in {elapsed:?}",
        deliveries - total as u64
    );
    // The scenario did exercise redelivery and reconnection.
    assert!(deliveries > total as u64 && reconnects > 0, "seed {seed}");
}

// === QUEUE confirms before a fatal error ===

/// A frame that ends the connection with op 8, sent right after pipelined QUEUEs.
fn fatal_frames(enc: Enc) -> Vec<(&'static str, Message, &'static str, u16)> {
    let (wrong_kind, kind_error) = match enc {
        Enc::Json => (
            Message::binary(b"{}".to_vec()),
            "decode: payload: invalid websocket opcode/encoding combo: {binary, json}",
        ),
        Enc::Msgpack => (
            Message::text("{}"),
            "decode: payload: invalid websocket opcode/encoding combo: {text, msgpack}",
        ),
    };
    vec![
        (
            "a client-only opcode",
            enc.message(&json!({"op": 2, "d": {}})),
            "invalid client op :ready",
            1008,
        ),
        (
            "an undecodable frame",
            match enc {
                Enc::Json => Message::text("{"),
                Enc::Msgpack => Message::binary(vec![0xc1]),
            },
            "decode: payload: unrecoverable",
            1008,
        ),
        ("a frame of the wrong kind", wrong_kind, kind_error, 1008),
        (
            "a frame over the size limit",
            enc.message(&json!({"op": 5, "d": "x".repeat(1_048_576)})),
            "payload too large",
            1009,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_of_queues_sent_before_a_fatal_frame_come_before_its_op_8() {
    const QUEUES: usize = 5;
    let gw = TestGateway::start().await;
    let mut failures = Vec::new();
    for enc in Enc::ALL {
        for (n, (what, fatal, error, code)) in fatal_frames(enc).into_iter().enumerate() {
            let q = format!("fatal-{}-{n}", enc.name());
            let mut producer = gw.identify(enc, "producer", &q).await;
            for i in 0..QUEUES {
                producer
                    .dispatch(
                        "QUEUE",
                        json!({"queue": q, "target": {"application": "x"}, "nonce": i,
                               "payload": i}),
                    )
                    .await;
            }
            producer.send_raw(fatal).await;
            let closed = producer.closed().await;
            assert_eq!(
                closed.code,
                Some(code),
                "{enc:?} {what}: {:?}",
                closed.frames
            );
            let last = closed.frames.last().expect("op 8");
            assert_eq!(
                (&last["op"], &last["d"]["error"]),
                (&json!(8), &json!(error))
            );
            // Each QUEUE was handled, and so answered, before the fatal frame (SPEC §3.3).
            let confirms = &closed.frames[..closed.frames.len() - 1];
            if confirms.len() == QUEUES {
                for (i, frame) in confirms.iter().enumerate() {
                    expect_confirm(frame, &q, &json!(i));
                }
                assert_eq!(
                    stats(&gw, &q).await,
                    counts(&q, [QUEUES as u64, 0, 0, 0, 0])
                );
            } else {
                failures.push(format!(
                    "{enc:?}, {what}: {} of {QUEUES} confirms before op 8 `{error}`",
                    confirms.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
