//! Minimal clients for the load's hot path, cheap enough that the server is what is measured.
//!
//! - ganglion over raw TCP (`GNGL` preamble, 4-byte big-endian length prefixes) and over
//!   websocket (the HTTP upgrade by hand, masked client frames built once), JSON or MessagePack;
//! - NATS protocol lines (`CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`).
//!
//! Senders write the same pre-encoded bytes over and over. Receivers count frames with a
//! [`Counter`], which reads headers only and skips bodies without copying them.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A ganglion transport and encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ganglion {
    TcpMsgpack,
    WsMsgpack,
    WsJson,
}

impl Ganglion {
    pub const ALL: [Ganglion; 3] = [Ganglion::TcpMsgpack, Ganglion::WsMsgpack, Ganglion::WsJson];

    pub fn name(self) -> &'static str {
        match self {
            Ganglion::TcpMsgpack => "tcp-msgpack",
            Ganglion::WsMsgpack => "ws-msgpack",
            Ganglion::WsJson => "ws-json",
        }
    }

    pub fn is_ws(self) -> bool {
        self != Ganglion::TcpMsgpack
    }

    pub fn is_json(self) -> bool {
        self == Ganglion::WsJson
    }

    /// The DSN of the client library for this transport.
    pub fn dsn(self, http: SocketAddr, tcp: SocketAddr) -> String {
        match self {
            Ganglion::TcpMsgpack => format!("ganglion+tcp://{tcp}?encoding=msgpack"),
            Ganglion::WsMsgpack => format!("singyeong://{http}?encoding=msgpack"),
            Ganglion::WsJson => format!("singyeong://{http}?encoding=json"),
        }
    }

    /// The envelope in this encoding, unframed.
    pub fn encode(self, frame: &Value) -> Vec<u8> {
        if self.is_json() {
            serde_json::to_vec(frame).expect("a JSON value encodes")
        } else {
            rmp_serde::to_vec_named(frame).expect("a JSON value encodes as MessagePack")
        }
    }

    /// The envelope framed for sending from a client: length-prefixed, or a masked websocket
    /// message (text for JSON, binary for MessagePack).
    pub fn frame(self, frame: &Value) -> Vec<u8> {
        let body = self.encode(frame);
        if self.is_ws() {
            ws_client_frame(if self.is_json() { 1 } else { 2 }, &body)
        } else {
            let mut out = Vec::with_capacity(4 + body.len());
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
            out
        }
    }

    /// Whether the first bytes of a frame body are those of a dispatch (op 4).
    pub fn is_dispatch(self, first: &[u8]) -> bool {
        let needle: &[u8] = if self.is_json() {
            b"\"op\":4"
        } else {
            &[0xa2, b'o', b'p', 0x04]
        };
        first.windows(needle.len()).any(|w| w == needle)
    }

    pub fn counter(self) -> Counter {
        if self.is_ws() {
            Counter::websocket()
        } else {
            Counter::length_prefixed()
        }
    }
}

