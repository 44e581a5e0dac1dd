//! The websocket transport (SPEC §2.1): adapts an upgraded axum `WebSocket` to the session
//! loop. The HTTP side of the handshake (path, `encoding`, `Origin`) is the gateway's.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt, future};
use ganglion_codecs::FrameKind;
use ganglion_core::{Conn, Encoding, Inbound, Outcome, Transport};
use std::convert::Infallible;
use tower::Service;
use tracing::Instrument;

use crate::mailbox::Mailbox;
use crate::session::{self, SessionConfig, SessionContext, WireIn, WireOut};

/// Tungstenite's read buffer is 128 KiB by default, per connection; ganglion's frames are
/// small, and an idle connection should cost a few KiB.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Outbound frames are written through once this much is buffered.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Applies the per-connection limits to an upgrade before it is accepted.
pub fn configure(upgrade: WebSocketUpgrade, config: &SessionConfig) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // No cap on tungstenite's write buffer. The writer feeds one frame at a time and waits
        // for the socket whenever a write would block, so the buffer never holds more than
        // `WRITE_BUFFER_BYTES` plus one frame, and the mailbox bounds what waits behind it. A
        // cap would make every frame larger than it unsendable (the writer would stop for
        // good), yet a frame is always accepted into an empty mailbox, whatever its size
        // (SPEC §4.9).
        .max_write_buffer_size(usize::MAX)
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
}

/// Serves one upgraded websocket until it closes.
pub async fn serve<S>(socket: WebSocket, encoding: Encoding, peer: IpAddr, ctx: SessionContext<S>)
where
    S: Service<Inbound, Response = Outcome, Error = Infallible> + Send,
    S::Future: Send,
{
    let Ok(codec) = ganglion_codecs::codec(encoding) else {
        tracing::warn!(%encoding, "no codec for this encoding; closing");
        return;
    };
    let mailbox = Arc::new(Mailbox::new(codec, ctx.config.outbound_buffer_bytes));
    let conn = Arc::new(Conn::new(
        Transport::Websocket,
        encoding,
        Some(peer),
        mailbox.clone(),
    ));
    let span = tracing::debug_span!("ws", conn = conn.id, %peer, %encoding);
    let (sink, stream) = socket.split();
    let text = ganglion_codecs::frame_kind(encoding) == FrameKind::Text;
    let outbound = sink.with(move |out: WireOut| {
        future::ready(Ok::<_, axum::Error>(match out {
            WireOut::Frame(bytes) if text => match Utf8Bytes::try_from(bytes) {
                Ok(text) => Message::Text(text),
                // Our JSON encoder only writes UTF-8; never send a broken text frame.
                Err(_) => Message::Binary(Default::default()),
            },
            WireOut::Frame(bytes) => Message::Binary(bytes),
            WireOut::Close(close) => Message::Close(Some(CloseFrame {
                code: close.code,
                reason: Utf8Bytes::from(close.reason),
            })),
        }))
    });
    let inbound = stream.filter_map(move |item| future::ready(wire_in(item, text)));
    session::run(
        conn,
        mailbox,
        inbound,
        Box::pin(outbound),
        tokio::time::Instant::now(),
        ctx,
    )
    .instrument(span)
    .await;
}

/// Maps one websocket read to what the session loop understands. Pings are answered by
/// tungstenite itself, with the same data, in every state.
///
/// `text` says whether this connection's encoding uses text messages.
fn wire_in(item: Result<Message, axum::Error>, text: bool) -> Option<WireIn> {
    match item {
        Ok(Message::Text(text)) => Some(WireIn::Frame {
            bytes: text.into(),
            kind: Some(FrameKind::Text),
        }),
        Ok(Message::Binary(bytes)) => Some(WireIn::Frame {
            bytes,
            kind: Some(FrameKind::Binary),
        }),
        Ok(Message::Ping(_) | Message::Pong(_)) => None,
        Ok(Message::Close(_)) => Some(WireIn::Closed),
        Err(err) => Some(classify(err, text)),
    }
}

fn classify(err: axum::Error, text: bool) -> WireIn {
    use tungstenite::error::{CapacityError, Error};
    let inner = err.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { .. })) => WireIn::TooLarge,
        // A text message arrived; on a binary connection that is the wrong kind, whatever its
        // bytes, and the kind error is the one the client needs to see.
        Some(Error::Utf8(_)) if !text => WireIn::Frame {
            bytes: Default::default(),
            kind: Some(FrameKind::Text),
        },
        Some(Error::Utf8(detail)) => WireIn::Undecodable(format!("text message: {detail}")),
        _ => WireIn::Gone,
    }
}
