//! Running the real `ganglion` binary as a child process, and a minimal JSON websocket client
//! for it. (The in-process harness and the full protocol client live in the `tests/` crate.)

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

pub fn patience() -> Duration {
    let ms = std::env::var("GANGLION_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    Duration::from_millis(ms)
}

/// A `ganglion` process; killed when dropped.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Node {
    /// Starts `ganglion` on a free loopback port with extra arguments, and waits until it
    /// listens (it logs its address as JSON on stderr).
    pub fn start(data_dir: &Path, args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ganglion"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--set",
                "tcp.listen=127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ganglion binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(patience())
            .expect("ganglion logs its listening address");
        Node { child, addr }
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let log: Value = serde_json::from_str(line).ok()?;
    if log["fields"]["message"] != "ganglion is listening" {
        return None;
    }
    log["fields"]["http_addr"].as_str()?.parse().ok()
}

/// A JSON websocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects, identifies `app/client` and returns after ready.
    pub async fn identify(addr: SocketAddr, app: &str, client: &str) -> Client {
        let url = format!("ws://{addr}/gateway/websocket?encoding=json");
        let (ws, _) = connect_async_with_config(url, None, true)
            .await
            .expect("websocket handshake");
        let mut client_ = Client { ws };
        let hello = client_.recv().await.expect("hello");
        assert_eq!(hello["op"], 0);
        client_
            .send(&json!({"op": 1, "d": {"application_id": app, "client_id": client}}))
            .await;
        let ready = client_.recv().await.expect("ready");
        assert_eq!(ready["op"], 2, "{ready}");
        client_
    }

    pub async fn send(&mut self, frame: &Value) {
        assert!(self.try_send(frame).await, "send");
    }

    /// Sends a frame; `false` when the connection is gone (a killed node, say).
    pub async fn try_send(&mut self, frame: &Value) -> bool {
        self.ws.send(Message::text(frame.to_string())).await.is_ok()
    }

    /// The next frame, or `None` when the connection ended.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(patience(), self.ws.next())
                .await
                .expect("a frame in time");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(Message::Close(_))) => {
                    // Polling once more sends tungstenite's reply to the server's close.
                    let _ = tokio::time::timeout(patience(), self.ws.next()).await;
                    return None;
                }
                Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends an op 4; `false` when the connection is gone.
    pub async fn dispatch(&mut self, t: &str, d: Value) -> bool {
        self.try_send(&json!({"op": 4, "t": t, "d": d})).await
    }
}

/// `GET` a JSON document over plain HTTP/1.1.
pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {text}"))
}
