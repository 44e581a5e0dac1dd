#![no_main]
//! ETF decoding (SPEC §2.7) of arbitrary bytes, including compressed terms under a small
//! inflation limit, and the round trip of whatever decodes.

use ganglion_codecs::decode_limited;
use ganglion_core::Encoding;
use libfuzzer_sys::fuzz_target;

#[path = "check.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_limited(Encoding::Etf, data, 64 * 1024) {
        check::round_trips(&value);
    }
    // The default limit must agree wherever the inflated size is not in question.
    if data.get(1) != Some(&80) {
        let limited = decode_limited(Encoding::Etf, data, 0);
        let default = ganglion_codecs::decode(Encoding::Etf, data);
        assert_eq!(
            limited, default,
            "the limit only matters for compressed terms"
        );
    }
});
