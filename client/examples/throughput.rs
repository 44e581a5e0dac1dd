//! The client's overhead: how many messages per second one sending client pushes through a
//! node to one receiving client.
//!
//! ```sh
//! cargo build --release -p ganglion-gateway -p ganglion-client --example throughput
//! target/release/ganglion --listen 127.0.0.1:4000 --set tcp.listen=127.0.0.1:4001 &
//! target/release/examples/throughput singyeong://127.0.0.1:4000?encoding=msgpack \
//!     ganglion+tcp://127.0.0.1:4001?encoding=msgpack
//! ```
//!
//! Each DSN is measured `RUNS` times (default 3) with `MESSAGES` messages (default 200000) of
//! `SIZE` bytes (default 128); the median is reported. The sender keeps at most `WINDOW`
//! messages (default 2048) in flight, i.e. sent but not yet received, so the node never
//! cuts the receiver as a slow consumer: the number is sustainable throughput, not a burst.
//!
//! `raw+tcp://HOST:PORT?encoding=msgpack` measures the same exchange with a minimal
//! hand-written TCP client instead (frames encoded once, received frames counted, not
//! decoded): the ceiling the node allows, against which the library's overhead shows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ganglion_client::{ClientBuilder, Dsn, Metadata, Query};
use serde_json::Value;
use tokio::sync::Notify;

/// The allocator the gateway uses too: glibc's contends between the threads of a busy tokio
/// runtime.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> ganglion_client::Result<()> {
    let dsns: Vec<String> = std::env::args().skip(1).collect();
    let messages = env("MESSAGES", 200_000);
    let size = env("SIZE", 128) as usize;
    let runs = env("RUNS", 3);
    let window = env("WINDOW", 2048);
    println!("| DSN | msg/s (median of {runs}) | runs |");
    println!("|---|---|---|");
    for dsn in &dsns {
        let mut rates = Vec::new();
        for run in 0..runs {
            rates.push(measure(dsn, run, messages, size, window).await?);
        }
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!("| `{dsn}` | {median:.0} | {} |", all.join(", "));
    }
    Ok(())
}

async fn measure(
    dsn: &str,
    run: u64,
    messages: u64,
    size: usize,
    window: u64,
) -> ganglion_client::Result<f64> {
    if let Some(rest) = dsn.strip_prefix("raw+tcp://") {
        return Ok(raw::measure(rest, run, messages, size, window).await);
    }
    let dsn = Dsn::parse(dsn)?;
    let id = format!("rx-{run}-{}", fastrand::u32(..));
    let receiver = ClientBuilder::from_dsn(dsn.clone())
        .application_id("bench")
        .client_id(&id)
        .metadata(Metadata::new().string("role", "rx"))
        .buffer(4096)
        .connect()
        .await?;
    let sender = ClientBuilder::from_dsn(dsn)
        .application_id("bench-tx")
        .buffer(4096)
        .connect()
        .await?;
    let mut inbox = receiver.messages()?;
    let received = Arc::new(AtomicU64::new(0));
    let room = Arc::new(Notify::new());
    let counter = {
        let (received, room) = (Arc::clone(&received), Arc::clone(&room));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while received.load(Ordering::Relaxed) < messages {
                batch.clear();
                let n = inbox.recv_many(&mut batch, 256).await;
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
                room.notify_one();
            }
        })
    };
    let target = Query::application("bench").eq("role", "rx");
    let payload = Value::String("x".repeat(size));
    let started = Instant::now();
    for sent in 0..messages {
        while sent - received.load(Ordering::Relaxed) >= window {
            room.notified().await;
        }
        sender.send(&target, &payload).await?;
    }
    let _ = counter.await;
    let elapsed = started.elapsed();
    sender.close().await?;
    receiver.close().await?;
    Ok(received.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// The baseline: the same exchange over raw TCP (MessagePack) with nothing but framing.
mod raw {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::Notify;

    fn frame(value: &Value) -> Vec<u8> {
        let body = rmp_serde::to_vec_named(value).expect("msgpack");
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// Reads one frame body.
    async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.expect("a frame");
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).await.expect("a frame body");
        body
    }

    async fn identify(addr: &str, app: &str, id: &str, metadata: Value) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(&[b'G', b'N', b'G', b'L', 1, 1])
            .await
            .unwrap();
        read_frame(&mut stream).await; // hello
        let identify =
            json!({"op": 1, "d": {"application_id": app, "client_id": id, "metadata": metadata}});
        stream.write_all(&frame(&identify)).await.unwrap();
        read_frame(&mut stream).await; // ready
        stream
    }

    pub async fn measure(rest: &str, run: u64, messages: u64, size: usize, window: u64) -> f64 {
        let addr = rest.split('?').next().unwrap_or(rest);
        let id = format!("raw-rx-{run}-{}", fastrand::u32(..));
        let mut rx = identify(
            addr,
            "bench",
            &id,
            json!({"role": {"type": "string", "value": "raw-rx"}}),
        )
        .await;
        let mut tx = identify(
            addr,
            "bench-tx",
            &format!("raw-tx-{run}-{}", fastrand::u32(..)),
            json!({}),
        )
        .await;
        let received = Arc::new(AtomicU64::new(0));
        let room = Arc::new(Notify::new());
        let counter = {
            let (received, room) = (Arc::clone(&received), Arc::clone(&room));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let (mut filled, mut start) = (0usize, 0usize);
                while received.load(Ordering::Relaxed) < messages {
                    let n = rx.read(&mut buf[filled..]).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    filled += n;
                    let mut frames = 0;
                    while filled - start >= 4 {
                        let len =
                            u32::from_be_bytes(buf[start..start + 4].try_into().unwrap()) as usize;
                        if filled - start < 4 + len {
                            break;
                        }
                        start += 4 + len;
                        frames += 1;
                    }
                    buf.copy_within(start..filled, 0);
                    filled -= start;
                    start = 0;
                    received.fetch_add(frames, Ordering::Relaxed);
                    room.notify_one();
                }
            })
        };
        let send = frame(&json!({"op": 4, "t": "SEND", "d": {
            "target": {"application": "bench", "ops": [{"path": "/role", "op": "$eq", "to": {"value": "raw-rx"}}]},
            "payload": "x".repeat(size),
        }}));
        let started = Instant::now();
        let mut sent = 0u64;
        let mut batch = Vec::with_capacity(64 * send.len());
        while sent < messages {
            while sent - received.load(Ordering::Relaxed) >= window {
                room.notified().await;
            }
            let room_left = window - (sent - received.load(Ordering::Relaxed));
            let n = room_left.min(64).min(messages - sent);
            batch.clear();
            for _ in 0..n {
                batch.extend_from_slice(&send);
            }
            tx.write_all(&batch).await.expect("write");
            sent += n;
        }
        let _ = counter.await;
        received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    }
}
