//! A real `ganglion` process is killed with SIGKILL while producers stream QUEUE messages and
//! consumers ack them, then restarted on the same data directory. No confirmed message may be
//! lost, and nothing may be delivered that no producer sent.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Client, Node, get_json, patience};

const QUEUE: &str = "crash";
const PRODUCERS: usize = 3;
const CONSUMERS: usize = 2;
/// QUEUE frames a producer sends ahead of its confirms.
const WINDOW: usize = 32;
/// The node is killed once this many messages are confirmed; producers never run out first.
const KILL_AFTER: usize = 4_000;

/// What the clients saw, across both lives of the node.
#[derive(Default)]
struct Ledger {
    /// Nonces of every QUEUE written to a socket.
    sent: HashSet<String>,
    /// nonce → id, from QUEUE_CONFIRM.
    confirmed: HashMap<String, String>,
    /// (id, nonce) of every delivery, duplicates included.
    delivered: Vec<(String, String)>,
}

async fn produce(node: std::net::SocketAddr, index: usize, ledger: Arc<Mutex<Ledger>>) {
    let mut client = Client::identify(node, "producers", &format!("p{index}")).await;
    let mut outstanding = 0;
    for n in 0.. {
        let nonce = format!("p{index}-{n}");
        // Recorded before the write: a frame cut off by the kill may still have been stored.
        ledger.lock().sent.insert(nonce.clone());
        let queue = json!({"queue": QUEUE, "target": {"application": "workers"},
                           "nonce": nonce, "payload": {"n": n}});
        if !client.dispatch("QUEUE", queue).await {
            return;
        }
        outstanding += 1;
        while outstanding >= WINDOW {
            let Some(frame) = client.recv().await else {
                return;
            };
            assert_eq!(
                frame["t"], "QUEUE_CONFIRM",
                "producers only get confirms: {frame}"
            );
            let nonce = frame["d"]["nonce"].as_str().unwrap().to_owned();
            let id = frame["d"]["id"].as_str().unwrap().to_owned();
            ledger.lock().confirmed.insert(nonce, id);
            outstanding -= 1;
        }
    }
}

/// Requests, receives and acks until the connection ends or `stop` is set.
async fn consume(
    node: std::net::SocketAddr,
    index: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut client = Client::identify(node, "workers", &format!("w{index}")).await;
    loop {
        if !client
            .dispatch("QUEUE_REQUEST", json!({"queue": QUEUE}))
            .await
        {
            return;
        }
        let frame = loop {
            match tokio::time::timeout(Duration::from_millis(200), client.recv()).await {
                Ok(frame) => break frame,
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => {}
            }
        };
        let Some(frame) = frame else {
            return;
        };
        assert_eq!(
            frame["t"], "QUEUE",
            "consumers only get deliveries: {frame}"
        );
        let id = frame["d"]["payload"]["id"].as_str().unwrap().to_owned();
        let nonce = frame["d"]["nonce"].as_str().unwrap().to_owned();
        ledger.lock().delivered.push((id.clone(), nonce));
        if !client
            .dispatch("QUEUE_ACK", json!({"queue": QUEUE, "id": id}))
            .await
        {
            return;
        }
    }
}

