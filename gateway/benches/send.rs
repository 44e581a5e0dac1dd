//! 1→1 routed SEND throughput over raw TCP, against an in-process node.
//!
//! The load side is as cheap as it can be, so the numbers are about the node: the sender writes
//! one pre-encoded SEND frame over and over (pipelined, in large writes), and the receiver only
//! walks length prefixes to count frames. The sender stays at most `WINDOW` frames ahead of the
//! receiver, so the node is measured at a steady rate, not while its queues fill.
//!
//! Run: `cargo bench -p ganglion-gateway --bench send` (env `SEND_BENCH_SECS`,
//! `SEND_BENCH_RUNS`, `SEND_BENCH_ENCODING=json|msgpack`, `SEND_BENCH_PAYLOAD` bytes).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ganglion_gateway::{Config, Gateway};
use serde_json::{Value, json};
use support::env_or;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Frames the sender may be ahead of the receiver.
const WINDOW: u64 = 4096;
/// Frames per write on the sending side.
const BATCH: usize = 64;

#[derive(Clone, Copy)]
enum Enc {
    Json,
    Msgpack,
}

impl Enc {
    fn code(self) -> u8 {
        match self {
            Enc::Json => 0,
            Enc::Msgpack => 1,
        }
    }

    fn encode(self, frame: &Value) -> Vec<u8> {
        match self {
            Enc::Json => frame.to_string().into_bytes(),
            Enc::Msgpack => rmp_serde::to_vec_named(frame).expect("msgpack"),
        }
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Connects over TCP and identifies; returns the stream after ready.
async fn identify(addr: SocketAddr, enc: Enc, client: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .write_all(&[0x47, 0x4E, 0x47, 0x4C, 0x01, enc.code()])
        .await
        .expect("preamble");
    let identify = json!({"op": 1, "d": {"application_id": "bench", "client_id": client,
        "metadata": {"role": {"type": "string", "value": client}}}});
    stream
        .write_all(&framed(&enc.encode(&identify)))
        .await
        .expect("identify");
    // hello and ready
    let mut frames = 0;
    let mut buf = Vec::new();
    while frames < 2 {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed before ready");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            buf.drain(..4 + len);
            frames += 1;
        }
    }
    stream
}

async fn run(enc: Enc, payload_bytes: usize, secs: u64) -> f64 {
    let dir = std::env::temp_dir().join(format!("ganglion-send-bench-{}", std::process::id()));
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.tcp.listen = "127.0.0.1:0".into();
    config.queue.data_dir = dir.clone();
    config.queue.store = ganglion_gateway::config::StoreKind::Memory;
    let gateway = Gateway::start(config, &HashMap::new()).await.expect("node");
    let addr = gateway.tcp_addr().expect("tcp");

    let receiver = identify(addr, enc, "receiver").await;
    let mut sender = identify(addr, enc, "sender").await;
    let send = json!({"op": 4, "t": "SEND", "d": {
        "target": {"application": "bench", "ops": [{"path": "/role", "op": "$eq", "to": {"value": "receiver"}}]},
        "payload": "x".repeat(payload_bytes)}});
    let batch = framed(&enc.encode(&send)).repeat(BATCH);

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, stop) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            let mut receiver = receiver;
            let mut buf = vec![0u8; 256 * 1024];
            let mut pending = 0usize; // bytes of the current frame still to skip
            let mut header = Vec::with_capacity(4);
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = receiver.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                let mut at = 0;
                let mut frames = 0;
                while at < n {
                    if pending > 0 {
                        let skip = pending.min(n - at);
                        pending -= skip;
                        at += skip;
                        continue;
                    }
                    let take = (4 - header.len()).min(n - at);
                    header.extend_from_slice(&buf[at..at + take]);
                    at += take;
                    if header.len() == 4 {
                        pending = u32::from_be_bytes([header[0], header[1], header[2], header[3]])
                            as usize;
                        header.clear();
                        frames += 1;
                    }
                }
                received.fetch_add(frames, Ordering::Relaxed);
            }
        })
    };
    let producer = {
        let (received, stop) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while sent >= received.load(Ordering::Relaxed) + WINDOW {
                    tokio::task::yield_now().await;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                if sender.write_all(&batch).await.is_err() {
                    return;
                }
                sent += BATCH as u64;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (r0, t0) = (received.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let rate = (received.load(Ordering::Relaxed) - r0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    producer.abort();
    counter.abort();
    gateway.drain().await;
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// Sends exactly `count` messages and waits until they all arrived (for callgrind: the total
/// instruction count divided by `count` is the cost of one message, scheduling included).
async fn run_count(enc: Enc, payload_bytes: usize, count: u64) {
    let dir = std::env::temp_dir().join(format!("ganglion-send-count-{}", std::process::id()));
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.tcp.listen = "127.0.0.1:0".into();
    config.queue.data_dir = dir.clone();
    config.queue.store = ganglion_gateway::config::StoreKind::Memory;
    let gateway = Gateway::start(config, &HashMap::new()).await.expect("node");
    let addr = gateway.tcp_addr().expect("tcp");
    let mut receiver = identify(addr, enc, "receiver").await;
    let mut sender = identify(addr, enc, "sender").await;
    let send = json!({"op": 4, "t": "SEND", "d": {
        "target": {"application": "bench", "ops": [{"path": "/role", "op": "$eq", "to": {"value": "receiver"}}]},
        "payload": "x".repeat(payload_bytes)}});
    let frame = framed(&enc.encode(&send));
    let frame_len = frame.len();
    let batch = frame.repeat(BATCH);
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < count {
            sender.write_all(&batch).await.expect("write");
            sent += BATCH as u64;
        }
        sender
    });
    // Every delivery has the same length, so counting bytes counts frames.
    let delivery_len = {
        let mut header = [0u8; 4];
        receiver.read_exact(&mut header).await.expect("read");
        4 + u32::from_be_bytes(header) as usize
    };
    let mut remaining = delivery_len as u64 * count.div_ceil(BATCH as u64) * BATCH as u64 - 4;
    let mut buf = vec![0u8; 256 * 1024];
    while remaining > 0 {
        let n = receiver.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early");
        remaining = remaining.saturating_sub(n as u64);
    }
    let _ = (writer.await, frame_len);
    gateway.drain().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if let Some(count) = std::env::var("SEND_BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run_count(Enc::Msgpack, 128, count));
        return;
    }
    let secs = env_or("SEND_BENCH_SECS", 5);
    let runs = env_or("SEND_BENCH_RUNS", 5) as usize;
    let payload = env_or("SEND_BENCH_PAYLOAD", 128) as usize;
    let enc = match std::env::var("SEND_BENCH_ENCODING").as_deref() {
        Ok("json") => Enc::Json,
        _ => Enc::Msgpack,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| runtime.block_on(run(enc, payload, secs)))
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    let name = match enc {
        Enc::Json => "json",
        Enc::Msgpack => "msgpack",
    };
    println!(
        "tcp-{name} 1→1 SEND, {payload} B payload: median {:.0} msg/s over {runs} runs (min {:.0}, max {:.0})",
        rates[runs / 2],
        rates[0],
        rates[runs - 1]
    );
}
