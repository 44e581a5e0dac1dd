//! The router applies one inbound frame to shared state and pushes every resulting frame into
//! the outboxes of the connections concerned. It never awaits a socket.
//!
//! Frames of one connection reach [`Router::handle`] one at a time, in order (SPEC §3.3); the
//! transports guarantee that. Everything a frame causes — replies, deliveries, registration —
//! has happened when `handle` returns, so the next frame sees it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::{RwLock, RwLockReadGuard};

use crate::auth::Auth;
use crate::clock::Arrival;
use crate::envelope::Envelope;
use crate::error::{Fatal, Invalid};
use crate::frame::{Out, OutFrame, Outgoing, TraceContext, op};
use crate::metadata::MetadataLimits;
use crate::query::{Query, QueryLimits};
use crate::queue::engine::{Completion, QueueEngine};
use crate::queue::{QueueConfig, QueueStore, StoreError};
use crate::registry::{ClientRecord, MatchCache, Recipients, Registry};
use crate::session::{Conn, ConnState, Outbox};

mod dispatch;
mod identify;
mod queue;

use identify::{emit_client_event, subscriber_outboxes};

/// What the router needs to know, handed in at start-up.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This node's id, shown as `node` in client objects.
    pub node_id: Arc<str>,
    /// Sent in hello (`gateway.heartbeat_interval_ms`).
    pub heartbeat_interval_ms: u64,
    pub metadata: MetadataLimits,
    pub query: QueryLimits,
    pub queue: QueueConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            node_id: Arc::from("ganglion"),
            heartbeat_interval_ms: 45_000,
            metadata: MetadataLimits::default(),
            query: QueryLimits::default(),
            queue: QueueConfig::default(),
        }
    }
}

/// What the connection should do after a frame.
#[derive(Debug)]
pub enum Outcome {
    Continue,
    /// Identify succeeded: the identify deadline ends and the heartbeat deadline starts.
    Identified,
    /// A heartbeat arrived: the liveness deadline restarts.
    Heartbeat,
    /// Send op 8 with this error and close (after cleanup).
    Close(Fatal),
    /// The frame's effects complete later, in order (a QUEUE waiting for its durable write).
    /// A frame that cannot be pipelined must wait for this before it is handled.
    Pending(Completion),
}

/// One inbound frame for the session service.
pub struct Inbound {
    pub conn: Arc<Conn>,
    pub envelope: Envelope,
    /// The trace context the frames this one causes carry (SPEC §11): already a child of the
    /// envelope's `trace`, with ganglion's span as parent. Transports leave it `None`; the
    /// gateway's tracing layer sets it.
    pub trace: Option<TraceContext>,
    /// When the transport read the frame: the `ts` of the deliveries it causes, and the start
    /// of its routing time. Transports read the clock once for every batch of frames they read
    /// together, not once per frame.
    pub received: Arrival,
}

impl Inbound {
    /// A frame as a transport hands it over, before the tracing layer.
    pub fn new(conn: Arc<Conn>, envelope: Envelope, received: Arrival) -> Inbound {
        Inbound {
            conn,
            envelope,
            trace: None,
            received,
        }
    }
}

/// Shared routing state.
pub struct Router {
    config: RouterConfig,
    registry: Arc<RwLock<Registry>>,
    queues: Arc<QueueEngine>,
    auth: Auth,
}

// === impl Router ===

impl Router {
    /// Builds the router, recovering every queued message from `store`.
    pub fn new(
        config: RouterConfig,
        auth: Auth,
        store: Arc<dyn QueueStore>,
    ) -> Result<Router, StoreError> {
        let registry = Arc::new(RwLock::new(Registry::new(config.node_id.clone())));
        let queues = Arc::new(QueueEngine::start(
            config.queue,
            store,
            registry.clone(),
            config.query,
        )?);
        Ok(Router {
            registry,
            queues,
            config,
            auth,
        })
    }

    /// The queues of this node (HTTP endpoints, the sweep timer).
    pub fn queues(&self) -> &Arc<QueueEngine> {
        &self.queues
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Read access to the registry (HTTP queries, metrics).
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read()
    }