/// No message left in any state (the queue may still be listed for its waiting consumers).
fn queue_is_empty(stats: &Value) -> bool {
    stats["queues"].as_array().is_some_and(|queues| {
        queues.iter().filter(|q| q["name"] == QUEUE).all(|q| {
            ["ready", "in_flight", "dead_lettered", "parked"]
                .iter()
                .all(|state| q[*state] == 0)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_confirmed_message() {
    let dir = std::env::temp_dir().join(format!("ganglion-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = [
        "--set",
        "queue.ack_timeout_ms=1000",
        "--set",
        "queue.dlq_time_ms=100",
        "--set",
        "queue.sweep_interval_ms=50",
    ];
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // First life: stream until enough is confirmed, then SIGKILL mid-stream.
    let started = tokio::time::Instant::now();
    let mut node = Node::start(&dir, &args);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..CONSUMERS {
        tasks.push(tokio::spawn(consume(
            node.addr,
            i,
            ledger.clone(),
            stop.clone(),
        )));
    }
    for i in 0..PRODUCERS {
        tasks.push(tokio::spawn(produce(node.addr, i, ledger.clone())));
    }
    let deadline = tokio::time::Instant::now() + patience();
    while ledger.lock().confirmed.len() < KILL_AFTER {
        assert!(tokio::time::Instant::now() < deadline, "producers stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.kill();
    eprintln!("first life: {:?}", started.elapsed());
    for task in tasks.drain(..) {
        task.await.expect("client task");
    }
    let (outstanding_at_kill, confirmed_first_life) = {
        let ledger = ledger.lock();
        (
            ledger.sent.len() - ledger.confirmed.len(),
            ledger.confirmed.len(),
        )
    };

    // Second life on the same data directory: consume everything that is left.
    let node = Node::start(&dir, &args);
    eprintln!("restarted: {:?}", started.elapsed());
    for i in 0..CONSUMERS {
        tasks.push(tokio::spawn(consume(
            node.addr,
            i,
            ledger.clone(),
            stop.clone(),
        )));
    }
    let deadline = tokio::time::Instant::now() + patience() * 3;
    loop {
        let stats = get_json(node.addr, "/api/v1/queues").await;
        let all_delivered = {
            let ledger = ledger.lock();
            let delivered: HashSet<&String> = ledger.delivered.iter().map(|(id, _)| id).collect();
            ledger.confirmed.values().all(|id| delivered.contains(id))
        };
        if all_delivered && queue_is_empty(&stats) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue did not drain after the restart: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("drained: {:?}", started.elapsed());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("consumer task");
    }

    let ledger = ledger.lock();
    let delivered_ids: HashSet<&String> = ledger.delivered.iter().map(|(id, _)| id).collect();
    let confirmed_never_delivered: Vec<&String> = ledger
        .confirmed
        .values()
        .filter(|id| !delivered_ids.contains(id))
        .collect();
    let never_sent: Vec<&(String, String)> = ledger
        .delivered
        .iter()
        .filter(|(_, nonce)| !ledger.sent.contains(nonce))
        .collect();
    let mismatched: Vec<&(String, String)> = ledger
        .delivered
        .iter()
        .filter(|(id, nonce)| ledger.confirmed.get(nonce).is_some_and(|c| c != id))
        .collect();
    let delivered_unconfirmed: HashSet<&String> = ledger
        .delivered
        .iter()
        .filter(|(_, nonce)| !ledger.confirmed.contains_key(nonce))
        .map(|(id, _)| id)
        .collect();
    let duplicates = ledger.delivered.len() - delivered_ids.len();
    eprintln!(
        "crash test: sent {}, confirmed {} (all before the kill: {}), delivered {} distinct, \
         {} duplicate deliveries, {} delivered whose confirm the kill cut off (of {} outstanding)",
        ledger.sent.len(),
        ledger.confirmed.len(),
        confirmed_first_life,
        delivered_ids.len(),
        duplicates,
        delivered_unconfirmed.len(),
        outstanding_at_kill,
    );
    assert!(
        confirmed_never_delivered.is_empty(),
        "confirmed but never delivered: {confirmed_never_delivered:?}"
    );
    assert!(
        never_sent.is_empty(),
        "delivered but never sent: {never_sent:?}"
    );
    assert!(
        mismatched.is_empty(),
        "delivered under another id than confirmed: {mismatched:?}"
    );
    assert!(
        delivered_unconfirmed.len() <= outstanding_at_kill,
        "only messages whose confirm the kill cut off may arrive unconfirmed"
    );
    drop(ledger);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
