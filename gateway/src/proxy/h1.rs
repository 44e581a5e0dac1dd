//! HTTP/1.1 message framing for the proxy's relay (`crate::http::relay`): how a message's
//! body is delimited (RFC 9112 §6), finding the end of a chunked body that is passed on as it
//! came, and writing message heads.
//!
//! Parsing heads is httparse's; this module only decides what the parsed headers mean.

use httparse::Header;
use smallvec::SmallVec;

use super::headers::is_hop_by_hop;

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a request without `Content-Length`, a response to `HEAD`, 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`.
    Chunked,
    /// A response delimited by the connection closing.
    UntilClose,
}

/// The framing headers of a message were contradictory or unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed message framing")]
pub struct BadFraming;

/// The framing of a response with `status` to a request with `method`.
pub fn response_framing(
    method: &str,
    status: u16,
    headers: &[Header<'_>],
) -> Result<Framing, BadFraming> {
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    if let Some(coding) = last_transfer_coding(headers) {
        return Ok(if coding.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(match content_length(headers)? {
        Some(length) => Framing::Length(length),
        None => Framing::UntilClose,
    })
}

/// The last coding of the last `Transfer-Encoding` line, if there is one.
fn last_transfer_coding<'h>(headers: &[Header<'h>]) -> Option<&'h str> {
    let line = headers
        .iter()
        .rev()
        .find(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))?;
    let text = std::str::from_utf8(line.value).unwrap_or("?");
    Some(text.rsplit(',').next().unwrap_or_default().trim())
}

/// `Content-Length`: absent, or one value (repeated lines and comma lists must agree).
pub fn content_length(headers: &[Header<'_>]) -> Result<Option<u64>, BadFraming> {
    let mut length = None;
    for header in headers {
        if !header.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for item in header.value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() {
                return Err(BadFraming);
            }
            let mut value: u64 = 0;
            for &b in item {
                if !b.is_ascii_digit() {
                    return Err(BadFraming);
                }
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or(BadFraming)?;
            }
            if length.is_some_and(|seen| seen != value) {
                return Err(BadFraming);
            }
            length = Some(value);
        }
    }
    Ok(length)
}

/// The tokens of every `Connection` line.
pub fn connection_tokens<'a>(headers: &'a [Header<'a>]) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The headers of one message that describe its connection, never relayed: the hop-by-hop
/// ones and those its `Connection` lines name (RFC 9110 §7.6.1).
pub struct HopByHop<'a> {
    /// Inline for the usual one or two tokens (`keep-alive`, `close`, `upgrade`).
    named: SmallVec<[&'a [u8]; 4]>,
}

impl<'a> HopByHop<'a> {
    pub fn of(headers: &'a [Header<'a>]) -> HopByHop<'a> {
        HopByHop {
            named: connection_tokens(headers).collect(),
        }
    }

    /// Whether a `Connection` line had `token` (any case), such as `close`.
    pub fn names(&self, token: &str) -> bool {
        self.named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Whether the header `name` describes the connection: a hop-by-hop one, or named in
    /// `Connection`.
    pub fn contains(&self, name: &str) -> bool {
        is_hop_by_hop(name) || self.names(name)
    }
}

/// The value of the first `name` line.
pub fn first<'h>(headers: &[Header<'h>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Appends `name: value\r\n`.
pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number.
pub fn put_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a number in lower-case hexadecimal (a chunk size).
pub fn put_hex(out: &mut Vec<u8>, n: u64) {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[((n >> (shift * 4)) & 0xf) as usize]);
    }
}

/// A complete response with a JSON body, as ganglion answers errors: `close` says the
/// connection closes after it, `head_only` (an answer to `HEAD`) leaves the body out.
pub fn json_response(
    status: http::StatusCode,
    body: &serde_json::Value,
    close: bool,
    head_only: bool,
) -> Vec<u8> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    put_decimal(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&body);
    }
    out
}

/// Finds where a chunked body ends in bytes that are relayed as they came (RFC 9112 §7.1):
/// chunk sizes, extensions, data, the last chunk and the trailer section.
#[derive(Debug, Default)]
pub struct ChunkedEnd {
    state: ChunkState,
    /// The chunk size read so far, then the data left in the chunk.
    size: u64,
    /// Digits of the size, and those of them after leading zeros.
    digits: u8,
    significant: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// White space after the size, which only a `;` may follow.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl ChunkedEnd {
    /// Reads the next bytes of the body: `Some(n)` when the body ends after `n` of them,
    /// `None` when all of them belong to it and it goes on.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        use ChunkState::*;
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            match self.state {
                Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or(0);
                        if self.significant > 0 || digit > 0 {
                            if self.significant >= 15 {
                                return Err(BadChunk);
                            }
                            self.significant += 1;
                        }
                        self.size = self.size * 16 + u64::from(digit);
                        self.digits = self.digits.saturating_add(1);
                    }
                    b';' if self.digits > 0 => self.state = Extension,
                    b' ' | b'\t' if self.digits > 0 => self.state = SizeSpace,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(BadChunk),
                },
                SizeSpace => match byte {
                    b' ' | b'\t' => {}
                    b';' => self.state = Extension,
                    _ => return Err(BadChunk),
                },
                Extension => match byte {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => {}
                },
                SizeLf => {
                    expect(byte, b'\n')?;
                    self.digits = 0;
                    self.significant = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let take =
                        (bytes.len() - at).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    at += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    expect(byte, b'\r')?;
                    self.state = DataLf;
                }
                DataLf => {
                    expect(byte, b'\n')?;
                    self.state = Size;
                }
                TrailerStart | TrailerLine if matches!(byte, b'\n' | 0) => return Err(BadChunk),
                TrailerStart => {
                    self.state = if byte == b'\r' { EndLf } else { TrailerLine };
                }
                TrailerLine => {
                    if byte == b'\r' {
                        self.state = TrailerLf;
                    }
                }
                TrailerLf => {
                    expect(byte, b'\n')?;
                    self.state = TrailerStart;
                }
                EndLf => {
                    expect(byte, b'\n')?;
                    self.state = Done;
                    return Ok(Some(at + 1));
                }
                Done => return Ok(Some(at)),
            }
            at += 1;
        }
        Ok(if self.state == Done { Some(at) } else { None })
    }
}

fn expect(byte: u8, wanted: u8) -> Result<(), BadChunk> {
    if byte == wanted {
        Ok(())
    } else {
        Err(BadChunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<Header<'a>> {
        pairs
            .iter()
            .map(|(name, value)| Header {
                name,
                value: value.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let none = headers(&[]);
        let length = headers(&[("Content-Length", "12")]);
        let chunked = headers(&[
            ("Transfer-Encoding", "gzip, chunked"),
            ("content-length", "3"),
        ]);
        let gzip = headers(&[("transfer-encoding", "chunked, gzip")]);
        assert_eq!(response_framing("GET", 200, &none), Ok(Framing::UntilClose));
        assert_eq!(
            response_framing("GET", 200, &length),
            Ok(Framing::Length(12))
        );
        assert_eq!(response_framing("HEAD", 200, &length), Ok(Framing::Empty));
        for status in [100, 204, 304] {
            assert_eq!(response_framing("GET", status, &length), Ok(Framing::Empty));
        }
        assert_eq!(response_framing("GET", 200, &chunked), Ok(Framing::Chunked));
        assert_eq!(response_framing("GET", 200, &gzip), Ok(Framing::UntilClose));
    }

    #[test]
    fn content_length_must_be_one_number() {
        let length = |pairs: &[(&str, &str)]| content_length(&headers(pairs));
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(length(&[("content-length", "0")]), Ok(Some(0)));
        assert_eq!(
            length(&[("content-length", "7, 7"), ("Content-Length", "7")]),
            Ok(Some(7))
        );
        assert_eq!(length(&[("content-length", " 007 ")]), Ok(Some(7)));
        assert_eq!(
            length(&[("content-length", "18446744073709551615")]),
            Ok(Some(u64::MAX))
        );
        for bad in [
            "",
            "-1",
            "+1",
            "1 2",
            "0x10",
            "7,",
            "99999999999999999999999",
            "18446744073709551616",
            "7, 8",
        ] {
            assert_eq!(
                length(&[("content-length", bad)]),
                Err(BadFraming),
                "{bad:?}"
            );
        }
        assert_eq!(
            length(&[("content-length", "1"), ("content-length", "2")]),
            Err(BadFraming)
        );
    }

    #[test]
    fn connection_tokens_are_read_from_every_line() {
        let lines = headers(&[
            ("Connection", "keep-alive, X-Secret"),
            ("connection", " close "),
        ]);
        let tokens: Vec<&[u8]> = connection_tokens(&lines).collect();
        assert_eq!(tokens, [&b"keep-alive"[..], b"X-Secret", b"close"]);
        let hop_by_hop = HopByHop::of(&lines);
        assert!(hop_by_hop.names("CLOSE") && hop_by_hop.names("x-secret"));
        assert!(!hop_by_hop.names("connection") && !HopByHop::of(&[]).names("close"));
        assert!(!HopByHop::of(&headers(&[("x", "close")])).names("close"));
    }

    #[test]
    fn numbers_are_written_without_allocating_a_string() {
        for n in [0, 7, 10, 15, 16, 255, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            put_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            out.clear();
            put_hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }

    const BODY: &[u8] =
        b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\n";

    #[test]
    fn the_end_of_a_chunked_body_is_found_however_it_is_split() {
        let mut with_next = BODY.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for split in 0..=with_next.len() {
            let mut end = ChunkedEnd::default();
            let (a, b) = with_next.split_at(split);
            let found = match end.feed(a).unwrap() {
                Some(n) => n,
                None => split + end.feed(b).unwrap().expect("the end is in the second part"),
            };
            assert_eq!(found, BODY.len(), "split at {split}");
        }
        let mut end = ChunkedEnd::default();
        for (i, byte) in BODY.iter().enumerate() {
            let found = end.feed(std::slice::from_ref(byte)).unwrap();
            assert_eq!(found.is_some(), i == BODY.len() - 1, "byte {i}");
        }
        assert_eq!(ChunkedEnd::default().feed(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(ChunkedEnd::default().feed(b"000\r\n\r\n"), Ok(Some(7)));
        assert_eq!(ChunkedEnd::default().feed(b"0 ;x\r\n\r\n"), Ok(Some(8)));
        let zeros = b"00000000000000000001\r\nx\r\n0\r\n\r\n";
        assert_eq!(ChunkedEnd::default().feed(zeros), Ok(Some(zeros.len())));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello",
            b"5\r\nhelloX",
            b"5\r\nhello\rX",
            b"1234567890abcdef0\r\n",
            b"0\r\n\rX",
            b"0\r\nx: 1\rX",
            b";ext\r\n",
            b"5 junk\r\n",
            b"0\r\nx\n\r\n",
            b"0\r\n\n",
            b"0\r\nx\0y\r\n\r\n",
        ] {
            assert_eq!(ChunkedEnd::default().feed(bad), Err(BadChunk), "{bad:?}");
        }
    }

    #[test]
    fn a_json_response_is_framed_with_its_length() {
        let body = serde_json::json!({"errors": ["no matches"]});
        let answer = |close, head_only| {
            let out = json_response(
                http::StatusCode::SERVICE_UNAVAILABLE,
                &body,
                close,
                head_only,
            );
            let text = String::from_utf8(out).unwrap();
            // `date: <IMF-fixdate>` is the second line: 29 characters of value.
            let (status, rest) = text.split_once("\r\n").unwrap();
            assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
            let (date, rest) = rest.split_once("\r\n").unwrap();
            assert!(date.starts_with("date: ") && date.ends_with(" GMT") && date.len() == 35);
            rest.to_owned()
        };
        assert_eq!(
            answer(true, false),
            "content-type: application/json\r\ncontent-length: 25\r\nconnection: close\r\n\r\n\
             {\"errors\":[\"no matches\"]}"
        );
        assert_eq!(
            answer(false, true),
            "content-type: application/json\r\ncontent-length: 25\r\n\r\n",
            "an answer to HEAD has the length of the body it leaves out"
        );
    }
}
