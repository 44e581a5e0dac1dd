//! Protocol errors (SPEC §13): [`Fatal`] errors end in op 8 and a close, [`Invalid`] errors are
//! answered with op 3 and the connection stays open.
//!
//! Each error knows its exact wire string, its `extra_info`, its websocket close code and a
//! short, bounded class name for metrics, so transports and middleware never re-derive them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::frame::{Encoding, Out, OutFrame, op};
use crate::value::Value;

/// Websocket close codes used by ganglion (SPEC §4.8).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

/// Per-key validation messages (`invalid metadata`, `initial metadata: invalid`).
pub type KeyErrors = BTreeMap<String, String>;

/// A fatal error: op 8, then close (SPEC §13.1).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fatal {
    #[error("decode: payload: invalid websocket opcode/encoding combo: {{{kind}, {encoding}}}")]
    FrameKind {
        /// The kind received: `text` or `binary`.
        kind: &'static str,
        encoding: Encoding,
    },
    #[error("decode: payload: unrecoverable")]
    Decode(Option<String>),
    #[error("payload too large")]
    TooLarge { limit: usize },
    #[error("sent payload with non-identify opcode without identifying first")]
    NotIdentified,
    #[error("invalid client op {}", client_op_name(*.0))]
    InvalidClientOp(Option<u8>),
    /// Identify field validation: `<field>: <problem>`.
    #[error("{field}: {problem}")]
    IdentifyField {
        field: &'static str,
        problem: &'static str,
    },
    #[error("initial metadata: invalid")]
    InitialMetadata(KeyErrors),
    #[error("too many failed auth attempts")]
    TooManyAuthFailures,
    #[error("{client_id}: already registered for app {application_id}")]
    AlreadyRegistered {
        client_id: String,
        application_id: String,
    },
    #[error("identify deadline exceeded")]
    IdentifyDeadline,
    #[error("heartbeat took too long")]
    HeartbeatTimeout,
    #[error("slow consumer")]
    SlowConsumer,
    #[error("internal server error")]
    Internal,
    /// A NATS connect request that does not open a session (SPEC §2.3); answered before any
    /// session exists, so it is never followed by a close.
    #[error("invalid connect request")]
    InvalidConnectRequest,
}

/// The `<name>` of `invalid client op <name>` (SPEC §3.3).
fn client_op_name(op: Option<u8>) -> &'static str {
    match op {
        Some(op::HELLO) => ":hello",
        Some(op::IDENTIFY) => ":identify",
        Some(op::READY) => ":ready",
        Some(op::INVALID) => ":invalid",
        Some(op::HEARTBEAT_ACK) => ":heartbeat_ack",
        Some(op::GOODBYE) => ":goodbye",
        Some(op::ERROR) => ":error",
        _ => "nil",
    }
}

// === impl Fatal ===

impl Fatal {
    /// The websocket close code that follows the op 8 (SPEC §4.8).
    pub fn close_code(&self) -> u16 {
        match self {
            Fatal::TooLarge { .. } => close_code::TOO_BIG,
            Fatal::Internal => close_code::INTERNAL,
            _ => close_code::POLICY,
        }
    }

    /// A short, bounded name for logs and the `reason` label of metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Fatal::FrameKind { .. } => "frame_kind",
            Fatal::Decode(_) => "decode",
            Fatal::TooLarge { .. } => "payload_too_large",
            Fatal::NotIdentified => "not_identified",
            Fatal::InvalidClientOp(_) => "invalid_client_op",
            Fatal::IdentifyField { .. } => "invalid_identify",
            Fatal::InitialMetadata(_) => "invalid_initial_metadata",
            Fatal::TooManyAuthFailures => "auth_limit",
            Fatal::AlreadyRegistered { .. } => "already_registered",
            Fatal::IdentifyDeadline => "identify_deadline",
            Fatal::HeartbeatTimeout => "heartbeat_timeout",
            Fatal::SlowConsumer => "slow_consumer",
            Fatal::Internal => "internal",
            Fatal::InvalidConnectRequest => "invalid_connect_request",
        }
    }

    fn extra_info(&self) -> Out {
        match self {
            Fatal::Decode(Some(detail)) => Out::Str(Cow::Owned(detail.clone())),
            Fatal::TooLarge { limit } => Out::Map(vec![(
                "limit",
                Out::Int(i64::try_from(*limit).unwrap_or(i64::MAX)),
            )]),
            Fatal::InitialMetadata(errors) => key_errors(errors),
            _ => Out::Null,
        }
    }

    /// The op 8 frame.
    pub fn to_frame(&self) -> OutFrame {
        OutFrame::new(
            op::ERROR,
            Out::Map(vec![
                ("error", Out::Str(Cow::Owned(self.to_string()))),
                ("extra_info", self.extra_info()),
            ]),
        )
    }
}

fn key_errors(errors: &KeyErrors) -> Out {
    Out::BinMap(
        errors
            .iter()
            .map(|(k, m)| (Cow::Owned(k.clone()), Out::Str(Cow::Owned(m.clone()))))
            .collect(),
    )
}

