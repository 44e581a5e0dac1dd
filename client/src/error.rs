//! The client's errors: one enum, each variant saying what went wrong and, where the server
//! answered, with what.

use std::time::Duration;

use serde_json::Value;

use crate::dsn::DsnError;
use crate::metadata::MetadataError;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The DSN could not be parsed.
    #[error(transparent)]
    Dsn(#[from] DsnError),

    /// Metadata failed the client-side checks (the same rules the server applies, SPEC §5).
    #[error(transparent)]
    Metadata(#[from] MetadataError),

    /// A queue name the server would refuse (SPEC §8.1).
    #[error("invalid queue name {name:?}: {reason}")]
    QueueName { name: String, reason: &'static str },

    /// The client is configured in a way that cannot work (a missing application id, say).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The TCP connection, TLS handshake or websocket handshake failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },

    /// The server refused the identify with op 8 (a bad id, invalid initial metadata, a
    /// duplicate identity, too many failed auth attempts, ...).
    #[error("the server refused the connection: {error}")]
    Rejected {
        /// The op 8 `error` string.
        error: String,
        /// The op 8 `extra_info`.
        extra_info: Value,
    },

    /// A password was given but the server answered ready with `restricted: true`: the
    /// password is wrong (SPEC §4.4).
    #[error("authentication failed: the server accepted the connection as restricted")]
    AuthFailed,

    /// Restricted clients may only update their metadata (SPEC §4.4).
    #[error("a restricted client cannot {0}")]
    Restricted(&'static str),

    /// SEND/BROADCAST matched no client and the target was not droppable (SPEC §6.11).
    #[error("no client matched the target")]
    NoRoute,

    /// The server refused a query (SPEC §6.12).
    #[error("invalid query: {0}")]
    InvalidQuery(String),

    /// The server could not store a queued message (SPEC §8.3); it may or may not be stored.
    #[error("queue unavailable: the message may or may not have been stored")]
    QueueUnavailable,

    /// Any other op 3 the server answered a call with.
    #[error("the server refused the request: {error}")]
    Server {
        /// The op 3 `error` string.
        error: String,
        /// The op 3 `extra_info`.
        extra_info: Value,
    },

    /// No answer within the given time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),

    /// The connection was lost before the server answered; the call may or may not have taken
    /// effect. The client reconnects by itself; the call can be retried.
    #[error("the connection was lost before the server answered")]
    ConnectionLost,

    /// The client was closed, or gave up after a fatal error.
    #[error("the client is closed")]
    Closed,

    /// The server sent something the client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A payload could not be encoded or decoded.
    #[error("payload: {0}")]
    Payload(String),

    /// A stream that exists once per client (messages, client updates, a queue's consumer) was
    /// asked for a second time.
    #[error("{0} is already taken")]
    AlreadyTaken(String),

    /// `reply` was called on a message that is not a request (SPEC-level convention in the
    /// crate documentation).
    #[error("the message is not a request: its nonce has no reply address")]
    NotARequest,

    /// The client was built without `receive_client_updates`.
    #[error(
        "client updates were not requested at identify (ClientBuilder::receive_client_updates)"
    )]
    NoClientUpdates,
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost | Error::Timeout(_) | Error::QueueUnavailable | Error::NoRoute
        )
    }
}

/// A convenient alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
