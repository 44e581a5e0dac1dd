//! Transports turn connections into sessions: a `Stream` of inbound frames and a bounded
//! outbound [`Mailbox`](mailbox::Mailbox), driven by one shared session loop.
//!
//! - [`mailbox`]: the per-connection outbound queue, byte-bounded, with write coalescing and
//!   slow-consumer detection (SPEC §4.9);
//! - [`session`]: the generic session loop: decode, gate, deadlines, closing sequences;
//! - [`websocket`]: the websocket adapter (SPEC §2.1);
//! - [`tcp`]: the raw TCP framing (SPEC §2.2);
//! - [`nats`]: the NATS bridge (SPEC §2.3), behind the cargo feature `nats` (on by default).

pub mod mailbox;
#[cfg(feature = "nats")]
pub mod nats;
pub mod session;
pub mod tcp;
pub mod websocket;

pub use mailbox::{Close, Mailbox};
pub use session::{SessionConfig, SessionContext, WireIn, WireOut};
