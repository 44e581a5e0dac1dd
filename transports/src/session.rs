//! The session loop every transport shares: decode inbound frames, call the session service
//! one frame at a time, enforce the identify and heartbeat deadlines, and run the closing
//! sequences of SPEC §4.8. It is generic over a `Stream` of [`WireIn`] and a `Sink` of
//! [`WireOut`], so a transport only adapts its connection to those two types.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use ganglion_codecs::FrameKind;
use ganglion_core::clock::Arrival;
use ganglion_core::error::close_code;
use ganglion_core::queue::engine::Completion;
use ganglion_core::telemetry;
use ganglion_core::{Conn, Envelope, Fatal, Inbound, OutFrame, Outcome, Router};
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::mailbox::{Close, Mailbox};

/// QUEUE frames a connection may have waiting for their durable write at once; past this, the
/// session stops reading until they are confirmed (backpressure instead of unbounded memory).
const MAX_PIPELINED: usize = 256;

/// Frames a session handles one after another when they are already read, before it looks at
/// its deadline, the drain signal and its mailbox's overflow again.
const READ_BATCH: usize = 64;

/// Per-connection limits and deadlines (SPEC §12, `gateway.*`).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub identify_timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub close_timeout: Duration,
    pub max_frame_bytes: usize,
    pub outbound_buffer_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            identify_timeout: Duration::from_millis(10_000),
            heartbeat_timeout: Duration::from_millis(67_500),
            close_timeout: Duration::from_millis(5_000),
            max_frame_bytes: 1 << 20,
            outbound_buffer_bytes: 1 << 20,
        }
    }
}

/// What a transport reads from its connection.
#[derive(Debug)]
pub enum WireIn {
    /// One complete inbound message. `kind` is the websocket message kind; transports without
    /// kinds give `None`.
    Frame {
        bytes: Bytes,
        kind: Option<FrameKind>,
    },
    /// A message over `gateway.max_frame_bytes`.
    TooLarge,
    /// Bytes that can never become a frame (invalid UTF-8 in a text message, a zero-length TCP
    /// frame).
    Undecodable(String),
    /// The peer started the closing handshake.
    Closed,
    /// The connection broke or reached EOF.
    Gone,
}

/// What a transport writes to its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireOut {
    Frame(Bytes),
    Close(Close),
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Fatal(Fatal),
    Goodbye(&'static str),
    PeerClosed,
    PeerGone,
}

/// Everything a session needs besides its connection.
#[derive(Clone)]
pub struct SessionContext<S> {
    pub router: Arc<Router>,
    pub service: S,
    pub config: Arc<SessionConfig>,
    /// Cancelled when the node drains: every session says goodbye.
    pub shutdown: CancellationToken,
}

/// Runs one connection to its end: the reader side (this future) and the writer task.
/// `accepted` is when the connection was accepted; the identify deadline counts from then.
pub async fn run<R, W, S>(
    conn: Arc<Conn>,
    mailbox: Arc<Mailbox>,
    inbound: R,
    outbound: W,
    accepted: Instant,
    ctx: SessionContext<S>,
) where
    R: Stream<Item = WireIn> + Unpin + Send,
    W: Sink<WireOut> + Unpin + Send + 'static,
    S: Service<Inbound, Response = Outcome, Error = Infallible> + Send,
    S::Future: Send,
{
    let hello = ctx.router.hello();
    run_with_hello(conn, mailbox, inbound, outbound, accepted, ctx, hello).await;
}

/// [`run`] with the transport's own hello as the first frame (the NATS bridge adds the
/// session id to it, SPEC §2.3).
pub async fn run_with_hello<R, W, S>(
    conn: Arc<Conn>,
    mailbox: Arc<Mailbox>,
    inbound: R,
    outbound: W,
    accepted: Instant,
    ctx: SessionContext<S>,
    hello: OutFrame,
) where
    R: Stream<Item = WireIn> + Unpin + Send,
    W: Sink<WireOut> + Unpin + Send + 'static,
    S: Service<Inbound, Response = Outcome, Error = Infallible> + Send,
    S::Future: Send,
{
    let _open = OpenConnection::count(&conn);
    let writer = tokio::spawn(write_loop(mailbox.clone(), outbound));
    let close_timeout = ctx.config.close_timeout;
    read_loop(conn, mailbox, inbound, accepted, ctx, hello).await;
    // The writer ends after the final frame and close, or when the connection breaks; a peer
    // that stopped reading must not hold the task forever.
    let abort = writer.abort_handle();
    if timeout(close_timeout, writer).await.is_err() {
        abort.abort();
    }
}

