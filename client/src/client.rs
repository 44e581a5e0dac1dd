//! [`Client`] and [`ClientBuilder`]: the public face of the connection task.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, Envelope};
use crate::driver::{Command, Driver, Shared, Slot};
use crate::dsn::Dsn;
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::query::Query;
use crate::session::{self, INBOX_KEY, Settings};
use crate::streams::{ClientUpdates, Consumer, Messages};
use crate::transport;
use crate::types::{ClientInfo, Event, Message, QueueConfirm, State};

/// How the client reconnects after losing its connection.
///
/// The delay before attempt `n` (from 0) is `min(max_delay, initial_delay × 2ⁿ)`, jittered
/// uniformly down to half of it, so clients dropped together do not return together. After an
/// op 7 goodbye the first attempt is immediate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    pub enabled: bool,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Give up (and close the client) after this many failed attempts in a row; `None`
    /// retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect {
            enabled: true,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// Never reconnect: the client closes when its connection ends.
    pub fn disabled() -> Reconnect {
        Reconnect {
            enabled: false,
            ..Reconnect::default()
        }
    }

    /// The delay before attempt `attempt` (0-based), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(30));
        let full = self
            .initial_delay
            .saturating_mul(factor)
            .min(self.max_delay);
        let half = full / 2;
        half + full.saturating_sub(half).mul_f64(fastrand::f64())
    }
}

