//! The transparent proxy's relay: HTTP/1.1 requests to `/api/v1/proxy/{application}/…` served
//! on the connection's own task, without hyper's server and client state machines in between.
//!
//! Every HTTP connection starts here (`super::serve`). The relay reads request heads with
//! httparse and takes the transparent-proxy requests it can relay byte for byte: HTTP/1.1,
//! one of the six methods, no `Upgrade`, `Expect` or `Transfer-Encoding`, a body of at most
//! [`MAX_BODY`] bytes given by `Content-Length`, and a plain `http` target. It checks the
//! password, chooses the target exactly as the transparent route does
//! (`super::proxy::transparent_target`), writes the request upstream on a pooled keep-alive
//! connection (`crate::proxy::pool`), and streams the response back with its hop-by-hop
//! headers removed, under the same total timeout.
//!
//! The first request it does not take — any other path, a websocket handshake, HTTP/1.0 or
//! HTTP/2, an upload to stream, an `https` target, a head it cannot parse — hands the whole
//! connection to hyper and axum, bytes already read included, for the rest of its life. So
//! every answer to a request the relay does not take, errors included, is the router's own.
//!
//! Per request the relay does what the hyper path does (SPEC §9.6, §9.7): the same
//! validation answers, hop-by-hop headers dropped both ways (and those named in
//! `Connection`), `Host` set to the target's, `X-Forwarded-For` extended, trace context
//! continued, `X-Ganglion-Auth`/`X-Ganglion-Query` (and `Authorization` when it carried the
//! password) kept back, the same metrics and span. An idle pooled connection on which
//! anything arrived (a close, an unsolicited `408`) is not reused, which the runtime's
//! readiness tells without a syscall; one that still turns out to be closed before any byte of
//! the response is replaced by a new one and the request sent again — only for methods that
//! are safe to repeat; for `POST` and `PATCH` idle connections are checked with a read before
//! use instead.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::uri::Scheme;
use http::{Method, StatusCode, Uri};
use httparse::Header;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tracing::Span;

use super::AppState;
use super::proxy::{
    Outcomes, PREFIX, Refusal, TargetCache, authenticated_by_authorization, proxy_span,
    transparent_target,
};
use crate::proxy::ProxyError;
use crate::proxy::h1::{
    ChunkedEnd, Framing, HopByHop, content_length, first, json_response, put_decimal, put_header,
    put_hex, response_framing,
};
use crate::proxy::headers::{forwarded_for, trace_from_lines};
use ganglion_core::auth::SourceKey;
use ganglion_core::frame::TraceContext;

/// Request bodies the relay takes: at most this many bytes, read whole before the request is
/// sent. Larger ones are streamed by hyper.
pub const MAX_BODY: u64 = 64 * 1024;
/// A request head longer than this goes to hyper, which has its own, larger limit.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Request headers the relay parses; a request with more goes to hyper.
const REQUEST_HEADERS: usize = 64;
/// Response heads: at most this many headers (as hyper's client) and bytes.
const RESPONSE_HEADERS: usize = 100;
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Room for reading response bodies.
const READ_CHUNK: usize = 16 * 1024;
/// A connection keeps the buffers of its last request for the next one, unless they grew
/// beyond this (a large body passed through): idle connections hold little.
const KEPT_BUFFER: usize = 8 * 1024;

/// How a connection left the relay.
pub enum Served<IO> {
    /// Closed, or nothing more to read.
    Done,
    /// A request the relay does not take: hyper serves the connection from `read` on.
    Handoff { io: IO, read: BytesMut },
}

/// What the relay does with the request at the start of the read buffer.
enum Step {
    /// Not complete yet: read until the buffer holds at least this many bytes.
    NeedMore(usize),
    /// Not the relay's: hand the connection over.
    Handoff,
    /// Answered by ganglion itself (a refused password, a validation error).
    Answer {
        response: Vec<u8>,
        consumed: usize,
        close: bool,
    },
    /// Relay it: `upstream` holds the request to send.
    Relay(Forward),
}

