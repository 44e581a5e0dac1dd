//! What the client hands back: received messages, queue confirms, client objects, client
//! updates and the connection state.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Which dispatch delivered a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Event {
    Send,
    Broadcast,
}

impl Event {
    /// The dispatch name (`SEND`, `BROADCAST`).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Send => "SEND",
            Event::Broadcast => "BROADCAST",
        }
    }
}

/// A SEND or BROADCAST delivered to this client.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub event: Event,
    /// The sender's nonce (null when it gave none). For a request, an object with `request`
    /// and `reply_to` (see [`crate::Client::request`]).
    pub nonce: Value,
    pub payload: Value,
    /// The server's clock when it built the frame (ms since the epoch), when present.
    pub ts: Option<i64>,
}

impl Message {
    /// The payload decoded as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.payload).map_err(|e| Error::Payload(e.to_string()))
    }

    /// Whether the sender waits for a reply ([`crate::Client::reply`]).
    pub fn is_request(&self) -> bool {
        self.request_id().is_some() && self.nonce.get("reply_to").is_some_and(Value::is_object)
    }

    /// The request id of a request.
    pub fn request_id(&self) -> Option<&str> {
        self.nonce.get("request").and_then(Value::as_str)
    }
}

/// The server's confirmation that a queued message is stored (SPEC §8.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfirm {
    pub queue: String,
    /// The message id (a UUID v4).
    pub id: String,
    pub nonce: Value,
}

/// A client object, as QUERY_NODES and `POST /api/v1/query` return them (SPEC §9.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub app_id: String,
    pub client_id: String,
    /// Metadata as plain values, reserved keys included.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The declared type of each metadata key.
    #[serde(default)]
    pub metadata_types: Map<String, Value>,
    #[serde(default)]
    pub socket_ip: Value,
    /// Queues the client is waiting on.
    #[serde(default)]
    pub queues: Vec<String>,
    /// The node the client is connected to.
    #[serde(default)]
    pub node: Value,
}

/// A client of any application connected or disconnected (SPEC §7.7). Received only by
/// clients built with [`crate::ClientBuilder::receive_client_updates`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientUpdate {
    ClientConnected {
        application_id: String,
        client_id: String,
    },
    ClientDisconnected {
        application_id: String,
        client_id: String,
    },
}

/// The connection as the client sees it; watch it with [`crate::Client::state_changes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// Identified and ready.
    pub connected: bool,
    /// The server accepted the identify as restricted (no password, or a wrong one).
    pub restricted: bool,
    /// Successful identifies so far: 1 after [`crate::ClientBuilder::connect`], one more per
    /// reconnect.
    pub sessions: u64,
    /// Failed reconnect attempts since the connection was lost (0 while connected).
    pub reconnect_attempts: u32,
    /// Why the last connection ended (`goodbye: <reason>` after op 7, `op 8: <error>`, a
    /// close code or an I/O error).
    pub last_disconnect: Option<String>,
    /// Why the latest reconnect attempt failed (cleared once connected again).
    pub last_reconnect_error: Option<String>,
    /// The client is closed: by [`crate::Client::close`], or after a fatal error.
    pub closed: bool,
}
