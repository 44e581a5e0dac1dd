//! The HTTP proxy (SPEC §9.5–§9.7, checklist items 63–66): validation, choosing a backend by
//! query, target URLs, the SSRF guard, timeouts, header hygiene and streamed bodies.
//!
//! Backends are real HTTP servers on loopback ports, registered by websocket clients whose
//! identify `ip` is the backend's URL. A backend reports every request it receives on a
//! channel; since it reports before it answers, "nothing else arrived" can be checked as soon
//! as the proxied response is in.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use ganglion_tests::{Client, Enc, HttpResponse, TestGateway, meta, patience};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

type TestBody = BoxBody<Bytes, io::Error>;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

/// Asserts that `seen` continues `parent`: same trace id and flags, with ganglion's proxy span
/// as parent id (SPEC §9.7, §11).
fn assert_child_traceparent(seen: Option<&str>, parent: &str) {
    let seen = seen.expect("a traceparent upstream");
    assert_eq!(seen.len(), 55, "{seen}");
    assert_eq!(seen[..36], parent[..36], "same trace id: {seen}");
    assert_eq!(seen[52..], parent[52..], "same flags: {seen}");
    assert_ne!(
        seen[36..52],
        parent[36..52],
        "ganglion's span is the parent: {seen}"
    );
}
/// Size of one generated chunk of a large body.
const CHUNK: usize = 64 * 1024;
/// 800 chunks: 50 MiB.
const LARGE_CHUNKS: u64 = 800;

// === a backend ===

/// One request as the backend received it.
#[derive(Debug)]
struct Seen {
    method: Method,
    /// Path and query, as on the request line.
    target: String,
    headers: HeaderMap,
    /// The body, except on `/digest` and `/progress`, which only measure it.
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header"))
            .collect()
    }

    fn names(&self) -> Vec<String> {
        sorted_names(&self.headers)
    }
}

fn sorted_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers.keys().map(|n| n.as_str().to_owned()).collect();
    names.sort();
    names
}

/// What the backend's handlers share with the test.
struct Shared {
    name: String,
    seen: mpsc::UnboundedSender<Seen>,
    /// `/progress` reports the bytes it has when the first part of the body arrives.
    progress: mpsc::UnboundedSender<usize>,
    /// `/gated` sends the rest of its body once this is notified.
    gate: Notify,
}

/// An HTTP/1.1 server on a loopback port. Routes:
///
/// - `/digest`: answers `{"len", "digest"}` of the request body, read as it streams;
/// - `/progress`: like `/digest`, and reports on `progress` when the first bytes arrive;
/// - `/download?chunks=N`: a generated body of N chunks, chunked encoding;
/// - `/gated`: one chunk, then the rest after `gate` is notified;
/// - `/hygiene`: hop-by-hop headers, two `Set-Cookie`, no `Content-Type`;
/// - `/redirect`: 302 to `/elsewhere`;
/// - `/stall`: a head promising 10 bytes, then 5 bytes, then nothing;
/// - anything else: echoes the body (`{}` when empty) as JSON.
///
/// Every answer carries `X-Backend: <name>`.
struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    seen: mpsc::UnboundedReceiver<Seen>,
    progress: mpsc::UnboundedReceiver<usize>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0")
            .await
            .expect("a loopback port")
    }

    /// A backend on `addr`, or `None` when it cannot be bound (no IPv6 loopback).
    async fn start_on(name: &str, addr: &str) -> Option<Backend> {
        let listener = TcpListener::bind(addr).await.ok()?;
        let addr = listener.local_addr().ok()?;
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (progress_tx, progress) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            seen: seen_tx,
            progress: progress_tx,
            gate: Notify::new(),
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, shared.clone(), connections.clone()));
        Some(Backend {
            addr,
            shared,
            seen,
            progress,
            connections,
            task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request the backend received.
    async fn next(&mut self) -> Seen {
        timeout(patience(), self.seen.recv())
            .await
            .expect("the backend receives a request in time")
            .expect("the backend is running")
    }

    /// Asserts that no other request reached the backend.
    fn expect_no_more(&mut self) {
        if let Ok(seen) = self.seen.try_recv() {
            panic!("unexpected request at the backend: {seen:?}");
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, connections: Arc<AtomicUsize>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(shared.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn respond(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, mut body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let mut seen = Seen {
        method: parts.method,
        target,
        headers: parts.headers,
        body: Bytes::new(),
    };
    let path = parts.uri.path();
    let response = Response::builder().header("x-backend", shared.name.as_str());
    if path == "/digest" || path == "/progress" {
        let mut digest = Digest::default();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                break;
            };
            if let Ok(data) = frame.into_data() {
                let first = digest.len == 0;
                digest.update(&data);
                if first && path == "/progress" {
                    let _ = shared.progress.send(data.len());
                }
            }
        }
        let _ = shared.seen.send(seen);
        let answer = json!({"len": digest.len, "digest": digest.finish()}).to_string();
        return Ok(response.body(full(answer)).expect("response"));
    }
    seen.body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = if seen.body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        seen.body.clone()
    };
    let chunks: u64 = parts
        .uri
        .query()
        .and_then(|q| q.strip_prefix("chunks="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let _ = shared.seen.send(seen);
    let response = match path {
        "/download" => response.body(generated(chunks)),
        "/gated" => {
            let gated = shared.clone();
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let gated = gated.clone();
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(chunk(0))), 1)),
                        1 => {
                            gated.gate.notified().await;
                            Some((Ok(Frame::data(chunk(1))), 2))
                        }
                        _ => None,
                    }
                }
            });
            response.body(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/hygiene" => response
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("trailer", "x-checksum")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("x-custom", "kept")
            .body(full("hi")),
        "/redirect" => response
            .status(StatusCode::FOUND)
            .header("location", "/elsewhere")
            .body(full("")),
        "/stall" => {
            let stream =
                futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"12345")))])
                    .chain(futures_util::stream::pending());
            response
                .header("content-length", "10")
                .body(BodyExt::boxed(StreamBody::new(stream)))
        }
        _ => response
            .header("content-type", "application/json")
            .body(full(echo)),
    };
    Ok(response.expect("response"))
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Chunk `i` of a generated body: a byte pattern with the chunk's index in its first bytes.
fn chunk(i: u64) -> Bytes {
    let mut bytes: Vec<u8> = (0..CHUNK).map(|j| (j % 251) as u8).collect();
    bytes[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(bytes)
}

/// A streamed body of `chunks` generated chunks, made as it is read.
fn generated(chunks: u64) -> TestBody {
    let stream = futures_util::stream::iter(0..chunks).map(|i| Ok(Frame::data(chunk(i))));
    BodyExt::boxed(StreamBody::new(stream))
}

/// The digest of a generated body of `chunks` chunks.
fn generated_digest(chunks: u64) -> Value {
    let mut digest = Digest::default();
    for i in 0..chunks {
        digest.update(&chunk(i));
    }
    json!({"len": digest.len, "digest": digest.finish()})
}

/// A streaming 64-bit digest, word by word (fast enough unoptimised for 50 MiB).
#[derive(Default)]
struct Digest {
    state: u64,
    len: u64,
    pending: Vec<u8>,
}

impl Digest {
    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (8 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == 8 {
                let word = u64::from_le_bytes(self.pending[..].try_into().expect("8 bytes"));
                self.mix(word);
                self.pending.clear();
            }
        }
        let words = data.chunks_exact(8);
        self.pending.extend_from_slice(words.remainder());
        for word in words {
            self.mix(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(31);
    }

    fn finish(mut self) -> String {
        let mut tail = [0u8; 8];
        tail[..self.pending.len()].copy_from_slice(&self.pending);
        self.mix(u64::from_le_bytes(tail));
        self.mix(self.len);
        format!("{:016x}", self.state)
    }
}

/// A server that accepts connections and never answers.
struct Silent {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("port");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        Silent { addr, task }
    }
}

/// A loopback port with nothing listening.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("port");
    listener.local_addr().expect("address")
}