/// Builds a [`Client`] from a DSN (see [`crate::dsn`]) and options.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    dsn: Dsn,
    application_id: Option<String>,
    client_id: Option<String>,
    auth: Option<String>,
    ip: Option<String>,
    namespace: Option<Value>,
    metadata: Metadata,
    receive_client_updates: bool,
    reconnect: Reconnect,
    connect_timeout: Duration,
    close_timeout: Duration,
    max_frame_bytes: usize,
    buffer: usize,
    extra_roots: Vec<CertificateDer<'static>>,
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl ClientBuilder {
    /// Starts from a DSN: its user part is the application id, its password the `auth`.
    pub fn new(dsn: &str) -> Result<ClientBuilder> {
        Ok(ClientBuilder::from_dsn(Dsn::parse(dsn)?))
    }

    pub fn from_dsn(dsn: Dsn) -> ClientBuilder {
        ClientBuilder {
            application_id: dsn.application_id.clone(),
            client_id: dsn.client_id.clone(),
            auth: dsn.password.clone(),
            dsn,
            ip: None,
            namespace: None,
            metadata: Metadata::new(),
            receive_client_updates: false,
            reconnect: Reconnect::default(),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_frame_bytes: 16 * 1024 * 1024,
            buffer: 1024,
            extra_roots: Vec::new(),
            tls_config: None,
        }
    }

    /// The application id (overrides the DSN's user part).
    pub fn application_id(mut self, application_id: impl Into<String>) -> ClientBuilder {
        self.application_id = Some(application_id.into());
        self
    }

    /// The client id (overrides the DSN's `client_id`). Default: `<application>-<8 hex>`.
    pub fn client_id(mut self, client_id: impl Into<String>) -> ClientBuilder {
        self.client_id = Some(client_id.into());
        self
    }

    /// The password sent as identify `auth` (overrides the DSN's password).
    pub fn auth(mut self, password: impl Into<String>) -> ClientBuilder {
        self.auth = Some(password.into());
        self
    }

    /// The advertised address (identify `ip`), used as the HTTP proxy target.
    pub fn ip(mut self, ip: impl Into<String>) -> ClientBuilder {
        self.ip = Some(ip.into());
        self
    }

    pub fn namespace(mut self, namespace: impl Into<Value>) -> ClientBuilder {
        self.namespace = Some(namespace.into());
        self
    }

    /// The initial metadata.
    pub fn metadata(mut self, metadata: Metadata) -> ClientBuilder {
        self.metadata = metadata;
        self
    }

    /// Subscribe to CLIENT_CONNECTED / CLIENT_DISCONNECTED ([`Client::client_updates`]).
    pub fn receive_client_updates(mut self, yes: bool) -> ClientBuilder {
        self.receive_client_updates = yes;
        self
    }

    pub fn reconnect(mut self, reconnect: Reconnect) -> ClientBuilder {
        self.reconnect = reconnect;
        self
    }

    /// Bounds dialling, the handshake and identify (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// How long [`Client::close`] waits for answers still owed (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.close_timeout = timeout;
        self
    }

    /// The largest inbound frame accepted (default 16 MiB); a larger one drops the connection.
    pub fn max_frame_bytes(mut self, bytes: usize) -> ClientBuilder {
        self.max_frame_bytes = bytes;
        self
    }

    /// Capacity of the command queue and of the message and client-update streams (default
    /// 1024). When the message stream is full the client stops reading from the socket, and
    /// the server eventually closes it as a slow consumer.
    pub fn buffer(mut self, capacity: usize) -> ClientBuilder {
        self.buffer = capacity.max(1);
        self
    }

    /// Trusts `certificate` (DER) as well as the system's roots, for TLS DSNs.
    pub fn add_root_certificate(mut self, certificate: CertificateDer<'static>) -> ClientBuilder {
        self.extra_roots.push(certificate);
        self
    }

    /// Uses this rustls configuration for TLS DSNs instead of the system's roots.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> ClientBuilder {
        self.tls_config = Some(config);
        self
    }

    /// Connects, identifies, and starts the connection task. The first connection is tried
    /// once: its failure is returned (reconnects apply once it has succeeded).
    pub async fn connect(self) -> Result<Client> {
        let application_id = self.application_id.clone().ok_or_else(|| {
            Error::Config("no application id: give one in the DSN (singyeong://APP@host) or with application_id()".to_owned())
        })?;
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{application_id}-{:08x}", fastrand::u32(..)));
        self.metadata.validate()?;
        let tls = match (&self.tls_config, self.dsn.tls) {
            (Some(config), _) => Some(Arc::clone(config)),
            (None, true) => Some(transport::tls_config(&self.extra_roots)?),
            (None, false) => None,
        };
        let codec = Codec {
            encoding: self.dsn.encoding,
            transport: self.dsn.transport,
        };
        let heartbeat_frame = codec.encode(&Envelope {
            op: 5,
            t: None,
            d: json!({"client_id": client_id}),
        })?;
        let inbox = uuid::Uuid::new_v4().simple().to_string();
        let settings = Arc::new(Settings {
            dsn: self.dsn,
            codec,
            tls,
            application_id: application_id.clone(),
            client_id: client_id.clone(),
            auth: self.auth,
            ip: self.ip,
            namespace: self.namespace,
            receive_client_updates: self.receive_client_updates,
            inbox: inbox.clone(),
            connect_timeout: self.connect_timeout,
            close_timeout: self.close_timeout,
            max_frame_bytes: self.max_frame_bytes,
            reconnect: self.reconnect,
            heartbeat_frame,
        });
        let first = session::open(&settings, &self.metadata).await?;
        let (state, state_rx) = watch::channel(State::default());
        let shared = Arc::new(Shared {
            state,
            closing: CancellationToken::new(),
            demand: Notify::new(),
            messages_taken: AtomicBool::new(false),
            updates_taken: AtomicBool::new(false),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(self.buffer);
        let (messages_tx, messages_rx) = mpsc::channel(self.buffer);
        let (updates_tx, updates_rx) = mpsc::channel(self.buffer);
        let driver = Driver::new(
            Arc::clone(&settings),
            Arc::clone(&shared),
            cmd_rx,
            cmd_tx.downgrade(),
            self.metadata,
            messages_tx,
            updates_tx,
        );
        let mut state_changes = state_rx.clone();
        let task = tokio::spawn(driver.run(first));
        // The task marks the first session before anything else; wait for it so `state()`
        // is accurate from the start.
        let _ = state_changes
            .wait_for(|s| s.sessions >= 1 || s.closed)
            .await;
        let reply_to = Query::application(application_id.clone())
            .eq(format!("/{INBOX_KEY}"), inbox.clone())
            .droppable();
        Ok(Client {
            inner: Arc::new(Inner {
                cmd_tx,
                shared,
                state_rx,
                codec,
                application_id,
                client_id,
                inbox,
                reply_to,
                next_nonce: AtomicU64::new(1),
                next_consumer: AtomicU64::new(1),
                messages_rx: Mutex::new(Some(messages_rx)),
                updates_rx: Mutex::new(Some(updates_rx)),
                receive_client_updates: settings.receive_client_updates,
                consumers: Arc::new(Mutex::new(HashSet::new())),
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

/// A connected client. Cheap to clone: clones share one connection.
///
/// Dropping every clone (and every consumer and unacked queue message) closes the connection
/// gracefully in the background; [`Client::close`] does it and waits.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cmd_tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    state_rx: watch::Receiver<State>,
    codec: Codec,
    application_id: String,
    client_id: String,
    inbox: String,
    /// The query that reaches this client alone: replies are sent to it.
    reply_to: Query,
    next_nonce: AtomicU64,
    next_consumer: AtomicU64,
    messages_rx: Mutex<Option<mpsc::Receiver<Message>>>,
    updates_rx: Mutex<Option<mpsc::Receiver<crate::types::ClientUpdate>>>,
    receive_client_updates: bool,
    /// Queues with a live [`Consumer`].
    consumers: Arc<Mutex<HashSet<String>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("application_id", &self.inner.application_id)
            .field("client_id", &self.inner.client_id)
            .field("state", &*self.inner.state_rx.borrow())
            .finish()
    }
}

/// A SEND or BROADCAST with every option; [`Client::send`] and [`Client::broadcast`] are the
/// short forms.
#[derive(Debug, Clone, Copy)]
pub struct Dispatch<'a, P: ?Sized> {
    pub event: Event,
    pub target: &'a Query,
    pub payload: &'a P,
    /// Passed to the recipient untouched. A confirmed dispatch without one gets a unique one
    /// (the client needs it to match the server's answer).
    pub nonce: Option<&'a Value>,
    /// Wait until the server has routed it: `Err(NoRoute)` when nothing matched (and the
    /// target is not droppable), `Err(InvalidQuery)` for a bad target. Costs one heartbeat
    /// round trip (the ack of a heartbeat sent right after it settles it, SPEC §3.3).
    pub confirm: bool,
}

#[derive(Serialize)]
struct DispatchData<'a, N: Serialize + ?Sized, P: Serialize + ?Sized> {
    target: &'a Query,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a N>,
    payload: &'a P,
}

#[derive(Serialize)]
struct RequestNonce<'a> {
    request: &'a str,
    reply_to: &'a Query,
}

#[derive(Serialize)]
struct ReplyNonce<'a> {
    reply: &'a str,
}

impl Client {
    /// A builder for `dsn`.
    pub fn builder(dsn: &str) -> Result<ClientBuilder> {
        ClientBuilder::new(dsn)
    }

    /// Connects with the DSN alone (it must name the application: `singyeong://APP@host`).
    pub async fn connect(dsn: &str) -> Result<Client> {
        ClientBuilder::new(dsn)?.connect().await
    }

    pub fn application_id(&self) -> &str {
        &self.inner.application_id
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// This client's inbox: the value of its `ganglion_inbox` metadata key.
    pub fn inbox(&self) -> &str {
        &self.inner.inbox
    }

    /// The connection state now.
    pub fn state(&self) -> State {
        self.inner.state_rx.borrow().clone()
    }

    /// A receiver that sees every change of state (connects, losses, reconnect attempts).
    pub fn state_changes(&self) -> watch::Receiver<State> {
        self.inner.state_rx.clone()
    }

    fn nonce(&self) -> String {
        format!(
            "{}.{}",
            &self.inner.inbox[..8],
            self.inner.next_nonce.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn unrestricted(&self, what: &'static str) -> Result<()> {
        let state = self.inner.state_rx.borrow();
        if state.closed {
            return Err(Error::Closed);
        }
        if state.restricted {
            return Err(Error::Restricted(what));
        }
        Ok(())
    }

    async fn command(&self, command: Command) -> Result<()> {
        self.inner
            .cmd_tx
            .send(command)
            .await
            .map_err(|_| Error::Closed)
    }

    /// SEND `payload` to one client matching `target`. Returns once queued for sending; a
    /// `no_route` answer is only logged (use [`Client::dispatch`] with `confirm` to get it).
    pub async fn send<P: Serialize + ?Sized>(&self, target: &Query, payload: &P) -> Result<()> {
        self.dispatch(Dispatch {
            event: Event::Send,
            target,
            payload,
            nonce: None,
            confirm: false,
        })
        .await
    }

    /// BROADCAST `payload` to every client matching `target` (to one, with a selector).
    pub async fn broadcast<P: Serialize + ?Sized>(
        &self,
        target: &Query,
        payload: &P,
    ) -> Result<()> {
        self.dispatch(Dispatch {
            event: Event::Broadcast,
            target,
            payload,
            nonce: None,
            confirm: false,
        })
        .await
    }

    /// SEND or BROADCAST with a nonce and/or a confirmation.
    pub async fn dispatch<P: Serialize + ?Sized>(&self, dispatch: Dispatch<'_, P>) -> Result<()> {
        self.unrestricted("send or broadcast")?;
        let t = dispatch.event.as_str();
        let generated;
        let nonce = match (dispatch.nonce, dispatch.confirm) {
            (Some(nonce), _) => Some(nonce),
            (None, true) => {
                generated = Value::String(self.nonce());
                Some(&generated)
            }
            (None, false) => None,
        };
        let frame = self.inner.codec.encode(&Envelope {
            op: 4,
            t: Some(t),
            d: DispatchData {
                target: dispatch.target,
                nonce,
                payload: dispatch.payload,
            },
        })?;
        if !dispatch.confirm {
            return self.command(Command::Frame(frame)).await;
        }
        let (reply, answer) = oneshot::channel();
        self.command(Command::Confirmed {
            frame,
            t,
            nonce: nonce.cloned().unwrap_or(Value::Null),
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Sends a request (a SEND whose nonce carries a reply address) to one client matching
    /// `target`, and waits up to `timeout` for its reply.
    ///
    /// The convention: the request's nonce is `{"request": ID, "reply_to": QUERY}` where
    /// QUERY matches the requester alone (its application and its `ganglion_inbox` metadata,
    /// droppable). The responder SENDs its reply to `reply_to` with the nonce
    /// `{"reply": ID}` ([`Client::reply`] does this). The reply's nonce names the request's id
    /// rather than repeating the request's nonce, so a requester that matches its own target
    /// cannot mistake its own request for the reply.
    ///
    /// Errors: [`Error::Timeout`]; [`Error::NoRoute`] at once when nothing matches.
    pub async fn request<P: Serialize + ?Sized>(
        &self,
        target: &Query,
        payload: &P,
        timeout: Duration,
    ) -> Result<Message> {
        self.unrestricted("send requests")?;
        let id = format!(
            "{}.{}",
            self.inner.inbox,
            self.inner.next_nonce.fetch_add(1, Ordering::Relaxed)
        );
        let nonce = RequestNonce {
            request: &id,
            reply_to: &self.inner.reply_to,
        };
        let frame = self.inner.codec.encode(&Envelope {
            op: 4,
            t: Some("SEND"),
            d: DispatchData {
                target,
                nonce: Some(&nonce),
                payload,
            },
        })?;
        let (reply, answer) = oneshot::channel();
        let work = async {
            self.command(Command::Request { frame, id, reply }).await?;
            answer.await.map_err(|_| Error::Closed)?
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    /// Replies to a request received in [`Client::messages`] (see [`Client::request`]).
    pub async fn reply<P: Serialize + ?Sized>(&self, request: &Message, payload: &P) -> Result<()> {
        self.unrestricted("reply")?;
        let (Some(id), Some(reply_to)) = (request.request_id(), request.nonce.get("reply_to"))
        else {
            return Err(Error::NotARequest);
        };
        #[derive(Serialize)]
        struct RawDispatch<'a, P: Serialize + ?Sized> {
            target: &'a Value,
            nonce: ReplyNonce<'a>,
            payload: &'a P,
        }
        let frame = self.inner.codec.encode(&Envelope {
            op: 4,
            t: Some("SEND"),
            d: RawDispatch {
                target: reply_to,
                nonce: ReplyNonce { reply: id },
                payload,
            },
        })?;
        self.command(Command::Frame(frame)).await
    }

    /// The clients matching `target` (QUERY_NODES). With a selector, at most one.
    pub async fn query_nodes(&self, target: &Query) -> Result<Vec<ClientInfo>> {
        self.unrestricted("query nodes")?;
        #[derive(Serialize)]
        struct WithNonce<'a> {
            #[serde(flatten)]
            query: &'a Query,
            nonce: &'a str,
        }
        let nonce = self.nonce();
        let frame = self.inner.codec.encode(&Envelope {
            op: 4,
            t: Some("QUERY_NODES"),
            d: WithNonce {
                query: target,
                nonce: &nonce,
            },
        })?;
        let (reply, answer) = oneshot::channel();
        self.command(Command::QueryNodes {
            frame,
            nonce,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Pushes `payload` onto `queue` for a consumer matching `target`, and waits for the
    /// server's confirmation that it is stored. Calls may run concurrently: each waits for
    /// its own confirm, and the frames go out back to back.
    ///
    /// [`Error::ConnectionLost`] means it may or may not be stored; retrying may duplicate it
    /// (consumers deduplicate by id or are idempotent, SPEC §8.8).
    pub async fn publish<P: Serialize + ?Sized>(
        &self,
        queue: &str,
        target: &Query,
        payload: &P,
    ) -> Result<QueueConfirm> {
        self.unrestricted("use queues")?;
        check_queue_name(queue)?;
        #[derive(Serialize)]
        struct Queue<'a, P: Serialize + ?Sized> {
            queue: &'a str,
            target: &'a Query,
            nonce: &'a str,
            payload: &'a P,
        }
        let nonce = self.nonce();
        let frame = self.inner.codec.encode(&Envelope {
            op: 4,
            t: Some("QUEUE"),
            d: Queue {
                queue,
                target,
                nonce: &nonce,
                payload,
            },
        })?;
        let (reply, answer) = oneshot::channel();
        self.command(Command::Publish {
            frame,
            nonce,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Consumes `queue`, one message at a time (see [`Consumer`]). One consumer per queue
    /// per client.
    pub async fn consume(&self, queue: &str) -> Result<Consumer> {
        self.consume_with(queue, 1).await
    }

    /// Consumes `queue`, keeping up to `prefetch` delivered messages ready in the stream.
    pub async fn consume_with(&self, queue: &str, prefetch: usize) -> Result<Consumer> {
        self.unrestricted("use queues")?;
        check_queue_name(queue)?;
        {
            let mut active = self.inner.consumers.lock().map_err(|_| Error::Closed)?;
            if !active.insert(queue.to_owned()) {
                return Err(Error::AlreadyTaken(format!(
                    "a consumer of queue {queue:?}"
                )));
            }
        }
        let id = self.inner.next_consumer.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(prefetch.max(1));
        let starved = Arc::new(AtomicBool::new(false));
        let consumer = Consumer {
            queue: queue.to_owned(),
            id,
            rx,
            starved: Arc::clone(&starved),
            shared: Arc::clone(&self.inner.shared),
            cmd_tx: self.inner.cmd_tx.clone(),
            active: Arc::clone(&self.inner.consumers),
        };
        let slot = Slot {
            id,
            tx,
            starved,
            requested: false,
        };
        self.command(Command::Consume {
            queue: queue.to_owned(),
            slot,
        })
        .await?;
        Ok(consumer)
    }

    /// Merges `update` into this client's metadata (key by key, as the server's default
    /// `merge` strategy does) and waits until the server has applied it. The update is kept:
    /// every reconnect identifies with the latest metadata.
    pub async fn update_metadata(&self, update: Metadata) -> Result<()> {
        if self.inner.state_rx.borrow().closed {
            return Err(Error::Closed);
        }
        update.validate()?;
        let (reply, answer) = oneshot::channel();
        self.command(Command::UpdateMetadata { update, reply })
            .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Waits until the server has processed every frame this client sent before the call
    /// (a heartbeat's ack follows everything queued before it, SPEC §3.3): acks, sends and
    /// updates have taken effect when it returns.
    pub async fn sync(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Sync { reply }).await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The stream of SEND/BROADCAST deliveries. There is one per client: a second call gets
    /// [`Error::AlreadyTaken`]. Messages that arrive before it is taken wait in it (up to the
    /// buffer size; later ones are dropped until it is taken).
    pub fn messages(&self) -> Result<Messages> {
        let rx = self
            .inner
            .messages_rx
            .lock()
            .ok()
            .and_then(|mut rx| rx.take())
            .ok_or_else(|| Error::AlreadyTaken("the message stream".to_owned()))?;
        self.inner
            .shared
            .messages_taken
            .store(true, Ordering::Release);
        Ok(Messages { rx })
    }

    /// The stream of CLIENT_CONNECTED / CLIENT_DISCONNECTED events, for a client built with
    /// [`ClientBuilder::receive_client_updates`]. One per client.
    pub fn client_updates(&self) -> Result<ClientUpdates> {
        if !self.inner.receive_client_updates {
            return Err(Error::NoClientUpdates);
        }
        let rx = self
            .inner
            .updates_rx
            .lock()
            .ok()
            .and_then(|mut rx| rx.take())
            .ok_or_else(|| Error::AlreadyTaken("the client update stream".to_owned()))?;
        self.inner
            .shared
            .updates_taken
            .store(true, Ordering::Release);
        Ok(ClientUpdates { rx })
    }

    /// Closes the connection gracefully: frames already queued are sent, answers still owed
    /// (confirms, queries) are awaited up to the close timeout, then a websocket close (1000)
    /// or a TCP shutdown. Pending calls then fail with [`Error::Closed`]; streams end.
    pub async fn close(&self) -> Result<()> {
        self.inner.shared.closing.cancel();
        let task = self.inner.task.lock().ok().and_then(|mut task| task.take());
        match task {
            Some(task) => {
                let _ = task.await;
            }
            None => {
                let mut changes = self.inner.state_rx.clone();
                let _ = changes.wait_for(|state| state.closed).await;
            }
        }
        Ok(())
    }
}

/// The queue-name rules of SPEC §8.1, checked before sending.
pub fn check_queue_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 255 {
        "must be at most 255 bytes"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(Error::QueueName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_down_to_half() {
        let policy = Reconnect {
            enabled: true,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_attempts: None,
        };
        for _ in 0..200 {
            for (attempt, full) in [
                (0, 100),
                (1, 200),
                (2, 400),
                (3, 800),
                (4, 1000),
                (40, 1000),
            ] {
                let delay = policy.delay(attempt);
                let full = Duration::from_millis(full);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
    }

    #[test]
    fn queue_names_follow_the_spec_rules() {
        assert!(check_queue_name("jobs.v2").is_ok());
        for (name, reason) in [
            ("", "must not be empty"),
            ("a b", "must not contain whitespace or control characters"),
            (
                "a\u{7}",
                "must not contain whitespace or control characters",
            ),
        ] {
            match check_queue_name(name) {
                Err(Error::QueueName { reason: got, .. }) => assert_eq!(got, reason, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        assert!(check_queue_name(&"q".repeat(256)).is_err());
    }
}
