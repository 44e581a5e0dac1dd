//! The queue engine: the state machine, its journal and the registry, wired together.
//!
//! Locks are always taken in the order registry → queue state, and every change is handed to
//! the journal while the queue state is still locked, so the journal sees changes in the order
//! memory saw them.
//!
//! A QUEUE is confirmed only from the journal's continuation, after its record is durable; the
//! message enters the FIFO at the same moment, so nothing is ever delivered that was not first
//! stored.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use super::journal::Journal;
use super::{
    ConsumerIdentity, Delivery, Matcher, NewMessage, QueueConfig, QueueStats, QueueStore, Queues,
    StoreError, StoreOp, StoredMessage, UnknownMessage, Waiter,
};
use crate::clock::now_ms;
use crate::error::Invalid;
use crate::frame::{Out, OutFrame, Outgoing};
use crate::query::{Query, QueryLimits};
use crate::registry::Registry;
use crate::session::{ConnId, Outbox};

/// Resolves when everything a pipelined frame caused has happened.
pub type Completion = oneshot::Receiver<()>;

/// Queues of one node.
pub struct QueueEngine {
    registry: Arc<RwLock<Registry>>,
    state: Mutex<Queues>,
    journal: Journal,
}

/// Answers the dispatch pass's questions from the registry.
struct RegistryMatcher<'a>(&'a Registry);

impl Matcher for RegistryMatcher<'_> {
    fn waiter_matches(&self, waiter: Waiter, query: &Query) -> bool {
        self.0.is_conn_matching(waiter.slot, waiter.conn, query)
    }

    fn any_match(&self, query: &Query) -> bool {
        self.0.any_match(query)
    }

    fn identity(&self, waiter: Waiter) -> Option<ConsumerIdentity> {
        self.0
            .get(waiter.slot)
            .filter(|r| r.conn_id == waiter.conn)
            .map(|r| ConsumerIdentity {
                application_id: r.application_id.clone(),
                client_id: r.client_id.clone(),
            })
    }
}

// === impl QueueEngine ===

impl QueueEngine {
    /// Loads every stored message and starts the journal.
    pub fn start(
        config: QueueConfig,
        store: Arc<dyn QueueStore>,
        registry: Arc<RwLock<Registry>>,
        limits: QueryLimits,
    ) -> Result<QueueEngine, StoreError> {
        let stored = store.load()?;
        let count = stored.len();
        let mut state = Queues::new(config);
        let skipped = state.recover(stored, |target| Query::parse(target, limits).ok());
        for msg in &skipped {
            tracing::error!(queue = %msg.queue, id = %msg.id, "stored message has an unparseable target; ignoring it");
        }
        if count > 0 {
            tracing::info!(
                messages = count - skipped.len(),
                "recovered queued messages"
            );
        }
        let journal = Journal::start(store)
            .map_err(|e| StoreError(format!("cannot start the queue journal: {e}")))?;
        Ok(QueueEngine {
            registry,
            state: Mutex::new(state),
            journal,
        })
    }

    pub fn config(&self) -> QueueConfig {
        *self.state.lock().config()
    }

    /// QUEUE (SPEC §8.3): stores the message, then — in journal order — makes it ready, runs
    /// the dispatch pass and confirms to the producer, or answers `queue unavailable`.
    /// `query` is the parsed `new.target`.
    pub fn push(
        self: &Arc<Self>,
        producer: Arc<dyn Outbox>,
        new: NewMessage,
        query: Query,
    ) -> Completion {
        let (done, completion) = oneshot::channel();
        let id = uuid::Uuid::new_v4().to_string();
        // From submission to the confirm: the durable write, in the QUEUE's dispatch span.
        let span = crate::trace::child_span(|| {
            tracing::info_span!(
                target: crate::trace::SPAN_TARGET,
                "queue.confirm",
                queue = %new.queue,
                id = %id,
                outcome = tracing::field::Empty,
            )
        });
        let mut state = self.state.lock();
        let msg = state.prepare(new, id, now_ms());
        let engine = self.clone();
        let record = StoreOp::Put(Box::new(msg.clone()));
        self.journal.submit_then(vec![record], move |result| {
            let _entered = span.enter();
            let confirm = match result {
                Ok(()) => {
                    span.record("outcome", "confirmed");
                    let confirm = confirm_frame(&msg);
                    engine.apply(|state, matcher| state.insert(msg, query, matcher, now_ms()));
                    confirm
                }
                Err(error) => {
                    span.record("outcome", "unavailable");
                    tracing::warn!(%error, queue = %msg.queue, "QUEUE could not be stored");
                    Invalid::QueueUnavailable {
                        queue: msg.queue,
                        nonce: msg.nonce,
                    }
                    .to_frame()
                }
            };
            producer.push(&Outgoing::new(confirm));
            let _ = done.send(());
        });
        drop(state);
        completion
    }

    /// Sends `frame` after every continuation submitted so far: the reply to a QUEUE frame
    /// that failed validation must not overtake the confirms of earlier ones.
    pub fn reply_in_order(&self, outbox: Arc<dyn Outbox>, frame: OutFrame) -> Completion {
        let (done, completion) = oneshot::channel();
        self.journal.submit_then(Vec::new(), move |_| {
            outbox.push(&Outgoing::new(frame));
            let _ = done.send(());
        });
        completion
    }

