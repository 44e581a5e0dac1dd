//! The raw TCP transport (SPEC §2.2): a 6-byte preamble picks the encoding, then every frame in
//! both directions is a 4-byte big-endian length followed by one envelope.
//!
//! It runs the same session loop as the websocket, so everything above the framing —
//! lifecycle, deadlines, slow consumers, write coalescing — is shared.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Sink, StreamExt};
use ganglion_core::{Conn, Encoding, Inbound, Outcome, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, timeout_at};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};
use tower::Service;
use tracing::Instrument;

use crate::mailbox::Mailbox;
use crate::session::{self, SessionContext, WireIn, WireOut};

/// `GNGL`, then protocol version 1.
const MAGIC: [u8; 5] = [0x47, 0x4E, 0x47, 0x4C, 0x01];
/// Bytes read at a time; frames are small.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Buffered output is written through past this much.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The encoding named by a preamble, or `None` for any wrong byte (SPEC §2.2).
pub fn parse_preamble(preamble: [u8; 6]) -> Option<Encoding> {
    if preamble[..5] != MAGIC {
        return None;
    }
    match preamble[5] {
        0 => Some(Encoding::Json),
        1 => Some(Encoding::Msgpack),
        2 => Some(Encoding::Etf),
        _ => None,
    }
}

