//! Scenario 6: durable queue publish + consume, through the client libraries.
//!
//! ganglion (redb store, the default, in a fresh directory): [`PRODUCERS`] producers
//! (`ganglion_client` over TCP/MessagePack, a connection each) keep 256 QUEUE frames each
//! awaiting their confirm (the server's per-connection limit), one consumer takes messages with
//! a prefetch of 64 and acks each one.
//! A confirm is sent only once the message is synced to disk.
//!
//! NATS: a JetStream file-backed stream with work-queue retention and a durable pull consumer
//! with explicit acks; as many async-nats producers (a connection each) keep 256 publishes each
//! awaiting their PubAck, the
//! consumer reads the `messages()` stream and acks each message. Measured twice: with NATS's
//! default file sync (every 2 minutes: a PubAck does not mean the message is on disk) and with
//! `sync_interval: always` (fsync per write, ganglion's guarantee).
//!
//! Both run at once for the measured time (after the warm-up); rows give consumed (acked)
//! messages per second and confirmed publishes per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use ganglion_client::{ClientBuilder, Query};

use super::progress;
use crate::Settings;
use crate::procs::{JetStream, Server};
use crate::report::{Row, Side, Table};
use crate::wire::Ganglion;

const PAYLOAD: usize = 128;
const IN_FLIGHT: usize = 256;
/// Producers, each on its own connection: group commits pay off with several.
const PRODUCERS: usize = 4;
const PREFETCH: usize = 64;

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let mut table = Table::default();
    let syncs = [
        (
            JetStream::SyncAlways,
            "sync-always",
            "sync_interval: always",
        ),
        (
            JetStream::DefaultSync,
            "default-sync",
            "default sync (2 min)",
        ),
    ];
    for (sync, name, label) in syncs {
        let mut row = Row::new(
            6,
            &format!("6.consumed.{name}"),
            "durable queue: consumed + acked (1 consumer, 4 producers), redb, tcp-msgpack",
            "msg/s",
            true,
        )
        .versus(&format!("JetStream file stream, work queue, {label}"));
        if sync == JetStream::DefaultSync {
            row = row.note(
                "NATS acknowledges before its files are synced (every 2 min by default): a \
                 weaker guarantee than ganglion's confirm, which follows an fsync",
            );
        }
        table.add_row(row);
        table.add_row(
            Row::new(
                6,
                &format!("6.published.{name}"),
                "durable queue: confirmed publishes, 4 producers, redb, tcp-msgpack",
                "msg/s",
                true,
            )
            .versus(&format!("JetStream PubAcks, {label}")),
        );
    }
    if !s.wants("6.") {
        return Ok(Vec::new());
    }
    for run in 0..s.runs {
        let (consumed, published) = ganglion(s).await.context("ganglion")?;
        progress(run, "ganglion queue consumed", consumed, "msg/s");
        progress(run, "ganglion queue published", published, "msg/s");
        for (_, name, _) in syncs {
            table.record(&format!("6.consumed.{name}"), Side::Ganglion, consumed);
            table.record(&format!("6.published.{name}"), Side::Ganglion, published);
        }
        for (sync, name, _) in syncs {
            let (consumed, published) = nats(s, sync).await.context("NATS")?;
            progress(run, &format!("nats {name} consumed"), consumed, "msg/s");
            progress(run, &format!("nats {name} published"), published, "msg/s");
            table.record(&format!("6.consumed.{name}"), Side::Nats, consumed);
            table.record(&format!("6.published.{name}"), Side::Nats, published);
        }
    }
    Ok(table.rows)
}

type Task = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Runs every producer; the first error ends them all.
async fn all<F>(producers: Vec<F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    futures_util::future::try_join_all(producers)
        .await
        .map(drop)
}

/// Samples, then stops the producer and the consumer; an error either met is the result.
async fn measure(
    s: &Settings,
    consumed: &AtomicU64,
    published: &AtomicU64,
    stop: &AtomicBool,
    producing: Task,
    consuming: Task,
) -> anyhow::Result<(f64, f64)> {
    let rates = sample(s, consumed, published).await;
    stop.store(true, Ordering::Relaxed);
    producing.abort();
    consuming.abort();
    for (name, task) in [("producer", producing), ("consumer", consuming)] {
        if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_millis(100), task).await {
            return Err(error.context(name));
        }
    }
    Ok(rates)
}

