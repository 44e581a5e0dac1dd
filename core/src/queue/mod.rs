//! Queues (SPEC §8): at-least-once delivery by metadata query.
//!
//! This module is the state machine only: messages, their states and timers, waiting consumers
//! and the dispatch pass. It does no I/O and reads no clock — every method that needs the time
//! takes `now` in milliseconds since the epoch — so its rules are unit-tested directly.
//!
//! Every change that must survive a restart is returned as a [`StoreOp`] for the caller to hand
//! to the [`journal`](crate::queue::journal) in the order the changes happened.
//!
//! - [`message`]: the stored message record and its states;
//! - [`store`]: the `QueueStore` trait and the in-memory store;
//! - [`journal`]: the group-commit writer in front of a store;
//! - [`engine`]: the state machine, the journal and the registry wired together.

pub mod engine;
pub mod journal;
pub mod message;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::frame::{Out, OutFrame, TraceContext};
use crate::query::Query;
use crate::registry::Slot;
use crate::session::ConnId;
use crate::value::Value;

pub use message::{ConsumerIdentity, MessageState, StoredMessage};
pub use store::{MemoryStore, Prepared, QueueStore, StoreError, StoreOp};

/// The queue timing knobs (SPEC §8.7, `queue.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// In flight → dead-lettered (or parked) after this long without an ack.
    pub ack_timeout_ms: u64,
    /// Dead-lettered → back of the FIFO after this long.
    pub dlq_time_ms: u64,
    /// Deliveries after which a missed ack parks the message; 0 is unlimited.
    pub max_deliveries: u32,
    /// How often timers are checked.
    pub sweep_interval_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            ack_timeout_ms: 15_000,
            dlq_time_ms: 15_000,
            max_deliveries: 0,
            sweep_interval_ms: 1_000,
        }
    }
}

/// Why a queue name is refused (SPEC §8.1): the exact `reason` strings.
pub fn validate_name(name: &Value) -> Result<&str, &'static str> {
    match name {
        Value::Null => Err("queue: is required"),
        Value::String(s) if s.is_empty() => Err("queue: must not be empty"),
        Value::String(s) if s.len() > 255 => Err("queue: must be at most 255 bytes"),
        Value::String(s) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err("queue: must not contain whitespace or control characters")
        }
        Value::String(s) => Ok(s),
        _ => Err("queue: must be a string"),
    }
}

/// What a producer's QUEUE carries (SPEC §8.3).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub queue: String,
    pub nonce: Value,
    /// The target exactly as received.
    pub target: Value,
    pub payload: Value,
    pub trace: Option<TraceContext>,
}

/// A client waiting for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub conn: ConnId,
    pub slot: Slot,
}

/// What the dispatch pass needs to know about clients; the registry answers.
pub trait Matcher {
    /// Whether `waiter` is still registered and matches `query` by SPEC §6.8 steps 2–4
    /// (restricted filter, application, `ops`; no selector, no `optional`).
    fn waiter_matches(&self, waiter: Waiter, query: &Query) -> bool;
    /// Whether any registered client matches `query` by steps 1–4 (for `optional`).
    fn any_match(&self, query: &Query) -> bool;
    /// The identity of a waiting client.
    fn identity(&self, waiter: Waiter) -> Option<ConsumerIdentity>;
}

/// A message handed to a consumer by a dispatch pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub waiter: Waiter,
    pub frame: OutFrame,
}

/// What an operation changed: frames to hand out and records to persist, in order.
#[derive(Debug, Default)]
pub struct Effects {
    pub deliveries: Vec<Delivery>,
    pub store: Vec<StoreOp>,
}

impl Effects {
    fn absorb(&mut self, other: Effects) {
        self.deliveries.extend(other.deliveries);
        self.store.extend(other.store);
    }
}

/// Counts for `GET /api/v1/queues` (SPEC §9.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub name: String,
    pub ready: usize,
    pub in_flight: usize,
    pub dead_lettered: usize,
    pub parked: usize,
    pub waiting_consumers: usize,
}

/// Why an ack was refused: `unknown message id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownMessage;

/// One message in memory: the stored record plus what is derived from it.
#[derive(Debug)]
struct Entry {
    msg: StoredMessage,
    /// The target, parsed once.
    query: Query,
    /// The connection it is in flight to; `None` after a restart.
    conn: Option<ConnId>,
}

