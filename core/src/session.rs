//! What the router knows about one connection: its [`Conn`] context and its [`Outbox`].
//!
//! Transports own the sockets; the router only ever pushes frames into an `Outbox`, which never
//! blocks. That keeps routing free of I/O, and lets a future cluster link be just another
//! `Outbox` implementation.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::auth::SourceKey;
use crate::frame::{Encoding, OutFrame, Outgoing};
use crate::query::cache::QueryCache;
use crate::registry::Slot;

/// Where frames for one connection go. Implemented by the transports' bounded mailbox.
pub trait Outbox: Send + Sync + 'static {
    /// The connection's encoding; fan-out encodes once per encoding.
    fn encoding(&self) -> Encoding;

    /// Queues a frame without waiting. Returns `false` when the connection no longer accepts
    /// frames (it is closing, or it just became a slow consumer).
    ///
    /// A routed payload may be a slice of the buffer its frame was read into
    /// ([`crate::RawValue`]): an outbox that queues frames should keep their encoded bytes
    /// (as the transports' mailbox does), not the `Outgoing`, or it keeps that whole read
    /// buffer alive with them.
    fn push(&self, frame: &Outgoing) -> bool;
}

/// An outbox that accepts every frame and keeps none, in JSON: for benchmarks and tests that
/// route without delivering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl Outbox for Discard {
    fn encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn push(&self, _frame: &Outgoing) -> bool {
        true
    }
}

/// The transport a connection arrived on (a metrics label, and it decides the auth key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Websocket,
    Tcp,
    Nats,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Websocket => "ws",
            Transport::Tcp => "tcp",
            Transport::Nats => "nats",
        }
    }
}

/// Unique id of a connection within this process.
pub type ConnId = u64;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// The router's view of one connection.
pub struct Conn {
    pub id: ConnId,
    pub transport: Transport,
    pub encoding: Encoding,
    /// The TCP peer address; `None` for NATS sessions.
    pub peer: Option<IpAddr>,
    pub outbox: Arc<dyn Outbox>,
    /// Where the connection's protocol state machine stands (SPEC §4.1).
    state: Mutex<ConnState>,
    /// The last target this connection routed to, parsed.
    pub queries: QueryCache,
}

/// The lifecycle states of SPEC §4.1 that the router distinguishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    AwaitingIdentify,
    /// Shared, so reading the state for every frame does not copy the ids.
    Identified(Arc<Identity>),
    /// Cleanup has run (or is running); every further frame is ignored.
    Closing,
}

/// A registered client's handle, kept by its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub slot: Slot,
    pub application_id: String,
    pub client_id: String,
    pub restricted: bool,
}

// === impl Conn ===

impl Conn {
    pub fn new(
        transport: Transport,
        encoding: Encoding,
        peer: Option<IpAddr>,
        outbox: Arc<dyn Outbox>,
    ) -> Conn {
        Conn {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            transport,
            encoding,
            peer,
            outbox,
            state: Mutex::new(ConnState::AwaitingIdentify),
            queries: QueryCache::default(),
        }
    }

    /// The failed-auth counting key (SPEC §4.4).
    pub fn source_key(&self) -> SourceKey {
        match (self.transport, self.peer) {
            (Transport::Nats, _) | (_, None) => SourceKey::Nats,
            (_, Some(ip)) => SourceKey::from_ip(ip),
        }
    }

    pub fn state(&self) -> ConnState {
        self.state.lock().clone()
    }

    pub(crate) fn set_state(&self, state: ConnState) {
        *self.state.lock() = state;
    }

    /// Moves to `Closing` and returns what the connection was, so cleanup runs exactly once.
    pub(crate) fn begin_closing(&self) -> ConnState {
        std::mem::replace(&mut *self.state.lock(), ConnState::Closing)
    }

    /// Queues a frame for this connection.
    pub fn send(&self, frame: OutFrame) -> bool {
        self.outbox.push(&Outgoing::for_one(frame))
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("transport", &self.transport)
            .field("encoding", &self.encoding)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The formatted peer address of SPEC §4.10: dotted IPv4 (IPv4-mapped IPv6 unmapped), other
/// IPv6 as eight zero-padded groups without `::` compression.
pub fn format_peer_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!(
                    "{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}",
                    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_are_formatted_as_the_original_did() {
        assert_eq!(format_peer_ip("127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(
            format_peer_ip("::ffff:127.0.0.1".parse().unwrap()),
            "127.0.0.1"
        );
        assert_eq!(
            format_peer_ip("2001:db8::8a2e:370:7334".parse().unwrap()),
            "2001:0db8:0000:0000:0000:8a2e:0370:7334"
        );
        assert_eq!(
            format_peer_ip("::1".parse().unwrap()),
            "0000:0000:0000:0000:0000:0000:0000:0001"
        );
    }
}