async fn read_loop<R, S>(
    conn: Arc<Conn>,
    mailbox: Arc<Mailbox>,
    mut inbound: R,
    accepted: Instant,
    ctx: SessionContext<S>,
    hello: OutFrame,
) where
    R: Stream<Item = WireIn> + Unpin,
    S: Service<Inbound, Response = Outcome, Error = Infallible>,
{
    let SessionContext {
        router,
        service,
        config,
        shutdown,
    } = ctx;
    conn.send(hello);
    let mut frames = Frames {
        conn: conn.clone(),
        service,
        config: config.clone(),
        identified: false,
        pending: None,
        pipelined: 0,
    };
    let deadline = sleep_until(accepted + config.identify_timeout);
    tokio::pin!(deadline);
    // Created once: re-creating them for every frame registers and drops a waiter each time.
    let overflowed = mailbox.overflowed();
    tokio::pin!(overflowed);
    let draining = shutdown.cancelled();
    tokio::pin!(draining);

    let end = 'session: loop {
        let item = tokio::select! {
            biased;
            () = &mut overflowed => break End::Fatal(Fatal::SlowConsumer),
            () = &mut draining => break End::Goodbye("draining"),
            () = &mut deadline => {
                break End::Fatal(if frames.identified {
                    Fatal::HeartbeatTimeout
                } else {
                    Fatal::IdentifyDeadline
                });
            }
            item = inbound.next() => item,
        };
        // Then the frames that are already read, up to a batch, without asking the other
        // branches again for each one: a sender's burst is routed in one go. One arrival time
        // serves the batch (`Inbound::received`: one wall-clock and one counter reading).
        let received = Arrival::now();
        let mut item = Some(item);
        let mut handled = 0;
        while let Some(next) = item.take() {
            if let Err(end) = frames.handle(next, received, deadline.as_mut()).await {
                break 'session end;
            }
            handled += 1;
            if handled < READ_BATCH {
                item = inbound.next().now_or_never();
            }
        }
    };
    let Frames { mut pending, .. } = frames;

    // Answers to pipelined frames before the end are owed first: a QUEUE confirmed by the store
    // is confirmed to its producer before the op 8 or goodbye (SPEC §3.3). Bounded, so a stalled
    // store cannot hold a closing connection.
    if let (Some(completion), End::Fatal(_) | End::Goodbye(_)) = (pending.take(), &end) {
        let _ = timeout(config.close_timeout, completion).await;
    }
    // Cleanup comes first, so a client that reconnects at once is not a duplicate (§4.8).
    router.cleanup(&conn);
    let reason = match &end {
        End::Fatal(fatal) => fatal.class(),
        End::Goodbye(_) => "goodbye",
        End::PeerClosed | End::PeerGone => "client",
    };
    metrics::counter!("ganglion_closes_total", "reason" => reason).increment(1);
    match &end {
        End::Fatal(fatal) => {
            tracing::debug!(error = %fatal, class = fatal.class(), "closing with op 8");
            mailbox.finish(
                Some(fatal.to_frame()),
                Some(Close::new(fatal.close_code(), &fatal.to_string())),
            );
        }
        End::Goodbye(reason) => {
            mailbox.finish(
                Some(Router::goodbye(reason)),
                Some(Close::new(close_code::GOING_AWAY, reason)),
            );
        }
        End::PeerClosed | End::PeerGone => mailbox.finish(None, None),
    }
    if !matches!(end, End::PeerGone) {
        // Wait for the peer's close (or, when the peer closed first, keep reading so the
        // transport can flush its echo), but never longer than the close timeout.
        let _ = timeout(config.close_timeout, async {
            while let Some(item) = inbound.next().await {
                if matches!(item, WireIn::Closed | WireIn::Gone) {
                    break;
                }
            }
        })
        .await;
    }
    tracing::debug!(?end, "session ended");
}

/// The reading half of a session between frames: what handling the next frame needs.
struct Frames<S> {
    conn: Arc<Conn>,
    service: S,
    config: Arc<SessionConfig>,
    identified: bool,
    /// The completion of the last pipelined frame, and how many are outstanding.
    pending: Option<Completion>,
    pipelined: usize,
}

