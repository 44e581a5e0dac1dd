//! What tracing costs: SEND round trips over real websockets through an in-process node, with
//! span export off and on (to an in-process OTLP/gRPC receiver on loopback).
//!
//! Each of `PAIRS` pairs runs a loop: client `a<i>` SENDs to `b<i>` with a fresh `traceparent`
//! and keeps `WINDOW` messages in flight; `b<i>` SENDs every delivery straight back to `a<i>`,
//! continuing the `trace` it received. `a<i>` measures the round trip (two dispatches).
//!
//! Scenarios:
//! 1. **baseline**: export off, frames without `trace`;
//! 2. **off**: export off, traced frames (propagation only: parse, child id, `trace` written);
//! 3. **always_on**: every dispatch span exported;
//! 4. **ratio 10%**: `traceidratio` 0.1 — every dispatch still opens a span, one in ten is
//!    recorded and exported.
//!
//! The subscriber and tracer provider are process-wide, so every run is a child process of this
//! binary (`TRACING_BENCH_CHILD`); scenarios are interleaved run by run, and medians of `RUNS`
//! runs are printed as a markdown table. Run: `cargo bench -p ganglion-gateway --bench tracing`
//! (env `TRACING_BENCH_SECS`, `TRACING_BENCH_RUNS`).

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ganglion_gateway::config::{OtlpProtocol, SamplerKind};
use ganglion_gateway::{Config, Gateway, telemetry};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use parking_lot::Mutex;
use support::{Ws, env_or, identify};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// The same allocator as the `ganglion` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAIRS: usize = 8;
const WINDOW: usize = 16;
const SCENARIOS: [&str; 4] = ["baseline", "off", "always_on", "ratio_10"];

// === the OTLP receiver ===

/// Counts the spans it is sent.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_receiver() -> (String, Counter) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let counter = Counter::default();
    let service = TraceServiceServer::new(counter.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (format!("http://{addr}"), counter)
}

// === the load ===

/// The number after `"key":` in a JSON text; substring scanning keeps the load generator cheap
/// next to the node it measures.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The `traceparent` a frame carries.
fn traceparent_of(text: &str) -> Option<&str> {
    let key = "\"traceparent\":\"";
    let start = text.find(key)? + key.len();
    text.get(start..start + 55)
}

fn send_frame(to: &str, sent_us: u64, traceparent: Option<&str>) -> String {
    match traceparent {
        Some(tp) => format!(
            r#"{{"op":4,"t":"SEND","d":{{"target":{{"application":"{to}"}},"payload":{{"sent_us":{sent_us}}}}},"trace":{{"traceparent":"{tp}"}}}}"#
        ),
        None => format!(
            r#"{{"op":4,"t":"SEND","d":{{"target":{{"application":"{to}"}},"payload":{{"sent_us":{sent_us}}}}}}}"#
        ),
    }
}

/// `b<i>`: sends every delivery back to `a<i>`, continuing its trace.
async fn echo(mut ws: Ws, to: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_millis(100), ws.next()).await
        else {
            continue;
        };
        let Some(sent_us) = number_after(&text, "\"sent_us\":") else {
            continue;
        };
        let reply = send_frame(&to, sent_us, traceparent_of(&text));
        if ws.send(Message::text(reply)).await.is_err() {
            return;
        }
    }
}

/// `a<i>`: keeps `WINDOW` round trips in flight and records each one's duration (µs).
async fn originate(
    ws: Ws,
    to: String,
    traced: bool,
    start: Instant,
    stop: Arc<AtomicBool>,
    rtts: Arc<Mutex<Vec<u64>>>,
) {
    let (mut sink, mut stream) = ws.split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let reader = {
        let window = window.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = &message
                    && let Some(sent_us) = number_after(text, "\"sent_us\":")
                {
                    let now_us = start.elapsed().as_micros() as u64;
                    rtts.lock().push(now_us.saturating_sub(sent_us));
                    window.add_permits(1);
                }
            }
        })
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(permit)) =
            tokio::time::timeout(Duration::from_millis(100), window.acquire()).await
        else {
            continue;
        };
        permit.forget();
        let sent_us = start.elapsed().as_micros() as u64;
        let traceparent = traced.then(|| {
            format!(
                "00-{:032x}-{:016x}-01",
                fastrand::u128(1..),
                fastrand::u64(1..)
            )
        });
        let frame = send_frame(&to, sent_us, traceparent.as_deref());
        if sink.send(Message::text(frame)).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
    reader.abort();
}

/// One run's result.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    /// Round trips per second.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    spans_exported: u64,
    dispatches: u64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// One run of one scenario in this (child) process: round trips per second, p50 and p99 in
