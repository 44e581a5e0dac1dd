//! Durable queue throughput and latency, measured over real websockets against a node with the
//! redb store (every confirm follows an fsync'd group commit).
//!
//! 1. **publish**: producers pipeline QUEUE frames (a window of unconfirmed frames each) and
//!    nobody consumes: confirmed messages per second.
//! 2. **drain**: consumers request, receive and ack from the queue scenario 1 filled: consumed
//!    messages per second.
//! 3. **latency**: one producer publishes at a fixed rate well below capacity while consumers
//!    keep up: end-to-end latency from the producer's send to the consumer's receipt (it
//!    includes the durable commit).
//!
//! Each scenario runs `RUNS` times; medians are printed as a markdown table.
//! Run: `cargo bench -p ganglion-gateway --bench queue` (env `QUEUE_BENCH_SECS`,
//! `QUEUE_BENCH_RUNS`, `QUEUE_BENCH_RATE`, and `QUEUE_BENCH_STORE=memory` to measure without
//! the durable store for comparison).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ganglion_gateway::{Config, Gateway};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{env_or, identify};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// The same allocator as the `ganglion` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PRODUCERS: usize = 8;
const CONSUMERS: usize = 8;
const WINDOW: usize = 256;

fn frame(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// Publishes with a window of unconfirmed frames until `stop`; counts confirms.
/// With `rate`, sends that many messages per second instead of as fast as the window allows.
async fn produce(
    addr: SocketAddr,
    index: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    confirmed: Arc<AtomicU64>,
    rate: Option<u64>,
) {
    let ws = identify(addr, "producers", &format!("p{index}")).await;
    let (mut sink, mut stream) = ws.split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let reader = {
        let window = window.clone();
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                // A substring test keeps the load generator cheap next to the node it measures.
                let is_confirm =
                    matches!(&message, Message::Text(t) if t.contains("\"QUEUE_CONFIRM\""));
                if is_confirm {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                    window.add_permits(1);
                }
            }
        })
    };
    let mut ticks = rate.map(|r| tokio::time::interval(Duration::from_micros(1_000_000 / r)));
    while !stop.load(Ordering::Relaxed) {
        if let Some(ticks) = &mut ticks {
            ticks.tick().await;
        }
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        let sent_us = start.elapsed().as_micros() as u64;
        let queue = format!(
            r#"{{"op":4,"t":"QUEUE","d":{{"queue":"bench","target":{{"application":"consumers"}},"payload":{{"sent_us":{sent_us},"body":"0123456789abcdef0123456789abcdef"}}}}}}"#
        );
        if sink.send(Message::text(queue)).await.is_err() {
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

async fn start_node(label: &str) -> (Gateway, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "ganglion-queue-bench-{}-{label}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.queue.data_dir = dir.clone();
    if std::env::var("QUEUE_BENCH_STORE").as_deref() == Ok("memory") {
        config.queue.store = ganglion_gateway::config::StoreKind::Memory;
    }
    let gateway = Gateway::start(config, &HashMap::new())
        .await
        .expect("node starts");
    (gateway, dir)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// One run of scenarios 1 and 2: (confirmed/s while publishing, consumed/s while draining).
async fn publish_then_drain(secs: u64) -> (f64, f64) {
    let (gateway, dir) = start_node("throughput").await;
    let addr = gateway.http_addr();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|i| {
            tokio::spawn(produce(
                addr,
                i,
                start,
                stop.clone(),
                confirmed.clone(),
                None,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, t0) = (confirmed.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let publish = (confirmed.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in producers {
        let _ = task.await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|i| tokio::spawn(consume(addr, i, start, stop.clone(), latencies.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (d0, t0) = (latencies.lock().len(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let drain = (latencies.lock().len() - d0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in consumers {
        let _ = task.await;
    }
    gateway.drain().await;
    let _ = std::fs::remove_dir_all(&dir);
    (publish, drain)
}

/// One run of scenario 3: (p50, p99) end-to-end latency in ms at `rate` messages per second.
async fn latency(secs: u64, rate: u64) -> (f64, f64) {
    let (gateway, dir) = start_node("latency").await;
    let addr = gateway.http_addr();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(consume(addr, i, start, stop.clone(), latencies.clone())))
        .collect();
    let confirmed = Arc::new(AtomicU64::new(0));
    tasks.push(tokio::spawn(produce(
        addr,
        0,
        start,
        stop.clone(),
        confirmed,
        Some(rate),
    )));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let l0 = latencies.lock().len();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let mut window: Vec<u64> = latencies.lock()[l0..].to_vec();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    gateway.drain().await;
    let _ = std::fs::remove_dir_all(&dir);
    window.sort_unstable();
    (percentile(&window, 0.50), percentile(&window, 0.99))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let secs = env_or("QUEUE_BENCH_SECS", 5);
    let runs = env_or("QUEUE_BENCH_RUNS", 5) as usize;
    let rate = env_or("QUEUE_BENCH_RATE", 2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let throughput: Vec<(f64, f64)> = (0..runs)
        .map(|_| runtime.block_on(publish_then_drain(secs)))
        .collect();
    let latency: Vec<(f64, f64)> = (0..runs)
        .map(|_| runtime.block_on(latency(secs, rate)))
        .collect();
    println!(
        "Medians of {runs} runs of {secs} s each (durable redb store, fsync per group commit).\n"
    );
    println!("| scenario | result |");
    println!("|---|---|");
    println!(
        "| publish: {PRODUCERS} producers × {WINDOW} unconfirmed | {:.0} confirmed msg/s |",
        median(throughput.iter().map(|t| t.0).collect())
    );
    println!(
        "| drain: {CONSUMERS} consumers, request → ack | {:.0} consumed msg/s |",
        median(throughput.iter().map(|t| t.1).collect())
    );
    println!(
        "| latency at {rate} msg/s, 4 consumers | p50 {:.2} ms, p99 {:.2} ms |",
        median(latency.iter().map(|l| l.0).collect()),
        median(latency.iter().map(|l| l.1).collect())
    );
}
