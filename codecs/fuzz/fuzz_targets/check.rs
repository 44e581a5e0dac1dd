//! What every decode target checks besides "no panic, no hang, no huge allocation" (which
//! libFuzzer itself watches): a frame that decodes is a value of the data model that every
//! encoding can carry, so encoding it as client data and decoding it again, in each encoding,
//! gives the same value back.

use std::borrow::Cow;

use ganglion_codecs::{MAX_NESTING, decode, encode};
use ganglion_core::{Encoding, Out, OutFrame, Value};

pub fn round_trips(value: &Value) {
    assert!(
        matches!(value, Value::Object(_)),
        "decoders only return objects"
    );
    assert!(
        value.depth() <= MAX_NESTING,
        "decoders enforce the nesting limit"
    );
    // Inside an envelope `d` is one level deeper; at the limit it no longer fits.
    if value.depth() >= MAX_NESTING {
        return;
    }
    let frame = OutFrame {
        op: 4,
        t: Some(Cow::Borrowed("SEND")),
        d: Out::Value(value.clone()),
        ts: 1,
        trace: None,
    };
    for encoding in Encoding::ALL {
        let bytes = encode(encoding, &frame).expect("every encoding has a codec");
        let decoded = decode(encoding, &bytes)
            .unwrap_or_else(|e| panic!("{encoding}: ganglion's own frame does not decode: {e}"));
        let Value::Object(mut envelope) = decoded else {
            panic!("{encoding}: not an object");
        };
        assert_eq!(envelope.remove("d").as_ref(), Some(value), "{encoding}");
    }
}
