//! The NATS bridge (SPEC §2.3): sessions and injection over an existing NATS deployment.
//!
//! - `<prefix>.connect` (a queue group, so a cluster answers each request once): a JSON
//!   request `{"inbox", "encoding"?}` opens a session. The bridge subscribes to
//!   `<prefix>.session.<id>` for it and answers the request with the hello, which carries the
//!   session id. The session then runs the same session loop as every other transport:
//!   inbound frames are the messages on the session subject, outbound frames are published to
//!   the inbox, one envelope per message, in order.
//! - `<prefix>.dispatch` (same queue group): a JSON SEND, BROADCAST or QUEUE routed with
//!   [`Router::inject`], answered on the reply subject when there is one.
//!
//! One subscription per session gives exact routing: the NATS server delivers each session's
//! frames to it, and "stop listening" is an unsubscribe. async-nats reconnects and
//! resubscribes by itself, so sessions outlive a NATS server restart; frames published while
//! the connection is down are NATS's at-most-once business.
//!
//! Backpressure: publishing waits for room in the NATS client's command queue, so a slow NATS
//! connection holds each session's writer, its mailbox fills, and the session ends as a slow
//! consumer (SPEC §4.9), as on any transport. Inbound, each subscription buffers at most
//! [`SUBSCRIPTION_CAPACITY`] messages; past that the NATS client drops them and reports a slow
//! consumer, which is logged.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::connection::State;
use async_nats::{
    Client, ConnectOptions, Event, HeaderMap, Message, ServerAddr, Subject, Subscriber,
};
use futures_util::{Sink, Stream, StreamExt, sink, stream};
use ganglion_codecs::{Codec, Json};
use ganglion_core::frame::{OutFrame, op};
use ganglion_core::{
    Conn, Encoding, Envelope, Fatal, Inbound, Invalid, Map, Out, Outbox, Outcome, Outgoing,
    Transport, Value,
};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::Instrument;

use crate::mailbox::Mailbox;
use crate::session::{self, SessionConfig, SessionContext, WireIn, WireOut};

/// The queue group of the connect and dispatch subscriptions: the nodes of a cluster share it,
/// so NATS hands each request to one of them.
pub const QUEUE_GROUP: &str = "ganglion";
/// Messages each subscription (a session's, the connect and dispatch subjects) may hold
/// unread before the NATS client drops the next ones. A session reads its frames one at a
/// time and this bounds what a flooding publisher can make it buffer.
pub const SUBSCRIPTION_CAPACITY: usize = 4096;
/// Injected QUEUEs waiting for their durable write at once; past this, the bridge reads no
/// further injections until one is confirmed.
const MAX_PENDING_INJECTIONS: usize = 1024;
/// How long connecting to NATS at start-up may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the bridge connects and which subjects it uses (`nats.*`).
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// One NATS URL, or several separated by commas (`nats://a:4222,nats://b:4222`).
    pub url: String,
    /// The first token(s) of every subject (`nats.prefix`).
    pub prefix: String,
    /// The connection name the NATS server shows (monitoring, `nats server report`).
    pub name: String,
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(
        "cannot connect to NATS at {url}: {source} (is the NATS server running and reachable? \
         leave `nats.url` unset to turn the bridge off)"
    )]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("invalid NATS URL `{url}`: {detail}")]
    Url { url: String, detail: String },
    #[error("cannot subscribe to {subject} on NATS at {url}: {detail}")]
    Subscribe {
        url: String,
        subject: String,
        detail: String,
    },
    #[error(
        "invalid nats.prefix `{0}`: expected NATS subject tokens without wildcards or spaces, \
         e.g. `ganglion` or `prod.ganglion`"
    )]
    Prefix(String),
}

/// A running bridge.
pub struct Bridge {
    client: Client,
    /// The connect and dispatch loops; they end when the node drains.
    loops: Vec<JoinHandle<()>>,
}

// === impl Bridge ===