/// Serves one accepted TCP (or TLS) connection until it closes. `accepted` is when it was
/// accepted: the preamble and the identify share one deadline from then.
pub async fn serve<IO, S>(io: IO, peer: IpAddr, accepted: Instant, ctx: SessionContext<S>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Inbound, Response = Outcome, Error = Infallible> + Send,
    S::Future: Send,
{
    let mut io = io;
    let deadline = accepted + ctx.config.identify_timeout;
    let mut preamble = [0u8; 6];
    // A wrong or missing preamble is closed without a byte in reply.
    let Ok(Ok(_)) = timeout_at(deadline, io.read_exact(&mut preamble)).await else {
        tracing::debug!(%peer, "TCP connection closed: no preamble in time");
        return;
    };
    let Some(encoding) = parse_preamble(preamble) else {
        tracing::debug!(%peer, ?preamble, "TCP connection closed: bad preamble");
        return;
    };
    let Ok(codec) = ganglion_codecs::codec(encoding) else {
        tracing::debug!(%peer, %encoding, "TCP connection closed: encoding not served");
        return;
    };
    let mailbox = Arc::new(Mailbox::new(codec, ctx.config.outbound_buffer_bytes));
    let conn = Arc::new(Conn::new(
        Transport::Tcp,
        encoding,
        Some(peer),
        mailbox.clone(),
    ));
    let span = tracing::debug_span!("tcp", conn = conn.id, %peer, %encoding);
    let (reader, writer) = tokio::io::split(io);
    let inbound = FramedRead::with_capacity(
        reader,
        FrameDecoder {
            max: ctx.config.max_frame_bytes,
            failed: false,
        },
        READ_BUFFER_BYTES,
    )
    .map(wire_in);
    // No buffer up front (`new` would reserve 8 KiB per connection): it grows to what the
    // connection actually writes, which for an idle client is a few hundred bytes.
    let mut framed = FramedWrite::with_capacity(writer, FrameEncoder, 0);
    framed.set_backpressure_boundary(WRITE_BUFFER_BYTES);
    let outbound = TcpSink {
        framed,
        closing: false,
    };
    session::run(conn, mailbox, Box::pin(inbound), outbound, accepted, ctx)
        .instrument(span)
        .await;
}

/// What the frame decoder found.
#[derive(Debug)]
enum TcpFrame {
    Frame(Bytes),
    /// `N = 0`.
    Empty,
    /// `N` over the limit; the body is not read.
    TooLarge,
}

fn wire_in(item: Result<TcpFrame, io::Error>) -> WireIn {
    match item {
        Ok(TcpFrame::Frame(bytes)) => WireIn::Frame { bytes, kind: None },
        Ok(TcpFrame::Empty) => WireIn::Undecodable("an empty frame".into()),
        Ok(TcpFrame::TooLarge) => WireIn::TooLarge,
        Err(_) => WireIn::Gone,
    }
}

/// `u32` big-endian length + body.
struct FrameDecoder {
    max: usize,
    /// After an empty or oversized frame the connection is closing: read no further.
    failed: bool,
}

impl Decoder for FrameDecoder {
    type Item = TcpFrame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<TcpFrame>, io::Error> {
        if self.failed || src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 || len > self.max {
            self.failed = true;
            src.clear();
            return Ok(Some(if len == 0 {
                TcpFrame::Empty
            } else {
                TcpFrame::TooLarge
            }));
        }
        if src.len() < 4 + len {
            // Room for the rest of this frame, and no more, so a large frame is one read.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(TcpFrame::Frame(src.split_to(len).freeze())))
    }
}

struct FrameEncoder;

impl Encoder<Bytes> for FrameEncoder {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), io::Error> {
        let len = u32::try_from(frame.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        dst.reserve(4 + frame.len());
        dst.put_u32(len);
        dst.put_slice(&frame);
        Ok(())
    }
}

/// The outbound side: frames are length-prefixed; the "close" that follows a final frame is a
/// shutdown of the write side once everything is flushed (TCP has no close codes).
struct TcpSink<W> {
    framed: FramedWrite<W, FrameEncoder>,
    closing: bool,
}

impl<W: AsyncWrite + Unpin> Sink<WireOut> for TcpSink<W> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.framed).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: WireOut) -> io::Result<()> {
        match item {
            WireOut::Frame(bytes) => Pin::new(&mut self.framed).start_send(bytes),
            WireOut::Close(_) => {
                self.closing = true;
                Ok(())
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.framed).poll_flush(cx))?;
        if self.closing {
            ready!(Pin::new(self.framed.get_mut()).poll_shutdown(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.framed).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preambles_name_an_encoding_or_nothing() {
        assert_eq!(
            parse_preamble([0x47, 0x4E, 0x47, 0x4C, 1, 0]),
            Some(Encoding::Json)
        );
        assert_eq!(
            parse_preamble([0x47, 0x4E, 0x47, 0x4C, 1, 1]),
            Some(Encoding::Msgpack)
        );
        assert_eq!(
            parse_preamble([0x47, 0x4E, 0x47, 0x4C, 1, 2]),
            Some(Encoding::Etf)
        );
        assert_eq!(parse_preamble([0x47, 0x4E, 0x47, 0x58, 1, 0]), None);
        assert_eq!(parse_preamble([0x47, 0x4E, 0x47, 0x4C, 2, 0]), None);
        assert_eq!(parse_preamble([0x47, 0x4E, 0x47, 0x4C, 1, 3]), None);
    }

    #[test]
    fn frames_are_length_prefixed_and_limited() {
        let mut decoder = FrameDecoder {
            max: 8,
            failed: false,
        };
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x03abc\x00\x00"[..]);
        assert!(
            matches!(decoder.decode(&mut buf), Ok(Some(TcpFrame::Frame(b))) if &b[..] == b"abc")
        );
        assert!(
            matches!(decoder.decode(&mut buf), Ok(None)),
            "a partial header waits"
        );
        buf.extend_from_slice(b"\x00\x02");
        assert!(
            matches!(decoder.decode(&mut buf), Ok(None)),
            "a partial body waits"
        );
        buf.extend_from_slice(b"hi");
        assert!(
            matches!(decoder.decode(&mut buf), Ok(Some(TcpFrame::Frame(b))) if &b[..] == b"hi")
        );
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x09"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(TcpFrame::TooLarge))
        ));
        assert!(
            matches!(decoder.decode(&mut buf), Ok(None)),
            "nothing after a refused frame"
        );
        let mut decoder = FrameDecoder {
            max: 8,
            failed: false,
        };
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x00"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(TcpFrame::Empty))
        ));
    }
}
