//! Frames ⇄ bytes in the connection's encoding and framing.
//!
//! Outbound frames are serialized straight from borrowed structs (no intermediate
//! `serde_json::Value`), once, in the calling task; the connection task only writes bytes.
//! Inbound frames are read leniently: every member is decoded as a plain value and interpreted
//! afterwards, so no server input can make decoding panic or abort the connection.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
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

/// A frame as received. Every member is read leniently: a member of an unexpected type reads
/// as absent instead of failing the frame, and `d` is read into the fields the client uses
/// (no map is built for it).
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    /// `op` when it is a non-negative integer.
    pub op: Option<u64>,
    pub t: Name,
    pub d: Data,
    /// Whether `d` was an object (dispatches without one are skipped).
    pub d_is_object: bool,
    pub ts: Option<i64>,
}

/// The dispatch names the client handles; anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Name {
    Send,
    Broadcast,
    Queue,
    QueueConfirm,
    QueryNodes,
    ClientConnected,
    ClientDisconnected,
    #[default]
    Other,
}

/// The members of `d` the client reads (null when absent, or when `d` is not an object).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Data {
    pub nonce: Value,
    pub payload: Value,
    pub heartbeat_interval: Value,
    pub restricted: Value,
    pub error: Value,
    pub extra_info: Value,
    pub reason: Value,
    pub queue: Value,
    pub id: Value,
    pub nodes: Value,
}

impl<'de> Deserialize<'de> for Inbound {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Inbound, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            op: Lenient<u64>,
            #[serde(default)]
            t: Name,
            #[serde(default)]
            d: Lenient<Data>,
            #[serde(default)]
            ts: Lenient<i64>,
        }
        let raw = Raw::deserialize(deserializer)?;
        Ok(Inbound {
            op: raw.op.0,
            t: raw.t,
            d_is_object: raw.d.0.is_some(),
            d: raw.d.0.unwrap_or_default(),
            ts: raw.ts.0,
        })
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dispatch name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Name, E> {
                Ok(match name {
                    "SEND" => Name::Send,
                    "BROADCAST" => Name::Broadcast,
                    "QUEUE" => Name::Queue,
                    "QUEUE_CONFIRM" => Name::QueueConfirm,
                    "QUERY_NODES" => Name::QueryNodes,
                    "CLIENT_CONNECTED" => Name::ClientConnected,
                    "CLIENT_DISCONNECTED" => Name::ClientDisconnected,
                    _ => Name::Other,
                })
            }
            fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Name, E> {
                Ok(std::str::from_utf8(name).map_or(Name::Other, |name| {
                    self.visit_str::<E>(name).unwrap_or(Name::Other)
                }))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Name, E> {
                Ok(Name::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Name, E> {
                Ok(Name::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Name, E> {
                Ok(Name::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Name, E> {
                Ok(Name::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Name, E> {
                Ok(Name::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Name, E> {
                Ok(Name::Other)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Name, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Name::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Name, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Name::Other)
            }
        }
        deserializer.deserialize_any(NameVisitor)
    }
}

/// A value read as `T` when it has `T`'s shape, and as `None` otherwise (consumed either way).
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Lenient<T> {
        Lenient(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Lenient<T>, D::Error> {
        // Through a `Value` for anything but the shapes `T` takes directly would cost an
        // allocation per frame; instead the visitor hands maps and integers to `T` and skips
        // the rest.
        struct LenientVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for LenientVisitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lenient<T>, E> {
                Ok(Lenient(
                    T::deserialize(de::value::U64Deserializer::<E>::new(v)).ok(),
                ))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Lenient<T>, E> {
                Ok(Lenient(
                    T::deserialize(de::value::I64Deserializer::<E>::new(v)).ok(),
                ))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Lenient<T>, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Lenient(Some(t)))
            }
        }
        deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

/// Room reserved for an outbound frame: enough for a small dispatch with its query, so most
/// frames are written without the buffer growing.
const FRAME_CAPACITY: usize = 512;

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
                let mut body = Vec::with_capacity(FRAME_CAPACITY);
                rmp_serde::encode::write_named(&mut body, frame).map_err(|e| fail(&e))?;
                Ok(OutFrame::Binary(body.into()))
            }
            (Transport::Tcp, encoding) => {
                // The 4-byte big-endian length goes in front of the body (SPEC §2.2).
                let mut buf = Vec::with_capacity(FRAME_CAPACITY);
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
                d: json!({"payload": {"i": 1, "f": 1.0, "u": u64::MAX}}),
            })
            .unwrap()
        else {
            panic!("msgpack frames are binary");
        };
        let inbound = codec.decode(&bytes).unwrap();
        assert_eq!((inbound.op, inbound.t), (Some(4), Name::Send));
        assert_eq!(inbound.d.payload, json!({"i": 1, "f": 1.0, "u": u64::MAX}));
        assert!(inbound.d.payload["f"].is_f64() && inbound.d.payload["i"].is_u64());
    }

    #[test]
    fn garbage_and_odd_shapes_decode_to_errors_or_defaults_without_panicking() {
        let json = Codec {
            encoding: Encoding::Json,
            transport: Transport::WebSocket,
        };
        assert!(json.decode(b"not json").is_err());
        assert!(json.decode(b"\"text\"").is_err());
        let odd = json
            .decode(br#"{"op":"4","t":7,"extra":1,"d":[1,{"a":2}],"ts":"now"}"#)
            .unwrap();
        assert_eq!((odd.op, odd.t, odd.ts), (None, Name::Other, None));
        assert_eq!((&odd.d.payload, &odd.d.nonce), (&Value::Null, &Value::Null));
        let odd = json
            .decode(br#"{"op":-4,"t":{"x":[1]},"d":{"payload":[1],"error":{"e":1},"other":2}}"#)
            .unwrap();
        assert_eq!((odd.op, odd.t), (None, Name::Other));
        assert_eq!(
            (&odd.d.payload, &odd.d.error),
            (&json!([1]), &json!({"e": 1}))
        );
        let msgpack = Codec {
            encoding: Encoding::Msgpack,
            transport: Transport::Tcp,
        };
        assert!(msgpack.decode(&[0xc1]).is_err());
        assert!(msgpack.decode(&[]).is_err());
    }
}