/// One queue: its FIFO, its timers and its waiting consumers.
#[derive(Debug, Default)]
struct Queue {
    entries: HashMap<String, Entry>,
    /// Ready messages by FIFO position.
    ready: BTreeMap<u64, String>,
    /// In-flight messages by delivery time.
    in_flight: BTreeSet<(u64, String)>,
    /// Dead-lettered messages by the time they died.
    dead: BTreeSet<(u64, String)>,
    /// Parked messages, oldest parked first.
    parked: BTreeSet<(u64, u64, String)>,
    /// Waiting consumers, longest waiting first.
    waiting: Vec<Waiter>,
}

/// Every queue of the node.
#[derive(Debug, Default)]
pub struct Queues {
    config: QueueConfig,
    queues: BTreeMap<String, Queue>,
    /// The next FIFO position; positions only grow, so "back of the FIFO" is the next one.
    next_seq: u64,
    /// The next record key (`StoredMessage::record`).
    next_record: u64,
    /// The queues each connection waits on, in request order (client objects' `queues`).
    waiting_by_conn: HashMap<ConnId, Vec<String>>,
}

// === impl Queues ===

impl Queues {
    pub fn new(config: QueueConfig) -> Queues {
        Queues {
            config,
            ..Queues::default()
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Rebuilds the state from stored messages after a restart. Messages keep their states and
    /// timestamps; in-flight ones time out normally. Records whose target no longer parses are
    /// skipped and returned, so the caller can log them.
    pub fn recover(
        &mut self,
        messages: Vec<StoredMessage>,
        parse: impl Fn(&Value) -> Option<Query>,
    ) -> Vec<StoredMessage> {
        let mut skipped = Vec::new();
        for msg in messages {
            let Some(query) = parse(&msg.target) else {
                skipped.push(msg);
                continue;
            };
            self.next_seq = self.next_seq.max(msg.seq + 1);
            self.next_record = self.next_record.max(msg.record + 1);
            let queue = self.queues.entry(msg.queue.clone()).or_default();
            queue.index(&msg);
            queue.entries.insert(
                msg.id.clone(),
                Entry {
                    msg,
                    query,
                    conn: None,
                },
            );
        }
        skipped
    }

    /// Prepares a new message at the back of the FIFO. It is not in the queue until
    /// [`Queues::insert`]: the caller first makes it durable.
    pub fn prepare(&mut self, new: NewMessage, id: String, now: u64) -> StoredMessage {
        let seq = self.next_seq;
        self.next_seq += 1;
        let record = self.next_record;
        self.next_record += 1;
        let NewMessage {
            queue,
            nonce,
            target,
            payload,
            trace,
        } = new;
        StoredMessage {
            id,
            queue,
            nonce,
            target,
            payload,
            enqueued_at: now,
            seq,
            record,
            deliveries: 0,
            last_consumer: None,
            state: MessageState::Ready,
            trace,
        }
    }

    /// Adds a durably stored message as ready and runs the dispatch pass.
    pub fn insert(
        &mut self,
        msg: StoredMessage,
        query: Query,
        matcher: &impl Matcher,
        now: u64,
    ) -> Effects {
        let name = msg.queue.clone();
        let queue = self.queues.entry(name.clone()).or_default();
        queue.index(&msg);
        queue.entries.insert(
            msg.id.clone(),
            Entry {
                msg,
                query,
                conn: None,
            },
        );
        self.dispatch(&name, matcher, now)
    }

    /// QUEUE_REQUEST: `waiter` wants one message (SPEC §8.4).
    pub fn request(
        &mut self,
        queue: &str,
        waiter: Waiter,
        matcher: &impl Matcher,
        now: u64,
    ) -> Effects {
        let q = self.queues.entry(queue.to_owned()).or_default();
        if !q.waiting.iter().any(|w| w.conn == waiter.conn) {
            q.waiting.push(waiter);
            let list = self.waiting_by_conn.entry(waiter.conn).or_default();
            if !list.iter().any(|n| n == queue) {
                list.push(queue.to_owned());
            }
        }
        self.dispatch(queue, matcher, now)
    }

    /// QUEUE_REQUEST_CANCEL: `conn` stops waiting on `queue`.
    pub fn cancel(&mut self, queue: &str, conn: ConnId) {
        if let Some(q) = self.queues.get_mut(queue) {
            q.waiting.retain(|w| w.conn != conn);
        }
        self.forget_waiting(conn, queue);
        self.drop_if_idle(queue);
    }

    /// QUEUE_ACK (SPEC §8.5): accepted when the message exists and `consumer` is its last
    /// consumer, whatever its state; the message is then deleted.
    pub fn ack(
        &mut self,
        queue: &str,
        id: &str,
        consumer: &ConsumerIdentity,
    ) -> Result<StoreOp, UnknownMessage> {
        let q = self.queues.get_mut(queue).ok_or(UnknownMessage)?;
        let accepted = q
            .entries
            .get(id)
            .is_some_and(|e| e.msg.last_consumer.as_ref() == Some(consumer));
        if !accepted {
            return Err(UnknownMessage);
        }
        let entry = q.remove(id).ok_or(UnknownMessage)?;
        self.drop_if_idle(queue);
        Ok(StoreOp::Delete {
            record: entry.msg.record,
        })
    }

    /// A connection went away: it stops waiting everywhere, and the messages in flight to it
    /// return to ready at their original FIFO position (SPEC §8.7).
    pub fn disconnect(&mut self, conn: ConnId, matcher: &impl Matcher, now: u64) -> Effects {
        let mut effects = Effects::default();
        self.waiting_by_conn.remove(&conn);
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            q.waiting.retain(|w| w.conn != conn);
            let returning: Vec<String> = q
                .entries
                .values()
                .filter(|e| {
                    e.conn == Some(conn) && matches!(e.msg.state, MessageState::InFlight { .. })
                })
                .map(|e| e.msg.id.clone())
                .collect();
            for id in &returning {
                if let Some(msg) = q.transition(id, MessageState::Ready) {
                    effects.store.push(StoreOp::Put(Box::new(msg)));
                }
            }
            if !returning.is_empty() {
                effects.absorb(self.dispatch(&name, matcher, now));
            }
            self.drop_if_idle(&name);
        }
        effects
    }

    /// Runs the dispatch pass on every queue that has both ready messages and waiting
    /// consumers: after a client registered, unregistered or changed its metadata.
    pub fn dispatch_all(&mut self, matcher: &impl Matcher, now: u64) -> Effects {
        let mut effects = Effects::default();
        let active: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.ready.is_empty() && !q.waiting.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        for name in active {
            effects.absorb(self.dispatch(&name, matcher, now));
        }
        effects
    }

    /// Applies the timers (SPEC §8.7): dead-lettered messages whose time is up go to the back of
    /// the FIFO; in-flight messages whose ack timed out are dead-lettered or parked. Dead →
    /// ready runs first, so no message makes both moves in one sweep.
    pub fn sweep(&mut self, matcher: &impl Matcher, now: u64) -> Effects {
        let mut effects = Effects::default();
        let config = self.config;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let mut requeued = false;
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            let revived: Vec<String> = q
                .dead
                .iter()
                .take_while(|(since, _)| since.saturating_add(config.dlq_time_ms) <= now)
                .map(|(_, id)| id.clone())
                .collect();
            for id in revived {
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(msg) = q.requeue(&id, seq, now) {
                    effects.store.push(StoreOp::Put(Box::new(msg)));
                    requeued = true;
                }
            }
            let expired: Vec<(String, u32)> = q
                .in_flight
                .iter()
                .take_while(|(at, _)| at.saturating_add(config.ack_timeout_ms) <= now)
                .filter_map(|(_, id)| q.entries.get(id).map(|e| (id.clone(), e.msg.deliveries)))
                .collect();
            for (id, deliveries) in expired {
                let next = if config.max_deliveries > 0 && deliveries >= config.max_deliveries {
                    MessageState::Parked { parked_at: now }
                } else {
                    MessageState::DeadLettered { dead_since: now }
                };
                if let Some(msg) = q.transition(&id, next) {
                    effects.store.push(StoreOp::Put(Box::new(msg)));
                }
            }
            if requeued {
                effects.absorb(self.dispatch(&name, matcher, now));
            }
        }
        effects
    }

