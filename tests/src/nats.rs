//! The NATS bridge from a client's side (SPEC §2.3), and a real `nats-server` for each test.
//!
//! [`NatsServer`] runs the `nats-server` binary on a free loopback port with a configuration
//! file in a directory of its own; it is killed when dropped. A missing binary fails the test
//! with instructions: these tests never skip silently.
//!
//! [`NatsClient`] is a bridge session: a NATS connection of its own, an inbox subscription, the
//! connect request, then frames published to `<prefix>.session.<id>`. A session has no close
//! event; its end is the final frame (op 7 or op 8) followed by the session subject losing its
//! listener, which a request to it proves with NATS's "no responders" answer.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, HeaderMap, Message, Request, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

use crate::{Closed, Enc, patience, temp_dir};

/// How to get the server when it is missing.
const INSTALL_HINT: &str = "the NATS bridge tests run against a real nats-server, which was \
    not found. Install it with `sudo apt-get install -y nats-server` (Debian/Ubuntu; .ci/run \
    does this), or download a release from https://github.com/nats-io/nats-server/releases \
    and put it on PATH or name it in NATS_SERVER_BIN";

/// The `nats-server` binary: `NATS_SERVER_BIN`, else on `PATH`, else where Debian installs it.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NATS_SERVER_BIN={} is not a file; {INSTALL_HINT}",
            bin.display()
        );
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

// === NatsServer ===

