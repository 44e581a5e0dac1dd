//! Dispatches (SPEC §7): UPDATE_METADATA, SEND, BROADCAST, QUERY_NODES, and the hand-off
//! of queue events to [`queue`](super::queue).

use std::sync::Arc;

use smallvec::SmallVec;

use crate::clock::Arrival;
use crate::envelope::{Envelope, FastDispatch};
use crate::error::Invalid;
use crate::frame::{Out, OutFrame, Outgoing, RawValue, TraceContext};
use crate::query::cache::QueryCache;
use crate::query::{Query, QueryError};
use crate::registry::{Recipients, Slot};
use crate::session::{Conn, Identity, Outbox};
use crate::telemetry::{self, event_label};
use crate::trace;
use crate::value::Value;

use super::{Outcome, Router, invalid_payload};

impl Router {
    // --- dispatch ---

    /// Handles one op 4 (SPEC §7.1); the frames it causes carry `trace` (SPEC §11).
    pub(super) fn dispatch(
        &self,
        conn: &Conn,
        identity: &Identity,
        envelope: Envelope,
        trace: Option<TraceContext>,
        received: Arrival,
    ) -> Outcome {
        // A label from a closed set: no copy of the client's string on the hot path.
        let t = event_label(envelope.event_name().unwrap_or_default());
        trace::record_current(|span| {
            span.record("app", identity.application_id.as_str());
            span.record("client", identity.client_id.as_str());
        });
        if identity.restricted && t != "UPDATE_METADATA" {
            let t = envelope.event_name().unwrap_or_default().to_owned();
            conn.send(Invalid::Restricted { t }.to_frame());
            return Outcome::Continue;
        }
        let result = match t {
            // `Ok(n)`: handled, with `n` recipients for SEND and BROADCAST.
            "UPDATE_METADATA" => self.update_metadata(conn, identity, envelope).map(|()| 1),
            "SEND" => self.route(
                "SEND",
                Recipients::One,
                envelope,
                trace,
                Some(&conn.queries),
                received,
            ),
            "BROADCAST" => self.route(
                "BROADCAST",
                Recipients::All,
                envelope,
                trace,
                Some(&conn.queries),
                received,
            ),
            "QUERY_NODES" => self.query_nodes(conn, envelope, trace).map(|()| 1),
            "QUEUE" => {
                telemetry::dispatch("QUEUE", "delivered").increment(1);
                return self.queue_push(conn, envelope, trace);
            }
            "QUEUE_REQUEST" => self.queue_request(conn, identity, envelope).map(|()| 1),
            "QUEUE_REQUEST_CANCEL" => self.queue_cancel(conn, envelope).map(|()| 1),
            "QUEUE_ACK" => self.queue_ack(identity, envelope).map(|()| 1),
            _ => Err(invalid_payload(envelope)),
        };
        let outcome = match &result {
            Ok(0) if matches!(t, "SEND" | "BROADCAST") => "dropped",
            Ok(_) => "delivered",
            Err(Invalid::NoRoute { .. }) => "no_route",
            Err(_) => "error",
        };
        telemetry::dispatch(t, outcome).increment(1);
        trace::record_current(|span| {
            span.record("outcome", outcome);
            if let Err(invalid) = &result {
                span.record("error", tracing::field::display(invalid));
            }
        });
        if let Err(invalid) = result {
            tracing::debug!(error = %invalid, t = %t, "dispatch refused");
            conn.send(invalid.to_frame());
        }
        Outcome::Continue
    }

