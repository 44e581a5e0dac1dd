#![no_main]
//! MessagePack decoding (SPEC §2.6) of arbitrary bytes, and the round trip of whatever decodes.

use ganglion_core::Encoding;
use libfuzzer_sys::fuzz_target;

#[path = "check.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = ganglion_codecs::decode(Encoding::Msgpack, data) {
        check::round_trips(&value);
    }
});
