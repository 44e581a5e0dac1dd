//! Scenario 1: 1→1 routed SEND throughput.
//!
//! **raw** rows: one sender, one receiver, the load as cheap as it can be so that the server is
//! what is measured — the sender writes one pre-encoded frame (a SEND whose target is a
//! metadata query, `application = bench and role == rx`) over and over in batches of 64, the
//! receiver walks frame headers and counts. NATS gets the same treatment: pre-encoded `PUB`
//! lines, a subscriber counting `MSG`s. Both stay at most a window of messages ahead of the
//! receiver (about 512 KiB, at most 4096), so what is measured is the sustained rate, not a
//! burst into queues.
//!
//! **lib** rows: the same exchange through the client libraries, `ganglion_client` and
//! async-nats, to show what a real client pays on top.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use ganglion_client::{ClientBuilder, Metadata, Query};
use serde_json::json;
use tokio::sync::Notify;

use super::{Receiver, blast, progress};
use crate::Settings;
use crate::procs::Server;
use crate::report::{Row, Side, Table, Target};
use crate::wire::{self, Counter, Ganglion, RawGanglion};

const SIZES: [usize; 3] = [16, 128, 1024];
const LIB_SIZE: usize = 128;

fn window(size: usize) -> u64 {
    ((512 << 10) / (size as u64 + 200)).clamp(64, 4096)
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let mut table = Table::default();
    for size in SIZES {
        for kind in Ganglion::ALL {
            let mut row = Row::new(
                1,
                &raw_id(kind, size),
                &format!("1→1 SEND {size} B, {}, raw load", kind.name()),
                "msg/s",
                true,
            )
            .versus(&format!("1 pub → 1 sub, {size} B, raw load"));
            if size == 128 && kind == Ganglion::TcpMsgpack {
                row = row.target(Target::RatioAtLeast(0.5));
            }
            if size == 128 && kind == Ganglion::WsJson {
                row = row.target(Target::RatioAtLeast(0.3));
            }
            table.add_row(row);
        }
    }
    for kind in Ganglion::ALL {
        table.add_row(
            Row::new(
                1,
                &lib_id(kind),
                &format!(
                    "1→1 SEND {LIB_SIZE} B, {}, ganglion_client on both ends",
                    kind.name()
                ),
                "msg/s",
                true,
            )
            .versus(&format!(
                "1 pub → 1 sub, {LIB_SIZE} B, async-nats on both ends"
            )),
        );
    }
    for run in 0..s.runs {
        for size in SIZES {
            for kind in Ganglion::ALL {
                let id = raw_id(kind, size);
                if s.wants(&id) {
                    let rate = raw_ganglion(s, kind, size).await.context(id.clone())?;
                    progress(run, &id, rate, "msg/s");
                    table.record(&id, Side::Ganglion, rate);
                }
            }
            let ids: Vec<String> = Ganglion::ALL
                .iter()
                .map(|k| raw_id(*k, size))
                .filter(|id| s.wants(id))
                .collect();
            if !ids.is_empty() {
                let rate = raw_nats(s, size).await.context("NATS raw")?;
                progress(run, &format!("nats raw {size}"), rate, "msg/s");
                for id in &ids {
                    table.record(id, Side::Nats, rate);
                }
            }
        }
        let mut lib_ids = Vec::new();
        for kind in Ganglion::ALL {
            let id = lib_id(kind);
            if s.wants(&id) {
                let rate = lib_ganglion(s, kind).await.context(id.clone())?;
                progress(run, &id, rate, "msg/s");
                table.record(&id, Side::Ganglion, rate);
                lib_ids.push(id);
            }
        }
        if !lib_ids.is_empty() {
            let rate = lib_nats(s).await.context("async-nats")?;
            progress(run, "async-nats", rate, "msg/s");
            for id in &lib_ids {
                table.record(id, Side::Nats, rate);
            }
        }
    }
    Ok(table
        .rows
        .into_iter()
        .filter(|r| !r.ganglion.is_empty())
        .collect())
}

fn raw_id(kind: Ganglion, size: usize) -> String {
    format!("1.raw.{}-{size}", kind.name())
}

fn lib_id(kind: Ganglion) -> String {
    format!("1.lib.{}-{LIB_SIZE}", kind.name())
}

/// The SEND the raw sender repeats: routed by a metadata query.
pub fn send_frame(kind: Ganglion, size: usize) -> Vec<u8> {
    kind.frame(&json!({"op": 4, "t": "SEND", "d": {
        "target": {"application": "bench",
                   "ops": [{"path": "/role", "op": "$eq", "to": {"value": "rx"}}]},
        "payload": "x".repeat(size)}}))
}

async fn raw_ganglion(s: &Settings, kind: Ganglion, size: usize) -> anyhow::Result<f64> {
    let mut server = Server::ganglion(s, &[])?;
    let (http, tcp) = (server.addr, server.tcp.context("ganglion's TCP listener")?);
    let mut rx = RawGanglion::identified(
        kind,
        http,
        tcp,
        "bench",
        "rx",
        json!({"role": {"type": "string", "value": "rx"}}),
    )
    .await?;
    let tx = RawGanglion::identified(kind, http, tcp, "bench-tx", "tx", json!({})).await?;
    let receiver = Receiver {
        pending: rx.take_pending(),
        stream: rx.stream,
        counter: kind.counter(),
    };
    let rate = blast(
        s,
        tx.stream,
        kind.counter(),
        send_frame(kind, size),
        vec![receiver],
        window(size),
        |first| kind.is_dispatch(first),
    )
    .await;
    server.check_alive()?;
    rate
}