    /// The dispatch pass of SPEC §8.6 over one queue.
    fn dispatch(&mut self, name: &str, matcher: &impl Matcher, now: u64) -> Effects {
        let mut effects = Effects::default();
        let Some(q) = self.queues.get_mut(name) else {
            return effects;
        };
        // Walk the FIFO with a cursor: delivering removes entries, and a pass with nobody
        // waiting must cost nothing however long the queue is.
        let mut cursor = 0;
        while !q.waiting.is_empty() {
            let Some((seq, id)) = q
                .ready
                .range(cursor..)
                .next()
                .map(|(s, id)| (*s, id.clone()))
            else {
                break;
            };
            cursor = seq + 1;
            let Some(entry) = q.entries.get(&id) else {
                continue;
            };
            let fallback;
            let target = if entry.query.optional && !matcher.any_match(&entry.query) {
                fallback = Query {
                    ops: Vec::new(),
                    ..entry.query.clone()
                };
                &fallback
            } else {
                &entry.query
            };
            let Some(pos) = q
                .waiting
                .iter()
                .position(|w| matcher.waiter_matches(*w, target))
            else {
                continue;
            };
            let waiter = q.waiting.remove(pos);
            let Some(identity) = matcher.identity(waiter) else {
                continue;
            };
            let Some(msg) = q.deliver(&id, waiter.conn, identity, now) else {
                continue;
            };
            effects.deliveries.push(Delivery {
                waiter,
                frame: delivery_frame(&msg),
            });
            effects.store.push(StoreOp::Put(Box::new(msg)));
            if let Some(list) = self.waiting_by_conn.get_mut(&waiter.conn) {
                list.retain(|n| n != name);
            }
        }
        effects
    }

