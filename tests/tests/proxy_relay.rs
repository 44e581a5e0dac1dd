//! The transparent proxy's relay (gateway/src/http/relay.rs, docs/proxy.md "How requests are
//! relayed"): HTTP/1.1 framing relayed exactly, one downstream connection carrying request
//! after request (pipelined too, and on to the router when a request is not the relay's),
//! pooled upstream connections replaced when the upstream has closed them, and the bodies the
//! relay leaves to hyper.
//!
//! The upstream here is scripted at the byte level, so each response's framing is exactly
//! what the test wrote; downstream, hyper's client on a single connection checks the framing
//! ganglion sends back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ganglion_tests::{Client, Enc, TestGateway, patience};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// One scripted answer: the bytes to write, and whether to close the connection after them;
/// with `stray`, those bytes are written once the test says so (`Scripted::stray`), before
/// the close.
struct Answer {
    bytes: &'static [u8],
    close: bool,
    stray: Option<&'static [u8]>,
}

fn answer(bytes: &'static [u8]) -> Answer {
    Answer {
        bytes,
        close: false,
        stray: None,
    }
}

fn answer_and_close(bytes: &'static [u8]) -> Answer {
    Answer {
        bytes,
        close: true,
        stray: None,
    }
}

/// A raw HTTP/1.1 upstream: each request it reads (head, then a `Content-Length` body) is
/// reported on `requests`, and answered with the next scripted answer, whatever connection it
/// came on. A connection it closes is reported on `closed`.
struct Scripted {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Vec<u8>>,
    closed: mpsc::UnboundedReceiver<()>,
    stray: Arc<Notify>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: Vec<Answer>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("port");
        let addr = listener.local_addr().expect("address");
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let connections = Arc::new(AtomicUsize::new(0));
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let stray = Arc::new(Notify::new());
        let counted = connections.clone();
        let go = stray.clone();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let to = (requests_tx.clone(), closed_tx.clone(), go.clone());
                open.push(tokio::spawn(answer_requests(tcp, script.clone(), to)));
            }
        });
        Scripted {
            addr,
            requests,
            closed,
            stray,
            connections,
            task,
        }
    }

    /// The next request as it arrived: head and body.
    async fn next_request(&mut self) -> Vec<u8> {
        timeout(patience(), self.requests.recv())
            .await
            .expect("a request reaches the upstream in time")
            .expect("the upstream runs")
    }

    /// The next request, as text.
    async fn next_text(&mut self) -> String {
        String::from_utf8(self.next_request().await).expect("a UTF-8 request")
    }

    /// The request line of the next request.
    async fn next_line(&mut self) -> String {
        let text = self.next_text().await;
        text.lines().next().unwrap_or_default().to_owned()
    }

    async fn closed_one(&mut self) {
        timeout(patience(), self.closed.recv())
            .await
            .expect("the upstream closes in time")
            .expect("the upstream runs");
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer_requests(
    mut tcp: TcpStream,
    script: Arc<Mutex<VecDeque<Answer>>>,
    (requests, closed, stray_go): (
        mpsc::UnboundedSender<Vec<u8>>,
        mpsc::UnboundedSender<()>,
        Arc<Notify>,
    ),
) {
    let mut read = Vec::new();
    loop {
        let Some(request) = read_request(&mut tcp, &mut read).await else {
            return;
        };
        let _ = requests.send(request);
        let Some(Answer {
            bytes,
            close,
            stray,
        }) = script.lock().unwrap().pop_front()
        else {
            return;
        };
        if tcp.write_all(bytes).await.is_err() {
            return;
        }
        if let Some(stray) = stray {
            stray_go.notified().await;
            let _ = tcp.write_all(stray).await;
        }
        if close {
            drop(tcp);
            let _ = closed.send(());
            return;
        }
    }
}

/// The next request on `tcp`: its head and its `Content-Length` body.
async fn read_request(tcp: &mut TcpStream, read: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().expect("a length"));
            let total = end + 4 + length;
            if read.len() >= total {
                return Some(read.drain(..total).collect());
            }
        }
        let mut chunk = [0u8; 64 * 1024];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => read.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Registers `upstream` as the service of application `app`.