// === helpers ===

/// Registers a websocket client of `app`/`id` whose identify `ip` is `ip`. It gives the
/// password of the servers that have one, so it is never restricted.
async fn register(gw: &TestGateway, app: &str, id: &str, ip: &str, metadata: Value) -> Client {
    gw.identify_with(
        Enc::Json,
        json!({"application_id": app, "client_id": id, "ip": ip, "metadata": metadata,
               "auth": "s3cret"}),
    )
    .await
}

async fn proxy_json(gw: &TestGateway, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
    gw.http(Method::POST, "/api/v1/proxy", headers, body.to_string())
        .await
}

/// A request whose body may stream; the response is returned unread.
async fn send(
    gw: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Response<Incoming> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<TestBody>();
    let mut request = Request::builder().method(method).uri(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body).expect("request");
    timeout(patience(), client.request(request))
        .await
        .expect("a response in time")
        .expect("a response")
}

#[track_caller]
fn assert_json(response: &HttpResponse, status: StatusCode, body: Value) {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert_eq!(
        response
            .headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
        Some(&b"application/json"[..]),
        "content type of {body}"
    );
    assert_eq!(response.json(), body);
}

/// The single error reason of an `{"errors":[...]}` answer.
fn reason(response: &HttpResponse) -> String {
    let body = response.json();
    let errors = body["errors"].as_array().expect("an errors array");
    assert_eq!(errors.len(), 1, "{body}");
    errors[0].as_str().expect("a string reason").to_owned()
}

fn backend_of(response: &HttpResponse) -> String {
    response
        .headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no x-backend header: {response:?}"))
        .to_owned()
}

const VALID_METHODS: &str = r#"(valid methods: ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"])"#;
const UNSUPPORTED: &str = r#"(not supported: ["CONNECT", "OPTIONS", "TRACE"])"#;

