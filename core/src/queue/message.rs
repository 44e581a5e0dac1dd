//! The stored form of a queued message (SPEC §8.1): what survives a restart.

use serde::{Deserialize, Serialize};

use crate::frame::TraceContext;
use crate::value::Value;

/// The identity a message was last delivered to; acks are matched against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerIdentity {
    pub application_id: String,
    pub client_id: String,
}

/// Where a message stands, with the time its current period began (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MessageState {
    /// In the FIFO, waiting to be dispatched.
    Ready,
    /// Delivered, waiting for an ack.
    InFlight { delivered_at: u64 },
    /// Its ack timed out; it returns to the FIFO after `dlq_time`.
    DeadLettered { dead_since: u64 },
    /// It exhausted `max_deliveries`; kept for inspection, replay or deletion over HTTP.
    Parked { parked_at: u64 },
}

/// One message as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// UUID v4, lowercase hyphenated.
    pub id: String,
    pub queue: String,
    pub nonce: Value,
    /// The query as the producer sent it, re-evaluated at every dispatch attempt.
    pub target: Value,
    pub payload: Value,
    /// When the message was confirmed, or last re-queued.
    pub enqueued_at: u64,
    /// FIFO position: lower is older. Re-queueing gives a new, higher position.
    pub seq: u64,
    /// The store's key for this message: given at creation, never changed, and increasing, so
    /// new records are appended to the store instead of scattered through it.
    pub record: u64,
    pub deliveries: u32,
    pub last_consumer: Option<ConsumerIdentity>,
    #[serde(flatten)]
    pub state: MessageState,
    pub trace: Option<TraceContext>,
}
