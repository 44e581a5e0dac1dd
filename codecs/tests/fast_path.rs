//! The MessagePack fast path for SEND and BROADCAST (`decode_envelope_bytes` keeping `d`'s
//! members in wire form) must be invisible: the same frames accepted and refused as by the
//! full decoder, the same values, and the same bytes on the wire for every recipient encoding.
//!
//! Frames are written by a test encoder that picks, at random, any MessagePack family a value
//! fits in, so both the copied-as-is path (normal form) and the decode-then-encode path run.

mod support;

use bytes::Bytes;
use ganglion_codecs::{Codec, Msgpack};
use ganglion_core::{Map, Out, Value};
use proptest::prelude::*;
use support::{Choices, delivered, same_meaning};

fn value() -> impl Strategy<Value = Value> {
    support::value("[a-z\\u{e9}\\u{1f600} ]{0,40}")
}

/// Writes `value` as MessagePack in a family chosen by `choices` among those it fits in.
fn write(value: &Value, choices: &mut Choices, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => write_int(*i, choices, out),
        Value::UInt(u) => {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
        Value::Float(f) => {
            let as_f32 = *f as f32;
            if f64::from(as_f32).to_bits() == f.to_bits() && choices.pick(3) == 1 {
                out.push(0xca);
                out.extend_from_slice(&as_f32.to_be_bytes());
            } else {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
        }
        Value::String(s) => write_str(s.as_bytes(), choices, out),
        Value::Array(items) => {
            write_header(items.len(), [0x90, 0xdc, 0xdd], choices, out);
            for item in items {
                write(item, choices, out);
            }
        }
        Value::Object(map) => {
            write_header(map.len(), [0x80, 0xde, 0xdf], choices, out);
            let mut entries: Vec<_> = map.iter().collect();
            if choices.pick(4) == 1 {
                entries.reverse();
            }
            for (key, value) in entries {
                write_str(key.as_bytes(), choices, out);
                write(value, choices, out);
            }
        }
    }
}

fn write_int(i: i64, choices: &mut Choices, out: &mut Vec<u8>) {
    let options = int_options(i);
    out.extend_from_slice(&options[choices.pick(options.len())]);
}

/// Every MessagePack encoding of `i`, the one ganglion writes first.
fn int_options(i: i64) -> Vec<Vec<u8>> {
    let mut options: Vec<Vec<u8>> = Vec::new();
    if (0..=0x7f).contains(&i) {
        options.push(vec![i as u8]);
    } else if (-32..0).contains(&i) {
        options.push(vec![i as i8 as u8]);
    }
    if let Ok(u) = u64::try_from(i) {
        if let Ok(v) = u8::try_from(u) {
            options.push([&[0xcc][..], &v.to_be_bytes()].concat());
        }
        if let Ok(v) = u16::try_from(u) {
            options.push([&[0xcd][..], &v.to_be_bytes()].concat());
        }
        if let Ok(v) = u32::try_from(u) {
            options.push([&[0xce][..], &v.to_be_bytes()].concat());
        }
        options.push([&[0xcf][..], &u.to_be_bytes()].concat());
    }
    if let Ok(v) = i8::try_from(i) {
        options.push([&[0xd0][..], &v.to_be_bytes()].concat());
    }
    if let Ok(v) = i16::try_from(i) {
        options.push([&[0xd1][..], &v.to_be_bytes()].concat());
    }
    if let Ok(v) = i32::try_from(i) {
        options.push([&[0xd2][..], &v.to_be_bytes()].concat());
    }
    options.push([&[0xd3][..], &i.to_be_bytes()].concat());
    options
}

fn write_str(bytes: &[u8], choices: &mut Choices, out: &mut Vec<u8>) {
    let options = str_headers(bytes.len());
    out.extend_from_slice(&options[choices.pick(options.len())]);
    out.extend_from_slice(bytes);
}

/// Every header a string of `len` bytes may have (str and bin families), ganglion's first.
fn str_headers(len: usize) -> Vec<Vec<u8>> {
    let mut options = Vec::new();
    if len < 32 {
        options.push(vec![0xa0 | len as u8]);
    }
    if let Ok(len) = u8::try_from(len) {
        options.push(vec![0xd9, len]);
        options.push(vec![0xc4, len]);
    }
    if let Ok(len) = u16::try_from(len) {
        options.push([&[0xda][..], &len.to_be_bytes()].concat());
        options.push([&[0xc5][..], &len.to_be_bytes()].concat());
    }
    let len = u32::try_from(len).expect("a test string under 4 GiB");
    options.push([&[0xdb][..], &len.to_be_bytes()].concat());
    options.push([&[0xc6][..], &len.to_be_bytes()].concat());
    options
}

/// A map or array header: `markers` are the fix, 16 and 32-bit families.
fn write_header(len: usize, markers: [u8; 3], choices: &mut Choices, out: &mut Vec<u8>) {
    let options = container_headers(len, markers);
    out.extend_from_slice(&options[choices.pick(options.len())]);
}

/// Every header a map or array of `len` may have, ganglion's first.
fn container_headers(len: usize, [fix, family16, family32]: [u8; 3]) -> Vec<Vec<u8>> {
    let mut options = Vec::new();
    if len < 16 {
        options.push(vec![fix | len as u8]);
    }
    if let Ok(len) = u16::try_from(len) {
        options.push([&[family16][..], &len.to_be_bytes()].concat());
    }
    let len = u32::try_from(len).expect("a test container under 4G members");
    options.push([&[family32][..], &len.to_be_bytes()].concat());
    options
}

fn encoded(value: &Value, choices: &mut Choices) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, choices, &mut out);
    out
}

