//! MessagePack bytes → `Value` (SPEC §2.6, inbound).
//!
//! A recursive descent over a byte slice. It never panics and never trusts a declared length for
//! an allocation: every element of an array takes at least one byte, so the bytes left bound
//! the capacity, and strings are copied only after their bytes were found to be there. Errors
//! carry a static text and the offset of the offending marker, so building one costs nothing.

use std::cell::RefCell;

use bytes::Bytes;
use ganglion_core::{Encoding, Envelope, Map, Value};

use super::marker::*;
use crate::fast::{self, Members};
use crate::{DecodeError, MAX_NESTING, is_utf8};

thread_local! {
    /// The last target this thread checked ([`fast::LastTarget`]). MessagePack values delimit
    /// themselves, so bytes that begin with a complete, checked value hold exactly that value.
    static LAST_TARGET: RefCell<(Vec<u8>, bool)> = const { RefCell::new((Vec::new(), false)) };
}
pub(crate) fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    // Refuse a non-map from its marker, before decoding a possibly large value for nothing.
    match bytes.first() {
        None => return Err(DecodeError::new("empty payload")),
        Some(&m) if is_map(m) => {}
        Some(_) => return Err(DecodeError::at("the top-level value is not a map", 0)),
    }
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(0)?;
    if reader.pos != bytes.len() {
        return Err(DecodeError::at(
            "trailing bytes after the top-level value",
            reader.pos,
        ));
    }
    Ok(value)
}

/// A frame straight into an [`Envelope`]: the top-level map's members are matched by their key
/// bytes instead of becoming a map with owned keys.
pub(crate) fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    envelope(bytes, None)
}

/// [`decode_envelope`] for a frame held in `Bytes`: a SEND or BROADCAST keeps its `d` in wire
/// form ([`FastDispatch`]), checked by [`Reader::skip`] exactly as decoding would check it.
/// Any other frame decodes as usual.
pub(crate) fn decode_envelope_fast(frame: &Bytes) -> Result<Envelope, DecodeError> {
    envelope(frame, Some(frame))
}

/// Both of the above: `frame` (the same bytes as `bytes`) allows the fast path.
fn envelope(bytes: &[u8], frame: Option<&Bytes>) -> Result<Envelope, DecodeError> {
    let mut reader = Reader { bytes, pos: 0 };
    let len = match reader.u8() {
        Err(_) => return Err(DecodeError::new("empty payload")),
        Ok(m @ 0x80..=0x8f) => usize::from(m & 0x0f),
        Ok(m @ (MAP16 | MAP32)) => reader.len(m)?,
        Ok(_) => return Err(DecodeError::at("the top-level value is not a map", 0)),
    };
    let depth = nest(0, 0)?;
    let (mut op, mut t, mut ts, mut trace) = (Value::Null, Value::Null, Value::Null, Value::Null);
    // `d` as a value, or (when it is a map) its span and the spans of its members.
    let mut d = Value::Null;
    let mut d_map: Option<(usize, Members)> = None;
    // `t` when it is SEND or BROADCAST in its usual form: a label, so nothing is allocated for
    // it unless the frame turns out not to take the fast path.
    let mut t_label: Option<&'static str> = None;
    for _ in 0..len {
        let key = reader.key_bytes()?;
        if key == b"t"
            && frame.is_some()
            && let Some((label, len)) = routed_event(reader.rest())
        {
            reader.pos += len;
            t_label = Some(label);
            t = Value::Null;
            continue;
        }
        if key == b"d" && frame.is_some() && reader.rest().first().is_some_and(|m| is_map(*m)) {
            let start = reader.pos;
            d_map = Some((start, reader.scan_members(depth)?));
            d = Value::Null;
            continue;
        }
        let value = reader.value(depth)?;
        // A repeated key: the last occurrence wins (SPEC §2.4).
        match key {
            b"op" => op = value,
            b"d" => {
                d = value;
                d_map = None;
            }
            b"t" => {
                t = value;
                t_label = None;
            }
            b"ts" => ts = value,
            b"trace" => trace = value,
            _ => {}
        }
    }
    if reader.pos != bytes.len() {
        return Err(DecodeError::at(
            "trailing bytes after the top-level value",
            reader.pos,
        ));
    }
    let label = t_label.or_else(|| match t.as_str() {
        Some("SEND") => Some("SEND"),
        Some("BROADCAST") => Some("BROADCAST"),
        _ => None,
    });
    let fast = match (&d_map, frame, label) {
        (Some((_, members)), Some(frame), Some(label)) if op == Value::Int(4) => {
            members.fast(label, frame, Encoding::Msgpack, decode_checked)
        }
        _ => None,
    };
    match (&fast, t_label) {
        (Some(_), _) => t = Value::Null,
        (None, Some(label)) => t = Value::from(label),
        (None, None) => {}
    }
    if fast.is_none()
        && let Some((start, _)) = d_map
    {
        // Checked already, so decoding cannot fail here; it would say so if it did.
        d = Reader { bytes, pos: start }.value(depth)?;
    }
    let mut envelope = Envelope::from_parts(&op, d, t, ts, trace);
    envelope.fast = fast;
    Ok(envelope)
}

