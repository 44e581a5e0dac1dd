//! Wire encodings of the ganglion envelope (SPEC §2.4–§2.7): bytes in, [`Value`] out;
//! [`OutFrame`] in, bytes out.
//!
//! - `json`: [`Json`], text frames parsed with serde_json and written by hand (SPEC §2.5);
//! - `msgpack`: [`Msgpack`], binary frames parsed and written by hand (SPEC §2.6);
//! - `error`: [`DecodeError`] (the `extra_info` of op 8 `decode: payload: unrecoverable`) and
//!   [`EncodeError`].
//!
//! Transports pick a codec once, when a connection negotiates its encoding, with [`codec`]; from
//! then on decoding can fail (the client sent garbage) but encoding cannot: every [`Out`] tree is
//! representable in every encoding. The free functions [`decode`] and [`encode`] are the same
//! operations keyed by [`Encoding`], for callers that do not keep a codec around.
//!
//! **ETF seam.** SPEC §2.7 is not implemented yet. Until it is, [`codec`] and [`encode`] answer
//! [`EncodeError::Unsupported`] for [`Encoding::Etf`] and [`decode`] refuses every ETF frame.
//! It will land as `etf.rs` with a unit struct `Etf` implementing [`Codec`], plus one match arm
//! in each of [`codec`], [`decode`] and [`encode`]. ETF is the one encoding that reads the
//! difference between [`Out::Map`] (atom keys) and [`Out::BinMap`] / [`Out::Value`] (binary
//! keys); JSON and MessagePack write all three the same way.
//!
//! [`Out`]: ganglion_core::Out
//! [`Out::Map`]: ganglion_core::Out::Map
//! [`Out::BinMap`]: ganglion_core::Out::BinMap
//! [`Out::Value`]: ganglion_core::Out::Value

mod error;
mod json;
mod msgpack;

use bytes::Bytes;
use ganglion_core::value::MAX_DECODE_DEPTH;
use ganglion_core::{Encoding, OutFrame, Outgoing, Value};

pub use error::{DecodeError, EncodeError};
pub use json::Json;
pub use msgpack::Msgpack;

/// The deepest container nesting any decoder accepts: a frame whose [`Value::depth`] is at least
/// [`MAX_DECODE_DEPTH`] is refused.
///
/// serde_json's recursion limit counts down from 128 and fails when it reaches 0, i.e. on the
/// 128th nested container. Every decoder stops at that same place, so whether a frame decodes
/// never depends on its encoding.
pub const MAX_NESTING: usize = MAX_DECODE_DEPTH - 1;

/// The websocket message type a frame travels in (SPEC §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Text,
    Binary,
}

/// JSON travels in text messages; MessagePack and ETF in binary ones.
pub fn frame_kind(encoding: Encoding) -> FrameKind {
    match encoding {
        Encoding::Json => FrameKind::Text,
        Encoding::Msgpack | Encoding::Etf => FrameKind::Binary,
    }
}

/// One wire encoding: how an inbound frame becomes a [`Value`] and an [`OutFrame`] becomes bytes.
///
/// Object-safe, so a connection can hold the `&'static dyn Codec` that [`codec`] returns.
pub trait Codec: Send + Sync + std::fmt::Debug + 'static {
    fn encoding(&self) -> Encoding;

    fn frame_kind(&self) -> FrameKind {
        frame_kind(self.encoding())
    }

    /// Decodes one complete inbound frame. The result is always a [`Value::Object`]: anything
    /// else, trailing bytes included, is a [`DecodeError`].
    fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError>;

    /// Encodes one outbound frame: `op`, `d`, `t` and `ts` always, `trace` when present.
    fn encode(&self, frame: &OutFrame) -> Bytes;

    /// The bytes of a fanned-out frame, encoded at most once per encoding across all recipients.
    fn encode_once(&self, outgoing: &Outgoing) -> Bytes {
        outgoing.encoded(self.encoding(), |frame| self.encode(frame))
    }
}

/// The codec for `encoding`, or [`EncodeError::Unsupported`] for an encoding that has none yet
/// (ETF). Call it when a connection opens, so an unsupported encoding is refused up front rather
/// than on the first frame.
pub fn codec(encoding: Encoding) -> Result<&'static dyn Codec, EncodeError> {
    match encoding {
        Encoding::Json => Ok(&Json),
        Encoding::Msgpack => Ok(&Msgpack),
        Encoding::Etf => Err(EncodeError::Unsupported(encoding)),
    }
}

/// Decodes one complete inbound frame in `encoding` (see [`Codec::decode`]).
pub fn decode(encoding: Encoding, bytes: &[u8]) -> Result<Value, DecodeError> {
    match encoding {
        Encoding::Json => json::decode(bytes),
        Encoding::Msgpack => msgpack::decode(bytes),
        Encoding::Etf => Err(DecodeError::new("the etf encoding is not supported yet")),
    }
}

/// Encodes one outbound frame in `encoding` (see [`Codec::encode`]). Fails only with
/// [`EncodeError::Unsupported`], for ETF until it lands.
pub fn encode(encoding: Encoding, frame: &OutFrame) -> Result<Bytes, EncodeError> {
    match encoding {
        Encoding::Json => Ok(json::encode(frame)),
        Encoding::Msgpack => Ok(msgpack::encode(frame)),
        Encoding::Etf => Err(EncodeError::Unsupported(encoding)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_text_and_the_binary_encodings_are_binary() {
        assert_eq!(frame_kind(Encoding::Json), FrameKind::Text);
        assert_eq!(frame_kind(Encoding::Msgpack), FrameKind::Binary);
        assert_eq!(frame_kind(Encoding::Etf), FrameKind::Binary);
    }

    #[test]
    fn codec_answers_for_every_implemented_encoding_and_refuses_etf() {
        for encoding in [Encoding::Json, Encoding::Msgpack] {
            let codec = codec(encoding).expect("implemented");
            assert_eq!(codec.encoding(), encoding);
            assert_eq!(codec.frame_kind(), frame_kind(encoding));
        }
        assert_eq!(
            codec(Encoding::Etf).map(|c| c.encoding()),
            Err(EncodeError::Unsupported(Encoding::Etf))
        );
    }
}
