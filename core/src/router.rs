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

use crate::auth::{Auth, Verdict};
use crate::clock::now_ms;
use crate::envelope::Envelope;
use crate::error::{Fatal, Invalid};
use crate::frame::{Out, OutFrame, Outgoing, op};
use crate::metadata::{Metadata, MetadataLimits, ReservedValues};
use crate::query::{Query, QueryLimits};
use crate::queue::engine::{Completion, QueueEngine};
use crate::queue::{
    ConsumerIdentity, NewMessage, QueueConfig, QueueStore, StoreError, Waiter, validate_name,
};
use crate::registry::{ClientRecord, Recipients, Registry, Slot};
use crate::session::{Conn, ConnState, Identity, Outbox, format_peer_ip};
use crate::value::Value;

/// Longest `client_id` / `application_id` in bytes (SPEC §4.3).
const MAX_ID_BYTES: usize = 255;

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

    /// Applies one frame (SPEC §3.3's gate, then the op's handling).
    pub fn handle(&self, conn: &Conn, envelope: Envelope) -> Outcome {
        match conn.state() {
            ConnState::Closing => Outcome::Continue,
            ConnState::AwaitingIdentify => match envelope.op {
                Some(op::IDENTIFY) => match self.identify(conn, envelope.d) {
                    Ok(()) => Outcome::Identified,
                    Err(fatal) => Outcome::Close(fatal),
                },
                _ => Outcome::Close(Fatal::NotIdentified),
            },
            ConnState::Identified(identity) => match envelope.op {
                Some(op::DISPATCH) => self.dispatch(conn, &identity, envelope),
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
            .recipients(query, matched, Recipients::All)
            .into_iter()
            .filter_map(|slot| registry.get(slot))
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
    /// of §6.8 narrowed to clients that have an address, then one of them as for SEND (the
    /// rendezvous winner for the key, else uniformly random). `None` when nobody is eligible.
    pub fn proxy_target(&self, query: &Query) -> Option<String> {
        let registry = self.registry.read();
        let eligible: Vec<Slot> = registry
            .match_set(query)
            .into_iter()
            .filter(|slot| {
                registry
                    .get(*slot)
                    .is_some_and(|r| r.proxy_address.is_some())
            })
            .collect();
        let slot = registry.pick_one(query, &eligible)?;
        registry.get(slot)?.proxy_address.clone()
    }

    /// Routes a SEND, BROADCAST or QUEUE for a sender that is not a client: no identity, no
    /// restrictions, and never itself a recipient (the NATS bridge's injection, SPEC §2.3).
    ///
    /// Exactly one answer is pushed into `reply`: `DISPATCH_RESULT` with the number of clients
    /// the message was handed to, the QUEUE_CONFIRM, or the op 3 a client would get; another
    /// `t` gets `invalid dispatch payload` with a null `extra_info`. A QUEUE is answered once
    /// durable, and the returned completion resolves after its answer was pushed.
    ///
    /// `envelope.trace` travels with the envelope like a client's; continuing it into the
    /// deliveries is the router's trace support (SPEC §11), shared with client dispatches.
    pub fn inject(&self, envelope: Envelope, reply: Arc<dyn Outbox>) -> Option<Completion> {
        let (t, wanted) = match envelope.event_name() {
            Some("SEND") => ("SEND", Recipients::One),
            Some("BROADCAST") => ("BROADCAST", Recipients::All),
            Some("QUEUE") => return Some(self.queue_push_to(reply, envelope)),
            _ => {
                reply.push(&Arc::new(Outgoing::new(Invalid::Injection.to_frame())));
                return None;
            }
        };
        let nonce = match &envelope.d {
            Value::Object(d) => d.get("nonce").cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let answer = match self.route(t, wanted, envelope) {
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
            ),
            Err(invalid) => {
                tracing::debug!(error = %invalid, t, "injected dispatch refused");
                invalid.to_frame()
            }
        };
        reply.push(&Arc::new(Outgoing::new(answer)));
        None
    }

    // --- identify ---

    fn identify(&self, conn: &Conn, d: Value) -> Result<(), Fatal> {
        let Value::Object(d) = d else {
            return Err(Fatal::Decode(None));
        };
        let client_id = validate_id(d.get("client_id"), "client_id")?;
        let application_id = validate_id(d.get("application_id"), "application_id")?;
        let advertised_ip = match d.get("ip") {
            None | Some(Value::Null) => None,
            Some(Value::String(ip)) => Some(ip.clone()),
            Some(_) => {
                return Err(Fatal::IdentifyField {
                    field: "ip",
                    problem: "must be a string",
                });
            }
        };
        let auth = d.get("auth").unwrap_or(&Value::Null);
        let verdict = self.auth.verify_identify(auth);
        let restricted = matches!(verdict, Verdict::Restricted { .. });
        let peer_ip = conn.peer.map(format_peer_ip);
        let socket_ip = if restricted {
            None
        } else {
            advertised_ip.or_else(|| peer_ip.clone())
        };
        let receive_client_updates =
            !restricted && matches!(d.get("receive_client_updates"), Some(Value::Bool(true)));
        let metadata = Metadata::initial(
            d.get("metadata").unwrap_or(&Value::Null),
            ReservedValues {
                last_heartbeat_time: now_ms(),
                restricted,
                encoding: conn.encoding,
                ip: socket_ip.clone(),
                namespace: d.get("namespace").cloned().unwrap_or(Value::Null),
                receive_client_updates,
            },
            &self.config.metadata,
        )
        .map_err(Fatal::InitialMetadata)?;
        let source = conn.source_key();
        if !auth.is_null() && self.auth.over_limit(source) {
            return Err(Fatal::TooManyAuthFailures);
        }

        let record = ClientRecord {
            application_id: application_id.clone(),
            client_id: client_id.clone(),
            node: self.config.node_id.clone(),
            restricted,
            receive_client_updates,
            proxy_address: socket_ip.clone().or(peer_ip),
            socket_ip,
            metadata,
            outbox: conn.outbox.clone(),
            conn_id: conn.id,
        };
        let ready = OutFrame::new(
            op::READY,
            Out::BinMap(vec![
                (Cow::Borrowed("client_id"), Out::str(client_id.clone())),
                (Cow::Borrowed("restricted"), Out::Bool(restricted)),
            ]),
        );
        let (slot, subscribers) = {
            let mut registry = self.registry.write();
            // `ready` is queued before the client becomes routable, so no dispatch can
            // overtake it (SPEC §4.3 step 3).
            let slot = registry.register(record, |_| {
                conn.send(ready);
            })?;
            (slot, subscriber_outboxes(&registry))
        };
        if verdict == (Verdict::Restricted { failed: true }) {
            self.auth.record_failure(source);
        }
        conn.set_state(ConnState::Identified(Identity {
            slot,
            application_id: application_id.clone(),
            client_id: client_id.clone(),
            restricted,
        }));
        tracing::debug!(app = %application_id, client = %client_id, restricted, "client identified");
        emit_client_event(
            "CLIENT_CONNECTED",
            &application_id,
            &client_id,
            &subscribers,
        );
        self.queues.client_registered();
        Ok(())
    }

    // --- heartbeat ---

    fn heartbeat(&self, conn: &Conn, identity: &Identity) {
        self.registry.write().heartbeat(identity.slot, now_ms());
        self.queues.metadata_changed(conn.id);
        conn.send(OutFrame::new(
            op::HEARTBEAT_ACK,
            Out::BinMap(vec![(
                Cow::Borrowed("client_id"),
                Out::str(identity.client_id.clone()),
            )]),
        ));
    }

    // --- dispatch ---

    fn dispatch(&self, conn: &Conn, identity: &Identity, envelope: Envelope) -> Outcome {
        let t = envelope.event_name().unwrap_or_default().to_owned();
        if identity.restricted && t != "UPDATE_METADATA" {
            conn.send(Invalid::Restricted { t }.to_frame());
            return Outcome::Continue;
        }
        let result = match t.as_str() {
            "UPDATE_METADATA" => self.update_metadata(conn, identity, envelope),
            "SEND" => self.route("SEND", Recipients::One, envelope).map(drop),
            "BROADCAST" => self.route("BROADCAST", Recipients::All, envelope).map(drop),
            "QUERY_NODES" => self.query_nodes(conn, envelope),
            "QUEUE" => return self.queue_push(conn, envelope),
            "QUEUE_REQUEST" => self.queue_request(conn, identity, envelope),
            "QUEUE_REQUEST_CANCEL" => self.queue_cancel(conn, envelope),
            "QUEUE_ACK" => self.queue_ack(identity, envelope),
            _ => Err(invalid_payload(envelope)),
        };
        if let Err(invalid) = result {
            tracing::debug!(error = %invalid, t = %t, "dispatch refused");
            conn.send(invalid.to_frame());
        }
        Outcome::Continue
    }

    fn update_metadata(
        &self,
        conn: &Conn,
        identity: &Identity,
        envelope: Envelope,
    ) -> Result<(), Invalid> {
        let Value::Object(update) = &envelope.d else {
            return Err(invalid_payload(envelope));
        };
        let limits = &self.config.metadata;
        self.registry
            .write()
            .update_metadata(identity.slot, |current| current.prepare(update, limits))
            .map_err(Invalid::Metadata)?;
        self.queues.metadata_changed(conn.id);
        Ok(())
    }

    // --- queues (SPEC §8) ---

    /// QUEUE: validated now, confirmed once durable. Every answer, errors included, goes
    /// through the journal, so answers to pipelined QUEUE frames keep their order.
    fn queue_push(&self, conn: &Conn, envelope: Envelope) -> Outcome {
        Outcome::Pending(self.queue_push_to(conn.outbox.clone(), envelope))
    }

    /// QUEUE for any producer: the confirm or error goes to `producer`, in journal order.
    fn queue_push_to(&self, producer: Arc<dyn Outbox>, envelope: Envelope) -> Completion {
        match self.prepare_push(envelope) {
            Ok((new, query)) => self.queues.push(producer, new, query),
            Err(invalid) => {
                tracing::debug!(error = %invalid, "QUEUE refused");
                self.queues.reply_in_order(producer, invalid.to_frame())
            }
        }
    }

    /// Validates a QUEUE `d` (SPEC §8.3 step 1) into the message and its parsed target.
    fn prepare_push(&self, envelope: Envelope) -> Result<(NewMessage, Query), Invalid> {
        let well_formed = envelope
            .d
            .as_object()
            .is_some_and(|d| d.contains_key("target") && d.contains_key("payload"));
        let Value::Object(mut d) = envelope.d else {
            return Err(Invalid::DispatchPayload {
                t: envelope.t,
                ts: envelope.ts,
                d: envelope.d,
            });
        };
        if !well_formed {
            return Err(Invalid::DispatchPayload {
                t: envelope.t,
                ts: envelope.ts,
                d: Value::Object(d),
            });
        }
        let queue_value = d.remove("queue").unwrap_or(Value::Null);
        let queue = match validate_name(&queue_value) {
            Ok(name) => name.to_owned(),
            Err(reason) => {
                return Err(Invalid::QueueName {
                    queue: queue_value,
                    reason,
                });
            }
        };
        let nonce = d.remove("nonce").unwrap_or(Value::Null);
        let target = d.remove("target").unwrap_or(Value::Null);
        let payload = d.remove("payload").unwrap_or(Value::Null);
        let query = Query::parse(&target, self.config.query).map_err(|e| Invalid::Query {
            reason: e.reason,
            nonce: nonce.clone(),
        })?;
        let new = NewMessage {
            queue,
            nonce,
            target,
            payload,
            trace: None,
        };
        Ok((new, query))
    }

    /// The validated queue name of a QUEUE_REQUEST/CANCEL/ACK `d`.
    fn queue_name(envelope: &Envelope) -> Result<String, Invalid> {
        let Value::Object(d) = &envelope.d else {
            return Err(invalid_payload(envelope.clone()));
        };
        let queue = d.get("queue").unwrap_or(&Value::Null);
        validate_name(queue)
            .map(str::to_owned)
            .map_err(|reason| Invalid::QueueName {
                queue: queue.clone(),
                reason,
            })
    }

    fn queue_request(
        &self,
        conn: &Conn,
        identity: &Identity,
        envelope: Envelope,
    ) -> Result<(), Invalid> {
        let queue = Self::queue_name(&envelope)?;
        self.queues.request(
            &queue,
            Waiter {
                conn: conn.id,
                slot: identity.slot,
            },
        );
        Ok(())
    }

    fn queue_cancel(&self, conn: &Conn, envelope: Envelope) -> Result<(), Invalid> {
        let queue = Self::queue_name(&envelope)?;
        self.queues.cancel(&queue, conn.id);
        Ok(())
    }

    fn queue_ack(&self, identity: &Identity, envelope: Envelope) -> Result<(), Invalid> {
        let has_id = matches!(
            envelope.d.as_object().and_then(|d| d.get("id")),
            Some(Value::String(_))
        );
        if !has_id {
            return Err(invalid_payload(envelope));
        }
        let queue = Self::queue_name(&envelope)?;
        let id = envelope
            .d
            .as_object()
            .and_then(|d| d.get("id"))
            .cloned()
            .unwrap_or(Value::Null);
        let consumer = ConsumerIdentity {
            application_id: identity.application_id.clone(),
            client_id: identity.client_id.clone(),
        };
        self.queues
            .ack(&queue, id.as_str().unwrap_or_default(), &consumer)
            .map_err(|_| Invalid::UnknownMessageId {
                queue: Value::from(queue),
                id,
            })
    }

    /// SEND and BROADCAST (SPEC §7.3, §7.4). Returns how many clients the message was handed
    /// to: 0 only when a droppable query matched nobody.
    fn route(
        &self,
        t: &'static str,
        wanted: Recipients,
        envelope: Envelope,
    ) -> Result<usize, Invalid> {
        let well_formed = envelope
            .d
            .as_object()
            .is_some_and(|d| d.contains_key("target") && d.contains_key("payload"));
        if !well_formed {
            return Err(invalid_payload(envelope));
        }
        let Value::Object(mut d) = envelope.d else {
            return Err(Invalid::DispatchPayload {
                t: envelope.t,
                ts: envelope.ts,
                d: Value::Null,
            });
        };
        let nonce = d.remove("nonce").unwrap_or(Value::Null);
        let target = d.remove("target").unwrap_or(Value::Null);
        let payload = d.remove("payload").unwrap_or(Value::Null);
        let query = match Query::parse(&target, self.config.query) {
            Ok(query) => query,
            Err(e) => {
                return Err(Invalid::Query {
                    reason: e.reason,
                    nonce,
                });
            }
        };
        let outboxes: Vec<Arc<dyn Outbox>> = {
            let registry = self.registry.read();
            let matched = registry.match_set(&query);
            registry
                .recipients(&query, matched, wanted)
                .into_iter()
                .filter_map(|slot| registry.get(slot).map(|r| r.outbox.clone()))
                .collect()
        };
        if outboxes.is_empty() {
            if query.droppable {
                return Ok(0);
            }
            return Err(Invalid::NoRoute { t, nonce, target });
        }
        let frame = Arc::new(Outgoing::new(OutFrame::delivery(
            t,
            Out::Value(nonce),
            Out::Value(payload),
        )));
        for outbox in &outboxes {
            outbox.push(&frame);
        }
        Ok(outboxes.len())
    }

    /// QUERY_NODES (SPEC §7.5).
    fn query_nodes(&self, conn: &Conn, envelope: Envelope) -> Result<(), Invalid> {
        let nonce = match &envelope.d {
            Value::Object(d) => d.get("nonce").cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let query = Query::parse(&envelope.d, self.config.query).map_err(|e| Invalid::Query {
            reason: e.reason,
            nonce: nonce.clone(),
        })?;
        let nodes = self.query_clients(&query);
        conn.send(OutFrame::dispatch(
            "QUERY_NODES",
            Out::Map(vec![
                ("nonce", Out::Value(nonce)),
                ("nodes", Out::List(nodes)),
            ]),
        ));
        Ok(())
    }
}

/// `invalid dispatch payload`, echoing the frame as received (SPEC §7.8).
fn invalid_payload(envelope: Envelope) -> Invalid {
    Invalid::DispatchPayload {
        t: envelope.t,
        ts: envelope.ts,
        d: envelope.d,
    }
}

/// Checks `client_id` / `application_id` (SPEC §4.3 checks 2–11).
fn validate_id(value: Option<&Value>, field: &'static str) -> Result<String, Fatal> {
    let problem = match value {
        None | Some(Value::Null) => "is required",
        Some(Value::String(s)) if s.is_empty() => "must not be empty",
        Some(Value::String(s)) if s.len() > MAX_ID_BYTES => "must be at most 255 bytes",
        Some(Value::String(s)) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            "must not contain whitespace or control characters"
        }
        Some(Value::String(s)) => return Ok(s.clone()),
        Some(_) => "must be a string",
    };
    Err(Fatal::IdentifyField { field, problem })
}

fn subscriber_outboxes(registry: &Registry) -> Vec<Arc<dyn Outbox>> {
    registry.subscribers().map(|r| r.outbox.clone()).collect()
}

/// CLIENT_CONNECTED / CLIENT_DISCONNECTED to every subscriber (SPEC §7.7).
fn emit_client_event(
    t: &'static str,
    application_id: &str,
    client_id: &str,
    subscribers: &[Arc<dyn Outbox>],
) {
    if subscribers.is_empty() {
        return;
    }
    let payload = Out::Map(vec![
        ("app", Out::str(application_id.to_owned())),
        ("client_id", Out::str(client_id.to_owned())),
    ]);
    let frame = Arc::new(Outgoing::new(OutFrame::delivery(t, Out::Null, payload)));
    for outbox in subscribers {
        outbox.push(&frame);
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
        ready(Ok(self.router.handle(&inbound.conn, inbound.envelope)))
    }
}
