//! The session service: the router wrapped in tower middleware, built once at start-up and
//! cloned into every session. A concern added here (tracing, metrics, limits) applies to every
//! transport without transport-specific code.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use ganglion_core::frame::op;
use ganglion_core::session::ConnState;
use ganglion_core::trace::{SPAN_TARGET, dispatch_span, traced_span};
use ganglion_core::{Conn, Inbound, Outcome, Router, RouterService, Value};
use tower::{Layer, Service, ServiceBuilder};
use tracing::Span;
use tracing::field::Empty;

/// The concrete stack every session runs.
pub type SessionStack = FrameTrace<RouterService>;

/// Builds the session service around the router.
pub fn session_stack(router: Arc<Router>) -> SessionStack {
    ServiceBuilder::new()
        .layer(FrameTraceLayer)
        .service(RouterService::new(router))
}

/// Traces every inbound frame:
///
/// - a `debug` span `frame` with its opcode and event name, nested in the connection's span,
///   for logs;
/// - for op 4, the dispatch span of [`dispatch_span`]: continued from the frame's `trace`,
///   it decides the context every frame the dispatch causes carries ([`Inbound::trace`],
///   SPEC §11);
/// - for op 1, an `identify` span with the outcome.
///
/// The last two use the per-message target [`SPAN_TARGET`]: with span export off nothing
/// enables them, and each costs a cached callsite check.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameTraceLayer;

impl<S> Layer<S> for FrameTraceLayer {
    type Service = FrameTrace<S>;

    fn layer(&self, inner: S) -> FrameTrace<S> {
        FrameTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct FrameTrace<S> {
    inner: S,
}

impl<S> Service<Inbound> for FrameTrace<S>
where
    S: Service<Inbound, Response = Outcome, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = Traced<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut inbound: Inbound) -> Self::Future {
        let frame = tracing::debug_span!(
            "frame",
            op = inbound.envelope.op,
            t = inbound.envelope.event_name()
        );
        let conn = &inbound.conn;
        let traced = match inbound.envelope.op {
            Some(op::DISPATCH) => {
                let (span, trace) =
                    dispatch_span(&inbound.envelope, conn.transport.as_str(), Some(conn.id));
                inbound.trace = trace;
                Some((span, None))
            }
            Some(op::IDENTIFY) => {
                let span = identify_span(conn, &inbound.envelope.d);
                (!span.is_disabled()).then(|| (span, Some(conn.clone())))
            }
            _ => None,
        };
        // The router does its work inside `call`: the spans are entered around it, so what it
        // records and opens lands in them.
        let inner = {
            let _frame = frame.enter();
            let _span = traced.as_ref().map(|(span, _)| span.enter());
            self.inner.call(inbound)
        };
        Traced {
            inner,
            frame,
            traced,
        }
    }
}

/// The span of an identify, with the ids the client gave: the root of a trace of its own,
/// when the sampler starts one.
fn identify_span(conn: &Conn, d: &Value) -> Span {
    let (span, _) = traced_span(None, || {
        tracing::info_span!(
            target: SPAN_TARGET,
            parent: None,
            "identify",
            transport = conn.transport.as_str(),
            conn = conn.id,
            app = Empty,
            client = Empty,
            outcome = Empty,
            reason = Empty,
        )
    });
    if !span.is_disabled()
        && let Value::Object(d) = d
    {
        if let Some(app) = d.get("application_id").and_then(Value::as_str) {
            span.record("app", app);
        }
        if let Some(client) = d.get("client_id").and_then(Value::as_str) {
            span.record("client", client);
        }
    }
    span
}

/// The router's future with the frame's spans: entered while it runs, and, for identify, the
/// outcome recorded when it is done.
pub struct Traced<F> {
    inner: F,
    frame: Span,
    /// The dispatch or identify span, and for identify the connection whose state tells
    /// whether the client is restricted.
    traced: Option<(Span, Option<Arc<Conn>>)>,
}

impl<F> Future for Traced<F>
where
    F: Future<Output = Result<Outcome, Infallible>> + Unpin,
{
    type Output = Result<Outcome, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _frame = this.frame.enter();
        let _span = this.traced.as_ref().map(|(span, _)| span.enter());
        let output = ready!(Pin::new(&mut this.inner).poll(cx));
        if let (Some((span, conn)), Ok(outcome)) = (&this.traced, &output) {
            record_outcome(span, conn.as_deref(), outcome);
        }
        Poll::Ready(output)
    }
}

fn record_outcome(span: &Span, identifying: Option<&Conn>, outcome: &Outcome) {
    match (identifying, outcome) {
        (Some(conn), Outcome::Identified) => {
            let restricted =
                matches!(conn.state(), ConnState::Identified(identity) if identity.restricted);
            span.record("outcome", if restricted { "restricted" } else { "ok" });
        }
        (Some(_), Outcome::Close(fatal)) => {
            span.record("outcome", "rejected");
            span.record("reason", fatal.class());
        }
        (None, Outcome::Close(fatal)) => {
            span.record("outcome", "closed");
            span.record("error", tracing::field::display(fatal));
        }
        _ => {}
    }
}
