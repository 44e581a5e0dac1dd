//! The HTTP side of the listener (SPEC §2.1 handshake rules, §9.1–§9.4, §9.8): redirects, the
//! websocket handshake's refusals, JSON bodies, authentication and the failed-auth limit,
//! `/api/version`, `/api/v1/query`, health and readiness, and a draining node.

use std::net::SocketAddr;

use bytes::Bytes;
use ganglion_tests::{Enc, HttpResponse, TestGateway, meta, now_ms, patience};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::timeout;

// === helpers ===

/// The headers of a websocket upgrade request (RFC 6455 §4.1).
const UPGRADE: [(&str, &str); 4] = [
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Upgrade headers plus `extra`.
fn upgrade_with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    UPGRADE
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// Asserts a JSON response: status, `Content-Type: application/json` and the exact body.
#[track_caller]
fn assert_json(response: &HttpResponse, status: StatusCode, body: Value) {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert_eq!(
        response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "content type of a {status} answer"
    );
    assert_eq!(response.json(), body, "body of a {status} answer");
}

async fn get(gw: &TestGateway, path: &str) -> HttpResponse {
    gw.http(Method::GET, path, &[], Bytes::new()).await
}

async fn post_query(gw: &TestGateway, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    gw.http(Method::POST, "/api/v1/query", headers, body.to_owned())
        .await
}

fn ids(clients: &Value) -> Vec<String> {
    clients
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {clients}"))
        .iter()
        .map(|c| {
            format!(
                "{}/{}",
                c["app_id"].as_str().unwrap_or("?"),
                c["client_id"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// One HTTP request to `addr`, for a node whose `TestGateway` was consumed by a drain.
async fn http_at(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let response = timeout(patience(), client.request(request))
        .await
        .expect("an HTTP answer in time")
        .expect("an HTTP answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn with_password() -> impl FnOnce(&mut ganglion_gateway::Config) {
    |c| c.auth.password = Some("s3cret".to_owned())
}

// === root and the websocket handshake (§2.1) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_root_redirects_to_the_websocket_endpoint() {
    let gw = TestGateway::start().await;
    for method in [Method::GET, Method::HEAD] {
        let response = gw.http(method.clone(), "/", &[], Bytes::new()).await;
        assert_eq!(response.status, StatusCode::FOUND, "{method}");
        assert_eq!(
            response.headers.get(header::LOCATION).map(|v| v.as_bytes()),
            Some(&b"/gateway/websocket"[..]),
            "{method}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_the_websocket_path_that_is_not_an_upgrade_gets_400() {
    let gw = TestGateway::start().await;
    let required = json!({"code": 400, "error": "websocket upgrade required"});
    let no_key: Vec<_> = UPGRADE
        .iter()
        .copied()
        .filter(|(name, _)| *name != "sec-websocket-key")
        .collect();
    let cases: [(Method, &[(&str, &str)]); 5] = [
        (Method::GET, &[]),
        (Method::POST, &[]),
        (Method::PUT, &[]),
        (Method::GET, &[("upgrade", "websocket")]),
        (Method::GET, &no_key),
    ];
    for (method, headers) in cases {
        let response = gw
            .http(method.clone(), "/gateway/websocket", headers, "{}")
            .await;
        assert_json(&response, StatusCode::BAD_REQUEST, required.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_path_is_exact() {
    let gw = TestGateway::start().await;
    let not_found = json!({"code": 404, "error": "not found"});
    for path in [
        "/gateway/websocket/",
        "/gateway/websocket/x",
        "/gateway/Websocket",
        "/gateway",
    ] {
        let response = gw.http(Method::GET, path, &UPGRADE, Bytes::new()).await;
        assert_json(&response, StatusCode::NOT_FOUND, not_found.clone());
    }
    let response = gw
        .http(Method::GET, "/gateway/websocket", &UPGRADE, Bytes::new())
        .await;
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_encoding_gets_403_with_a_json_body_and_no_upgrade() {
    let gw = TestGateway::start().await;
    for query in ["?encoding=xml", "?encoding=JSON", "?encoding="] {
        let response = gw
            .http(
                Method::GET,
                &format!("/gateway/websocket{query}"),
                &UPGRADE,
                Bytes::new(),
            )
            .await;
        assert_json(
            &response,
            StatusCode::FORBIDDEN,
            json!({"code": 403, "error": "invalid encoding"}),
        );
        assert!(response.headers.get(header::UPGRADE).is_none(), "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_selects_no_subprotocol_and_declines_permessage_deflate() {
    let gw = TestGateway::start().await;
    let headers = upgrade_with(&[
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
        ("sec-websocket-protocol", "chat, superchat"),
    ]);
    let response = gw
        .http(
            Method::GET,
            "/gateway/websocket?encoding=msgpack",
            &headers,
            Bytes::new(),
        )
        .await;
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(
        response.headers.get("sec-websocket-extensions").is_none(),
        "{:?}",
        response.headers
    );
    assert!(
        response.headers.get("sec-websocket-protocol").is_none(),
        "{:?}",
        response.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_only_against_a_configured_allowlist() {
    let open = TestGateway::start().await;
    let response = open
        .http(
            Method::GET,
            "/gateway/websocket",
            &upgrade_with(&[("origin", "https://b.example")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(
        response.status,
        StatusCode::SWITCHING_PROTOCOLS,
        "any origin without an allowlist"
    );

    let gw = TestGateway::start_with(|c| {
        c.ws.allowed_origins = vec!["https://a.example".to_owned()];
    })
    .await;
    let refused = gw
        .http(
            Method::GET,
            "/gateway/websocket",
            &upgrade_with(&[("origin", "https://b.example")]),
            Bytes::new(),
        )
        .await;
    assert_json(
        &refused,
        StatusCode::FORBIDDEN,
        json!({"code": 403, "error": "origin not allowed"}),
    );
    for headers in [
        upgrade_with(&[("origin", "https://a.example")]),
        upgrade_with(&[]),
    ] {
        let response = gw
            .http(Method::GET, "/gateway/websocket", &headers, Bytes::new())
            .await;
        assert_eq!(
            response.status,
            StatusCode::SWITCHING_PROTOCOLS,
            "{headers:?}"
        );
    }
}

// === general rules (§9.1) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_unsupported_methods_get_a_json_404() {
    // With a password, so that a known path is not answered 401 instead.
    let gw = TestGateway::start_with(with_password()).await;
    let not_found = json!({"code": 404, "error": "not found"});
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/api/v1/query"),
        (Method::PUT, "/api/v1/query"),
        (Method::DELETE, "/api/v1/query"),
        (Method::POST, "/api/version"),
        (Method::POST, "/healthz"),
        (Method::GET, "/api/v1"),
        (Method::GET, "/api/v1/plugin/x"),
        (Method::POST, "/api/v1/plugin/x/y"),
        (Method::GET, "/api/v2/query"),
    ] {
        let response = gw.http(method.clone(), path, &[], "{}").await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_json(&response, StatusCode::NOT_FOUND, not_found.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_json_whatever_the_content_type() {
    let gw = TestGateway::start().await;
    let _a = gw.identify(Enc::Json, "a", "1").await;
    let _b = gw.identify(Enc::Msgpack, "b", "1").await;
    let only_a = r#"{"application":"a"}"#;
    for content_type in [
        None,
        Some("application/json"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| vec![("content-type", ct)])
            .unwrap_or_default();
        let response = post_query(&gw, &headers, only_a).await;
        assert_eq!(response.status, StatusCode::OK, "{content_type:?}");
        assert_eq!(ids(&response.json()), ["a/1"], "{content_type:?}");
    }

    // An empty body is `{}`: every client. URL query parameters are not merged into the body.
    for path in ["/api/v1/query", "/api/v1/query?application=a"] {
        let response = gw.http(Method::POST, path, &[], Bytes::new()).await;
        assert_eq!(response.status, StatusCode::OK, "{path}");
        assert_eq!(ids(&response.json()), ["a/1", "b/1"], "{path}");
    }

    let invalid = json!({"errors": ["invalid JSON body"]});
    for body in ["not json", "{", "{\"application\":\"a\"} x", "\u{0}"] {
        assert_json(
            &post_query(&gw, &[], body).await,
            StatusCode::BAD_REQUEST,
            invalid.clone(),
        );
    }
    // Valid JSON that is not a query is a query error, not a body error.
    assert_json(
        &post_query(&gw, &[], "[]").await,
        StatusCode::BAD_REQUEST,
        json!({"errors": ["query: must be an object"]}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_gets_413() {
    let gw = TestGateway::start_with(|c| c.http.max_body_bytes = 1024).await;
    let padded = |size: usize| {
        let bare = r#"{"application":""}"#.len();
        format!(r#"{{"application":"{}"}}"#, "x".repeat(size - bare))
    };
    let at_limit = padded(1024);
    assert_eq!(at_limit.len(), 1024);
    let response = post_query(&gw, &[], &at_limit).await;
    assert_json(&response, StatusCode::OK, json!([]));
    let over = padded(1025);
    assert_json(
        &post_query(&gw, &[], &over).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"errors": ["payload too large"]}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_accepted_wherever_get_is_and_has_no_body() {
    let gw = TestGateway::start().await;
    for path in ["/api/version", "/healthz", "/readyz"] {
        let get = get(&gw, path).await;
        let head = gw.http(Method::HEAD, path, &[], Bytes::new()).await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert!(
            head.body.is_empty(),
            "HEAD {path} has a body: {}",
            head.text()
        );
    }
    let head = gw.http(Method::HEAD, "/nope", &[], Bytes::new()).await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert!(head.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_header_is_ignored() {
    let gw = TestGateway::start().await;
    let accept = [("accept", "text/html")];
    let version = gw
        .http(Method::GET, "/api/version", &accept, Bytes::new())
        .await;
    assert_eq!(version.status, StatusCode::OK);
    assert_eq!(version.json()["api"], "v1");
    let query = post_query(&gw, &[("accept", "application/xml")], "{}").await;
    assert_json(&query, StatusCode::OK, json!([]));
}

// === authentication (§9.1) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_accepts_the_raw_password_or_a_bearer_token_in_the_first_authorization_header() {
    let gw = TestGateway::start_with(with_password()).await;
    let unauthorized = json!({"status": "error", "error": "not authorized"});
    let cases: [(&[(&str, &str)], bool); 11] = [
        (&[], false),
        (&[("authorization", "s3cret")], true),
        (&[("authorization", "Bearer s3cret")], true),
        (&[("authorization", "bearer s3cret")], true),
        (&[("authorization", "BEARER s3cret")], true),
        (&[("authorization", "Bearer nope")], false),
        (&[("authorization", "Basic s3cret")], false),
        (&[("authorization", "Bearer")], false),
        (&[("authorization", "")], false),
        (
            &[("authorization", "s3cret"), ("authorization", "nope")],
            true,
        ),
        (
            &[("authorization", "nope"), ("authorization", "s3cret")],
            false,
        ),
    ];
    // Seven wrong credentials: under the limit of ten.
    for (headers, accepted) in cases {
        let response = post_query(&gw, headers, "{}").await;
        assert_eq!(
            response.status.is_success(),
            accepted,
            "{headers:?}: {}",
            response.status
        );
        if accepted {
            assert_json(&response, StatusCode::OK, json!([]));
        } else {
            assert_json(&response, StatusCode::UNAUTHORIZED, unauthorized.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_every_request_passes_whatever_it_sends() {
    let gw = TestGateway::start().await;
    for credential in ["", "anything", "Bearer x"] {
        let response = post_query(&gw, &[("authorization", credential)], "{}").await;
        assert_json(&response, StatusCode::OK, json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_failures_count_towards_the_failed_auth_limit() {
    let gw = TestGateway::start_with(|c| {
        c.auth.password = Some("s3cret".to_owned());
        c.auth.max_failures_per_minute = 3;
    })
    .await;
    let unauthorized = json!({"status": "error", "error": "not authorized"});
    let too_many = json!({"status": "error", "error": "too many failed auth attempts"});
    for _ in 0..3 {
        let response = post_query(&gw, &[("authorization", "nope")], "{}").await;
        assert_json(&response, StatusCode::UNAUTHORIZED, unauthorized.clone());
    }
    // Over the limit, every request with a credential gets 429, the right one included.
    for credential in ["nope", "s3cret", "Bearer s3cret"] {
        let response = post_query(&gw, &[("authorization", credential)], "{}").await;
        assert_json(&response, StatusCode::TOO_MANY_REQUESTS, too_many.clone());
    }
    // Without a credential it is still a plain 401; routes without auth still answer.
    let response = post_query(&gw, &[], "{}").await;
    assert_json(&response, StatusCode::UNAUTHORIZED, unauthorized);
    assert_eq!(get(&gw, "/api/version").await.status, StatusCode::OK);

    // The gateway shares the counter: an identify with a credential is refused ...
    for enc in Enc::ALL {
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "app", "client_id": enc.name(), "auth": "s3cret"}}))
            .await;
        let d = client
            .expect_fatal("too many failed auth attempts", 1008)
            .await;
        assert_eq!(d["extra_info"], Value::Null);
        // ... and one without is admitted, restricted.
        let (mut client, _) = gw.connect(enc).await;
        client
            .send(json!({"op": 1, "d": {"application_id": "app", "client_id": enc.name()}}))
            .await;
        let ready = client.recv().await;
        assert_eq!(ready["op"], 2, "{ready}");
        assert_eq!(
            ready["d"],
            json!({"client_id": enc.name(), "restricted": true})
        );
    }
}

// === GET /api/version (§9.3) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_route_answers_without_credentials() {
    let gw = TestGateway::start_with(with_password()).await;
    let response = get(&gw, "/api/version").await;
    let version = env!("CARGO_PKG_VERSION");
    assert_json(
        &response,
        StatusCode::OK,
        json!({"api": "v1", "singyeong": "0.0.1", "ganglion": version}),
    );
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    assert!(
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "`ganglion` is not SemVer: {version}"
    );
}

// === POST /api/v1/query (§9.4) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_answers_with_the_client_objects_of_the_spec() {
    let gw = TestGateway::start().await;
    for enc in Enc::ALL {
        let app = format!("test-app-1-{}", enc.name());
        let before = now_ms();
        let _client = gw.identify(enc, &app, "client-1").await;
        let response = post_query(
            &gw,
            &[],
            &json!({"application": app, "ops": []}).to_string(),
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);
        let found = response.json();
        let items = found.as_array().expect("an array");
        assert_eq!(items.len(), 1, "{found}");
        let object = &items[0];
        let heartbeat = object["metadata"]["last_heartbeat_time"]
            .as_u64()
            .expect("last_heartbeat_time is an integer");
        assert!(
            (before..=now_ms()).contains(&heartbeat),
            "last_heartbeat_time {heartbeat} is the identify time"
        );
        assert_eq!(
            *object,
            json!({
                "app_id": app,
                "client_id": "client-1",
                "metadata": {
                    "encoding": enc.name(), "ip": "127.0.0.1", "restricted": false,
                    "namespace": null, "receive_client_updates": false,
                    "last_heartbeat_time": heartbeat,
                },
                "metadata_types": {
                    "encoding": "string", "ip": "string", "restricted": "boolean",
                    "namespace": "string", "receive_client_updates": "boolean",
                    "last_heartbeat_time": "integer",
                },
                "socket_ip": "127.0.0.1",
                "queues": [],
                "node": "test-node",
            })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_results_are_sorted_by_application_then_client_and_no_match_is_an_empty_array() {
    let gw = TestGateway::start_with(with_password()).await;
    let mut clients = Vec::new();
    for (app, id) in [("b", "2"), ("a", "2"), ("b", "1"), ("a", "1")] {
        clients.push(
            gw.identify_with(
                Enc::Json,
                json!({"application_id": app, "client_id": id, "auth": "s3cret",
                       "metadata": {"load": meta("integer", 1)}}),
            )
            .await,
        );
    }
    // A restricted client is left out of an empty query.
    clients.push(
        gw.identify_with(
            Enc::Msgpack,
            json!({"application_id": "a", "client_id": "0"}),
        )
        .await,
    );
    let auth = [("authorization", "s3cret")];
    let all = post_query(&gw, &auth, "").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(ids(&all.json()), ["a/1", "a/2", "b/1", "b/2"]);
    let none = post_query(&gw, &auth, r#"{"application":"none"}"#).await;
    assert_json(&none, StatusCode::OK, json!([]));
    let nobody = post_query(
        &gw,
        &auth,
        r#"{"application":"a","ops":[{"path":"/load","op":"$gt","to":{"value":1}}]}"#,
    )
    .await;
    assert_json(&nobody, StatusCode::OK, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_query_gets_400_with_its_reason() {
    let gw = TestGateway::start().await;
    for (body, reason) in [
        (r#"{"ops":5}"#, "ops: must be a list"),
        (r#"5"#, "query: must be an object"),
        (
            r#"{"application":"a","ops":[{"path":"/x","op":"$in","to":{"value":5}}]}"#,
            "$in: operand must be a list",
        ),
    ] {
        assert_json(
            &post_query(&gw, &[], body).await,
            StatusCode::BAD_REQUEST,
            json!({"errors": [reason]}),
        );
    }
}

// === health and readiness (§9.8, §10.8) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_ok_and_readyz_is_ready_on_a_running_node() {
    let gw = TestGateway::start_with(with_password()).await;
    assert_json(
        &get(&gw, "/healthz").await,
        StatusCode::OK,
        json!({"status": "ok"}),
    );
    assert_json(
        &get(&gw, "/readyz").await,
        StatusCode::OK,
        json!({"status": "ready"}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_reports_draining_and_refuses_websocket_upgrades() {
    let gw = TestGateway::start().await;
    let addr = gw.addr;
    let ws_url = gw.ws_url("?encoding=json");
    let mut client = gw.identify(Enc::Json, "app", "holder").await;
    let drained = gw.drain_in_background();

    // The goodbye proves the drain has begun; the drain cannot end before this client has
    // answered the close, so the node is still serving HTTP meanwhile.
    let goodbye = client.recv().await;
    assert_eq!(goodbye["op"], 7, "{goodbye}");

    let draining = json!({"status": "draining"});
    assert_json(
        &http_at(addr, Method::GET, "/readyz", &[]).await,
        StatusCode::SERVICE_UNAVAILABLE,
        draining.clone(),
    );
    assert_json(
        &http_at(addr, Method::GET, "/healthz", &[]).await,
        StatusCode::OK,
        json!({"status": "ok"}),
    );
    assert_json(
        &http_at(addr, Method::GET, "/gateway/websocket", &UPGRADE).await,
        StatusCode::SERVICE_UNAVAILABLE,
        draining,
    );
    match tokio_tungstenite::connect_async(ws_url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a draining node accepted a websocket"),
    }

    assert_eq!(client.closed().await.code, Some(1001));
    // Answer the close (tungstenite writes the reply on the next read), so the drain can end.
    let _ = timeout(patience(), futures_util::StreamExt::next(&mut client.ws)).await;
    timeout(patience(), drained)
        .await
        .expect("the drain completes")
        .expect("the drain task");
}

// === slow and idle connections ===

/// Reads `tcp` to its end; returns what came and how long after `since` the end came.
async fn read_until_closed(
    tcp: &mut tokio::net::TcpStream,
    since: tokio::time::Instant,
) -> (Vec<u8>, std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    timeout(patience(), tcp.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection in time")
        .expect("read");
    (got, since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_arrive_in_time_and_an_idle_connection_are_closed() {
    use tokio::io::AsyncWriteExt;
    let gw = TestGateway::start_with(|c| c.http.header_read_timeout_ms = 400).await;
    let slowest = std::time::Duration::from_millis(350);

    // Half a head (of a proxy request and of anything else), then nothing.
    for partial in [
        &b"GET /api/v1/proxy/svc/x HTTP/1.1\r\nHo"[..],
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"POST /api/v1/proxy/svc/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let since = tokio::time::Instant::now();
        tcp.write_all(partial).await.expect("write");
        let (got, after) = read_until_closed(&mut tcp, since).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        assert!(
            after >= slowest,
            "closed after {after:?}, before the timeout"
        );
    }

    // A keep-alive connection left idle after its response, on the relay's side (no proxy
    // request came yet) and on hyper's (after a request the relay handed over).
    for request in [
        &b"GET /api/v1/proxy/nobody/x HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        tcp.write_all(request).await.expect("write");
        let since = tokio::time::Instant::now();
        let (got, after) = read_until_closed(&mut tcp, since).await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 "), "{got}");
        assert!(
            after >= slowest,
            "closed after {after:?}, before the timeout"
        );
    }
}
