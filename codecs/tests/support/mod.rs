//! What the fast-path tests of both encodings share: the values they send, the random choices
//! of how to write them, and what "the same meaning" and "the same delivery" are.

// Each test binary uses a part of it.
#![allow(dead_code)]

use bytes::Bytes;
use ganglion_codecs::{Codec, Etf, Json, Msgpack};
use ganglion_core::{Envelope, Out, OutFrame, Value};
use proptest::prelude::*;

/// Any value of the data model; strings are drawn from the regex `strings`.
pub fn value(strings: &'static str) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-300i64..300).prop_map(Value::Int),
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Value::UInt),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float),
        prop_oneof![Just(1.5f64), Just(-0.0), Just(0.0), Just(1e300)].prop_map(Value::Float),
        strings.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 20, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,3}|target|payload|nonce", inner, 0..20)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Chooses how a test writer writes: `None` always the way ganglion's encoder writes.
pub struct Choices(pub Option<u64>);

impl Choices {
    /// Whether to depart from ganglion's form here. Departures are rare, so that a value often
    /// departs in one place only: a check that misses one kind of departure then shows.
    pub fn depart(&mut self) -> bool {
        self.draw().is_some_and(|state| state % 16 == 0)
    }

    /// One of `n` options; option 0 is ganglion's, the others are rare (as in [`Self::depart`]).
    pub fn pick(&mut self, n: usize) -> usize {
        match self.draw() {
            Some(state) if state % 16 == 0 => ((state >> 8) % n as u64) as usize,
            _ => 0,
        }
    }

    fn draw(&mut self) -> Option<u64> {
        let state = self.0.as_mut()?;
        // xorshift64
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        Some(*state)
    }
}

/// The bytes a recipient of `codec` gets for a delivery of `payload`.
pub fn delivered(codec: &dyn Codec, payload: Out) -> Bytes {
    codec.encode(&OutFrame {
        ts: 1_700_000_000_000,
        ..OutFrame::delivery("SEND", Out::Int(7), payload)
    })
}

/// The fast path's envelope means what the full decoder's does.
pub fn same_meaning(fast: Envelope, full: Envelope) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        (&fast.op, fast.event_name(), fast.ts(), fast.trace()),
        (&full.op, full.event_name(), full.ts(), full.trace())
    );
    let Some(members) = fast.fast else {
        prop_assert_eq!((fast.d, fast.t), (full.d, full.t));
        return Ok(());
    };
    prop_assert_eq!((fast.d, fast.t), (Value::Null, Value::Null));
    let d = full.d.as_object().expect("d is a map");
    prop_assert_eq!(Some(&members.target.value()), d.get("target"));
    prop_assert_eq!(Some(&members.payload.value()), d.get("payload"));
    let nonce = members.nonce.map(|n| n.value());
    prop_assert_eq!(nonce.as_ref(), d.get("nonce"));
    Ok(())
}

/// `bytes`, a SEND or BROADCAST of these members, takes `codec`'s fast path; its members decode
/// to what was sent, and every encoding writes the payload exactly as if it had been decoded on
/// arrival. Answers whether the payload was found in normal form.
pub fn fast_members_mean(
    codec: &dyn Codec,
    bytes: &Bytes,
    target: &Value,
    payload: &Value,
    nonce: &Option<Value>,
) -> Result<bool, TestCaseError> {
    let envelope = codec
        .decode_envelope_bytes(bytes, 1 << 20)
        .expect("decodes");
    let fast = envelope.fast.as_deref().expect("the fast path").clone();
    prop_assert_eq!(&fast.target.value(), target);
    prop_assert_eq!(&fast.payload.value(), payload);
    prop_assert_eq!(&fast.nonce.map(|n| n.value()), nonce);
    for recipient in [&Json as &dyn Codec, &Msgpack, &Etf] {
        prop_assert_eq!(
            delivered(recipient, Out::Raw(fast.payload.clone())),
            delivered(recipient, Out::Value(payload.clone())),
            "{:?}",
            recipient
        );
    }
    Ok(fast.payload.normal)
}

/// The members of a SEND's `d`, each written by `write`: the payload, the target, then the
/// nonce and an unknown member when given (the fast path must not rely on any order).
pub fn members<T>(
    target: &Value,
    payload: &Value,
    nonce: &Option<Value>,
    extra: &Option<Value>,
    mut write: impl FnMut(&Value) -> T,
) -> Vec<(&'static str, T)> {
    let mut members = vec![("payload", write(payload)), ("target", write(target))];
    if let Some(nonce) = nonce {
        members.push(("nonce", write(nonce)));
    }
    if let Some(extra) = extra {
        members.push(("extra", write(extra)));
    }
    members
}

/// `frame` damaged at the index `at` picks: the byte there changed to `byte` (`how` 0), the frame
/// cut short there (1), or `byte` inserted there (2).
pub fn damaged(frame: &[u8], at: prop::sample::Index, byte: u8, how: u8) -> Bytes {
    let mut bytes = frame.to_vec();
    let i = at.index(bytes.len());
    match how {
        0 => bytes[i] = byte,
        1 => bytes.truncate(i),
        _ => bytes.insert(i, byte),
    }
    Bytes::from(bytes)
}
