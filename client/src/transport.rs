//! Opening a connection (TCP, TLS, websocket handshake or TCP preamble) and moving frames
//! over it: a [`Reader`] that yields frame bodies and a [`Writer`] that batches outbound
//! frames and writes them with one flush.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::codec::OutFrame;
use crate::dsn::{Dsn, Encoding, Transport};
use crate::error::Error;

/// Any byte stream a connection runs over: plain TCP or TLS.
pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncIo for T {}
type Io = Box<dyn AsyncIo>;

/// A TLS client configuration: rustls on ring, the system's trust store plus `extra_roots`.
pub(crate) fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| Error::Config(format!("cannot add a root certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One inbound event.
pub(crate) enum Incoming {
    /// A frame body.
    Frame(Bytes),
    /// A websocket close frame (TCP has none: EOF ends the stream).
    Close(Option<u16>),
}

/// The read half of a connection.
pub(crate) enum Reader {
    Ws(SplitStream<WebSocketStream<Io>>),
    Tcp(FramedRead<ReadHalf<Io>, LengthDelimitedCodec>),
}

/// The write half of a connection. Frames are buffered by [`Writer::push`] and written by
/// [`Writer::flush`], so a burst of frames costs one write.
pub(crate) enum Writer {
    Ws {
        sink: SplitSink<WebSocketStream<Io>, Message>,
        pending: Vec<Message>,
    },
    Tcp {
        io: WriteHalf<Io>,
        buf: BytesMut,
    },
}

/// Opens the transport and returns its halves; the first frame to read is the hello.
pub(crate) async fn open(
    dsn: &Dsn,
    tls: Option<&Arc<rustls::ClientConfig>>,
    max_frame_bytes: usize,
) -> Result<(Reader, Writer), Error> {
    let connect_error = |reason: String| Error::Connect {
        addr: dsn.authority(),
        reason,
    };
    let tcp = TcpStream::connect((dsn.host.as_str(), dsn.port))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| connect_error(e.to_string()))?;
    let io: Io = if dsn.tls {
        let config = tls.ok_or_else(|| connect_error("TLS is not configured".to_owned()))?;
        let name = ServerName::try_from(dsn.host.clone())
            .map_err(|e| connect_error(format!("invalid TLS server name: {e}")))?;
        let stream = TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .map_err(|e| connect_error(format!("TLS handshake: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    match dsn.transport {
        Transport::WebSocket => {
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_frame_bytes))
                .max_frame_size(Some(max_frame_bytes));
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(dsn.websocket_url(), io, Some(config))
                    .await
                    .map_err(|e| match e {
                        tungstenite::Error::Http(response) => connect_error(format!(
                            "websocket handshake answered with HTTP {}",
                            response.status()
                        )),
                        other => connect_error(format!("websocket handshake: {other}")),
                    })?;
            let (sink, stream) = ws.split();
            Ok((
                Reader::Ws(stream),
                Writer::Ws {
                    sink,
                    pending: Vec::new(),
                },
            ))
        }
        Transport::Tcp => {
            let (read, mut write) = tokio::io::split(io);
            let code = match dsn.encoding {
                Encoding::Json => 0,
                Encoding::Msgpack => 1,
            };
            write
                .write_all(&[b'G', b'N', b'G', b'L', 1, code])
                .await
                .map_err(|e| connect_error(format!("preamble: {e}")))?;
            let codec = LengthDelimitedCodec::builder()
                .big_endian()
                .length_field_length(4)
                .max_frame_length(max_frame_bytes)
                .new_codec();
            Ok((
                Reader::Tcp(FramedRead::new(read, codec)),
                Writer::Tcp {
                    io: write,
                    buf: BytesMut::with_capacity(16 * 1024),
                },
            ))
        }
    }
}

impl Reader {
    /// The next frame or close; `None` at EOF; an error when the connection broke or sent
    /// something unreadable (an oversized frame, a broken websocket frame).
    pub async fn next(&mut self) -> Option<Result<Incoming, String>> {
        match self {
            Reader::Ws(stream) => loop {
                return match stream.next().await? {
                    Ok(Message::Text(text)) => Some(Ok(Incoming::Frame(Bytes::from(text)))),
                    Ok(Message::Binary(bytes)) => Some(Ok(Incoming::Frame(bytes))),
                    Ok(Message::Close(frame)) => {
                        Some(Ok(Incoming::Close(frame.map(|f| u16::from(f.code)))))
                    }
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                    Err(e) => Some(Err(e.to_string())),
                };
            },
            Reader::Tcp(frames) => match frames.next().await? {
                Ok(body) => Some(Ok(Incoming::Frame(body.freeze()))),
                Err(e) => Some(Err(e.to_string())),
            },
        }
    }
}

impl Writer {
    /// Buffers one frame.
    pub fn push(&mut self, frame: OutFrame) {
        match (self, frame) {
            (Writer::Ws { pending, .. }, OutFrame::Text(text)) => pending.push(Message::text(text)),
            (Writer::Ws { pending, .. }, OutFrame::Binary(bytes)) => {
                pending.push(Message::Binary(bytes))
            }
            (Writer::Tcp { buf, .. }, OutFrame::Binary(bytes)) => buf.extend_from_slice(&bytes),
            // The codec makes binary frames for TCP; text cannot happen, and is framed anyway.
            (Writer::Tcp { buf, .. }, OutFrame::Text(text)) => {
                let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
                buf.extend_from_slice(&len.to_be_bytes());
                buf.extend_from_slice(text.as_bytes());
            }
        }
    }

    /// Whether frames are waiting for [`Writer::flush`].
    pub fn is_dirty(&self) -> bool {
        match self {
            Writer::Ws { pending, .. } => !pending.is_empty(),
            Writer::Tcp { buf, .. } => !buf.is_empty(),
        }
    }

    /// Writes every buffered frame.
    pub async fn flush(&mut self) -> Result<(), String> {
        match self {
            Writer::Ws { sink, pending } => {
                for message in pending.drain(..) {
                    sink.feed(message).await.map_err(|e| e.to_string())?;
                }
                sink.flush().await.map_err(|e| e.to_string())
            }
            Writer::Tcp { io, buf } => {
                if !buf.is_empty() {
                    io.write_all(buf).await.map_err(|e| e.to_string())?;
                    buf.clear();
                }
                io.flush().await.map_err(|e| e.to_string())
            }
        }
    }

    /// Starts a graceful close: a websocket close frame with 1000, or a TCP write shutdown.
    pub async fn close(&mut self) {
        match self {
            Writer::Ws { sink, .. } => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
            }
            Writer::Tcp { io, .. } => {
                let _ = io.shutdown().await;
            }
        }
    }
}

/// How long [`Reader::next`] may take once the peer has started closing.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);
