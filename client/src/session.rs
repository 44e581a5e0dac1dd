//! One connection from dial to ready: transport, hello, identify, ready (SPEC §4).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::codec::{Codec, Envelope, Inbound, OutFrame};
use crate::dsn::Dsn;
use crate::error::Error;
use crate::metadata::{Metadata, MetadataValue};
use crate::transport::{self, Incoming, Reader, Writer};

/// The metadata key every client sets to its inbox, the address replies come back to.
pub const INBOX_KEY: &str = "ganglion_inbox";

/// Everything fixed for the lifetime of a client.
pub(crate) struct Settings {
    pub dsn: Dsn,
    pub codec: Codec,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub application_id: String,
    pub client_id: String,
    pub auth: Option<String>,
    pub ip: Option<String>,
    pub namespace: Option<Value>,
    pub receive_client_updates: bool,
    /// This client's inbox (a UUID), stored in metadata under [`INBOX_KEY`].
    pub inbox: String,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    pub max_frame_bytes: usize,
    pub reconnect: crate::Reconnect,
    /// op 5 as encoded once.
    pub heartbeat_frame: OutFrame,
}

/// An identified connection.
pub(crate) struct Session {
    pub reader: Reader,
    pub writer: Writer,
    /// The server's heartbeat interval (hello).
    pub heartbeat: Duration,
    pub restricted: bool,
}

#[derive(Serialize)]
struct Identify<'a> {
    client_id: &'a str,
    application_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a Value>,
    metadata: &'a Metadata,
    receive_client_updates: bool,
}

/// The interval assumed when hello does not carry a usable one (the protocol default).
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(45_000);

/// Dials, identifies with `metadata` and waits for ready, all within the connect timeout.
pub(crate) async fn open(settings: &Settings, metadata: &Metadata) -> Result<Session, Error> {
    let work = async {
        let codec = settings.codec;
        let (mut reader, mut writer) = transport::open(
            &settings.dsn,
            settings.tls.as_ref(),
            settings.max_frame_bytes,
        )
        .await?;
        let hello = next_frame(&mut reader, codec, &settings.dsn.authority()).await?;
        if hello.op != Some(0) {
            let op = hello.op.map_or_else(|| "?".to_owned(), |op| op.to_string());
            return Err(Error::Protocol(format!(
                "expected hello (op 0) first, got op {op}"
            )));
        }
        let heartbeat = hello
            .d
            .heartbeat_interval
            .as_u64()
            .filter(|ms| *ms > 0)
            // A day at most: timers are set from it, and no server sends more.
            .map_or(DEFAULT_HEARTBEAT, |ms| {
                Duration::from_millis(ms.min(86_400_000))
            });
        let mut metadata = metadata.clone();
        metadata.insert(INBOX_KEY, MetadataValue::String(settings.inbox.clone()));
        let identify = Identify {
            client_id: &settings.client_id,
            application_id: &settings.application_id,
            auth: settings.auth.as_deref(),
            ip: settings.ip.as_deref(),
            namespace: settings.namespace.as_ref(),
            metadata: &metadata,
            receive_client_updates: settings.receive_client_updates,
        };
        writer.push(codec.encode(&Envelope {
            op: 1,
            t: None,
            d: identify,
        })?);
        writer.flush().await.map_err(|reason| Error::Connect {
            addr: settings.dsn.authority(),
            reason,
        })?;
        loop {
            let frame = next_frame(&mut reader, codec, &settings.dsn.authority()).await?;
            match frame.op {
                Some(2) => {
                    let restricted = frame.d.restricted == Value::Bool(true);
                    if restricted && settings.auth.is_some() {
                        return Err(Error::AuthFailed);
                    }
                    return Ok(Session {
                        reader,
                        writer,
                        heartbeat,
                        restricted,
                    });
                }
                Some(8) => {
                    return Err(Error::Rejected {
                        error: frame.d.error.as_str().unwrap_or_default().to_owned(),
                        extra_info: frame.d.extra_info,
                    });
                }
                // Nothing else is sent before ready; anything odd is skipped.
                _ => {}
            }
        }
    };
    match tokio::time::timeout(settings.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(Error::Connect {
            addr: settings.dsn.authority(),
            reason: format!("no ready within {:?}", settings.connect_timeout),
        }),
    }
}

async fn next_frame(reader: &mut Reader, codec: Codec, addr: &str) -> Result<Inbound, Error> {
    let closed = |reason: String| Error::Connect {
        addr: addr.to_owned(),
        reason,
    };
    match reader.next().await {
        Some(Ok(Incoming::Frame(body))) => codec
            .decode(&body)
            .map_err(|e| Error::Protocol(format!("undecodable frame: {e}"))),
        Some(Ok(Incoming::Close(code))) => Err(closed(match code {
            Some(code) => format!("the server closed the connection ({code})"),
            None => "the server closed the connection".to_owned(),
        })),
        Some(Err(e)) => Err(closed(e)),
        None => Err(closed("the server closed the connection".to_owned())),
    }
}

/// Whether a failed connect can succeed if tried again: refused identities and a wrong
/// password cannot; a duplicate identity (a reconnect racing the server's cleanup of the old
/// connection, SPEC §10.7), rate limits, a draining node or a network error can.
pub(crate) fn is_retryable(error: &Error) -> bool {
    match error {
        Error::AuthFailed | Error::Config(_) => false,
        Error::Rejected { error, .. } => {
            error.contains(": already registered for app ")
                || matches!(
                    error.as_str(),
                    "too many failed auth attempts"
                        | "identify deadline exceeded"
                        | "internal server error"
                        | "slow consumer"
                        | "heartbeat took too long"
                )
        }
        _ => true,
    }
}