/// A SEND/BROADCAST frame: `members` of `d` in the given order, each already encoded.
fn frame(t: &str, members: &[(&str, Vec<u8>)]) -> Bytes {
    let mut out = vec![0x83, 0xa2, b'o', b'p', 0x04, 0xa1, b't'];
    out.push(0xa0 | t.len() as u8);
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(&[0xa1, b'd', 0x80 | members.len() as u8]);
    for (key, value) in members {
        out.push(0xa0 | key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(value);
    }
    Bytes::from(out)
}

/// Both decoders agree on `bytes`: both refuse it, or both accept it with the same meaning.
fn agree(bytes: &Bytes) -> Result<(), TestCaseError> {
    let fast = Msgpack.decode_envelope_bytes(bytes, 1 << 20);
    let full = Msgpack.decode_envelope(bytes, 1 << 20);
    prop_assert_eq!(fast.is_ok(), full.is_ok(), "{:?} / {:?}", fast, full);
    let (Ok(fast), Ok(full)) = (fast, full) else {
        return Ok(());
    };
    same_meaning(fast, full)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The test encoder writes what it means to.
    #[test]
    fn test_encoder_is_faithful(v in value(), seed in 1u64.., canonical in any::<bool>()) {
        let mut choices = Choices((!canonical).then_some(seed));
        let mut bytes = vec![0x81, 0xa1, b'v'];
        write(&v, &mut choices, &mut bytes);
        let Ok(Value::Object(mut map)) = Msgpack.decode(&bytes) else {
            return Err(TestCaseError::fail("does not decode"));
        };
        prop_assert_eq!(map.remove("v"), Some(v));
    }

    /// A well-formed SEND or BROADCAST takes the fast path; its members decode to what was
    /// sent, and every encoding writes the payload exactly as if it had been decoded on arrival.
    #[test]
    fn fast_members_mean_what_was_sent(
        target in value(),
        payload in value(),
        nonce in prop::option::of(value()),
        extra in prop::option::of(value()),
        broadcast in any::<bool>(),
        seed in 1u64..,
        canonical in any::<bool>(),
    ) {
        let mut choices = Choices((!canonical).then_some(seed));
        let members = support::members(&target, &payload, &nonce, &extra, |v| {
            encoded(v, &mut choices)
        });
        let t = if broadcast { "BROADCAST" } else { "SEND" };
        let bytes = frame(t, &members);
        let normal = support::fast_members_mean(&Msgpack, &bytes, &target, &payload, &nonce)?;
        // What ganglion's encoder writes is normal form, so it is copied as it came.
        if canonical {
            prop_assert!(normal);
        }
        agree(&bytes)?;
    }

    /// Arbitrary bytes: accepted and refused alike.
    #[test]
    fn arbitrary_bytes_agree(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        agree(&Bytes::from(bytes))?;
    }

    /// Damaged SEND frames (a byte changed, the frame cut short, or bytes inserted) are
    /// accepted and refused alike, with the same meaning when accepted — also right after the
    /// intact frame, whose target the fast path then recognises by its bytes instead of
    /// checking it again.
    #[test]
    fn damaged_frames_agree(
        target in value(),
        payload in value(),
        seed in 1u64..,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0..3u8,
    ) {
        let mut choices = Choices(Some(seed));
        let members = [
            ("target", encoded(&target, &mut choices)),
            ("payload", encoded(&payload, &mut choices)),
        ];
        let intact = frame("SEND", &members);
        agree(&intact)?;
        agree(&support::damaged(&intact, at, byte, how))?;
    }
}

/// A target seen before is recognised by its bytes; one that differs in a single byte, or is
/// cut short, is checked in full and refused as the full decoder refuses it.
#[test]
fn a_repeated_target_is_recognised_and_anything_else_is_checked() {
    let target = {
        let mut out = vec![0x82];
        out.extend_from_slice(&[0xa3, b'a', b'p', b'p', 0xa4, b'c', b'h', b'a', b't']);
        out.extend_from_slice(&[0xa3, b'o', b'p', b's', 0x90]);
        out
    };
    let payload = vec![0xa2, b'h', b'i'];
    let good = frame(
        "SEND",
        &[("target", target.clone()), ("payload", payload.clone())],
    );
    for _ in 0..3 {
        let envelope = Msgpack
            .decode_envelope_bytes(&good, 1 << 20)
            .expect("decodes");
        let fast = envelope.fast.expect("the fast path");
        assert_eq!(&fast.target.bytes[..], &target[..]);
        assert!(fast.target.normal);
    }
    // The same length, one byte not UTF-8: refused, although it starts like the known target.
    let mut bad_utf8 = target.clone();
    bad_utf8[8] = 0xff;
    // Cut short inside the target: the known bytes are not all there.
    let short = target[..target.len() - 1].to_vec();
    for broken in [bad_utf8, short] {
        let bytes = frame("SEND", &[("target", broken), ("payload", payload.clone())]);
        assert!(Msgpack.decode_envelope_bytes(&bytes, 1 << 20).is_err());
        assert!(Msgpack.decode_envelope(&bytes, 1 << 20).is_err());
    }
    // A target not in normal form (a str8 where a fixstr fits) keeps that answer when repeated.
    let mut str8 = vec![
        0x82, 0xd9, 0x03, b'a', b'p', b'p', 0xa4, b'c', b'h', b'a', b't',
    ];
    str8.extend_from_slice(&[0xa3, b'o', b'p', b's', 0x90]);
    let odd = frame("SEND", &[("target", str8), ("payload", payload)]);
    for _ in 0..2 {
        let envelope = Msgpack
            .decode_envelope_bytes(&odd, 1 << 20)
            .expect("decodes");
        assert!(!envelope.fast.expect("the fast path").target.normal);
    }
}

#[test]
fn other_frames_are_decoded_in_full() {
    let members = [
        ("target", encoded(&Value::from("q"), &mut Choices(None))),
        ("payload", vec![0x01]),
    ];
    // Not SEND or BROADCAST: QUEUE keeps its payload as a value for the journal.
    let queue = frame("QUEUE", &members);
    let envelope = Msgpack.decode_envelope_bytes(&queue, 1 << 20).unwrap();
    assert!(envelope.fast.is_none());
    assert_eq!(
        envelope.d,
        Value::Object(Map::from([
            ("target".to_owned(), Value::from("q")),
            ("payload".to_owned(), Value::Int(1)),
        ]))
    );
    // Without a payload, the router's `invalid dispatch payload` echoes `d`: it must be there.
    let no_payload = frame("SEND", &members[..1]);
    let envelope = Msgpack.decode_envelope_bytes(&no_payload, 1 << 20).unwrap();
    assert!(envelope.fast.is_none());
    assert!(envelope.d.as_object().unwrap().contains_key("target"));
    // ... and `t`, which the fast path would have kept as a label only.
    assert_eq!(envelope.t, Value::from("SEND"));
}

/// A map of these members, each already encoded.
fn map(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x80 | members.len() as u8];
    for (key, value) in members {
        out.push(0xa0 | key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// A SEND's `t` is kept as a label in `fast` (nothing allocated) whatever string family it
/// came in, only when the frame takes the fast path, and a repeated `t` is the last one.
#[test]
fn the_event_name_of_a_fast_dispatch_is_a_label() {
    let str8 = |text: &str| [&[0xd9, text.len() as u8][..], text.as_bytes()].concat();
    let fix = |text: &str| encoded(&Value::from(text), &mut Choices(None));
    let d = map(&[("target", vec![0xc0]), ("payload", vec![0x01])]);
    let decode = |members: &[(&str, Vec<u8>)]| {
        let bytes = Bytes::from(map(members));
        let fast = Msgpack.decode_envelope_bytes(&bytes, 1 << 20).unwrap();
        let full = Msgpack.decode_envelope(&bytes, 1 << 20).unwrap();
        assert_eq!(fast.event_name(), full.event_name());
        fast
    };
    for t in [fix("SEND"), str8("SEND"), fix("BROADCAST")] {
        let envelope = decode(&[("op", vec![0x04]), ("t", t), ("d", d.clone())]);
        assert_eq!(envelope.t, Value::Null);
        assert!(envelope.fast.is_some());
        assert!(matches!(envelope.event_name(), Some("SEND" | "BROADCAST")));
    }
    let last_wins = decode(&[
        ("op", vec![0x04]),
        ("t", fix("SEND")),
        ("d", d.clone()),
        ("t", fix("QUEUE")),
    ]);
    assert!(last_wins.fast.is_none());
    assert_eq!(last_wins.t, Value::from("QUEUE"));
    let last_wins = decode(&[
        ("t", fix("QUEUE")),
        ("op", vec![0x04]),
        ("t", fix("SEND")),
        ("d", d.clone()),
    ]);
    assert_eq!(last_wins.fast.map(|fast| fast.t), Some("SEND"));
    assert_eq!(last_wins.t, Value::Null);
    // Not an op 4: decoded in full, `t` included.
    let identify = decode(&[("op", vec![0x01]), ("t", fix("SEND")), ("d", d)]);
    assert!(identify.fast.is_none());
    assert_eq!(identify.t, Value::from("SEND"));
}

#[test]
fn the_last_repeated_member_wins() {
    let send = frame(
        "SEND",
        &[
            ("target", vec![0x01]),
            ("payload", vec![0x02]),
            ("payload", vec![0x03]),
            ("target", vec![0x04]),
        ],
    );
    let envelope = Msgpack.decode_envelope_bytes(&send, 1 << 20).unwrap();
    let fast = envelope.fast.unwrap();
    assert_eq!(fast.target.value(), Value::Int(4));
    assert_eq!(fast.payload.value(), Value::Int(3));
}

#[test]
fn a_payload_not_in_normal_form_is_encoded_afresh() {
    // 1 as a uint16, a map with keys out of order, a repeated key.
    for payload in [
        vec![0xcd, 0x00, 0x01],
        vec![0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x02],
        vec![0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02],
    ] {
        let send = frame("SEND", &[("target", vec![0xc0]), ("payload", payload)]);
        let fast = Msgpack
            .decode_envelope_bytes(&send, 1 << 20)
            .unwrap()
            .fast
            .unwrap();
        assert!(!fast.payload.normal);
        let value = fast.payload.value();
        assert_eq!(
            delivered(&Msgpack, Out::Raw(fast.payload)),
            delivered(&Msgpack, Out::Value(value))
        );
    }
}

/// Every encoding of values at the families' boundaries: only ganglion's own is normal form,
/// and whichever it is, the payload is delivered as if decoded on arrival.
#[test]
fn normal_form_at_every_boundary() {
    let mut cases: Vec<(Vec<u8>, bool)> = Vec::new();
    let ints = [
        0,
        1,
        0x7f,
        0x80,
        0xff,
        0x100,
        0xffff,
        0x1_0000,
        0xffff_ffff,
        0x1_0000_0000,
        i64::MAX,
        -1,
        -32,
        -33,
        -128,
        -129,
        -32768,
        -32769,
        i64::from(i32::MIN),
        i64::from(i32::MIN) - 1,
        i64::MIN,
    ];
    for i in ints {
        for (n, bytes) in int_options(i).into_iter().enumerate() {
            cases.push((bytes, n == 0));
        }
    }
    for len in [0, 1, 31, 32, 255, 256, 65535, 65536] {
        for (n, header) in str_headers(len).into_iter().enumerate() {
            cases.push(([header, vec![b'x'; len]].concat(), n == 0));
        }
    }
    for len in [0, 1, 15, 16, 65535, 65536] {
        for (n, header) in container_headers(len, [0x90, 0xdc, 0xdd])
            .into_iter()
            .enumerate()
        {
            cases.push(([header, vec![0xc0; len]].concat(), n == 0));
        }
        let mut members = Vec::new();
        for k in 0..len {
            // Keys in rising byte order: "k00000", "k00001", ...
            members.push(0xa6);
            members.extend_from_slice(format!("k{k:05}").as_bytes());
            members.push(0xc0);
        }
        for (n, header) in container_headers(len, [0x80, 0xde, 0xdf])
            .into_iter()
            .enumerate()
        {
            cases.push(([header, members.clone()].concat(), n == 0));
        }
    }
    cases.push((vec![0xca, 0x3f, 0xc0, 0, 0], false)); // 1.5 as a float 32
    cases.push(([&[0xcb][..], &1.5f64.to_be_bytes()].concat(), true));
    cases.push(([&[0xcb][..], &(-0.0f64).to_be_bytes()].concat(), true));
    for (payload, normal) in cases {
        let send = frame(
            "SEND",
            &[("target", vec![0xc0]), ("payload", payload.clone())],
        );
        let fast = Msgpack
            .decode_envelope_bytes(&send, 1 << 20)
            .expect("decodes")
            .fast
            .expect("the fast path");
        assert_eq!(
            fast.payload.normal,
            normal,
            "{:x?}",
            &payload[..payload.len().min(8)]
        );
        let value = fast.payload.value();
        assert_eq!(
            delivered(&Msgpack, Out::Raw(fast.payload)),
            delivered(&Msgpack, Out::Value(value))
        );
    }
}