/// A request to relay, taken from the read buffer.
struct Forward {
    method: Method,
    target: Uri,
    /// Request head and body as they go upstream.
    upstream: Vec<u8>,
    consumed: usize,
    /// The caller asked to close the connection after this request.
    close: bool,
    span: Span,
}

/// The methods the relay takes (SPEC §9.5 rows 5 and 6 refuse the others; hyper answers them).
fn relayed_method(name: &str) -> Option<Method> {
    Some(match name {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "PATCH" => Method::PATCH,
        _ => return None,
    })
}

/// Serves `io` for as long as its requests are the relay's; see the module docs.
/// `read_timeout` is `http.header_read_timeout_ms`, counted from the start of each wait for a
/// request, as hyper's.
pub async fn serve<IO>(
    mut io: IO,
    peer: SocketAddr,
    state: &AppState,
    read_timeout: Duration,
    stop: &CancellationToken,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut caller = Caller {
        key: SourceKey::from_ip(peer.ip()),
        forwarded_for: forwarded_for(peer.ip()),
        targets: TargetCache::default(),
        checked_path: String::new(),
        host: HostLine::default(),
        spare: Vec::new(),
    };
    // Room for a typical request head; it grows for larger ones.
    let mut read = BytesMut::with_capacity(1024);
    // Made at the first relayed request: most connections that are not the relay's (websocket
    // handshakes, API calls) never need it.
    let mut scratch: Option<Scratch> = None;
    // The read timeout's timer is not moved for every request (that costs more than the rest
    // of the wait's bookkeeping): when it fires, it is moved to the current wait's due time if
    // that is later.
    let mut arrival = Box::pin(tokio::time::sleep(read_timeout));
    // Waited on for the connection's whole life: a wait made afresh for every request would
    // enter and leave the token's waiter list, under its lock, each time.
    let mut stopping = std::pin::pin!(stop.cancelled());
    loop {
        let due = tokio::time::Instant::now() + read_timeout;
        // A head is parsed again only once more of it, or all of its body, is in.
        let mut need = 0;
        let step = loop {
            if read.len() >= need {
                match take(&read, &mut caller, state, stop.is_cancelled()) {
                    Step::NeedMore(at_least) => need = at_least,
                    step => break step,
                }
            }
            // A drain closes a connection that is between requests or still sending one.
            let got = tokio::select! {
                got = io.read_buf(&mut read) => got,
                () = stopping.as_mut() => return Served::Done,
                () = arrival.as_mut() => {
                    if tokio::time::Instant::now() >= due {
                        tracing::debug!(
                            "no complete request within http.header_read_timeout_ms: closing"
                        );
                        return Served::Done;
                    }
                    arrival.as_mut().reset(due);
                    continue;
                }
            };
            if !matches!(got, Ok(n) if n > 0) {
                return Served::Done;
            }
        };
        let keep_alive = match step {
            Step::NeedMore(_) => unreachable!("the loop above reads until the step is another"),
            Step::Handoff => return Served::Handoff { io, read },
            Step::Answer {
                response,
                consumed,
                close,
            } => {
                read.advance(consumed);
                if write(&mut io, &response).await.is_err() {
                    return Served::Done;
                }
                !close
            }
            Step::Relay(forward) => {
                read.advance(forward.consumed);
                let scratch = scratch.get_or_insert_with(|| Scratch {
                    response: BytesMut::with_capacity(READ_CHUNK),
                    out: Vec::new(),
                    timer: Box::pin(tokio::time::sleep(state.proxy.total_timeout())),
                    outcomes: Outcomes::default(),
                });
                let relayed = relay(&mut io, state, &forward, scratch).await;
                let mut spare = forward.upstream;
                if spare.capacity() <= KEPT_BUFFER {
                    spare.clear();
                    caller.spare = spare;
                }
                match relayed {
                    Relayed::Done => !forward.close,
                    Relayed::Broken => return Served::Done,
                }
            }
        };
        if !keep_alive || stop.is_cancelled() {
            let _ = io.shutdown().await;
            return Served::Done;
        }
    }
}

