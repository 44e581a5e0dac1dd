//! Outbound frames: what ganglion sends, described once and encoded by each codec.
//!
//! An outbound frame is a small tree of [`Out`] nodes rather than a plain [`Value`] because ETF
//! (SPEC §2.7) must know, for every map, whether ganglion built it (atom keys) or a client sent
//! it (binary keys at every depth). JSON and MessagePack ignore the distinction.
//!
//! A frame going to many connections is wrapped in an [`Outgoing`], which caches the encoded
//! bytes per encoding: a BROADCAST to ten thousand JSON clients is encoded once.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::value::Value;

/// The wire encoding of one connection (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    Msgpack,
    Etf,
}

impl Encoding {
    pub const ALL: [Encoding; 3] = [Encoding::Json, Encoding::Msgpack, Encoding::Etf];

    /// The name used in the `encoding` query parameter and the reserved metadata key.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
            Encoding::Etf => "etf",
        }
    }

    /// Parses the exact, case-sensitive name.
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "json" => Some(Encoding::Json),
            "msgpack" => Some(Encoding::Msgpack),
            "etf" => Some(Encoding::Etf),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::Msgpack => 1,
            Encoding::Etf => 2,
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opcodes (SPEC §3.2).
pub mod op {
    pub const HELLO: u8 = 0;
    pub const IDENTIFY: u8 = 1;
    pub const READY: u8 = 2;
    pub const INVALID: u8 = 3;
    pub const DISPATCH: u8 = 4;
    pub const HEARTBEAT: u8 = 5;
    pub const HEARTBEAT_ACK: u8 = 6;
    pub const GOODBYE: u8 = 7;
    pub const ERROR: u8 = 8;
}

/// One node of an outbound frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Null,
    Bool(bool),
    Int(i64),
    Str(Cow<'static, str>),
    /// Data that came from a client: in ETF, every map inside has binary keys.
    Value(Value),
    /// A map ganglion built: in ETF, its keys are atoms.
    Map(Vec<(&'static str, Out)>),
    /// A map ganglion built whose keys ETF writes as binaries (SPEC §2.7's "binary" rows).
    BinMap(Vec<(Cow<'static, str>, Out)>),
    List(Vec<Out>),
    /// Client data still in its wire form (see [`RawValue`]).
    Raw(RawValue),
}

/// One value of client data as it arrived: valid, and decoded only when it must be.
///
/// An encoder of the same encoding copies `bytes` as they are when `normal` says they are
/// exactly what ganglion's own encoder would write for their value; any other encoder (or a
/// value not in normal form) decodes them with `decode` and encodes the result. Either way the
/// bytes on the wire are the same as if the value had been decoded on arrival.
#[derive(Clone)]
pub struct RawValue {
    pub encoding: Encoding,
    pub bytes: Bytes,
    pub normal: bool,
    /// Decodes `bytes` (already validated, so `None` only on a bug).
    pub decode: fn(&[u8]) -> Option<Value>,
}

impl RawValue {
    /// The decoded value; null if the bytes, against every check they passed, do not decode.
    pub fn value(&self) -> Value {
        (self.decode)(&self.bytes).unwrap_or(Value::Null)
    }
}

impl std::fmt::Debug for RawValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawValue")
            .field("encoding", &self.encoding)
            .field("bytes", &self.bytes)
            .field("normal", &self.normal)
            .finish_non_exhaustive()
    }
}

impl PartialEq for RawValue {
    fn eq(&self, other: &RawValue) -> bool {
        self.encoding == other.encoding && self.bytes == other.bytes && self.normal == other.normal
    }
}

impl Out {
    pub fn str(s: impl Into<Cow<'static, str>>) -> Out {
        Out::Str(s.into())
    }

    /// A string, or null.
    pub fn opt_str(s: Option<impl Into<Cow<'static, str>>>) -> Out {
        s.map_or(Out::Null, |s| Out::Str(s.into()))
    }
}

impl From<Value> for Out {
    fn from(v: Value) -> Self {
        Out::Value(v)
    }
}

/// W3C trace context carried in the optional envelope key `trace` (SPEC §11).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// A complete outbound frame: the four envelope keys plus the optional `trace`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutFrame {
    pub op: u8,
    pub t: Option<Cow<'static, str>>,
    pub d: Out,
    /// Milliseconds since the epoch when ganglion built the frame.
    pub ts: u64,
    pub trace: Option<TraceContext>,
}

impl OutFrame {
    /// A frame of any opcode but dispatch (`t` is null).
    pub fn new(op: u8, d: Out) -> OutFrame {
        OutFrame {
            op,
            t: None,
            d,
            ts: crate::clock::now_ms(),
            trace: None,
        }
    }

    /// An op 4 dispatch named `t`.
    pub fn dispatch(t: impl Into<Cow<'static, str>>, d: Out) -> OutFrame {
        OutFrame {
            op: op::DISPATCH,
            t: Some(t.into()),
            d,
            ts: crate::clock::now_ms(),
            trace: None,
        }
    }

    /// The `d` every delivered SEND/BROADCAST/QUEUE/CLIENT_* frame has (SPEC §7.1).
    pub fn delivery(t: impl Into<Cow<'static, str>>, nonce: Out, payload: Out) -> OutFrame {
        OutFrame::delivery_at(t, nonce, payload, crate::clock::now_ms())
    }

    /// [`OutFrame::delivery`] with `ts` given, for a caller that has just read the clock.
    pub fn delivery_at(
        t: impl Into<Cow<'static, str>>,
        nonce: Out,
        payload: Out,
        ts: u64,
    ) -> OutFrame {
        OutFrame {
            op: op::DISPATCH,
            t: Some(t.into()),
            d: Out::Map(vec![
                ("target", Out::Null),
                ("nonce", nonce),
                ("payload", payload),
            ]),
            ts,
            trace: None,
        }
    }

    pub fn with_trace(mut self, trace: Option<TraceContext>) -> OutFrame {
        self.trace = trace;
        self
    }
}

/// A frame on its way to one or more connections, encoded at most once per encoding.
#[derive(Debug)]
pub struct Outgoing {
    frame: OutFrame,
    encoded: [OnceLock<Bytes>; 3],
    /// Made for one recipient ([`Outgoing::for_one`]): nothing to share, so the bytes are not
    /// kept (filling a `OnceLock` was ~2 % of a routed 1→1 SEND).
    single: bool,
}

impl Outgoing {
    /// A frame for any number of recipients: each encoding is produced once and shared.
    pub fn new(frame: OutFrame) -> Outgoing {
        Outgoing {
            frame,
            encoded: Default::default(),
            single: false,
        }
    }

    /// A frame for exactly one recipient. Asking for its bytes twice encodes it twice (the
    /// same bytes: encoding is deterministic).
    pub fn for_one(frame: OutFrame) -> Outgoing {
        Outgoing {
            single: true,
            ..Outgoing::new(frame)
        }
    }

    pub fn frame(&self) -> &OutFrame {
        &self.frame
    }

    /// The frame's bytes in `encoding`, produced by `encode` the first time they are asked for.
    pub fn encoded(&self, encoding: Encoding, encode: impl FnOnce(&OutFrame) -> Bytes) -> Bytes {
        if self.single {
            return encode(&self.frame);
        }
        self.encoded[encoding.index()]
            .get_or_init(|| encode(&self.frame))
            .clone()
    }
}

impl From<OutFrame> for Outgoing {
    fn from(frame: OutFrame) -> Self {
        Outgoing::new(frame)
    }
}
