//! Scenario 3: request/reply round trips, through the client libraries on both sides.
//!
//! ganglion: a responder (`ganglion_client`, application `echo`, `role = echo`) answers every
//! request with its payload through `Client::reply`; a requester calls `Client::request` with a
//! 128 B payload (two routed SENDs per round trip: the request by query, the reply to the
//! requester's inbox metadata). NATS: an async-nats responder subscribed to `echo` publishes
//! the payload to the reply subject; the requester calls `Client::request`.
//!
//! - **closed loop**: one request outstanding at a time, for the measured time; also gives
//!   round trips per second.
//! - **open loop**: requests started at a fixed rate (10 000/s) whatever the answers do, each
//!   in a task of its own; latency is measured from the time the request was *scheduled*, so a
//!   stall delays every request behind it in the numbers too (no coordinated omission). The
//!   scheduler spins (yielding) when the next request is under 2 ms away, since tokio's timer
//!   has millisecond resolution. A failed request is recorded with the time it took to fail.
//!
//! Latencies go into HDR histograms (µs, 3 significant digits); each run gives p50, p90, p99
//! and p99.9, and the table shows the medians over runs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::StreamExt as _;
use ganglion_client::{ClientBuilder, Metadata, Query};
use hdrhistogram::Histogram;

use super::{histogram, progress, record};
use crate::Settings;
use crate::procs::Server;
use crate::report::{Row, Side, Table, Target};
use crate::wire::Ganglion;

const PAYLOAD: usize = 128;
const OPEN_RATE: f64 = 10_000.0;
const TIMEOUT: Duration = Duration::from_secs(5);
const KINDS: [Ganglion; 2] = [Ganglion::TcpMsgpack, Ganglion::WsJson];
const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)];

/// One run's outcome of one mode.
struct Latencies {
    histogram: Histogram<u64>,
    /// Round trips per second (closed loop).
    rate: f64,
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let mut table = Table::default();
    for mode in ["closed", "open"] {
        for kind in KINDS {
            for (name, _) in PERCENTILES {
                let what = match mode {
                    "closed" => format!("request/reply {name}, closed loop, {}", kind.name()),
                    _ => format!(
                        "request/reply {name}, open loop {} k/s, {}",
                        OPEN_RATE / 1000.0,
                        kind.name()
                    ),
                };
                let mut row = Row::new(3, &id(mode, kind, name), &what, "µs", false)
                    .versus("async-nats request → responder");
                if name == "p50" {
                    row = row.target(Target::RatioAtMost(1.5));
                }
                if name == "p99" {
                    row = row.target(Target::AtMost(1000.0));
                }
                table.add_row(row);
            }
            if mode == "closed" {
                table.add_row(
                    Row::new(
                        3,
                        &id(mode, kind, "rate"),
                        &format!("request/reply round trips, closed loop, {}", kind.name()),
                        "round trips/s",
                        true,
                    )
                    .versus("async-nats request → responder"),
                );
            }
        }
    }
    for run in 0..s.runs {
        let mut wanted = Vec::new();
        for kind in KINDS {
            let ids = [id("closed", kind, ""), id("open", kind, "")];
            if !ids.iter().any(|id| s.wants(id)) {
                continue;
            }
            wanted.push(kind);
            let (closed, open) = ganglion(s, kind).await.context(kind.name())?;
            record_run(&mut table, run, "closed", kind, Side::Ganglion, &closed);
            record_run(&mut table, run, "open", kind, Side::Ganglion, &open);
        }
        if !wanted.is_empty() {
            let (closed, open) = nats(s).await.context("NATS")?;
            for kind in wanted {
                record_run(&mut table, run, "closed", kind, Side::Nats, &closed);
                record_run(&mut table, run, "open", kind, Side::Nats, &open);
            }
        }
    }
    Ok(table
        .rows
        .into_iter()
        .filter(|r| !r.ganglion.is_empty())
        .collect())
}

fn id(mode: &str, kind: Ganglion, what: &str) -> String {
    format!("3.{mode}.{}.{what}", kind.name())
}

fn record_run(
    table: &mut Table,
    run: usize,
    mode: &str,
    kind: Ganglion,
    side: Side,
    latencies: &Latencies,
) {
    for (name, q) in PERCENTILES {
        let v = latencies.histogram.value_at_percentile(q) as f64;
        table.record(&id(mode, kind, name), side, v);
    }
    if mode == "closed" {
        table.record(&id(mode, kind, "rate"), side, latencies.rate);
    }
    let h = &latencies.histogram;
    let who = match side {
        Side::Ganglion => kind.name(),
        Side::Nats => "nats",
    };
    progress(
        run,
        &format!("{mode} loop {who} p50/p99/p99.9 µs"),
        h.value_at_percentile(50.0) as f64,
        &format!(
            "/ {} / {} ({} round trips)",
            h.value_at_percentile(99.0),
            h.value_at_percentile(99.9),
            h.len()
        ),
    );
}

