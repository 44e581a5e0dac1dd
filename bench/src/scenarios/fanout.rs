//! Scenario 2: 1→N fan-out, deliveries per second.
//!
//! ganglion: N receivers identify over raw TCP (MessagePack) as application `fan` with
//! `role = rx`; one sender repeats a pre-encoded BROADCAST to
//! `application = fan and role == rx` (128 B payload). NATS: N subscribers on one subject, one
//! publisher of pre-encoded `PUB`s. The sender stays at most a window of broadcasts ahead of the
//! slowest receiver (about 64 k deliveries in flight, at most 2048 per receiver).

use anyhow::Context as _;
use serde_json::json;

use super::{CONNECT_PATIENCE, Receiver, blast, connect_many, progress};
use crate::Settings;
use crate::procs::Server;
use crate::report::{Row, Side, Table};
use crate::wire::{self, Counter, Ganglion, RawGanglion};

const PAYLOAD: usize = 128;

fn window(receivers: usize) -> u64 {
    (65_536 / receivers as u64).clamp(16, 2048)
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let fans = [4usize, 1000];
    let mut table = Table::default();
    for n in fans {
        table.add_row(
            Row::new(
                2,
                &id(n),
                &format!("1→{n} BROADCAST {PAYLOAD} B, tcp-msgpack, raw load"),
                "deliveries/s",
                true,
            )
            .versus(&format!("1 pub → {n} subs on one subject, raw load")),
        );
    }
    for run in 0..s.runs {
        for n in fans {
            if !s.wants(&id(n)) {
                continue;
            }
            let rate = tokio::time::timeout(CONNECT_PATIENCE, ganglion(s, n))
                .await
                .context("timed out")??;
            progress(run, &id(n), rate, "deliveries/s");
            table.record(&id(n), Side::Ganglion, rate);
            let rate = tokio::time::timeout(CONNECT_PATIENCE, nats(s, n))
                .await
                .context("timed out")??;
            progress(run, &format!("nats fan-out {n}"), rate, "deliveries/s");
            table.record(&id(n), Side::Nats, rate);
        }
    }
    Ok(table
        .rows
        .into_iter()
        .filter(|r| !r.ganglion.is_empty())
        .collect())
}

fn id(n: usize) -> String {
    format!("2.broadcast-{n}")
}

async fn ganglion(s: &Settings, n: usize) -> anyhow::Result<f64> {
    let kind = Ganglion::TcpMsgpack;
    let mut server = Server::ganglion(s, &[])?;
    let (http, tcp) = (server.addr, server.tcp.context("ganglion's TCP listener")?);
    let receivers = connect_many(n, 64, |i| async move {
        let mut rx = RawGanglion::identified(
            kind,
            http,
            tcp,
            "fan",
            &format!("rx-{i}"),
            json!({"role": {"type": "string", "value": "rx"}}),
        )
        .await?;
        Ok(Receiver {
            pending: rx.take_pending(),
            stream: rx.stream,
            counter: kind.counter(),
        })
    })
    .await?;
    let tx = RawGanglion::identified(kind, http, tcp, "fan-tx", "tx", json!({})).await?;
    let unit = kind.frame(&json!({"op": 4, "t": "BROADCAST", "d": {
        "target": {"application": "fan",
                   "ops": [{"path": "/role", "op": "$eq", "to": {"value": "rx"}}]},
        "payload": "x".repeat(PAYLOAD)}}));
    let rate = blast(
        s,
        tx.stream,
        kind.counter(),
        unit,
        receivers,
        window(n),
        |first| kind.is_dispatch(first),
    )
    .await;
    server.check_alive()?;
    rate
}

async fn nats(s: &Settings, n: usize) -> anyhow::Result<f64> {
    let mut server = Server::nats(s, None)?;
    let addr = server.addr;
    let receivers = connect_many(n, 64, |i| async move {
        let mut rx = wire::nats_connect(addr).await?;
        wire::nats_subscribe(&mut rx, "fan", i as u64 + 1).await?;
        Ok(Receiver {
            stream: rx,
            counter: Counter::nats(),
            pending: Vec::new(),
        })
    })
    .await?;
    let tx = wire::nats_connect(addr).await?;
    let rate = blast(
        s,
        tx,
        Counter::nats(),
        wire::nats_pub("fan", &[b'x'; PAYLOAD]),
        receivers,
        window(n),
        |first| first.starts_with(b"xxxx"),
    )
    .await;
    server.check_alive()?;
    rate
}
