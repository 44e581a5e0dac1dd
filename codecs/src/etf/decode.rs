//! ETF bytes → `Value` (SPEC §2.7, inbound).
//!
//! A recursive descent over a byte slice, in the style of the MessagePack decoder: it never
//! panics and never trusts a declared length for an allocation (every element of a list, tuple
//! or map takes at least one byte, so the bytes left bound the capacity; binaries and atoms are
//! copied only after their bytes were found to be there). Errors carry a static text and the
//! offset of the offending tag.
//!
//! A compressed term (tag 80) is inflated first, into at most its declared size, and the
//! declared size may not exceed the frame size limit; offsets in errors about the inflated term
//! count from the start of the inflated bytes.

use std::borrow::Cow;

use flate2::{Decompress, FlushDecompress, Status};
use ganglion_core::{Map, Value};

use super::tag::*;
use crate::{DecodeError, MAX_NESTING};

/// Decodes one frame; a compressed term may inflate to at most `max_inflated` bytes.
pub(crate) fn decode(bytes: &[u8], max_inflated: usize) -> Result<Value, DecodeError> {
    match bytes {
        [] => Err(DecodeError::new("empty payload")),
        [VERSION, COMPRESSED, ..] => {
            let inflated = inflate(bytes, max_inflated)?;
            term(&inflated, 0)
        }
        [VERSION, ..] => term(bytes, 1),
        _ => Err(DecodeError::at(
            "not an ETF term (the version byte 131 is missing)",
            0,
        )),
    }
}

/// The term that starts at `bytes[start]`, which must be a map and the whole rest of `bytes`.
fn term(bytes: &[u8], start: usize) -> Result<Value, DecodeError> {
    // Refuse a non-map from its tag, before decoding a possibly large term for nothing.
    match bytes.get(start) {
        None => return Err(DecodeError::at("truncated input", start)),
        Some(&MAP) => {}
        Some(_) => return Err(DecodeError::at("the top-level term is not a map", start)),
    }
    let mut reader = Reader { bytes, pos: start };
    let value = reader.value(0)?;
    if reader.pos != bytes.len() {
        return Err(DecodeError::at(
            "trailing bytes after the top-level term",
            reader.pos,
        ));
    }
    Ok(value)
}

/// Inflates the compressed term of `frame` (`131, 80, <u32 size>, <zlib stream>`).
///
/// The declared size is checked against `max_inflated` before anything is inflated, and the
/// output buffer starts small and grows only as the stream really produces bytes, up to one
/// byte past the declared size: a stream that lies about its size is refused as soon as it
/// overruns it, so nothing ever inflates past the limit, whatever the compression ratio.
fn inflate(frame: &[u8], max_inflated: usize) -> Result<Vec<u8>, DecodeError> {
    const HEADER: usize = 6;
    let Some((&size, stream)) = frame
        .get(2..)
        .and_then(|rest| rest.split_first_chunk::<4>())
    else {
        return Err(DecodeError::at("truncated input", frame.len()));
    };
    let declared = usize::try_from(u32::from_be_bytes(size)).unwrap_or(usize::MAX);
    if declared > max_inflated {
        return Err(DecodeError::at(
            "a compressed term inflates beyond the frame size limit",
            1,
        ));
    }
    let mut inflater = Decompress::new(true);
    let mut out = Vec::with_capacity(declared.min(stream.len().saturating_mul(4).max(256)) + 1);
    loop {
        if out.len() == out.capacity() {
            // Room for one byte past the declared size, to notice a stream that overruns it.
            let room = (declared + 1).saturating_sub(out.len());
            out.reserve_exact(room.min(out.capacity().max(256)));
        }
        let (consumed, produced) = (inflater.total_in(), out.len());
        let input = usize::try_from(consumed)
            .ok()
            .and_then(|at| stream.get(at..))
            .unwrap_or_default();
        let status = inflater
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|_| {
                DecodeError::at("the compressed term is not a valid zlib stream", HEADER)
            })?;
        if out.len() > declared {
            return Err(DecodeError::at(
                "a compressed term inflates beyond its declared size",
                1,
            ));
        }
        match status {
            Status::StreamEnd => break,
            // Room for output was made above, so no progress means the input ran out.
            Status::Ok | Status::BufError
                if inflater.total_in() == consumed && out.len() == produced =>
            {
                return Err(DecodeError::at(
                    "the compressed term's zlib stream is truncated",
                    frame.len(),
                ));
            }
            Status::Ok | Status::BufError => {}
        }
    }
    let used = usize::try_from(inflater.total_in()).unwrap_or(usize::MAX);
    if used != stream.len() {
        return Err(DecodeError::at(
            "trailing bytes after the compressed term",
            HEADER.saturating_add(used),
        ));
    }
    if out.len() != declared {
        return Err(DecodeError::at(
            "a compressed term inflates to less than its declared size",
            1,
        ));
    }
    Ok(out)
}