impl<S> Frames<S>
where
    S: Service<Inbound, Response = Outcome, Error = Infallible>,
{
    /// Decodes one inbound item and runs it through the session service; `Err` ends the
    /// session. `deadline` is the identify or heartbeat deadline, moved on by what the frame
    /// does.
    async fn handle(
        &mut self,
        item: Option<WireIn>,
        received: Arrival,
        deadline: Pin<&mut Sleep>,
    ) -> Result<(), End> {
        let config = &self.config;
        let envelope = match item.unwrap_or(WireIn::Gone) {
            WireIn::Frame { bytes, kind } => {
                let envelope =
                    decode(&self.conn, &bytes, kind, config.max_frame_bytes).map_err(End::Fatal)?;
                telemetry::frames_received(envelope.op).increment(1);
                envelope
            }
            WireIn::TooLarge => {
                return Err(End::Fatal(Fatal::TooLarge {
                    limit: config.max_frame_bytes,
                }));
            }
            WireIn::Undecodable(detail) => return Err(End::Fatal(Fatal::Decode(Some(detail)))),
            WireIn::Closed => return Err(End::PeerClosed),
            WireIn::Gone => return Err(End::PeerGone),
        };
        if !envelope.is_pipelinable() || self.pipelined >= MAX_PIPELINED {
            // Completions arrive in order, so the last one covers all before it.
            if let Some(completion) = self.pending.take() {
                let _ = completion.await;
            }
            self.pipelined = 0;
        }
        let svc = match self.service.ready().await {
            Ok(svc) => svc,
            Err(never) => match never {},
        };
        // The router answers at once: the frame is built only after the wait for readiness,
        // and the call's future is polled where it was made, so neither is copied into this
        // future's state first (a copy each, per frame).
        let mut call =
            std::pin::pin!(svc.call(Inbound::new(self.conn.clone(), envelope, received)));
        let outcome = match call.as_mut().now_or_never() {
            Some(outcome) => outcome,
            None => call.await,
        };
        match outcome {
            Ok(Outcome::Continue) => {}
            Ok(Outcome::Identified) => {
                self.identified = true;
                deadline.reset(Instant::now() + config.heartbeat_timeout);
            }
            Ok(Outcome::Heartbeat) => {
                deadline.reset(Instant::now() + config.heartbeat_timeout);
            }
            Ok(Outcome::Close(fatal)) => return Err(End::Fatal(fatal)),
            Ok(Outcome::Pending(completion)) => {
                self.pending = Some(completion);
                self.pipelined += 1;
            }
            Err(never) => match never {},
        }
        Ok(())
    }
}

/// Counts an open connection in `ganglion_connections` for as long as it lives.
struct OpenConnection {
    transport: &'static str,
    encoding: &'static str,
}

impl OpenConnection {
    fn count(conn: &Conn) -> OpenConnection {
        let open = OpenConnection {
            transport: conn.transport.as_str(),
            encoding: conn.encoding.as_str(),
        };
        metrics::gauge!("ganglion_connections", "transport" => open.transport, "encoding" => open.encoding)
            .increment(1.0);
        open
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("ganglion_connections", "transport" => self.transport, "encoding" => self.encoding)
            .decrement(1.0);
    }
}

/// Checks the frame kind and decodes one frame into an envelope.
/// `max_frame_bytes` also bounds what a compressed (ETF) frame may inflate to.
fn decode(
    conn: &Conn,
    bytes: &Bytes,
    kind: Option<FrameKind>,
    max_frame_bytes: usize,
) -> Result<Envelope, Fatal> {
    if let Some(kind) = kind
        && kind != ganglion_codecs::frame_kind(conn.encoding)
    {
        return Err(Fatal::FrameKind {
            kind: match kind {
                FrameKind::Text => "text",
                FrameKind::Binary => "binary",
            },
            encoding: conn.encoding,
        });
    }
    ganglion_codecs::decode_envelope(conn.encoding, bytes, max_frame_bytes)
        .map_err(|e| Fatal::Decode(Some(e.to_string())))
}

/// Drains the mailbox into the connection: every frame queued at once is fed, then flushed
/// together, so a burst costs one write instead of one per frame.
async fn write_loop<W>(mailbox: Arc<Mailbox>, mut sink: W)
where
    W: Sink<WireOut> + Unpin,
{
    let mut spare = VecDeque::new();
    loop {
        let mut batch = mailbox.next_batch(spare).await;
        while let Some(frame) = batch.frames.pop_front() {
            if sink.feed(WireOut::Frame(frame)).await.is_err() {
                return;
            }
        }
        spare = batch.frames;
        match batch.finish {
            None => {
                if sink.flush().await.is_err() {
                    return;
                }
            }
            Some(close) => {
                if let Some(close) = close {
                    let _ = sink.feed(WireOut::Close(close)).await;
                }
                let _ = sink.flush().await;
                return;
            }
        }
    }
}
