//! Scenario 4: resident memory per idle identified connection.
//!
//! The server's VmRSS is read from `/proc/<pid>/status` once it has started (the baseline),
//! again with 10 k connections identified and idle, and again with 19 k; each figure is
//! `(VmRSS − baseline) / connections`. Only user-space memory counts: kernel socket buffers are
//! not in VmRSS, for either server.
//!
//! A process may hold 20 000 open files here, so the connections come from worker processes
//! (copies of this binary, `--worker`, on the load core) holding at most 10 000 each. ganglion's
//! connections are raw websocket (JSON) or raw TCP (MessagePack) clients that identify with a
//! small metadata document and then only read; the heartbeat interval is raised to 10 minutes
//! so that none is due while the memory is read. NATS connections send `CONNECT`, subscribe to a
//! subject of their own (what makes them addressable, like an identified client) and answer
//! `PING`s.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CONNECT_PATIENCE, connect_many, progress};
use crate::Settings;
use crate::procs::{Server, Worker};
use crate::report::{Row, Side, Table, Target};
use crate::wire::{self, Counter, Ganglion, RawGanglion};

/// Connections per worker process, well under the 20 000 open files a process may have.
const PER_WORKER: usize = 10_000;
/// Handshakes in flight per worker.
const PARALLEL: usize = 128;
/// Time for the servers to settle before their memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// What the workers connect as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    GanglionWs,
    GanglionTcp,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::GanglionWs => "ganglion-ws",
            Flavour::GanglionTcp => "ganglion-tcp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Flavour::GanglionWs => "websocket (JSON)",
            Flavour::GanglionTcp => "raw TCP (MessagePack)",
        }
    }
}

fn counts(s: &Settings) -> [usize; 2] {
    if s.quick {
        [1_000, 2_000]
    } else {
        [10_000, 19_000]
    }
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let counts = counts(s);
    let flavours = [Flavour::GanglionWs, Flavour::GanglionTcp];
    let mut table = Table::default();
    for flavour in flavours {
        for n in counts {
            let mut row = Row::new(
                4,
                &id(flavour, n),
                &format!(
                    "idle identified {}: memory per connection at {n}",
                    flavour.label()
                ),
                "KiB/conn",
                false,
            )
            .versus(&format!("{n} connections, one SUB each"));
            if flavour == Flavour::GanglionWs {
                row = row.target(Target::AtMost(16.0));
            }
            if n == counts[0] {
                row = row.note(
                    "(VmRSS with the connections − VmRSS before) / connections; user-space memory \
                     only (kernel socket buffers are not in VmRSS); ganglion's heartbeat interval \
                     raised to 10 min so none falls due while measuring",
                );
            }
            table.add_row(row);
        }
        table.add_row(
            Row::new(
                4,
                &format!("4.{}.rss-{}", flavour.name(), counts[1]),
                &format!(
                    "server resident memory with {} idle {} connections",
                    counts[1],
                    flavour.label()
                ),
                "MiB",
                false,
            )
            .versus(&format!("{} connections", counts[1])),
        );
    }
    for run in 0..s.runs {
        let mut wanted = false;
        for flavour in flavours {
            if !s.wants(&format!("4.{}", flavour.name())) {
                continue;
            }
            wanted = true;
            let kib = measure(s, Some(flavour), counts)
                .await
                .context(flavour.name())?;
            record(&mut table, run, flavour, Side::Ganglion, counts, kib);
        }
        if wanted {
            let kib = measure(s, None, counts).await.context("NATS")?;
            for flavour in flavours {
                if s.wants(&format!("4.{}", flavour.name())) {
                    record(&mut table, run, flavour, Side::Nats, counts, kib);
                }
            }
        }
    }
    Ok(table
        .rows
        .into_iter()
        .filter(|r| !r.ganglion.is_empty())
        .collect())
}

fn id(flavour: Flavour, n: usize) -> String {
    format!("4.{}.{n}", flavour.name())
}

