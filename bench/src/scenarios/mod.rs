//! The scenarios of issue 8, and the windowed pipe they share.
//!
//! 1. [`send`]: 1→1 routed SEND throughput;
//! 2. [`fanout`]: 1→N BROADCAST deliveries per second;
//! 3. [`request`]: request/reply latency, closed loop and open loop;
//! 4. [`idle`]: resident memory per idle identified connection;
//! 5. [`broadcast`]: time until 10 k websocket clients all have a broadcast;
//! 6. [`queue`]: durable queue publish + consume throughput.

pub mod broadcast;
pub mod fanout;
pub mod idle;
pub mod queue;
pub mod request;
pub mod send;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::Settings;
use crate::report::Row;
use crate::wire::Counter;

pub async fn run(scenario: u8, s: &Settings) -> anyhow::Result<Vec<Row>> {
    match scenario {
        1 => send::run(s).await,
        2 => fanout::run(s).await,
        3 => request::run(s).await,
        4 => idle::run(s).await,
        5 => broadcast::run(s).await,
        6 => queue::run(s).await,
        _ => bail!("no scenario {scenario}"),
    }
}

/// Prints one measurement as it is taken (the tables come at the end).
pub fn progress(run: usize, id: &str, value: f64, unit: &str) {
    eprintln!("  run {} {id}: {value:.1} {unit}", run + 1);
}

/// A receiving connection of a [`blast`], with bytes already read past its handshake.
pub struct Receiver {
    pub stream: TcpStream,
    pub counter: Counter,
    pub pending: Vec<u8>,
}

/// Streams `unit` (one pre-encoded message) from `sender` to every receiver, as fast as the
/// slowest receiver allows: at most `window` messages ahead of it, written `BATCH` at a time.
/// Returns deliveries per second (all receivers together) over `s.measure`, after `s.warmup`.
///
/// `check` is called with the first bytes of the first frame received, to make sure the
/// count is of what was sent (not of errors). Frames that reach the sender are errors for
/// ganglion (op 3) and fail the measurement.
pub async fn blast(
    s: &Settings,
    sender: TcpStream,
    mut sender_counter: Counter,
    unit: Vec<u8>,
    receivers: Vec<Receiver>,
    window: u64,
    check: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<f64> {
    const BATCH: u64 = 64;
    let room = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let first = Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    let buffer = if receivers.len() > 16 {
        8 << 10
    } else {
        64 << 10
    };
    let mut counts = Vec::new();
    let mut tasks = Vec::new();
    for receiver in receivers {
        let count = Arc::new(AtomicU64::new(0));
        counts.push(Arc::clone(&count));
        let (room, first) = (Arc::clone(&room), Arc::clone(&first));
        tasks.push(tokio::spawn(async move {
            let Receiver {
                mut stream,
                mut counter,
                pending,
            } = receiver;
            let mut got = counter.feed(&pending);
            let mut buf = vec![0u8; buffer];
            loop {
                if got > 0 {
                    count.fetch_add(got, Ordering::Relaxed);
                    room.notify_one();
                    if let Some(bytes) = counter.take_first()
                        && let Ok(mut first) = first.lock()
                        && first.is_none()
                    {
                        *first = Some(bytes);
                    }
                }
                if counter.pings > 0 {
                    counter.pings = 0;
                    let _ = stream.write_all(b"PONG\r\n").await;
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got = counter.feed(&buf[..n]),
                }
            }
        }));
    }
    let (mut sender_rd, mut sender_wr) = sender.into_split();
    let unexpected = Arc::new(std::sync::Mutex::new((0u64, None::<Vec<u8>>)));
    {
        let unexpected = Arc::clone(&unexpected);
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = sender_rd.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                let frames = sender_counter.feed(&buf[..n]);
                if let Ok(mut u) = unexpected.lock() {
                    u.0 += frames;
                    if u.1.is_none() {
                        u.1 = sender_counter.take_first();
                    }
                }
            }
        }));
    }
    let batch = unit.repeat(BATCH as usize);
    let writer = {
        let (counts, room, stop) = (counts.clone(), Arc::clone(&room), Arc::clone(&stop));
        let unit_len = unit.len();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let slowest = counts
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                let ahead = sent.saturating_sub(slowest);
                if ahead >= window {
                    room.notified().await;
                    continue;
                }
                let n = (window - ahead).min(BATCH);
                if sender_wr
                    .write_all(&batch[..n as usize * unit_len])
                    .await
                    .is_err()
                {
                    return;
                }
                sent += n;
            }
        })
    };
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    tokio::time::sleep(s.warmup).await;
    let (c0, t0) = (total(), Instant::now());
    tokio::time::sleep(s.measure).await;
    let (c1, t1) = (total(), Instant::now());
    stop.store(true, Ordering::Relaxed);
    room.notify_one();
    writer.abort();
    for task in tasks {
        task.abort();
    }
    let (errors, error_frame) = unexpected.lock().map(|u| u.clone()).unwrap_or_default();
    if errors > 0 {
        bail!(
            "the sender received {errors} frames (errors?), the first starting {:?}",
            String::from_utf8_lossy(&error_frame.unwrap_or_default())
        );
    }
    let first = first.lock().ok().and_then(|f| f.clone());
    match first {
        None => bail!("nothing was received"),
        Some(bytes) if !check(&bytes) => bail!(
            "received something else than what was sent: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Some(_) => {}
    }
    if c1 <= c0 {
        bail!("nothing was received in the measured time");
    }
    Ok((c1 - c0) as f64 / (t1 - t0).as_secs_f64())
}

/// A latency histogram in microseconds (1 µs to 60 s, 3 significant digits).
pub fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Records a duration in microseconds (saturating at the histogram's top).
pub fn record(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Connects `count` things with at most `parallel` handshakes at a time.
pub async fn connect_many<T, F, Fut>(
    count: usize,
    parallel: usize,
    connect: F,
) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    use futures_util::StreamExt as _;
    let mut out = Vec::with_capacity(count);
    let mut connecting = futures_util::stream::iter((0..count).map(connect)).buffered(parallel);
    while let Some(conn) = connecting.next().await {
        out.push(conn?);
    }
    Ok(out)
}

/// Patience for connecting thousands of clients on a busy machine.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(180);
