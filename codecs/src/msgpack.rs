//! MessagePack (SPEC §2.6): binary frames, decoded and encoded by hand.
//!
//! - `decode`: bytes → `Value`, strict about the data model (no ext types, UTF-8 strings, finite
//!   floats, string keys) and about the input (no trailing bytes, bounded nesting, allocations
//!   bounded by the input's length rather than by lengths it declares);
//! - `encode`: `OutFrame` → bytes, sized exactly before writing: str family for every string,
//!   the smallest integer family, float 64.

mod decode;
mod encode;

use bytes::Bytes;
use ganglion_core::{Encoding, Envelope, OutFrame, Value};

use crate::{Codec, DecodeError};

pub(crate) use decode::decode;
pub(crate) use encode::encode;

/// The MessagePack codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Msgpack;

// === impl Msgpack ===

impl Codec for Msgpack {
    fn encoding(&self) -> Encoding {
        Encoding::Msgpack
    }

    fn decode_envelope(&self, bytes: &[u8], _max: usize) -> Result<Envelope, DecodeError> {
        decode::decode_envelope(bytes)
    }

    fn decode_envelope_bytes(&self, frame: &Bytes, _max: usize) -> Result<Envelope, DecodeError> {
        decode::decode_envelope_fast(frame)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        decode(bytes)
    }

    fn encode(&self, frame: &OutFrame) -> Bytes {
        encode(frame)
    }
}

/// Markers of the MessagePack specification, for the families that carry their payload in the
/// bytes after the marker. The fix families (positive/negative fixint, fixstr, fixarray, fixmap)
/// are ranges and are matched as ranges.
mod marker {
    pub const NIL: u8 = 0xc0;
    pub const NEVER_USED: u8 = 0xc1;
    pub const FALSE: u8 = 0xc2;
    pub const TRUE: u8 = 0xc3;
    pub const BIN8: u8 = 0xc4;
    pub const BIN16: u8 = 0xc5;
    pub const BIN32: u8 = 0xc6;
    pub const EXT8: u8 = 0xc7;
    pub const EXT32: u8 = 0xc9;
    pub const FLOAT32: u8 = 0xca;
    pub const FLOAT64: u8 = 0xcb;
    pub const UINT8: u8 = 0xcc;
    pub const UINT16: u8 = 0xcd;
    pub const UINT32: u8 = 0xce;
    pub const UINT64: u8 = 0xcf;
    pub const INT8: u8 = 0xd0;
    pub const INT16: u8 = 0xd1;
    pub const INT32: u8 = 0xd2;
    pub const INT64: u8 = 0xd3;
    pub const FIXEXT1: u8 = 0xd4;
    pub const FIXEXT16: u8 = 0xd8;
    pub const STR8: u8 = 0xd9;
    pub const STR16: u8 = 0xda;
    pub const STR32: u8 = 0xdb;
    pub const ARRAY16: u8 = 0xdc;
    pub const ARRAY32: u8 = 0xdd;
    pub const MAP16: u8 = 0xde;
    pub const MAP32: u8 = 0xdf;

    pub const FIXMAP: u8 = 0x80;
    pub const FIXARRAY: u8 = 0x90;
    pub const FIXSTR: u8 = 0xa0;
}
