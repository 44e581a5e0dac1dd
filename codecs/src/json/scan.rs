//! The JSON fast path for SEND and BROADCAST: `d`'s `target`, `payload` and `nonce` stay in
//! wire form ([`FastDispatch`]), sliced from the frame, as MessagePack's fast path does.
//!
//! The scanner reads a subset of JSON and is *sound, not complete*: whatever it accepts,
//! serde_json accepts too, with the same values. Whenever it is unsure — any syntax error, a
//! lone surrogate escape, nesting near the limit, a frame that is not a SEND or BROADCAST — it gives up
//! and the frame goes to the full decoder ([`super::decode_envelope`]), which decides and words
//! every error. So the fast path never changes which frames are refused, or how.
//!
//! It also tells whether each member's bytes are in *normal form*: exactly the text ganglion's
//! encoder writes for the value they decode to (no whitespace, object keys in rising byte order
//! without repeats, only the escapes ganglion writes, integers in their shortest form, no
//! floats). Only then are they copied as they are to JSON recipients.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::LazyLock;

use bytes::Bytes;
use ganglion_core::{Encoding, Envelope, Value};
use memchr::memmem::Finder;

use crate::fast::{self, Members};
use crate::{MAX_NESTING, is_utf8};

thread_local! {
    /// The last target this thread checked ([`fast::LastTarget`]). Bytes that begin with a checked
    /// value and go on with a delimiter hold that value: strings, arrays and objects delimit
    /// themselves, and a number or literal must be followed by one.
    static LAST_TARGET: RefCell<(Vec<u8>, bool)> = const { RefCell::new((Vec::new(), false)) };
}
/// The scanner is unsure: the full decoder decides.
struct GiveUp;

type Scan<T> = Result<T, GiveUp>;

/// A SEND or BROADCAST with an object `d` holding a `target` and a `payload`, with those
/// members in wire form; `None` for any other frame, and for a frame the scanner gives up on.
pub(super) fn routed(frame: &Bytes) -> Option<Envelope> {
    if !names_a_routed_event(frame) {
        return None;
    }
    envelope(frame).ok()
}

/// A cheap filter: a frame whose text never has `"SEND"` or `"BROADCAST"` is not one (an event
/// name written with `\u` escapes is, and the full decoder reads it).
fn names_a_routed_event(frame: &[u8]) -> bool {
    // Built once: building a finder costs more than searching a small frame.
    static SEND: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"SEND\""));
    static BROADCAST: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"BROADCAST\""));
    SEND.find(frame).is_some() || BROADCAST.find(frame).is_some()
}

fn envelope(frame: &Bytes) -> Scan<Envelope> {
    let mut s = Scanner {
        bytes: frame,
        pos: 0,
    };
    s.whitespace();
    let depth = nest(0)?;
    s.expect(b'{')?;
    s.whitespace();
    let (mut op, mut t, mut ts, mut trace) = (None, None, None, None);
    let mut d = None;
    loop {
        let (key, _) = s.string()?;
        s.whitespace();
        s.expect(b':')?;
        s.whitespace();
        // A repeated member: the last occurrence wins (SPEC §2.4).
        match key {
            b"d" => d = Some(s.members(depth)?),
            b"op" => op = Some(s.span(depth)?),
            b"t" => t = Some(s.span(depth)?),
            b"ts" => ts = Some(s.span(depth)?),
            b"trace" => trace = Some(s.span(depth)?),
            _ => {
                s.skip(depth)?;
            }
        }
        s.whitespace();
        match s.next()? {
            b',' => {
                s.whitespace();
            }
            b'}' => break,
            _ => return Err(GiveUp),
        }
    }
    s.whitespace();
    if s.pos != frame.len() {
        return Err(GiveUp);
    }
    // `op` exactly the integer 4 (`4.0` is a float: the unknown opcode, for the full decoder).
    if op.map(|op| &frame[op]) != Some(b"4") {
        return Err(GiveUp);
    }
    let t = match t.map(|t| &frame[t]) {
        Some(b"\"SEND\"") => "SEND",
        Some(b"\"BROADCAST\"") => "BROADCAST",
        _ => return Err(GiveUp),
    };
    let members = d.ok_or(GiveUp)?;
    let fast = members
        .fast(t, frame, Encoding::Json, decode_checked)
        .ok_or(GiveUp)?;
    let decoded = |span: Option<Range<usize>>| {
        span.map_or(Some(Value::Null), |span| decode_checked(&frame[span]))
            .ok_or(GiveUp)
    };
    let mut envelope = Envelope::from_parts(
        &Value::Int(4),
        Value::Null,
        // In `fast`.
        Value::Null,
        decoded(ts)?,
        decoded(trace)?,
    );
    envelope.fast = Some(fast);
    Ok(envelope)
}