// === validation (§9.5, item 63) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_validation_answers_the_first_failure_in_the_order_of_spec_9_5() {
    let gw = TestGateway::start_with(|c| c.http.max_body_bytes = 4096).await;
    let method_missing = json!({"method": ["no method provided"]});
    let route_missing = json!({"route": ["no route provided"]});
    let query_missing = json!({"query": ["no query provided"]});
    let errors = |reason: &str| json!({"errors": [reason]});
    let not_valid = |m: &str| errors(&format!("{m} is not a valid method! {VALID_METHODS}"));
    let not_supported = |m: &str| errors(&format!("{m} is not a supported method! {UNSUPPORTED}"));
    let no_body = errors("no body required but one given (you probably wanted to send nil)");
    let route_type = errors("route must be a string");
    let header_shape = errors("headers must map names to strings");
    let q = json!({"application": "nobody"});
    let cases: Vec<(String, Value)> = vec![
        ("{nope".into(), errors("invalid JSON body")),
        ("".into(), method_missing.clone()),
        ("[1,2]".into(), method_missing.clone()),
        ("{}".into(), method_missing.clone()),
        (json!({"method": null, "route": "/", "query": q}).to_string(), method_missing),
        (json!({"method": "GET"}).to_string(), route_missing.clone()),
        (json!({"method": "get"}).to_string(), route_missing.clone()),
        (json!({"method": "GET", "route": null, "query": q}).to_string(), route_missing),
        (json!({"method": "GET", "route": "/"}).to_string(), query_missing.clone()),
        (json!({"method": 5, "route": 5}).to_string(), query_missing),
        (json!({"method": "get", "route": "/", "query": q}).to_string(), not_valid("get")),
        (json!({"method": "GETX", "route": 5, "query": 5}).to_string(), not_valid("GETX")),
        (json!({"method": 5, "route": "/", "query": q}).to_string(), not_valid("5")),
        (json!({"method": ["GET"], "route": "/", "query": q}).to_string(), not_valid(r#"["GET"]"#)),
        (json!({"method": "TRACE", "route": "/", "query": q}).to_string(), not_supported("TRACE")),
        (json!({"method": "CONNECT", "route": "/", "query": q}).to_string(), not_supported("CONNECT")),
        (json!({"method": "OPTIONS", "route": 5, "query": q}).to_string(), not_supported("OPTIONS")),
        (json!({"method": "GET", "route": 5, "query": q}).to_string(), route_type.clone()),
        (json!({"method": "GET", "route": ["/"], "body": "x", "query": q}).to_string(), route_type),
        (json!({"method": "GET", "route": "/", "body": "x", "query": q}).to_string(), no_body.clone()),
        (json!({"method": "HEAD", "route": "/", "body": {"a": 1}, "query": q}).to_string(), no_body.clone()),
        (json!({"method": "GET", "route": "/", "body": 0, "query": q}).to_string(), no_body.clone()),
        (json!({"method": "GET", "route": "/", "body": false, "headers": 5, "query": 5}).to_string(), no_body),
        (json!({"method": "POST", "route": "/", "headers": 5, "query": q}).to_string(), header_shape.clone()),
        (json!({"method": "POST", "route": "/", "headers": ["a"], "query": q}).to_string(), header_shape.clone()),
        (json!({"method": "POST", "route": "/", "headers": {"a": 1}, "query": q}).to_string(), header_shape.clone()),
        (json!({"method": "POST", "route": "/", "headers": {"a": ["x", 1]}, "query": {"ops": 5}}).to_string(), header_shape),
        (json!({"method": "POST", "route": "/", "headers": {"bad name": "x"}, "query": q}).to_string(), errors("invalid header: bad name")),
        (json!({"method": "POST", "route": "/", "headers": {"": "x"}, "query": q}).to_string(), errors("invalid header: ")),
        (json!({"method": "POST", "route": "/", "headers": {"X-Split": "a\r\nb"}, "query": q}).to_string(), errors("invalid header: X-Split")),
        (json!({"method": "POST", "route": "/", "headers": {"x-nul": "a\u{0}b"}, "query": q}).to_string(), errors("invalid header: x-nul")),
        (json!({"method": "POST", "route": "/", "headers": {"x-lf": ["ok", "a\nb"]}, "query": {"ops": 5}}).to_string(), errors("invalid header: x-lf")),
        (json!({"method": "POST", "route": "/", "query": {"ops": 5}}).to_string(), errors("ops: must be a list")),
        (json!({"method": "POST", "route": "/", "query": 5}).to_string(), errors("query: must be an object")),
        (json!({"method": "GET", "route": "/", "body": "", "query": q}).to_string(), errors("no matches")),
        (json!({"method": "GET", "route": "/", "body": null, "query": q}).to_string(), errors("no matches")),
        (json!({"method": "DELETE", "route": "/", "body": {"a": 1}, "headers": {"X-A": ["1", "2"]}, "query": q}).to_string(), errors("no matches")),
        (json!({"method": "GET", "route": "/", "query": {}}).to_string(), errors("no matches")),
        (format!("{{\"method\":\"GET\",\"pad\":\"{}\"}}", "x".repeat(5000)), errors("payload too large")),
    ];
    for (body, expected) in cases {
        let response = gw
            .http(Method::POST, "/api/v1/proxy", &[], body.clone())
            .await;
        let status = if expected == errors("payload too large") {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(response.status, status, "{body}: {}", response.text());
        assert_eq!(response.json(), expected, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_need_the_password_and_only_post_reaches_the_json_form() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".into())).await;
    let unauthorized = json!({"status": "error", "error": "not authorized"});
    let body = json!({"method": "GET", "route": "/", "query": {"application": "nobody"}});
    assert_json(
        &proxy_json(&gw, &[], &body).await,
        StatusCode::UNAUTHORIZED,
        unauthorized.clone(),
    );
    assert_json(
        &proxy_json(&gw, &[("x-ganglion-auth", "s3cret")], &body).await,
        StatusCode::UNAUTHORIZED,
        unauthorized.clone(),
    );
    assert_json(
        &proxy_json(&gw, &[("authorization", "Bearer s3cret")], &body).await,
        StatusCode::BAD_REQUEST,
        json!({"errors": ["no matches"]}),
    );
    for path in ["/api/v1/proxy/nobody", "/api/v1/proxy/nobody/x"] {
        let response = gw.http(Method::GET, path, &[], Bytes::new()).await;
        assert_json(&response, StatusCode::UNAUTHORIZED, unauthorized.clone());
    }
    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy",
            &[("authorization", "s3cret")],
            Bytes::new(),
        )
        .await;
    assert_json(
        &response,
        StatusCode::NOT_FOUND,
        json!({"code": 404, "error": "not found"}),
    );
}

// === the JSON form (§9.5, item 64) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_get_reaches_the_upstream_at_a_single_slash_with_x_forwarded_for() {
    let gw = TestGateway::start().await;
    let mut echo = Backend::start("echo").await;
    let _client = register(&gw, "echo", "e-1", &echo.url(), json!({})).await;
    let response = proxy_json(
        &gw,
        &[],
        &json!({"method": "GET", "route": "/", "query": {"application": "echo", "ops": []},
                "body": null, "headers": {"Content-Type": "application/json"}}),
    )
    .await;
    assert_json(&response, StatusCode::OK, json!({}));
    let seen = echo.next().await;
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.target, "/");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("host"), Some(echo.addr.to_string().as_str()));
    assert!(seen.body.is_empty());
    echo.expect_no_more();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_post_sends_the_body_as_compact_json_and_relays_the_echo() {
    let gw = TestGateway::start().await;
    let mut echo = Backend::start("echo").await;
    let _client = register(&gw, "echo", "e-1", &echo.url(), json!({})).await;
    let payload = json!({"test": "key", "map": {"this": "is a map"}});
    let response = proxy_json(
        &gw,
        &[],
        &json!({"method": "POST", "route": "/", "query": {"application": "echo"}, "body": payload}),
    )
    .await;
    assert_json(&response, StatusCode::OK, payload.clone());
    let seen = echo.next().await;
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.target, "/");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.body, payload.to_string(), "compact JSON");
    assert_eq!(
        seen.header("content-length"),
        Some(payload.to_string().len().to_string().as_str())
    );
    assert_eq!(response.body, seen.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_bodies_follow_their_type() {
    let gw = TestGateway::start().await;
    let mut echo = Backend::start("echo").await;
    let _client = register(&gw, "echo", "e-1", &echo.url(), json!({})).await;
    let q = json!({"application": "echo"});

    // A string goes verbatim, with no Content-Type added.
    let response = proxy_json(
        &gw,
        &[],
        &json!({"method": "PUT", "route": "/text", "query": q, "body": "plain {text}"}),
    )
    .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, "plain {text}");
    let seen = echo.next().await;
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("PUT", "/text")
    );
    assert_eq!(seen.body, "plain {text}");
    assert_eq!(seen.header("content-type"), None);

    // Any other value is JSON; a supplied Content-Type (any case) is kept, once.
    proxy_json(
        &gw,
        &[],
        &json!({"method": "PATCH", "route": "n", "query": q, "body": 5,
                "headers": {"content-TYPE": "application/merge-patch+json"}}),
    )
    .await;
    let seen = echo.next().await;
    assert_eq!(seen.body, "5");
    assert_eq!(seen.all("content-type"), ["application/merge-patch+json"]);

    proxy_json(
        &gw,
        &[],
        &json!({"method": "POST", "route": "/list", "query": q, "body": [1, "two", null, 2.5]}),
    )
    .await;
    let seen = echo.next().await;
    assert_eq!(seen.body, r#"[1,"two",null,2.5]"#);
    assert_eq!(seen.all("content-type"), ["application/json"]);

    // Absent, null and "" send no body, whatever the method.
    for body in [None, Some(Value::Null), Some(json!(""))] {
        let mut request = json!({"method": "POST", "route": "/none", "query": q});
        if let Some(body) = body.clone() {
            request["body"] = body;
        }
        let response = proxy_json(&gw, &[], &request).await;
        assert_eq!(response.status, StatusCode::OK, "{body:?}");
        let seen = echo.next().await;
        assert!(seen.body.is_empty(), "{body:?}");
        assert_eq!(seen.header("content-type"), None, "{body:?}");
    }
    echo.expect_no_more();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_headers_are_sent_clean_with_forwarding_and_trace_context() {
    let gw = TestGateway::start().await;
    let mut echo = Backend::start("echo").await;
    let _client = register(&gw, "echo", "e-1", &echo.url(), json!({})).await;
    let headers = json!({
        "X-Multi": ["a", "b"],
        "X-Keep": "yes",
        "Connection": "X-Drop, keep-alive",
        "X-Drop": "1",
        "Keep-Alive": "timeout=1",
        "Proxy-Authorization": "Basic eDp5",
        "TE": "trailers",
        "Transfer-Encoding": "chunked",
        "Upgrade": "h2c",
        "Host": "evil.example",
        "Content-Length": "999",
        "X-Forwarded-For": "10.1.1.1",
        "traceparent": OTHER_TRACEPARENT,
        "tracestate": "json=1",
    });
    let request = json!({"method": "POST", "route": "/h", "query": {"application": "echo"},
                         "body": "abc", "headers": headers});
    proxy_json(&gw, &[], &request).await;
    let seen = echo.next().await;
    assert_eq!(
        seen.names(),
        [
            "content-length",
            "host",
            "traceparent",
            "tracestate",
            "x-forwarded-for",
            "x-keep",
            "x-multi"
        ]
    );
    assert_eq!(seen.all("x-multi"), ["a", "b"]);
    assert_eq!(seen.header("host"), Some(echo.addr.to_string().as_str()));
    assert_eq!(seen.header("content-length"), Some("3"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.1.1, 127.0.0.1"));
    assert_child_traceparent(seen.header("traceparent"), OTHER_TRACEPARENT);
    assert_eq!(seen.header("tracestate"), Some("json=1"));

    // The caller's own trace context wins over the one in `headers`.
    proxy_json(&gw, &[("traceparent", TRACEPARENT)], &request).await;
    let seen = echo.next().await;
    assert_child_traceparent(seen.header("traceparent"), TRACEPARENT);
    assert_eq!(seen.header("tracestate"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_routes_by_metadata() {
    let gw = TestGateway::start().await;
    let eu = Backend::start("eu").await;
    let us = Backend::start("us").await;
    let _eu = register(
        &gw,
        "svc",
        "eu-1",
        &eu.url(),
        json!({"region": meta("string", "eu")}),
    )
    .await;
    let _us = register(
        &gw,
        "svc",
        "us-1",
        &us.url(),
        json!({"region": meta("string", "us")}),
    )
    .await;
    for region in ["eu", "us", "eu", "us", "us", "eu"] {
        let query = json!({"application": "svc",
                           "ops": [{"path": "/region", "op": "$eq", "to": {"value": region}}]});
        let response = proxy_json(
            &gw,
            &[],
            &json!({"method": "GET", "route": "/", "query": query}),
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(backend_of(&response), region);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_keeps_hitting_the_same_backend_and_no_key_spreads_the_requests() {
    let gw = TestGateway::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let _a = register(&gw, "svc", "a", &a.url(), json!({"n": meta("integer", 1)})).await;
    let _b = register(&gw, "svc", "b", &b.url(), json!({"n": meta("integer", 2)})).await;
    let mut keyed = Vec::new();
    for _ in 0..20 {
        let response = proxy_json(
            &gw,
            &[],
            &json!({"method": "GET", "route": "/", "query": {"application": "svc", "key": "user-42"}}),
        )
        .await;
        keyed.push(backend_of(&response));
        let response = gw
            .http(
                Method::GET,
                "/api/v1/proxy/svc/",
                &[("x-ganglion-query", r#"{"key":"user-42"}"#)],
                Bytes::new(),
            )
            .await;
        keyed.push(backend_of(&response));
    }
    keyed.dedup();
    assert_eq!(
        keyed.len(),
        1,
        "the key always goes to one backend: {keyed:?}"
    );

    let mut spread = Vec::new();
    for _ in 0..40 {
        let response = gw
            .http(Method::GET, "/api/v1/proxy/svc/", &[], Bytes::new())
            .await;
        spread.push(backend_of(&response));
    }
    spread.sort();
    spread.dedup();
    assert_eq!(spread, ["a", "b"], "without a key both backends are used");
}

// === the transparent form (§9.6, item 66) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_form_forwards_method_path_and_query_without_the_ganglion_authorization() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".into())).await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "svc-1", &svc.url(), json!({})).await;
    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy/svc/users/1?x=2",
            &[("authorization", "Bearer s3cret")],
            Bytes::new(),
        )
        .await;
    assert_json(&response, StatusCode::OK, json!({}));
    let seen = svc.next().await;
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/users/1?x=2")
    );
    assert_eq!(seen.header("authorization"), None);

    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy/nobody/users/1?x=2",
            &[("authorization", "s3cret")],
            Bytes::new(),
        )
        .await;
    assert_json(
        &response,
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"errors": ["no matches"]}),
    );
    svc.expect_no_more();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_ganglion_auth_carries_the_credential_and_authorization_goes_upstream() {
    let gw = TestGateway::start_with(|c| c.auth.password = Some("s3cret".into())).await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "svc-1", &svc.url(), json!({})).await;
    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy/svc/me",
            &[
                ("x-ganglion-auth", "Bearer s3cret"),
                ("authorization", "Basic dXNlcjpwdw=="),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let seen = svc.next().await;
    assert_eq!(seen.header("authorization"), Some("Basic dXNlcjpwdw=="));
    assert_eq!(seen.header("x-ganglion-auth"), None);

    // When X-Ganglion-Auth is given, it alone is the credential.
    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy/svc/me",
            &[("x-ganglion-auth", "nope"), ("authorization", "s3cret")],
            Bytes::new(),
        )
        .await;
    assert_json(
        &response,
        StatusCode::UNAUTHORIZED,
        json!({"status": "error", "error": "not authorized"}),
    );
    svc.expect_no_more();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_authorization_is_always_forwarded() {
    let gw = TestGateway::start().await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "svc-1", &svc.url(), json!({})).await;
    gw.http(
        Method::GET,
        "/api/v1/proxy/svc/",
        &[
            ("authorization", "Bearer upstream-token"),
            ("x-ganglion-auth", "x"),
        ],
        Bytes::new(),
    )
    .await;
    let seen = svc.next().await;
    assert_eq!(seen.header("authorization"), Some("Bearer upstream-token"));
    assert_eq!(seen.header("x-ganglion-auth"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_routes_keep_the_raw_path_and_query_and_join_a_base_path() {
    let gw = TestGateway::start().await;
    let mut svc = Backend::start("svc").await;
    let _plain = register(&gw, "svc", "svc-1", &svc.url(), json!({})).await;
    let _prefixed = register(
        &gw,
        "pre%fix",
        "p-1",
        &format!("{}/base/", svc.url()),
        json!({}),
    )
    .await;
    for (path, upstream) in [
        ("/api/v1/proxy/svc", "/"),
        ("/api/v1/proxy/svc/", "/"),
        ("/api/v1/proxy/svc?q=1", "/?q=1"),
        (
            "/api/v1/proxy/svc/a%2Fb/c%20d?x=%20&y",
            "/a%2Fb/c%20d?x=%20&y",
        ),
        ("/api/v1/proxy/svc//double", "/double"),
        ("/api/v1/proxy/pre%25fix/v1/x?k=v", "/base/v1/x?k=v"),
        ("/api/v1/proxy/pre%25fix", "/base/"),
    ] {
        let response = gw.http(Method::GET, path, &[], Bytes::new()).await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{path}: {}",
            response.text()
        );
        assert_eq!(svc.next().await.target, upstream, "{path}");
    }
    svc.expect_no_more();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_methods_pass_through_under_the_rules_of_rows_5_and_6() {
    let gw = TestGateway::start().await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "svc-1", &svc.url(), json!({})).await;
    let response = gw
        .http(
            Method::PUT,
            "/api/v1/proxy/svc/doc",
            &[("content-type", "text/plain")],
            "hello",
        )
        .await;
    assert_eq!(response.body, "hello");
    let seen = svc.next().await;
    assert_eq!(
        (seen.method.as_str(), seen.body.as_ref()),
        ("PUT", &b"hello"[..])
    );
    assert_eq!(seen.header("content-type"), Some("text/plain"));
    assert_eq!(seen.header("content-length"), Some("5"));

    // A body is forwarded whatever the method.
    gw.http(Method::GET, "/api/v1/proxy/svc/q", &[], "with body")
        .await;
    let seen = svc.next().await;
    assert_eq!(
        (seen.method.as_str(), seen.body.as_ref()),
        ("GET", &b"with body"[..])
    );

    let response = gw
        .http(Method::HEAD, "/api/v1/proxy/svc/h", &[], Bytes::new())
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.body.is_empty());
    assert_eq!(response.headers.get("content-length").unwrap(), "2");
    assert_eq!(svc.next().await.method, Method::HEAD);

    for name in ["OPTIONS", "TRACE"] {
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        let response = gw
            .http(method, "/api/v1/proxy/svc/x", &[], Bytes::new())
            .await;
        assert_json(
            &response,
            StatusCode::BAD_REQUEST,
            json!({"errors": [format!("{name} is not a supported method! {UNSUPPORTED}")]}),
        );
    }
    for name in ["get", "PURGE"] {
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        let response = gw
            .http(method, "/api/v1/proxy/svc/x", &[], Bytes::new())
            .await;
        assert_json(
            &response,
            StatusCode::BAD_REQUEST,
            json!({"errors": [format!("{name} is not a valid method! {VALID_METHODS}")]}),
        );
    }
    svc.expect_no_more();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_ganglion_query_routes_and_the_path_sets_the_application() {
    let gw = TestGateway::start().await;
    let eu = Backend::start("svc-eu").await;
    let us = Backend::start("svc-us").await;
    let other = Backend::start("other-eu").await;
    let region = |r: &str| json!({"region": meta("string", r)});
    let _eu = register(&gw, "svc", "eu", &eu.url(), region("eu")).await;
    let _us = register(&gw, "svc", "us", &us.url(), region("us")).await;
    let _other = register(&gw, "other", "eu", &other.url(), region("eu")).await;
    let eu_query =
        r#"{"application":"other","ops":[{"path":"/region","op":"$eq","to":{"value":"eu"}}]}"#;
    for _ in 0..10 {
        let response = gw
            .http(
                Method::GET,
                "/api/v1/proxy/svc/x",
                &[("x-ganglion-query", eu_query)],
                Bytes::new(),
            )
            .await;
        assert_eq!(backend_of(&response), "svc-eu");
    }
    let cases = [
        (
            "{nope",
            StatusCode::BAD_REQUEST,
            "X-Ganglion-Query: invalid JSON",
        ),
        (
            r#"{"ops":5}"#,
            StatusCode::BAD_REQUEST,
            "ops: must be a list",
        ),
        ("[]", StatusCode::BAD_REQUEST, "query: must be an object"),
        (
            r#"{"ops":[{"path":"/region","op":"$eq","to":{"value":"ap"}}]}"#,
            StatusCode::SERVICE_UNAVAILABLE,
            "no matches",
        ),
    ];
    for (header, status, error) in cases {
        let response = gw
            .http(
                Method::GET,
                "/api/v1/proxy/svc/x",
                &[("x-ganglion-query", header)],
                Bytes::new(),
            )
            .await;
        assert_json(&response, status, json!({"errors": [error]}));
    }
}

// === header hygiene, redirects (§9.7) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_in_both_directions() {
    let gw = TestGateway::start().await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "svc-1", &svc.url(), json!({})).await;
    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy/svc/hygiene",
            &[
                ("connection", "x-drop"),
                ("x-drop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("proxy-authorization", "Basic eDp5"),
                ("te", "trailers"),
                ("trailer", "x-checksum"),
                ("x-ganglion-query", "{}"),
                ("x-forwarded-for", "10.9.9.9, 10.8.8.8"),
                ("x-forwarded-for", "10.7.7.7"),
                ("traceparent", TRACEPARENT),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-custom", "kept"),
                ("x-repeated", "1"),
                ("x-repeated", "2"),
            ],
            Bytes::new(),
        )
        .await;
    let seen = svc.next().await;
    assert_eq!(
        seen.names(),
        [
            "host",
            "traceparent",
            "tracestate",
            "x-custom",
            "x-forwarded-for",
            "x-repeated"
        ]
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("10.9.9.9, 10.8.8.8, 10.7.7.7, 127.0.0.1")
    );
    assert_child_traceparent(seen.header("traceparent"), TRACEPARENT);
    assert_eq!(seen.header("tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(seen.all("x-repeated"), ["1", "2"]);

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        sorted_names(&response.headers),
        [
            "content-length",
            "date",
            "set-cookie",
            "x-backend",
            "x-custom"
        ]
    );
    let cookies: Vec<&[u8]> = response
        .headers
        .get_all("set-cookie")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(cookies, [&b"a=1"[..], &b"b=2"[..]]);
    assert_eq!(
        response.headers.get("content-type"),
        None,
        "no Content-Type is invented"
    );
    assert_eq!(response.body, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_relayed_and_not_followed() {
    let gw = TestGateway::start().await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "svc-1", &svc.url(), json!({})).await;
    let response = gw
        .http(Method::GET, "/api/v1/proxy/svc/redirect", &[], Bytes::new())
        .await;
    assert_eq!(response.status, StatusCode::FOUND);
    assert_eq!(response.headers.get("location").unwrap(), "/elsewhere");
    let response = proxy_json(
        &gw,
        &[],
        &json!({"method": "GET", "route": "/redirect", "query": {"application": "svc"}}),
    )
    .await;
    assert_eq!(response.status, StatusCode::FOUND);
    assert_eq!(svc.next().await.target, "/redirect");
    assert_eq!(svc.next().await.target, "/redirect");
    svc.expect_no_more();
}

// === the SSRF guard (§9.7, item 65) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_local_and_metadata_targets_are_refused() {
    let gw = TestGateway::start().await;
    let not_allowed = json!({"errors": ["proxy target not allowed"]});
    let _metadata = register(&gw, "metadata", "m", "http://169.254.169.254", json!({})).await;
    let _mapped = register(
        &gw,
        "mapped",
        "m",
        "http://[::ffff:169.254.169.254]:80",
        json!({}),
    )
    .await;
    let _v6 = register(&gw, "v6", "m", "[fe80::1]:8080", json!({})).await;
    for app in ["metadata", "mapped", "v6"] {
        let started = Instant::now();
        let response = proxy_json(
            &gw,
            &[],
            &json!({"method": "GET", "route": "/latest/meta-data/", "query": {"application": app}}),
        )
        .await;
        assert_json(&response, StatusCode::FORBIDDEN, not_allowed.clone());
        let response = gw
            .http(
                Method::GET,
                &format!("/api/v1/proxy/{app}/x"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_json(&response, StatusCode::FORBIDDEN, not_allowed.clone());
        // Refused before any connection attempt, which could only time out.
        assert!(started.elapsed() < Duration::from_secs(2), "{app}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_outside_allowed_cidrs_is_refused_without_connecting() {
    let gw = TestGateway::start_with(|c| c.proxy.allowed_cidrs = vec!["10.0.0.0/8".into()]).await;
    let svc = Backend::start("svc").await;
    let port = svc.addr.port();
    let _literal = register(&gw, "literal", "l", &svc.url(), json!({})).await;
    let _named = register(
        &gw,
        "named",
        "n",
        &format!("http://localhost:{port}"),
        json!({}),
    )
    .await;
    for app in ["literal", "named"] {
        let response = gw
            .http(
                Method::GET,
                &format!("/api/v1/proxy/{app}/"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_json(
            &response,
            StatusCode::FORBIDDEN,
            json!({"errors": ["proxy target not allowed"]}),
        );
    }
    assert_eq!(svc.connections(), 0, "no connection was attempted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicitly_allowed_link_local_address_is_tried() {
    let gw = TestGateway::start_with(|c| {
        c.proxy.allowed_cidrs = vec!["169.254.77.0/24".into(), "127.0.0.0/8".into()];
        c.proxy.connect_timeout_ms = 300;
        c.proxy.total_timeout_ms = 2_000;
    })
    .await;
    let svc = Backend::start("svc").await;
    let _allowed = register(&gw, "svc", "s", &svc.url(), json!({})).await;
    let _link_local = register(&gw, "ll", "l", "http://169.254.77.1:9", json!({})).await;
    let _other = register(&gw, "other", "o", "http://169.254.78.1:9", json!({})).await;
    let response = gw
        .http(Method::GET, "/api/v1/proxy/svc/", &[], Bytes::new())
        .await;
    assert_eq!(response.status, StatusCode::OK);
    // The guard lets the connection through. What happens then depends on the network: no
    // route (502), no answer (504), or a sandbox's egress filter answering for the address.
    let response = gw
        .http(Method::GET, "/api/v1/proxy/ll/", &[], Bytes::new())
        .await;
    assert_ne!(
        response.text(),
        r#"{"errors":["proxy target not allowed"]}"#
    );
    if matches!(
        response.status,
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
    ) {
        let error = reason(&response);
        assert!(error.starts_with("upstream "), "{error}");
    }
    let response = gw
        .http(Method::GET, "/api/v1/proxy/other/", &[], Bytes::new())
        .await;
    assert_json(
        &response,
        StatusCode::FORBIDDEN,
        json!({"errors": ["proxy target not allowed"]}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_that_make_no_url_get_502_invalid_target_url() {
    let gw = TestGateway::start().await;
    let _spaces = register(&gw, "spaces", "s", "h h", json!({})).await;
    let _empty = register(&gw, "empty", "e", "http://", json!({})).await;
    for app in ["spaces", "empty"] {
        let response = proxy_json(
            &gw,
            &[],
            &json!({"method": "GET", "route": "/", "query": {"application": app}}),
        )
        .await;
        assert_json(
            &response,
            StatusCode::BAD_GATEWAY,
            json!({"errors": ["upstream unreachable: invalid target URL"]}),
        );
    }
}

// === failures and timeouts (§9.7, item 65) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_upstream_port_gets_502() {
    let gw = TestGateway::start().await;
    let addr = closed_port().await;
    let _client = register(&gw, "down", "d", &format!("http://{addr}"), json!({})).await;
    let response = proxy_json(
        &gw,
        &[],
        &json!({"method": "GET", "route": "/", "query": {"application": "down"}}),
    )
    .await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert!(
        reason(&response).starts_with("upstream unreachable: "),
        "{}",
        response.text()
    );
    let response = gw
        .http(Method::GET, "/api/v1/proxy/down/", &[], Bytes::new())
        .await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert!(reason(&response).starts_with("upstream unreachable: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_504_after_the_total_timeout() {
    let gw = TestGateway::start_with(|c| c.proxy.total_timeout_ms = 600).await;
    let silent = Silent::start().await;
    let _client = register(
        &gw,
        "hang",
        "h",
        &format!("http://{}", silent.addr),
        json!({}),
    )
    .await;
    for form in ["json", "transparent"] {
        let started = Instant::now();
        let response = if form == "json" {
            proxy_json(
                &gw,
                &[],
                &json!({"method": "GET", "route": "/", "query": {"application": "hang"}}),
            )
            .await
        } else {
            gw.http(Method::GET, "/api/v1/proxy/hang/", &[], Bytes::new())
                .await
        };
        let elapsed = started.elapsed();
        assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT, "{form}");
        assert!(
            reason(&response).starts_with("upstream timeout: "),
            "{form}"
        );
        assert!(
            elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(2_600),
            "{form}: answered after {elapsed:?}"
        );
    }
}

/// A loopback listener whose accept queue is full: the kernel drops further SYNs, so a
/// connection attempt hangs (until it is retried about a second later) — a backend that cannot
/// be reached in time, without leaving 127.0.0.0/8.
async fn unreachable_in_time() -> (
    SocketAddr,
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let listener = socket.listen(1).expect("listen with a backlog of 1");
    let addr = listener.local_addr().expect("address");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            // This attempt hung: the queue is full.
            Err(_) => return (addr, listener, fillers),
            Ok(Err(e)) => panic!("connecting to the listener: {e}"),
        }
    }
    panic!("the accept queue of a backlog-1 listener never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_does_not_complete_in_time_gets_504() {
    let gw = TestGateway::start_with(|c| {
        c.proxy.connect_timeout_ms = 300;
        c.proxy.total_timeout_ms = 10_000;
    })
    .await;
    let (addr, _listener, _fillers) = unreachable_in_time().await;
    let _client = register(&gw, "full", "f", &format!("http://{addr}"), json!({})).await;
    let started = Instant::now();
    let response = gw
        .http(Method::GET, "/api/v1/proxy/full/", &[], Bytes::new())
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        response.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        response.text()
    );
    assert!(
        reason(&response).starts_with("upstream timeout: "),
        "{}",
        response.text()
    );
    assert!(
        elapsed < Duration::from_millis(5_000),
        "the connect timeout, not the total one, answered: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_arriving_at_the_total_timeout_is_cut_off() {
    let gw = TestGateway::start_with(|c| c.proxy.total_timeout_ms = 600).await;
    let svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "s", &svc.url(), json!({})).await;
    let started = Instant::now();
    let response = send(&gw, Method::GET, "/api/v1/proxy/svc/stall", &[], empty()).await;
    assert_eq!(response.status(), StatusCode::OK, "the head was relayed");
    let body = timeout(patience(), response.into_body().collect())
        .await
        .expect("the body ends in time");
    assert!(
        body.is_err(),
        "the truncated body is an error for the caller"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_millis(2_600),
        "cut off after {elapsed:?}"
    );
}

// === streamed bodies ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mebibytes_stream_through_the_transparent_form_both_ways() {
    let gw = TestGateway::start().await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "s", &svc.url(), json!({})).await;
    let expected = generated_digest(LARGE_CHUNKS);

    let response = send(
        &gw,
        Method::POST,
        "/api/v1/proxy/svc/digest",
        &[("content-type", "application/octet-stream")],
        generated(LARGE_CHUNKS),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let answer: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(answer, expected, "the upstream received the upload intact");
    let seen = svc.next().await;
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        seen.header("content-type"),
        Some("application/octet-stream")
    );

    let response = send(
        &gw,
        Method::GET,
        &format!("/api/v1/proxy/svc/download?chunks={LARGE_CHUNKS}"),
        &[],
        empty(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut digest = Digest::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the download completes").into_data() {
            digest.update(&data);
        }
    }
    assert_eq!(
        json!({"len": digest.len, "digest": digest.finish()}),
        expected,
        "the download arrived intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_relayed_while_they_are_still_arriving() {
    let gw = TestGateway::start().await;
    let mut svc = Backend::start("svc").await;
    let _client = register(&gw, "svc", "s", &svc.url(), json!({})).await;

    // Upload: the backend sees the first chunk before the caller has sent the second.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, io::Error>(Frame::data(bytes)), rx))
    });
    let upload = {
        let body = BodyExt::boxed(StreamBody::new(stream));
        let url_path = "/api/v1/proxy/svc/progress";
        let gw_url = gw.url(url_path);
        tokio::spawn(async move {
            let client = HttpClient::builder(TokioExecutor::new()).build_http::<TestBody>();
            let request = Request::post(gw_url).body(body).expect("request");
            let response = client.request(request).await.expect("response");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        })
    };
    tx.send(chunk(0)).await.expect("first chunk");
    let first = timeout(patience(), svc.progress.recv())
        .await
        .expect("the first chunk reaches the backend before the body ends")
        .expect("progress");
    assert!(first > 0);
    tx.send(chunk(1)).await.expect("second chunk");
    drop(tx);
    let answer: Value = serde_json::from_slice(&upload.await.expect("upload")).expect("JSON");
    assert_eq!(answer["len"], 2 * CHUNK as u64);
    svc.next().await;

    // Download: the caller gets the first chunk before the backend sends the second.
    let response = send(&gw, Method::GET, "/api/v1/proxy/svc/gated", &[], empty()).await;
    let mut body = response.into_body();
    let mut received = 0;
    while received < CHUNK {
        let frame = timeout(patience(), body.frame())
            .await
            .expect("the first chunk arrives while the backend holds the rest")
            .expect("a frame")
            .expect("data");
        received += frame.into_data().map(|d| d.len()).unwrap_or(0);
    }
    svc.shared.gate.notify_one();
    let rest = body.collect().await.expect("the rest").to_bytes();
    assert_eq!(received + rest.len(), 2 * CHUNK);
}

// === IPv6 targets (§9.7 table) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_targets_are_reached_in_every_form() {
    let Some(mut svc) = Backend::start_on("v6", "[::1]:0").await else {
        eprintln!("no IPv6 loopback on this machine: skipping");
        return;
    };
    let gw = TestGateway::start_with(|c| c.listen = "[::1]:0".into()).await;
    let port = svc.addr.port();
    let _bracketed = register(&gw, "bracketed", "b", &format!("[::1]:{port}"), json!({})).await;
    let _url = register(&gw, "url", "u", &format!("HTTP://[::1]:{port}/"), json!({})).await;
    for app in ["bracketed", "url"] {
        let response = gw
            .http(
                Method::GET,
                &format!("/api/v1/proxy/{app}/x"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{app}: {}",
            response.text()
        );
        let seen = svc.next().await;
        assert_eq!(seen.target, "/x");
        assert_eq!(seen.header("x-forwarded-for"), Some("::1"), "RFC 5952 form");
        assert_eq!(seen.header("host"), Some(format!("[::1]:{port}").as_str()));
    }
    // A client without `ip` is reached at its expanded peer address, on port 80: the URL is
    // valid and the address allowed, whatever answers (or not) there.
    let _peer = gw
        .identify_with(
            Enc::Json,
            json!({"application_id": "peer", "client_id": "p"}),
        )
        .await;
    let peers = gw.query(json!({"application": "peer"})).await;
    assert_eq!(
        peers[0]["socket_ip"],
        "0000:0000:0000:0000:0000:0000:0000:0001"
    );
    let response = gw
        .http(Method::GET, "/api/v1/proxy/peer/", &[], Bytes::new())
        .await;
    assert_ne!(response.status, StatusCode::FORBIDDEN);
    if response.status == StatusCode::BAD_GATEWAY {
        assert_ne!(
            reason(&response),
            "upstream unreachable: invalid target URL"
        );
    }
}

// === TLS (§9.7) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_target_is_verified_against_the_system_trust_store() {
    // The upstream is another ganglion node serving HTTPS with a self-signed certificate for
    // `localhost`, which no system trust store holds.
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let dir = ganglion_tests::temp_dir("proxy-tls");
    std::fs::create_dir_all(&dir).expect("certificate directory");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("certificate");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("key");
    let upstream = TestGateway::start_with(|c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
    })
    .await;
    let gw = TestGateway::start().await;
    let target = format!("https://localhost:{}", upstream.addr.port());
    let _client = register(&gw, "tls", "t", &target, json!({})).await;
    let response = gw
        .http(
            Method::GET,
            "/api/v1/proxy/tls/api/version",
            &[],
            Bytes::new(),
        )
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        response.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        response.text()
    );
    let error = reason(&response);
    assert!(
        error.starts_with("upstream unreachable: ") && error.contains("certificate"),
        "{error}"
    );
}
