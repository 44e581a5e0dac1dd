//! Durable queue throughput and latency, measured over real websockets against a node with the
//! redb store (every confirm follows an fsync'd group commit).
//!
//! 1. **publish**: producers pipeline QUEUE frames (a window of unconfirmed frames each) and
//!    nobody consumes: confirmed messages per second.
//! 2. **publish + consume**: producers publish at full speed while consumers request, receive
//!    and ack: confirmed and consumed messages per second, and the end-to-end latency from the
//!    producer's send to the consumer's receipt.
//!
//! Each scenario runs `RUNS` times; medians are printed as a markdown table.
//! Run: `cargo bench -p ganglion-gateway --bench queue` (env `QUEUE_BENCH_SECS`, `QUEUE_BENCH_RUNS`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ganglion_gateway::{Config, Gateway};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const PRODUCERS: usize = 8;
const CONSUMERS: usize = 8;
const WINDOW: usize = 256;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn identify(addr: SocketAddr, app: &str, client: &str) -> Ws {
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

fn frame(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// Publishes with a window of unconfirmed frames until `stop`; counts confirms.
async fn produce(
    addr: SocketAddr,
    index: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    confirmed: Arc<AtomicU64>,
) {
    let ws = identify(addr, "producers", &format!("p{index}")).await;
    let (mut sink, mut stream) = ws.split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let reader = {
        let window = window.clone();
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if frame(&message).is_some_and(|f| f["t"] == "QUEUE_CONFIRM") {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                    window.add_permits(1);
                }
            }
        })
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        let sent_us = start.elapsed().as_micros() as u64;
        let queue = json!({"op": 4, "t": "QUEUE", "d": {
            "queue": "bench", "target": {"application": "consumers"},
            "payload": {"sent_us": sent_us, "body": "0123456789abcdef0123456789abcdef"}}});
        if sink.send(Message::text(queue.to_string())).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
    reader.abort();
}

/// Requests, receives and acks until `stop`; records end-to-end latencies.
async fn consume(
    addr: SocketAddr,
    index: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    latencies: Arc<Mutex<Vec<u64>>>,
) {
    let mut ws = identify(addr, "consumers", &format!("c{index}")).await;
    let request = json!({"op": 4, "t": "QUEUE_REQUEST", "d": {"queue": "bench"}}).to_string();
    if ws.send(Message::text(request.clone())).await.is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(100), ws.next()).await
        else {
            continue;
        };
        let Some(delivery) = frame(&message).filter(|f| f["t"] == "QUEUE") else {
            continue;
        };
        let now_us = start.elapsed().as_micros() as u64;
        let sent_us = delivery["d"]["payload"]["payload"]["sent_us"]
            .as_u64()
            .unwrap_or(now_us);
        latencies.lock().push(now_us.saturating_sub(sent_us));
        let ack = json!({"op": 4, "t": "QUEUE_ACK", "d": {"queue": "bench", "id": delivery["d"]["payload"]["id"]}});
        // Ack and ask for the next one in a single write.
        let _ = ws.feed(Message::text(ack.to_string())).await;
        let _ = ws.feed(Message::text(request.clone())).await;
        if ws.flush().await.is_err() {
            return;
        }
    }
}

struct Outcome {
    confirmed_per_sec: f64,
    consumed_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(consumers: usize, secs: u64) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "ganglion-queue-bench-{}-{consumers}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.queue.data_dir = dir.clone();
    let gateway = Gateway::start(config, &HashMap::new())
        .await
        .expect("node starts");
    let addr = gateway.http_addr();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..consumers {
        tasks.push(tokio::spawn(consume(
            addr,
            i,
            start,
            stop.clone(),
            latencies.clone(),
        )));
    }
    for i in 0..PRODUCERS {
        tasks.push(tokio::spawn(produce(
            addr,
            i,
            start,
            stop.clone(),
            confirmed.clone(),
        )));
    }
    // Warm up, then measure a window of steady state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, l0, t0) = (
        confirmed.load(Ordering::Relaxed),
        latencies.lock().len(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let c1 = confirmed.load(Ordering::Relaxed);
    let mut window: Vec<u64> = latencies.lock()[l0..].to_vec();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    gateway.drain().await;
    let _ = std::fs::remove_dir_all(&dir);
    window.sort_unstable();
    let pct = |p: f64| {
        if window.is_empty() {
            0.0
        } else {
            window[((window.len() - 1) as f64 * p) as usize] as f64 / 1000.0
        }
    };
    Outcome {
        confirmed_per_sec: (c1 - c0) as f64 / elapsed,
        consumed_per_sec: window.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let secs = env_or("QUEUE_BENCH_SECS", 5);
    let runs = env_or("QUEUE_BENCH_RUNS", 5) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("| scenario | confirmed msg/s | consumed msg/s | e2e p50 ms | e2e p99 ms |");
    println!("|---|---|---|---|---|");
    for (name, consumers) in [("publish only", 0), ("publish + consume", CONSUMERS)] {
        let outcomes: Vec<Outcome> = (0..runs)
            .map(|_| runtime.block_on(run(consumers, secs)))
            .collect();
        let m = |f: fn(&Outcome) -> f64| median(outcomes.iter().map(f).collect());
        println!(
            "| {name} ({PRODUCERS} producers × window {WINDOW}, {consumers} consumers) | {:.0} | {:.0} | {:.2} | {:.2} |",
            m(|o| o.confirmed_per_sec),
            m(|o| o.consumed_per_sec),
            m(|o| o.p50_ms),
            m(|o| o.p99_ms),
        );
    }
}