/// Decodes one JSON value the scanner checked (integer `-0` read as 0, as in a whole frame).
pub(super) fn decode_checked(bytes: &[u8]) -> Option<Value> {
    let text = super::integer_negative_zeros(bytes);
    serde_json::from_slice(text.as_deref().unwrap_or(bytes)).ok()
}

fn nest(depth: usize) -> Scan<usize> {
    let depth = depth + 1;
    // serde_json refuses the 128th nested container (`MAX_NESTING` is the deepest it accepts);
    // the scanner leaves even that last level to it.
    if depth >= MAX_NESTING {
        return Err(GiveUp);
    }
    Ok(depth)
}

/// Whether the integer with these digits is read as an integer (`i64`, or `u64` when positive),
/// not as a float.
fn fits_an_integer(negative: bool, digits: &[u8]) -> bool {
    let Some(magnitude) = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
    else {
        return false;
    };
    !negative || magnitude <= i64::MIN.unsigned_abs()
}

/// A cursor over one frame. Invariant: `pos <= bytes.len()`.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

// === impl Scanner ===

impl<'a> Scanner<'a> {
    fn peek(&self) -> Scan<u8> {
        self.bytes.get(self.pos).copied().ok_or(GiveUp)
    }

    fn next(&mut self) -> Scan<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn expect(&mut self, b: u8) -> Scan<()> {
        if self.next()? == b {
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// Skips JSON whitespace; answers whether there was any.
    fn whitespace(&mut self) -> bool {
        let start = self.pos;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        self.pos != start
    }

    /// The span of one checked value.
    fn span(&mut self, depth: usize) -> Scan<Range<usize>> {
        let start = self.pos;
        self.skip(depth)?;
        Ok(start..self.pos)
    }

    /// Checks the object `d` (inside `depth` containers) and records where its `target`,
    /// `payload` and `nonce` members are.
    fn members(&mut self, depth: usize) -> Scan<Members> {
        let depth = nest(depth)?;
        self.expect(b'{')?;
        self.whitespace();
        let mut members = Members::default();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(members);
        }
        loop {
            let (key, _) = self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            let start = self.pos;
            let normal = if key == b"target" {
                self.skip_target(depth)?
            } else {
                self.skip(depth)?
            };
            members.found(key, start..self.pos, normal);
            self.whitespace();
            match self.next()? {
                b',' => {
                    self.whitespace();
                }
                b'}' => return Ok(members),
                _ => return Err(GiveUp),
            }
        }
    }

    /// [`Scanner::skip`] for a target, remembering the last one checked ([`LAST_TARGET`]).
    fn skip_target(&mut self, depth: usize) -> Scan<bool> {
        let start = self.pos;
        let rest = &self.bytes[start..];
        // A number or literal that goes on is another value (or none): checked afresh.
        let ends = |len: usize| {
            matches!(
                rest.get(len),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            )
        };
        if let Some((len, normal)) = fast::recall(&LAST_TARGET, rest, ends) {
            self.pos += len;
            return Ok(normal);
        }
        let normal = self.skip(depth)?;
        fast::remember(&LAST_TARGET, &self.bytes[start..self.pos], normal);
        Ok(normal)
    }

    /// Checks one value (starting right at `self.pos`) without building it; answers whether
    /// its text is in normal form.
    fn skip(&mut self, depth: usize) -> Scan<bool> {
        match self.peek()? {
            b'{' => self.skip_object(depth),
            b'[' => self.skip_array(depth),
            b'"' => self.string().map(|(_, normal)| normal),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(GiveUp),
        }
    }

    fn literal(&mut self, text: &[u8]) -> Scan<bool> {
        if self.bytes[self.pos..].starts_with(text) {
            self.pos += text.len();
            Ok(true)
        } else {
            Err(GiveUp)
        }
    }

    fn skip_object(&mut self, depth: usize) -> Scan<bool> {
        let depth = nest(depth)?;
        self.expect(b'{')?;
        let mut normal = !self.whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(normal);
        }
        let mut previous: Option<&[u8]> = None;
        loop {
            let (key, key_normal) = self.string()?;
            // Rising order is the order ganglion writes keys in, and rules out repeats.
            normal &= key_normal && previous.is_none_or(|p| p < key);
            previous = Some(key);
            normal &= !self.whitespace();
            self.expect(b':')?;
            normal &= !self.whitespace();
            normal &= self.skip(depth)?;
            normal &= !self.whitespace();
            match self.next()? {
                b',' => normal &= !self.whitespace(),
                b'}' => return Ok(normal),
                _ => return Err(GiveUp),
            }
        }
    }