impl Bridge {
    /// Connects to NATS and starts serving `<prefix>.connect` and `<prefix>.dispatch`. New
    /// sessions are spawned on `sessions`. Everything stops accepting when `ctx.shutdown` is
    /// cancelled; live sessions then say goodbye like every other session.
    ///
    /// Fails when NATS cannot be reached now: a configured bridge that is not there is an
    /// operator's mistake to see at start-up, not a node that looks ready and is not. Once
    /// started, the connection is re-established for as long as it takes.
    pub async fn start<S>(
        config: BridgeConfig,
        ctx: SessionContext<S>,
        sessions: TaskTracker,
    ) -> Result<Bridge, BridgeError>
    where
        S: Service<Inbound, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        if !is_literal_subject(&config.prefix) {
            return Err(BridgeError::Prefix(config.prefix));
        }
        let shown = redact(&config.url);
        let mut servers = Vec::new();
        for server in config.url.split(',').map(str::trim) {
            match server.parse::<ServerAddr>() {
                Ok(server) => servers.push(server),
                Err(error) => {
                    return Err(BridgeError::Url {
                        url: shown,
                        detail: error.to_string(),
                    });
                }
            }
        }
        let events_url = shown.clone();
        let client = with_credentials(ConnectOptions::new(), &servers)
            .name(&config.name)
            .connection_timeout(CONNECT_TIMEOUT)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            // Never give up: sessions wait for the connection to come back.
            .max_reconnects(None)
            .event_callback(move |event| {
                let url = events_url.clone();
                async move { log_event(&url, event) }
            })
            .connect(servers)
            .await
            .map_err(|source| BridgeError::Connect {
                url: shown.clone(),
                source,
            })?;
        let prefix: Arc<str> = Arc::from(config.prefix.as_str());
        let subscribe = |subject: String| {
            let client = client.clone();
            let url = shown.clone();
            async move {
                client
                    .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
                    .await
                    .map_err(|e| BridgeError::Subscribe {
                        url,
                        subject,
                        detail: e.to_string(),
                    })
            }
        };
        let connects = subscribe(format!("{prefix}.connect")).await?;
        let dispatches = subscribe(format!("{prefix}.dispatch")).await?;
        // The server has both subscriptions once this returns: a request sent right after
        // start-up finds a responder.
        client.flush().await.map_err(|e| BridgeError::Subscribe {
            url: shown.clone(),
            subject: format!("{prefix}.>"),
            detail: e.to_string(),
        })?;
        tracing::info!(url = %shown, %prefix, max_payload = client.max_payload(), "NATS bridge is listening");
        let loops = vec![
            tokio::spawn(accept_sessions(
                client.clone(),
                prefix,
                connects,
                ctx.clone(),
                sessions.clone(),
            )),
            tokio::spawn(serve_injections(client.clone(), dispatches, ctx, sessions)),
        ];
        Ok(Bridge { client, loops })
    }

    /// Whether the NATS connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Waits until the connect and dispatch loops have stopped (after `ctx.shutdown`); from
    /// then on, other nodes of the queue group take the requests.
    pub async fn stopped(&mut self) {
        for handle in self.loops.drain(..) {
            let _ = handle.await;
        }
    }

    /// Flushes what the sessions published (their goodbyes) and lets the connection go.
    pub async fn close(self, within: Duration) {
        if tokio::time::timeout(within, self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS bridge: the last frames may not have reached NATS");
        }
    }
}

/// The NATS client reads no credentials from URLs: `user:password@` (or a lone `token@`) of
/// the first URL that has them becomes the connection's authentication.
fn with_credentials(options: ConnectOptions, servers: &[ServerAddr]) -> ConnectOptions {
    let Some(server) = servers.iter().find(|s| s.has_user_pass()) else {
        return options;
    };
    match (server.username(), server.password()) {
        (Some(user), Some(password)) => {
            options.user_and_password(percent_decode(user), percent_decode(password))
        }
        (Some(token), None) => options.token(percent_decode(token)),
        _ => options,
    }
}