/// A masked client-to-server websocket frame (FIN set). The mask key is fixed: the server
/// unmasks whatever key it is given, and a fixed one lets the frame be built once.
pub fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A connection to ganglion that has received hello (and, after [`RawGanglion::identify`],
/// ready). `pending` holds bytes read past the last frame handed out.
pub struct RawGanglion {
    pub stream: TcpStream,
    pub kind: Ganglion,
    pending: Vec<u8>,
}

impl RawGanglion {
    /// Connects (TCP preamble or websocket upgrade) and reads hello.
    pub async fn connect(
        kind: Ganglion,
        http: SocketAddr,
        tcp: SocketAddr,
    ) -> anyhow::Result<Self> {
        let addr = if kind.is_ws() { http } else { tcp };
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut pending = Vec::new();
        if kind.is_ws() {
            let encoding = if kind.is_json() { "json" } else { "msgpack" };
            let request = format!(
                "GET /gateway/websocket?encoding={encoding} HTTP/1.1\r\nHost: {addr}\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let mut buf = [0u8; 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("closed during the websocket handshake");
                }
                pending.extend_from_slice(&buf[..n]);
                if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !pending.starts_with(b"HTTP/1.1 101") {
                        bail!(
                            "websocket upgrade refused: {}",
                            String::from_utf8_lossy(&pending[..end])
                        );
                    }
                    pending.drain(..end + 4);
                    break;
                }
            }
        } else {
            stream.write_all(&[b'G', b'N', b'G', b'L', 1, 1]).await?;
        }
        let mut conn = RawGanglion {
            stream,
            kind,
            pending,
        };
        let hello = conn.next_frame().await?;
        if conn.op(&hello) != Some(0) {
            bail!("expected hello, got {}", conn.show(&hello));
        }
        Ok(conn)
    }

    /// Identifies and waits for ready.
    pub async fn identify(
        &mut self,
        app: &str,
        client: &str,
        metadata: Value,
    ) -> anyhow::Result<()> {
        let identify = json!({"op": 1, "d": {"application_id": app, "client_id": client,
                              "metadata": metadata}});
        self.stream.write_all(&self.kind.frame(&identify)).await?;
        let ready = self.next_frame().await?;
        if self.op(&ready) != Some(2) {
            bail!("expected ready, got {}", self.show(&ready));
        }
        Ok(())
    }

    /// Connects, identifies and returns after ready.
    pub async fn identified(
        kind: Ganglion,
        http: SocketAddr,
        tcp: SocketAddr,
        app: &str,
        client: &str,
        metadata: Value,
    ) -> anyhow::Result<Self> {
        let mut conn = RawGanglion::connect(kind, http, tcp).await?;
        conn.identify(app, client, metadata).await?;
        Ok(conn)
    }

    /// Bytes already read past the frames handed out (give them to a [`Counter`]).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// The next frame's body (websocket control frames are skipped).
    pub async fn next_frame(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some((opcode, start, end)) = self.complete_frame() {
                let body = self.pending[start..end].to_vec();
                self.pending.drain(..end);
                if self.kind.is_ws() && opcode >= 8 {
                    if opcode == 8 {
                        bail!("the server closed the websocket");
                    }
                    continue;
                }
                return Ok(body);
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// (opcode, body start, body end) of a complete frame at the front of `pending`.
    fn complete_frame(&self) -> Option<(u8, usize, usize)> {
        let p = &self.pending;
        if self.kind.is_ws() {
            let (header, len) = ws_header(p)?;
            (p.len() >= header + len).then_some((p[0] & 0x0f, header, header + len))
        } else {
            let len = u32::from_be_bytes(p.get(..4)?.try_into().ok()?) as usize;
            (p.len() >= 4 + len).then_some((2, 4, 4 + len))
        }
    }

    pub fn decode(&self, body: &[u8]) -> Option<Value> {
        if self.kind.is_json() {
            serde_json::from_slice(body).ok()
        } else {
            rmp_serde::from_slice(body).ok()
        }
    }

    fn op(&self, body: &[u8]) -> Option<u64> {
        self.decode(body)?.get("op")?.as_u64()
    }

    fn show(&self, body: &[u8]) -> String {
        self.decode(body)
            .map(|v| v.to_string())
            .unwrap_or_else(|| format!("{} undecodable bytes", body.len()))
    }
}

/// How long the websocket header starting with `h` is (2 until its second byte is known).
fn ws_header_len(h: &[u8]) -> usize {
    let Some(&b1) = h.get(1) else {
        return 2;
    };
    let masked = if b1 & 0x80 != 0 { 4 } else { 0 };
    masked
        + match b1 & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        }
}

/// (header length, payload length) of a server-to-client websocket frame (never masked).
fn ws_header(p: &[u8]) -> Option<(usize, usize)> {
    let b1 = *p.get(1)?;
    let masked = if b1 & 0x80 != 0 { 4 } else { 0 };
    match b1 & 0x7f {
        126 => Some((
            4 + masked,
            u16::from_be_bytes(p.get(2..4)?.try_into().ok()?) as usize,
        )),
        127 => Some((
            10 + masked,
            u64::from_be_bytes(p.get(2..10)?.try_into().ok()?) as usize,
        )),
        n => Some((2 + masked, n as usize)),
    }
}