async fn register(gw: &TestGateway, app: &str, upstream: SocketAddr) -> Client {
    gw.identify_with(
        Enc::Json,
        json!({"application_id": app, "client_id": "c", "ip": format!("http://{upstream}")}),
    )
    .await
}

/// A gateway, a scripted upstream, and the upstream registered as application `svc`.
async fn setup(script: Vec<Answer>) -> (TestGateway, Scripted, Client) {
    let gw = TestGateway::start().await;
    let upstream = Scripted::start(script).await;
    let service = register(&gw, "svc", upstream.addr).await;
    (gw, upstream, service)
}

/// One HTTP/1.1 connection to the gateway, checked strictly by hyper's client.
async fn connection(gw: &TestGateway) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

struct Got {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Result<Bytes, hyper::Error>,
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    timeout(patience(), sender.ready())
        .await
        .expect("the connection is ready in time")
        .expect("the connection is still open");
    let response = timeout(patience(), sender.send_request(request))
        .await
        .expect("a response in time")
        .expect("a response on the same connection");
    let status = response.status();
    let headers = response.headers().clone();
    let body = timeout(patience(), response.into_body().collect())
        .await
        .expect("the body in time")
        .map(|b| b.to_bytes());
    Got {
        status,
        headers,
        body,
    }
}

