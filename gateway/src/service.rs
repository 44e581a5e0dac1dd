//! The session service: the router wrapped in tower middleware, built once at start-up and
//! cloned into every session. A concern added here (tracing, metrics, limits) applies to every
//! transport without transport-specific code.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use ganglion_core::{Inbound, Outcome, Router, RouterService};
use tower::{Layer, Service, ServiceBuilder};
use tracing::Instrument;
use tracing::instrument::Instrumented;

/// The concrete stack every session runs.
pub type SessionStack = FrameTrace<RouterService>;

/// Builds the session service around the router.
pub fn session_stack(router: Arc<Router>) -> SessionStack {
    ServiceBuilder::new()
        .layer(FrameTraceLayer)
        .service(RouterService::new(router))
}

/// Opens a `debug` span per inbound frame with its opcode and event name, nested in the
/// connection's span. Disabled levels cost one check.
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
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let span = tracing::debug_span!(
            "frame",
            op = inbound.envelope.op,
            t = inbound.envelope.event_name()
        );
        self.inner.call(inbound).instrument(span)
    }
}
