//! The connection task: one per client. It owns the socket, writes what callers queue (in
//! batches, one flush per batch), answers the server's heartbeat schedule, matches answers to
//! waiting callers, feeds the message streams, and reconnects when the connection ends.
//!
//! What survives a reconnect: the metadata (initial, plus every update), the consumers (their
//! QUEUE_REQUESTs are sent again), pending requests (their replies can still arrive: the inbox
//! is restored with the metadata) and the commands callers queued meanwhile. What does not:
//! calls waiting for an answer on the lost connection (publishes, queries, confirmed sends),
//! which fail with [`Error::ConnectionLost`] because they may or may not have taken effect.

mod inbound;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::codec::{Envelope, OutFrame};
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::session::{self, Session, Settings};
use crate::streams::QueueMessage;
use crate::transport::{CLOSE_GRACE, Incoming, Reader, Writer};
use crate::types::{ClientInfo, ClientUpdate, Message, QueueConfirm, State};

/// Commands taken from the queue per batch (one flush each).
const BATCH: usize = 256;

/// What callers ask the connection task to do.
pub(crate) enum Command {
    /// A frame nobody waits an answer for (SEND, BROADCAST, QUEUE_ACK, a reply).
    Frame(OutFrame),
    /// A SEND/BROADCAST whose outcome is learnt from the next heartbeat ack: an op 3 naming
    /// its nonce before the ack fails it.
    Confirmed {
        frame: OutFrame,
        t: &'static str,
        nonce: Value,
        reply: oneshot::Sender<Result<()>>,
    },
    Request {
        frame: OutFrame,
        id: String,
        reply: oneshot::Sender<Result<Message>>,
    },
    Publish {
        frame: OutFrame,
        nonce: String,
        reply: oneshot::Sender<Result<QueueConfirm>>,
    },
    QueryNodes {
        frame: OutFrame,
        nonce: String,
        reply: oneshot::Sender<Result<Vec<ClientInfo>>>,
    },
    UpdateMetadata {
        update: Metadata,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Answered once the server has processed every frame sent before it.
    Sync {
        reply: oneshot::Sender<Result<()>>,
    },
    Consume {
        queue: String,
        slot: Slot,
    },
    StopConsuming {
        queue: String,
        id: u64,
    },
}

/// A consumer of one queue, as the connection task sees it.
pub(crate) struct Slot {
    /// Tells a replaced consumer's late StopConsuming from the current one's.
    pub id: u64,
    pub tx: mpsc::Sender<QueueMessage>,
    /// Set when the stream was full after a delivery: the consumer wakes the task
    /// ([`Shared::demand`]) when it takes a message, and a new request goes out.
    pub starved: Arc<AtomicBool>,
    /// A QUEUE_REQUEST is outstanding on the current connection.
    pub requested: bool,
}

/// State shared by the client handles, the streams and the connection task.
pub(crate) struct Shared {
    pub state: watch::Sender<State>,
    /// Cancelled by `Client::close`.
    pub closing: CancellationToken,
    /// A consumer made room in its stream.
    pub demand: Notify,
    /// Whether the messages stream was taken: until it is, messages that do not fit are
    /// dropped instead of stopping the reads.
    pub messages_taken: AtomicBool,
    pub updates_taken: AtomicBool,
}

/// Something waiting for the next heartbeat ack.
enum Sync {
    /// The periodic heartbeat.
    Auto,
    Confirm {
        t: &'static str,
        nonce: Value,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Metadata {
        update: Metadata,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Barrier {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A delivery waiting for room in its stream; the task stops reading until it fits.
enum Held {
    Message(Message),
    Update(ClientUpdate),
}

/// Why a connection ended.
enum Ended {
    /// `Client::close`, or every handle dropped: closed gracefully.
    Closed,
    Lost {
        reason: String,
        goodbye: bool,
    },
}

pub(crate) struct Driver {
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    /// Lets queue messages ack without keeping the task alive once every handle is gone.
    cmd_tx: mpsc::WeakSender<Command>,
    /// The latest metadata: the initial document plus every update the server accepted (or
    /// that was in flight when the connection broke). Sent at every identify.
    metadata: Metadata,
    requests: HashMap<String, oneshot::Sender<Result<Message>>>,
    publishes: HashMap<String, oneshot::Sender<Result<QueueConfirm>>>,
    queries: HashMap<String, oneshot::Sender<Result<Vec<ClientInfo>>>>,
    syncs: VecDeque<Sync>,
    consumers: HashMap<String, Slot>,
    messages_tx: mpsc::Sender<Message>,
    updates_tx: mpsc::Sender<ClientUpdate>,
    held: Option<Held>,
    /// The op 7 reason or op 8 error of the current connection, once received.
    farewell: Option<(String, bool)>,
}

impl Driver {
    pub fn new(
        settings: Arc<Settings>,
        shared: Arc<Shared>,
        cmd_rx: mpsc::Receiver<Command>,
        cmd_tx: mpsc::WeakSender<Command>,
        metadata: Metadata,
        messages_tx: mpsc::Sender<Message>,
        updates_tx: mpsc::Sender<ClientUpdate>,
    ) -> Driver {
        Driver {
            settings,
            shared,
            cmd_rx,
            cmd_tx,
            metadata,
            requests: HashMap::new(),
            publishes: HashMap::new(),
            queries: HashMap::new(),
            syncs: VecDeque::new(),
            consumers: HashMap::new(),
            messages_tx,
            updates_tx,
            held: None,
            farewell: None,
        }
    }

    /// Runs until the client is closed or gives up.
    pub async fn run(mut self, first: Session) {
        let mut session = first;
        let final_error = loop {
            match self.serve(session).await {
                Ended::Closed => break None,
                Ended::Lost { reason, goodbye } => {
                    tracing::info!(%reason, "ganglion connection lost");
                    self.connection_lost(&reason);
                    if !self.settings.reconnect.enabled {
                        break Some(reason);
                    }
                    match self.reconnect(goodbye).await {
                        Ok(next) => session = next,
                        Err(reason) => break reason,
                    }
                }
            }
        };
        self.finish(final_error);
    }

    /// Serves one identified connection until it ends.
    async fn serve(&mut self, session: Session) -> Ended {
        let Session {
            mut reader,
            mut writer,
            heartbeat,
            restricted,
        } = session;
        self.farewell = None;
        self.shared.state.send_modify(|state| {
            state.connected = true;
            state.restricted = restricted;
            state.sessions += 1;
            state.reconnect_attempts = 0;
            state.last_reconnect_error = None;
        });
        // Consumers of the previous connection ask again.
        self.refill(&mut writer);
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if writer.is_dirty()
                && let Err(reason) = writer.flush().await
            {
                return self.lost(format!("write failed: {reason}"));
            }
            tokio::select! {
                () = self.shared.closing.cancelled() => {
                    self.close_gracefully(&mut reader, &mut writer).await;
                    return Ended::Closed;
                }
                fits = held_fits(&self.held, &self.messages_tx, &self.updates_tx), if self.held.is_some() => {
                    self.release_held(fits);
                }
                incoming = reader.next(), if self.held.is_none() => match incoming {
                    Some(Ok(Incoming::Frame(body))) => self.on_frame(&body, &mut writer),
                    Some(Ok(Incoming::Close(code))) => {
                        // Polling once more sends the websocket's answer to the close.
                        let _ = tokio::time::timeout(CLOSE_GRACE, reader.next()).await;
                        let code = code.map_or_else(|| "no code".to_owned(), |c| c.to_string());
                        return self.lost(format!("closed by the server ({code})"));
                    }
                    Some(Err(reason)) => return self.lost(reason),
                    None => return self.lost("closed by the server".to_owned()),
                },
                n = self.cmd_rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        // Every handle is gone.
                        self.close_gracefully(&mut reader, &mut writer).await;
                        return Ended::Closed;
                    }
                    for command in batch.drain(..) {
                        self.on_command(command, &mut writer);
                    }
                }
                _ = ticker.tick() => {
                    // An ack still owed from the last tick means a dead connection, unless the
                    // reads are paused for a full stream (the ack is unread, not missing).
                    if self.held.is_none() && self.syncs.iter().any(|s| matches!(s, Sync::Auto)) {
                        return self.lost(format!("no heartbeat ack within {heartbeat:?}"));
                    }
                    self.push_sync(&mut writer, Sync::Auto);
                    self.sweep_abandoned();
                    self.refill(&mut writer);
                }
                () = self.shared.demand.notified() => self.refill(&mut writer),
            }
        }
    }

    /// The connection ended: the op 7/op 8 received before the close says why, if any.
    fn lost(&mut self, transport_reason: String) -> Ended {
        match self.farewell.take() {
            Some((reason, goodbye)) => Ended::Lost { reason, goodbye },
            None => Ended::Lost {
                reason: transport_reason,
                goodbye: false,
            },
        }
    }

    /// Dials again with jittered exponential backoff until identified, closed, or out of
    /// attempts. After a goodbye the first attempt is immediate (the node asked us to move).
    async fn reconnect(&mut self, goodbye: bool) -> Result<Session, Option<String>> {
        let policy = self.settings.reconnect.clone();
        let mut attempt: u32 = 0;
        loop {
            let delay = if attempt == 0 && goodbye {
                Duration::ZERO
            } else {
                policy.delay(attempt)
            };
            tokio::select! {
                () = self.shared.closing.cancelled() => return Err(None),
                () = tokio::time::sleep(delay) => {}
            }
            let opened = tokio::select! {
                () = self.shared.closing.cancelled() => return Err(None),
                opened = session::open(&self.settings, &self.metadata) => opened,
            };
            match opened {
                Ok(session) => return Ok(session),
                Err(error) if session::is_retryable(&error) => {
                    attempt = attempt.saturating_add(1);
                    tracing::debug!(%error, attempt, "reconnect failed; retrying");
                    self.shared.state.send_modify(|state| {
                        state.reconnect_attempts = attempt;
                        state.last_reconnect_error = Some(error.to_string());
                    });
                    if policy.max_attempts.is_some_and(|max| attempt >= max) {
                        return Err(Some(format!(
                            "gave up after {attempt} reconnect attempts: {error}"
                        )));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reconnect refused; the client closes");
                    return Err(Some(error.to_string()));
                }
            }
        }
    }

    /// Fails what was waiting on the lost connection; keeps what can continue on the next.
    fn connection_lost(&mut self, reason: &str) {
        self.shared.state.send_modify(|state| {
            state.connected = false;
            state.last_disconnect = Some(reason.to_owned());
        });
        for sync in self.syncs.drain(..) {
            match sync {
                Sync::Auto => {}
                Sync::Barrier { reply } => {
                    let _ = reply.send(Err(Error::ConnectionLost));
                }
                Sync::Confirm { reply, .. } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Error::ConnectionLost));
                    }
                }
                // Validated before it was sent; the next identify carries it.
                Sync::Metadata { update, reply } => {
                    self.metadata.merge(&update);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
        for (_, reply) in self.publishes.drain() {
            let _ = reply.send(Err(Error::ConnectionLost));
        }
        for (_, reply) in self.queries.drain() {
            let _ = reply.send(Err(Error::ConnectionLost));
        }
        for slot in self.consumers.values_mut() {
            slot.requested = false;
        }
    }

    /// The client is done: every waiter learns it, the streams end.
    fn finish(mut self, error: Option<String>) {
        if let Some(error) = &error {
            tracing::warn!(%error, "ganglion client closed");
        }
        for sync in self.syncs.drain(..) {
            if let Sync::Confirm {
                reply: Some(reply), ..
            }
            | Sync::Metadata {
                reply: Some(reply), ..
            }
            | Sync::Barrier { reply } = sync
            {
                let _ = reply.send(Err(Error::Closed));
            }
        }
        for (_, reply) in self.publishes.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        for (_, reply) in self.queries.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        for (_, reply) in self.requests.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        // Commands still queued get their answer too.
        self.cmd_rx.close();
        while let Ok(command) = self.cmd_rx.try_recv() {
            reject(command);
        }
        self.shared.state.send_modify(|state| {
            state.connected = false;
            state.closed = true;
            if error.is_some() {
                state.last_disconnect = error;
            }
        });
    }

    /// Sends what callers queued before the close, waits (bounded) for the answers still
    /// owed, then closes the connection the polite way.
    async fn close_gracefully(&mut self, reader: &mut Reader, writer: &mut Writer) {
        while let Ok(command) = self.cmd_rx.try_recv() {
            self.on_command(command, writer);
        }
        let deadline = Instant::now() + self.settings.close_timeout;
        if writer.flush().await.is_ok() {
            while self.owes_answers() {
                match tokio::time::timeout_at(deadline, reader.next()).await {
                    Ok(Some(Ok(Incoming::Frame(body)))) => {
                        self.on_frame(&body, writer);
                        if writer.flush().await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        writer.close().await;
        // Wait for the server's side of the close (its close frame, or EOF).
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(Incoming::Frame(_))) = reader.next().await {}
        })
        .await;
    }

    fn owes_answers(&self) -> bool {
        !self.publishes.is_empty()
            || !self.queries.is_empty()
            || self.syncs.iter().any(|s| !matches!(s, Sync::Auto))
    }

    /// Forgets waiters whose caller gave up (a request that timed out, a dropped future).
    fn sweep_abandoned(&mut self) {
        self.requests.retain(|_, reply| !reply.is_closed());
        self.publishes.retain(|_, reply| !reply.is_closed());
        self.queries.retain(|_, reply| !reply.is_closed());
    }

    // === outbound ===

    fn on_command(&mut self, command: Command, writer: &mut Writer) {
        match command {
            Command::Frame(frame) => writer.push(frame),
            Command::Confirmed {
                frame,
                t,
                nonce,
                reply,
            } => {
                writer.push(frame);
                self.push_sync(
                    writer,
                    Sync::Confirm {
                        t,
                        nonce,
                        reply: Some(reply),
                    },
                );
            }
            Command::Request { frame, id, reply } => {
                self.requests.insert(id, reply);
                writer.push(frame);
            }
            Command::Publish {
                frame,
                nonce,
                reply,
            } => {
                self.publishes.insert(nonce, reply);
                writer.push(frame);
            }
            Command::QueryNodes {
                frame,
                nonce,
                reply,
            } => {
                self.queries.insert(nonce, reply);
                writer.push(frame);
            }
            Command::UpdateMetadata { update, reply } => {
                match self.settings.codec.encode(&Envelope {
                    op: 4,
                    t: Some("UPDATE_METADATA"),
                    d: &update,
                }) {
                    Ok(frame) => {
                        writer.push(frame);
                        self.push_sync(
                            writer,
                            Sync::Metadata {
                                update,
                                reply: Some(reply),
                            },
                        );
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Sync { reply } => self.push_sync(writer, Sync::Barrier { reply }),
            Command::Consume { queue, slot } => {
                self.consumers.insert(queue, slot);
                self.refill(writer);
            }
            Command::StopConsuming { queue, id } => {
                if self.consumers.get(&queue).is_some_and(|slot| slot.id == id) {
                    self.consumers.remove(&queue);
                    self.push_queue_event(writer, "QUEUE_REQUEST_CANCEL", &queue);
                }
            }
        }
    }

    /// Writes a heartbeat and remembers what its ack settles.
    fn push_sync(&mut self, writer: &mut Writer, sync: Sync) {
        writer.push(self.settings.heartbeat_frame.clone());
        self.syncs.push_back(sync);
    }

    fn push_queue_event(&self, writer: &mut Writer, t: &'static str, queue: &str) {
        #[derive(Serialize)]
        struct QueueName<'a> {
            queue: &'a str,
        }
        match self.settings.codec.encode(&Envelope {
            op: 4,
            t: Some(t),
            d: QueueName { queue },
        }) {
            Ok(frame) => writer.push(frame),
            Err(error) => tracing::warn!(%error, queue, t, "cannot encode a queue event"),
        }
    }

    /// Sends a QUEUE_REQUEST for every consumer that has room and none outstanding; drops
    /// consumers whose stream is gone.
    fn refill(&mut self, writer: &mut Writer) {
        let mut gone = Vec::new();
        let mut wanted = Vec::new();
        for (queue, slot) in &mut self.consumers {
            if slot.tx.is_closed() {
                gone.push(queue.clone());
                continue;
            }
            if slot.requested {
                continue;
            }
            let mut room = slot.tx.capacity() > 0;
            if !room {
                // Re-checked after raising the flag: a message taken in between is not missed.
                slot.starved.store(true, Ordering::SeqCst);
                room = slot.tx.capacity() > 0;
            }
            if room {
                slot.starved.store(false, Ordering::SeqCst);
                slot.requested = true;
                wanted.push(queue.clone());
            }
        }
        for queue in gone {
            self.consumers.remove(&queue);
            self.push_queue_event(writer, "QUEUE_REQUEST_CANCEL", &queue);
        }
        for queue in wanted {
            self.push_queue_event(writer, "QUEUE_REQUEST", &queue);
        }
    }
}

/// Resolves when the held delivery fits its stream (`false` when the stream is gone).
async fn held_fits(
    held: &Option<Held>,
    messages: &mpsc::Sender<Message>,
    updates: &mpsc::Sender<ClientUpdate>,
) -> bool {
    match held {
        Some(Held::Message(_)) => messages.reserve().await.is_ok(),
        Some(Held::Update(_)) => updates.reserve().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Answers a command that will never run.
fn reject(command: Command) {
    match command {
        Command::Confirmed { reply, .. }
        | Command::UpdateMetadata { reply, .. }
        | Command::Sync { reply } => {
            let _ = reply.send(Err(Error::Closed));
        }
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(Error::Closed));
        }
        Command::Publish { reply, .. } => {
            let _ = reply.send(Err(Error::Closed));
        }
        Command::QueryNodes { reply, .. } => {
            let _ = reply.send(Err(Error::Closed));
        }
        Command::Frame(_) | Command::Consume { .. } | Command::StopConsuming { .. } => {}
    }
}
