//! Frames ⇄ bytes in the connection's encoding and framing.
//!
//! Outbound frames are serialized straight from borrowed structs (no intermediate
//! `serde_json::Value`), once, in the calling task; the connection task only writes bytes.
//! Inbound frames are read leniently: every member is decoded as a plain value and interpreted
//! afterwards, so no server input can make decoding panic or abort the connection.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dsn::{Encoding, Transport};
use crate::error::Error;

/// An encoded frame, ready for the transport: a websocket text or binary message, or a
/// length-prefixed TCP frame.
#[derive(Debug, Clone)]
pub(crate) enum OutFrame {
    Text(String),
    Binary(Bytes),
}

/// `{"op", "t", "d"}` as sent.
#[derive(Serialize)]
pub(crate) struct Envelope<'a, D: Serialize> {
    pub op: u8,
    pub t: Option<&'a str>,
    pub d: D,
}

/// A frame as received.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Inbound {
    #[serde(default)]
    pub op: Value,
    #[serde(default)]
    pub t: Value,
    #[serde(default)]
    pub d: Value,
    #[serde(default)]
    pub ts: Value,
}

/// Encodes and decodes frames for one encoding and transport.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec {
    pub encoding: Encoding,
    pub transport: Transport,
}

impl Codec {
    pub fn encode<T: Serialize + ?Sized>(&self, frame: &T) -> Result<OutFrame, Error> {
        let fail = |e: &dyn std::fmt::Display| Error::Payload(format!("cannot encode: {e}"));
        match (self.transport, self.encoding) {
            (Transport::WebSocket, Encoding::Json) => serde_json::to_string(frame)
                .map(OutFrame::Text)
                .map_err(|e| fail(&e)),
            (Transport::WebSocket, Encoding::Msgpack) => {
                let mut body = Vec::with_capacity(128);
                rmp_serde::encode::write_named(&mut body, frame).map_err(|e| fail(&e))?;
                Ok(OutFrame::Binary(body.into()))
            }
            (Transport::Tcp, encoding) => {
                // The 4-byte big-endian length goes in front of the body (SPEC §2.2).
                let mut buf = Vec::with_capacity(132);
                buf.extend_from_slice(&[0; 4]);
                match encoding {
                    Encoding::Json => {
                        serde_json::to_writer(&mut buf, frame).map_err(|e| fail(&e))?
                    }
                    Encoding::Msgpack => {
                        rmp_serde::encode::write_named(&mut buf, frame).map_err(|e| fail(&e))?
                    }
                }
                let len = u32::try_from(buf.len() - 4)
                    .map_err(|_| Error::Payload("a frame over 4 GiB".to_owned()))?;
                buf[..4].copy_from_slice(&len.to_be_bytes());
                Ok(OutFrame::Binary(buf.into()))
            }
        }
    }

    pub fn decode(&self, body: &[u8]) -> Result<Inbound, String> {
        match self.encoding {
            Encoding::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
            Encoding::Msgpack => rmp_serde::from_slice(body).map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tcp_frames_carry_a_big_endian_length() {
        let codec = Codec {
            encoding: Encoding::Json,
            transport: Transport::Tcp,
        };
        let OutFrame::Binary(bytes) = codec
            .encode(&Envelope {
                op: 5,
                t: None,
                d: json!({}),
            })
            .unwrap()
        else {
            panic!("TCP frames are binary");
        };
        let body = br#"{"op":5,"t":null,"d":{}}"#;
        assert_eq!(&bytes[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&bytes[4..], body);
    }

    #[test]
    fn msgpack_round_trips_with_named_keys_and_distinct_integers_and_floats() {
        let codec = Codec {
            encoding: Encoding::Msgpack,
            transport: Transport::WebSocket,
        };
        let OutFrame::Binary(bytes) = codec
            .encode(&Envelope {
                op: 4,
                t: Some("SEND"),
                d: json!({"i": 1, "f": 1.0, "u": u64::MAX}),
            })
            .unwrap()
        else {
            panic!("msgpack frames are binary");
        };
        let inbound = codec.decode(&bytes).unwrap();
        assert_eq!(inbound.op, json!(4));
        assert_eq!(inbound.t, json!("SEND"));
        assert_eq!(inbound.d, json!({"i": 1, "f": 1.0, "u": u64::MAX}));
        assert!(inbound.d["f"].is_f64() && inbound.d["i"].is_u64());
    }

    #[test]
    fn garbage_and_odd_shapes_decode_to_errors_or_defaults_without_panicking() {
        let json = Codec {
            encoding: Encoding::Json,
            transport: Transport::WebSocket,
        };
        assert!(json.decode(b"not json").is_err());
        assert!(json.decode(b"\"text\"").is_err());
        let odd = json.decode(br#"{"op":"4","t":7,"extra":1}"#).unwrap();
        assert_eq!((odd.op, odd.t, odd.d), (json!("4"), json!(7), Value::Null));
        let msgpack = Codec {
            encoding: Encoding::Msgpack,
            transport: Transport::Tcp,
        };
        assert!(msgpack.decode(&[0xc1]).is_err());
        assert!(msgpack.decode(&[]).is_err());
    }
}