/// A non-fatal error: op 3, and the connection stays open (SPEC §13.2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("invalid dispatch type {t} (are you restricted?)")]
    Restricted { t: String },
    #[error("invalid metadata")]
    Metadata(KeyErrors),
    #[error("no_route")]
    NoRoute {
        t: &'static str,
        nonce: Value,
        target: Value,
    },
    #[error("invalid query")]
    Query { reason: String, nonce: Value },
    #[error("invalid dispatch payload")]
    DispatchPayload { t: Value, ts: Value, d: Value },
    #[error("invalid queue name")]
    QueueName { queue: Value, reason: &'static str },
    #[error("unknown message id")]
    UnknownMessageId { queue: Value, id: Value },
    #[error("queue unavailable")]
    QueueUnavailable { queue: String, nonce: Value },
    /// An injected dispatch that is not a JSON object with `t` SEND, BROADCAST or QUEUE
    /// (SPEC §2.3): nothing of it is echoed.
    #[error("invalid dispatch payload")]
    Injection,
}

// === impl Invalid ===

impl Invalid {
    /// A short, bounded name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Invalid::Restricted { .. } => "restricted",
            Invalid::Metadata(_) => "invalid_metadata",
            Invalid::NoRoute { .. } => "no_route",
            Invalid::Query { .. } => "invalid_query",
            Invalid::DispatchPayload { .. } => "invalid_dispatch_payload",
            Invalid::QueueName { .. } => "invalid_queue_name",
            Invalid::UnknownMessageId { .. } => "unknown_message_id",
            Invalid::QueueUnavailable { .. } => "queue_unavailable",
            Invalid::Injection => "invalid_dispatch_payload",
        }
    }

    /// The op 3 frame.
    pub fn to_frame(&self) -> OutFrame {
        let error = Out::Str(Cow::Owned(self.to_string()));
        let d = match self {
            // The one op 3 without `extra_info`, and with a binary key in ETF (SPEC §3.4, §2.7).
            Invalid::Restricted { .. } => Out::BinMap(vec![(Cow::Borrowed("error"), error)]),
            other => Out::Map(vec![("error", error), ("extra_info", other.extra_info())]),
        };
        OutFrame::new(op::INVALID, d)
    }

    fn extra_info(&self) -> Out {
        match self {
            Invalid::Restricted { .. } | Invalid::Injection => Out::Null,
            Invalid::Metadata(errors) => key_errors(errors),
            Invalid::NoRoute { t, nonce, target } => Out::Map(vec![
                ("t", Out::str(*t)),
                ("nonce", nonce.clone().into()),
                ("target", target.clone().into()),
            ]),
            Invalid::Query { reason, nonce } => Out::Map(vec![
                ("reason", Out::Str(Cow::Owned(reason.clone()))),
                ("nonce", nonce.clone().into()),
            ]),
            Invalid::DispatchPayload { t, ts, d } => Out::Map(vec![
                ("op", Out::Int(i64::from(op::DISPATCH))),
                ("t", t.clone().into()),
                ("ts", ts.clone().into()),
                ("d", d.clone().into()),
            ]),
            Invalid::QueueName { queue, reason } => Out::Map(vec![
                ("queue", queue.clone().into()),
                ("reason", Out::str(*reason)),
            ]),
            Invalid::UnknownMessageId { queue, id } => Out::Map(vec![
                ("queue", queue.clone().into()),
                ("id", id.clone().into()),
            ]),
            Invalid::QueueUnavailable { queue, nonce } => Out::Map(vec![
                ("queue", Out::Str(Cow::Owned(queue.clone()))),
                ("nonce", nonce.clone().into()),
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_strings_match_the_catalogue() {
        let kind = Fatal::FrameKind {
            kind: "binary",
            encoding: Encoding::Json,
        };
        assert_eq!(
            kind.to_string(),
            "decode: payload: invalid websocket opcode/encoding combo: {binary, json}"
        );
        assert_eq!(
            Fatal::InvalidClientOp(Some(op::HEARTBEAT_ACK)).to_string(),
            "invalid client op :heartbeat_ack"
        );
        assert_eq!(
            Fatal::InvalidClientOp(None).to_string(),
            "invalid client op nil"
        );
        assert_eq!(
            Fatal::AlreadyRegistered {
                client_id: "c1".into(),
                application_id: "app".into()
            }
            .to_string(),
            "c1: already registered for app app"
        );
        assert_eq!(Fatal::TooLarge { limit: 5 }.close_code(), 1009);
        assert_eq!(Fatal::Internal.close_code(), 1011);
        assert_eq!(Fatal::SlowConsumer.close_code(), 1008);
    }

    #[test]
    fn restricted_dispatch_error_has_only_the_error_key() {
        let frame = Invalid::Restricted { t: "SEND".into() }.to_frame();
        assert_eq!(
            frame.d,
            Out::BinMap(vec![(
                Cow::Borrowed("error"),
                Out::str("invalid dispatch type SEND (are you restricted?)")
            )])
        );
        assert_eq!(frame.op, op::INVALID);
        assert_eq!(frame.t, None);
    }
}
