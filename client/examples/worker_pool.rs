//! A worker pool on a queue: a few workers consume `jobs` (at least once: each acks after its
//! work), a producer pushes jobs addressed to workers with a GPU, and the pool shares them.
//!
//! ```sh
//! cargo run -p ganglion-client --example worker_pool -- singyeong://localhost:4000 4 1000
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use ganglion_client::{ClientBuilder, Dsn, Metadata, Query};
use serde_json::json;

#[tokio::main]
async fn main() -> ganglion_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let dsn = Dsn::parse(
        &args
            .next()
            .unwrap_or_else(|| "singyeong://localhost:4000".to_owned()),
    )?;
    let workers: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(4);
    let jobs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);

    let done = Arc::new(Mutex::new(HashSet::new()));
    // Raised by whichever worker handles the last job, so the others stop waiting.
    let (finished_tx, finished) = tokio::sync::watch::channel(false);
    let finished_tx = Arc::new(finished_tx);
    let mut pool = Vec::new();
    for w in 0..workers {
        let worker = ClientBuilder::from_dsn(dsn.clone())
            .application_id("workers")
            .client_id(format!("worker-{w}"))
            .metadata(
                Metadata::new()
                    .boolean("gpu", true)
                    .integer("slot", w as i64),
            )
            .connect()
            .await?;
        let mut consumer = worker.consume_with("jobs", 8).await?;
        let done = Arc::clone(&done);
        let (finished_tx, mut finished) = (Arc::clone(&finished_tx), finished.clone());
        pool.push(tokio::spawn(async move {
            let mut handled = 0usize;
            loop {
                let job = tokio::select! {
                    job = consumer.next() => job,
                    _ = finished.wait_for(|all| *all) => break,
                };
                let Some(job) = job else { break };
                // Deliveries are at least once: the id tells a redelivery apart.
                let first_time = done
                    .lock()
                    .map(|mut d| d.insert(job.id.clone()))
                    .unwrap_or(false);
                if first_time {
                    handled += 1;
                }
                if job.ack().await.is_err() {
                    break;
                }
                if done.lock().map(|d| d.len() >= jobs).unwrap_or(true) {
                    finished_tx.send_replace(true);
                }
            }
            worker.sync().await.ok();
            worker.close().await.ok();
            (w, handled)
        }));
    }

    let producer = ClientBuilder::from_dsn(dsn)
        .application_id("producer")
        .connect()
        .await?;
    let target = Query::application("workers").eq("gpu", true);
    let started = Instant::now();
    let mut confirms: FuturesUnordered<_> = (0..jobs)
        .map(|n| {
            let (producer, target) = (&producer, &target);
            async move { producer.publish("jobs", target, &json!({"job": n})).await }
        })
        .collect();
    let mut stored = 0;
    while let Some(confirm) = confirms.next().await {
        confirm?;
        stored += 1;
    }
    drop(confirms);
    println!("{stored} jobs stored in {:?}", started.elapsed());
    for worker in pool {
        if let Ok((w, handled)) = worker.await {
            println!("worker-{w} handled {handled}");
        }
    }
    println!("all {jobs} jobs handled in {:?}", started.elapsed());
    producer.close().await
}