fn record(
    table: &mut Table,
    run: usize,
    flavour: Flavour,
    side: Side,
    counts: [usize; 2],
    measured: [f64; 3],
) {
    let who = match side {
        Side::Ganglion => flavour.name(),
        Side::Nats => "nats",
    };
    for (n, kib) in counts.into_iter().zip(measured) {
        table.record(&id(flavour, n), side, kib);
        progress(run, &format!("{who} idle {n}"), kib, "KiB/conn");
    }
    table.record(
        &format!("4.{}.rss-{}", flavour.name(), counts[1]),
        side,
        measured[2],
    );
}

/// KiB per connection at both counts, and the server's total MiB at the second.
async fn measure(
    s: &Settings,
    flavour: Option<Flavour>,
    counts: [usize; 2],
) -> anyhow::Result<[f64; 3]> {
    let (mut server, kind, addr) = match flavour {
        Some(flavour) => {
            let server = Server::ganglion(s, &["gateway.heartbeat_interval_ms=600000"])?;
            let addr = match flavour {
                Flavour::GanglionWs => server.addr,
                Flavour::GanglionTcp => server.tcp.context("ganglion's TCP listener")?,
            };
            (server, flavour.name(), addr)
        }
        None => {
            let server = Server::nats(s, None)?;
            let addr = server.addr;
            (server, "nats", addr)
        }
    };
    tokio::time::sleep(SETTLE).await;
    let baseline = server.rss_bytes()?;
    let mut workers = Vec::new();
    let mut out = [0.0; 3];
    let mut connected = 0;
    for (i, n) in counts.into_iter().enumerate() {
        while connected < n {
            let batch = (n - connected).min(PER_WORKER);
            let mut worker = Worker::start(kind, addr, batch, connected)?;
            let got = worker.connected(CONNECT_PATIENCE).await;
            server.check_alive()?;
            got?;
            workers.push(worker);
            connected += batch;
        }
        tokio::time::sleep(SETTLE).await;
        let rss = server.rss_bytes()?;
        out[i] = rss.saturating_sub(baseline) as f64 / n as f64 / 1024.0;
        if i == 1 {
            out[2] = rss as f64 / (1024.0 * 1024.0);
        }
    }
    drop(workers);
    server.check_alive()?;
    Ok(out)
}

/// A worker process: opens `count` connections of `kind` to `addr`, says `connected N`, holds
/// them until its stdin closes.
pub async fn worker(kind: &str, addr: &str, count: usize, first: usize) -> anyhow::Result<()> {
    let addr: SocketAddr = addr.parse().context("--addr")?;
    let streams = match kind {
        "ganglion-ws" | "ganglion-tcp" => {
            let g = if kind == "ganglion-ws" {
                Ganglion::WsJson
            } else {
                Ganglion::TcpMsgpack
            };
            connect_many(count, PARALLEL, |i| async move {
                let n = first + i;
                let mut conn = RawGanglion::identified(
                    g,
                    addr,
                    addr,
                    "idle",
                    &format!("idle-{n}"),
                    json!({"n": {"type": "integer", "value": n}}),
                )
                .await?;
                conn.take_pending();
                Ok(conn.stream)
            })
            .await?
        }
        "nats" => {
            connect_many(count, PARALLEL, |i| async move {
                let mut stream = wire::nats_connect(addr).await?;
                wire::nats_subscribe(&mut stream, &format!("idle.{}", first + i), 1).await?;
                Ok(stream)
            })
            .await?
        }
        other => bail!("unknown worker kind {other}"),
    };
    let nats = kind == "nats";
    for mut stream in streams {
        tokio::spawn(async move {
            let mut counter = Counter::nats();
            let mut buf = [0u8; 256];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                if nats {
                    counter.feed(&buf[..n]);
                    while counter.pings > 0 {
                        counter.pings -= 1;
                        if stream.write_all(b"PONG\r\n").await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    println!("connected {count}");
    // Hold the connections until the parent closes our stdin (or kills us).
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    Ok(())
}