    /// The hello frame (SPEC §4.2).
    pub fn hello(&self) -> OutFrame {
        OutFrame::new(
            op::HELLO,
            Out::BinMap(vec![(
                Cow::Borrowed("heartbeat_interval"),
                Out::Int(i64::try_from(self.config.heartbeat_interval_ms).unwrap_or(i64::MAX)),
            )]),
        )
    }

    /// The goodbye frame (SPEC §4.8).
    pub fn goodbye(reason: &'static str) -> OutFrame {
        OutFrame::new(
            op::GOODBYE,
            Out::BinMap(vec![(Cow::Borrowed("reason"), Out::str(reason))]),
        )
    }

    /// Applies one frame (SPEC §3.3's gate, then the op's handling). Every op 4 frame it
    /// causes carries `trace` (SPEC §11; see [`Inbound::trace`]).
    pub fn handle(&self, conn: &Conn, envelope: Envelope, trace: Option<TraceContext>) -> Outcome {
        self.handle_received(conn, envelope, trace, Arrival::now())
    }

    /// [`Router::handle`] for a frame read at `received` ([`Inbound::received`]).
    pub fn handle_received(
        &self,
        conn: &Conn,
        envelope: Envelope,
        trace: Option<TraceContext>,
        received: Arrival,
    ) -> Outcome {
        match conn.state() {
            ConnState::Closing => Outcome::Continue,
            ConnState::AwaitingIdentify => match envelope.op {
                Some(op::IDENTIFY) => match self.identify(conn, envelope.d) {
                    Ok(()) => {
                        let outcome = match conn.state() {
                            ConnState::Identified(identity) if identity.restricted => "restricted",
                            _ => "ok",
                        };
                        metrics::counter!("ganglion_identify_total", "outcome" => outcome, "reason" => "")
                            .increment(1);
                        Outcome::Identified
                    }
                    Err(fatal) => {
                        metrics::counter!("ganglion_identify_total", "outcome" => "rejected", "reason" => fatal.class())
                            .increment(1);
                        Outcome::Close(fatal)
                    }
                },
                _ => Outcome::Close(Fatal::NotIdentified),
            },
            ConnState::Identified(identity) => match envelope.op {
                Some(op::DISPATCH) => self.dispatch(conn, &identity, envelope, trace, received),
                Some(op::HEARTBEAT) => {
                    self.heartbeat(conn, &identity);
                    Outcome::Heartbeat
                }
                other => Outcome::Close(Fatal::InvalidClientOp(other)),
            },
        }
    }

    /// Unregisters the connection's client, once, whatever the reason (SPEC §4.8 cleanup).
    pub fn cleanup(&self, conn: &Conn) {
        let ConnState::Identified(identity) = conn.begin_closing() else {
            return;
        };
        let (record, subscribers) = {
            let mut registry = self.registry.write();
            let record = registry.unregister(identity.slot, conn.id);
            let subscribers = subscriber_outboxes(&registry);
            (record, subscribers)
        };
        self.queues.disconnected(conn.id);
        if let Some(record) = record {
            tracing::debug!(
                app = %record.application_id,
                client = %record.client_id,
                "client unregistered"
            );
            emit_client_event(
                "CLIENT_DISCONNECTED",
                &record.application_id,
                &record.client_id,
                &subscribers,
            );
        }
    }

    /// Runs a query for the HTTP API (SPEC §9.4): client objects sorted by identity.
    pub fn query_clients(&self, query: &Query) -> Vec<Out> {
        let registry = self.registry.read();
        let matched = registry.match_set(query);
        let mut records: Vec<&ClientRecord> = registry
            .recipients(query, &matched, Recipients::All)
            .iter()
            .filter_map(|slot| registry.get(*slot))
            .collect();
        records.sort_by(|a, b| {
            (&a.application_id, &a.client_id).cmp(&(&b.application_id, &b.client_id))
        });
        records
            .iter()
            .map(|r| r.client_object(&self.queues.waiting_on(r.conn_id)))
            .collect()
    }

    /// The address of the client a proxied request goes to (SPEC §9.5, §9.7): the match set
    /// of §6.8 over the clients that have an address (others are not candidates at all, so
    /// `optional` and the selector only ever pick reachable ones), then one of them as for SEND
    /// (the rendezvous winner for the key, else uniformly random). `None` when nobody is
    /// eligible.
    pub fn proxy_target(&self, query: &Query) -> Option<String> {
        let registry = self.registry.read();
        let eligible = registry.match_set_where(query, has_proxy_address);
        let slot = registry.pick_one(query, &eligible)?;
        registry.get(slot)?.proxy_address.clone()
    }