/// ms, spans exported, dispatches made.
async fn run(scenario: &str, secs: u64) -> RunResult {
    let (endpoint, exported) = start_receiver().await;
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.tcp.listen = String::new();
    config.queue.store = ganglion_gateway::config::StoreKind::Memory;
    config.log.level = "warn".into();
    match scenario {
        "always_on" => {
            config.tracing.otlp_endpoint = Some(endpoint);
            config.tracing.otlp_protocol = OtlpProtocol::Grpc;
            config.tracing.sampler = SamplerKind::AlwaysOn;
        }
        "ratio_10" => {
            config.tracing.otlp_endpoint = Some(endpoint);
            config.tracing.otlp_protocol = OtlpProtocol::Grpc;
            config.tracing.sampler = SamplerKind::TraceIdRatio;
            config.tracing.sampler_arg = Some(0.1);
        }
        _ => {}
    }
    let telemetry = telemetry::init(&config).expect("telemetry");
    let gateway = Gateway::start(config, &HashMap::new())
        .await
        .expect("node starts");
    let addr = gateway.http_addr();
    let traced = scenario != "baseline";
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let rtts = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..PAIRS {
        let a = identify(addr, &format!("a{i}"), "a").await;
        let b = identify(addr, &format!("b{i}"), "b").await;
        tasks.push(tokio::spawn(echo(b, format!("a{i}"), stop.clone())));
        tasks.push(tokio::spawn(originate(
            a,
            format!("b{i}"),
            traced,
            start,
            stop.clone(),
            rtts.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (r0, t0) = (rtts.lock().len(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let mut window: Vec<u64> = rtts.lock()[r0..].to_vec();
    let rate = window.len() as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let dispatches = rtts.lock().len() as u64 * 2;
    gateway.drain().await;
    telemetry.shutdown().await;
    window.sort_unstable();
    RunResult {
        rate,
        p50_ms: percentile(&window, 0.50),
        p99_ms: percentile(&window, 0.99),
        spans_exported: exported.0.load(Ordering::Relaxed),
        dispatches,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Runs one scenario in a child process and parses its result line.
fn child(scenario: &str, secs: u64) -> RunResult {
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let output = Command::new(exe)
        .env("TRACING_BENCH_CHILD", scenario)
        .env("TRACING_BENCH_SECS", secs.to_string())
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "{scenario}: no result\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    RunResult {
        rate: f[0],
        p50_ms: f[1],
        p99_ms: f[2],
        spans_exported: f[3] as u64,
        dispatches: f[4] as u64,
    }
}

fn main() {
    let secs = env_or("TRACING_BENCH_SECS", 5);
    if let Ok(scenario) = std::env::var("TRACING_BENCH_CHILD") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let r = runtime.block_on(run(&scenario, secs));
        println!(
            "RESULT {} {} {} {} {}",
            r.rate, r.p50_ms, r.p99_ms, r.spans_exported, r.dispatches
        );
        return;
    }
    let runs = env_or("TRACING_BENCH_RUNS", 5) as usize;
    let mut results: HashMap<&str, Vec<RunResult>> = HashMap::new();
    for run in 0..runs {
        for scenario in SCENARIOS {
            let result = child(scenario, secs);
            eprintln!("run {run} {scenario}: {result:?}");
            results.entry(scenario).or_default().push(result);
        }
    }
    println!(
        "Medians of {runs} runs of {secs} s each: {PAIRS} pairs × {WINDOW} round trips in \
         flight, each round trip two SEND dispatches. \"vs export off\" is the median of each \
         run's ratio to the export-off run next to it, which cancels slow drifts in the \
         machine's load.\n"
    );
    println!(
        "| scenario | round trips/s | vs export off | p50 ms | p99 ms | spans exported per dispatch |"
    );
    println!("|---|---|---|---|---|---|");
    let off = &results["off"];
    for scenario in SCENARIOS {
        let r = &results[scenario];
        let rate = median(r.iter().map(|x| x.rate).collect());
        let ratio = median(r.iter().zip(off).map(|(x, o)| x.rate / o.rate).collect());
        let exported = median(
            r.iter()
                .map(|x| x.spans_exported as f64 / x.dispatches.max(1) as f64)
                .collect(),
        );
        println!(
            "| {scenario} | {rate:.0} | {ratio:.2} | {:.2} | {:.2} | {exported:.3} |",
            median(r.iter().map(|x| x.p50_ms).collect()),
            median(r.iter().map(|x| x.p99_ms).collect()),
        );
    }
}