    fn forget_waiting(&mut self, conn: ConnId, queue: &str) {
        if let Some(list) = self.waiting_by_conn.get_mut(&conn) {
            list.retain(|n| n != queue);
            if list.is_empty() {
                self.waiting_by_conn.remove(&conn);
            }
        }
    }

    /// An empty queue with nobody waiting is forgotten; it reappears on next use.
    fn drop_if_idle(&mut self, name: &str) {
        if self
            .queues
            .get(name)
            .is_some_and(|q| q.entries.is_empty() && q.waiting.is_empty())
        {
            self.queues.remove(name);
        }
    }

    /// The queues a connection waits on, in request order.
    pub fn waiting_on(&self, conn: ConnId) -> &[String] {
        self.waiting_by_conn.get(&conn).map_or(&[], Vec::as_slice)
    }

    /// Statistics for every known queue, by name.
    pub fn stats(&self) -> Vec<QueueStats> {
        self.queues.iter().map(|(n, q)| q.stats(n)).collect()
    }

    /// Statistics for one queue, if it is known.
    pub fn stats_of(&self, name: &str) -> Option<QueueStats> {
        self.queues.get(name).map(|q| q.stats(name))
    }

    /// Up to `limit` parked messages, oldest parked first (SPEC §9.9).
    pub fn parked(&self, name: &str, limit: usize) -> Vec<&StoredMessage> {
        self.queues.get(name).map_or_else(Vec::new, |q| {
            q.parked
                .iter()
                .take(limit)
                .filter_map(|(_, _, id)| q.entries.get(id).map(|e| &e.msg))
                .collect()
        })
    }

    /// Replays parked messages (all, or the given ids): each goes to the back of the FIFO as
    /// ready with `deliveries := 0`. Returns the replayed ids, or `None` when an id given is
    /// unknown or not parked.
    pub fn replay(
        &mut self,
        name: &str,
        ids: Option<&[String]>,
        matcher: &impl Matcher,
        now: u64,
    ) -> Option<(Vec<String>, Effects)> {
        let q = self.queues.get_mut(name)?;
        let chosen = q.select_parked(ids)?;
        let mut effects = Effects::default();
        for id in &chosen {
            let seq = self.next_seq;
            self.next_seq += 1;
            if let Some(entry) = q.entries.get_mut(id) {
                entry.msg.deliveries = 0;
            }
            if let Some(msg) = q.requeue(id, seq, now) {
                effects.store.push(StoreOp::Put(Box::new(msg)));
            }
        }
        effects.absorb(self.dispatch(name, matcher, now));
        Some((chosen, effects))
    }

    /// Deletes parked messages (all, or the given ids). `None` when an id given is unknown or
    /// not parked.
    pub fn delete_parked(
        &mut self,
        name: &str,
        ids: Option<&[String]>,
    ) -> Option<(Vec<String>, Vec<StoreOp>)> {
        let q = self.queues.get_mut(name)?;
        let chosen = q.select_parked(ids)?;
        let ops = chosen
            .iter()
            .filter_map(|id| q.remove(id))
            .map(|e| StoreOp::Delete {
                record: e.msg.record,
            })
            .collect();
        self.drop_if_idle(name);
        Some((chosen, ops))
    }
}

