//! The streams a client hands out: messages, client updates, and queue consumers with their
//! messages to acknowledge.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::codec::{Codec, Envelope};
use crate::driver::{Command, Shared};
use crate::error::{Error, Result};
use crate::types::{ClientUpdate, Message};

/// SEND and BROADCAST deliveries (replies to [`crate::Client::request`] are not in it).
/// Ends when the client closes.
pub struct Messages {
    pub(crate) rx: mpsc::Receiver<Message>,
}

impl Messages {
    /// The next message, or `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message that has already arrived, if any.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Waits for at least one message, then appends up to `limit` that have arrived to
    /// `buffer`; returns how many (0 once the client is closed). Cheaper per message than
    /// [`Messages::recv`] for consumers of many small messages.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Message>, limit: usize) -> usize {
        self.rx.recv_many(buffer, limit).await
    }
}

impl Stream for Messages {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

/// CLIENT_CONNECTED / CLIENT_DISCONNECTED events. Ends when the client closes.
pub struct ClientUpdates {
    pub(crate) rx: mpsc::Receiver<ClientUpdate>,
}

impl ClientUpdates {
    pub async fn recv(&mut self) -> Option<ClientUpdate> {
        self.rx.recv().await
    }

    /// An event that has already arrived, if any.
    pub fn try_recv(&mut self) -> Option<ClientUpdate> {
        self.rx.try_recv().ok()
    }
}

impl Stream for ClientUpdates {
    type Item = ClientUpdate;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientUpdate>> {
        self.rx.poll_recv(cx)
    }
}

/// The messages of one queue, for this client. Each message taken from the stream makes
/// room for the next, which the client then requests (one QUEUE_REQUEST per message, SPEC
/// §8.4); up to `prefetch` delivered messages wait in the stream. Dropping the consumer
/// cancels its request. Messages taken but never acked come back after the server's ack
/// timeout.
pub struct Consumer {
    pub(crate) queue: String,
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<QueueMessage>,
    pub(crate) starved: Arc<AtomicBool>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) cmd_tx: mpsc::Sender<Command>,
    pub(crate) active: Arc<Mutex<HashSet<String>>>,
}

impl Consumer {
    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next message, or `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<QueueMessage> {
        let message = self.rx.recv().await;
        self.took();
        message
    }

    /// A message that has already arrived, if any.
    pub fn try_recv(&mut self) -> Option<QueueMessage> {
        let message = self.rx.try_recv().ok();
        if message.is_some() {
            self.took();
        }
        message
    }

    fn took(&self) {
        if self.starved.load(Ordering::SeqCst) {
            self.shared.demand.notify_one();
        }
    }
}

impl Stream for Consumer {
    type Item = QueueMessage;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<QueueMessage>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.took();
        }
        polled
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(&self.queue);
        }
        // If the command queue is full, the task notices the closed stream on its own.
        let _ = self.cmd_tx.try_send(Command::StopConsuming {
            queue: std::mem::take(&mut self.queue),
            id: self.id,
        });
    }
}

/// A message delivered from a queue. Acknowledge it with [`QueueMessage::ack`] once it is
/// handled; until then the server keeps it in flight, and redelivers it after its ack timeout.
#[derive(Debug)]
pub struct QueueMessage {
    pub queue: String,
    /// The message id (a UUID v4): deduplicate by it, deliveries are at least once.
    pub id: String,
    /// The producer's nonce.
    pub nonce: Value,
    pub payload: Value,
    /// The server's clock when it built the frame (ms since the epoch), when present.
    pub ts: Option<i64>,
    cmd_tx: mpsc::Sender<Command>,
    codec: Codec,
}

impl QueueMessage {
    pub(crate) fn new(
        queue: String,
        id: String,
        nonce: Value,
        payload: Value,
        ts: Option<i64>,
        cmd_tx: mpsc::Sender<Command>,
        codec: Codec,
    ) -> QueueMessage {
        QueueMessage {
            queue,
            id,
            nonce,
            payload,
            ts,
            cmd_tx,
            codec,
        }
    }

    /// The payload decoded as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.payload).map_err(|e| Error::Payload(e.to_string()))
    }

    /// Acknowledges the message: the server deletes it. Returns once the ack is queued for
    /// sending (the server does not answer a successful ack). An ack queued while the client
    /// reconnects is sent on the new connection, and the server accepts it there: acks match
    /// by identity, not by connection (SPEC §8.5).
    pub async fn ack(&self) -> Result<()> {
        #[derive(Serialize)]
        struct Ack<'a> {
            queue: &'a str,
            id: &'a str,
        }
        let frame = self.codec.encode(&Envelope {
            op: 4,
            t: Some("QUEUE_ACK"),
            d: Ack {
                queue: &self.queue,
                id: &self.id,
            },
        })?;
        self.cmd_tx
            .send(Command::Frame(frame))
            .await
            .map_err(|_| Error::Closed)
    }
}
