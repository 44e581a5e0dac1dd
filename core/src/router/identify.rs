//! Identify (SPEC §4.3–§4.5), heartbeats (§4.6) and the CLIENT_* events (§7.7).

use std::borrow::Cow;
use std::sync::Arc;

use crate::auth::Verdict;
use crate::clock::now_ms;
use crate::error::Fatal;
use crate::frame::{Out, OutFrame, Outgoing, op};
use crate::metadata::{Metadata, ReservedValues};
use crate::registry::{ClientRecord, Registry};
use crate::session::{Conn, ConnState, Identity, Outbox, format_peer_ip};
use crate::value::Value;

use super::Router;

/// Longest `client_id` / `application_id` in bytes (SPEC §4.3).
const MAX_ID_BYTES: usize = 255;

impl Router {
    // --- identify ---

    pub(super) fn identify(&self, conn: &Conn, d: Value) -> Result<(), Fatal> {
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
            metrics::counter!("ganglion_auth_failures_total", "transport" => conn.transport.as_str())
                .increment(1);
        }
        conn.set_state(ConnState::Identified(Arc::new(Identity {
            slot,
            application_id: application_id.clone(),
            client_id: client_id.clone(),
            restricted,
        })));
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

    pub(super) fn heartbeat(&self, conn: &Conn, identity: &Identity) {
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

pub(super) fn subscriber_outboxes(registry: &Registry) -> Vec<Arc<dyn Outbox>> {
    registry.subscribers().map(|r| r.outbox.clone()).collect()
}

/// CLIENT_CONNECTED / CLIENT_DISCONNECTED to every subscriber (SPEC §7.7).
pub(super) fn emit_client_event(
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
    let frame = Outgoing::new(OutFrame::delivery(t, Out::Null, payload));
    for outbox in subscribers {
        outbox.push(&frame);
    }
}