/// The QUEUE delivery frame (SPEC §8.6). Each delivery is a span of its own, a child of the
/// QUEUE's span through the stored context (SPEC §8.1, §11); the frame carries its context,
/// so a redelivery is a second child of the same QUEUE.
fn delivery_frame(msg: &StoredMessage) -> OutFrame {
    let (span, trace) = crate::trace::traced_span(msg.trace.as_ref(), || {
        tracing::info_span!(
            target: crate::trace::SPAN_TARGET,
            parent: None,
            "queue.deliver",
            queue = %msg.queue,
            id = %msg.id,
            delivery = i64::from(msg.deliveries),
            app = tracing::field::Empty,
            client = tracing::field::Empty,
        )
    });
    if let Some(consumer) = msg.last_consumer.as_ref().filter(|_| !span.is_disabled()) {
        span.record("app", consumer.application_id.as_str());
        span.record("client", consumer.client_id.as_str());
    }
    OutFrame::delivery(
        "QUEUE",
        Out::Value(msg.nonce.clone()),
        Out::Map(vec![
            ("queue", Out::str(msg.queue.clone())),
            ("id", Out::str(msg.id.clone())),
            ("payload", Out::Value(msg.payload.clone())),
        ]),
    )
    .with_trace(trace)
}

// === impl Queue ===

impl Queue {
    /// Files a message under the index of its state.
    fn index(&mut self, msg: &StoredMessage) {
        let id = msg.id.clone();
        match msg.state {
            MessageState::Ready => {
                self.ready.insert(msg.seq, id);
            }
            MessageState::InFlight { delivered_at } => {
                self.in_flight.insert((delivered_at, id));
            }
            MessageState::DeadLettered { dead_since } => {
                self.dead.insert((dead_since, id));
            }
            MessageState::Parked { parked_at } => {
                self.parked.insert((parked_at, msg.seq, id));
            }
        }
    }

    fn unindex(&mut self, msg: &StoredMessage) {
        match msg.state {
            MessageState::Ready => {
                self.ready.remove(&msg.seq);
            }
            MessageState::InFlight { delivered_at } => {
                self.in_flight.remove(&(delivered_at, msg.id.clone()));
            }
            MessageState::DeadLettered { dead_since } => {
                self.dead.remove(&(dead_since, msg.id.clone()));
            }
            MessageState::Parked { parked_at } => {
                self.parked.remove(&(parked_at, msg.seq, msg.id.clone()));
            }
        }
    }

    /// Moves a message to `state`, keeping its FIFO position; returns the new record.
    fn transition(&mut self, id: &str, state: MessageState) -> Option<StoredMessage> {
        let mut msg = self.entries.get(id)?.msg.clone();
        self.unindex(&msg);
        msg.state = state;
        self.index(&msg);
        let entry = self.entries.get_mut(id)?;
        if !matches!(state, MessageState::InFlight { .. }) {
            entry.conn = None;
        }
        entry.msg = msg.clone();
        Some(msg)
    }

    /// Back of the FIFO as ready, re-queued now.
    fn requeue(&mut self, id: &str, seq: u64, now: u64) -> Option<StoredMessage> {
        let old = self.entries.get(id)?.msg.clone();
        self.unindex(&old);
        let entry = self.entries.get_mut(id)?;
        entry.msg.seq = seq;
        entry.msg.enqueued_at = now;
        entry.msg.state = MessageState::Ready;
        entry.conn = None;
        let msg = entry.msg.clone();
        self.index(&msg);
        Some(msg)
    }

    fn deliver(
        &mut self,
        id: &str,
        conn: ConnId,
        consumer: ConsumerIdentity,
        now: u64,
    ) -> Option<StoredMessage> {
        let entry = self.entries.get_mut(id)?;
        entry.msg.deliveries = entry.msg.deliveries.saturating_add(1);
        entry.msg.last_consumer = Some(consumer);
        let msg = self.transition(id, MessageState::InFlight { delivered_at: now })?;
        if let Some(entry) = self.entries.get_mut(id) {
            entry.conn = Some(conn);
        }
        Some(msg)
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.unindex(&entry.msg);
        Some(entry)
    }

    /// All parked ids, or exactly the given ones if every one is parked.
    fn select_parked(&self, ids: Option<&[String]>) -> Option<Vec<String>> {
        match ids {
            None => Some(self.parked.iter().map(|(_, _, id)| id.clone()).collect()),
            Some(ids) => ids
                .iter()
                .map(|id| {
                    self.entries
                        .get(id)
                        .filter(|e| matches!(e.msg.state, MessageState::Parked { .. }))
                        .map(|_| id.clone())
                })
                .collect(),
        }
    }

    fn stats(&self, name: &str) -> QueueStats {
        QueueStats {
            name: name.to_owned(),
            ready: self.ready.len(),
            in_flight: self.in_flight.len(),
            dead_lettered: self.dead.len(),
            parked: self.parked.len(),
            waiting_consumers: self.waiting.len(),
        }
    }
}

#[cfg(test)]
mod tests;