/// The downstream peer, as the password check and `X-Forwarded-For` use it, and what its
/// last request resolved to.
struct Caller {
    key: SourceKey,
    forwarded_for: String,
    targets: TargetCache,
    /// The last request path that was checked to be one hyper would take too.
    checked_path: String,
    host: HostLine,
    /// The buffer of the last relayed request, for the next one.
    spare: Vec<u8>,
}

/// Decides what to do with the request at the start of `read`. While `draining`, the answer
/// closes the connection.
fn take(read: &[u8], caller: &mut Caller, state: &AppState, draining: bool) -> Step {
    // Not initialised first: httparse writes the entries it returns.
    let mut headers = [const { MaybeUninit::<Header<'_>>::uninit() }; REQUEST_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(read, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if read.len() < MAX_REQUEST_HEAD => {
            return Step::NeedMore(read.len() + 1);
        }
        _ => return Step::Handoff,
    };
    let (Some(name), Some(path), Some(1)) = (request.method, request.path, request.version) else {
        return Step::Handoff;
    };
    let Some(method) = relayed_method(name) else {
        return Step::Handoff;
    };
    // An empty application segment is the router's 404; a target hyper would refuse (bytes
    // outside ASCII, say) is hyper's 400.
    let application = path.strip_prefix(PREFIX).unwrap_or_default();
    if application.is_empty() || application.starts_with(['/', '?']) {
        return Step::Handoff;
    }
    // The connection's last path was checked already.
    if path != caller.checked_path {
        if http::uri::PathAndQuery::try_from(path).is_err() {
            return Step::Handoff;
        }
        caller.checked_path.clear();
        caller.checked_path.push_str(path);
    }
    let headers: &[Header<'_>] = request.headers;
    let declined = ["upgrade", "expect", "transfer-encoding"];
    if headers
        .iter()
        .any(|h| declined.iter().any(|d| h.name.eq_ignore_ascii_case(d)))
    {
        return Step::Handoff;
    }
    let body_len = match content_length(headers) {
        Ok(length) if length.unwrap_or(0) <= MAX_BODY => length,
        _ => return Step::Handoff,
    };
    // At most MAX_BODY: fits in usize.
    let consumed = head_len + body_len.unwrap_or(0) as usize;
    if read.len() < consumed {
        return Step::NeedMore(consumed);
    }
    // Read once: `close` and the headers kept back from the upstream both come from it.
    let hop_by_hop = HopByHop::of(headers);
    let close = draining || hop_by_hop.names("close");
    let answer = |status: StatusCode, body: serde_json::Value| Step::Answer {
        response: json_response(status, &body, close, method == Method::HEAD),
        consumed,
        close,
    };

    let x_ganglion_auth = first(headers, "x-ganglion-auth");
    let credential = x_ganglion_auth.or_else(|| first(headers, "authorization"));
    if let Err(error) = state.router.auth().check_http(credential, caller.key) {
        let (status, body) = super::auth_refusal(state, credential.is_some(), error);
        return answer(status, body);
    }
    let (path, raw_query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let target = match transparent_target(
        state,
        name,
        path,
        raw_query,
        first(headers, "x-ganglion-query"),
        &mut caller.targets,
    ) {
        Ok(target) if target.scheme() == Some(&Scheme::HTTP) => target,
        Ok(_) | Err(Refusal::NotFound) => return Step::Handoff,
        Err(Refusal::Answer(status, reason)) => {
            return answer(status, serde_json::json!({ "errors": [reason] }));
        }
    };

    let parent = trace_from_lines(
        first(headers, "traceparent"),
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("tracestate"))
            .map(|h| h.value),
    );
    let (span, trace) = proxy_span("transparent", &method, &target, parent.as_ref());
    let request = Request {
        method: name,
        headers,
        hop_by_hop,
        body: &read[head_len..consumed],
        body_len,
    };
    let keep_authorization = !authenticated_by_authorization(state, x_ganglion_auth.is_some());
    let mut upstream = std::mem::take(&mut caller.spare);
    upstream_request(
        &mut upstream,
        &request,
        &target,
        caller.host.line(&target),
        trace.as_ref(),
        keep_authorization,
        &caller.forwarded_for,
    );
    Step::Relay(Forward {
        method,
        target,
        upstream,
        consumed,
        close,
        span,
    })
}

/// The parts of a caller's request that go upstream.
struct Request<'a> {
    method: &'a str,
    headers: &'a [Header<'a>],
    /// What `headers`' `Connection` lines name.
    hop_by_hop: HopByHop<'a>,
    body: &'a [u8],
    /// `Content-Length`, when the caller gave one.
    body_len: Option<u64>,
}