/// `SEND` or `BROADCAST` as a fixstr at the start of `rest`, and its length in bytes.
fn routed_event(rest: &[u8]) -> Option<(&'static str, usize)> {
    const SEND: &[u8] = b"\xa4SEND";
    const BROADCAST: &[u8] = b"\xa9BROADCAST";
    if rest.starts_with(SEND) {
        Some(("SEND", SEND.len()))
    } else if rest.starts_with(BROADCAST) {
        Some(("BROADCAST", BROADCAST.len()))
    } else {
        None
    }
}

/// Decodes one MessagePack value that was checked when its frame arrived.
fn decode_checked(bytes: &[u8]) -> Option<Value> {
    Reader { bytes, pos: 0 }.value(0).ok()
}

fn is_map(m: u8) -> bool {
    matches!(m, 0x80..=0x8f | MAP16 | MAP32)
}

/// A cursor over one frame. Invariant: `pos <= bytes.len()`.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

// === impl Reader ===

impl<'a> Reader<'a> {
    /// One value whose marker is at `self.pos`, inside `depth` enclosing containers.
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let at = self.pos;
        let m = self.u8()?;
        let value = match m {
            0x00..=0x7f => Value::Int(i64::from(m)),
            0x80..=0x8f => return self.map(usize::from(m & 0x0f), depth, at),
            0x90..=0x9f => return self.array(usize::from(m & 0x0f), depth, at),
            0xa0..=0xbf => Value::String(self.str(usize::from(m & 0x1f), at)?),
            NIL => Value::Null,
            NEVER_USED => return Err(DecodeError::at("invalid marker 0xc1", at)),
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            BIN8 | BIN16 | BIN32 => {
                let len = self.len(m)?;
                Value::String(self.bin(len, at)?)
            }
            EXT8..=EXT32 | FIXEXT1..=FIXEXT16 => {
                return Err(DecodeError::at(
                    "MessagePack extension types (timestamps included) are not supported",
                    at,
                ));
            }
            FLOAT32 => float(f64::from(f32::from_be_bytes(self.fixed()?)), at)?,
            FLOAT64 => float(f64::from_be_bytes(self.fixed()?), at)?,
            UINT8 => Value::Int(i64::from(self.u8()?)),
            UINT16 => Value::Int(i64::from(u16::from_be_bytes(self.fixed()?))),
            UINT32 => Value::Int(i64::from(u32::from_be_bytes(self.fixed()?))),
            UINT64 => Value::from_u64(u64::from_be_bytes(self.fixed()?)),
            INT8 => Value::Int(i64::from(i8::from_be_bytes(self.fixed()?))),
            INT16 => Value::Int(i64::from(i16::from_be_bytes(self.fixed()?))),
            INT32 => Value::Int(i64::from(i32::from_be_bytes(self.fixed()?))),
            INT64 => Value::Int(i64::from_be_bytes(self.fixed()?)),
            STR8 | STR16 | STR32 => {
                let len = self.len(m)?;
                Value::String(self.str(len, at)?)
            }
            ARRAY16 | ARRAY32 => {
                let len = self.len(m)?;
                return self.array(len, depth, at);
            }
            MAP16 | MAP32 => {
                let len = self.len(m)?;
                return self.map(len, depth, at);
            }
            0xe0..=0xff => Value::Int(i64::from(i8::from_be_bytes([m]))),
        };
        Ok(value)
    }

    fn array(&mut self, len: usize, depth: usize, at: usize) -> Result<Value, DecodeError> {
        let depth = nest(depth, at)?;
        let mut items = Vec::with_capacity(len.min(self.remaining()));
        for _ in 0..len {
            items.push(self.value(depth)?);
        }
        Ok(Value::Array(items))
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

    /// Checks the map at `self.pos` (inside `depth` containers) like [`Reader::value`] would,
    /// and records where its `target`, `payload` and `nonce` members are.
    fn scan_members(&mut self, depth: usize) -> Result<Members, DecodeError> {
        let at = self.pos;
        let m = self.u8()?;
        let len = match m {
            0x80..=0x8f => usize::from(m & 0x0f),
            _ => self.len(m)?,
        };
        let depth = nest(depth, at)?;
        let mut members = Members::default();
        for _ in 0..len {
            let (key, _) = self.key_checked()?;
            let start = self.pos;
            let normal = if key == b"target" {
                self.skip_target(depth)?
            } else {
                self.skip(depth)?
            };
            members.found(key, start..self.pos, normal);
        }
        Ok(members)
    }

    /// [`Reader::skip`] for a target, remembering the last one checked ([`LAST_TARGET`]).
    fn skip_target(&mut self, depth: usize) -> Result<bool, DecodeError> {
        let start = self.pos;
        let rest = self.rest();
        if let Some((len, normal)) = fast::recall(&LAST_TARGET, rest, |_| true) {
            self.pos += len;
            return Ok(normal);
        }
        let normal = self.skip(depth)?;
        fast::remember(&LAST_TARGET, &self.bytes[start..self.pos], normal);
        Ok(normal)
    }

    /// Checks one value exactly as [`Reader::value`] would, without building it. Answers
    /// whether its bytes are exactly those ganglion's encoder writes for the value it decodes
    /// to (the smallest family everywhere, float 64, str not bin, map keys in strictly rising
    /// byte order): only then may they be copied as they are.
    fn skip(&mut self, depth: usize) -> Result<bool, DecodeError> {
        let at = self.pos;
        let m = self.u8()?;
        let normal = match m {
            0x00..=0x7f | NIL | FALSE | TRUE | 0xe0..=0xff => true,
            0x80..=0x8f => return self.skip_map(usize::from(m & 0x0f), depth, at, true),
            0x90..=0x9f => return self.skip_array(usize::from(m & 0x0f), depth, at, true),
            0xa0..=0xbf => {
                self.check_utf8(usize::from(m & 0x1f), at, "a str is not valid UTF-8")?;
                true
            }
            NEVER_USED => return Err(DecodeError::at("invalid marker 0xc1", at)),
            BIN8 | BIN16 | BIN32 => {
                let len = self.len(m)?;
                self.check_utf8(len, at, "a bin is not valid UTF-8")?;
                false
            }
            EXT8..=EXT32 | FIXEXT1..=FIXEXT16 => {
                return Err(DecodeError::at(
                    "MessagePack extension types (timestamps included) are not supported",
                    at,
                ));
            }
            FLOAT32 => {
                float(f64::from(f32::from_be_bytes(self.fixed()?)), at)?;
                false
            }
            FLOAT64 => {
                float(f64::from_be_bytes(self.fixed()?), at)?;
                true
            }
            UINT8 => self.u8()? > 0x7f,
            UINT16 => u16::from_be_bytes(self.fixed()?) > u16::from(u8::MAX),
            UINT32 => u32::from_be_bytes(self.fixed()?) > u32::from(u16::MAX),
            UINT64 => u64::from_be_bytes(self.fixed()?) > u64::from(u32::MAX),
            // Non-negative integers are written with the uint families, -32..=-1 as a
            // negative fixint.
            INT8 => i8::from_be_bytes(self.fixed()?) < -32,
            INT16 => i16::from_be_bytes(self.fixed()?) < i16::from(i8::MIN),
            INT32 => i32::from_be_bytes(self.fixed()?) < i32::from(i16::MIN),
            INT64 => i64::from_be_bytes(self.fixed()?) < i64::from(i32::MIN),
            STR8 | STR16 | STR32 => {
                let len = self.len(m)?;
                self.check_utf8(len, at, "a str is not valid UTF-8")?;
                str_family_is_smallest(m, len)
            }
            ARRAY16 | ARRAY32 => {
                let len = self.len(m)?;
                let smallest = container_family_is_smallest(m, len);
                return self.skip_array(len, depth, at, smallest);
            }
            MAP16 | MAP32 => {
                let len = self.len(m)?;
                let smallest = container_family_is_smallest(m, len);
                return self.skip_map(len, depth, at, smallest);
            }
        };
        Ok(normal)
    }

    fn skip_array(
        &mut self,
        len: usize,
        depth: usize,
        at: usize,
        mut normal: bool,
    ) -> Result<bool, DecodeError> {
        let depth = nest(depth, at)?;
        for _ in 0..len {
            normal &= self.skip(depth)?;
        }
        Ok(normal)
    }

    fn skip_map(
        &mut self,
        len: usize,
        depth: usize,
        at: usize,
        mut normal: bool,
    ) -> Result<bool, DecodeError> {
        let depth = nest(depth, at)?;
        let mut previous: Option<&[u8]> = None;
        for _ in 0..len {
            let (key, key_normal) = self.key_checked()?;
            // Rising order is the order ganglion writes keys in, and rules out repeats.
            normal &= key_normal && previous.is_none_or(|p| p < key);
            previous = Some(key);
            normal &= self.skip(depth)?;
        }
        Ok(normal)
    }

    /// A map key's bytes, checked like [`Reader::key`], and whether it is in normal form.
    fn key_checked(&mut self) -> Result<(&'a [u8], bool), DecodeError> {
        let at = self.pos;
        let m = self.u8()?;
        let (len, normal) = match m {
            0xa0..=0xbf => (usize::from(m & 0x1f), true),
            STR8 | STR16 | STR32 => {
                let len = self.len(m)?;
                (len, str_family_is_smallest(m, len))
            }
            BIN8 | BIN16 | BIN32 => (self.len(m)?, false),
            _ => return Err(DecodeError::at("a map key is not a string", at)),
        };
        let bytes = self.take(len)?;
        match is_utf8(bytes) {
            true => Ok((bytes, normal)),
            false => Err(DecodeError::at("a map key is not valid UTF-8", at)),
        }
    }

    fn check_utf8(
        &mut self,
        len: usize,
        at: usize,
        error: &'static str,
    ) -> Result<(), DecodeError> {
        let bytes = self.take(len)?;
        match is_utf8(bytes) {
            true => Ok(()),
            false => Err(DecodeError::at(error, at)),
        }
    }

    /// A map key's bytes, checked to be UTF-8 like [`Reader::key`], without copying them.
    fn key_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let m = self.u8()?;
        let len = match m {
            0xa0..=0xbf => usize::from(m & 0x1f),
            STR8 | STR16 | STR32 | BIN8 | BIN16 | BIN32 => self.len(m)?,
            _ => return Err(DecodeError::at("a map key is not a string", at)),
        };
        let bytes = self.take(len)?;
        match is_utf8(bytes) {
            true => Ok(bytes),
            false => Err(DecodeError::at("a map key is not valid UTF-8", at)),
        }
    }

    /// A map key: a str, or a bin holding UTF-8 (it decodes to a string like any bin).
    fn key(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let m = self.u8()?;
        match m {
            0xa0..=0xbf => self.str(usize::from(m & 0x1f), at),
            STR8 | STR16 | STR32 => {
                let len = self.len(m)?;
                self.str(len, at)
            }
            BIN8 | BIN16 | BIN32 => {
                let len = self.len(m)?;
                self.bin(len, at)
            }
            _ => Err(DecodeError::at("a map key is not a string", at)),
        }
    }

    fn str(&mut self, len: usize, at: usize) -> Result<String, DecodeError> {
        let bytes = self.take(len)?;
        utf8(bytes).ok_or(DecodeError::at("a str is not valid UTF-8", at))
    }

    fn bin(&mut self, len: usize, at: usize) -> Result<String, DecodeError> {
        let bytes = self.take(len)?;
        utf8(bytes).ok_or(DecodeError::at("a bin is not valid UTF-8", at))
    }

    /// The length that follows a bin, str, array or map marker of the 8/16/32-bit variants.
    fn len(&mut self, m: u8) -> Result<usize, DecodeError> {
        let len = match m {
            BIN8 | STR8 => u32::from(self.u8()?),
            BIN16 | STR16 | ARRAY16 | MAP16 => u32::from(u16::from_be_bytes(self.fixed()?)),
            _ => u32::from_be_bytes(self.fixed()?),
        };
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

/// Whether a str of `len` bytes under marker `m` uses the smallest str family for its length.
fn str_family_is_smallest(m: u8, len: usize) -> bool {
    match m {
        STR8 => len > 31,
        STR16 => len > usize::from(u8::MAX),
        _ => len > usize::from(u16::MAX),
    }
}

/// Whether an array or map of `len` under a 16/32-bit marker `m` uses the smallest family.
fn container_family_is_smallest(m: u8, len: usize) -> bool {
    match m {
        ARRAY16 | MAP16 => len > 15,
        _ => len > usize::from(u16::MAX),
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

fn utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"k": <value bytes>}`
    fn in_map(value: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x81, 0xa1, b'k'];
        bytes.extend_from_slice(value);
        bytes
    }

    fn decode_one(value: &[u8]) -> Result<Value, DecodeError> {
        decode(&in_map(value)).map(|v| match v {
            Value::Object(mut map) => map.remove("k").unwrap_or(Value::Null),
            other => other,
        })
    }

    fn detail(value: &[u8]) -> String {
        decode_one(value).unwrap_err().detail().to_owned()
    }

    #[test]
    fn every_integer_family_decodes_to_an_integer() {
        let cases: &[(&[u8], Value)] = &[
            (&[0x00], Value::Int(0)),
            (&[0x7f], Value::Int(127)),
            (&[0xe0], Value::Int(-32)),
            (&[0xff], Value::Int(-1)),
            (&[0xcc, 0xff], Value::Int(255)),
            (&[0xcd, 0xff, 0xff], Value::Int(65535)),
            (&[0xce, 0xff, 0xff, 0xff, 0xff], Value::Int(4_294_967_295)),
            (
                &[0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Value::Int(i64::MAX),
            ),
            (&[0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0], Value::UInt(1 << 63)),
            (
                &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Value::UInt(u64::MAX),
            ),
            (&[0xcf, 0, 0, 0, 0, 0, 0, 0, 5], Value::Int(5)),
            (&[0xd0, 0x80], Value::Int(-128)),
            (&[0xd0, 0x05], Value::Int(5)),
            (&[0xd1, 0x80, 0x00], Value::Int(-32768)),
            (&[0xd2, 0x80, 0, 0, 0], Value::Int(i64::from(i32::MIN))),
            (&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], Value::Int(i64::MIN)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_one(bytes).as_ref(), Ok(expected), "{bytes:02x?}");
        }
    }

    #[test]
    fn scalars_decode_to_their_kinds() {
        assert_eq!(decode_one(&[0xc0]), Ok(Value::Null));
        assert_eq!(decode_one(&[0xc2]), Ok(Value::Bool(false)));
        assert_eq!(decode_one(&[0xc3]), Ok(Value::Bool(true)));
        assert_eq!(decode_one(&[0xca, 0x3f, 0xc0, 0, 0]), Ok(Value::Float(1.5)));
        assert_eq!(
            decode_one(&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
            Ok(Value::Float(1.5))
        );
    }

    #[test]
    fn every_string_family_decodes_to_a_string() {
        let long = "x".repeat(300);
        let mut str16 = vec![0xda, 0x01, 0x2c];
        str16.extend_from_slice(long.as_bytes());
        let mut str32 = vec![0xdb, 0, 0, 0x01, 0x2c];
        str32.extend_from_slice(long.as_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0xa0], ""),
            (vec![0xa2, b'h', b'i'], "hi"),
            (vec![0xd9, 0x02, b'h', b'i'], "hi"),
            (str16, &long),
            (str32, &long),
            (vec![0xc4, 0x02, b'h', b'i'], "hi"),
            (vec![0xc5, 0x00, 0x02, b'h', b'i'], "hi"),
            (vec![0xc6, 0, 0, 0, 0x02, b'h', b'i'], "hi"),
            (vec![0xa2, 0xc3, 0xa9], "é"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                decode_one(&bytes),
                Ok(Value::from(expected)),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn every_container_family_decodes() {
        let array = Value::Array(vec![Value::Int(1), Value::Null]);
        assert_eq!(decode_one(&[0x92, 0x01, 0xc0]), Ok(array.clone()));
        assert_eq!(decode_one(&[0xdc, 0, 2, 0x01, 0xc0]), Ok(array.clone()));
        assert_eq!(decode_one(&[0xdd, 0, 0, 0, 2, 0x01, 0xc0]), Ok(array));
        let map = Value::Object(Map::from([("a".to_owned(), Value::Int(1))]));
        assert_eq!(decode_one(&[0x81, 0xa1, b'a', 0x01]), Ok(map.clone()));
        assert_eq!(decode_one(&[0xde, 0, 1, 0xa1, b'a', 0x01]), Ok(map.clone()));
        assert_eq!(
            decode_one(&[0xdf, 0, 0, 0, 1, 0xa1, b'a', 0x01]),
            Ok(map.clone())
        );
        assert_eq!(decode_one(&[0x81, 0xc4, 1, b'a', 0x01]), Ok(map));
        assert_eq!(decode_one(&[0x90]), Ok(Value::Array(vec![])));
        assert_eq!(decode_one(&[0x80]), Ok(Value::Object(Map::new())));
    }

    #[test]
    fn the_top_level_may_use_any_map_family() {
        assert_eq!(decode(&[0xde, 0, 0]), Ok(Value::Object(Map::new())));
        assert_eq!(decode(&[0xdf, 0, 0, 0, 0]), Ok(Value::Object(Map::new())));
    }

    #[test]
    fn values_outside_the_data_model_are_refused() {
        assert_eq!(detail(&[0xc1]), "invalid marker 0xc1");
        for ext in [
            &[0xd4, 0x01, 0x00][..],
            &[0xd6, 0xff, 0, 0, 0, 0],
            &[0xc7, 0x01, 0x05, 0x00],
            &[0xc8, 0, 1, 0x05, 0x00],
            &[0xc9, 0, 0, 0, 1, 0x05, 0x00],
        ] {
            assert!(detail(ext).contains("extension"), "{ext:02x?}");
        }
        assert_eq!(
            detail(&[0xca, 0x7f, 0xc0, 0, 0]),
            "NaN and infinite floats are not allowed"
        );
        assert_eq!(
            detail(&[0xcb, 0xff, 0xf0, 0, 0, 0, 0, 0, 0]),
            "NaN and infinite floats are not allowed"
        );
        assert_eq!(detail(&[0xa1, 0xff]), "a str is not valid UTF-8");
        assert_eq!(detail(&[0xc4, 1, 0xff]), "a bin is not valid UTF-8");
        assert_eq!(detail(&[0x81, 0x01, 0x01]), "a map key is not a string");
        assert_eq!(detail(&[0x81, 0xc0, 0x01]), "a map key is not a string");
    }

    #[test]
    fn errors_point_at_the_offending_marker() {
        let err = decode(&[0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0xc1]).unwrap_err();
        assert_eq!(err.offset(), Some(6));
        let err = decode(&[0x81, 0xa1, b'a', 0xcd, 0x01]).unwrap_err();
        assert_eq!((err.detail(), err.offset()), ("truncated input", Some(4)));
    }

    #[test]
    fn a_declared_length_beyond_the_input_is_truncation_not_an_allocation() {
        assert_eq!(detail(&[0xdd, 0xff, 0xff, 0xff, 0xff]), "truncated input");
        assert_eq!(detail(&[0xdf, 0xff, 0xff, 0xff, 0xff]), "truncated input");
        assert_eq!(detail(&[0xdb, 0xff, 0xff, 0xff, 0xff]), "truncated input");
        assert_eq!(detail(&[0xc6, 0xff, 0xff, 0xff, 0xff]), "truncated input");
    }
}