/// A cursor over one term. Invariant: `pos <= bytes.len()`.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

// === impl Reader ===

impl<'a> Reader<'a> {
    /// One term whose tag is at `self.pos`, inside `depth` enclosing containers.
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let at = self.pos;
        let value = match self.u8()? {
            SMALL_INTEGER => Value::Int(i64::from(self.u8()?)),
            INTEGER => Value::Int(i64::from(i32::from_be_bytes(self.fixed()?))),
            SMALL_BIG => {
                let n = usize::from(self.u8()?);
                self.big(n, at)?
            }
            LARGE_BIG => {
                let n = self.len32()?;
                self.big(n, at)?
            }
            NEW_FLOAT => float(f64::from_be_bytes(self.fixed()?), at)?,
            FLOAT => self.old_float(at)?,
            BINARY => {
                let len = self.len32()?;
                Value::String(self.utf8(len, at)?)
            }
            t @ (ATOM | SMALL_ATOM | ATOM_UTF8 | SMALL_ATOM_UTF8) => {
                // Never interned: an atom is its name, and only these three are not strings.
                match self.atom(t, at)? {
                    name if name == "nil" => Value::Null,
                    name if name == "true" => Value::Bool(true),
                    name if name == "false" => Value::Bool(false),
                    name => Value::String(name.into_owned()),
                }
            }
            NIL => {
                nest(depth, at)?;
                Value::Array(Vec::new())
            }
            STRING => {
                nest(depth, at)?;
                let len = usize::from(u16::from_be_bytes(self.fixed()?));
                let bytes = self.take(len)?;
                Value::Array(bytes.iter().map(|&b| Value::Int(i64::from(b))).collect())
            }
            LIST => {
                let len = self.len32()?;
                let items = self.items(len, depth, at)?;
                // Only proper lists: the tail must be the empty list.
                let tail = self.pos;
                if self.u8()? != NIL {
                    return Err(DecodeError::at(
                        "an improper list (its tail is not []) is not supported",
                        tail,
                    ));
                }
                Value::Array(items)
            }
            SMALL_TUPLE => {
                let len = usize::from(self.u8()?);
                Value::Array(self.items(len, depth, at)?)
            }
            LARGE_TUPLE => {
                let len = self.len32()?;
                Value::Array(self.items(len, depth, at)?)
            }
            MAP => {
                let len = self.len32()?;
                return self.map(len, depth, at);
            }
            PID | NEW_PID | PORT | NEW_PORT | V4_PORT | REFERENCE | NEW_REFERENCE
            | NEWER_REFERENCE => {
                return Err(DecodeError::at(
                    "pids, ports and references are not supported",
                    at,
                ));
            }
            FUN | NEW_FUN | EXPORT => {
                return Err(DecodeError::at("funs and exports are not supported", at));
            }
            BIT_BINARY => {
                return Err(DecodeError::at(
                    "bit binaries (BIT_BINARY_EXT) are not supported",
                    at,
                ));
            }
            LOCAL => return Err(DecodeError::at("LOCAL_EXT is not supported", at)),
            ATOM_CACHE_REF => {
                return Err(DecodeError::at(
                    "atom cache references are not supported",
                    at,
                ));
            }
            COMPRESSED => {
                return Err(DecodeError::at(
                    "a compressed term is only allowed at the top level",
                    at,
                ));
            }
            VERSION => {
                return Err(DecodeError::at(
                    "a version byte inside a term is not supported",
                    at,
                ));
            }
            _ => return Err(DecodeError::at("unknown ETF tag", at)),
        };
        Ok(value)
    }

    /// `len` elements of a list or tuple.
    fn items(&mut self, len: usize, depth: usize, at: usize) -> Result<Vec<Value>, DecodeError> {
        let depth = nest(depth, at)?;
        let mut items = Vec::with_capacity(len.min(self.remaining()));
        for _ in 0..len {
            items.push(self.value(depth)?);
        }
        Ok(items)
    }

    fn map(&mut self, len: usize, depth: usize, at: usize) -> Result<Value, DecodeError> {
        let depth = nest(depth, at)?;
        let mut map = Map::new();
        for _ in 0..len {
            let key = self.key()?;
            let value = self.value(depth)?;
            // A repeated key: the last occurrence wins (SPEC §2.4).
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }

    /// A map key: a UTF-8 binary, or an atom, whose name is the key (`nil` and `true` too).
    fn key(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            BINARY => {
                let len = self.len32()?;
                self.utf8(len, at)
            }
            t @ (ATOM | SMALL_ATOM | ATOM_UTF8 | SMALL_ATOM_UTF8) => {
                self.atom(t, at).map(Cow::into_owned)
            }
            _ => Err(DecodeError::at("a map key is not a binary or an atom", at)),
        }
    }

    /// The name of the atom whose tag `t` was just read. ATOM_EXT and SMALL_ATOM_EXT are
    /// Latin-1 (each byte is one code point); the `_UTF8` tags must hold valid UTF-8. Borrowed
    /// whenever the bytes are already UTF-8, so `nil`, `true` and `false` cost no allocation.
    fn atom(&mut self, t: u8, at: usize) -> Result<Cow<'a, str>, DecodeError> {
        let len = match t {
            ATOM | ATOM_UTF8 => usize::from(u16::from_be_bytes(self.fixed()?)),
            _ => usize::from(self.u8()?),
        };
        let bytes = self.take(len)?;
        match t {
            ATOM | SMALL_ATOM if !bytes.is_ascii() => {
                Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()))
            }
            _ => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|_| DecodeError::at("a UTF-8 atom is not valid UTF-8", at)),
        }
    }

    /// A big integer of `n` little-endian digit bytes after its sign byte (SMALL_BIG_EXT,
    /// LARGE_BIG_EXT). Leading zero digits are allowed; the value must fit the data model's
    /// integer range, −2^63 ..= 2^64−1.
    fn big(&mut self, n: usize, at: usize) -> Result<Value, DecodeError> {
        let sign = self.u8()?;
        let digits = self.take(n)?;
        if sign > 1 {
            return Err(DecodeError::at(
                "a big integer's sign byte is not 0 or 1",
                at,
            ));
        }
        let significant = digits.iter().rposition(|&d| d != 0).map_or(0, |i| i + 1);
        let Some(digits) = digits.get(..significant).filter(|d| d.len() <= 8) else {
            return Err(DecodeError::at(
                "an integer outside the range -2^63..2^64-1",
                at,
            ));
        };
        let mut le = [0u8; 8];
        le[..digits.len()].copy_from_slice(digits);
        let magnitude = u64::from_le_bytes(le);
        if sign == 0 {
            return Ok(Value::from_u64(magnitude));
        }
        0i64.checked_sub_unsigned(magnitude)
            .map(Value::Int)
            .ok_or(DecodeError::at(
                "an integer outside the range -2^63..2^64-1",
                at,
            ))
    }

    /// FLOAT_EXT: 31 bytes of text, a C `"%.20e"` float padded with NULs (Erlang before R11B).
    fn old_float(&mut self, at: usize) -> Result<Value, DecodeError> {
        let text: [u8; 31] = self.fixed()?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let text = text.get(..end).unwrap_or_default();
        // Only the characters of a decimal float: Rust would also parse `inf` and `NaN`.
        let decimal = !text.is_empty()
            && text
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'));
        let parsed = std::str::from_utf8(text)
            .ok()
            .filter(|_| decimal)
            .and_then(|text| text.parse::<f64>().ok());
        match parsed {
            Some(f) => float(f, at),
            None => Err(DecodeError::at("a FLOAT_EXT is not a decimal float", at)),
        }
    }

    fn utf8(&mut self, len: usize, at: usize) -> Result<String, DecodeError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::at("a binary is not valid UTF-8", at))
    }

    /// A 32-bit big-endian length.
    fn len32(&mut self) -> Result<usize, DecodeError> {
        let len = u32::from_be_bytes(self.fixed()?);
        // Lossless wherever ganglion runs (usize is at least 32 bits there); on a smaller
        // target the length could not be satisfied by the input anyway.
        usize::try_from(len).map_err(|_| DecodeError::at("truncated input", self.pos))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.fixed().map(|[b]| b)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        match self.rest().first_chunk::<N>() {
            Some(chunk) => {
                self.pos += N;
                Ok(*chunk)
            }
            None => Err(DecodeError::at("truncated input", self.pos)),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        match self.rest().get(..len) {
            Some(bytes) => {
                self.pos += len;
                Ok(bytes)
            }
            None => Err(DecodeError::at("truncated input", self.pos)),
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn remaining(&self) -> usize {
        self.rest().len()
    }
}

/// The depth inside one more container, unless that is deeper than any decoder accepts.
fn nest(depth: usize, at: usize) -> Result<usize, DecodeError> {
    let depth = depth + 1;
    if depth > MAX_NESTING {
        return Err(DecodeError::at("nested too deeply", at));
    }
    Ok(depth)
}

fn float(f: f64, at: usize) -> Result<Value, DecodeError> {
    Value::from_f64(f).ok_or(DecodeError::at(
        "NaN and infinite floats are not allowed",
        at,
    ))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn compressed(term: &[u8], declared: u32) -> Vec<u8> {
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(term).expect("compress");
        let mut bytes = vec![VERSION, COMPRESSED];
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend_from_slice(&encoder.finish().expect("compress"));
        bytes
    }

    #[test]
    fn inflating_never_allocates_past_the_declared_size() {
        for len in [0, 1, 255, 256, 257, 4096, 100_000, 1 << 20] {
            let term = vec![0u8; len];
            let frame = compressed(&term, len as u32);
            let inflated = inflate(&frame, 1 << 20).expect("inflates");
            assert_eq!(inflated.len(), len);
            assert!(
                inflated.capacity() <= len + 1,
                "{len} bytes inflated into a buffer of {}",
                inflated.capacity()
            );
        }
    }

    #[test]
    fn a_stream_longer_than_declared_stops_one_byte_past_it() {
        let frame = compressed(&vec![7u8; 1 << 20], 1000);
        let err = inflate(&frame, 1 << 20).unwrap_err();
        assert_eq!(
            err.detail(),
            "a compressed term inflates beyond its declared size"
        );
    }

    #[test]
    fn the_declared_size_is_checked_before_inflating() {
        // Not even a zlib stream: the size alone refuses it.
        let mut frame = vec![VERSION, COMPRESSED];
        frame.extend_from_slice(&1001u32.to_be_bytes());
        let err = inflate(&frame, 1000).unwrap_err();
        assert_eq!(
            err.detail(),
            "a compressed term inflates beyond the frame size limit"
        );
    }

    #[test]
    fn big_integers_read_only_their_significant_digits() {
        let mut reader = Reader {
            bytes: &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            pos: 0,
        };
        assert_eq!(reader.big(11, 0), Ok(Value::Int(1)));
        assert_eq!(reader.pos, 12);
    }
}
