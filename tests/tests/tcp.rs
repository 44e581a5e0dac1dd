//! The raw TCP transport (SPEC §2.2, §14 item 9): preamble, framing, limits and closing.

use std::time::Duration;

use ganglion_tests::tcp::{framed, preamble};
use ganglion_tests::{Enc, TcpClient, TestGateway, patience};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

async fn raw(gw: &TestGateway) -> TcpStream {
    let stream = TcpStream::connect(gw.tcp_addr.expect("TCP on"))
        .await
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads until EOF; returns everything the server sent.
async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(patience(), stream.read_to_end(&mut out))
        .await
        .expect("the server closes in time")
        .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_preamble_is_answered_with_a_framed_json_hello() {
    let gw = TestGateway::start().await;
    let mut stream = raw(&gw).await;
    stream
        .write_all(&[0x47, 0x4E, 0x47, 0x4C, 0x01, 0x00])
        .await
        .unwrap();
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes(header) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    let hello: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(hello["op"], 0);
    assert_eq!(hello["d"], json!({"heartbeat_interval": 45000}));
    assert_eq!(hello["t"], serde_json::Value::Null);
    assert!(hello["ts"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_msgpack_preamble_gets_a_msgpack_hello() {
    let gw = TestGateway::start().await;
    let (_client, hello) = TcpClient::connect(gw.tcp_addr.unwrap(), Enc::Msgpack).await;
    assert_eq!(hello["d"], json!({"heartbeat_interval": 45000}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_preamble_is_closed_without_a_byte() {
    let gw = TestGateway::start().await;
    for bad in [
        [0x47, 0x4E, 0x47, 0x58, 0x01, 0x00], // magic
        [0x47, 0x4E, 0x47, 0x4C, 0x02, 0x00], // version
        [0x47, 0x4E, 0x47, 0x4C, 0x01, 0x07], // encoding
    ] {
        let mut stream = raw(&gw).await;
        stream.write_all(&bad).await.unwrap();
        assert!(read_to_eof(&mut stream).await.is_empty(), "{bad:x?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_preamble_is_closed_silently_at_the_identify_deadline() {
    let gw = TestGateway::start_with(|c| c.gateway.identify_timeout_ms = 300).await;
    let mut stream = raw(&gw).await;
    stream.write_all(&[0x47, 0x4E]).await.unwrap();
    let started = Instant::now();
    assert!(read_to_eof(&mut stream).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identify_deadline_counts_from_accept_not_from_the_preamble() {
    let gw = TestGateway::start_with(|c| c.gateway.identify_timeout_ms = 400).await;
    let mut client = raw(&gw).await;
    let accepted = Instant::now();
    client.write_all(&preamble(Enc::Json)).await.unwrap();
    let bytes = read_to_eof(&mut client).await;
    assert!(accepted.elapsed() >= Duration::from_millis(350));
    // hello, then op 8.
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("identify deadline exceeded"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_frame_over_the_limit_gets_payload_too_large_without_its_body_being_read() {
    let gw = TestGateway::start().await;
    let (mut client, _) = TcpClient::connect(gw.tcp_addr.unwrap(), Enc::Json).await;
    // Only the header: the server must answer without waiting for 1 MiB + 1 bytes.
    client.send_bytes(&(1_048_577u32).to_be_bytes()).await;
    let d = client.expect_fatal("payload too large").await;
    assert_eq!(d["extra_info"], json!({"limit": 1048576}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_exactly_the_limit_is_accepted() {
    let gw = TestGateway::start_with(|c| c.gateway.max_frame_bytes = 4096).await;
    let mut client = TcpClient::identify_with(
        gw.tcp_addr.unwrap(),
        Enc::Json,
        json!({"application_id": "a", "client_id": "c"}),
    )
    .await;
    let mut frame = json!({"op": 5, "d": {"pad": ""}}).to_string();
    let pad = 4096 - frame.len();
    frame = json!({"op": 5, "d": {"pad": "x".repeat(pad)}}).to_string();
    assert_eq!(frame.len(), 4096);
    client.send_bytes(&framed(frame.as_bytes())).await;
    assert_eq!(client.recv().await["op"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_frame_is_undecodable() {
    let gw = TestGateway::start().await;
    let (mut client, _) = TcpClient::connect(gw.tcp_addr.unwrap(), Enc::Json).await;
    client.send_bytes(&[0, 0, 0, 0]).await;
    client.expect_fatal("decode: payload: unrecoverable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_frame_is_undecodable_and_other_clients_are_unaffected() {
    let gw = TestGateway::start().await;
    let addr = gw.tcp_addr.unwrap();
    let mut healthy = TcpClient::identify_with(
        addr,
        Enc::Msgpack,
        json!({"application_id": "a", "client_id": "ok"}),
    )
    .await;
    for (enc, body) in [
        (Enc::Json, &b"{nope"[..]),
        (Enc::Msgpack, &b"\xc1"[..]),
        (Enc::Json, b"[1,2]"),
    ] {
        let (mut bad, _) = TcpClient::connect(addr, enc).await;
        bad.send_bytes(&framed(body)).await;
        bad.expect_fatal("decode: payload: unrecoverable").await;
    }
    healthy
        .dispatch(
            "SEND",
            json!({"target": {"application": "a"}, "payload": 1}),
        )
        .await;
    assert_eq!(healthy.recv().await["d"]["payload"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_across_writes_and_packed_into_one_are_both_read() {
    let gw = TestGateway::start().await;
    let (mut client, _) = TcpClient::connect(gw.tcp_addr.unwrap(), Enc::Json).await;
    let identify = json!({"op": 1, "d": {"application_id": "a", "client_id": "c"}}).to_string();
    let bytes = framed(identify.as_bytes());
    // One byte at a time.
    for byte in &bytes {
        client.send_bytes(&[*byte]).await;
    }
    assert_eq!(client.recv().await["op"], 2);
    // Three heartbeats in one write.
    let heartbeat = framed(json!({"op": 5, "d": {}}).to_string().as_bytes());
    client.send_bytes(&heartbeat.repeat(3)).await;
    for _ in 0..3 {
        assert_eq!(client.recv().await["op"], 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_then_eof_unregisters_the_client() {
    let gw = TestGateway::start().await;
    let mut client = TcpClient::identify_with(
        gw.tcp_addr.unwrap(),
        Enc::Json,
        json!({"application_id": "trunc", "client_id": "c"}),
    )
    .await;
    assert_eq!(gw.query(json!({"application": "trunc"})).await.len(), 1);
    client.send_bytes(&[0, 0, 0, 50, b'{']).await;
    client.stream.shutdown().await.unwrap();
    let closed = client.closed().await;
    assert!(closed.frames.is_empty(), "{:?}", closed.frames);
    // Once the server closed its side, cleanup has run: the identity is free again.
    let again = TcpClient::identify_with(
        gw.tcp_addr.unwrap(),
        Enc::Json,
        json!({"application_id": "trunc", "client_id": "c"}),
    )
    .await;
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_8_is_flushed_before_the_server_closes_its_side() {
    let gw = TestGateway::start().await;
    let (mut client, _) = TcpClient::connect(gw.tcp_addr.unwrap(), Enc::Json).await;
    client.send(json!({"op": 5, "d": {}})).await;
    client
        .expect_fatal("sent payload with non-identify opcode without identifying first")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_says_goodbye_over_tcp_and_refuses_new_sessions() {
    let gw = TestGateway::start().await;
    let addr = gw.tcp_addr.unwrap();
    let mut client = TcpClient::identify_with(
        addr,
        Enc::Json,
        json!({"application_id": "a", "client_id": "c"}),
    )
    .await;
    let drained = gw.drain_in_background();
    let closed = client.closed().await;
    assert_eq!(
        closed.frames.last().unwrap()["op"],
        7,
        "{:?}",
        closed.frames
    );
    assert_eq!(
        closed.frames.last().unwrap()["d"],
        json!({"reason": "draining"})
    );
    drained.await.unwrap();
    // The listener is gone: a new connection is refused or closed without a byte.
    if let Ok(mut stream) = TcpStream::connect(addr).await {
        let _ = stream.write_all(&preamble(Enc::Json)).await;
        assert!(read_to_eof(&mut stream).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_stops_reading_is_cut_off_as_a_slow_consumer() {
    let gw = TestGateway::start_with(|c| c.gateway.outbound_buffer_bytes = 64 * 1024).await;
    let addr = gw.tcp_addr.unwrap();
    let slow = TcpClient::identify_with(
        addr,
        Enc::Json,
        json!({"application_id": "slow", "client_id": "s"}),
    )
    .await;
    let mut sender = TcpClient::identify_with(
        addr,
        Enc::Json,
        json!({"application_id": "snd", "client_id": "x"}),
    )
    .await;
    let payload = "x".repeat(32 * 1024);
    let deadline = Instant::now() + patience();
    loop {
        sender
            .dispatch(
                "BROADCAST",
                json!({"target": {"application": "slow"}, "droppable": true, "payload": payload}),
            )
            .await;
        let _ = sender.sync().await;
        if gw.query(json!({"application": "slow"})).await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow consumer was never cut off"
        );
    }
    let mut slow = slow;
    let closed = slow.closed().await;
    let last = closed.frames.last().expect("frames before the close");
    assert_eq!(last["op"], 8);
    assert_eq!(last["d"]["error"], "slow consumer");
}