/// Headers the caller sent that never go upstream as they are (besides the hop-by-hop ones):
/// ganglion sets `Host`, `Content-Length` and the trace context itself, and its own headers
/// are its business.
const KEPT_BACK: [&str; 6] = [
    "host",
    "content-length",
    "x-ganglion-auth",
    "x-ganglion-query",
    "traceparent",
    "tracestate",
];

/// The request as it goes upstream (SPEC §9.7), written to the empty `upstream`: request
/// line, the `Host` line, the caller's headers without the hop-by-hop ones (and those named in
/// `Connection`), ganglion's and — unless `keep_authorization` — `Authorization`; then the
/// trace context, `X-Forwarded-For` with the caller appended, `Content-Length`, and the body.
fn upstream_request(
    upstream: &mut Vec<u8>,
    request: &Request<'_>,
    target: &Uri,
    host_line: &[u8],
    trace: Option<&TraceContext>,
    keep_authorization: bool,
    forwarded_for: &str,
) {
    upstream.reserve(512 + request.body.len());
    upstream.extend_from_slice(request.method.as_bytes());
    upstream.push(b' ');
    let path_and_query = target.path_and_query().map_or("/", |p| p.as_str());
    upstream.extend_from_slice(path_and_query.as_bytes());
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    upstream.extend_from_slice(host_line);
    let mut forwarded = false;
    for header in request.headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded = true;
            continue;
        }
        let kept_back = request.hop_by_hop.contains(name)
            || KEPT_BACK.iter().any(|n| name.eq_ignore_ascii_case(n))
            || (!keep_authorization && name.eq_ignore_ascii_case("authorization"));
        if !kept_back {
            put_header(upstream, name.as_bytes(), header.value);
        }
    }
    if let Some(trace) = trace {
        put_header(upstream, b"traceparent", trace.traceparent.as_bytes());
        if let Some(state) = &trace.tracestate {
            put_header(upstream, b"tracestate", state.as_bytes());
        }
    }
    // One line: the caller's own lines, in order, then the caller.
    upstream.extend_from_slice(b"x-forwarded-for: ");
    if forwarded {
        for header in request.headers {
            if header.name.eq_ignore_ascii_case("x-forwarded-for") {
                upstream.extend_from_slice(header.value);
                upstream.extend_from_slice(b", ");
            }
        }
    }
    upstream.extend_from_slice(forwarded_for.as_bytes());
    upstream.extend_from_slice(b"\r\n");
    if let Some(length) = request.body_len {
        upstream.extend_from_slice(b"content-length: ");
        put_decimal(upstream, length);
        upstream.extend_from_slice(b"\r\n");
    }
    upstream.extend_from_slice(b"\r\n");
    upstream.extend_from_slice(request.body);
}

/// The `Host` line of the connection's last target, by its authority: finding the host and
/// the port in an authority means parsing it again.
#[derive(Default)]
struct HostLine {
    authority: String,
    line: Vec<u8>,
}