// === frame counting ===

#[derive(Debug, Clone, Copy)]
enum Framing {
    LengthPrefixed,
    Websocket,
    Nats,
}

/// Counts frames in a byte stream fed in arbitrary pieces, skipping bodies without copying
/// them. For NATS it counts `MSG`s and remembers `PING`s to answer.
#[derive(Debug)]
pub struct Counter {
    framing: Framing,
    /// Bytes of the current header (or protocol line) collected so far.
    header: Vec<u8>,
    /// Body bytes still to skip.
    skip: usize,
    /// `PING`s seen and not yet answered (NATS).
    pub pings: usize,
    /// Server errors seen (`-ERR` lines).
    pub errors: usize,
    /// The first bytes (up to 64) of the first frame body seen, to check what is counted.
    first: Option<Vec<u8>>,
    /// Whether body bytes are being copied into `first`.
    capture: bool,
    /// Whether `first` was handed out (nothing more is captured).
    taken: bool,
}

impl Counter {
    pub fn length_prefixed() -> Counter {
        Counter::new(Framing::LengthPrefixed)
    }

    pub fn websocket() -> Counter {
        Counter::new(Framing::Websocket)
    }

    pub fn nats() -> Counter {
        Counter::new(Framing::Nats)
    }

    fn new(framing: Framing) -> Counter {
        Counter {
            framing,
            header: Vec::with_capacity(16),
            skip: 0,
            pings: 0,
            errors: 0,
            first: None,
            capture: false,
            taken: false,
        }
    }

    /// The first bytes of the first frame body, once they are all there; only once.
    pub fn take_first(&mut self) -> Option<Vec<u8>> {
        if self.taken || self.first.is_none() || self.capture {
            return None;
        }
        self.taken = true;
        self.first.take()
    }

    /// Counts the frames completed by `data`.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut frames = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                if self.capture {
                    let first = self.first.get_or_insert_with(Vec::new);
                    let room = 64usize.saturating_sub(first.len()).min(n);
                    first.extend_from_slice(&data[..room]);
                    if first.len() == 64 {
                        self.capture = false;
                    }
                }
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.capture = false;
                }
                continue;
            }
            match self.framing {
                Framing::LengthPrefixed => {
                    let need = 4 - self.header.len();
                    let n = need.min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.header.len() == 4 {
                        let len = u32::from_be_bytes([
                            self.header[0],
                            self.header[1],
                            self.header[2],
                            self.header[3],
                        ]) as usize;
                        self.header.clear();
                        frames += 1;
                        self.begin_body(len);
                    }
                }
                Framing::Websocket => {
                    // Take bytes until the header is complete (2 to 14 of them).
                    let need = ws_header_len(&self.header);
                    let n = (need - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if let Some((h, len)) = ws_header(&self.header)
                        && self.header.len() == h
                    {
                        let opcode = self.header[0] & 0x0f;
                        self.header.clear();
                        if opcode < 8 {
                            frames += 1;
                            self.begin_body(len);
                        } else {
                            self.skip = len;
                        }
                    }
                }
                Framing::Nats => {
                    match data.iter().position(|&b| b == b'\n') {
                        None => {
                            self.header.extend_from_slice(data);
                            data = &[];
                        }
                        Some(end) => {
                            self.header.extend_from_slice(&data[..=end]);
                            data = &data[end + 1..];
                            let line = std::mem::take(&mut self.header);
                            if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
                                // MSG <subject> <sid> [reply-to] <#bytes>\r\n
                                let size = std::str::from_utf8(&line)
                                    .ok()
                                    .and_then(|l| l.split_whitespace().last())
                                    .and_then(|n| n.parse::<usize>().ok())
                                    .unwrap_or(0);
                                frames += 1;
                                self.begin_body(size + 2);
                            } else if line.starts_with(b"PING") {
                                self.pings += 1;
                            } else if line.starts_with(b"-ERR") {
                                self.errors += 1;
                                eprintln!("nats: {}", String::from_utf8_lossy(&line).trim());
                            }
                            self.header = line;
                            self.header.clear();
                        }
                    }
                }
            }
        }
        frames
    }

    fn begin_body(&mut self, len: usize) {
        self.skip = len;
        if !self.taken && self.first.is_none() && len > 0 {
            self.capture = true;
            self.first = Some(Vec::new());
        }
    }
}

