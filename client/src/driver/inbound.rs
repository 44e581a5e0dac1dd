//! Frames from the server: answers matched to waiting callers, deliveries into the streams,
//! refusals (op 3) into the errors of the calls that caused them.

use std::sync::atomic::Ordering;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::{Driver, Held, Sync};
use crate::codec::{Data, Inbound, Name};
use crate::error::Error;
use crate::streams::QueueMessage;
use crate::transport::Writer;
use crate::types::{ClientUpdate, Event, Message, QueueConfirm};

impl Driver {
    pub(super) fn on_frame(&mut self, body: &[u8], writer: &mut Writer) {
        let frame = match self.settings.codec.decode(body) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "skipping an undecodable frame");
                return;
            }
        };
        match frame.op {
            Some(4) => self.on_dispatch(frame, writer),
            Some(6) => self.on_heartbeat_ack(),
            Some(3) => self.on_invalid(frame.d),
            Some(7) => {
                let reason = frame.d.reason.as_str().unwrap_or_default();
                self.farewell = Some((format!("goodbye: {reason}"), true));
            }
            Some(8) => {
                let error = frame.d.error.as_str().unwrap_or_default();
                self.farewell = Some((format!("op 8: {error}"), false));
            }
            op => tracing::debug!(?op, "skipping an unexpected frame"),
        }
    }

    fn on_heartbeat_ack(&mut self) {
        match self.syncs.pop_front() {
            Some(
                Sync::Confirm {
                    reply: Some(reply), ..
                }
                | Sync::Barrier { reply },
            ) => {
                let _ = reply.send(Ok(()));
            }
            Some(Sync::Metadata {
                update,
                reply: Some(reply),
            }) => {
                self.metadata.merge(&update);
                let _ = reply.send(Ok(()));
            }
            _ => {}
        }
    }

    fn on_dispatch(&mut self, frame: Inbound, writer: &mut Writer) {
        let Inbound {
            t,
            d,
            d_is_object,
            ts,
            ..
        } = frame;
        if !d_is_object {
            tracing::debug!(?t, "skipping a dispatch whose d is not an object");
            return;
        }
        match t {
            Name::Send => self.on_message(Event::Send, d, ts),
            Name::Broadcast => self.on_message(Event::Broadcast, d, ts),
            Name::Queue => self.on_queue_delivery(d, ts, writer),
            Name::QueueConfirm => {
                let nonce = d.nonce.as_str().unwrap_or_default();
                if let Some(reply) = self.publishes.remove(nonce) {
                    let confirm = QueueConfirm {
                        queue: into_string(d.queue),
                        id: into_string(d.id),
                        nonce: d.nonce,
                    };
                    let _ = reply.send(Ok(confirm));
                }
            }
            Name::QueryNodes => {
                let nonce = d.nonce.as_str().unwrap_or_default();
                if let Some(reply) = self.queries.remove(nonce) {
                    let nodes = serde_json::from_value(d.nodes)
                        .map_err(|e| Error::Protocol(format!("QUERY_NODES reply: {e}")));
                    let _ = reply.send(nodes);
                }
            }
            event @ (Name::ClientConnected | Name::ClientDisconnected) => {
                let Value::Object(mut payload) = d.payload else {
                    return;
                };
                let application_id = take_string(&mut payload, "app");
                let client_id = take_string(&mut payload, "client_id");
                let update = if event == Name::ClientConnected {
                    ClientUpdate::ClientConnected {
                        application_id,
                        client_id,
                    }
                } else {
                    ClientUpdate::ClientDisconnected {
                        application_id,
                        client_id,
                    }
                };
                self.deliver_update(update);
            }
            Name::Other => tracing::debug!("skipping a dispatch the client does not handle"),
        }
    }

    fn on_message(&mut self, event: Event, d: Data, ts: Option<i64>) {
        let Data { nonce, payload, .. } = d;
        if event == Event::Send
            && let Some(id) = nonce.get("reply").and_then(Value::as_str)
        {
            match self.requests.remove(id) {
                Some(reply) => {
                    let _ = reply.send(Ok(Message {
                        event,
                        nonce,
                        payload,
                        ts,
                    }));
                    return;
                }
                // Ours, but late: the caller gave up.
                None if id.starts_with(&self.settings.inbox) => return,
                None => {}
            }
        }
        let message = Message {
            event,
            nonce,
            payload,
            ts,
        };
        if !self.shared.messages_taken.load(Ordering::Acquire) {
            let _ = self.messages_tx.try_send(message);
            return;
        }
        match self.messages_tx.try_send(message) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                self.held = Some(Held::Message(message))
            }
        }
    }

    fn deliver_update(&mut self, update: ClientUpdate) {
        if !self.shared.updates_taken.load(Ordering::Acquire) {
            let _ = self.updates_tx.try_send(update);
            return;
        }
        match self.updates_tx.try_send(update) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(update)) => self.held = Some(Held::Update(update)),
        }
    }

    pub(super) fn release_held(&mut self, fits: bool) {
        let Some(held) = self.held.take() else { return };
        if !fits {
            return;
        }
        match held {
            Held::Message(message) => {
                let _ = self.messages_tx.try_send(message);
            }
            Held::Update(update) => {
                let _ = self.updates_tx.try_send(update);
            }
        }
    }

    fn on_queue_delivery(&mut self, d: Data, ts: Option<i64>, writer: &mut Writer) {
        let Data { nonce, payload, .. } = d;
        let Value::Object(mut envelope) = payload else {
            tracing::debug!("skipping a queue delivery without a payload object");
            return;
        };
        let queue = take_string(&mut envelope, "queue");
        let id = take_string(&mut envelope, "id");
        let payload = envelope.remove("payload").unwrap_or(Value::Null);
        let Some(slot) = self.consumers.get_mut(&queue) else {
            tracing::debug!(%queue, %id, "a queue delivery with no consumer; it returns after the ack timeout");
            return;
        };
        slot.requested = false;
        if let Some(cmd_tx) = self.cmd_tx.upgrade() {
            let message = QueueMessage::new(
                queue.clone(),
                id,
                nonce,
                payload,
                ts,
                cmd_tx,
                self.settings.codec,
            );
            if let Err(mpsc::error::TrySendError::Full(message)) = slot.tx.try_send(message) {
                tracing::warn!(queue = %message.queue, id = %message.id, "a consumer stream was full; the message returns after the ack timeout");
            }
        }
        self.refill(writer);
    }

    fn on_invalid(&mut self, d: Data) {
        let error = d.error.as_str().unwrap_or_default().to_owned();
        let extra_info = d.extra_info;
        if error == "invalid metadata" {
            let failed = self.syncs.iter_mut().find_map(|sync| match sync {
                Sync::Metadata { reply, .. } if reply.is_some() => reply.take(),
                _ => None,
            });
            if let Some(reply) = failed {
                let _ = reply.send(Err(Error::Server { error, extra_info }));
            } else {
                tracing::warn!(%extra_info, "the server refused a metadata update");
            }
            return;
        }
        let nonce = if error == "invalid dispatch payload" {
            extra_info
                .get("d")
                .and_then(|d| d.get("nonce"))
                .cloned()
                .unwrap_or(Value::Null)
        } else {
            extra_info.get("nonce").cloned().unwrap_or(Value::Null)
        };
        let failure = || match error.as_str() {
            "no_route" => Error::NoRoute,
            "invalid query" => Error::InvalidQuery(
                extra_info
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            "queue unavailable" => Error::QueueUnavailable,
            _ => Error::Server {
                error: error.clone(),
                extra_info: extra_info.clone(),
            },
        };
        if let Some(id) = nonce.get("request").and_then(Value::as_str)
            && let Some(reply) = self.requests.remove(id)
        {
            let _ = reply.send(Err(failure()));
            return;
        }
        if let Some(nonce) = nonce.as_str() {
            if let Some(reply) = self.publishes.remove(nonce) {
                let _ = reply.send(Err(failure()));
                return;
            }
            if let Some(reply) = self.queries.remove(nonce) {
                let _ = reply.send(Err(failure()));
                return;
            }
        }
        let t = extra_info.get("t").and_then(Value::as_str);
        let confirmed = self.syncs.iter_mut().find_map(|sync| match sync {
            Sync::Confirm {
                t: sent,
                nonce: n,
                reply,
            } if *n == nonce && reply.is_some() && t.is_none_or(|t| t == *sent) => reply.take(),
            _ => None,
        });
        match confirmed {
            Some(reply) => {
                let _ = reply.send(Err(failure()));
            }
            None if error == "no_route" => {
                tracing::debug!(%extra_info, "a message matched no client")
            }
            None => tracing::warn!(%error, %extra_info, "the server refused a frame"),
        }
    }
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> String {
    map.remove(key).map(into_string).unwrap_or_default()
}

/// A string as itself, anything else as its JSON text (null as empty).
fn into_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