/// A `nats-server` on `127.0.0.1`, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// The monitoring endpoint (`/subsz`, `/connz`).
    pub monitor_port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// A server with the defaults.
    pub async fn start() -> NatsServer {
        NatsServer::start_with_config("").await
    }

    /// A server with extra configuration lines, e.g. `max_payload: 4096`.
    pub async fn start_with_config(extra: &str) -> NatsServer {
        let dir = temp_dir("nats");
        let mut last_error = String::new();
        // A free port found by binding can be taken before the server binds it: try again.
        for _ in 0..5 {
            // Again on every attempt: a failed attempt's drop removed the directory.
            std::fs::create_dir_all(&dir).expect("NATS server directory");
            let (port, monitor_port) = (free_port(), free_port());
            std::fs::write(
                dir.join("nats.conf"),
                format!(
                    "host: 127.0.0.1\nport: {port}\nhttp: \"127.0.0.1:{monitor_port}\"\n{extra}\n"
                ),
            )
            .expect("NATS server configuration");
            let mut server = NatsServer {
                child: None,
                port,
                monitor_port,
                dir: dir.clone(),
            };
            match server.run().await {
                Ok(()) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("nats-server did not start: {last_error}");
    }

    /// Starts the process on `self.port` and waits for "Server is ready" in its log.
    async fn run(&mut self) -> Result<(), String> {
        let mut child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nats-server ({e}); {INSTALL_HINT}"));
        let stderr = child.stderr.take().expect("nats-server stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut log = String::new();
        let ready = timeout(patience(), async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.push_str(&line);
                log.push('\n');
                if line.contains("Server is ready") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let _ = child.kill().await;
            return Err(log);
        }
        // Keep reading, so the server never blocks on a full pipe; its log shows with
        // RUST_LOG=debug.
        let port = self.port;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(port, "nats-server: {line}");
            }
        });
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port, as an operator's restart would.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
        self.run()
            .await
            .unwrap_or_else(|log| panic!("nats-server did not restart on {}: {log}", self.port));
    }

    /// A plain NATS connection to this server (an injector, a listener).
    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    /// How many subscriptions the server holds right now, from its monitoring endpoint.
    pub async fn subscriptions(&self) -> u64 {
        let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = hyper::Request::get(format!("http://127.0.0.1:{}/subsz", self.monitor_port))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = timeout(patience(), client.request(request))
            .await
            .expect("the monitoring endpoint answers in time")
            .expect("the monitoring endpoint answers");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("monitoring body")
            .to_bytes();
        let subsz: Value = serde_json::from_slice(&body).expect("subsz is JSON");
        subsz["num_subscriptions"]
            .as_u64()
            .unwrap_or_else(|| panic!("subsz has num_subscriptions: {subsz}"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A NATS connection that keeps reconnecting, as services do.
pub async fn connect(url: &str) -> Client {
    timeout(
        patience(),
        async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(url),
    )
    .await
    .expect("NATS connect in time")
    .expect("NATS connect")
}

// === NatsClient ===

/// Encodes a frame in a session's encoding.
pub fn encode(encoding: Enc, frame: &Value) -> Bytes {
    match encoding {
        Enc::Json => Bytes::from(frame.to_string()),
        Enc::Msgpack => Bytes::from(rmp_serde::to_vec_named(frame).expect("msgpack")),
    }
}

/// Decodes a frame in a session's encoding.
pub fn decode(encoding: Enc, bytes: &[u8]) -> Value {
    match encoding {
        Enc::Json => serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("JSON frame ({e}): {}", String::from_utf8_lossy(bytes))),
        Enc::Msgpack => rmp_serde::from_slice(bytes).expect("msgpack frame"),
    }
}

/// Sends a request and returns the reply, failing the test on a timeout or no responders.
pub async fn request(nats: &Client, subject: String, body: Bytes) -> Message {
    timeout(patience(), nats.request(subject.clone(), body))
        .await
        .unwrap_or_else(|_| panic!("a reply on {subject} in time"))
        .unwrap_or_else(|e| panic!("a reply on {subject}: {e}"))
}

/// A bridge session.
pub struct NatsClient {
    pub nats: Client,
    inbox: Subscriber,
    /// The subject frames for this client are published to.
    pub inbox_subject: String,
    /// The session id from hello.
    pub session: String,
    /// `<prefix>.session.<id>`: where this client publishes its frames.
    pub subject: String,
    pub encoding: Enc,
}

impl NatsClient {
    /// Connects to NATS, opens a session and returns it with the hello.
    pub async fn connect(url: &str, prefix: &str, encoding: Enc) -> (NatsClient, Value) {
        NatsClient::open(connect(url).await, prefix, encoding).await
    }

    /// Opens a session over an existing NATS connection.
    pub async fn open(nats: Client, prefix: &str, encoding: Enc) -> (NatsClient, Value) {
        let inbox_subject = nats.new_inbox();
        // Subscribed before the request on the same connection, so the server has the
        // subscription before the bridge publishes anything to it.
        let inbox = nats
            .subscribe(inbox_subject.clone())
            .await
            .expect("subscribe to the inbox");
        let body = json!({"inbox": inbox_subject, "encoding": encoding.name()});
        let reply = request(&nats, format!("{prefix}.connect"), body.to_string().into()).await;
        let hello = decode(encoding, &reply.payload);
        assert_eq!(
            hello["op"], 0,
            "the connect request is answered with hello: {hello}"
        );
        let session = hello["d"]["session"]
            .as_str()
            .unwrap_or_else(|| panic!("hello carries the session: {hello}"))
            .to_owned();
        let client = NatsClient {
            nats,
            inbox,
            inbox_subject,
            subject: format!("{prefix}.session.{session}"),
            session,
            encoding,
        };
        (client, hello)
    }

    /// Connects and identifies with `d`, returning after ready.
    pub async fn identify_with(url: &str, prefix: &str, encoding: Enc, d: Value) -> NatsClient {
        let (mut client, _) = NatsClient::connect(url, prefix, encoding).await;
        client.send(json!({"op": 1, "d": d})).await;
        let ready = client.recv().await;
        assert_eq!(ready["op"], 2, "identify answered with ready: {ready}");
        client
    }

    /// Publishes one frame in the session's encoding.
    pub async fn send(&mut self, frame: Value) {
        let bytes = encode(self.encoding, &frame);
        self.send_bytes(bytes).await;
    }

    /// Publishes raw bytes to the session subject (garbage, an empty close message).
    pub async fn send_bytes(&self, bytes: Bytes) {
        self.nats
            .publish(self.subject.clone(), bytes)
            .await
            .expect("publish to the session subject");
    }

    /// The next message on the inbox, raw.
    pub async fn next_message(&mut self) -> Message {
        timeout(patience(), self.inbox.next())
            .await
            .expect("a frame on the inbox in time")
            .expect("the inbox subscription is open")
    }

    /// The next frame on the inbox, decoded.
    pub async fn recv(&mut self) -> Value {
        let message = self.next_message().await;
        decode(self.encoding, &message.payload)
    }

    /// The next frame, if one arrives within `within` (for retrying across a NATS outage,
    /// where messages may be lost).
    pub async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        match timeout(within, self.inbox.next()).await {
            Ok(Some(message)) => Some(decode(self.encoding, &message.payload)),
            Ok(None) => panic!("the inbox subscription ended"),
            Err(_) => None,
        }
    }

    /// Every frame queued before a heartbeat's ack (see `Client::sync`).
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

    pub async fn expect_nothing(&mut self) {
        let pending = self.sync().await;
        assert!(pending.is_empty(), "expected nothing, got {pending:?}");
    }

    pub async fn dispatch(&mut self, t: &str, d: Value) {
        self.send(json!({"op": 4, "t": t, "d": d})).await;
    }

    /// Reads frames up to and including the final one (op 7 or op 8), then waits until the
    /// bridge no longer listens on the session subject.
    pub async fn closed(&mut self) -> Closed {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let last = frame["op"] == 7 || frame["op"] == 8;
            frames.push(frame);
            if last {
                break;
            }
        }
        self.wait_unsubscribed().await;
        Closed { frames, code: None }
    }

    /// Expects op 8 with `error` as the final frame, and the session subject abandoned;
    /// returns its `d`.
    pub async fn expect_fatal(&mut self, error: &str) -> Value {
        let closed = self.closed().await;
        let last = closed.frames.last().expect("a final frame");
        assert_eq!(last["op"], 8, "expected op 8 `{error}`, got {last}");
        assert_eq!(last["d"]["error"], error, "op 8 error: {last}");
        last["d"].clone()
    }

    /// Waits until nobody listens on the session subject: a request to it is answered by the
    /// NATS server with "no responders". The bridge unsubscribes right after publishing the
    /// final frame, so the first attempts can race the unsubscribe; a request that is still
    /// delivered to the closing session is dropped by it and times out.
    pub async fn wait_unsubscribed(&self) {
        let deadline = Instant::now() + patience();
        let probe = encode(self.encoding, &json!({"op": 5, "d": {}}));
        loop {
            let request = Request::new()
                .payload(probe.clone())
                .timeout(Some(Duration::from_millis(200)));
            match self.nats.send_request(self.subject.clone(), request).await {
                Err(e) if e.kind() == RequestErrorKind::NoResponders => return,
                Err(e) if e.kind() == RequestErrorKind::TimedOut => {}
                Err(e) => panic!("probing {}: {e}", self.subject),
                Ok(reply) => panic!("the session subject answered a request: {reply:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "the bridge still listens on {} after the session ended",
                self.subject
            );
        }
    }

    /// Closes the session from the client side (an empty message) and waits until the bridge
    /// stops listening.
    pub async fn close(self) {
        self.send_bytes(Bytes::new()).await;
        self.wait_unsubscribed().await;
    }
}

// === injection ===

/// Publishes `body` to `<prefix>.dispatch` as a request and returns the one JSON reply.
pub async fn inject(nats: &Client, prefix: &str, body: Bytes) -> Value {
    let reply = request(nats, format!("{prefix}.dispatch"), body).await;
    serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "the injection answer is JSON ({e}): {}",
            String::from_utf8_lossy(&reply.payload)
        )
    })
}

/// [`inject`] with NATS headers.
pub async fn inject_with_headers(
    nats: &Client,
    prefix: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Value {
    let subject = format!("{prefix}.dispatch");
    let reply = timeout(
        patience(),
        nats.request_with_headers(subject.clone(), headers, body),
    )
    .await
    .expect("an injection answer in time")
    .expect("an injection answer");
    serde_json::from_slice(&reply.payload).expect("the injection answer is JSON")
}