    /// QUEUE_REQUEST.
    pub fn request(&self, queue: &str, waiter: Waiter) {
        self.apply(|state, matcher| state.request(queue, waiter, matcher, now_ms()));
    }

    /// QUEUE_REQUEST_CANCEL.
    pub fn cancel(&self, queue: &str, conn: ConnId) {
        self.state.lock().cancel(queue, conn);
    }

    /// QUEUE_ACK.
    pub fn ack(
        &self,
        queue: &str,
        id: &str,
        consumer: &ConsumerIdentity,
    ) -> Result<(), UnknownMessage> {
        let mut state = self.state.lock();
        let op = state.ack(queue, id, consumer)?;
        self.journal.submit(vec![op]);
        Ok(())
    }

    /// A connection's cleanup: it stops waiting, its in-flight messages return at once, and
    /// queues whose `optional` fallbacks may have changed get a dispatch pass.
    pub fn disconnected(&self, conn: ConnId) {
        self.apply(|state, matcher| {
            let now = now_ms();
            let mut effects = state.disconnect(conn, matcher, now);
            let more = state.dispatch_all(matcher, now);
            effects.deliveries.extend(more.deliveries);
            effects.store.extend(more.store);
            effects
        });
    }

    /// A client registered.
    pub fn client_registered(&self) {
        self.apply(|state, matcher| state.dispatch_all(matcher, now_ms()));
    }

    /// A client's metadata changed: if it waits anywhere, it may now be eligible.
    pub fn metadata_changed(&self, conn: ConnId) {
        if self.state.lock().waiting_on(conn).is_empty() {
            return;
        }
        self.apply(|state, matcher| state.dispatch_all(matcher, now_ms()));
    }

    /// Applies the timers; the node calls this every `sweep_interval_ms`.
    pub fn sweep(&self) {
        self.apply(|state, matcher| state.sweep(matcher, now_ms()));
    }

    /// The queues a connection waits on, in request order.
    pub fn waiting_on(&self, conn: ConnId) -> Vec<String> {
        self.state.lock().waiting_on(conn).to_vec()
    }

    pub fn stats(&self) -> Vec<QueueStats> {
        self.state.lock().stats()
    }

    pub fn stats_of(&self, queue: &str) -> Option<QueueStats> {
        self.state.lock().stats_of(queue)
    }

    /// Up to `limit` parked messages, oldest parked first.
    pub fn parked(&self, queue: &str, limit: usize) -> Vec<StoredMessage> {
        self.state
            .lock()
            .parked(queue, limit)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Replays parked messages (all, or `ids`); `None` if an id is unknown or not parked.
    pub fn replay(&self, queue: &str, ids: Option<&[String]>) -> Option<Vec<String>> {
        let mut replayed = None;
        self.apply(
            |state, matcher| match state.replay(queue, ids, matcher, now_ms()) {
                Some((ids, effects)) => {
                    replayed = Some(ids);
                    effects
                }
                None => Default::default(),
            },
        );
        replayed
    }

    /// Deletes parked messages (all, or `ids`); `None` if an id is unknown or not parked.
    pub fn delete_parked(&self, queue: &str, ids: Option<&[String]>) -> Option<Vec<String>> {
        let mut state = self.state.lock();
        let (deleted, ops) = state.delete_parked(queue, ids)?;
        self.journal.submit(ops);
        Some(deleted)
    }

    /// Waits until everything submitted to the journal so far is committed (shutdown).
    pub async fn flush(&self) {
        let (done, completion) = oneshot::channel();
        self.journal.submit_then(Vec::new(), move |_| {
            let _ = done.send(());
        });
        let _ = completion.await;
    }

    /// Runs `change` on the queue state with the registry as matcher, persists what it changed
    /// (in order, under the lock), then hands out its deliveries.
    fn apply(&self, change: impl FnOnce(&mut Queues, &RegistryMatcher<'_>) -> super::Effects) {
        let registry = self.registry.read();
        let matcher = RegistryMatcher(&registry);
        let effects = {
            let mut state = self.state.lock();
            let effects = change(&mut state, &matcher);
            self.journal.submit(effects.store);
            effects.deliveries
        };
        deliver(&registry, effects);
    }
}

fn deliver(registry: &Registry, deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        let outbox = registry
            .get(delivery.waiter.slot)
            .filter(|r| r.conn_id == delivery.waiter.conn)
            .map(|r| r.outbox.clone());
        // A consumer that went away meanwhile gets the message back through its cleanup.
        if let Some(outbox) = outbox {
            outbox.push(&Outgoing::new(delivery.frame));
        }
    }
}

/// QUEUE_CONFIRM (SPEC §8.3).
fn confirm_frame(msg: &StoredMessage) -> OutFrame {
    OutFrame::dispatch(
        "QUEUE_CONFIRM",
        Out::Map(vec![
            ("queue", Out::str(msg.queue.clone())),
            ("nonce", Out::Value(msg.nonce.clone())),
            ("id", Out::str(msg.id.clone())),
        ]),
    )
    .with_trace(msg.trace.clone())
}