    /// [`Router::proxy_target`] for a connection that proxies again and again: the match set
    /// comes through `cache` (kept while the registry is unchanged; use the cache for nothing
    /// else), the client is still chosen per call, and `then` sees its address without a
    /// copy. `None` when nobody is eligible.
    pub fn proxy_target_with<R>(
        &self,
        query: &Arc<Query>,
        cache: &MatchCache,
        then: impl FnOnce(&str) -> R,
    ) -> Option<R> {
        let registry = self.registry.read();
        registry.match_set_cached_where(query, cache, has_proxy_address, |eligible| {
            let slot = registry.pick_one(query, eligible)?;
            registry.get(slot)?.proxy_address.as_deref().map(then)
        })
    }

    /// Routes a SEND, BROADCAST or QUEUE for a sender that is not a client: no identity, no
    /// restrictions, and never itself a recipient (the NATS bridge's injection, SPEC §2.3).
    ///
    /// Exactly one answer is pushed into `reply`: `DISPATCH_RESULT` with the number of clients
    /// the message was handed to, the QUEUE_CONFIRM, or the op 3 a client would get; another
    /// `t` gets `invalid dispatch payload` with a null `extra_info`. A QUEUE is answered once
    /// durable, and the returned completion resolves after its answer was pushed.
    ///
    /// `trace` is the context the resulting op 4 frames carry, the answer included (SPEC
    /// §11; see [`Inbound::trace`]).
    pub fn inject(
        &self,
        envelope: Envelope,
        trace: Option<TraceContext>,
        reply: Arc<dyn Outbox>,
    ) -> Option<Completion> {
        let (t, wanted) = match envelope.event_name() {
            Some("SEND") => ("SEND", Recipients::One),
            Some("BROADCAST") => ("BROADCAST", Recipients::All),
            Some("QUEUE") => return Some(self.queue_push_to(reply, envelope, trace)),
            _ => {
                reply.push(&Outgoing::new(Invalid::Injection.to_frame()));
                return None;
            }
        };
        let nonce = envelope.dispatch_nonce();
        let answer = match self.route(t, wanted, envelope, trace.clone(), None, Arrival::now()) {
            Ok(recipients) => OutFrame::dispatch(
                "DISPATCH_RESULT",
                Out::Map(vec![
                    ("t", Out::str(t)),
                    ("nonce", Out::Value(nonce)),
                    (
                        "recipients",
                        Out::Int(i64::try_from(recipients).unwrap_or(i64::MAX)),
                    ),
                ]),
            )
            .with_trace(trace),
            Err(invalid) => {
                tracing::debug!(error = %invalid, t, "injected dispatch refused");
                invalid.to_frame()
            }
        };
        reply.push(&Outgoing::new(answer));
        None
    }
}

/// The proxy's candidates (SPEC §9.5): the clients with an address. One function for both
/// proxy lookups, since a [`MatchCache`] kept for one predicate must never see another.
fn has_proxy_address(record: &ClientRecord) -> bool {
    record.proxy_address.is_some()
}

/// `invalid dispatch payload`, echoing the frame as received (SPEC §7.8).
pub(super) fn invalid_payload(mut envelope: Envelope) -> Invalid {
    Invalid::DispatchPayload {
        ts: envelope.take_ts(),
        t: envelope.t,
        d: envelope.d,
    }
}

/// The innermost session service: the router as a `tower::Service`, so middleware layers
/// written once wrap every transport.
#[derive(Clone)]
pub struct RouterService {
    router: Arc<Router>,
}

impl RouterService {
    pub fn new(router: Arc<Router>) -> RouterService {
        RouterService { router }
    }
}

impl tower_service::Service<Inbound> for RouterService {
    type Response = Outcome;
    type Error = Infallible;
    type Future = Ready<Result<Outcome, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        ready(Ok(self.router.handle_received(
            &inbound.conn,
            inbound.envelope,
            inbound.trace,
            inbound.received,
        )))
    }
}
