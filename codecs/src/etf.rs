//! ETF, the Erlang External Term Format (SPEC §2.7): binary frames, decoded and encoded by hand.
//!
//! - `decode`: bytes → `Value`, following the SPEC's inbound tag table. Atoms are only ever
//!   bytes here (never interned, so a client cannot exhaust anything by sending many), tuples
//!   become arrays, and everything outside the data model (pids, ports, references, funs,
//!   improper lists, …) is refused. Compressed terms (tag 80) are inflated under a byte limit;
//! - `encode`: `OutFrame` → bytes, sized exactly before writing. The one encoding that reads the
//!   difference between [`Out::Map`] (atom keys) and [`Out::BinMap`] / [`Out::Value`] (binary
//!   keys), per the SPEC's key-typing table.
//!
//! **Why by hand rather than with `eetf`.** eetf decodes into its own `Term` tree first: that
//! is a second tree to allocate and walk for every frame, it has no nesting limit (a deep list
//! is a stack overflow), it turns every big integer into an arbitrary-precision `BigInt`
//! whatever its size, and bounding its allocations by the input would mean auditing its
//! source. The tag table the SPEC allows is small, so a decoder that walks the bytes once,
//! checks every length against the bytes that remain and stops at `MAX_NESTING` is shorter
//! than the `Term` mapping would be, and every limit is visible in this crate. The test client
//! (tests/tests/etf.rs) does use eetf, so the two sides do not share a bug.
//!
//! [`Out::Map`]: ganglion_core::Out::Map
//! [`Out::BinMap`]: ganglion_core::Out::BinMap
//! [`Out::Value`]: ganglion_core::Out::Value

mod decode;
mod encode;

use bytes::Bytes;
use ganglion_core::{Encoding, OutFrame, Value};

use crate::{Codec, DecodeError};

pub(crate) use decode::decode;
pub(crate) use encode::encode;

/// The ETF codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Etf;

impl Etf {
    /// The most a compressed term may inflate to when the caller names no frame size limit
    /// ([`Codec::decode`]): the default of `gateway.max_frame_bytes` (SPEC §12).
    pub const DEFAULT_MAX_INFLATED_BYTES: usize = 1_048_576;
}

// === impl Etf ===

impl Codec for Etf {
    fn encoding(&self) -> Encoding {
        Encoding::Etf
    }

    fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        decode(bytes, Etf::DEFAULT_MAX_INFLATED_BYTES)
    }

    fn decode_limited(&self, bytes: &[u8], max_frame_bytes: usize) -> Result<Value, DecodeError> {
        decode(bytes, max_frame_bytes)
    }

    fn encode(&self, frame: &OutFrame) -> Bytes {
        encode(frame)
    }
}

/// Tags of the External Term Format (erts `external.h`), for every tag the decoder names.
mod tag {
    pub const VERSION: u8 = 131;

    pub const NEW_FLOAT: u8 = 70;
    pub const BIT_BINARY: u8 = 77;
    pub const COMPRESSED: u8 = 80;
    pub const ATOM_CACHE_REF: u8 = 82;
    pub const NEW_PID: u8 = 88;
    pub const NEW_PORT: u8 = 89;
    pub const NEWER_REFERENCE: u8 = 90;
    pub const SMALL_INTEGER: u8 = 97;
    pub const INTEGER: u8 = 98;
    pub const FLOAT: u8 = 99;
    pub const ATOM: u8 = 100;
    pub const REFERENCE: u8 = 101;
    pub const PORT: u8 = 102;
    pub const PID: u8 = 103;
    pub const SMALL_TUPLE: u8 = 104;
    pub const LARGE_TUPLE: u8 = 105;
    pub const NIL: u8 = 106;
    pub const STRING: u8 = 107;
    pub const LIST: u8 = 108;
    pub const BINARY: u8 = 109;
    pub const SMALL_BIG: u8 = 110;
    pub const LARGE_BIG: u8 = 111;
    pub const NEW_FUN: u8 = 112;
    pub const EXPORT: u8 = 113;
    pub const NEW_REFERENCE: u8 = 114;
    pub const SMALL_ATOM: u8 = 115;
    pub const MAP: u8 = 116;
    pub const FUN: u8 = 117;
    pub const ATOM_UTF8: u8 = 118;
    pub const SMALL_ATOM_UTF8: u8 = 119;
    pub const V4_PORT: u8 = 120;
    pub const LOCAL: u8 = 121;
}