/// Undoes a URL's `%XX` escapes (a password with `@` or `:` in it is written escaped).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn log_event(url: &str, event: Event) {
    match event {
        Event::Connected => tracing::info!(url, "NATS bridge connected"),
        Event::Disconnected => {
            tracing::warn!(
                url,
                "NATS bridge disconnected; reconnecting, sessions stay open"
            )
        }
        Event::LameDuckMode => tracing::warn!(url, "NATS server is entering lame duck mode"),
        Event::Draining => tracing::info!(url, "NATS bridge connection draining"),
        Event::Closed => tracing::info!(url, "NATS bridge connection closed"),
        Event::SlowConsumer(sid) => tracing::warn!(
            url,
            sid,
            "NATS bridge fell behind on a subscription; the NATS client dropped messages"
        ),
        Event::ServerError(error) => tracing::warn!(url, %error, "NATS server error"),
        Event::ClientError(error) => tracing::warn!(url, %error, "NATS client error"),
    }
}

/// The URL with any credentials blanked, for logs and errors.
fn redact(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
            let rest = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            if scheme.is_empty() {
                rest
            } else {
                format!("{scheme}://{rest}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A subject ganglion may publish to or listen on: dot-separated non-empty tokens, no
/// whitespace or control characters, and no wildcard token (`*`, `>`).
pub fn is_literal_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

// === sessions ===

/// A well-formed connect request.
#[derive(Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub inbox: String,
    pub encoding: Encoding,
}

/// Parses a connect request body (SPEC §2.3). The inbox may not lie under `<prefix>.`: frames
/// published there would reach ganglion's own subjects.
pub fn parse_connect(body: &[u8], prefix: &str) -> Result<ConnectRequest, &'static str> {
    let Ok(Value::Object(body)) = ganglion_codecs::decode(Encoding::Json, body) else {
        return Err("the body is not a JSON object");
    };
    let inbox = match body.get("inbox") {
        Some(Value::String(inbox)) if is_literal_subject(inbox) => inbox,
        Some(Value::String(_)) => return Err("the inbox is not a subject without wildcards"),
        Some(_) => return Err("the inbox is not a string"),
        None => return Err("the inbox is missing"),
    };
    if inbox
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'))
    {
        return Err("the inbox lies under the bridge's prefix");
    }
    let encoding = match body.get("encoding") {
        None | Some(Value::Null) => Encoding::Json,
        Some(Value::String(name)) => {
            Encoding::from_name(name).ok_or("the encoding is not json, msgpack or etf")?
        }
        Some(_) => return Err("the encoding is not a string"),
    };
    Ok(ConnectRequest {
        inbox: inbox.clone(),
        encoding,
    })
}

/// 32 lowercase hex characters from 128 bits of the operating system's randomness.
fn session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Answers connect requests until the node drains.
async fn accept_sessions<S>(
    client: Client,
    prefix: Arc<str>,
    mut connects: Subscriber,
    ctx: SessionContext<S>,
    sessions: TaskTracker,
) where
    S: Service<Inbound, Response = Outcome, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    loop {
        let message = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => break,
            message = connects.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let accepted = Instant::now();
        let Some(reply) = message.reply else {
            tracing::debug!("NATS connect request without a reply subject; ignored");
            continue;
        };
        match parse_connect(&message.payload, &prefix) {
            Ok(request) => {
                sessions.spawn(serve_session(
                    client.clone(),
                    prefix.clone(),
                    request,
                    reply,
                    accepted,
                    ctx.clone(),
                ));
            }
            Err(why) => {
                tracing::debug!(why, "invalid NATS connect request");
                let answer = Json.encode(&Fatal::InvalidConnectRequest.to_frame());
                if let Err(error) = client.publish(reply, answer).await {
                    tracing::debug!(%error, "cannot answer a NATS connect request");
                }
            }
        }
    }
    // Other nodes of the queue group take the connect requests from here on.
    let _ = connects.unsubscribe().await;
}

