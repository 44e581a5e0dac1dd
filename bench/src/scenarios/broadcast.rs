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
//! The clients' reads are done one after another on the load's single core, so that figure
//! includes the load's own time to read 10 000 sockets (on both servers alike). A third row
//! leaves the load's reading out: each socket asks the kernel for receive timestamps
//! (`SO_TIMESTAMPNS`), and a frame's arrival is the kernel's timestamp of the read that
//! completed it — when the server's write reached the client's socket, however long the load
//! then took to read it. Arrival times are wall-clock (the kernel's `CLOCK_REALTIME`), measured
//! from a wall-clock reading taken just before the sender's write.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use serde_json::json;
use tokio::io::{AsyncWriteExt, Interest};
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
    let arrived = format!("5.ws-json.{n}.arrived");
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
    table.add_row(
        Row::new(
            5,
            &arrived,
            &format!(
                "broadcast to {n} websocket (JSON) clients: until the last client's socket has it \
                 (kernel receive timestamps)"
            ),
            "ms",
            false,
        )
        .versus(&format!("publish to {n} subscribers"))
        .target(Target::AtMost(100.0))
        .note(
            "median of 20 broadcasts per run; the kernel's arrival time of each client's frame \
             (SO_TIMESTAMPNS), so the load's time to read 10 000 sockets is left out",
        ),
    );
    if !s.wants(&all) && !s.wants(&half) && !s.wants(&arrived) {
        return Ok(Vec::new());
    }
    for run in 0..s.runs {
        let times = tokio::time::timeout(CONNECT_PATIENCE * 2, ganglion(s, n))
            .await
            .context("ganglion: timed out")??;
        progress(run, &all, times.last, "ms");
        table.record(&all, Side::Ganglion, times.last);
        table.record(&half, Side::Ganglion, times.half);
        table.record(&arrived, Side::Ganglion, times.arrived);
        let times = tokio::time::timeout(CONNECT_PATIENCE * 2, nats(s, n))
            .await
            .context("NATS: timed out")??;
        progress(run, "nats broadcast", times.last, "ms");
        table.record(&all, Side::Nats, times.last);
        table.record(&half, Side::Nats, times.half);
        table.record(&arrived, Side::Nats, times.arrived);
    }
    Ok(table.rows)
}

/// A run's medians, in ms: until the last client read the broadcast, until half had, until
/// the last client's socket had it.
struct Times {
    last: f64,
    half: f64,
    arrived: f64,
}

async fn ganglion(s: &Settings, n: usize) -> anyhow::Result<Times> {
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

async fn nats(s: &Settings, n: usize) -> anyhow::Result<Times> {
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

/// Medians over the repeated broadcasts.
async fn measure(
    s: &Settings,
    mut sender: TcpStream,
    unit: Vec<u8>,
    receivers: Vec<TcpStream>,
    counter: impl Fn() -> Counter,
) -> anyhow::Result<Times> {
    let n = receivers.len();
    let epoch = Instant::now();
    let stamps: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    // Wall-clock nanoseconds since the Unix epoch, from the kernel.
    let arrivals: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    for stream in &receivers {
        setsockopt(stream, sockopt::ReceiveTimestampns, &true)
            .context("asking for receive timestamps (SO_TIMESTAMPNS)")?;
    }
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::with_capacity(n);
    for (i, mut stream) in receivers.into_iter().enumerate() {
        let mut counter = counter();
        let (stamps, arrivals, received, done, target) = (
            Arc::clone(&stamps),
            Arc::clone(&arrivals),
            Arc::clone(&received),
            Arc::clone(&done),
            Arc::clone(&target),
        );
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut control = nix::cmsg_space!(TimeSpec);
            while let Ok((len, arrived)) = read_stamped(&stream, &mut buf, &mut control).await {
                if len == 0 {
                    return;
                }
                let at = epoch.elapsed().as_nanos() as u64;
                let frames = counter.feed(&buf[..len]);
                if frames > 0 {
                    stamps[i].store(at, Ordering::Relaxed);
                    arrivals[i].store(arrived.unwrap_or(0), Ordering::Relaxed);
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
    let mut arrived = Vec::new();
    let outcome = async {
        for k in 0..=repeats(s) {
            let expected = (k as u64 + 1) * n as u64;
            target.store(expected, Ordering::Relaxed);
            let sent_wall = wall_ns();
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
            let last_arrival = arrivals
                .iter()
                .map(|t| t.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            if arrivals.iter().any(|t| t.load(Ordering::Relaxed) == 0) {
                bail!("broadcast {k}: a frame came without a receive timestamp");
            }
            if k > 0 {
                lasts.push(times[n - 1]);
                mids.push(times[n / 2]);
                arrived.push(last_arrival.saturating_sub(sent_wall) as f64 / 1e6);
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
    Ok(Times {
        last: median(&lasts).context("no broadcasts")?,
        half: median(&mids).context("no broadcasts")?,
        arrived: median(&arrived).context("no broadcasts")?,
    })
}

/// The wall clock in nanoseconds since the Unix epoch, as the kernel's receive timestamps.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Reads what `stream` has, with the kernel's receive timestamp of the first byte read
/// (wall-clock ns since the Unix epoch), when there is one.
async fn read_stamped(
    stream: &TcpStream,
    buf: &mut [u8],
    control: &mut [u8],
) -> io::Result<(usize, Option<u64>)> {
    loop {
        stream.readable().await?;
        let read = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut *buf)];
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut *control),
                MsgFlags::empty(),
            )?;
            let mut at = None;
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
                    at = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
                }
            }
            Ok((msg.bytes, at))
        });
        match read {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}
