//! The HTTP listener's accept loop. Each connection starts in the transparent proxy's relay
//! (`super::relay`); the first request the relay does not take hands the connection to hyper
//! (HTTP/1.1 with upgrades, or HTTP/2), which serves the axum application on it from there,
//! the bytes the relay had read included.
//!
//! Both sides close a connection on which a request does not arrive within
//! `http.header_read_timeout_ms` of the wait for it starting (a new connection, or the previous
//! response sent): slow or stalled heads, and idle keep-alive connections.
//!
//! A drain (`stop`) stops accepting, lets every connection finish the request it is on
//! (hyper's graceful shutdown; the relay closes idle connections and those that finish a
//! response), and returns once every connection is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router as AxumRouter;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::AppState;
use super::relay::{self, Served};

/// Serves `app` on `listener` until `stop`, then waits for open connections to close.
pub async fn serve<L>(
    mut listener: L,
    app: AxumRouter,
    state: AppState,
    stop: CancellationToken,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let connections = TaskTracker::new();
    let read_timeout = Duration::from_millis(state.config.http.header_read_timeout_ms);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let app = app.clone();
        let state = state.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            match relay::serve(io, peer, &state, read_timeout, &stop).await {
                Served::Done => {}
                Served::Handoff { io, read } => {
                    let io = Rewind {
                        read: read.freeze(),
                        io,
                    };
                    serve_hyper(io, peer, app, read_timeout, stop).await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection with hyper, as `axum::serve` would, with `http.header_read_timeout_ms`
/// for each request head.
async fn serve_hyper<IO>(
    io: IO,
    peer: SocketAddr,
    app: AxumRouter,
    read_timeout: Duration,
    stop: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.map(Body::new)
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::trace!(%peer, error = %error, "HTTP connection ended with an error");
    }
}

/// A connection with bytes already read from it, which are read again first.
struct Rewind<IO> {
    read: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            if self.read.is_empty() {
                // Let the relay's read buffer go: a websocket keeps this wrapper for its life.
                self.read = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn the_bytes_read_first_come_first_and_their_buffer_is_let_go() {
        let prefix = Bytes::from(b"GET / HTTP/1.1\r\n".to_vec());
        let watch = prefix.clone();
        let mut io = Rewind {
            read: prefix,
            io: &b"\r\nrest"[..],
        };
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\nrest");
        assert!(
            watch.is_unique(),
            "the wrapper keeps no reference to the relay's buffer once it is read"
        );
    }
}