/// Runs one bridge session to its end.
async fn serve_session<S>(
    client: Client,
    prefix: Arc<str>,
    request: ConnectRequest,
    reply: Subject,
    accepted: Instant,
    ctx: SessionContext<S>,
) where
    S: Service<Inbound, Response = Outcome, Error = Infallible> + Send,
    S::Future: Send,
{
    let encoding = request.encoding;
    let (id, codec) = match (session_id(), ganglion_codecs::codec(encoding)) {
        (Ok(id), Ok(codec)) => (id, codec),
        (Err(error), _) => {
            tracing::error!(%error, "no randomness for a NATS session id");
            let _ = client
                .publish(reply, Json.encode(&Fatal::Internal.to_frame()))
                .await;
            return;
        }
        (_, Err(error)) => {
            tracing::warn!(%error, %encoding, "no codec for this encoding");
            let answer = Json.encode(&Fatal::InvalidConnectRequest.to_frame());
            let _ = client.publish(reply, answer).await;
            return;
        }
    };
    // Subscribed before the hello is published (both go through the client's one command
    // queue, in order), so the client's first frame finds the subscription.
    let subscriber = match client.subscribe(format!("{prefix}.session.{id}")).await {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::warn!(%error, "cannot subscribe for a NATS session");
            let _ = client
                .publish(reply, Json.encode(&Fatal::Internal.to_frame()))
                .await;
            return;
        }
    };
    // NATS cannot carry a message over the server's `max_payload` (SPEC §2.3).
    let limit = ctx.config.max_frame_bytes.min(client.max_payload());
    let ctx = SessionContext {
        config: Arc::new(SessionConfig {
            max_frame_bytes: limit,
            ..SessionConfig::clone(&ctx.config)
        }),
        ..ctx
    };
    let mailbox = Arc::new(Mailbox::new(codec, ctx.config.outbound_buffer_bytes));
    let conn = Arc::new(Conn::new(Transport::Nats, encoding, None, mailbox.clone()));
    let span = tracing::debug_span!("nats", conn = conn.id, %encoding);
    let signals = Signals::default();
    let inbound = session_inbound(subscriber, limit, signals.clone());
    let outbound = session_outbound(client, reply, Subject::from(request.inbox), signals);
    let mut hello = ctx.router.hello();
    if let Out::BinMap(d) = &mut hello.d {
        d.push((Cow::Borrowed("session"), Out::str(id)));
    }
    session::run_with_hello(conn, mailbox, inbound, outbound, accepted, ctx, hello)
        .instrument(span)
        .await;
}

/// What a session's outbound side tells its inbound side.
#[derive(Clone, Default)]
struct Signals {
    /// The final frame is published: stop listening on the session subject.
    finished: CancellationToken,
    /// A frame was over the NATS server's `max_payload` and could not be published.
    too_large: CancellationToken,
}

/// The session subject as the session loop's inbound stream. An empty message is the client
/// closing. The subject is unsubscribed once the session no longer needs it: after the final
/// frame is out, or after the client's close was handed to the session (which has cleaned up
/// by the time it reads on); the stream then ends.
fn session_inbound(
    subscriber: Subscriber,
    limit: usize,
    signals: Signals,
) -> impl Stream<Item = WireIn> + Unpin + Send {
    struct State {
        subscriber: Option<Subscriber>,
        limit: usize,
        signals: Signals,
        too_large_reported: bool,
        peer_closed: bool,
    }
    let state = State {
        subscriber: Some(subscriber),
        limit,
        signals,
        too_large_reported: false,
        peer_closed: false,
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        let mut subscriber = state.subscriber.take()?;
        let message = if state.peer_closed {
            None
        } else {
            tokio::select! {
                biased;
                () = state.signals.finished.cancelled() => None,
                () = state.signals.too_large.cancelled(), if !state.too_large_reported => {
                    state.too_large_reported = true;
                    state.subscriber = Some(subscriber);
                    return Some((WireIn::TooLarge, state));
                }
                message = subscriber.next() => message,
            }
        };
        let item = match message {
            Some(message) if message.payload.is_empty() => {
                state.peer_closed = true;
                WireIn::Closed
            }
            Some(message) if message.payload.len() > state.limit => WireIn::TooLarge,
            Some(message) => WireIn::Frame {
                bytes: message.payload,
                kind: None,
            },
            None => {
                // Later messages to the subject are dropped by NATS.
                let _ = subscriber.unsubscribe().await;
                return None;
            }
        };
        state.subscriber = Some(subscriber);
        Some((item, state))
    }))
}