// === NATS ===

/// Connects to NATS with the raw protocol (no echo, not verbose) and returns after the first
/// `PONG`, i.e. once the server has processed `CONNECT`.
pub async fn nats_connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\
              \"name\":\"ganglion-bench\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\
              \"echo\":false,\"headers\":false}\r\nPING\r\n",
        )
        .await?;
    nats_await_pong(&mut stream).await?;
    Ok(stream)
}

/// Reads protocol lines until `PONG` (anything else around it is INFO or `+OK`).
pub async fn nats_await_pong(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("NATS closed the connection");
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(at) = seen.windows(6).position(|w| w == b"-ERR '") {
            bail!("NATS: {}", String::from_utf8_lossy(&seen[at..]).trim());
        }
        // Newer servers follow the PONG with a second INFO (with `connect_info`), sometimes in
        // the same read; a line the counters later see half of is skipped like any non-MSG line.
        if seen.windows(6).any(|w| w == b"PONG\r\n") {
            return Ok(());
        }
    }
}

/// Subscribes to `subject` with `sid` and waits until NATS has the subscription.
pub async fn nats_subscribe(stream: &mut TcpStream, subject: &str, sid: u64) -> anyhow::Result<()> {
    stream
        .write_all(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes())
        .await?;
    nats_await_pong(stream).await
}

/// `PUB subject n\r\npayload\r\n`.
pub fn nats_pub(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_frames_are_counted_across_pieces() {
        let mut stream = Vec::new();
        for len in [0usize, 3, 300] {
            stream.extend_from_slice(&(len as u32).to_be_bytes());
            stream.extend(std::iter::repeat_n(b'a', len));
        }
        for piece in [1, 2, 3, 7, 1000] {
            let mut counter = Counter::length_prefixed();
            let frames: u64 = stream.chunks(piece).map(|c| counter.feed(c)).sum();
            assert_eq!(frames, 3, "pieces of {piece}");
        }
    }

    #[test]
    fn websocket_frames_of_every_length_form_are_counted_and_control_frames_skipped() {
        let mut stream = Vec::new();
        for (opcode, len) in [(2u8, 5usize), (9, 2), (1, 200), (2, 70_000)] {
            stream.push(0x80 | opcode);
            if len < 126 {
                stream.push(len as u8);
            } else if len <= 65_535 {
                stream.push(126);
                stream.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                stream.push(127);
                stream.extend_from_slice(&(len as u64).to_be_bytes());
            }
            stream.extend(std::iter::repeat_n(b'x', len));
        }
        for piece in [1, 3, 9, 4096] {
            let mut counter = Counter::websocket();
            let frames: u64 = stream.chunks(piece).map(|c| counter.feed(c)).sum();
            assert_eq!(frames, 3, "pieces of {piece}");
            assert_eq!(counter.take_first().as_deref(), Some(&b"xxxxx"[..]));
            assert_eq!(counter.take_first(), None, "only once");
        }
    }

    #[test]
    fn nats_messages_and_pings_are_counted() {
        let stream = b"INFO {}\r\nMSG a 1 5\r\nhello\r\nPING\r\nMSG a.b 1 r 2\r\n\r\n\r\n+OK\r\n";
        for piece in [1, 4, 100] {
            let mut counter = Counter::nats();
            let frames: u64 = stream.chunks(piece).map(|c| counter.feed(c)).sum();
            assert_eq!(frames, 2, "pieces of {piece}");
            assert_eq!(counter.pings, 1);
        }
    }
}
