//! `decode_envelope` must agree with decoding to a `Value` and splitting it: same frames
//! accepted, same frames refused, same members.

use ganglion_codecs::{Codec, Json, Msgpack};
use ganglion_core::{Envelope, Value};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e9f64..1e9).prop_map(serde_json::Value::from),
        "[a-z\\u{e9}\\u{1f600} ]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{0,3}|op|d|t|ts|trace", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A top-level object mixing the envelope's members with others.
fn frame() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("op"),
                Just("d"),
                Just("t"),
                Just("ts"),
                Just("trace"),
                Just("x")
            ],
            value(),
        ),
        0..6,
    )
    .prop_map(|members| {
        serde_json::Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    })
}

fn split(codec: &dyn Codec, bytes: &[u8]) -> Option<Envelope> {
    codec
        .decode(bytes)
        .ok()
        .map(|v| Envelope::from_value(v).expect("an object"))
}

proptest! {
    #[test]
    fn both_paths_agree_on_well_formed_frames(frame in frame()) {
        let json = frame.to_string().into_bytes();
        prop_assert_eq!(Json.decode_envelope(&json, 1 << 20).ok(), split(&Json, &json));
        let msgpack = rmp_serde::to_vec_named(&frame).unwrap();
        prop_assert_eq!(Msgpack.decode_envelope(&msgpack, 1 << 20).ok(), split(&Msgpack, &msgpack));
    }

    #[test]
    fn both_paths_agree_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(Json.decode_envelope(&bytes, 1 << 20).ok(), split(&Json, &bytes));
        prop_assert_eq!(Msgpack.decode_envelope(&bytes, 1 << 20).ok(), split(&Msgpack, &bytes));
    }

    #[test]
    fn both_paths_agree_on_damaged_frames(frame in frame(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
        for mut bytes in [frame.to_string().into_bytes(), rmp_serde::to_vec_named(&frame).unwrap()] {
            if bytes.is_empty() { continue; }
            let at = cut.index(bytes.len());
            bytes[at] ^= flip;
            prop_assert_eq!(Json.decode_envelope(&bytes, 1 << 20).ok(), split(&Json, &bytes));
            prop_assert_eq!(Msgpack.decode_envelope(&bytes, 1 << 20).ok(), split(&Msgpack, &bytes));
        }
    }
}

#[test]
fn a_repeated_member_keeps_its_last_value_and_unknown_members_are_validated() {
    let frame = br#"{"op":4,"t":"A","t":"B","x":1e400}"#;
    assert!(
        Json.decode_envelope(frame, 1 << 20).is_err(),
        "1e400 is outside the data model"
    );
    let frame = br#"{"op":4,"t":"A","t":"B","x":[1]}"#;
    let envelope = Json.decode_envelope(frame, 1 << 20).unwrap();
    assert_eq!(envelope.t, Value::from("B"));
    assert_eq!(envelope.op, Some(4));
    let frame = br#"{"op":-0}"#;
    assert_eq!(Json.decode_envelope(frame, 1 << 20).unwrap().op, Some(0));
}