    fn skip_array(&mut self, depth: usize) -> Scan<bool> {
        let depth = nest(depth)?;
        self.expect(b'[')?;
        let mut normal = !self.whitespace();
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(normal);
        }
        loop {
            normal &= self.skip(depth)?;
            normal &= !self.whitespace();
            match self.next()? {
                b',' => normal &= !self.whitespace(),
                b']' => return Ok(normal),
                _ => return Err(GiveUp),
            }
        }
    }

    /// A string at `self.pos`: its text between the quotes (escapes left in), and whether it is
    /// in normal form.
    fn string(&mut self) -> Scan<(&'a [u8], bool)> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut normal = true;
        loop {
            // Plain characters run up to the next quote or backslash; a control character
            // among them must have been escaped.
            let rest = &self.bytes[self.pos..];
            let run = memchr::memchr2(b'"', b'\\', rest).ok_or(GiveUp)?;
            // A fold without an early exit, so the compiler checks many bytes at a time.
            if rest[..run]
                .iter()
                .fold(false, |control, &b| control | (b < 0x20))
            {
                return Err(GiveUp);
            }
            self.pos += run;
            match self.next()? {
                b'"' => break,
                _ => match self.next()? {
                    // The escapes ganglion writes.
                    b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f' => {}
                    b'/' => normal = false,
                    b'u' => normal &= self.unicode_escape()?,
                    _ => return Err(GiveUp),
                },
            }
        }
        let text = &self.bytes[start..self.pos - 1];
        // An escape is ASCII and no byte of a multi-byte character is, so the text with its
        // escapes is valid UTF-8 exactly when the string is.
        if !is_utf8(text) {
            return Err(GiveUp);
        }
        Ok((text, normal))
    }

    /// The rest of a `\u` escape (after the `u`): four hex digits, and for a high surrogate the
    /// low surrogate's escape after it. Answers whether it is an escape ganglion writes: a
    /// control character without a short escape, in lowercase hex. A lone surrogate is left to
    /// the full decoder.
    fn unicode_escape(&mut self) -> Scan<bool> {
        let at = self.pos;
        let unit = self.hex4()?;
        match unit {
            0xd800..=0xdbff => {
                self.expect(b'\\')?;
                self.expect(b'u')?;
                match self.hex4()? {
                    0xdc00..=0xdfff => Ok(false),
                    _ => Err(GiveUp),
                }
            }
            0xdc00..=0xdfff => Err(GiveUp),
            0x08 | 0x09 | 0x0a | 0x0c | 0x0d => Ok(false),
            0x00..=0x1f => Ok(self.bytes[at..self.pos]
                .iter()
                .all(|b| !b.is_ascii_uppercase())),
            _ => Ok(false),
        }
    }

    fn hex4(&mut self) -> Scan<u16> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or(GiveUp)?;
        let mut unit = 0u16;
        for &b in digits {
            let digit = char::from(b).to_digit(16).ok_or(GiveUp)?;
            unit = unit << 4 | digit as u16;
        }
        self.pos += 4;
        Ok(unit)
    }

    /// A number: an integer within `i64` or `u64` is checked here (normal unless it is `-0`,
    /// which reads as 0); anything else — beyond both, with a fraction or with an exponent —
    /// is checked by serde_json itself and is never normal form.
    fn number(&mut self) -> Scan<bool> {
        let start = self.pos;
        let negative = self.bytes[start] == b'-';
        if negative {
            self.pos += 1;
        }
        let digits = self.digits();
        match digits {
            0 => return Err(GiveUp),
            // A leading zero is only allowed alone.
            2.. if self.bytes[self.pos - digits] == b'0' => return Err(GiveUp),
            _ => {}
        }
        let mut plain = fits_an_integer(negative, &self.bytes[self.pos - digits..self.pos]);
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(GiveUp);
            }
            plain = false;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(GiveUp);
            }
            plain = false;
        }
        let text = &self.bytes[start..self.pos];
        if plain {
            return Ok(text != b"-0");
        }
        // Out of `f64`'s range is the one way a well-formed number is refused.
        match serde_json::from_slice::<f64>(text) {
            Ok(_) => Ok(false),
            Err(_) => Err(GiveUp),
        }
    }

    /// Skips ASCII digits; answers how many.
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        self.pos - start
    }
}