    pub(super) fn update_metadata(
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

    /// SEND and BROADCAST (SPEC §7.3, §7.4). Returns how many clients the message was handed
    /// to: 0 only when a droppable query matched nobody. The deliveries carry `trace`.
    pub(super) fn route(
        &self,
        t: &'static str,
        wanted: Recipients,
        mut envelope: Envelope,
        trace: Option<TraceContext>,
        cache: Option<&QueryCache>,
        received: Arrival,
    ) -> Result<usize, Invalid> {
        if let Some(fast) = envelope.fast {
            // `d` kept in wire form by the codec: nothing of it is decoded unless needed.
            // The payload stays a slice of the buffer the frame was read into: mailboxes
            // encode at push time and keep only their own bytes (see `Outbox::push`), so the
            // slice lives no longer than this dispatch.
            let FastDispatch {
                target,
                payload,
                nonce,
                ..
            } = *fast;
            let nonce = nonce.map_or(Value::Null, |n| n.value());
            let parsed = match cache {
                Some(cache) => cache.parse_raw(&target, self.config.query),
                None => Query::parse(&target.value(), self.config.query).map(Arc::new),
            };
            return self.deliver(
                t,
                wanted,
                parsed,
                Target::Raw(target),
                nonce,
                Out::Raw(payload),
                trace,
                cache,
                received,
            );
        }
        let well_formed = envelope
            .d
            .as_object()
            .is_some_and(|d| d.contains_key("target") && d.contains_key("payload"));
        if !well_formed {
            return Err(invalid_payload(envelope));
        }
        let ts = envelope.take_ts();
        let Value::Object(mut d) = envelope.d else {
            return Err(Invalid::DispatchPayload {
                t: envelope.t,
                ts,
                d: Value::Null,
            });
        };
        let nonce = d.remove("nonce").unwrap_or(Value::Null);
        let target = d.remove("target").unwrap_or(Value::Null);
        let payload = d.remove("payload").unwrap_or(Value::Null);
        let parsed = match cache {
            Some(cache) => cache.parse(&target, self.config.query),
            None => Query::parse(&target, self.config.query).map(Arc::new),
        };
        self.deliver(
            t,
            wanted,
            parsed,
            Target::Value(target),
            nonce,
            Out::Value(payload),
            trace,
            cache,
            received,
        )
    }

    /// The second half of SEND and BROADCAST, whatever form `d` came in: the match set, the
    /// recipients, the deliveries (or `no_route`).
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        t: &'static str,
        wanted: Recipients,
        parsed: Result<Arc<Query>, QueryError>,
        target: Target,
        nonce: Value,
        payload: Out,
        trace: Option<TraceContext>,
        cache: Option<&QueryCache>,
        received: Arrival,
    ) -> Result<usize, Invalid> {
        let query = match parsed {
            Ok(query) => query,
            Err(e) => {
                return Err(Invalid::Query {
                    reason: e.reason,
                    nonce,
                });
            }
        };
        // Inline room for a few recipients: a SEND has one, and it should not allocate.
        let outboxes: SmallVec<[Arc<dyn Outbox>; 4]> = {
            let registry = self.registry.read();
            let deliver_to = |matched: &[Slot]| {
                let matches = matched.len();
                telemetry::routing(t).record_matches(matches);
                let outboxes: SmallVec<[Arc<dyn Outbox>; 4]> = registry
                    .recipients(&query, matched, wanted)
                    .iter()
                    .filter_map(|slot| registry.get(*slot).map(|r| r.outbox.clone()))
                    .collect();
                // As i64: OpenTelemetry has no unsigned integers.
                trace::record_current(|span| {
                    span.record("matches", matches as i64);
                    span.record("recipients", outboxes.len() as i64);
                });
                outboxes
            };
            match cache {
                Some(cache) => registry.match_set_cached(&query, &cache.matches, deliver_to),
                None => deliver_to(&registry.match_set(&query)),
            }
        };
        if outboxes.is_empty() {
            if query.droppable {
                return Ok(0);
            }
            return Err(Invalid::NoRoute {
                t,
                nonce,
                target: target.into_value(),
            });
        }
        let frame = OutFrame::delivery_at(t, Out::Value(nonce), payload, received.ms_since_epoch())
            .with_trace(trace);
        let frame = match outboxes.len() {
            1 => Outgoing::for_one(frame),
            _ => Outgoing::new(frame),
        };
        for outbox in &outboxes {
            outbox.push(&frame);
        }
        // From the frame's arrival, so the time it waited behind the frames read with it
        // counts too.
        telemetry::routing(t).record_elapsed(received.elapsed());
        Ok(outboxes.len())
    }

    /// QUERY_NODES (SPEC §7.5); the reply carries `trace`.
    pub(super) fn query_nodes(
        &self,
        conn: &Conn,
        envelope: Envelope,
        trace: Option<TraceContext>,
    ) -> Result<(), Invalid> {
        let nonce = match &envelope.d {
            Value::Object(d) => d.get("nonce").cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let query = Query::parse(&envelope.d, self.config.query).map_err(|e| Invalid::Query {
            reason: e.reason,
            nonce: nonce.clone(),
        })?;
        let nodes = self.query_clients(&query);
        trace::record_current(|span| {
            span.record("matches", nodes.len() as i64);
        });
        conn.send(
            OutFrame::dispatch(
                "QUERY_NODES",
                Out::Map(vec![
                    ("nonce", Out::Value(nonce)),
                    ("nodes", Out::List(nodes)),
                ]),
            )
            .with_trace(trace),
        );
        Ok(())
    }
}

/// A SEND/BROADCAST target as received: a value, or still in wire form.
enum Target {
    Value(Value),
    Raw(RawValue),
}

impl Target {
    /// The target exactly as received, for the `no_route` echo (SPEC §7.3).
    fn into_value(self) -> Value {
        match self {
            Target::Value(value) => value,
            Target::Raw(raw) => raw.value(),
        }
    }
}