fn body(got: &Got) -> &[u8] {
    got.body.as_ref().expect("a complete body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_is_relayed_and_one_connection_carries_every_request() {
    let (gw, mut upstream, _service) = setup(vec![
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-N: 1\r\n\r\nhello"),
        answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        ),
        answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
        answer(b"HTTP/1.1 204 No Content\r\nX-N: 4\r\n\r\n"),
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        answer_and_close(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"),
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast"),
    ])
    .await;
    let mut sender = connection(&gw).await;

    let got = call(
        &mut sender,
        Method::GET,
        "/api/v1/proxy/svc/one?x=1",
        &[],
        "",
    )
    .await;
    assert_eq!((got.status, body(&got)), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(got.headers["x-n"], "1");
    let seen = upstream.next_text().await;
    assert!(seen.starts_with("GET /one?x=1 HTTP/1.1\r\n"), "{seen}");

    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/two", &[], "").await;
    assert_eq!(
        body(&got),
        b"hello world",
        "the chunked body, dechunked by the client"
    );
    assert_eq!(got.headers["transfer-encoding"], "chunked");
    assert!(!got.headers.contains_key("trailer"), "hop-by-hop");

    let got = call(
        &mut sender,
        Method::POST,
        "/api/v1/proxy/svc/three",
        &[],
        "{\"a\":1}",
    )
    .await;
    assert_eq!(
        (got.status, body(&got)),
        (StatusCode::CREATED, &b"ok"[..]),
        "1xx skipped"
    );
    assert_eq!(upstream.next_line().await, "GET /two HTTP/1.1");
    let seen = upstream.next_text().await;
    assert!(seen.starts_with("POST /three HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("\r\ncontent-length: 7\r\n"), "{seen}");
    assert!(
        seen.ends_with("\r\n\r\n{\"a\":1}"),
        "the body follows the head: {seen}"
    );

    let got = call(
        &mut sender,
        Method::DELETE,
        "/api/v1/proxy/svc/four",
        &[],
        "",
    )
    .await;
    assert_eq!((got.status, body(&got)), (StatusCode::NO_CONTENT, &b""[..]));
    assert_eq!(got.headers["x-n"], "4");

    let got = call(&mut sender, Method::HEAD, "/api/v1/proxy/svc/five", &[], "").await;
    assert_eq!((got.status, body(&got)), (StatusCode::OK, &b""[..]));
    assert_eq!(
        got.headers["content-length"], "1234",
        "HEAD keeps the length"
    );

    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/six", &[], "").await;
    assert_eq!(
        body(&got),
        b"until the end",
        "a close-delimited body, rechunked"
    );
    assert!(!got.headers.contains_key("connection"));
    upstream.closed_one().await;

    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/seven", &[], "").await;
    assert_eq!(
        body(&got),
        b"last",
        "the caller's connection outlives the upstream's"
    );
    assert_eq!(
        upstream.connections(),
        2,
        "one upstream connection until the upstream closed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_replaced_and_nothing_is_sent_twice() {
    let (gw, mut upstream, _service) = setup(vec![
        answer_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"),
        answer_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
        answer_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc"),
    ])
    .await;
    let mut sender = connection(&gw).await;

    // The upstream closes each connection after answering, without saying so: the pooled
    // connection is dead by the next request.
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/a", &[], "").await;
    assert_eq!(body(&got), b"a");
    upstream.closed_one().await;
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/b", &[], "").await;
    assert_eq!(body(&got), b"b", "a GET is sent again on a new connection");
    upstream.closed_one().await;
    let got = call(&mut sender, Method::POST, "/api/v1/proxy/svc/c", &[], "x").await;
    assert_eq!(
        body(&got),
        b"c",
        "a POST never goes out on the closed connection"
    );

    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(upstream.next_line().await);
    }
    assert_eq!(
        lines,
        ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "POST /c HTTP/1.1"]
    );
    assert!(
        upstream.requests.try_recv().is_err(),
        "nothing was sent twice"
    );
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (gw, mut upstream, _service) = setup(vec![
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"),
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthree"),
    ])
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(
        b"GET /api/v1/proxy/svc/1 HTTP/1.1\r\nHost: gw\r\n\r\n\
          POST /api/v1/proxy/svc/2 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc\
          GET /api/v1/proxy/svc/3 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answers = Vec::new();
    timeout(patience(), tcp.read_to_end(&mut answers))
        .await
        .expect("every answer, then the close the last request asked for")
        .expect("read");
    let answers = String::from_utf8(answers).expect("UTF-8");
    let bodies: Vec<&str> = answers
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or_default())
        .collect();
    assert_eq!(bodies, ["one", "two", "three"], "{answers}");
    assert!(answers.contains("connection: close\r\n"), "{answers}");
    let mut targets = Vec::new();
    for _ in 0..3 {
        targets.push(upstream.next_line().await);
    }
    assert_eq!(
        targets,
        ["GET /1 HTTP/1.1", "POST /2 HTTP/1.1", "GET /3 HTTP/1.1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_on_to_the_router_at_its_first_other_request() {
    let (gw, _upstream, _service) = setup(vec![
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"),
    ])
    .await;
    let mut sender = connection(&gw).await;
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/a", &[], "").await;
    assert_eq!(body(&got), b"first");
    let got = call(&mut sender, Method::GET, "/api/version", &[], "").await;
    assert_eq!(got.status, StatusCode::OK);
    let version: Value = serde_json::from_slice(body(&got)).expect("JSON");
    assert!(version.get("singyeong").is_some(), "{version}");
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/b", &[], "").await;
    assert_eq!(
        body(&got),
        b"second",
        "the router's own proxy route answers"
    );
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/nobody/b", &[], "").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_the_relay_limit_and_beyond_arrive_intact() {
    let (gw, mut upstream, _service) = setup(vec![
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ])
    .await;
    let mut sender = connection(&gw).await;
    // 64 KiB is the most the relay takes in-task; one byte more streams through hyper.
    for size in [64 * 1024, 1024 * 1024 + 1] {
        let sent: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let got = call(
            &mut sender,
            Method::PUT,
            "/api/v1/proxy/svc/up",
            &[],
            sent.clone(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        let request = upstream.next_request().await;
        let head_end = request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
        assert!(
            head.contains(&format!("\r\ncontent-length: {size}")),
            "{head}"
        );
        assert!(
            request[head_end + 4..] == sent[..],
            "{size} bytes arrive intact"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstream_answers_are_502_or_a_cut_off_body() {
    let (gw, _upstream, _service) = setup(vec![
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        answer_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"),
        answer(b"NOT HTTP AT ALL\r\n\r\n"),
    ])
    .await;

    let mut sender = connection(&gw).await;
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/a", &[], "").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let errors: Value = serde_json::from_slice(body(&got)).expect("JSON");
    assert!(
        errors["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("upstream unreachable: invalid response")),
        "{errors}"
    );

    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/b", &[], "").await;
    assert_eq!(got.status, StatusCode::OK, "the head was relayed");
    assert!(
        got.body.is_err(),
        "the body ends short, and the caller sees it"
    );

    let mut sender = connection(&gw).await;
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/c", &[], "").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_idle_relay_connections_and_completes() {
    let (gw, _upstream, _service) = setup(vec![answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(b"GET /api/v1/proxy/svc/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 1024];
    let n = timeout(patience(), tcp.read(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    assert!(
        answer[..n].ends_with(b"\r\n\r\nok"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    let drained = gw.drain_in_background();
    let mut rest = Vec::new();
    timeout(patience(), tcp.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed by the drain")
        .expect("read");
    assert!(rest.is_empty());
    timeout(patience(), drained)
        .await
        .expect("the drain completes")
        .expect("drain task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_that_received_anything_is_not_reused() {
    let (gw, mut upstream, _service) = setup(vec![
        Answer {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
            close: true,
            stray: Some(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"),
        },
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"),
    ])
    .await;
    let mut sender = connection(&gw).await;
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/a", &[], "").await;
    assert_eq!(body(&got), b"first");
    // The upstream sends a 408 nobody asked for on the idle connection, and closes it.
    upstream.stray.notify_one();
    upstream.closed_one().await;
    // Any request on another connection is read by the same event loop turn as, or a later
    // one than, the 408 and the close: after it, the gateway has seen them.
    let turned = call(&mut connection(&gw).await, Method::GET, "/healthz", &[], "").await;
    assert_eq!(turned.status, StatusCode::OK);
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/b", &[], "").await;
    assert_eq!(
        (got.status, body(&got)),
        (StatusCode::OK, &b"second"[..]),
        "the stray 408 is nobody's answer"
    );
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answered_by_ganglion_has_no_body_and_the_connection_goes_on() {
    let (gw, _upstream, _service) = setup(vec![answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let mut sender = connection(&gw).await;
    let got = call(&mut sender, Method::HEAD, "/api/v1/proxy/nobody/x", &[], "").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(&got), b"");
    assert_eq!(got.headers["content-length"], "25");
    assert!(got.headers.contains_key("date"));
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/svc/x", &[], "").await;
    assert_eq!((got.status, body(&got)), (StatusCode::OK, &b"ok"[..]));
    // No application: the router's 404, as without the relay.
    let got = call(&mut sender, Method::GET, "/api/v1/proxy/", &[], "").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_switching_queries_applications_and_routes_reaches_the_right_service() {
    let gw = TestGateway::start().await;
    let ok = |body: &'static [u8]| -> Vec<Answer> { (0..4).map(|_| answer(body)).collect() };
    let mut eu = Scripted::start(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\neu")).await;
    let mut us = Scripted::start(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nus")).await;
    let mut other = Scripted::start(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nother")).await;
    let mut services = Vec::new();
    for (app, id, upstream, region) in [
        ("svc", "eu", &eu, "eu"),
        ("svc", "us", &us, "us"),
        ("other", "o", &other, "eu"),
    ] {
        services.push(
            gw.identify_with(
                Enc::Json,
                json!({"application_id": app, "client_id": id,
                       "ip": format!("http://{}", upstream.addr),
                       "metadata": {"region": {"type": "string", "value": region}}}),
            )
            .await,
        );
    }
    let region =
        |r: &str| format!(r#"{{"ops":[{{"path":"/region","op":"$eq","to":{{"value":"{r}"}}}}]}}"#);
    let (eu_query, us_query) = (region("eu"), region("us"));
    let mut sender = connection(&gw).await;
    // The same request twice, then a different query, route or application each time: every
    // answer must come from the service the request chose.
    for (path, query, expected) in [
        ("/api/v1/proxy/svc/a", &eu_query, &b"eu"[..]),
        ("/api/v1/proxy/svc/a", &eu_query, b"eu"),
        ("/api/v1/proxy/svc/a", &us_query, b"us"),
        ("/api/v1/proxy/svc/b", &us_query, b"us"),
        ("/api/v1/proxy/other/b", &us_query, b""),
        ("/api/v1/proxy/other/b", &eu_query, b"other"),
        ("/api/v1/proxy/svc/b", &eu_query, b"eu"),
    ] {
        let got = call(
            &mut sender,
            Method::GET,
            path,
            &[("x-ganglion-query", query)],
            "",
        )
        .await;
        if expected.is_empty() {
            assert_eq!(
                got.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{path} {query}"
            );
        } else {
            assert_eq!(body(&got), expected, "{path} {query}");
        }
    }
    let line = |text: String| text.lines().next().unwrap_or_default().to_owned();
    assert_eq!(line(eu.next_text().await), "GET /a HTTP/1.1");
    assert_eq!(line(eu.next_text().await), "GET /a HTTP/1.1");
    assert_eq!(line(us.next_text().await), "GET /a HTTP/1.1");
    assert_eq!(line(us.next_text().await), "GET /b HTTP/1.1");
    assert_eq!(line(other.next_text().await), "GET /b HTTP/1.1");
    assert_eq!(line(eu.next_text().await), "GET /b HTTP/1.1");
}

/// A connection keeps what its last request resolved to (the parsed query, its match set, the
/// joined URL: `TargetCache` in gateway/src/http/proxy.rs); every change to the registry in
/// between must still reach the service the request chooses now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_follows_metadata_updates_and_departures() {
    let gw = TestGateway::start().await;
    let ok = |body: &'static [u8]| -> Vec<Answer> { (0..4).map(|_| answer(body)).collect() };
    let mut first = Scripted::start(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")).await;
    let mut second =
        Scripted::start(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")).await;
    let region = |r: &str| json!({"region": {"type": "string", "value": r}});
    let mut services = Vec::new();
    for (id, upstream, r) in [("first", &first, "eu"), ("second", &second, "us")] {
        services.push(
            gw.identify_with(
                Enc::Json,
                json!({"application_id": "svc", "client_id": id,
                       "ip": format!("http://{}", upstream.addr), "metadata": region(r)}),
            )
            .await,
        );
    }
    let eu = r#"{"ops":[{"path":"/region","op":"$eq","to":{"value":"eu"}}]}"#;
    let mut sender = connection(&gw).await;
    let mut get = async |expected: &[u8]| {
        let got = call(
            &mut sender,
            Method::GET,
            "/api/v1/proxy/svc/r",
            &[("x-ganglion-query", eu)],
            "",
        )
        .await;
        if expected.is_empty() {
            assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        } else {
            assert_eq!(body(&got), expected);
        }
    };
    get(b"first").await;
    get(b"first").await;
    // The first service leaves `eu`, the second joins it: the same request now goes there.
    services[0].update_metadata(region("ap")).await;
    get(b"").await;
    services[1].update_metadata(region("eu")).await;
    get(b"second").await;
    // The second leaves: nobody matches any more.
    services.pop().expect("two services").close().await;
    // Until the node has seen the close: one client left.
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        let left = gw.query(json!({"application": "svc"})).await;
        if left.len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed service is still registered: {left:?}"
        );
        tokio::task::yield_now().await;
    }
    get(b"").await;
    // And the first comes back to `eu`.
    services[0].update_metadata(region("eu")).await;
    get(b"first").await;
    let line = |text: String| text.lines().next().unwrap_or_default().to_owned();
    for _ in 0..3 {
        assert_eq!(line(first.next_text().await), "GET /r HTTP/1.1");
    }
    assert_eq!(line(second.next_text().await), "GET /r HTTP/1.1");
}