impl HostLine {
    /// `host: ` and the target's host, with its port unless it is 80.
    fn line(&mut self, target: &Uri) -> &[u8] {
        let authority = target.authority().map_or("", |a| a.as_str());
        if self.line.is_empty() || self.authority != authority {
            self.authority.clear();
            self.authority.push_str(authority);
            self.line.clear();
            self.line.extend_from_slice(b"host: ");
            self.line
                .extend_from_slice(target.host().unwrap_or_default().as_bytes());
            if let Some(port) = target.port_u16().filter(|&port| port != 80) {
                self.line.push(b':');
                put_decimal(&mut self.line, u64::from(port));
            }
            self.line.extend_from_slice(b"\r\n");
        }
        &self.line
    }
}

/// How a relayed exchange ended for the downstream connection.
enum Relayed {
    /// The whole response went out: the connection can take its next request.
    Done,
    /// The response was cut short (the upstream failed mid-body, the total timeout fired, or
    /// the caller went away): the connection must close.
    Broken,
}

/// What a downstream connection keeps from one relayed request to the next.
struct Scratch {
    /// Upstream bytes: the response head, then body bytes as they pass through.
    response: BytesMut,
    /// Downstream bytes: the response head as it goes to the caller, then body bytes.
    out: Vec<u8>,
    /// The total timeout, moved on for each request: moving a registered timer later does
    /// not touch the timer wheel.
    timer: Pin<Box<Sleep>>,
    outcomes: Outcomes,
}

/// Sends `forward` upstream and relays the response to `io`.
async fn relay<IO>(
    io: &mut IO,
    state: &AppState,
    forward: &Forward,
    scratch: &mut Scratch,
) -> Relayed
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let proxy = &state.proxy;
    let started = Instant::now();
    let Scratch {
        response,
        out,
        timer,
        outcomes,
    } = scratch;
    timer
        .as_mut()
        .reset(tokio::time::Instant::from_std(started) + proxy.total_timeout());
    let authority = forward.target.authority().map_or("", |a| a.as_str());
    let exchanged = tokio::select! {
        biased;
        exchanged = exchange(state, forward, authority, response, out, started) => exchanged,
        () = timer.as_mut() => Err(ProxyError::Timeout(format!(
            "no response within {} ms",
            proxy.total_timeout().as_millis()
        ))),
    };
    let (upstream, head) = match exchanged {
        Ok(exchanged) => exchanged,
        Err(error) => return refuse(io, forward, error, started, outcomes).await,
    };
    outcomes.record(&forward.span, head.status, started);
    let relayed = relay_body(io, upstream, head, response, out, timer.as_mut()).await;
    if out.capacity() > KEPT_BUFFER {
        *out = Vec::new();
    }
    match relayed {
        Ok(Some(reusable)) => {
            proxy.upstreams.checkin(authority, reusable);
            Relayed::Done
        }
        Ok(None) => Relayed::Done,
        Err(Cut::TimedOut) => {
            tracing::debug!("proxied response body cut off by the total timeout");
            Relayed::Broken
        }
        Err(Cut::Broken) => Relayed::Broken,
    }
}

/// Answers a request that got no upstream response with the error's status (SPEC §9.7).
async fn refuse<IO>(
    io: &mut IO,
    forward: &Forward,
    error: ProxyError,
    started: Instant,
    outcomes: &mut Outcomes,
) -> Relayed
where
    IO: AsyncWrite + Unpin,
{
    forward.span.record("error", tracing::field::debug(&error));
    let (status, reason) = error.status_and_reason();
    outcomes.record(&forward.span, status, started);
    let answer = json_response(
        status,
        &serde_json::json!({ "errors": [reason] }),
        forward.close,
        forward.method == Method::HEAD,
    );
    match write(io, &answer).await {
        Ok(()) => Relayed::Done,
        Err(_) => Relayed::Broken,
    }
}

/// An upstream response head, ready to relay.
/// The head as it goes downstream is written to the connection's `Scratch::out`.
struct ResponseHead {
    status: StatusCode,
    framing: Framing,
    /// Whether the upstream keeps the connection open after this response.
    keep_alive: bool,
}