/// The session loop's outbound sink: the first frame (the hello) answers the connect request,
/// every later one is published to the inbox. The close after a final frame is the signal to
/// stop listening, given once the final frame is queued in the NATS client ahead of the
/// unsubscribe.
fn session_outbound(
    client: Client,
    reply: Subject,
    inbox: Subject,
    signals: Signals,
) -> impl Sink<WireOut> + Unpin + Send + 'static {
    struct State {
        client: Client,
        reply: Option<Subject>,
        inbox: Subject,
        signals: Signals,
    }
    let state = State {
        client,
        reply: Some(reply),
        inbox,
        signals,
    };
    Box::pin(sink::unfold(state, |mut state, out: WireOut| async move {
        match out {
            WireOut::Frame(bytes) => {
                let subject = state.reply.take().unwrap_or_else(|| state.inbox.clone());
                match state.client.publish(subject, bytes).await {
                    Ok(()) => {}
                    Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        tracing::debug!(%error, "a frame is over the NATS server's max_payload");
                        state.signals.too_large.cancel();
                    }
                    Err(error) => return Err(error),
                }
            }
            WireOut::Close(_) => state.signals.finished.cancel(),
        }
        Ok(state)
    }))
}

// === injection ===

/// Routes injected dispatches until the node drains.
async fn serve_injections<S>(
    client: Client,
    mut dispatches: Subscriber,
    ctx: SessionContext<S>,
    sessions: TaskTracker,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_INJECTIONS));
    loop {
        let message = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => break,
            message = dispatches.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let limit = ctx.config.max_frame_bytes.min(client.max_payload());
        let answer = Arc::new(Answer::default());
        let completion = match injection(&message, limit) {
            Some(envelope) => {
                let (span, trace) = ganglion_core::trace::dispatch_span(&envelope, "nats", None);
                let _entered = span.enter();
                ctx.router.inject(envelope, trace, answer.clone())
            }
            None => {
                answer.push(&Outgoing::new(Invalid::Injection.to_frame()));
                None
            }
        };
        let reply = message.reply;
        match completion {
            None => answer.deliver(&client, reply).await,
            Some(completion) => {
                let Ok(permit) = pending.clone().acquire_owned().await else {
                    break;
                };
                let client = client.clone();
                sessions.spawn(async move {
                    let _ = completion.await;
                    answer.deliver(&client, reply).await;
                    drop(permit);
                });
            }
        }
    }
    let _ = dispatches.unsubscribe().await;
}

/// An injected message as an op 4 envelope: the JSON body's `t`, `d`, `ts` and `trace`, or
/// the `traceparent`/`tracestate` headers when the body has no `trace` (SPEC §11). `None` when
/// the body is not a JSON object within the frame size limit.
fn injection(message: &Message, limit: usize) -> Option<Envelope> {
    if message.payload.len() > limit {
        return None;
    }
    let Ok(Value::Object(mut body)) = ganglion_codecs::decode(Encoding::Json, &message.payload)
    else {
        return None;
    };
    let mut take = |key: &str| body.remove(key);
    let (t, d, ts, trace) = (take("t"), take("d"), take("ts"), take("trace"));
    Some(Envelope::new(
        Some(op::DISPATCH),
        d.unwrap_or(Value::Null),
        t.unwrap_or(Value::Null),
        ts.unwrap_or(Value::Null),
        trace.unwrap_or_else(|| trace_from_headers(message.headers.as_ref())),
    ))
}

