//! Wire encodings of the ganglion envelope (SPEC §2.4–§2.7): bytes in, [`Value`] out;
//! [`OutFrame`] in, bytes out.
//!
//! - `json`: [`Json`], text frames parsed with serde_json and written by hand (SPEC §2.5);
//! - `msgpack`: [`Msgpack`], binary frames parsed and written by hand (SPEC §2.6);
//! - `etf`: [`Etf`], binary Erlang External Term Format frames parsed and written by hand
//!   (SPEC §2.7);
//! - `error`: [`DecodeError`] (the `extra_info` of op 8 `decode: payload: unrecoverable`) and
//!   [`EncodeError`].
//!
//! Transports pick a codec once, when a connection negotiates its encoding, with [`codec`]; from
//! then on decoding can fail (the client sent garbage) but encoding cannot: every [`Out`] tree is
//! representable in every encoding. The free functions [`decode`], [`decode_limited`] and
//! [`encode`] are the same operations keyed by [`Encoding`], for callers that do not keep a codec
//! around.
//!
//! ETF is the one encoding that reads the difference between [`Out::Map`] (atom keys) and
//! [`Out::BinMap`] / [`Out::Value`] (binary keys); JSON and MessagePack write all three the same
//! way. It is also the one whose frames can expand (compressed terms), which is why decoding
//! can be given the connection's frame size limit ([`decode_limited`]).
//!
//! [`Out`]: ganglion_core::Out
//! [`Out::Map`]: ganglion_core::Out::Map
//! [`Out::BinMap`]: ganglion_core::Out::BinMap
//! [`Out::Value`]: ganglion_core::Out::Value

mod error;
mod etf;
mod fast;
mod json;
mod msgpack;

use bytes::Bytes;
use ganglion_core::value::MAX_DECODE_DEPTH;
use ganglion_core::{Encoding, Envelope, OutFrame, Outgoing, Value};

pub use error::{DecodeError, EncodeError};
pub use etf::Etf;
pub use json::Json;
pub use msgpack::Msgpack;

/// The deepest container nesting any decoder accepts: a frame whose [`Value::depth`] is at least
/// [`MAX_DECODE_DEPTH`] is refused.
///
/// serde_json's recursion limit counts down from 128 and fails when it reaches 0, i.e. on the
/// 128th nested container. Every decoder stops at that same place, so whether a frame decodes
/// never depends on its encoding.
pub const MAX_NESTING: usize = MAX_DECODE_DEPTH - 1;

/// Whether `bytes` are UTF-8, answered at once for the usual all-ASCII text (a check the
/// compiler does many bytes at a time; `from_utf8` starts with more per-call work).
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

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

    /// [`Codec::decode`] under the connection's frame size limit (`gateway.max_frame_bytes`),
    /// which an ETF compressed term's inflated size counts against (SPEC §2.7). Without it,
    /// ETF applies the limit's default ([`Etf::DEFAULT_MAX_INFLATED_BYTES`]). The other
    /// encodings have nothing that expands: the transport's own check on the frame suffices.
    fn decode_limited(&self, bytes: &[u8], max_frame_bytes: usize) -> Result<Value, DecodeError> {
        let _ = max_frame_bytes;
        self.decode(bytes)
    }

    /// Decodes one frame straight into an [`Envelope`]. Codecs override it to read the
    /// top-level members without building a map for them; unknown members are still decoded
    /// (so still validated) and then dropped. The default decodes to a [`Value`] first.
    fn decode_envelope(
        &self,
        bytes: &[u8],
        max_frame_bytes: usize,
    ) -> Result<Envelope, DecodeError> {
        let value = self.decode_limited(bytes, max_frame_bytes)?;
        Envelope::from_value(value)
            .map_err(|_| DecodeError::new("the top-level value is not an object"))
    }

    /// [`Codec::decode_envelope`] for a frame held in `Bytes`, which lets a codec keep parts of
    /// it in wire form, sliced from the frame without copying ([`Envelope::fast`]).
    fn decode_envelope_bytes(
        &self,
        frame: &Bytes,
        max_frame_bytes: usize,
    ) -> Result<Envelope, DecodeError> {
        self.decode_envelope(frame, max_frame_bytes)
    }

    /// Encodes one outbound frame: `op`, `d`, `t` and `ts` always, `trace` when present.
    fn encode(&self, frame: &OutFrame) -> Bytes;

    /// The bytes of a fanned-out frame, encoded at most once per encoding across all recipients.
    fn encode_once(&self, outgoing: &Outgoing) -> Bytes {
        outgoing.encoded(self.encoding(), |frame| self.encode(frame))
    }
}

/// The codec for `encoding`. Every encoding has one; the `Result` leaves room for an encoding
/// that a build may not serve ([`EncodeError::Unsupported`]). Call it when a connection opens,
/// so such an encoding would be refused up front rather than on the first frame.
pub fn codec(encoding: Encoding) -> Result<&'static dyn Codec, EncodeError> {
    match encoding {
        Encoding::Json => Ok(&Json),
        Encoding::Msgpack => Ok(&Msgpack),
        Encoding::Etf => Ok(&Etf),
    }
}

/// Decodes one complete inbound frame in `encoding` (see [`Codec::decode`]).
pub fn decode(encoding: Encoding, bytes: &[u8]) -> Result<Value, DecodeError> {
    match encoding {
        Encoding::Json => json::decode(bytes),
        Encoding::Msgpack => msgpack::decode(bytes),
        Encoding::Etf => etf::decode(bytes, Etf::DEFAULT_MAX_INFLATED_BYTES),
    }
}

/// Decodes one complete inbound frame in `encoding` under the connection's frame size limit
/// (see [`Codec::decode_limited`]).
pub fn decode_limited(
    encoding: Encoding,
    bytes: &[u8],
    max_frame_bytes: usize,
) -> Result<Value, DecodeError> {
    match encoding {
        Encoding::Etf => etf::decode(bytes, max_frame_bytes),
        Encoding::Json | Encoding::Msgpack => decode(encoding, bytes),
    }
}

/// Decodes one complete inbound frame in `encoding` into an [`Envelope`], under the frame
/// size limit (see [`Codec::decode_envelope`]).
pub fn decode_envelope(
    encoding: Encoding,
    frame: &Bytes,
    max_frame_bytes: usize,
) -> Result<Envelope, DecodeError> {
    match encoding {
        Encoding::Json => Json.decode_envelope_bytes(frame, max_frame_bytes),
        Encoding::Msgpack => Msgpack.decode_envelope_bytes(frame, max_frame_bytes),
        Encoding::Etf => Etf.decode_envelope_bytes(frame, max_frame_bytes),
    }
}

/// Encodes one outbound frame in `encoding` (see [`Codec::encode`]). Never fails today; see
/// [`codec`] for why it returns a `Result`.
pub fn encode(encoding: Encoding, frame: &OutFrame) -> Result<Bytes, EncodeError> {
    match encoding {
        Encoding::Json => Ok(json::encode(frame)),
        Encoding::Msgpack => Ok(msgpack::encode(frame)),
        Encoding::Etf => Ok(etf::encode(frame)),
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
    fn codec_answers_for_every_encoding() {
        for encoding in Encoding::ALL {
            let codec = codec(encoding).expect("every encoding has a codec");
            assert_eq!(codec.encoding(), encoding);
            assert_eq!(codec.frame_kind(), frame_kind(encoding));
        }
    }
}
