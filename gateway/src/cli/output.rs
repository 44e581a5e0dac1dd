//! What the commands print: one JSON object per line (`--json`), or a line of text.

use std::io::Write as _;

use ganglion_client::metadata::RESERVED_KEYS;
use ganglion_client::{ClientInfo, ClientUpdate, Message, QueueConfirm, QueueMessage};
use serde_json::{Value, json};

use super::Failure;

/// Where lines go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Writes one line: `json` with `--json`, else `text`. A closed stdout (`| head`) ends the
    /// command.
    pub fn line(&self, json: &Value, text: impl FnOnce() -> String) -> Result<(), Failure> {
        let line = if self.json { json.to_string() } else { text() };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::runtime(format!("cannot write to stdout: {e}")))
    }

    /// A SEND or BROADCAST: `{"event","nonce","payload","ts"}`.
    pub fn message(&self, message: &Message) -> Result<(), Failure> {
        let json = json!({
            "event": message.event.as_str(),
            "nonce": message.nonce,
            "payload": message.payload,
            "ts": message.ts,
        });
        self.line(&json, || {
            let tag = if message.is_request() {
                " [request]".to_owned()
            } else if message.nonce.is_null() {
                String::new()
            } else {
                format!(" [nonce {}]", message.nonce)
            };
            format!("{}{tag} {}", message.event.as_str(), message.payload)
        })
    }

    /// A reply to a request: `{"event":"REPLY","nonce","payload","ts"}`.
    pub fn reply(&self, reply: &Message) -> Result<(), Failure> {
        let json = json!({"event": "REPLY", "nonce": reply.nonce, "payload": reply.payload, "ts": reply.ts});
        self.line(&json, || format!("REPLY {}", reply.payload))
    }

    /// A queue delivery: `{"event":"QUEUE","queue","id","nonce","payload","ts"}`.
    pub fn queue_message(&self, message: &QueueMessage) -> Result<(), Failure> {
        let json = json!({
            "event": "QUEUE",
            "queue": message.queue,
            "id": message.id,
            "nonce": message.nonce,
            "payload": message.payload,
            "ts": message.ts,
        });
        self.line(&json, || {
            format!("{} {} {}", message.queue, message.id, message.payload)
        })
    }

    /// A queue confirm: `{"event":"QUEUE_CONFIRM","queue","id","nonce"}`.
    pub fn confirm(&self, confirm: &QueueConfirm) -> Result<(), Failure> {
        let json = json!({"event": "QUEUE_CONFIRM", "queue": confirm.queue, "id": confirm.id, "nonce": confirm.nonce});
        self.line(&json, || format!("pushed {} {}", confirm.queue, confirm.id))
    }

    /// `{"event":"CLIENT_CONNECTED"|"CLIENT_DISCONNECTED","application_id","client_id"}`.
    pub fn update(&self, update: &ClientUpdate) -> Result<(), Failure> {
        let json = serde_json::to_value(update).unwrap_or(Value::Null);
        self.line(&json, || {
            let (event, app, id) = match update {
                ClientUpdate::ClientConnected {
                    application_id,
                    client_id,
                } => ("CLIENT_CONNECTED", application_id, client_id),
                ClientUpdate::ClientDisconnected {
                    application_id,
                    client_id,
                } => ("CLIENT_DISCONNECTED", application_id, client_id),
            };
            format!("{event} {app}/{id}")
        })
    }

    /// A client object as QUERY_NODES returns it (the object itself with `--json`).
    pub fn client(&self, client: &ClientInfo) -> Result<(), Failure> {
        let json = serde_json::to_value(client).unwrap_or(Value::Null);
        self.line(&json, || {
            let user: Vec<String> = client
                .metadata
                .iter()
                .filter(|(key, _)| {
                    !RESERVED_KEYS.contains(&key.as_str()) && *key != ganglion_client::INBOX_KEY
                })
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            let node = client
                .node
                .as_str()
                .map(|n| format!(" node={n}"))
                .unwrap_or_default();
            let ip = client
                .socket_ip
                .as_str()
                .map(|ip| format!(" ip={ip}"))
                .unwrap_or_default();
            format!(
                "{}/{}{node}{ip}  {}",
                client.app_id,
                client.client_id,
                user.join(" ")
            )
            .trim_end()
            .to_owned()
        })
    }
}