/// An attempt that failed; `before_response` when not one byte of a response had come, so a
/// pooled connection may simply have been closed by the upstream while it was idle.
struct Failed {
    error: ProxyError,
    before_response: bool,
}

/// Sends the request on a pooled connection (or a new one) and reads the response head;
/// the bytes after the head are left in `response`.
async fn exchange(
    state: &AppState,
    forward: &Forward,
    authority: &str,
    response: &mut BytesMut,
    out: &mut Vec<u8>,
    started: Instant,
) -> Result<(TcpStream, ResponseHead), ProxyError> {
    let upstreams = &state.proxy.upstreams;
    // Of the six methods, GET, HEAD, PUT and DELETE (RFC 9110 §9.2.2).
    let idempotent = forward.method.is_idempotent();
    let mut pooled = upstreams.checkout(authority, !idempotent, started);
    loop {
        let reused = pooled.is_some();
        let mut stream = match pooled.take() {
            Some(stream) => stream,
            None => upstreams.connect(&forward.target).await?,
        };
        response.clear();
        match send(&mut stream, forward, response, out).await {
            Ok(head) => return Ok((stream, head)),
            Err(failed) if reused && idempotent && failed.before_response => {
                tracing::debug!(error = ?failed.error, "pooled upstream connection was closed: retrying on a new one");
            }
            Err(failed) => return Err(failed.error),
        }
    }
}

