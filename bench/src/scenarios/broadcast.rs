//! Scenario 5: one broadcast to 10 000 websocket clients — how long until every one has it.
//!
//! ganglion: 10 000 raw websocket (JSON) clients identify as application `b5`; a sender (also a
//! websocket client) sends one pre-encoded BROADCAST (128 B payload) to `application = b5`.
//! NATS: 10 000 raw subscribers on one subject and one publisher. Every client's read loop
//! timestamps each frame as it reads it (one monotonic clock for all, since they all live in
//! this process); a broadcast's time is from just before the sender's write to the last
//! client's timestamp. Broadcasts are repeated (20 per run, 50 ms apart, after one unmeasured)
//! and a run's value is their median; the table shows the median over runs.
//!
//! The clients' reads are done one after another on the load's single core, so the figure
//! includes the load's own time to read 10 000 sockets (on both servers alike).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{CONNECT_PATIENCE, connect_many, progress};
use crate::Settings;
use crate::procs::Server;
use crate::report::{Row, Side, Table, Target, median};
use crate::wire::{self, Counter, Ganglion, RawGanglion};

const PAYLOAD: usize = 128;
const PARALLEL: usize = 128;

fn clients(s: &Settings) -> usize {
    if s.quick { 1_000 } else { 10_000 }
}

fn repeats(s: &Settings) -> usize {
    if s.quick { 3 } else { 20 }
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let n = clients(s);
    let all = format!("5.ws-json.{n}.all");
    let half = format!("5.ws-json.{n}.half");
    let mut table = Table::default();
    table.add_row(
        Row::new(
            5,
            &all,
            &format!("broadcast to {n} websocket (JSON) clients: until the last has it"),
            "ms",
            false,
        )
        .versus(&format!("publish to {n} subscribers"))
        .target(Target::AtMost(100.0))
        .note(
            "median of 20 broadcasts per run; includes the load's own time to read every \
             socket one after another on its single core (both servers alike)",
        ),
    );
    table.add_row(
        Row::new(
            5,
            &half,
            &format!("broadcast to {n} websocket (JSON) clients: until half have it"),
            "ms",
            false,
        )
        .versus(&format!("publish to {n} subscribers")),
    );
    if !s.wants(&all) && !s.wants(&half) {
        return Ok(Vec::new());
    }
    for run in 0..s.runs {
        let (last, mid) = tokio::time::timeout(CONNECT_PATIENCE * 2, ganglion(s, n))
            .await
            .context("ganglion: timed out")??;
        progress(run, &all, last, "ms");
        table.record(&all, Side::Ganglion, last);
        table.record(&half, Side::Ganglion, mid);
        let (last, mid) = tokio::time::timeout(CONNECT_PATIENCE * 2, nats(s, n))
            .await
            .context("NATS: timed out")??;
        progress(run, "nats broadcast", last, "ms");
        table.record(&all, Side::Nats, last);
        table.record(&half, Side::Nats, mid);
    }
    Ok(table.rows)
}

async fn ganglion(s: &Settings, n: usize) -> anyhow::Result<(f64, f64)> {
    let kind = Ganglion::WsJson;
    let mut server = Server::ganglion(s, &["gateway.heartbeat_interval_ms=600000"])?;
    let (http, tcp) = (server.addr, server.tcp.context("ganglion's TCP listener")?);
    let receivers = connect_many(n, PARALLEL, |i| async move {
        let mut conn = RawGanglion::identified(
            kind,
            http,
            tcp,
            "b5",
            &format!("rx-{i}"),
            json!({"n": {"type": "integer", "value": i}}),
        )
        .await?;
        conn.take_pending();
        Ok(conn.stream)
    })
    .await?;
    let mut tx = RawGanglion::identified(kind, http, tcp, "b5-tx", "tx", json!({})).await?;
    tx.take_pending();
    let unit = kind.frame(&json!({"op": 4, "t": "BROADCAST", "d": {
        "target": {"application": "b5"}, "payload": "x".repeat(PAYLOAD)}}));
    let outcome = measure(s, tx.stream, unit, receivers, || kind.counter()).await;
    server.check_alive()?;
    outcome
}

async fn nats(s: &Settings, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut server = Server::nats(s, None)?;
    let addr = server.addr;
    let receivers = connect_many(n, PARALLEL, |i| async move {
        let mut stream = wire::nats_connect(addr).await?;
        wire::nats_subscribe(&mut stream, "b5", i as u64 + 1).await?;
        Ok(stream)
    })
    .await?;
    let tx = wire::nats_connect(addr).await?;
    let unit = wire::nats_pub("b5", &[b'x'; PAYLOAD]);
    let outcome = measure(s, tx, unit, receivers, Counter::nats).await;
    server.check_alive()?;
    outcome
}

/// Median over the repeated broadcasts of (time until the last receiver, until the median
/// receiver), in ms.
async fn measure(
    s: &Settings,
    mut sender: TcpStream,
    unit: Vec<u8>,
    receivers: Vec<TcpStream>,
    counter: impl Fn() -> Counter,
) -> anyhow::Result<(f64, f64)> {
    let n = receivers.len();
    let epoch = Instant::now();
    let stamps: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::with_capacity(n);
    for (i, mut stream) in receivers.into_iter().enumerate() {
        let mut counter = counter();
        let (stamps, received, done, target) = (
            Arc::clone(&stamps),
            Arc::clone(&received),
            Arc::clone(&done),
            Arc::clone(&target),
        );
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(len) = stream.read(&mut buf).await {
                if len == 0 {
                    return;
                }
                let at = epoch.elapsed().as_nanos() as u64;
                let frames = counter.feed(&buf[..len]);
                if frames > 0 {
                    stamps[i].store(at, Ordering::Relaxed);
                    let total = received.fetch_add(frames, Ordering::Relaxed) + frames;
                    if total >= target.load(Ordering::Relaxed) {
                        done.notify_one();
                    }
                }
                if counter.pings > 0 {
                    counter.pings = 0;
                    let _ = stream.write_all(b"PONG\r\n").await;
                }
            }
        }));
    }
    let mut lasts = Vec::new();
    let mut mids = Vec::new();
    let outcome = async {
        for k in 0..=repeats(s) {
            let expected = (k as u64 + 1) * n as u64;
            target.store(expected, Ordering::Relaxed);
            let sent = epoch.elapsed().as_nanos() as u64;
            sender.write_all(&unit).await?;
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                while received.load(Ordering::Relaxed) < expected {
                    done.notified().await;
                }
            })
            .await;
            if waited.is_err() {
                bail!(
                    "broadcast {k}: only {} of {n} clients received it within 10 s",
                    received.load(Ordering::Relaxed) - (expected - n as u64)
                );
            }
            let mut times: Vec<f64> = stamps
                .iter()
                .map(|t| t.load(Ordering::Relaxed).saturating_sub(sent) as f64 / 1e6)
                .collect();
            times.sort_by(f64::total_cmp);
            if k > 0 {
                lasts.push(times[n - 1]);
                mids.push(times[n / 2]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if received.load(Ordering::Relaxed) != expected {
                bail!("more frames arrived than were broadcast");
            }
        }
        anyhow::Ok(())
    }
    .await;
    for task in tasks {
        task.abort();
    }
    outcome?;
    Ok((
        median(&lasts).context("no broadcasts")?,
        median(&mids).context("no broadcasts")?,
    ))
}
