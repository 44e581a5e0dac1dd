#![no_main]
//! JSON decoding (SPEC §2.5) of arbitrary bytes, and the round trip of whatever decodes.

use ganglion_core::Encoding;
use libfuzzer_sys::fuzz_target;

#[path = "check.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = ganglion_codecs::decode(Encoding::Json, data) {
        check::round_trips(&value);
    }
});
