//! What the benchmarks share (each uses part of it).
#![allow(dead_code)]

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A setting from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A websocket (JSON) client of `addr`, identified as `client` of `app`.
pub async fn identify(addr: SocketAddr, app: &str, client: &str) -> Ws {
    let url = format!("ws://{addr}/gateway/websocket?encoding=json");
    let (mut ws, _) = connect_async_with_config(url, None, true)
        .await
        .expect("connect");
    ws.next().await.expect("hello").expect("hello");
    let identify = json!({"op": 1, "d": {"application_id": app, "client_id": client}});
    ws.send(Message::text(identify.to_string()))
        .await
        .expect("identify");
    ws.next().await.expect("ready").expect("ready");
    ws
}
