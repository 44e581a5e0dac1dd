//! `GET /metrics` (SPEC §9.8): after known traffic, the series move by exactly the right
//! amounts. Every test runs in its own process (nextest), so the process-wide recorder sees
//! only this test's node; deltas make the checks independent of anything recorded earlier.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ganglion_tests::{Enc, Kind, TestGateway, patience};
use hyper::{Method, StatusCode};
use serde_json::json;

/// `name{sorted labels}` → value.
type Scrape = HashMap<String, f64>;

async fn scrape(gw: &TestGateway) -> Scrape {
    let response = gw.http(Method::GET, "/metrics", &[], "").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&response.text())
}

fn parse(text: &str) -> Scrape {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let key = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let labels: BTreeMap<&str, &str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').expect("label=value");
                        (k, v.trim_matches('"'))
                    })
                    .collect();
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{name}{{{}}}", labels.join(","))
            }
        };
        out.insert(key, value.parse().expect("a number"));
    }
    out
}

fn get(scrape: &Scrape, key: &str) -> f64 {
    scrape.get(key).copied().unwrap_or(0.0)
}

fn delta(before: &Scrape, after: &Scrape, key: &str) -> f64 {
    get(after, key) - get(before, key)
}

/// Polls until `check` holds on a scrape (for gauges that move when a connection finishes
/// closing).
async fn eventually(gw: &TestGateway, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        let now = scrape(gw).await;
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_traffic_moves_the_counters_by_exactly_its_size() {
    let gw = TestGateway::start().await;
    let before = scrape(&gw).await;

    let mut a = gw.identify_any(Kind::WsJson, "m", "a").await;
    let mut b = gw.identify_any(Kind::WsJson, "m", "b").await;
    let mut c = gw.identify_any(Kind::TcpMsgpack, "m", "c").await;
    for n in 0..3 {
        a.dispatch(
            "SEND",
            json!({"target": {"application": "m", "ops": [{"path": "/ip", "op": "$ne", "to": {"value": "x"}}], "key": "k"}, "payload": n}),
        )
        .await;
    }
    a.dispatch(
        "SEND",
        json!({"target": {"application": "nobody"}, "payload": 1}),
    )
    .await;
    a.dispatch("SEND", json!({"target": {"ops": 5}, "payload": 1}))
        .await;
    a.dispatch(
        "BROADCAST",
        json!({"target": {"application": "m"}, "payload": "all"}),
    )
    .await;
    // The heartbeat's ack comes after everything a's earlier frames caused.
    let replies = a.sync().await;
    let _ = (b.sync().await, c.sync().await);
    assert_eq!(replies.iter().filter(|f| f["op"] == 3).count(), 2);

    let after = scrape(&gw).await;
    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(d("ganglion_connections{encoding=json,transport=ws}"), 2.0);
    assert_eq!(
        d("ganglion_connections{encoding=msgpack,transport=tcp}"),
        1.0
    );
    assert_eq!(get(&after, "ganglion_clients_registered"), 3.0);
    assert_eq!(d("ganglion_identify_total{outcome=ok,reason=}"), 3.0);
    assert_eq!(d("ganglion_dispatch_total{outcome=delivered,t=SEND}"), 3.0);
    assert_eq!(d("ganglion_dispatch_total{outcome=no_route,t=SEND}"), 1.0);
    assert_eq!(d("ganglion_dispatch_total{outcome=error,t=SEND}"), 1.0);
    assert_eq!(
        d("ganglion_dispatch_total{outcome=delivered,t=BROADCAST}"),
        1.0
    );
    assert_eq!(d("ganglion_frames_received_total{op=1}"), 3.0);
    assert_eq!(d("ganglion_frames_received_total{op=4}"), 6.0);
    assert_eq!(d("ganglion_frames_received_total{op=5}"), 3.0);
    assert_eq!(d("ganglion_frames_sent_total{op=0}"), 3.0);
    assert_eq!(d("ganglion_frames_sent_total{op=2}"), 3.0);
    // 3 SENDs to one client and a BROADCAST to three.
    assert_eq!(d("ganglion_frames_sent_total{op=4}"), 6.0);
    assert_eq!(d("ganglion_frames_sent_total{op=3}"), 2.0);
    assert_eq!(d("ganglion_frames_sent_total{op=6}"), 3.0);
    // Four queries ran (the invalid one never got that far); three delivered and were timed.
    assert_eq!(d("ganglion_routing_matches_count{t=SEND}"), 4.0);
    assert_eq!(d("ganglion_routing_matches_sum{t=SEND}"), 3.0 * 3.0);
    assert_eq!(d("ganglion_routing_seconds_count{t=SEND}"), 3.0);
    // The one that matched nobody, and the three that matched three clients each.
    assert_eq!(d("ganglion_routing_matches_bucket{le=0,t=SEND}"), 1.0);
    assert_eq!(d("ganglion_routing_matches_bucket{le=2,t=SEND}"), 1.0);
    assert_eq!(d("ganglion_routing_matches_bucket{le=5,t=SEND}"), 4.0);
    assert_eq!(d("ganglion_routing_matches_bucket{le=+Inf,t=SEND}"), 4.0);
    assert_eq!(
        d("ganglion_routing_seconds_bucket{le=+Inf,t=SEND}"),
        d("ganglion_routing_seconds_count{t=SEND}")
    );
    assert!(after.contains_key("ganglion_routing_seconds_bucket{le=0.001,t=SEND}"));

    // A client that breaks the protocol is closed and counted by reason; the gauge follows.
    b.send(json!({"op": 9})).await;
    b.expect_fatal("invalid client op nil", 1008).await;
    let settled = eventually(&gw, |s| {
        delta(
            &before,
            s,
            "ganglion_connections{encoding=json,transport=ws}",
        ) == 1.0
    })
    .await;
    assert_eq!(
        delta(
            &before,
            &settled,
            "ganglion_closes_total{reason=invalid_client_op}"
        ),
        1.0
    );
    assert_eq!(get(&settled, "ganglion_clients_registered"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depths_are_gauges_by_queue_and_state() {
    let gw = TestGateway::start().await;
    let mut producer = gw.identify(Enc::Json, "p", "p").await;
    for queue in ["jobs", "jobs", "mail"] {
        producer
            .dispatch(
                "QUEUE",
                json!({"queue": queue, "target": {"application": "w"}, "payload": 1}),
            )
            .await;
        assert_eq!(producer.recv().await["t"], "QUEUE_CONFIRM");
    }
    let mut worker = gw.identify(Enc::Json, "w", "w").await;
    worker
        .dispatch("QUEUE_REQUEST", json!({"queue": "jobs"}))
        .await;
    assert_eq!(worker.recv().await["t"], "QUEUE");
    worker
        .dispatch("QUEUE_REQUEST", json!({"queue": "other"}))
        .await;
    worker.expect_nothing().await;
    let now = scrape(&gw).await;
    assert_eq!(
        get(&now, "ganglion_queue_messages{queue=jobs,state=ready}"),
        1.0
    );
    assert_eq!(
        get(&now, "ganglion_queue_messages{queue=jobs,state=in_flight}"),
        1.0
    );
    assert_eq!(
        get(&now, "ganglion_queue_messages{queue=mail,state=ready}"),
        1.0
    );
    assert_eq!(
        get(&now, "ganglion_queue_messages{queue=mail,state=parked}"),
        0.0
    );
    assert_eq!(
        get(&now, "ganglion_queue_waiting_consumers{queue=other}"),
        1.0
    );
    assert_eq!(
        get(&now, "ganglion_queue_waiting_consumers{queue=jobs}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_counted_by_transport() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".into())).await;
    let before = scrape(&gw).await;
    let _restricted = gw
        .identify_with(
            Enc::Json,
            json!({"application_id": "a", "client_id": "c", "auth": "nope"}),
        )
        .await;
    let _also = gw
        .identify_any_with(
            Kind::TcpJson,
            json!({"application_id": "a", "client_id": "d", "auth": 5}),
        )
        .await;
    let response = gw
        .http(
            Method::POST,
            "/api/v1/query",
            &[("authorization", "Bearer nope")],
            "{}",
        )
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    // No credential at all is not a failed attempt.
    let response = gw.http(Method::POST, "/api/v1/query", &[], "{}").await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let after = scrape(&gw).await;
    assert_eq!(
        delta(
            &before,
            &after,
            "ganglion_auth_failures_total{transport=ws}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "ganglion_auth_failures_total{transport=tcp}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "ganglion_auth_failures_total{transport=http}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "ganglion_identify_total{outcome=restricted,reason=}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_password() {
    let gw = TestGateway::start_with(|c| {
        c.auth.password = Some("s3cret".into());
        c.metrics.require_auth = true;
    })
    .await;
    let response = gw.http(Method::GET, "/metrics", &[], "").await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let response = gw
        .http(
            Method::GET,
            "/metrics",
            &[("authorization", "Bearer s3cret")],
            "",
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.text().contains("ganglion_clients_registered 0"));
}
