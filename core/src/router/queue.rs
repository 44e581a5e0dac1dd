//! Queue events (SPEC §8): QUEUE, QUEUE_REQUEST, QUEUE_REQUEST_CANCEL, QUEUE_ACK.

use std::sync::Arc;

use crate::envelope::Envelope;
use crate::error::Invalid;
use crate::frame::TraceContext;
use crate::query::Query;
use crate::queue::engine::Completion;
use crate::queue::{ConsumerIdentity, NewMessage, Waiter, validate_name};
use crate::session::{Conn, Identity, Outbox};
use crate::trace;
use crate::value::Value;

use super::{Outcome, Router, invalid_payload};

impl Router {
    // --- queues (SPEC §8) ---

    /// QUEUE: validated now, confirmed once durable. Every answer, errors included, goes
    /// through the journal, so answers to pipelined QUEUE frames keep their order. The
    /// message keeps `trace` for its confirm and every delivery (SPEC §8.1, §11).
    pub(super) fn queue_push(
        &self,
        conn: &Conn,
        envelope: Envelope,
        trace: Option<TraceContext>,
    ) -> Outcome {
        Outcome::Pending(self.queue_push_to(conn.outbox.clone(), envelope, trace))
    }

    /// QUEUE for any producer: the confirm or error goes to `producer`, in journal order.
    pub(super) fn queue_push_to(
        &self,
        producer: Arc<dyn Outbox>,
        envelope: Envelope,
        trace: Option<TraceContext>,
    ) -> Completion {
        match self.prepare_push(envelope, trace) {
            Ok((new, query)) => {
                trace::record_current(|span| {
                    span.record("queue", new.queue.as_str());
                });
                self.queues.push(producer, new, query)
            }
            Err(invalid) => {
                tracing::debug!(error = %invalid, "QUEUE refused");
                self.queues.reply_in_order(producer, invalid.to_frame())
            }
        }
    }

    /// Validates a QUEUE `d` (SPEC §8.3 step 1) into the message and its parsed target.
    pub(super) fn prepare_push(
        &self,
        mut envelope: Envelope,
        trace: Option<TraceContext>,
    ) -> Result<(NewMessage, Query), Invalid> {
        let well_formed = envelope
            .d
            .as_object()
            .is_some_and(|d| d.contains_key("target") && d.contains_key("payload"));
        let ts = envelope.take_ts();
        let Value::Object(mut d) = envelope.d else {
            return Err(Invalid::DispatchPayload {
                t: envelope.t,
                ts,
                d: envelope.d,
            });
        };
        if !well_formed {
            return Err(Invalid::DispatchPayload {
                t: envelope.t,
                ts,
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
            trace,
        };
        Ok((new, query))
    }

    /// The validated queue name of a QUEUE_REQUEST/CANCEL/ACK `d`.
    pub(super) fn queue_name(envelope: &Envelope) -> Result<String, Invalid> {
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

    pub(super) fn queue_request(
        &self,
        conn: &Conn,
        identity: &Identity,
        envelope: Envelope,
    ) -> Result<(), Invalid> {
        let queue = Self::queue_name(&envelope)?;
        trace::record_current(|span| {
            span.record("queue", queue.as_str());
        });
        self.queues.request(
            &queue,
            Waiter {
                conn: conn.id,
                slot: identity.slot,
            },
        );
        Ok(())
    }

    pub(super) fn queue_cancel(&self, conn: &Conn, envelope: Envelope) -> Result<(), Invalid> {
        let queue = Self::queue_name(&envelope)?;
        self.queues.cancel(&queue, conn.id);
        Ok(())
    }

    pub(super) fn queue_ack(&self, identity: &Identity, envelope: Envelope) -> Result<(), Invalid> {
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
        trace::record_current(|span| {
            span.record("queue", queue.as_str());
            span.record("id", id.as_str().unwrap_or_default());
        });
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
}
