//! The black-box test harness: a real ganglion node on a loopback port, and protocol clients
//! that speak to it over real sockets.
//!
//! Tests only use the wire protocol and HTTP. The MessagePack side of the test client is
//! `rmp-serde` over `serde_json::Value`, an implementation independent of ganglion's own codec,
//! so a codec bug cannot hide behind a matching bug in the tests.
//!
//! Waiting is always on an event with a deadline ([`patience`]), never a sleep. To check that
//! nothing arrived, [`Client::sync`] uses the protocol's ordering: a heartbeat's ack comes after
//! every frame queued before it.

pub mod any;
pub mod assert;
pub mod nats;
pub mod otlp;
pub mod tcp;

pub use any::{AnyClient, Kind};
pub use nats::{NatsClient, NatsServer};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use tcp::TcpClient;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ganglion_gateway::{Config, Gateway};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

/// How long to wait for something that should happen. Tunable with `GANGLION_TEST_PATIENCE_MS`
/// for slow machines.
pub fn patience() -> Duration {
    let ms = std::env::var("GANGLION_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Duration::from_millis(ms)
}

/// Installs a test log subscriber once (`RUST_LOG` decides what shows).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// === TestGateway ===

/// A node running in this process on `127.0.0.1:0`, with its queue store in a directory of its
/// own that is removed when the node is dropped.
pub struct TestGateway {
    gateway: Option<Gateway>,
    pub addr: SocketAddr,
    /// The raw TCP listener (on by default in tests, on an ephemeral port).
    pub tcp_addr: Option<SocketAddr>,
    pub data_dir: std::path::PathBuf,
    /// The NATS server the bridge is connected to, when started with one.
    pub nats: Option<NatsServer>,
    /// `nats.prefix` as configured.
    pub nats_prefix: String,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(label: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ganglion-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl TestGateway {
    /// A node with the embedded defaults.
    pub async fn start() -> TestGateway {
        TestGateway::start_with(|_| {}).await
    }

    /// A node with defaults adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestGateway {
        init_logs();
        let mut config = Config {
            listen: "127.0.0.1:0".to_owned(),
            ..Config::default()
        };
        config.node.id = Some("test-node".to_owned());
        config.queue.data_dir = temp_dir("node");
        config.tcp.listen = "127.0.0.1:0".to_owned();
        adjust(&mut config);
        let data_dir = config.queue.data_dir.clone();
        let nats_prefix = config.nats.prefix.clone();
        let gateway = Gateway::start(config, &HashMap::new())
            .await
            .expect("the test node starts");
        TestGateway {
            addr: gateway.http_addr(),
            tcp_addr: gateway.tcp_addr(),
            gateway: Some(gateway),
            data_dir,
            nats: None,
            nats_prefix,
        }
    }

    /// A node with the NATS bridge on, connected to a `nats-server` of its own.
    pub async fn start_with_nats(adjust: impl FnOnce(&mut Config)) -> TestGateway {
        TestGateway::start_with_nats_server(NatsServer::start().await, adjust).await
    }

    /// A node with the NATS bridge on, connected to `server` (kept with the node).
    pub async fn start_with_nats_server(
        server: NatsServer,
        adjust: impl FnOnce(&mut Config),
    ) -> TestGateway {
        let url = server.url();
        let mut gw = TestGateway::start_with(|config| {
            config.nats.url = Some(url);
            adjust(config);
        })
        .await;
        gw.nats = Some(server);
        gw
    }

    /// The NATS server of a node started with one.
    pub fn nats_server(&self) -> &NatsServer {
        self.nats.as_ref().expect("the node was started with NATS")
    }

    /// Opens a bridge session and reads the hello.
    pub async fn connect_nats(&self, encoding: Enc) -> (NatsClient, Value) {
        NatsClient::connect(&self.nats_server().url(), &self.nats_prefix, encoding).await
    }

    /// Opens a bridge session and identifies `application_id/client_id`.
    pub async fn identify_nats(
        &self,
        encoding: Enc,
        application_id: &str,
        client_id: &str,
    ) -> NatsClient {
        NatsClient::identify_with(
            &self.nats_server().url(),
            &self.nats_prefix,
            encoding,
            json!({"application_id": application_id, "client_id": client_id}),
        )
        .await
    }

    /// Whether the bridge's NATS connection is up (`None` when the bridge is off).
    pub fn nats_connected(&self) -> Option<bool> {
        self.gateway.as_ref().and_then(Gateway::nats_connected)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/gateway/websocket{}", self.addr, query)
    }

    /// Opens a websocket with `?encoding=<encoding>` and reads the hello.
    pub async fn connect(&self, encoding: Enc) -> (Client, Value) {
        let mut client = self.connect_raw(encoding).await;
        let hello = client.recv().await;
        assert_eq!(hello["op"], 0, "the first frame is hello: {hello}");
        (client, hello)
    }

    /// Opens a websocket without reading anything.
    pub async fn connect_raw(&self, encoding: Enc) -> Client {
        let (ws, _) = connect_async_with_config(self.ws_url(encoding.query()), None, true)
            .await
            .expect("websocket handshake");
        Client { ws, encoding }
    }

    /// Connects and identifies `application_id/client_id`, returning the client after ready.
    pub async fn identify(&self, encoding: Enc, application_id: &str, client_id: &str) -> Client {
        self.identify_with(
            encoding,
            json!({"application_id": application_id, "client_id": client_id}),
        )
        .await
    }

    /// Connects and identifies with the given identify `d`, asserting an unrestricted ready.
    pub async fn identify_with(&self, encoding: Enc, d: Value) -> Client {
        let (mut client, _) = self.connect(encoding).await;
        client.send(json!({"op": 1, "d": d})).await;
        let ready = client.recv().await;
        assert_eq!(ready["op"], 2, "identify answered with ready: {ready}");
        client
    }

    /// One HTTP request; returns the status, headers and body.
    pub async fn http(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> HttpResponse {
        let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(patience(), client.request(request))
            .await
            .expect("HTTP response in time")
            .expect("HTTP response");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("HTTP body")
            .to_bytes();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// `POST /api/v1/query` with a JSON body; returns the array of client objects.
    pub async fn query(&self, query: Value) -> Vec<Value> {
        let response = self
            .http(Method::POST, "/api/v1/query", &[], query.to_string())
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        match response.json() {
            Value::Array(items) => items,
            other => panic!("query answered with a non-array: {other}"),
        }
    }

    /// Drains the node (what SIGTERM does) and waits for it.
    pub async fn drain(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.drain().await;
        }
    }

    /// Starts draining in the background; the returned handle completes when drained.
    pub fn drain_in_background(mut self) -> tokio::task::JoinHandle<()> {
        let gateway = self.gateway.take().expect("not drained yet");
        tokio::spawn(gateway.drain())
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

// === Client ===

/// The encodings the test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    Json,
    Msgpack,
}

impl Enc {
    pub const ALL: [Enc; 2] = [Enc::Json, Enc::Msgpack];

    fn query(self) -> &'static str {
        match self {
            Enc::Json => "?encoding=json",
            Enc::Msgpack => "?encoding=msgpack",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Enc::Json => "json",
            Enc::Msgpack => "msgpack",
        }
    }

    /// Encodes a frame as this encoding's websocket message.
    pub fn message(self, frame: &Value) -> Message {
        match self {
            Enc::Json => Message::text(frame.to_string()),
            Enc::Msgpack => Message::binary(rmp_serde::to_vec_named(frame).expect("msgpack")),
        }
    }
}

/// What ended a connection, seen from the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// Frames received before the close.
    pub frames: Vec<Value>,
    /// The close code, if a close frame arrived.
    pub code: Option<u16>,
}

/// A websocket protocol client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub encoding: Enc,
}

impl Client {
    /// Sends one frame in the connection's encoding.
    pub async fn send(&mut self, frame: Value) {
        let message = self.encoding.message(&frame);
        self.ws.send(message).await.expect("send");
    }

    /// Sends a raw websocket message.
    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Receives the next data message, decoded. Panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_message().await {
            Some(Message::Text(text)) => {
                assert_eq!(
                    self.encoding,
                    Enc::Json,
                    "a text frame on a msgpack connection"
                );
                serde_json::from_str(&text).expect("JSON frame")
            }
            Some(Message::Binary(bytes)) => {
                assert_eq!(
                    self.encoding,
                    Enc::Msgpack,
                    "a binary frame on a JSON connection"
                );
                rmp_serde::from_slice(&bytes).expect("msgpack frame")
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next non-ping websocket message, or `None` when the stream ended.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(patience(), self.ws.next())
                .await
                .expect("a message in time");
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads until the connection closes, collecting the frames that came before.
    pub async fn closed(&mut self) -> Closed {
        let mut frames = Vec::new();
        loop {
            match self.next_message().await {
                Some(Message::Close(frame)) => {
                    // Polling once more sends tungstenite's reply to the server's close, so
                    // the server does not wait out its close timeout.
                    let _ = tokio::time::timeout(patience(), self.ws.next()).await;
                    return Closed {
                        frames,
                        code: frame.map(|f: CloseFrame| u16::from(f.code)),
                    };
                }
                Some(Message::Text(text)) => {
                    frames.push(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Message::Binary(bytes)) => {
                    frames.push(rmp_serde::from_slice(&bytes).expect("msgpack frame"));
                }
                Some(_) => {}
                None => return Closed { frames, code: None },
            }
        }
    }

    /// Expects op 8 with `error`, then a close with `code`; returns the op 8 `d`.
    pub async fn expect_fatal(&mut self, error: &str, code: u16) -> Value {
        let closed = self.closed().await;
        let last = closed
            .frames
            .last()
            .unwrap_or_else(|| panic!("expected op 8 `{error}` before the close, got nothing"));
        assert_eq!(last["op"], 8, "expected op 8, got {last}");
        assert_eq!(last["d"]["error"], error, "op 8 error: {last}");
        assert_eq!(closed.code, Some(code), "close code after `{error}`");
        last["d"].clone()
    }

    /// Sends a heartbeat and returns every frame that arrived before its ack: proof, by the
    /// protocol's ordering, that nothing else was queued for this client.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({"op": 5, "d": {}})).await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["op"] == 6 {
                return before;
            }
            before.push(frame);
        }
    }

    /// Asserts that nothing is pending for this client.
    pub async fn expect_nothing(&mut self) {
        let pending = self.sync().await;
        assert!(pending.is_empty(), "expected nothing, got {pending:?}");
    }

    /// Sends an op 4 dispatch.
    pub async fn dispatch(&mut self, t: &str, d: Value) {
        self.send(json!({"op": 4, "t": t, "d": d})).await;
    }

    /// Sends UPDATE_METADATA and waits until it is applied (no reply means success; the sync
    /// proves it was processed).
    pub async fn update_metadata(&mut self, metadata: Value) {
        self.dispatch("UPDATE_METADATA", metadata).await;
        let replies = self.sync().await;
        assert!(replies.is_empty(), "UPDATE_METADATA refused: {replies:?}");
    }

    /// Closes the connection from the client side and waits for the server's echo.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = self.closed().await;
    }
}

/// Metadata entry shorthand: `meta("integer", 5)` → `{"type":"integer","value":5}`.
pub fn meta(ty: &str, value: impl Into<Value>) -> Value {
    json!({"type": ty, "value": value.into()})
}

/// Milliseconds since the epoch, for `ts` checks.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
