//! No server input panics the client or stops it from working: a TCP server that speaks the
//! raw framing (SPEC §2.2) but sends malformed, odd and oversized frames. (ganglion itself never
//! sends these; the tests against a real node are in `tests/tests/client.rs`.)

use std::net::SocketAddr;
use std::time::Duration;

use ganglion_client::{Client, Error, Query, Reconnect};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn patience() -> Duration {
    let ms = std::env::var("GANGLION_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Duration::from_millis(ms)
}

/// One accepted connection, after the preamble.
struct Peer {
    stream: TcpStream,
}

impl Peer {
    async fn send_raw(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send(&mut self, frame: Value) {
        self.send_raw(frame.to_string().as_bytes()).await;
    }

    async fn recv(&mut self) -> Value {
        let mut len = [0u8; 4];
        tokio::time::timeout(patience(), self.stream.read_exact(&mut len))
            .await
            .expect("a frame in time")
            .unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Reads the identify after sending `hello`, then answers `ready`.
    async fn handshake(&mut self, hello: Value, ready: Value) -> Value {
        self.send(hello).await;
        let identify = self.recv().await;
        assert_eq!(identify["op"], 1, "{identify}");
        self.send(ready).await;
        identify
    }
}

/// A server that hands every accepted connection to the test, preamble checked.
async fn server() -> (SocketAddr, mpsc::Receiver<Peer>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut preamble = [0u8; 6];
            if stream.read_exact(&mut preamble).await.is_err() {
                continue;
            }
            assert_eq!(preamble, [b'G', b'N', b'G', b'L', 1, 0]);
            if tx.send(Peer { stream }).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

async fn next_peer(peers: &mut mpsc::Receiver<Peer>) -> Peer {
    tokio::time::timeout(patience(), peers.recv())
        .await
        .expect("a connection in time")
        .unwrap()
}

fn quick() -> Reconnect {
    Reconnect {
        enabled: true,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_attempts: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_odd_frames_after_ready_are_skipped_and_the_connection_keeps_working() {
    let (addr, mut peers) = server().await;
    let connecting = tokio::spawn(async move {
        Client::builder(&format!("ganglion+tcp://app@{addr}"))
            .unwrap()
            .client_id("c1")
            .reconnect(quick())
            .connect()
            .await
    });
    let mut peer = next_peer(&mut peers).await;
    let identify = peer
        .handshake(
            // A heartbeat interval no timer could hold, and a ready with odd member types.
            json!({"op": 0, "d": {"heartbeat_interval": u64::MAX}, "t": null, "ts": 0}),
            json!({"op": 2, "d": {"client_id": 5, "restricted": "yes"}, "t": null, "ts": 0}),
        )
        .await;
    assert_eq!(identify["d"]["client_id"], "c1");
    let client = connecting.await.unwrap().unwrap();
    let mut messages = client.messages().unwrap();

    let mut nested = String::new();
    for _ in 0..10_000 {
        nested.push('[');
    }
    for garbage in [
        b"not json".to_vec(),
        b"\"text\"".to_vec(),
        b"[1,2]".to_vec(),
        b"{}".to_vec(),
        nested.into_bytes(),
        vec![0xff, 0xfe, 0x00],
    ] {
        peer.send_raw(&garbage).await;
    }
    for odd in [
        json!({"op": "4", "t": "SEND", "d": {"payload": 1}}),
        json!({"op": 4.0, "t": "SEND", "d": {"payload": 1}}),
        json!({"op": 4, "t": "SEND", "d": [1]}),
        json!({"op": 4, "t": 7, "d": {}}),
        json!({"op": 4, "t": null, "d": null}),
        json!({"op": 4, "t": "QUEUE", "d": {"payload": 7}}),
        json!({"op": 4, "t": "QUEUE", "d": {"payload": {"queue": ["x"], "id": {}}}}),
        json!({"op": 4, "t": "QUEUE_CONFIRM", "d": {"nonce": {"x": 1}}}),
        json!({"op": 4, "t": "QUERY_NODES", "d": {"nonce": null, "nodes": 1}}),
        json!({"op": 4, "t": "CLIENT_CONNECTED", "d": {"payload": "x"}}),
        json!({"op": 4, "t": "SEND", "d": {"nonce": {"reply": 5}, "payload": "x"}}),
        json!({"op": 3, "d": "oops"}),
        json!({"op": 3, "d": {"error": 5, "extra_info": [1]}}),
        json!({"op": 3, "d": {"error": "no_route", "extra_info": {"nonce": [], "t": 1}}}),
        json!({"op": 3, "d": {"error": "invalid metadata", "extra_info": null}}),
        json!({"op": 6, "d": null}),
        json!({"op": 1, "d": {}}),
        json!({"op": 99}),
        json!({"op": -1, "d": {"heartbeat_interval": 0}}),
    ] {
        peer.send(odd).await;
    }
    peer.send(json!({"op": 4, "t": "SEND", "d": {"target": null, "nonce": "ok", "payload": "after"}, "ts": 1}))
        .await;
    // Of all that, two are messages: a SEND whose `reply` nonce names no request of ours (so it
    // is an ordinary message), and the well-formed SEND sent last.
    let first = tokio::time::timeout(patience(), messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&first.nonce, &first.payload),
        (&json!({"reply": 5}), &json!("x"))
    );
    let second = tokio::time::timeout(patience(), messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&second.nonce, &second.payload, second.ts),
        (&json!("ok"), &json!("after"), Some(1))
    );

    // A reply of the wrong shape fails the call, not the client.
    let asking = {
        let client = client.clone();
        tokio::spawn(async move { client.query_nodes(&Query::any()).await })
    };
    let query = peer.recv().await;
    assert_eq!(query["t"], "QUERY_NODES");
    peer.send(
        json!({"op": 4, "t": "QUERY_NODES", "d": {"nonce": query["d"]["nonce"], "nodes": "many"}}),
    )
    .await;
    match asking.await.unwrap() {
        Err(Error::Protocol(reason)) => {
            assert!(reason.starts_with("QUERY_NODES reply: "), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let state = client.state();
    assert!(state.connected && state.sessions == 1, "{state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_drops_the_connection_and_the_client_dials_again() {
    let (addr, mut peers) = server().await;
    let connecting = tokio::spawn(async move {
        Client::builder(&format!("ganglion+tcp://app@{addr}"))
            .unwrap()
            .max_frame_bytes(1024)
            .reconnect(quick())
            .connect()
            .await
    });
    let hello = json!({"op": 0, "d": {"heartbeat_interval": "soon"}, "t": null, "ts": 0});
    let ready = json!({"op": 2, "d": {"client_id": "c", "restricted": false}, "t": null, "ts": 0});
    let mut first = next_peer(&mut peers).await;
    first.handshake(hello.clone(), ready.clone()).await;
    let client = connecting.await.unwrap().unwrap();
    // Announces a gigabyte: the client stops reading and drops the connection.
    first
        .stream
        .write_all(&(1u32 << 30).to_be_bytes())
        .await
        .unwrap();
    let mut second = next_peer(&mut peers).await;
    second.handshake(hello, ready).await;
    let mut changes = client.state_changes();
    let state = tokio::time::timeout(
        patience(),
        changes.wait_for(|s| s.sessions == 2 && s.connected),
    )
    .await
    .expect("the reconnect in time")
    .unwrap()
    .clone();
    assert!(
        state
            .last_disconnect
            .as_deref()
            .is_some_and(|d| d.contains("frame size too big")),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_start_with_hello_fails_the_connect() {
    let (addr, mut peers) = server().await;
    let connecting =
        tokio::spawn(async move { Client::connect(&format!("ganglion+tcp://app@{addr}")).await });
    let mut peer = next_peer(&mut peers).await;
    peer.send(json!({"op": 2, "d": {}})).await;
    match connecting.await.unwrap() {
        Err(Error::Protocol(reason)) => assert_eq!(reason, "expected hello (op 0) first, got op 2"),
        other => panic!("{other:?}"),
    }
}