async fn ganglion(s: &Settings, kind: Ganglion) -> anyhow::Result<(Latencies, Latencies)> {
    let mut server = Server::ganglion(s, &[])?;
    let dsn = kind.dsn(server.addr, server.tcp.context("ganglion's TCP listener")?);
    let responder = ClientBuilder::new(&dsn)?
        .application_id("echo")
        .client_id("echo-1")
        .metadata(Metadata::new().string("role", "echo"))
        .buffer(4096)
        .connect()
        .await?;
    let mut inbox = responder.messages()?;
    let answering = {
        let responder = responder.clone();
        tokio::spawn(async move {
            while let Some(message) = inbox.recv().await {
                if message.is_request() {
                    let _ = responder.reply(&message, &message.payload).await;
                }
            }
        })
    };
    let requester = ClientBuilder::new(&dsn)?
        .application_id("bench")
        .client_id("requester")
        .buffer(4096)
        .connect()
        .await?;
    let target = Arc::new(Query::application("echo").eq("role", "echo"));
    let payload = Arc::new("x".repeat(PAYLOAD));
    let once = move || {
        let (requester, target, payload) = (requester.clone(), target.clone(), payload.clone());
        async move {
            requester
                .request(&target, payload.as_str(), TIMEOUT)
                .await?;
            anyhow::Ok(())
        }
    };
    let outcome = both_loops(s, &once).await;
    answering.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), responder.close()).await;
    server.check_alive()?;
    outcome
}

async fn nats(s: &Settings) -> anyhow::Result<(Latencies, Latencies)> {
    let mut server = Server::nats(s, None)?;
    let url = format!("nats://{}", server.addr);
    let responder = async_nats::connect(&url).await?;
    let mut requests = responder.subscribe("echo").await?;
    responder.flush().await?;
    let answering = {
        let responder = responder.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                if let Some(reply) = message.reply {
                    let _ = responder.publish(reply, message.payload).await;
                }
            }
        })
    };
    let requester = async_nats::ConnectOptions::new()
        .request_timeout(Some(TIMEOUT))
        .connect(&url)
        .await?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let once = move || {
        let (requester, payload) = (requester.clone(), payload.clone());
        async move {
            requester.request("echo", payload).await?;
            anyhow::Ok(())
        }
    };
    let outcome = both_loops(s, &once).await;
    answering.abort();
    server.check_alive()?;
    outcome
}

/// The closed loop, then the open loop at [`OPEN_RATE`], over the same round trip.
async fn both_loops<F, Fut>(s: &Settings, once: &F) -> anyhow::Result<(Latencies, Latencies)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let closed = closed_loop(s, once).await?;
    let open = open_loop(s, OPEN_RATE, once).await?;
    Ok((closed, open))
}

async fn closed_loop<F, Fut>(s: &Settings, once: &F) -> anyhow::Result<Latencies>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let warm = Instant::now();
    while warm.elapsed() < s.warmup {
        once().await?;
    }
    let mut histogram = histogram();
    let start = Instant::now();
    while start.elapsed() < s.measure {
        let t = Instant::now();
        once().await?;
        record(&mut histogram, t.elapsed());
    }
    let rate = histogram.len() as f64 / start.elapsed().as_secs_f64();
    Ok(Latencies { histogram, rate })
}

async fn open_loop<F, Fut>(s: &Settings, rate: f64, once: &F) -> anyhow::Result<Latencies>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut measured = None;
    for (length, keep) in [(s.warmup, false), (s.measure, true)] {
        let histogram = Arc::new(Mutex::new(histogram()));
        let failed = Arc::new(AtomicU64::new(0));
        let total = (rate * length.as_secs_f64()).round() as u64;
        let start = Instant::now();
        let mut max_lag = Duration::ZERO;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = loop {
                let now = Instant::now();
                if now >= due {
                    break now;
                }
                if due - now > Duration::from_millis(2) {
                    tokio::time::sleep(due - now - Duration::from_millis(1)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            };
            max_lag = max_lag.max(now - due);
            let request = once();
            let (histogram, failed) = (Arc::clone(&histogram), Arc::clone(&failed));
            tasks.spawn(async move {
                let outcome = request.await;
                let latency = due.elapsed();
                if outcome.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut h) = histogram.lock() {
                    record(&mut h, latency);
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        let drained = tokio::time::timeout(TIMEOUT * 2, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            bail!("open loop: requests still unanswered long after their timeout");
        }
        let failed = failed.load(Ordering::Relaxed);
        if failed * 100 > total.max(1) {
            bail!("open loop: {failed} of {total} requests failed");
        }
        if failed > 0 {
            eprintln!("  open loop: {failed} of {total} requests failed (recorded as latencies)");
        }
        if keep {
            if max_lag > Duration::from_millis(5) {
                eprintln!(
                    "  open loop: the scheduler fell {:.1} ms behind at worst (included in the \
                     latencies)",
                    max_lag.as_secs_f64() * 1000.0
                );
            }
            let histogram = Arc::try_unwrap(histogram)
                .ok()
                .and_then(|m| m.into_inner().ok())
                .context("histogram still shared")?;
            measured = Some(Latencies {
                histogram,
                rate: total as f64 / length.as_secs_f64(),
            });
        }
    }
    measured.context("no measured phase")
}