async fn raw_nats(s: &Settings, size: usize) -> anyhow::Result<f64> {
    let mut server = Server::nats(s, None)?;
    let mut rx = wire::nats_connect(server.addr).await?;
    wire::nats_subscribe(&mut rx, "bench", 1).await?;
    let tx = wire::nats_connect(server.addr).await?;
    let receiver = Receiver {
        stream: rx,
        counter: Counter::nats(),
        pending: Vec::new(),
    };
    let rate = blast(
        s,
        tx,
        Counter::nats(),
        wire::nats_pub("bench", &vec![b'x'; size]),
        vec![receiver],
        window(size),
        |first| first.starts_with(b"xxxx"),
    )
    .await;
    server.check_alive()?;
    rate
}

/// Received per second over the measured time, while `count` grows.
pub async fn sample(s: &Settings, count: &AtomicU64) -> f64 {
    tokio::time::sleep(s.warmup).await;
    let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(s.measure).await;
    let (c1, t1) = (count.load(Ordering::Relaxed), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// How far a library sender may run ahead of its receiver: at most `size` messages beyond what
/// was received, so the lib rows measure a sustained rate, not a burst into queues.
struct LibWindow {
    received: AtomicU64,
    /// Notified as messages arrive, and when the run is over.
    room: Notify,
    stop: AtomicBool,
    size: u64,
}

impl LibWindow {
    fn new(size: u64) -> Arc<LibWindow> {
        Arc::new(LibWindow {
            received: AtomicU64::new(0),
            room: Notify::new(),
            stop: AtomicBool::new(false),
            size,
        })
    }

    fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        self.room.notify_one();
    }

    /// Waits until message number `sent` may go; `false` once the run is over.
    async fn admit(&self, sent: u64) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            if sent - self.received.load(Ordering::Relaxed) < self.size {
                return true;
            }
            self.room.notified().await;
        }
    }

    fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.room.notify_one();
    }
}

async fn lib_ganglion(s: &Settings, kind: Ganglion) -> anyhow::Result<f64> {
    let mut server = Server::ganglion(s, &[])?;
    let dsn = kind.dsn(server.addr, server.tcp.context("ganglion's TCP listener")?);
    let rx = ClientBuilder::new(&dsn)?
        .application_id("bench")
        .client_id("rx")
        .metadata(Metadata::new().string("role", "rx"))
        .buffer(4096)
        .connect()
        .await?;
    let tx = ClientBuilder::new(&dsn)?
        .application_id("bench-tx")
        .client_id("tx")
        .buffer(4096)
        .connect()
        .await?;
    let mut inbox = rx.messages()?;
    let window = LibWindow::new(window(LIB_SIZE));
    let receiving = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            loop {
                batch.clear();
                let n = inbox.recv_many(&mut batch, 256).await;
                if n == 0 {
                    return;
                }
                window.received(n as u64);
            }
        })
    };
    let sending = {
        let (window, tx) = (Arc::clone(&window), tx.clone());
        tokio::spawn(async move {
            let target = Query::application("bench").eq("role", "rx");
            let payload = "x".repeat(LIB_SIZE);
            let mut sent = 0u64;
            while window.admit(sent).await {
                tx.send(&target, &payload).await?;
                sent += 1;
            }
            anyhow::Ok(())
        })
    };
    let rate = sample(s, &window.received).await;
    window.finish();
    sending.abort();
    receiving.abort();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = tx.close().await;
        let _ = rx.close().await;
    })
    .await;
    server.check_alive()?;
    anyhow::ensure!(rate > 0.0, "nothing was received");
    Ok(rate)
}

async fn lib_nats(s: &Settings) -> anyhow::Result<f64> {
    let mut server = Server::nats(s, None)?;
    let url = format!("nats://{}", server.addr);
    let rx = async_nats::connect(&url).await?;
    let mut subscription = rx.subscribe("bench").await?;
    rx.flush().await?;
    let tx = async_nats::connect(&url).await?;
    let window = LibWindow::new(window(LIB_SIZE));
    let receiving = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            while subscription.next().await.is_some() {
                window.received(1);
            }
        })
    };
    let sending = {
        let (window, tx) = (Arc::clone(&window), tx.clone());
        tokio::spawn(async move {
            let payload = Bytes::from(vec![b'x'; LIB_SIZE]);
            let mut sent = 0u64;
            while window.admit(sent).await {
                tx.publish("bench", payload.clone()).await?;
                sent += 1;
            }
            anyhow::Ok(())
        })
    };
    let rate = sample(s, &window.received).await;
    window.finish();
    sending.abort();
    receiving.abort();
    drop((rx, tx));
    server.check_alive()?;
    anyhow::ensure!(rate > 0.0, "nothing was received");
    Ok(rate)
}