/// Consumed and published per second over the measured time.
async fn sample(s: &Settings, consumed: &AtomicU64, published: &AtomicU64) -> (f64, f64) {
    tokio::time::sleep(s.warmup).await;
    let (c0, p0, t0) = (
        consumed.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(s.measure).await;
    let secs = t0.elapsed().as_secs_f64();
    (
        (consumed.load(Ordering::Relaxed) - c0) as f64 / secs,
        (published.load(Ordering::Relaxed) - p0) as f64 / secs,
    )
}

async fn ganglion(s: &Settings) -> anyhow::Result<(f64, f64)> {
    let mut server = Server::ganglion(s, &["queue.store=redb"])?;
    let dsn = Ganglion::TcpMsgpack.dsn(server.addr, server.tcp.context("TCP listener")?);
    let mut producers = Vec::new();
    for i in 0..PRODUCERS {
        let producer = ClientBuilder::new(&dsn)?
            .application_id("producers")
            .client_id(format!("p{i}"))
            .buffer(4096)
            .connect()
            .await?;
        producers.push(producer);
    }
    let consumer = ClientBuilder::new(&dsn)?
        .application_id("workers")
        .client_id("w1")
        .buffer(4096)
        .connect()
        .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let consuming = {
        let (consumer, consumed) = (consumer.clone(), Arc::clone(&consumed));
        tokio::spawn(async move {
            let mut jobs = consumer.consume_with("bench", PREFETCH).await?;
            while let Some(job) = jobs.recv().await {
                job.ack().await?;
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    let producing = producers.iter().map(|producer| {
        let (producer, published, stop) =
            (producer.clone(), Arc::clone(&published), Arc::clone(&stop));
        async move {
            let target = Query::application("workers");
            let payload = "x".repeat(PAYLOAD);
            let mut pending = FuturesUnordered::new();
            loop {
                while pending.len() < IN_FLIGHT && !stop.load(Ordering::Relaxed) {
                    pending.push(producer.publish("bench", &target, &payload));
                }
                match pending.next().await {
                    Some(confirm) => {
                        confirm?;
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return anyhow::Ok(()),
                }
            }
        }
    });
    let producing = tokio::spawn(all(producing.collect()));
    let (c, p) = measure(s, &consumed, &published, &stop, producing, consuming).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for producer in &producers {
            let _ = producer.close().await;
        }
        let _ = consumer.close().await;
    })
    .await;
    server.check_alive()?;
    anyhow::ensure!(c > 0.0 && p > 0.0, "nothing was published or consumed");
    Ok((c, p))
}

async fn nats(s: &Settings, sync: JetStream) -> anyhow::Result<(f64, f64)> {
    use async_nats::jetstream::{self, consumer, stream};
    let mut server = Server::nats(s, Some(sync))?;
    let url = format!("nats://{}", server.addr);
    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        producers.push(jetstream::new(async_nats::connect(&url).await?));
    }
    let consumer_js = jetstream::new(async_nats::connect(&url).await?);
    let stream = consumer_js
        .create_stream(stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.q".into()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("create stream: {e}"))?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
    let pull: consumer::PullConsumer = consumer_js
        .get_consumer_from_stream("workers", "BENCH")
        .await
        .map_err(|e| anyhow::anyhow!("get consumer: {e}"))?;
    let consumed = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let consuming = {
        let consumed = Arc::clone(&consumed);
        tokio::spawn(async move {
            let mut messages = pull
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("messages: {e}"))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("message: {e}"))?;
                message
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    let producing = producers.into_iter().map(|producer| {
        let (published, stop) = (Arc::clone(&published), Arc::clone(&stop));
        async move {
            let payload = Bytes::from(vec![b'x'; PAYLOAD]);
            let mut pending = FuturesUnordered::new();
            loop {
                while pending.len() < IN_FLIGHT && !stop.load(Ordering::Relaxed) {
                    let ack = producer
                        .publish("bench.q", payload.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
                    pending.push(ack.into_future());
                }
                match pending.next().await {
                    Some(ack) => {
                        ack.map_err(|e| anyhow::anyhow!("PubAck: {e}"))?;
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return anyhow::Ok(()),
                }
            }
        }
    });
    let producing = tokio::spawn(all(producing.collect()));
    let (c, p) = measure(s, &consumed, &published, &stop, producing, consuming).await?;
    server.check_alive()?;
    anyhow::ensure!(c > 0.0 && p > 0.0, "nothing was published or consumed");
    Ok((c, p))
}