/// `{"traceparent", "tracestate"?}` from NATS headers, or null without a `traceparent`.
fn trace_from_headers(headers: Option<&HeaderMap>) -> Value {
    let Some(headers) = headers else {
        return Value::Null;
    };
    let Some(traceparent) = headers.get("traceparent") else {
        return Value::Null;
    };
    let mut trace = Map::new();
    trace.insert(
        "traceparent".to_owned(),
        Value::String(traceparent.as_str().to_owned()),
    );
    if let Some(tracestate) = headers.get("tracestate") {
        trace.insert(
            "tracestate".to_owned(),
            Value::String(tracestate.as_str().to_owned()),
        );
    }
    Value::Object(trace)
}

/// The one answer to an injection: kept, then published to the reply subject or logged.
#[derive(Default)]
struct Answer(Mutex<Option<OutFrame>>);

impl Outbox for Answer {
    fn encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn push(&self, frame: &Outgoing) -> bool {
        let mut slot = self.0.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(frame.frame().clone());
        true
    }
}

impl Answer {
    async fn deliver(&self, client: &Client, reply: Option<Subject>) {
        let Some(frame) = self.0.lock().take() else {
            tracing::warn!("an injected dispatch got no answer");
            return;
        };
        let bytes = Json.encode(&frame);
        match reply {
            Some(reply) => {
                if let Err(error) = client.publish(reply, bytes).await {
                    tracing::debug!(%error, "cannot answer an injected dispatch");
                }
            }
            None if frame.op == op::INVALID => tracing::info!(
                answer = %String::from_utf8_lossy(&bytes),
                "injected dispatch refused"
            ),
            None => tracing::debug!(
                answer = %String::from_utf8_lossy(&bytes),
                "injected dispatch routed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_subjects_have_no_wildcards_empty_tokens_or_spaces() {
        for good in ["a", "_INBOX.abc123", "a.b.c", "foo*", "a>b", "ünï.cödé"] {
            assert!(is_literal_subject(good), "{good}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "*", "a.*", "a.>", ">", "a b", "a\tb", "a\nb",
        ] {
            assert!(!is_literal_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn connect_requests_name_an_inbox_and_maybe_an_encoding() {
        let parse = |body: &str| parse_connect(body.as_bytes(), "ganglion");
        assert_eq!(
            parse(r#"{"inbox":"_INBOX.x"}"#),
            Ok(ConnectRequest {
                inbox: "_INBOX.x".into(),
                encoding: Encoding::Json
            })
        );
        assert_eq!(
            parse(r#"{"inbox":"me","encoding":"msgpack","other":1}"#)
                .unwrap()
                .encoding,
            Encoding::Msgpack
        );
        assert_eq!(
            parse(r#"{"inbox":"me","encoding":null}"#).unwrap().encoding,
            Encoding::Json
        );
        assert_eq!(
            parse(r#"{"inbox":"ganglionx.me"}"#).unwrap().inbox,
            "ganglionx.me"
        );
        for bad in [
            "",
            "not json",
            "[]",
            r#""inbox""#,
            "{}",
            r#"{"inbox":null}"#,
            r#"{"inbox":7}"#,
            r#"{"inbox":""}"#,
            r#"{"inbox":"a.*"}"#,
            r#"{"inbox":"a.>"}"#,
            r#"{"inbox":"a b"}"#,
            r#"{"inbox":"ganglion.session.x"}"#,
            r#"{"inbox":"me","encoding":"JSON"}"#,
            r#"{"inbox":"me","encoding":1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_ids_are_32_lowercase_hex_characters() {
        let a = session_id().unwrap();
        let b = session_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_ne!(a, b);
    }

    #[test]
    fn escapes_in_url_credentials_are_undone() {
        assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn credentials_never_reach_the_logs() {
        assert_eq!(
            redact("nats://user:secret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(
            redact("nats://a:4222, tls://t@b:4222"),
            "nats://a:4222,tls://***@b:4222"
        );
        assert_eq!(redact("localhost"), "localhost");
    }
}