/// Sends the request on `stream` and reads the response head; the head as it goes downstream
/// is left in `out`.
async fn send(
    stream: &mut TcpStream,
    forward: &Forward,
    response: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Failed> {
    // Interim responses are dropped from `response` as they are read: remember any byte.
    let mut answered = false;
    let failed = |error: ProxyError, answered: bool| Failed {
        error,
        before_response: !answered,
    };
    if let Err(error) = stream.write_all(&forward.upstream).await {
        return Err(failed(
            ProxyError::Unreachable(format!("sending the request: {error}")),
            answered,
        ));
    }
    loop {
        match parse_response(&forward.method, forward.close, response, out) {
            Ok(Some((length, head))) => {
                response.advance(length);
                return Ok(head);
            }
            Ok(None) => {}
            Err(error) => return Err(failed(error, true)),
        }
        match stream.read_buf(response).await {
            Ok(0) => {
                return Err(failed(
                    ProxyError::Unreachable(
                        "connection closed before the response was complete".to_owned(),
                    ),
                    answered,
                ));
            }
            Ok(_) => answered = true,
            Err(error) => {
                return Err(failed(
                    ProxyError::Unreachable(format!("reading the response: {error}")),
                    answered,
                ));
            }
        }
    }
}

fn malformed(why: impl std::fmt::Display) -> ProxyError {
    ProxyError::Unreachable(format!("invalid response from the upstream: {why}"))
}

/// The response head at the start of `response`, with its length: `None` while incomplete.
/// Interim (1xx) responses are dropped from `response` on the way. With `close`, the head
/// going downstream says the connection closes after it; it is written to `head`.
fn parse_response(
    method: &Method,
    close: bool,
    response: &mut BytesMut,
    head: &mut Vec<u8>,
) -> Result<Option<(usize, ResponseHead)>, ProxyError> {
    loop {
        let mut headers = [const { MaybeUninit::<Header<'_>>::uninit() }; RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            response,
            &mut headers,
        );
        let length = match parsing {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if response.len() < MAX_RESPONSE_HEAD => {
                return Ok(None);
            }
            Ok(httparse::Status::Partial) => return Err(malformed("response head too large")),
            Err(error) => return Err(malformed(error)),
        };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(malformed)?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(malformed("an upgrade nobody asked for"));
        }
        if status.is_informational() {
            response.advance(length);
            continue;
        }
        let headers: &[Header<'_>] = parsed.headers;
        let framing = response_framing(method.as_str(), code, headers).map_err(malformed)?;
        let hop_by_hop = HopByHop::of(headers);
        let keep_alive = parsed.version == Some(1)
            && !hop_by_hop.names("close")
            && framing != Framing::UntilClose;
        head.clear();
        head.reserve(length + 32);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(parsed.reason.unwrap_or_default().as_bytes());
        head.extend_from_slice(b"\r\n");
        let rechunked = matches!(framing, Framing::Chunked | Framing::UntilClose);
        for header in headers {
            let name = header.name;
            let dropped = hop_by_hop.contains(name)
                || (rechunked && name.eq_ignore_ascii_case("content-length"));
            if !dropped {
                put_header(head, name.as_bytes(), header.value);
            }
        }
        if rechunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");
        return Ok(Some((
            length,
            ResponseHead {
                status,
                framing,
                keep_alive,
            },
        )));
    }
}

/// Why a response body could not be relayed to the end.
enum Cut {
    /// The upstream failed or sent a malformed body, or the caller went away.
    Broken,
    /// The total timeout fired while the upstream's body was still arriving.
    TimedOut,
}

/// Relays the response head and body to `io`; `response` holds the body's first bytes.
/// Returns the upstream connection when it can carry another request. `timer` bounds each
/// wait for the upstream (as the hyper path's body does), not the writes to the caller.
async fn relay_body<IO>(
    io: &mut IO,
    mut upstream: TcpStream,
    head: ResponseHead,
    response: &mut BytesMut,
    out: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
) -> Result<Option<TcpStream>, Cut>
where
    IO: AsyncWrite + Unpin,
{
    // Whether bytes beyond the response came: the connection is then not reused.
    let mut surplus;
    match head.framing {
        Framing::Empty => {
            surplus = !response.is_empty();
            write(io, out).await?;
        }
        Framing::Length(length) => {
            let mut left = length;
            loop {
                let take = (response.len() as u64).min(left) as usize;
                out.extend_from_slice(&response[..take]);
                left -= take as u64;
                surplus = response.len() > take;
                write(io, out).await?;
                out.clear();
                if left == 0 {
                    break;
                }
                if read_more(&mut upstream, response, timer.as_mut()).await? == 0 {
                    return Err(Cut::Broken);
                }
            }
        }
        Framing::Chunked => {
            let mut end = ChunkedEnd::default();
            loop {
                let found = end.feed(response).map_err(|_| Cut::Broken)?;
                let take = found.unwrap_or(response.len());
                out.extend_from_slice(&response[..take]);
                surplus = response.len() > take;
                write(io, out).await?;
                out.clear();
                if found.is_some() {
                    break;
                }
                if read_more(&mut upstream, response, timer.as_mut()).await? == 0 {
                    return Err(Cut::Broken);
                }
            }
        }
        Framing::UntilClose => {
            loop {
                if !response.is_empty() {
                    put_hex(out, response.len() as u64);
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(response);
                    out.extend_from_slice(b"\r\n");
                    write(io, out).await?;
                    out.clear();
                }
                if read_more(&mut upstream, response, timer.as_mut()).await? == 0 {
                    break;
                }
            }
            write(io, b"0\r\n\r\n").await?;
            return Ok(None);
        }
    }
    Ok((head.keep_alive && !surplus).then_some(upstream))
}

/// Replaces `response` with the next bytes from the upstream, unless the total timeout fires
/// first; 0 at the end of the stream.
async fn read_more(
    upstream: &mut TcpStream,
    response: &mut BytesMut,
    timer: Pin<&mut Sleep>,
) -> Result<usize, Cut> {
    response.clear();
    response.reserve(READ_CHUNK);
    tokio::select! {
        biased;
        read = upstream.read_buf(response) => read.map_err(|_| Cut::Broken),
        () = timer => Err(Cut::TimedOut),
    }
}

/// Writes `bytes` to the caller and flushes them (TLS keeps written bytes until a flush).
async fn write<IO: AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> Result<(), Cut> {
    io.write_all(bytes).await.map_err(|_| Cut::Broken)?;
    io.flush().await.map_err(|_| Cut::Broken)
}
